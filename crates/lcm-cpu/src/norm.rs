//! GroupNorm over NHWC and LayerNorm over the last dimension. Statistics are accumulated in f64: this is
//! the reference the f16 kernels are judged against, so it should be the most exact thing in the room.

use rayon::prelude::*;

const PIXEL_CHUNK: usize = 256;

/// `x` is `[B, HW, C]`; groups split C into contiguous runs of `C/groups` channels.
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
        let (sum, sq) = xb
            .par_chunks(PIXEL_CHUNK * c)
            .map(|chunk| {
                let (mut s, mut q) = (vec![0.0f64; groups], vec![0.0f64; groups]);
                for px in chunk.chunks_exact(c) {
                    for (g, vals) in px.chunks_exact(cg).enumerate() {
                        for &v in vals {
                            s[g] += v as f64;
                            q[g] += (v as f64) * (v as f64);
                        }
                    }
                }
                (s, q)
            })
            .reduce(
                || (vec![0.0; groups], vec![0.0; groups]),
                |(mut s1, mut q1), (s2, q2)| {
                    s1.iter_mut().zip(&s2).for_each(|(a, b)| *a += b);
                    q1.iter_mut().zip(&q2).for_each(|(a, b)| *a += b);
                    (s1, q1)
                },
            );
        let n = (hw * cg) as f64;
        let stats: Vec<(f32, f32)> = (0..groups)
            .map(|g| {
                let mean = sum[g] / n;
                let var = (sq[g] / n - mean * mean).max(0.0);
                (mean as f32, (1.0 / (var + eps as f64).sqrt()) as f32)
            })
            .collect();
        out[b * hw * c..(b + 1) * hw * c].par_chunks_mut(PIXEL_CHUNK * c).zip(xb.par_chunks(PIXEL_CHUNK * c)).for_each(
            |(o, xi)| {
                for (op, xp) in o.chunks_exact_mut(c).zip(xi.chunks_exact(c)) {
                    for ch in 0..c {
                        let (mean, rstd) = stats[ch / cg];
                        let y = (xp[ch] - mean) * rstd * gamma[ch] + beta[ch];
                        op[ch] = if silu { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            },
        );
    }
}

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
