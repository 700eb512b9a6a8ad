//! Multi-head attention as one fused, blocked kernel (flash attention on the CPU): for a block of
//! queries of one head, the keys are visited in blocks; each `[QUERY_BLOCK, KEY_BLOCK]` score block is
//! computed, turned into probabilities with a running (online) softmax, and multiplied into an output
//! accumulator at once, so the score matrix is never written out. Everything a task touches (its
//! queries, one key and value block, the score block and the accumulator) fits in L2, where the
//! previous two-GEMM form streamed a `[256, M]` score block (4 MB at 4096 keys) through memory twice.

use rayon::prelude::*;

use lcm_core::KeyLimit;

use crate::gemm::{gemm_serial, MatRef};

/// Queries per task. Measured (2-core AVX-512 VM, SD1.5 4096-token self-attention, CPU time against the
/// two-GEMM form): 64 queries x 256 keys 1.12x, 256 x 512 0.88x, 256 x 1024 0.86x, 512 x 512 0.85x.
/// Small blocks lose to re-packing each key/value block per task; 256 x 512 keeps the score block at
/// 512 KB, inside L2, and still gives a 4096-token call 128 tasks.
const QUERY_BLOCK: usize = 256;
/// Keys per score block.
const KEY_BLOCK: usize = 512;

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
    /// Batch rows that see only the first keys: each such row runs the same key loop as a call whose
    /// k and v hold those keys alone, so its result is bit for bit that call's.
    pub key_limit: Option<KeyLimit>,
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
        || Task::new(d),
        |t, task| {
            let (b, rest) = (task / (s.heads * blocks), task % (s.heads * blocks));
            let (h, blk) = (rest / blocks, rest % blocks);
            let q0 = blk * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(s.n - q0);
            // The keys row b sees (its limit); causal: no query of this block sees a key past its own
            // last row. The batch strides keep the full m.
            let m = KeyLimit::keys_for(s.key_limit, b, s.m);
            let keys = if s.causal { (q0 + rows).min(m) } else { m };
            let qv = MatRef { data: &q[(b * s.n + q0) * s.c + h * d..], rs: s.c, cs: 1 };
            t.start(rows);
            for k0 in (0..keys).step_by(KEY_BLOCK) {
                let cols = KEY_BLOCK.min(keys - k0);
                let kt = MatRef { data: &k[(b * s.m + k0) * s.c + h * d..], rs: 1, cs: s.c };
                let vv = MatRef { data: &v[(b * s.m + k0) * s.c + h * d..], rs: s.c, cs: 1 };
                let sc = &mut t.scores[..rows * cols];
                gemm_serial(rows, cols, d, qv, kt, sc, cols, false);
                let visible = |r: usize| if s.causal { (q0 + r + 1).saturating_sub(k0).min(cols) } else { cols };
                t.online_softmax(rows, cols, scale, visible);
                let p = MatRef { data: &t.scores[..rows * cols], rs: cols, cs: 1 };
                gemm_serial(rows, d, cols, p, vv, &mut t.acc[..rows * d], d, true);
            }
            let o = optr; // the whole SendPtr, not its raw field (closures capture disjoint fields)
                          // SAFETY: rows q0..q0+rows, channels h·d..(h+1)·d of batch b belong to this task alone, and
                          // lie inside `out` (asserted above).
            unsafe { t.finish(rows, o.0.add((b * s.n + q0) * s.c + h * d), s.c) };
        },
    );
}

