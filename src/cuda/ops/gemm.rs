//! The GEMM family (kernels/gemm.cu): convolutions and linear layers as one implicit GEMM, the LoRA
//! segment of an unmerged adapter, the weight layout the kernels read, tile choice and launch planning,
//! and the record arm for `Conv2d` and `Linear`.

use half::f16;
use lcm_core::{Error, Gemm, Op, Problem, Result};

use crate::cuda::abi::LcmGemmParams;
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{cdiv, check_smem, dim, Launch, Limits, Params, Precision, Step};
use crate::cuda::record::{mislowered, Recorder};

/// (BM, BN, threads) of each GEMM instantiation; kernels/gemm.cu's table.
pub fn gemm_tile(k: Kernel) -> (usize, usize, u32) {
    match k {
        Kernel::IgemmLarge | Kernel::IgemmLargeF32 => (128, 128, 256),
        _ => (64, 64, 128),
    }
}
/// Bytes of one shared-memory row of a stage (BK of f16 or f32 plus a 16-byte pad: kernels/gemm.cu).
const GEMM_ROW_BYTES: usize = 80;
const GEMM_STAGES: usize = 3;

/// `cip`: input channels rounded up to 8, the stored weight's channel stride.
pub fn padded_channels(ci: usize) -> usize {
    ci.div_ceil(8) * 8
}

/// An element type weights and activations are stored in on the device.
pub trait Stored: bytemuck::Pod + Default {
    fn from_f32(v: f32) -> Self;
}

impl Stored for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Stored for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

