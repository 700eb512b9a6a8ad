//! The LoRA merge family (kernels/lora.cu): W += scale·up@down in place on a stored weight. Launched at
//! load or on a merged-mode switch ([`crate::cuda::CudaBackend::merge_lora`]), never recorded: the
//! unmerged path is the GEMM's second K segment (ops/gemm.rs).

use lcm_core::Result;

use crate::cuda::abi::LcmLoraMergeParams;
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{dim, stride_grid, Launch, Limits, Params};

/// The merge into the weight at `w` of `[co, ci, kh, kw]` (stored `[co, kh, kw, cip]`), from f32 factors
/// `down` `[rank, ci·kh·kw]` and `up` `[co, rank]`.
pub fn lora_merge(dims: [usize; 5], scale: f32, [w, down, up]: [u64; 3], lim: Limits) -> Result<Launch> {
    let [co, ci, kh, kw, rank] = dims;
    let cip = ci.div_ceil(8) * 8;
    let total = co * kh * kw * cip;
    dim(total, "LoRA target elements")?;
    Ok(Launch {
        kernel: Kernel::LoraMerge,
        grid: stride_grid(total, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::LoraMerge(LcmLoraMergeParams {
            w,
            down,
            up,
            co: dim(co, "output channels")?,
            ci: dim(ci, "input channels")?,
            cip: dim(cip, "padded channels")?,
            kh: dim(kh, "kernel height")?,
            kw: dim(kw, "kernel width")?,
            rank: dim(rank, "rank")?,
            scale,
            pad0: 0,
        }),
    })
}
