//! Launch planning: from shapes and device addresses to (kernel, grid, block, shared memory, parameter
//! struct). Pure functions with no driver calls, so the tile tables and their limits are unit-tested on
//! any machine. The numbers here mirror the constants in `kernels/*.cu` (named there, next to the
//! instantiations).

use half::f16;
use lcm_core::{Error, Result};

use super::abi::*;
use super::functions::Kernel;

/// What the device allows: read once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub sm_count: u32,
    pub smem_optin: u32,
}

/// A kernel's parameter struct, by family.
#[derive(Debug, Clone, Copy)]
pub enum Params {
    Gemm(LcmGemmParams),
    Attn(LcmAttnParams),
    GroupNorm(LcmGroupNormParams),
    LayerNorm(LcmLayerNormParams),
    Eltwise(LcmEltwiseParams),
    Concat(LcmConcatParams),
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

fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

fn dim(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::backend(format!("{what} = {v} does not fit the kernels' 32-bit sizes")))
}

fn check_smem(k: Kernel, smem: usize, lim: Limits) -> Result<u32> {
    if smem > lim.smem_optin as usize {
        return Err(Error::backend(format!("{} needs {smem} bytes of shared memory; this GPU allows {}", k.name(), lim.smem_optin)));
    }
    Ok(smem as u32)
}

/// Grid for the grid-stride element-wise kernels: 256 threads, at most 8 blocks per SM.
fn stride_grid(units: usize, lim: Limits) -> [u32; 3] {
    [cdiv(units, 256).clamp(1, lim.sm_count as usize * 8) as u32, 1, 1]
}

// ---------------------------------------------------------------------------------------------------
// GEMM / conv

/// (BM, BN, threads) of each GEMM instantiation; kernels/gemm.cu's table.
pub fn gemm_tile(k: Kernel) -> (usize, usize, u32) {
    match k {
        Kernel::IgemmLarge => (128, 128, 256),
        _ => (64, 64, 128),
    }
}
const GEMM_BK_PADDED: usize = 40;
const GEMM_STAGES: usize = 3;

/// `cip`: input channels rounded up to 8, the stored weight's channel stride.
pub fn padded_channels(ci: usize) -> usize {
    ci.div_ceil(8) * 8
}

/// Torch conv weight `[co, ci, kh, kw]` -> the GEMM layout `[co, kh, kw, cip]`, f16, zero padded.
/// A linear weight `[n, k]` is the case kh = kw = 1.
pub fn gemm_weight_layout(data: &[f32], co: usize, ci: usize, kh: usize, kw: usize) -> Vec<f16> {
    let cip = padded_channels(ci);
    let mut out = vec![f16::ZERO; co * kh * kw * cip];
    for o in 0..co {
        for c in 0..ci {
            for y in 0..kh {
                for x in 0..kw {
                    out[((o * kh + y) * kw + x) * cip + c] = f16::from_f32(data[((o * ci + c) * kh + y) * kw + x]);
                }
            }
        }
    }
    out
}

/// The conv/linear problem as the implicit GEMM sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct GemmShape {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub ci: usize,
    pub ho: usize,
    pub wo: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    /// Second K segment width (LoRA rank padded to 8), 0 for none.
    pub k2: usize,
    pub geglu: bool,
}

impl GemmShape {
    /// A linear layer over `rows` rows of `k` as a 1x1 conv.
    pub fn linear(rows: usize, k: usize, n: usize) -> GemmShape {
        GemmShape { batch: 1, h: 1, w: rows, ci: k, ho: 1, wo: rows, co: n, kh: 1, kw: 1, stride: 1, ..Default::default() }
    }