/// One task's buffers: the score block, the output accumulator and each row's running max and sum.
struct Task {
    d: usize,
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Task {
    fn new(d: usize) -> Self {
        Task {
            d,
            scores: vec![0.0; QUERY_BLOCK * KEY_BLOCK],
            acc: vec![0.0; QUERY_BLOCK * d],
            max: vec![f32::NEG_INFINITY; QUERY_BLOCK],
            sum: vec![0.0; QUERY_BLOCK],
        }
    }

    fn start(&mut self, rows: usize) {
        self.acc[..rows * self.d].fill(0.0);
        self.max[..rows].fill(f32::NEG_INFINITY);
        self.sum[..rows].fill(0.0);
    }

    /// Turns the `[rows, cols]` score block into unnormalised probabilities against each row's running
    /// max, rescaling what the row accumulated so far when the max grows. Row r sees `visible(r)` keys
    /// of the block; the rest get probability 0.
    fn online_softmax(&mut self, rows: usize, cols: usize, scale: f32, visible: impl Fn(usize) -> usize) {
        let d = self.d;
        crate::simd::simd(|| {
            for (r, row) in self.scores[..rows * cols].chunks_mut(cols).enumerate() {
                let vis = visible(r);
                let (seen, hidden) = row.split_at_mut(vis);
                hidden.fill(0.0);
                if vis == 0 {
                    continue;
                }
                let block_max = crate::simd::max(seen) * scale;
                let new_max = self.max[r].max(block_max);
                // exp(-inf) = 0 on the first block: nothing accumulated yet to rescale.
                let correction = crate::simd::exp(self.max[r] - new_max);
                // Separate passes: each vectorises, as one loop carrying the sum would not.
                seen.iter_mut().for_each(|x| *x = crate::simd::exp(*x * scale - new_max));
                let sum = crate::simd::sum(seen);
                self.sum[r] = self.sum[r] * correction + sum;
                self.max[r] = new_max;
                if correction != 1.0 {
                    self.acc[r * d..(r + 1) * d].iter_mut().for_each(|a| *a *= correction);
                }
            }
        })
    }

    /// Writes `acc / sum` row by row to `out` (leading dimension `ld`).
    ///
    /// # Safety
    /// `out` must be valid for writes of `rows` rows of `d` elements at stride `ld`, owned by this task.
    unsafe fn finish(&self, rows: usize, out: *mut f32, ld: usize) {
        for r in 0..rows {
            let inv = 1.0 / self.sum[r];
            let dst = std::slice::from_raw_parts_mut(out.add(r * ld), self.d);
            for (o, a) in dst.iter_mut().zip(&self.acc[r * self.d..(r + 1) * self.d]) {
                *o = a * inv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `attention` against a float64 softmax over every visible key. The logits reach ~±20.
    fn check(batch: usize, n: usize, m: usize, heads: usize, d: usize, causal: bool) {
        let c = heads * d;
        let s = AttnShape { batch, n, m, c, heads, causal, key_limit: None };
        let val = |i: usize, a: usize, b: usize, span: f32| ((i * a % b) as f32 - (b / 2) as f32) / (b as f32) * span;
        let q: Vec<f32> = (0..batch * n * c).map(|i| val(i, 7, 17, 6.0)).collect();
        // Keys grow along the sequence, so later key blocks raise a row's max and the accumulated blocks
        // must be rescaled.
        let k: Vec<f32> =
            (0..batch * m * c).map(|i| val(i, 5, 13, 6.0) * (0.25 + (i / c % m) as f32 / m as f32)).collect();
        let v: Vec<f32> = (0..batch * m * c).map(|i| val(i, 3, 11, 2.0)).collect();
        let mut out = vec![f32::NAN; q.len()];
        attention(&s, &q, &k, &v, &mut out);
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..n {
                    let vis = if causal { (i + 1).min(m) } else { m };
                    let logits: Vec<f64> = (0..vis)
                        .map(|j| {
                            (0..d)
                                .map(|p| (q[(b * n + i) * c + h * d + p] * k[(b * m + j) * c + h * d + p]) as f64)
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for p in 0..d {
                        let want: f64 = (0..vis).map(|j| e[j] / z * v[(b * m + j) * c + h * d + p] as f64).sum();
                        let got = out[(b * n + i) * c + h * d + p] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{batch}x{n}x{m} heads {heads} causal {causal}: b{b} h{h} i{i} p{p}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn one_key_block_causal() {
        check(2, 70, 9, 2, 3, true);
    }

    /// Several key blocks, a partial last one, and query blocks that straddle them: the online softmax's
    /// rescaling and (causal) the skipped and partly visible blocks.
    #[test]
    fn many_key_blocks() {
        check(1, 2 * QUERY_BLOCK + 5, 2 * KEY_BLOCK + 37, 2, 8, false);
        check(2, KEY_BLOCK + 70, KEY_BLOCK + 70, 1, 5, true);
    }

    /// Cross-attention's shape: 77 keys.
    #[test]
    fn cross_attention_77_keys() {
        check(2, 100, 77, 4, 4, false);
    }

    /// Rows of a batch limited to their first `keys` keys give, bit for bit, a separate call over k and
    /// v truncated to those keys; the other rows give the unlimited call's result. Key counts of A1111
    /// prompts (77·k), one key, a tile past 64, several key blocks; limits at the start and end.
    #[test]
    fn limited_rows_equal_a_call_over_the_truncated_keys() {
        let (n, heads, d) = (37, 2, 8);
        let c = heads * d;
        let cases: &[(usize, usize, usize, usize, bool)] = &[
            // (batch, m, rows_begin..rows_end, keys, causal)
            (2, 154, 0, 1, false),
            (2, 154, 1, 2, false),
            (3, 231, 2, 3, false),
            (3, 231, 0, 2, false),
            (2, 65, 0, 1, false),
            (2, 100, 1, 2, false),
            (2, 77, 0, 2, false),
            (2, 1, 0, 1, false),
            (2, KEY_BLOCK + 100, 1, 2, false),
            (2, 60, 0, 1, true),
        ];
        let keys_of: &[usize] = &[77, 77, 154, 154, 1, 65, 76, 1, KEY_BLOCK + 3, 21];
        for (&(batch, m, r0, r1, causal), &keys) in cases.iter().zip(keys_of) {
            let val = |i: usize, a: usize, b: usize| ((i * a % b) as f32 - (b / 2) as f32) / b as f32 * 4.0;
            let q: Vec<f32> = (0..batch * n * c).map(|i| val(i, 7, 17)).collect();
            let k: Vec<f32> = (0..batch * m * c).map(|i| val(i, 5, 13)).collect();
            let v: Vec<f32> = (0..batch * m * c).map(|i| val(i, 3, 11)).collect();
            let key_limit = Some(KeyLimit { rows_begin: r0, rows_end: r1, keys });
            let s = AttnShape { batch, n, m, c, heads, causal, key_limit };
            let mut out = vec![f32::NAN; q.len()];
            attention(&s, &q, &k, &v, &mut out);
            for b in 0..batch {
                let mb = if (r0..r1).contains(&b) { keys } else { m };
                let one = AttnShape { batch: 1, n, m: mb, c, heads, causal, key_limit: None };
                let row = |t: &[f32], len: usize| t[b * len * c..(b * len + mb) * c].to_vec();
                let mut want = vec![f32::NAN; n * c];
                attention(&one, &q[b * n * c..(b + 1) * n * c], &row(&k, m), &row(&v, m), &mut want);
                let got = &out[b * n * c..(b + 1) * n * c];
                let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                assert!(same, "batch {batch} of {m} keys, rows {r0}..{r1} see {keys}: row {b} differs");
            }
        }
    }
}
