//! Launch planning: from shapes and device addresses to (kernel, grid, block, shared memory, parameter
//! struct). Pure functions with no driver calls, so the tile tables and their limits are unit-tested on
//! any machine. The numbers here mirror the constants in `kernels/*.cu` (named there, next to the
//! instantiations).

use half::f16;
use lcm_core::{Attention, Error, Gemm, Result};

use super::abi::*;
use super::functions::Kernel;

/// The element type of activations (`Elem::Act`), which picks each family's instantiation: f16 for
/// every model, f32 for a VAE that overflows in f16 and that diffusers decodes in f32 (`force_upcast`:
/// SDXL's). `F32` tensors (latents, noise, the schedule) are f32 whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F16,
    F32,
}

impl Precision {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F16 => 2,
            Precision::F32 => 4,
        }
    }

    /// Elements in one 16-byte access: the vectorised kernels' unit.
    pub fn vec(self) -> usize {
        16 / self.bytes()
    }
}

/// The refusal of a family the f32 path does not have (it covers what a VAE runs).
pub(super) fn no_f32(family: &str) -> Error {
    Error::backend(format!("{family} has no f32-activation kernel (the f32 path covers the ops of a VAE)"))
}

/// What the device allows: read once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub sm_count: u32,
    pub smem_optin: u32,
}

macro_rules! params {
    ($($variant:ident($t:ident),)*) => {
        /// A kernel's parameter struct, by family.
        #[derive(Debug, Clone, Copy)]
        pub enum Params {
            $(#[allow(missing_docs)] $variant($t),)*
        }

        impl Params {
            /// The struct's name (as in lcm_abi.h) and its address: what the kernel takes as its one
            /// argument.
            pub(crate) fn as_arg(&self) -> (&'static str, *const std::ffi::c_void) {
                match self { $(Params::$variant(p) => (stringify!($t), p as *const $t as *const std::ffi::c_void),)* }
            }
        }
    };
}

params! {
    Gemm(LcmGemmParams),
    Attn(LcmAttnParams),
    GroupNorm(LcmGroupNormParams),
    LayerNorm(LcmLayerNormParams),
    Eltwise(LcmEltwiseParams),
    Concat(LcmConcatParams),
    Cast(LcmCastParams),
    Upsample(LcmUpsampleParams),
    Embed(LcmEmbedParams),
    Timestep(LcmTimestepParams),
    LoraMerge(LcmLoraMergeParams),
    Step(LcmStepParams),
}

#[derive(Debug, Clone, Copy)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub params: Params,
}

/// One step of a recorded run: a kernel, or zeroing a few 32-bit words (the embed error flag).
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Kernel(Launch),
    Zero32 { ptr: u64, words: usize },
}

pub(super) fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

pub(super) fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::backend(format!("{what} = {v} does not fit the kernels' 32-bit sizes")))
}

pub(super) fn check_smem(k: Kernel, smem: usize, lim: Limits) -> Result<u32> {
    if smem > lim.smem_optin as usize {
        return Err(Error::backend(format!(
            "{} needs {smem} bytes of shared memory; this GPU allows {}",
            k.name(),
            lim.smem_optin
        )));
    }
    Ok(smem as u32)
}

/// Grid for the grid-stride element-wise kernels: 256 threads, at most 8 blocks per SM.
pub(super) fn stride_grid(units: usize, lim: Limits) -> [u32; 3] {
    [cdiv(units, 256).clamp(1, lim.sm_count as usize * 8) as u32, 1, 1]
}

// ---------------------------------------------------------------------------------------------------
// GEMM / conv

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

// ---------------------------------------------------------------------------------------------------
// Attention

/// (padded head dim, key tile, causal, kernel): kernels/attention.cu's instantiations. The smallest
/// padded dim ≥ head_dim with the right causality serves; non-causal heads up to 512 fall to the wide
/// kernel.
pub const ATTN_TABLE: &[(usize, usize, bool, Kernel)] = &[
    (16, 64, false, Kernel::AttnHd16),
    (32, 64, false, Kernel::AttnHd32),
    (48, 64, false, Kernel::AttnHd40),
    (64, 64, false, Kernel::AttnHd64),
    (80, 64, false, Kernel::AttnHd80),
    (128, 64, false, Kernel::AttnHd128),
    (160, 32, false, Kernel::AttnHd160),
    (16, 64, true, Kernel::AttnHd16Causal),
    (32, 64, true, Kernel::AttnHd32Causal),
    (64, 64, true, Kernel::AttnHd64Causal),
    (128, 64, true, Kernel::AttnHd128Causal),
];
pub const ATTN_WIDE_DIM: usize = 512;