/// Torch conv weight `[co, ci, kh, kw]` -> the GEMM layout `[co, kh, kw, cip]` in `T`, zero padded.
/// A linear weight `[n, k]` is the case kh = kw = 1.
pub fn gemm_weight_layout<T: Stored>(data: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> Vec<T> {
    let cip = padded_channels(ci);
    let mut out = vec![T::default(); co * kh * kw * cip];
    for o in 0..co {
        for c in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    out[((o * kh + y) * kw + x) * cip + c] = T::from_f32(data[((o * ci + c) * kh + y) * kw + x]);
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Copy, Default)]
pub struct GemmPtrs {
    pub x: u64,
    pub weight: u64,
    pub bias: u64,
    pub residual: u64,
    pub out: u64,
    pub a2: u64,
    pub weight2: u64,
}

/// The launch of the implicit GEMM `s` on activations of `prec`, plus (`k2 > 0`) a second K segment of
/// width `k2` (the unmerged LoRA: `p.a2` `[M, k2]` against `p.weight2` `[N, k2]`).
pub fn gemm(s: &Gemm, k2: usize, p: GemmPtrs, prec: Precision, lim: Limits) -> Result<Launch> {
    let (m, n) = (s.m(), s.co);
    if m == 0 || n == 0 {
        return Err(Error::backend("empty GEMM"));
    }
    if s.geglu && (n % 2 != 0 || p.residual != 0) {
        return Err(Error::backend("GEGLU GEMM needs an even width and no residual"));
    }
    if !k2.is_multiple_of(8) {
        return Err(Error::backend("LoRA segment width must be a multiple of 8"));
    }
    let large = cdiv(m, 128) * cdiv(n, 128) >= lim.sm_count as usize;
    let kernel = match (!s.ci.is_multiple_of(8), large, prec) {
        (true, _, Precision::F16) => Kernel::IgemmScalarA,
        (true, _, Precision::F32) => Kernel::IgemmScalarAF32,
        (false, true, Precision::F16) => Kernel::IgemmLarge,
        (false, true, Precision::F32) => Kernel::IgemmLargeF32,
        (false, false, Precision::F16) => Kernel::IgemmSmall,
        (false, false, Precision::F32) => Kernel::IgemmSmallF32,
    };
    let (bm, bn, threads) = gemm_tile(kernel);
    let smem = check_smem(kernel, GEMM_STAGES * (bm + bn) * GEMM_ROW_BYTES, lim)?;
    // Every offset the kernel forms from ints must stay below 2^31 elements.
    dim(m * s.co, "GEMM output elements")?;
    dim(s.batch * s.h * s.w * s.ci, "conv input elements")?;
    let params = LcmGemmParams {
        x: p.x,
        weight: p.weight,
        bias: p.bias,
        residual: p.residual,
        out: p.out,
        a2: p.a2,
        weight2: p.weight2,
        batch: dim(s.batch, "batch")?,
        h: dim(s.h, "height")?,
        w: dim(s.w, "width")?,
        ci: dim(s.ci, "input channels")?,
        ho: dim(s.ho, "output height")?,
        wo: dim(s.wo, "output width")?,
        co: dim(s.co, "output channels")?,
        kh: dim(s.kh, "kernel height")?,
        kw: dim(s.kw, "kernel width")?,
        stride: dim(s.stride, "stride")?,
        pad_top: dim(s.pad[0], "padding")?,
        pad_left: dim(s.pad[1], "padding")?,
        cip: dim(padded_channels(s.ci), "padded channels")?,
        k2: dim(k2, "LoRA width")?,
        ldc: dim(s.out_cols(), "ldc")?,
        geglu: s.geglu as i32,
        alpha: 1.0,
        pad0: 0,
    };
    Ok(Launch {
        kernel,
        grid: [cdiv(m, bm) as u32, dim(cdiv(n, bn), "GEMM column tiles")? as u32, 1],
        block: [threads, 1, 1],
        smem,
        params: Params::Gemm(params),
    })
}

/// Workspace bytes of a GEMM whose weight carries an unmerged LoRA: u = x·Aᵀ, `[M, rp]` of f16.
pub(crate) fn scratch_bytes(r: &Recorder, op: &Op, problem: &Problem) -> Result<usize> {
    match (*op, *problem) {
        (Op::Conv2d { w, .. } | Op::Linear { w, .. }, Problem::Gemm(g)) => {
            Ok(r.weight(w)?.lora.map_or(0, |l| g.m() * l.rp * 2))
        }
        _ => Ok(0),
    }
}

/// `Conv2d` and `Linear`: one GEMM, or two with an unmerged LoRA on the weight.
pub(crate) fn record(r: &Recorder, op: &Op, problem: &Problem, steps: &mut Vec<Step>) -> Result<()> {
    let (Op::Conv2d { w, bias, residual, out, x, .. } | Op::Linear { w, bias, residual, out, x, .. }, Problem::Gemm(s)) =
        (*op, *problem)
    else {
        return Err(mislowered(op, problem));
    };
    let (prec, lim) = (r.act_precision(), r.limits());
    let weight = r.weight(w)?;
    let mut p = GemmPtrs {
        x: r.addr(x)?,
        weight: weight.ptr,
        bias: r.opt_addr(bias)?,
        residual: r.opt_addr(residual)?,
        out: r.addr(out)?,
        a2: 0,
        weight2: 0,
    };
    let mut k2 = 0;
    if let Some(l) = weight.lora {
        // u = x·Aᵀ (a conv with the LoRA's down weight, same taps), then [x | u]·[W | s·B]ᵀ.
        let down = Gemm { co: l.rp, geglu: false, ..s };
        let work = r.work();
        let ptrs = GemmPtrs { x: p.x, weight: l.down_ptr(), out: work, ..Default::default() };
        steps.push(Step::Kernel(gemm(&down, 0, ptrs, prec, lim)?));
        k2 = l.rp;
        p.a2 = work;
        p.weight2 = l.up_ptr();
    }
    steps.push(Step::Kernel(gemm(&s, k2, p, prec, lim)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::launch::test_limits::{H100, RTX};

    #[test]
    fn gemm_picks_tiles_by_size_and_channel_alignment() {
        let l = gemm(&Gemm::linear(4096, 320, 1280), 0, GemmPtrs::default(), Precision::F16, H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmLarge);
        assert_eq!(l.grid, [32, 10, 1]);
        // 32x3 large tiles would leave a third of an H100 idle: the small tile gives 64x5.
        let l = gemm(&Gemm::linear(4096, 320, 320), 0, GemmPtrs::default(), Precision::F16, H100).unwrap();
        assert_eq!((l.kernel, l.grid), (Kernel::IgemmSmall, [64, 5, 1]));
        let l = gemm(&Gemm::linear(77, 768, 768), 0, GemmPtrs::default(), Precision::F16, H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmSmall);
        assert_eq!(l.grid, [2, 12, 1]);
        let conv_in = Gemm {
            batch: 1,
            h: 64,
            w: 64,
            ci: 4,
            ho: 64,
            wo: 64,
            co: 320,
            kh: 3,
            kw: 3,
            stride: 1,
            pad: [1; 4],
            geglu: false,
        };
        let l = gemm(&conv_in, 0, GemmPtrs::default(), Precision::F16, H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmScalarA);
        let Params::Gemm(p) = l.params else { panic!() };
        assert_eq!(p.cip, 8);
        assert!(l.smem <= RTX.smem_optin);
        let geglu = Gemm { geglu: true, ..Gemm::linear(4096, 320, 2560) };
        let Params::Gemm(p) = gemm(&geglu, 0, GemmPtrs::default(), Precision::F16, H100).unwrap().params else {
            panic!()
        };
        assert_eq!((p.ldc, p.co, p.geglu), (1280, 2560, 1));
    }

    #[test]
    fn weight_layout_puts_taps_outside_channels() {
        // co=1, ci=3, 2x2: torch index (c, y, x) -> stored ((y·2 + x)·8 + c)
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let w = gemm_weight_layout::<f16>(&data, 1, 3, 2, 2);
        assert_eq!(w.len(), 32);
        for c in 0..3 {
            for y in 0..2 {
                for x in 0..2 {
                    assert_eq!(w[(y * 2 + x) * 8 + c].to_f32(), ((c * 2 + y) * 2 + x) as f32);
                }
            }
        }
        assert!(w[3..8].iter().all(|v| v.to_f32() == 0.0));
    }
}
