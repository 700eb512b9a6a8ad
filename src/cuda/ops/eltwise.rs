//! The element-wise family (kernels/eltwise.cu): every `MapKind`, the broadcast channel add, GEGLU,
//! concatenation, nearest resize, embeddings and casts — launch planning and the record arm.

use lcm_core::lcm::StepRow;
use lcm_core::{Activation, Elem, Error, MapKind, Op, Problem, Result};

use crate::cuda::abi::*;
use crate::cuda::kernel_table::Kernel;
use crate::cuda::launch::{dim, no_f32, stride_grid, Launch, Limits, Params, Precision, Step};
use crate::cuda::record::{mislowered, Recorder};

/// The `map` kernels' function for each [`MapKind`] (kernels/eltwise.cu's switch) and its constants
/// (mul, add).
fn map_op(kind: MapKind) -> (LcmMapOp, f32, f32) {
    match kind {
        MapKind::Act(Activation::Silu) => (LcmMapOp_LCM_MAP_SILU, 1.0, 0.0),
        MapKind::Act(Activation::Gelu) => (LcmMapOp_LCM_MAP_GELU, 1.0, 0.0),
        MapKind::Act(Activation::QuickGelu) => (LcmMapOp_LCM_MAP_QUICK_GELU, 1.0, 0.0),
        MapKind::Act(Activation::Relu) => (LcmMapOp_LCM_MAP_RELU, 1.0, 0.0),
        MapKind::Act(Activation::TanhClamp) => (LcmMapOp_LCM_MAP_TANH_CLAMP, 1.0, 0.0),
        MapKind::Scale { mul, add } => (LcmMapOp_LCM_MAP_SCALE, mul, add),
        MapKind::Add => (LcmMapOp_LCM_MAP_ADD, 1.0, 0.0),
    }
}

/// Which element-wise kernel, for [`eltwise`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EltOp {
    Map(MapKind),
    AddChannel {
        hw: usize,
        c: usize,
    },
    /// Output width `c` (input rows are `2c`).
    Geglu {
        c: usize,
    },
}

