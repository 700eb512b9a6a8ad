//! The memory-bound ops: activations, adds, concatenation, resize, embeddings.

use lcm_core::Activation;
use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// Runs `f` compiled for AVX2+FMA when the CPU has them, else for the baseline. Loops in `f` over slices
/// then vectorise 8-wide with FMA and native rounding; the binary still runs on any x86-64.
#[inline(always)]
pub fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// SiLU, `x·sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// e^x to within ~2 ulp, written without branches, calls or float→int conversions so loops over slices
/// vectorise (libm's `expf` is a call per element; Rust's saturating `as i32` does not vectorise well):
/// x = k·ln2 + r with |r| ≤ ln2/2, k rounded by adding 1.5·2²³ (k then sits in the low mantissa bits),
/// e^r by its degree-7 Taylor polynomial (truncation error r⁸/8! < 1e-8), times 2^k built in the
/// exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let k_int = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits(((k_int + 127) as u32) << 23)
}

/// Independent partial results per reduction: two AVX2 registers. A plain `iter().sum()` or max fold
/// is one serial chain (each step waits for the last; f32 order may not change), so it never vectorises.
const LANES: usize = 16;

/// Σ xs, in `LANES` interleaved partial sums.
#[inline(always)]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// max(xs), in `LANES` interleaved partial maxima; −∞ for an empty slice.
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a = a.max(*x);
        }
    }
    acc.iter().fold(rest, |m, &x| m.max(x))
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

/// `out = act(x)` element-wise.
pub fn activation(x: &[f32], act: Activation, out: &mut [f32]) {
    let f = match act {
        Activation::Silu => silu,
        Activation::Gelu => gelu,
        Activation::QuickGelu => quick_gelu,
        Activation::Relu => relu,
        Activation::TanhClamp => tanh_clamp,
    };
    map(x, out, f);
}

/// `out[i] = f(x[i])`, in parallel chunks, each under [`simd`].
pub fn map(x: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, i)| {
        simd(|| o.iter_mut().zip(i).for_each(|(o, &i)| *o = f(i)));
    });
}

/// `out = a + b` element-wise.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(o, (a, b))| {
        for i in 0..o.len() {
            o[i] = a[i] + b[i];
        }
    });
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
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0.0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 0.000_37;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert!(exp(-200.0) > 0.0 && exp(-200.0) < 1e-37, "clamped, never 0 or NaN");
        assert!(silu(-100.0).abs() < 1e-30 && (silu(100.0) - 100.0).abs() < 1e-4);
    }
}
