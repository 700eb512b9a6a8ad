//! Vector math the CPU families share: a region compiled for AVX2+FMA, an exp that vectorises, and
//! reductions in interleaved partial sums.

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
    }
}
