//! The element-wise family (kernels/eltwise.cu): every `MapKind`, the broadcast channel add, GEGLU,
//! concatenation, nearest resize, token and timestep embeddings, and casts.

use lcm_core::{Activation, MapKind};
use rayon::prelude::*;

use crate::simd::{exp, simd};

const CHUNK: usize = 1 << 14;

/// `out = kind(x)`, or `kind(x, y)` for a binary kind: the CPU side of every [`MapKind`], one closure
/// each.
pub fn map(kind: MapKind, x: &[f32], y: Option<&[f32]>, out: &mut [f32]) {
    let y = || y.expect("a binary map has its second operand (the lowering checks)");
    match kind {
        MapKind::Act(Activation::Silu) => unary(x, out, silu),
        MapKind::Act(Activation::Gelu) => unary(x, out, gelu),
        MapKind::Act(Activation::QuickGelu) => unary(x, out, quick_gelu),
        MapKind::Act(Activation::Relu) => unary(x, out, relu),
        MapKind::Act(Activation::TanhClamp) => unary(x, out, tanh_clamp),
        MapKind::Scale { mul, add } => unary(x, out, |v| v * mul + add),
        MapKind::Add => binary(x, y(), out, |a, b| a + b),
    }
}

/// SiLU, `x·sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Exact GELU, `x·Φ(x)` (torch's default `approximate="none"`).
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// CLIP's `x·sigmoid(1.702x)`.
#[inline(always)]
pub fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + exp(-1.702 * x))
}

/// `max(x, 0)`, NaN kept (as torch's relu; `f32::max` would turn NaN into 0 and hide it).
pub fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// TAESD's latent clamp `3·tanh(x/3)`, divided (not multiplied by 1/3) as torch does.
pub fn tanh_clamp(x: f32) -> f32 {
    (x / 3.0).tanh() * 3.0
}

/// `out[i] = f(x[i])`, in parallel chunks, each under [`simd`].
fn unary(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, i)| {
        simd(|| o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i)));
    });
}

/// `out[i] = f(a[i], b[i])`, in parallel chunks, each under [`simd`].
fn binary(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        simd(|| o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&a, &b))| *o = f(a, b)));
    });
}

/// `out[i] = x[i mod len(x)] / div + add`: the input repeated over `out` (a guided batch), converted.
pub fn cast(x: &[f32], div: f32, add: f32, out: &mut [f32]) {
    out.chunks_mut(x.len()).for_each(|o| unary(x, o, |v| v / div + add));
}

/// `out[b, p, c] = x[b, p, c] + bias[b, c]`.
pub fn add_channel(x: &[f32], bias: &[f32], batch: usize, c: usize, out: &mut [f32]) {
    let per_batch = x.len() / batch;
    out.par_chunks_mut(c).zip(x.par_chunks(c)).enumerate().for_each(|(px, (o, i))| {
        let bb = &bias[(px * c / per_batch) * c..][..c];
        for ch in 0..c {
            o[ch] = i[ch] + bb[ch];
        }
    });
}

/// `x + scale[b]·y` for each image b of `per_image` elements (`scale`: one row of an `AddScaled`'s
/// weights).
pub fn add_scaled(x: &[f32], y: &[f32], scale: &[f32], per_image: usize, out: &mut [f32]) {
    out.par_chunks_mut(per_image).zip(x.par_chunks(per_image).zip(y.par_chunks(per_image))).enumerate().for_each(
        |(b, (o, (x, y)))| {
            let s = scale[b];
            for i in 0..o.len() {
                o[i] = x[i] + s * y[i];
            }
        },
    );
}

/// Rows of `a` (width ca) then `b` (width cb) side by side.
pub fn concat(a: &[f32], b: &[f32], ca: usize, cb: usize, out: &mut [f32]) {
    out.par_chunks_mut(ca + cb).enumerate().for_each(|(r, o)| {
        o[..ca].copy_from_slice(&a[r * ca..(r + 1) * ca]);
        o[ca..].copy_from_slice(&b[r * cb..(r + 1) * cb]);
    });
}

/// `x [B, hi, wi, C]` -> `out [B, ho, wo, C]`, nearest: src = min(floor(dst·in/out), in-1), the index
/// torch's `interpolate(mode="nearest")` computes (in f32, as it does).
pub fn upsample_nearest(x: &[f32], hi: usize, wi: usize, c: usize, ho: usize, wo: usize, out: &mut [f32]) {
    let src = |dst: usize, n_in: usize, n_out: usize| {
        ((dst as f32 * (n_in as f32 / n_out as f32)).floor() as usize).min(n_in - 1)
    };
    out.par_chunks_mut(wo * c).enumerate().for_each(|(row, o)| {
        let (b, oy) = (row / ho, row % ho);
        let iy = src(oy, hi, ho);
        for ox in 0..wo {
            let ix = src(ox, wi, wo);
            let at = ((b * hi + iy) * wi + ix) * c;
            o[ox * c..(ox + 1) * c].copy_from_slice(&x[at..at + c]);
        }
    });
}

/// `x = [hidden | gate]` per row (width 2n) -> `hidden·gelu(gate)` (width n).
pub fn geglu(x: &[f32], n: usize, out: &mut [f32]) {
    out.par_chunks_mut(n).zip(x.par_chunks(2 * n)).for_each(|(o, r)| {
        for i in 0..n {
            o[i] = r[i] * gelu(r[n + i]);
        }
    });
}

/// Token plus position embedding; ids are i32 stored bitwise in the f32 arena.
pub fn embed(
    ids: &[f32],
    table: &[f32],
    positions: &[f32],
    tokens: usize,
    c: usize,
    vocab: usize,
    out: &mut [f32],
) -> Result<(), i64> {
    for (r, o) in out.chunks_mut(c).enumerate() {
        let id = ids[r].to_bits() as i32 as i64;
        if id < 0 || id as usize >= vocab {
            return Err(id);
        }
        let t = r % tokens;
        let e = &table[id as usize * c..][..c];
        let p = &positions[t * c..][..c];
        for i in 0..c {
            o[i] = e[i] + p[i];
        }
    }
    Ok(())
}

/// diffusers' `get_timestep_embedding` (max_period 10000, scale 1), step for step in f32.
pub fn timestep_embed(t: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f32, out: &mut [f32]) {
    let half = dim / 2;
    let neg_log = -(10000f64.ln() as f32);
    let freqs: Vec<f32> = (0..half).map(|j| ((neg_log * j as f32) / (half as f32 - freq_shift)).exp()).collect();
    for (b, &tb) in t.iter().enumerate() {
        let o = &mut out[b * dim..(b + 1) * dim];
        o.fill(0.0); // odd dims are zero-padded at the end
        for (j, &f) in freqs.iter().enumerate() {
            let arg = (tb * f) as f64;
            let (s, c) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos { (c, s) } else { (s, c) };
            o[j] = first;
            o[half + j] = second;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_saturates_without_nan() {
        assert!(silu(-100.0).abs() < 1e-30 && (silu(100.0) - 100.0).abs() < 1e-4);
    }
}