/// Attention on activations of `prec`. f32 has the wide kernel only (tf32, key tiles of 8: any
/// non-causal head up to 512, e.g. a VAE's mid block).
pub fn attention(s: &Attention, q: u64, k: u64, v: u64, out: u64, prec: Precision, lim: Limits) -> Result<Launch> {
    if s.n_kv == 0 || s.n_q == 0 || s.head_dim == 0 {
        return Err(Error::backend("attention over an empty sequence"));
    }
    let c = s.heads * s.head_dim;
    let narrow = ATTN_TABLE.iter().filter(|e| e.2 == s.causal && e.0 >= s.head_dim).min_by_key(|e| e.0);
    let wide = !s.causal && s.head_dim <= ATTN_WIDE_DIM;
    let (kernel, grid_x, threads, smem) = match (prec, narrow) {
        (Precision::F16, Some(&(dp, bkv, _, kernel))) => (kernel, cdiv(s.n_q, 64), 128, (64 + 4 * bkv) * (dp + 8) * 2),
        (Precision::F16, None) if wide => {
            (Kernel::AttnHd512, cdiv(s.n_q, 32), 256, 2 * (2 * 16 * (ATTN_WIDE_DIM + 8) * 2) + 2 * 4 * 32 * 8 * 4)
        }
        (Precision::F32, _) if wide => {
            (Kernel::AttnHd512F32, cdiv(s.n_q, 32), 256, 2 * (2 * 8 * (ATTN_WIDE_DIM + 4) * 4) + 2 * 4 * 32 * 4 * 4)
        }
        (Precision::F32, _) => return Err(no_f32("causal or wider-than-512 attention")),
        (Precision::F16, None) => {
            return Err(Error::backend(format!(
            "attention with head dim {} ({}) has no kernel: causal heads go up to 128, others up to {ATTN_WIDE_DIM}",
            s.head_dim,
            if s.causal { "causal" } else { "non-causal" }
        )))
        }
    };
    let smem = check_smem(kernel, smem, lim)?;
    let c32 = dim(c, "attention channels")?;
    dim(s.batch * s.n_q.max(s.n_kv) * c, "attention elements")?;
    let params = LcmAttnParams {
        q,
        k,
        v,
        out,
        batch: dim(s.batch, "batch")?,
        heads: dim(s.heads, "heads")?,
        n_q: dim(s.n_q, "query tokens")?,
        n_kv: dim(s.n_kv, "key tokens")?,
        head_dim: dim(s.head_dim, "head dim")?,
        ldq: c32,
        ldk: c32,
        ldv: c32,
        ldo: c32,
        scale_log2: std::f32::consts::LOG2_E / (s.head_dim as f32).sqrt(),
    };
    if s.heads > 65535 || s.batch > 65535 {
        return Err(Error::backend("attention grid: heads and batch must be below 65536"));
    }
    Ok(Launch {
        kernel,
        grid: [grid_x as u32, s.heads as u32, s.batch as u32],
        block: [threads, 1, 1],
        smem,
        params: Params::Attn(params),
    })
}

mod elt;
mod norm;
pub use elt::*;
pub use norm::*;

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const H100: Limits = Limits { sm_count: 132, smem_optin: 232_448 };
    pub(super) const RTX: Limits = Limits { sm_count: 82, smem_optin: 101_376 }; // sm_86: the tightest shared memory

    #[test]
    fn attention_table_covers_every_sd15_head_and_the_general_path() {
        let plan = |d: usize, causal: bool| {
            let s = Attention { batch: 1, heads: 1, n_q: 77, n_kv: 77, head_dim: d, causal };
            attention(&s, 0, 0, 0, 0, Precision::F16, RTX)
        };
        let pick = |d: usize, causal: bool| plan(d, causal).map(|l| l.kernel);
        assert_eq!(pick(40, false).unwrap(), Kernel::AttnHd40);
        assert_eq!(pick(80, false).unwrap(), Kernel::AttnHd80);
        assert_eq!(pick(160, false).unwrap(), Kernel::AttnHd160);
        assert_eq!(pick(64, true).unwrap(), Kernel::AttnHd64Causal);
        assert_eq!(pick(512, false).unwrap(), Kernel::AttnHd512);
        assert_eq!(pick(8, false).unwrap(), Kernel::AttnHd16);
        assert_eq!(pick(8, true).unwrap(), Kernel::AttnHd16Causal);
        assert_eq!(pick(12, true).unwrap(), Kernel::AttnHd16Causal);
        assert_eq!(pick(100, false).unwrap(), Kernel::AttnHd128);
        assert_eq!(pick(200, false).unwrap(), Kernel::AttnHd512);
        assert!(pick(200, true).is_err());
        assert!(pick(513, false).is_err());
        // Every instantiation fits the smallest opt-in shared memory of the four archs.
        for d in [8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 256, 512] {
            for causal in [false, true] {
                if let Ok(l) = plan(d, causal) {
                    assert!(l.smem <= RTX.smem_optin, "{} {}", l.kernel.name(), l.smem);
                }
            }
        }
    }

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
