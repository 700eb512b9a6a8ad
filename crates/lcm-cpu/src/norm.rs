//! GroupNorm over NHWC and LayerNorm over the last dimension. Statistics are accumulated in f64: this is
//! the reference the f16 kernels are judged against, so it should be the most exact thing in the room.

use rayon::prelude::*;

use crate::simd::simd;

const PIXEL_CHUNK: usize = 256;

/// `x` is `[B, HW, C]`; groups split C into contiguous runs of `C/groups` channels.
///
/// One pass for the statistics: per channel, sums of `x − k` and `(x − k)²` with `k` the channel's first
/// value (a shift near the mean keeps the f32 partial sums of a pixel chunk exact enough even when
/// |mean| ≫ std), folded into f64 per chunk and per group. The second pass applies
/// `x·a[c] + b[c]` (gamma, beta and the group's statistics folded per channel) and the SiLU.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    batch: usize,
    hw: usize,
    c: usize,
    groups: usize,
    eps: f32,
    silu: bool,
    out: &mut [f32],
) {
    let cg = c / groups;
    for b in 0..batch {
        let xb = &x[b * hw * c..(b + 1) * hw * c];
        let shift = &xb[..c];
        let (s1, s2) = xb
            .par_chunks(PIXEL_CHUNK * c)
            .map(|chunk| {
                let (mut s, mut q) = (vec![0.0f32; c], vec![0.0f32; c]);
                simd(|| {
                    for px in chunk.chunks_exact(c) {
                        for (((s, q), &v), &k) in s.iter_mut().zip(q.iter_mut()).zip(px).zip(shift) {
                            let d = v - k;
                            *s += d;
                            *q += d * d;
                        }
                    }
                });
                (s.iter().map(|&v| v as f64).collect::<Vec<_>>(), q.iter().map(|&v| v as f64).collect::<Vec<_>>())
            })
            .reduce(
                || (vec![0.0; c], vec![0.0; c]),
                |(mut a1, mut b1), (a2, b2)| {
                    a1.iter_mut().zip(&a2).for_each(|(a, b)| *a += b);
                    b1.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
                    (a1, b1)
                },
            );
        // Per group: Σx = Σ_c (S1_c + n_c·k_c), Σx² = Σ_c (S2_c + 2·k_c·S1_c + n_c·k_c²), in f64.
        let n_c = hw as f64;
        let mut scale = vec![0.0f32; c];
        let mut offset = vec![0.0f32; c];
        for g in 0..groups {
            let (mut sum, mut sq) = (0.0f64, 0.0f64);
            for i in g * cg..(g + 1) * cg {
                let k = shift[i] as f64;
                sum += s1[i] + n_c * k;
                sq += s2[i] + 2.0 * k * s1[i] + n_c * k * k;
            }
            let n = n_c * cg as f64;
            let mean = sum / n;
            let rstd = 1.0 / ((sq / n - mean * mean).max(0.0) + eps as f64).sqrt();
            for i in g * cg..(g + 1) * cg {
                scale[i] = (rstd * gamma[i] as f64) as f32;
                offset[i] = (beta[i] as f64 - mean * rstd * gamma[i] as f64) as f32;
            }
        }
        out[b * hw * c..(b + 1) * hw * c].par_chunks_mut(PIXEL_CHUNK * c).zip(xb.par_chunks(PIXEL_CHUNK * c)).for_each(
            |(o, xi)| {
                simd(|| {
                    for (op, xp) in o.chunks_exact_mut(c).zip(xi.chunks_exact(c)) {
                        for (((o, &x), &a), &b) in op.iter_mut().zip(xp).zip(&scale).zip(&offset) {
                            let y = x * a + b;
                            *o = if silu { crate::eltwise::silu(y) } else { y };
                        }
                    }
                })
            },
        );
    }
}

/// Each row of `c` channels: `(x − mean)/sqrt(var + eps)·gamma + beta`, mean and (biased) variance in f64.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], c: usize, eps: f32, out: &mut [f32]) {
    out.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(o, r)| {
        let mean = r.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        for i in 0..c {
            o[i] = ((r[i] as f64 - mean) * rstd) as f32 * gamma[i] + beta[i];
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two-pass f64 GroupNorm straight from the definition.
    fn reference(x: &[f32], hw: usize, c: usize, groups: usize, eps: f64) -> Vec<f32> {
        let cg = c / groups;
        let mut out = vec![0.0; x.len()];
        for g in 0..groups {
            let vals: Vec<f64> = (0..hw)
                .flat_map(|p| (g * cg..(g + 1) * cg).map(move |i| (p, i)))
                .map(|(p, i)| x[p * c + i] as f64)
                .collect();
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            for p in 0..hw {
                for i in g * cg..(g + 1) * cg {
                    out[p * c + i] = ((x[p * c + i] as f64 - mean) / (var + eps).sqrt()) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_two_pass_even_with_a_large_mean() {
        let (hw, c, groups) = (1000, 64, 32);
        for offset in [0.0f32, 300.0] {
            let x: Vec<f32> = (0..hw * c).map(|i| offset + ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 2.0).collect();
            let (gamma, beta) = (vec![1.0; c], vec![0.0; c]);
            let mut out = vec![f32::NAN; x.len()];
            group_norm(&x, &gamma, &beta, 1, hw, c, groups, 1e-5, false, &mut out);
            let want = reference(&x, hw, c, groups, 1e-5);
            let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(err < 1e-4, "offset {offset}: max error {err}");
        }
    }
}