    pub fn m(&self) -> usize {
        self.batch * self.ho * self.wo
    }
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

pub fn gemm(s: &GemmShape, p: GemmPtrs, lim: Limits) -> Result<Launch> {
    let (m, n) = (s.m(), s.co);
    if m == 0 || n == 0 {
        return Err(Error::backend("empty GEMM"));
    }
    if s.geglu && (n % 2 != 0 || p.residual != 0) {
        return Err(Error::backend("GEGLU GEMM needs an even width and no residual"));
    }
    if s.k2 % 8 != 0 {
        return Err(Error::backend("LoRA segment width must be a multiple of 8"));
    }
    let kernel = if s.ci % 8 != 0 {
        Kernel::IgemmScalarA
    } else if cdiv(m, 128) * cdiv(n, 128) >= lim.sm_count as usize {
        Kernel::IgemmLarge
    } else {
        Kernel::IgemmSmall
    };
    let (bm, bn, threads) = gemm_tile(kernel);
    let smem = check_smem(kernel, GEMM_STAGES * (bm + bn) * GEMM_BK_PADDED * 2, lim)?;
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
        pad_top: dim(s.pad_top, "padding")?,
        pad_left: dim(s.pad_left, "padding")?,
        cip: dim(padded_channels(s.ci), "padded channels")?,
        k2: dim(s.k2, "LoRA width")?,
        ldc: dim(if s.geglu { n / 2 } else { n }, "ldc")?,
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

#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub n_q: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub causal: bool,
}

pub fn attention(s: &AttnShape, q: u64, k: u64, v: u64, out: u64, lim: Limits) -> Result<Launch> {
    if s.n_kv == 0 || s.n_q == 0 || s.head_dim == 0 {
        return Err(Error::backend("attention over an empty sequence"));
    }
    let c = s.heads * s.head_dim;
    let narrow = ATTN_TABLE.iter().filter(|e| e.2 == s.causal && e.0 >= s.head_dim).min_by_key(|e| e.0);
    let (kernel, grid_x, threads, smem) = match narrow {
        Some(&(dp, bkv, _, kernel)) => (kernel, cdiv(s.n_q, 64), 128, (64 + 4 * bkv) * (dp + 8) * 2),
        None if !s.causal && s.head_dim <= ATTN_WIDE_DIM => {
            (Kernel::AttnHd512, cdiv(s.n_q, 32), 256, 2 * (2 * 16 * (ATTN_WIDE_DIM + 8) * 2) + 2 * 4 * 32 * 8 * 4)
        }
        None => {
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

// ---------------------------------------------------------------------------------------------------
// Normalisation

/// The GroupNorm launch shape: every block is `cols · rows` threads over chunks of `chunk_pixels`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupNormPlan {
    pub vec: usize,
    pub threads: usize,
    pub rows: usize,
    pub chunk_pixels: usize,
    pub chunks: usize,
    pub stats_smem: usize,
    /// f32 scratch: partials `[B, chunks, G, 2]` then stats `[B, G, 2]`.
    pub scratch_floats: usize,
}

pub fn group_norm_plan(batch: usize, hw: usize, c: usize, groups: usize, lim: Limits) -> Result<GroupNormPlan> {
    if groups == 0 || c % groups != 0 || hw == 0 || batch == 0 {
        return Err(Error::backend(format!("group norm of {c} channels in {groups} groups over {hw} pixels")));
    }
    let vec = if c % 8 == 0 { 8 } else { 1 };
    let cols = c / vec;
    if cols > 1024 {
        return Err(Error::backend(format!("group norm over {c} channels: at most {} supported", if vec == 8 { 8192 } else { 1024 })));
    }
    let rows = (256 / cols).max(1);
    let threads = cols * rows;
    // About four blocks per SM in all, each chunk at least one pixel per thread row.
    let wanted = cdiv(4 * lim.sm_count as usize, batch).clamp(1, hw);
    let chunk_pixels = cdiv(hw, wanted).max(rows.min(hw));
    let chunks = cdiv(hw, chunk_pixels);
    let stats_smem = (2 * rows * c + 2 * c) * 4;
    Ok(GroupNormPlan {
        vec,
        threads,
        rows,
        chunk_pixels,
        chunks,
        stats_smem,
        scratch_floats: batch * chunks * groups * 2 + batch * groups * 2,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    batch: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    ptrs: [u64; 4],
    scratch: u64,
    lim: Limits,
) -> Result<[Launch; 3]> {
    let plan = group_norm_plan(batch, hw, c, groups, lim)?;
    let [x, gamma, beta, out] = ptrs;
    let partial_bytes = (batch * plan.chunks * groups * 2 * 4) as u64;
    let params = LcmGroupNormParams {
        x,
        gamma,
        beta,
        out,
        partial: scratch,
        stats: scratch + partial_bytes,
        batch: dim(batch, "batch")?,
        hw: dim(hw, "pixels")?,
        c: dim(c, "channels")?,
        groups: dim(groups, "groups")?,
        chunks: dim(plan.chunks, "chunks")?,
        chunk_pixels: dim(plan.chunk_pixels, "chunk")?,
        eps,
        silu: silu as i32,
    };
    dim(batch * hw * c, "group norm elements")?;
    let (stats_k, apply_k) =
        if plan.vec == 8 { (Kernel::GroupNormStatsV8, Kernel::GroupNormApplyV8) } else { (Kernel::GroupNormStatsV1, Kernel::GroupNormApplyV1) };
    let grid = [plan.chunks as u32, batch as u32, 1];
    let block = [plan.threads as u32, 1, 1];
    Ok([
        Launch { kernel: stats_k, grid, block, smem: check_smem(stats_k, plan.stats_smem, lim)?, params: Params::GroupNorm(params) },
        Launch {
            kernel: Kernel::GroupNormFinalize,
            grid: [batch as u32, 1, 1],
            block: [(groups.min(32) * 32) as u32, 1, 1],
            smem: 0,
            params: Params::GroupNorm(params),
        },
        Launch { kernel: apply_k, grid, block, smem: 0, params: Params::GroupNorm(params) },
    ])
}

pub fn layer_norm(rows: usize, c: usize, eps: f32, ptrs: [u64; 4]) -> Result<Launch> {
    let [x, gamma, beta, out] = ptrs;
    dim(rows * c, "layer norm elements")?;
    Ok(Launch {
        kernel: if c % 8 == 0 { Kernel::LayerNormV8 } else { Kernel::LayerNormV1 },
        grid: [cdiv(rows, 4) as u32, 1, 1],
        block: [128, 1, 1],
        smem: 0,
        params: Params::LayerNorm(LcmLayerNormParams { x, gamma, beta, out, rows: dim(rows, "rows")?, c: dim(c, "channels")?, eps, pad0: 0 }),
    })
}

// ---------------------------------------------------------------------------------------------------
// Element-wise

/// Which element-wise kernel, for [`eltwise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EltOp {
    Add,
    AddChannel { hw: usize, c: usize },
    Scale { mul: f32, add: f32 },
    Act(u32),
    /// Output width `c` (input rows are `2c`).
    Geglu { c: usize },
}

/// `n` output elements; `a`, `b` inputs (b unused for unary ops).
pub fn eltwise(op: EltOp, n: usize, a: u64, b: u64, out: u64, lim: Limits) -> Result<Launch> {
    let v8 = n % 8 == 0
        && match op {
            EltOp::AddChannel { c, .. } | EltOp::Geglu { c } => c % 8 == 0,
            _ => true,
        };
    let (k8, k1) = match op {
        EltOp::Add => (Kernel::AddV8, Kernel::AddV1),
        EltOp::AddChannel { .. } => (Kernel::AddChannelV8, Kernel::AddChannelV1),
        EltOp::Scale { .. } => (Kernel::ScaleV8, Kernel::ScaleV1),
        EltOp::Act(_) => (Kernel::ActivationV8, Kernel::ActivationV1),
        EltOp::Geglu { .. } => (Kernel::GegluV8, Kernel::GegluV1),
    };
    let mut p = LcmEltwiseParams { a, b, out, n: n as u64, hw: 0, c: 0, act: 0, mul: 1.0, add: 0.0 };
    match op {
        EltOp::AddChannel { hw, c } => {
            p.hw = hw as u64;
            p.c = dim(c, "channels")?;
        }
        EltOp::Scale { mul, add } => {
            p.mul = mul;
            p.add = add;
        }
        EltOp::Act(a) => p.act = a as i32,
        EltOp::Geglu { c } => p.c = dim(c, "channels")?,
        EltOp::Add => {}
    }
    let vec = if v8 { 8 } else { 1 };
    Ok(Launch { kernel: if v8 { k8 } else { k1 }, grid: stride_grid(n / vec, lim), block: [256, 1, 1], smem: 0, params: Params::Eltwise(p) })
}

pub fn concat(rows: usize, ca: usize, cb: usize, a: u64, b: u64, out: u64, lim: Limits) -> Result<Launch> {
    let v8 = ca % 8 == 0 && cb % 8 == 0;
    let units = rows * (ca + cb) / if v8 { 8 } else { 1 };
    Ok(Launch {
        kernel: if v8 { Kernel::ConcatV8 } else { Kernel::ConcatV1 },
        grid: stride_grid(units, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Concat(LcmConcatParams { a, b, out, rows: rows as u64, ca: dim(ca, "channels")?, cb: dim(cb, "channels")? }),
    })
}

/// Nearest resize `[B, h, w, c]` -> `[B, ho, wo, c]`.
pub fn upsample(shape: [usize; 6], x: u64, out: u64, lim: Limits) -> Result<Launch> {
    let [batch, h, w, c, ho, wo] = shape;
    let v8 = c % 8 == 0;
    let units = batch * ho * wo * c / if v8 { 8 } else { 1 };
    dim(batch * h.max(ho) * w.max(wo) * c, "upsample elements")?;
    Ok(Launch {
        kernel: if v8 { Kernel::UpsampleV8 } else { Kernel::UpsampleV1 },
        grid: stride_grid(units, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Upsample(LcmUpsampleParams {
            x,
            out,
            batch: dim(batch, "batch")?,
            h: dim(h, "height")?,
            w: dim(w, "width")?,
            c: dim(c, "channels")?,
            ho: dim(ho, "height")?,
            wo: dim(wo, "width")?,
            // torch's rule: the scale is computed in f32 from the two sizes.
            scale_h: h as f32 / ho as f32,
            scale_w: w as f32 / wo as f32,
        }),
    })
}

/// Token + position embedding; `ptrs` = ids, table, positions, out, error flag.
pub fn embed(batch: usize, tokens: usize, c: usize, vocab: usize, ptrs: [u64; 5], lim: Limits) -> Result<Launch> {
    let [ids, table, positions, out, error] = ptrs;
    let v8 = c % 8 == 0;
    dim(vocab * c, "embedding table elements")?;
    Ok(Launch {
        kernel: if v8 { Kernel::EmbedV8 } else { Kernel::EmbedV1 },
        grid: stride_grid(batch * tokens * c / if v8 { 8 } else { 1 }, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Embed(LcmEmbedParams {
            ids,
            table,
            positions,
            out,
            error,
            batch: dim(batch, "batch")?,
            tokens: dim(tokens, "tokens")?,
            c: dim(c, "channels")?,
            vocab: dim(vocab, "vocabulary")?,
        }),
    })
}

pub fn timestep_embed(batch: usize, dimension: usize, flip_sin_to_cos: bool, freq_shift: f32, t: u64, out: u64, lim: Limits) -> Result<Launch> {
    Ok(Launch {
        kernel: Kernel::TimestepEmbed,
        grid: stride_grid(batch * dimension, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Timestep(LcmTimestepParams {
            t,
            out,
            batch: dim(batch, "batch")?,
            dim: dim(dimension, "embedding width")?,
            freq_shift,
            flip_sin_to_cos: flip_sin_to_cos as i32,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: Limits = Limits { sm_count: 132, smem_optin: 232_448 };
    const RTX: Limits = Limits { sm_count: 82, smem_optin: 101_376 }; // sm_86: the tightest shared memory

    #[test]
    fn attention_table_covers_every_sd15_head_and_the_general_path() {
        let pick = |d: usize, causal: bool| {
            let s = AttnShape { batch: 1, heads: 1, n_q: 77, n_kv: 77, head_dim: d, causal };
            attention(&s, 0, 0, 0, 0, RTX).map(|l| l.kernel)
        };
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
                if let Ok(l) = pick(d, causal) {
                    assert!(l.smem <= RTX.smem_optin, "{} {}", l.kernel.name(), l.smem);
                }
            }
        }
    }

    #[test]
    fn gemm_picks_tiles_by_size_and_channel_alignment() {
        let l = gemm(&GemmShape { k2: 0, ..GemmShape::linear(4096, 320, 320) }, GemmPtrs::default(), H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmLarge);
        assert_eq!(l.grid, [32, 3, 1]);
        let l = gemm(&GemmShape::linear(77, 768, 768), GemmPtrs::default(), H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmSmall);
        assert_eq!(l.grid, [2, 12, 1]);
        let conv_in = GemmShape { batch: 1, h: 64, w: 64, ci: 4, ho: 64, wo: 64, co: 320, kh: 3, kw: 3, stride: 1, pad_top: 1, pad_left: 1, ..Default::default() };
        let l = gemm(&conv_in, GemmPtrs::default(), H100).unwrap();
        assert_eq!(l.kernel, Kernel::IgemmScalarA);
        let Params::Gemm(p) = l.params else { panic!() };
        assert_eq!(p.cip, 8);
        assert!(l.smem <= RTX.smem_optin);
        let geglu = GemmShape { geglu: true, ..GemmShape::linear(4096, 320, 2560) };
        let Params::Gemm(p) = gemm(&geglu, GemmPtrs::default(), H100).unwrap().params else { panic!() };
        assert_eq!((p.ldc, p.co, p.geglu), (1280, 2560, 1));
    }

    #[test]
    fn group_norm_chunks_cover_the_pixels_exactly() {
        for (b, hw, c) in [(1, 4096, 320), (2, 64, 1280), (1, 512 * 512, 128), (1, 1, 2560), (2, 17, 96), (1, 9, 12), (1, 4096, 8192)] {
            let p = group_norm_plan(b, hw, c, if c % 32 == 0 { 32 } else { 4 }, H100).unwrap();
            assert!(p.threads <= 1024 && p.threads % (c / p.vec) == 0);
            assert!((p.chunks - 1) * p.chunk_pixels < hw && p.chunks * p.chunk_pixels >= hw, "{b} {hw} {c}: {p:?}");
            assert_eq!(p.threads / (c / p.vec), p.rows);
        }
        assert!(group_norm_plan(1, 64, 2560, 32, RTX).unwrap().stats_smem <= RTX.smem_optin as usize);
        assert!(group_norm_plan(1, 64, 320, 7, H100).is_err());
    }

    #[test]
    fn weight_layout_puts_taps_outside_channels() {
        // co=1, ci=3, 2x2: torch index (c, y, x) -> stored ((y·2 + x)·8 + c)
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let w = gemm_weight_layout(&data, 1, 3, 2, 2);
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
