//! Multi-head attention, a block of queries of one head at a time: the score block `[256, M]` lives in
//! a per-task buffer, so memory stays bounded even for the VAE's 4096×4096 single-head attention. The
//! block is large because each task re-packs that head's K and V for the GEMMs.

use rayon::prelude::*;

use crate::gemm::{gemm_into_block, MatRef};

const QUERY_BLOCK: usize = 256;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The dimensions of one attention call.
pub struct AttnShape {
    /// Batch.
    pub batch: usize,
    /// query tokens
    pub n: usize,
    /// key tokens
    pub m: usize,
    /// channels = heads · head dim
    pub c: usize,
    /// Heads; `c` must be a multiple.
    pub heads: usize,
    /// Query i sees keys 0..=i only.
    pub causal: bool,
}

/// `out[b, i, h] = softmax(q_h·k_hᵀ / sqrt(d)) · v_h`, all `[B, tokens, C]`.
pub fn attention(s: &AttnShape, q: &[f32], k: &[f32], v: &[f32], out: &mut [f32]) {
    let d = s.c / s.heads;
    let scale = 1.0 / (d as f32).sqrt();
    let blocks = s.n.div_ceil(QUERY_BLOCK);
    assert!(out.len() >= s.batch * s.n * s.c && q.len() >= s.batch * s.n * s.c);
    assert!(k.len() >= s.batch * s.m * s.c && v.len() >= s.batch * s.m * s.c);
    let optr = SendPtr(out.as_mut_ptr());
    (0..s.batch * s.heads * blocks).into_par_iter().for_each_init(
        || vec![0.0f32; QUERY_BLOCK * s.m],
        |scores, task| {
            let (b, rest) = (task / (s.heads * blocks), task % (s.heads * blocks));
            let (h, blk) = (rest / blocks, rest % blocks);
            let q0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(s.n - q0);
            let qv = MatRef { data: &q[(b * s.n + q0) * s.c + h * d..], rs: s.c, cs: 1 };
            let kt = MatRef { data: &k[b * s.m * s.c + h * d..], rs: 1, cs: s.c };
            let vv = MatRef { data: &v[b * s.m * s.c + h * d..], rs: s.c, cs: 1 };
            let sc = &mut scores[..rows * s.m];
            // SAFETY: `scores` is this task's own buffer of rows×m.
            unsafe { gemm_into_block(rows, s.m, d, qv, kt, sc.as_mut_ptr(), s.m) };
            for (r, row) in sc.chunks_mut(s.m).enumerate() {
                let visible = if s.causal { (q0 + r + 1).min(s.m) } else { s.m };
                softmax_row(&mut row[..visible], scale);
                row[visible..].fill(0.0);
            }
            let p = MatRef { data: sc, rs: s.m, cs: 1 };
            let o = optr;
            // SAFETY: rows q0..q0+rows, channels h·d..(h+1)·d of batch b belong to this task alone, and
            // lie inside `out` (asserted above).
            unsafe { gemm_into_block(rows, d, s.m, p, vv, o.0.add((b * s.n + q0) * s.c + h * d), s.c) };
        },
    );
}

fn softmax_row(row: &mut [f32], scale: f32) {
    crate::elementwise::simd(|| {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
        row.iter_mut().for_each(|x| *x = crate::elementwise::exp(*x * scale - max));
        let sum: f32 = row.iter().sum();
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_softmax_attention() {
        let s = AttnShape { batch: 2, n: 70, m: 9, c: 6, heads: 2, causal: true };
        let q: Vec<f32> = (0..2 * 70 * 6).map(|i| ((i * 7 % 17) as f32 - 8.0) / 8.0).collect();
        let k: Vec<f32> = (0..2 * 9 * 6).map(|i| ((i * 5 % 13) as f32 - 6.0) / 6.0).collect();
        let v: Vec<f32> = (0..2 * 9 * 6).map(|i| ((i * 3 % 11) as f32 - 5.0) / 5.0).collect();
        let mut out = vec![f32::NAN; q.len()];
        attention(&s, &q, &k, &v, &mut out);
        let d = 3;
        for b in 0..2 {
            for h in 0..2 {
                for i in 0..70 {
                    let vis = (i + 1).min(9);
                    let logits: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..d)
                                .map(|p| (q[(b * 70 + i) * 6 + h * d + p] * k[(b * 9 + j) * 6 + h * d + p]) as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for p in 0..d {
                        let want: f64 = (0..vis).map(|j| e[j] / z * v[(b * 9 + j) * 6 + h * d + p] as f64).sum();
                        let got = out[(b * 70 + i) * 6 + h * d + p] as f64;
                        assert!((got - want).abs() < 1e-5, "b{b} h{h} i{i} p{p}: {got} vs {want}");
                    }
                }
            }
        }
    }
}
