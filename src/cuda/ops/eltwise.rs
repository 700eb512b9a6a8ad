//! Element-wise, copy and embedding launch planning (kernels/eltwise.cu).

use lcm_core::Result;

use super::{dim, no_f32, stride_grid, Launch, Limits, Params, Precision};
use crate::cuda::abi::{
    LcmCastParams, LcmConcatParams, LcmEltwiseParams, LcmEmbedParams, LcmPrediction, LcmStepParams, LcmStepRow,
    LcmTimestepParams, LcmUpsampleParams,
};
use crate::cuda::functions::Kernel;
use lcm_core::lcm::Prediction;

/// Which element-wise kernel, for [`eltwise`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EltOp {
    Add,
    AddChannel {
        hw: usize,
        c: usize,
    },
    Scale {
        mul: f32,
        add: f32,
    },
    Act(u32),
    /// Output width `c` (input rows are `2c`).
    Geglu {
        c: usize,
    },
}

/// `n` output elements of `prec`; `a`, `b` inputs (b unused for unary ops).
pub fn eltwise(op: EltOp, n: usize, a: u64, b: u64, out: u64, prec: Precision, lim: Limits) -> Result<Launch> {
    let vec = prec.vec();
    let vectorised = n.is_multiple_of(vec)
        && match op {
            EltOp::AddChannel { c, .. } | EltOp::Geglu { c } => c % vec == 0,
            _ => true,
        };
    let (kv, k1) = match (prec, op) {
        (Precision::F16, EltOp::Add) => (Kernel::AddV8, Kernel::AddV1),
        (Precision::F16, EltOp::AddChannel { .. }) => (Kernel::AddChannelV8, Kernel::AddChannelV1),
        (Precision::F16, EltOp::Scale { .. }) => (Kernel::ScaleV8, Kernel::ScaleV1),
        (Precision::F16, EltOp::Act(_)) => (Kernel::ActivationV8, Kernel::ActivationV1),
        (Precision::F16, EltOp::Geglu { .. }) => (Kernel::GegluV8, Kernel::GegluV1),
        (Precision::F32, EltOp::Add) => (Kernel::AddV4F32, Kernel::AddV1F32),
        (Precision::F32, EltOp::Scale { .. }) => (Kernel::ScaleV4F32, Kernel::ScaleV1F32),
        (Precision::F32, EltOp::Act(_)) => (Kernel::ActivationV4F32, Kernel::ActivationV1F32),
        (Precision::F32, EltOp::AddChannel { .. }) => return Err(no_f32("add_channel")),
        (Precision::F32, EltOp::Geglu { .. }) => return Err(no_f32("geglu")),
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
    let vec = if vectorised { vec } else { 1 };
    Ok(Launch {
        kernel: if vectorised { kv } else { k1 },
        grid: stride_grid(n / vec, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Eltwise(p),
    })
}

pub fn concat(rows: usize, ca: usize, cb: usize, a: u64, b: u64, out: u64, lim: Limits) -> Result<Launch> {
    let v8 = ca.is_multiple_of(8) && cb.is_multiple_of(8);
    let units = rows * (ca + cb) / if v8 { 8 } else { 1 };
    Ok(Launch {
        kernel: if v8 { Kernel::ConcatV8 } else { Kernel::ConcatV1 },
        grid: stride_grid(units, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Concat(LcmConcatParams {
            a,
            b,
            out,
            rows: rows as u64,
            ca: dim(ca, "channels")?,
            cb: dim(cb, "channels")?,
        }),
    })
}

/// Nearest resize `[B, h, w, c]` -> `[B, ho, wo, c]` of `prec`.
pub fn upsample(shape: [usize; 6], x: u64, out: u64, prec: Precision, lim: Limits) -> Result<Launch> {
    let [batch, h, w, c, ho, wo] = shape;
    let vec = if c % prec.vec() == 0 { prec.vec() } else { 1 };
    let units = batch * ho * wo * c / vec;
    dim(batch * h.max(ho) * w.max(wo) * c, "upsample elements")?;
    let kernel = match (prec, vec > 1) {
        (Precision::F16, true) => Kernel::UpsampleV8,
        (Precision::F16, false) => Kernel::UpsampleV1,
        (Precision::F32, true) => Kernel::UpsampleV4F32,
        (Precision::F32, false) => Kernel::UpsampleV1F32,
    };
    Ok(Launch {
        kernel,
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
    let v8 = c.is_multiple_of(8);
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

pub fn timestep_embed(
    batch: usize,
    dimension: usize,
    flip_sin_to_cos: bool,
    freq_shift: f32,
    t: u64,
    out: u64,
    lim: Limits,
) -> Result<Launch> {
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

/// `n` outputs `x[i mod n_in] / div + add` from elements of `from` to `to`; `sizes` = [n, n_in].
pub fn cast(
    [from, to]: [Precision; 2],
    sizes: [usize; 2],
    div: f32,
    add: f32,
    x: u64,
    out: u64,
    lim: Limits,
) -> Result<Launch> {
    let [n, n_in] = sizes;
    let kernel = match (from, to) {
        (Precision::F32, Precision::F16) => Kernel::CastF32F16,
        (Precision::F16, Precision::F32) => Kernel::CastF16F32,
        (Precision::F32, Precision::F32) => Kernel::CastF32F32,
        (Precision::F16, Precision::F16) => return Err(lcm_core::Error::backend("cast between two f16 tensors")),
    };
    Ok(Launch {
        kernel,
        grid: stride_grid(n, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Cast(LcmCastParams { x, out, n: n as u64, n_in: n_in.max(1) as u64, div, add }),
    })
}

/// The LCM step over `n` latent elements; `ptrs` = sample, model output, noise (0 on the last step),
/// schedule row, out.
pub fn lcm_step(
    n: usize,
    guided: bool,
    prediction: Prediction,
    clip: Option<f32>,
    ptrs: [u64; 5],
    lim: Limits,
) -> Result<Launch> {
    let [sample, model_output, noise, row, out] = ptrs;
    const _: () = assert!(std::mem::size_of::<LcmStepRow>() == std::mem::size_of::<lcm_core::lcm::StepRow>());
    let prediction = match prediction {
        Prediction::Epsilon => LcmPrediction::LCM_PRED_EPSILON,
        Prediction::VPrediction => LcmPrediction::LCM_PRED_V,
        Prediction::Sample => LcmPrediction::LCM_PRED_SAMPLE,
    };
    Ok(Launch {
        kernel: Kernel::LcmStep,
        grid: stride_grid(n, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Step(LcmStepParams {
            sample,
            model_output,
            noise,
            row,
            out,
            n: n as u64,
            clip_range: clip.unwrap_or(0.0),
            clip: clip.is_some() as i32,
            prediction: prediction as i32,
            guided: guided as i32,
        }),
    })
}