/// `n` output elements of `prec`; `a`, `b` inputs (b 0 for unary ops).
pub fn eltwise(op: EltOp, n: usize, a: u64, b: u64, out: u64, prec: Precision, lim: Limits) -> Result<Launch> {
    let vec = prec.vec();
    let vectorised = n.is_multiple_of(vec)
        && match op {
            EltOp::AddChannel { c, .. } | EltOp::Geglu { c } => c % vec == 0,
            _ => true,
        };
    let (kv, k1) = match (prec, op) {
        (Precision::F16, EltOp::Map(_)) => (Kernel::MapV8, Kernel::MapV1),
        (Precision::F16, EltOp::AddChannel { .. }) => (Kernel::AddChannelV8, Kernel::AddChannelV1),
        (Precision::F16, EltOp::Geglu { .. }) => (Kernel::GegluV8, Kernel::GegluV1),
        (Precision::F32, EltOp::Map(_)) => (Kernel::MapV4F32, Kernel::MapV1F32),
        (Precision::F32, EltOp::AddChannel { .. }) => return Err(no_f32("add_channel")),
        (Precision::F32, EltOp::Geglu { .. }) => return Err(no_f32("geglu")),
    };
    let mut p = LcmEltwiseParams { a, b, out, n: n as u64, hw: 0, c: 0, op: 0, mul: 1.0, add: 0.0 };
    match op {
        EltOp::Map(kind) => {
            let (code, mul, add) = map_op(kind);
            (p.op, p.mul, p.add) = (code as i32, mul, add);
        }
        EltOp::AddChannel { hw, c } => {
            p.hw = hw as u64;
            p.c = dim(c, "channels")?;
        }
        EltOp::Geglu { c } => p.c = dim(c, "channels")?,
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

/// `out = x + scale[image]·y` over `batch` images of `per_image` elements (f16); `ptrs` = x, y, the f32
/// weights of row 0 of the op's row, out.
pub fn add_scaled(batch: usize, per_image: usize, ptrs: [u64; 4], lim: Limits) -> Result<Launch> {
    let [x, y, scale, out] = ptrs;
    let v8 = per_image.is_multiple_of(8);
    let n = batch * per_image;
    Ok(Launch {
        kernel: if v8 { Kernel::AddScaledV8 } else { Kernel::AddScaledV1 },
        grid: stride_grid(n / if v8 { 8 } else { 1 }, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::AddScaled(LcmAddScaledParams {
            x,
            y,
            scale,
            out,
            n: n as u64,
            per_image: per_image.max(1) as u64,
        }),
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

/// `n` outputs `x[i mod n_in] / div + add` from elements of `from` to `to`; `sizes` = [n, n_in];
/// `ptrs` = x, out, and a schedule row whose `input_div` replaces `div` (0: none).
pub fn cast(
    [from, to]: [Precision; 2],
    sizes: [usize; 2],
    div: f32,
    add: f32,
    ptrs: [u64; 3],
    lim: Limits,
) -> Result<Launch> {
    let [x, out, row] = ptrs;
    let [n, n_in] = sizes;
    let kernel = match (from, to) {
        (Precision::F32, Precision::F16) => Kernel::CastF32F16,
        (Precision::F16, Precision::F32) => Kernel::CastF16F32,
        (Precision::F32, Precision::F32) => Kernel::CastF32F32,
        (Precision::F16, Precision::F16) => return Err(Error::backend("cast between two f16 tensors")),
    };
    Ok(Launch {
        kernel,
        grid: stride_grid(n, lim),
        block: [256, 1, 1],
        smem: 0,
        params: Params::Cast(LcmCastParams { x, out, row, n: n as u64, n_in: n_in.max(1) as u64, div, add }),
    })
}

pub(crate) fn record(r: &Recorder, op: &Op, problem: &Problem, steps: &mut Vec<Step>) -> Result<()> {
    let (prec, lim) = (r.act_precision(), r.limits());
    let launch = match (*op, *problem) {
        (Op::Map { kind, x, y, out }, Problem::Map { n }) => {
            eltwise(EltOp::Map(kind), n, r.addr(x)?, r.opt_addr(y)?, r.addr(out)?, prec, lim)?
        }
        (Op::Geglu { x, out }, Problem::Geglu { rows, c }) => {
            eltwise(EltOp::Geglu { c }, rows * c, r.addr(x)?, 0, r.addr(out)?, prec, lim)?
        }
        (Op::AddChannel { x, bias, out }, Problem::AddChannel { batch, hw, c }) => {
            let ptrs = [r.addr(x)?, r.addr(bias)?, r.addr(out)?];
            eltwise(EltOp::AddChannel { hw, c }, batch * hw * c, ptrs[0], ptrs[1], ptrs[2], prec, lim)?
        }
        (Op::AddScaled { x, y, scale, row, out }, Problem::AddScaled { batch, per_image }) => {
            r.f16_only("add_scaled")?;
            if r.elem(scale) != Elem::F32 {
                return Err(Error::backend("add_scaled: the weights must be F32"));
            }
            let scale = r.addr(scale)? + (row * batch * 4) as u64; // row `row` of f32 weights
            add_scaled(batch, per_image, [r.addr(x)?, r.addr(y)?, scale, r.addr(out)?], lim)?
        }
        (Op::Concat { a, b, out }, Problem::Concat { rows, ca, cb }) => {
            r.f16_only("concat")?;
            concat(rows, ca, cb, r.addr(a)?, r.addr(b)?, r.addr(out)?, lim)?
        }
        (Op::Upsample { x, out }, Problem::Upsample { batch, h, w, c, ho, wo }) => {
            upsample([batch, h, w, c, ho, wo], r.addr(x)?, r.addr(out)?, prec, lim)?
        }
        (Op::Embed { ids, table, positions, out }, Problem::Embed { batch, tokens, c, vocab }) => {
            r.f16_only("embed")?;
            if r.elem(ids) != Elem::I32 {
                return Err(Error::backend("embed: token ids must be I32"));
            }
            let ptrs = [r.addr(ids)?, r.addr(table)?, r.addr(positions)?, r.addr(out)?, r.status()];
            embed(batch, tokens, c, vocab, ptrs, lim)?
        }
        (Op::TimestepEmbed { t, row, flip_sin_to_cos, freq_shift, out }, Problem::Timestep { batch, dim }) => {
            r.f16_only("timestep_embed")?;
            let t = r.addr(t)? + (row * batch * 2) as u64; // row `row` of f16 timesteps
            timestep_embed(batch, dim, flip_sin_to_cos, freq_shift, t, r.addr(out)?, lim)?
        }
        (Op::Cast { x, div, add, row, out }, Problem::Cast { n, n_in }) => {
            let elems = [r.precision(x), r.precision(out)];
            let row = match row {
                Some((schedule, step)) => r.addr(schedule)? + (step * std::mem::size_of::<StepRow>()) as u64,
                None => 0,
            };
            cast(elems, [n, n_in], div, add, [r.addr(x)?, r.addr(out)?, row], lim)?
        }
        _ => return Err(mislowered(op, problem)),
    };
    steps.push(Step::Kernel(launch));
    Ok(())
}
