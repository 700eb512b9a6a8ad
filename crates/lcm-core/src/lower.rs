//! One lowering: every op of a (fused) graph resolved once, with its shapes checked, into the
//! shape-complete problem its kernels solve — GEMM geometry, attention dims, norm groups, element
//! counts. The CPU backend, the CUDA recorder and the MAC counts all read these; none re-derives
//! geometry from tensor shapes.

use crate::error::{Error, Result};
use crate::graph::{Graph, KeyLimit, Op, TensorId};

/// A convolution or a linear layer as one implicit GEMM: `out[m, n] = Σ_k A[m, k]·W[n, k]` with
/// M = batch·ho·wo output pixels, N = co, K = kh·kw·ci; A is gathered from the NHWC input (zero outside
/// the image). A linear layer over `[rows, k]` is the 1x1 conv over a `[1, 1, rows, k]` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gemm {
    /// Images.
    pub batch: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub ci: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Output channels N (before the GEGLU epilogue halves them).
    pub co: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride on both axes.
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub pad: [usize; 4],
    /// Linear → GEGLU fused: the output is hidden·gelu(gate) of N's two halves, N/2 columns.
    pub geglu: bool,
}

impl Gemm {
    /// A linear layer over `rows` rows of `k` into `n` outputs.
    pub fn linear(rows: usize, k: usize, n: usize) -> Gemm {
        Gemm { batch: 1, h: 1, w: rows, ci: k, ho: 1, wo: rows, co: n, kh: 1, kw: 1, stride: 1, ..Gemm::default() }
    }

    /// M = batch·ho·wo: output pixels, or a linear layer's rows.
    pub fn m(&self) -> usize {
        self.batch * self.ho * self.wo
    }

    /// K = kh·kw·ci.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.ci
    }

    /// Output columns: N, or N/2 after the GEGLU epilogue.
    pub fn out_cols(&self) -> usize {
        if self.geglu {
            self.co / 2
        } else {
            self.co
        }
    }

    /// Multiply-accumulates: M·N·K.
    pub fn macs(&self) -> u64 {
        (self.m() * self.co * self.k()) as u64
    }
}

/// Multi-head attention: q `[batch, n_q, heads·head_dim]`, k and v `[batch, n_kv, heads·head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attention {
    /// Batch.
    pub batch: usize,
    /// Heads.
    pub heads: usize,
    /// Query tokens.
    pub n_q: usize,
    /// Key and value tokens.
    pub n_kv: usize,
    /// Channels per head d.
    pub head_dim: usize,
    /// Query i sees keys 0..=i only.
    pub causal: bool,
    /// Batch rows that see fewer keys (checked: `1 ≤ keys ≤ n_kv`, rows within the batch).
    pub key_limit: Option<KeyLimit>,
}

impl Attention {
    /// Keys batch row `b` sees.
    pub fn keys_for(&self, b: usize) -> usize {
        KeyLimit::keys_for(self.key_limit, b, self.n_kv)
    }

    /// Channels of q, k and v: heads·head_dim.
    pub fn channels(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Q·Kᵀ and P·V, over the keys each batch row sees.
    pub fn macs(&self) -> u64 {
        let keys: usize = (0..self.batch).map(|b| self.keys_for(b)).sum();
        (2 * self.n_q * keys * self.channels()) as u64
    }
}

/// What one op computes, shape-complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A convolution or a linear layer.
    Gemm(Gemm),
    /// Multi-head attention.
    Attention(Attention),
    /// NHWC `[batch, hw, c]` in `groups` groups.
    GroupNorm {
        /// Images.
        batch: usize,
        /// Pixels per image.
        hw: usize,
        /// Channels.
        c: usize,
        /// Groups.
        groups: usize,
    },
    /// `[rows, c]`, each row normalised.
    LayerNorm {
        /// Rows.
        rows: usize,
        /// Channels.
        c: usize,
    },
    /// `[rows, 2c]` -> `[rows, c]`.
    Geglu {
        /// Rows.
        rows: usize,
        /// Output channels.
        c: usize,
    },
    /// Element-wise over `n` outputs (a `Map`, the LCM step).
    Map {
        /// Outputs.
        n: usize,
    },
    /// `[batch, hw, c] + [batch, c]`.
    AddChannel {
        /// Images.
        batch: usize,
        /// Pixels per image.
        hw: usize,
        /// Channels.
        c: usize,
    },
    /// `[batch, per_image] + scale[row, batch]·[batch, per_image]`.
    AddScaled {
        /// Images.
        batch: usize,
        /// Elements per image.
        per_image: usize,
    },
    /// `n` latent elements of `c` channels, blended by a per-pixel mask.
    Blend {
        /// Elements.
        n: usize,
        /// Channels per pixel (the mask has one).
        c: usize,
    },
    /// `[rows, ca]` and `[rows, cb]` -> `[rows, ca + cb]`.
    Concat {
        /// Rows.
        rows: usize,
        /// Channels of the first operand.
        ca: usize,
        /// Channels of the second operand.
        cb: usize,
    },
    /// Nearest-neighbour `[batch, h, w, c]` -> `[batch, ho, wo, c]`.
    Upsample {
        /// Images.
        batch: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
        /// Channels.
        c: usize,
        /// Output height.
        ho: usize,
        /// Output width.
        wo: usize,
    },
    /// Ids `[batch, tokens]` into a `[vocab, c]` table -> `[batch, tokens, c]`.
    Embed {
        /// Sequences.
        batch: usize,
        /// Tokens per sequence.
        tokens: usize,
        /// Embedding width.
        c: usize,
        /// Rows of the token table.
        vocab: usize,
    },
    /// `batch` timesteps (one row of the input) -> `[batch, dim]`.
    Timestep {
        /// Timesteps embedded.
        batch: usize,
        /// Embedding width.
        dim: usize,
    },
    /// `n` outputs from `n_in` inputs (repeated).
    Cast {
        /// Outputs.
        n: usize,
        /// Inputs.
        n_in: usize,
    },
}

impl Problem {
    /// Multiply-accumulates of a GEMM or attention; 0 for the memory-bound rest.
    pub fn macs(&self) -> u64 {
        match self {
            Problem::Gemm(g) => g.macs(),
            Problem::Attention(a) => a.macs(),
            _ => 0,
        }
    }
}

impl Graph {
    /// Every op's problem, in op order; an error names the op whose shapes do not fit together.
    pub fn lower(&self) -> Result<Vec<Problem>> {
        self.ops.iter().enumerate().map(|(i, op)| self.lower_op(op).map_err(|m| bad(i, op, m))).collect()
    }

    fn lower_op(&self, op: &Op) -> std::result::Result<Problem, String> {
        let n = |t: TensorId| self.tensors[t].numel();
        let last = |t: TensorId| self.shape(t).last().copied().unwrap_or(0);
        let dims4 = |t: TensorId| -> std::result::Result<[usize; 4], String> {
            <[usize; 4]>::try_from(self.shape(t)).map_err(|_| format!("{:?} is not NHWC", self.shape(t)))
        };
        Ok(match *op {
            Op::Conv2d { x, w, stride, pad, out, .. } => {
                let ([batch, h, wd, ci], [_, wci, kh, kw], [_, ho, wo, co]) = (dims4(x)?, dims4(w)?, dims4(out)?);
                if wci != ci || stride == 0 {
                    return Err(format!("input {:?}, weight {:?}, stride {stride}", self.shape(x), self.shape(w)));
                }
                Problem::Gemm(Gemm { batch, h, w: wd, ci, ho, wo, co, kh, kw, stride, pad, geglu: false })
            }
            Op::Linear { x, w, geglu, out, .. } => {
                let (co, k) = match *self.shape(w) {
                    [co, k] => (co, k),
                    ref s => return Err(format!("weight {s:?} is not [out, in]")),
                };
                let want = if geglu { co / 2 } else { co };
                if k == 0 || last(x) != k || last(out) != want || (geglu && co % 2 != 0) {
                    return Err(format!("input {:?}, weight [{co}, {k}], output {:?}", self.shape(x), self.shape(out)));
                }
                Problem::Gemm(Gemm { geglu, ..Gemm::linear(n(x) / k, k, co) })
            }
            Op::Attention { q, k, v, heads, causal, key_limit, .. } => {
                let (c, batch) = (last(q), self.shape(q)[0]);
                let ok = heads > 0 && c % heads == 0 && last(k) == c && self.shape(k) == self.shape(v);
                if !ok || batch == 0 || self.shape(k)[0] != batch {
                    return Err(format!(
                        "q {:?}, k {:?}, v {:?} do not fit {heads} heads",
                        self.shape(q),
                        self.shape(k),
                        self.shape(v)
                    ));
                }
                let tokens = |t: TensorId| n(t) / (batch * c);
                let n_kv = tokens(k);
                if let Some(l) = key_limit {
                    l.check(batch, n_kv)?;
                }
                Problem::Attention(Attention {
                    batch,
                    heads,
                    n_q: tokens(q),
                    n_kv,
                    head_dim: c / heads,
                    causal,
                    key_limit,
                })
            }
            Op::GroupNorm { x, groups, .. } => {
                let (batch, c) = (self.shape(x)[0], last(x));
                if groups == 0 || c % groups != 0 || batch == 0 {
                    return Err(format!("{c} channels in {groups} groups"));
                }
                Problem::GroupNorm { batch, hw: n(x) / (batch * c), c, groups }
            }
            Op::LayerNorm { x, .. } => Problem::LayerNorm { rows: n(x) / last(x).max(1), c: last(x) },
            Op::Geglu { x, out } => {
                let c = last(out);
                if last(x) != 2 * c {
                    return Err(format!("{:?} -> {:?}", self.shape(x), self.shape(out)));
                }
                Problem::Geglu { rows: n(out) / c.max(1), c }
            }
            Op::Map { kind, x, y, out } => {
                let fits = |t: TensorId| self.shape(t) == self.shape(out);
                if y.map_or(1, |_| 2) != kind.arity() || !fits(x) || !y.is_none_or(fits) {
                    return Err(format!(
                        "{kind:?} of {:?} and {:?} into {:?}",
                        self.shape(x),
                        y.map(|y| self.shape(y)),
                        self.shape(out)
                    ));
                }
                Problem::Map { n: n(out) }
            }
            Op::LcmStep { out, .. } => Problem::Map { n: n(out) },
            Op::InpaintBlend { x, image, noise, mask, out, .. } => {
                let s = self.shape(x);
                let mut ms = s.to_vec();
                if let Some(c) = ms.last_mut() {
                    *c = 1;
                }
                if self.shape(image) != s || self.shape(noise) != s || self.shape(out) != s || self.shape(mask) != ms {
                    return Err(format!(
                        "latents {s:?}, image {:?}, noise {:?}, mask {:?}",
                        self.shape(image),
                        self.shape(noise),
                        self.shape(mask)
                    ));
                }
                Problem::Blend { n: n(x), c: last(x) }
            }
            Op::AddChannel { x, .. } => {
                let [batch, h, w, c] = dims4(x)?;
                Problem::AddChannel { batch, hw: h * w, c }
            }
            Op::AddScaled { x, y, scale, row, out } => {
                let (s, batch) = (self.shape(x), self.shape(x).first().copied().unwrap_or(0));
                let fits = self.shape(y) == s && self.shape(out) == s && batch > 0;
                match *self.shape(scale) {
                    [rows, b] if fits && b == batch && row < rows => {
                        Problem::AddScaled { batch, per_image: n(x) / batch }
                    }
                    ref w => return Err(format!("{s:?} + {w:?}[{row}]·{:?}", self.shape(y))),
                }
            }
            Op::Concat { a, b, .. } => Problem::Concat { rows: n(a) / last(a).max(1), ca: last(a), cb: last(b) },
            Op::Upsample { x, out } => {
                let ([batch, h, w, c], [_, ho, wo, _]) = (dims4(x)?, dims4(out)?);
                Problem::Upsample { batch, h, w, c, ho, wo }
            }
            Op::Embed { ids, table, .. } => match (self.shape(ids), self.shape(table)) {
                (&[batch, tokens], &[vocab, c]) => Problem::Embed { batch, tokens, c, vocab },
                (i, t) => return Err(format!("ids {i:?}, table {t:?}")),
            },
            Op::TimestepEmbed { out, .. } => match *self.shape(out) {
                [batch, dim] => Problem::Timestep { batch, dim },
                ref s => return Err(format!("output {s:?}")),
            },
            Op::Cast { x, out, .. } => Problem::Cast { n: n(out), n_in: n(x) },
        })
    }

    /// Multiply-accumulate count of the whole graph (conv, linear, attention), for FLOP reports.
    pub fn macs(&self) -> u64 {
        self.lower().map_or(0, |p| p.iter().map(Problem::macs).sum())
    }
}

fn bad(i: usize, op: &Op, msg: String) -> Error {
    Error::invalid("graph", format!("op {i} ({}): {msg}", op.name()))
}

#[cfg(test)]
mod tests {
    use crate::{Elem, Graph, GraphBuilder, KeyLimit, Op, Problem};

    #[test]
    fn attention_macs_count_image_queries_as_tokens() {
        let mut b = GraphBuilder::new();
        let q = b.input(&[2, 4, 8, 16], Elem::Act); // 32 query tokens of 16 channels
        let k = b.input(&[2, 77, 16], Elem::Act);
        let o = b.attention(q, k, k, 2, false);
        b.output(o);
        let g = b.finish().unwrap();
        assert_eq!(g.macs(), 2 * 2 * 32 * 77 * 16);
    }

    fn limited(limit: KeyLimit) -> Graph {
        let mut b = GraphBuilder::new();
        let q = b.input(&[3, 5, 8], Elem::Act);
        let k = b.input(&[3, 154, 8], Elem::Act);
        let o = b.attention_limited(q, k, k, 2, None);
        b.output(o);
        let mut g = b.finish().unwrap();
        // Set after building, so the lowering's own check is the one tested.
        if let Op::Attention { key_limit, .. } = &mut g.ops[0] {
            *key_limit = Some(limit);
        }
        g
    }

    #[test]
    fn a_key_limit_lowers_and_counts_only_the_keys_its_rows_see() {
        let l = KeyLimit { rows_begin: 1, rows_end: 3, keys: 77 };
        let g = limited(l);
        let Problem::Attention(a) = g.lower().unwrap()[0] else { panic!("not attention") };
        assert_eq!(a.key_limit, Some(l));
        assert_eq!((a.keys_for(0), a.keys_for(1), a.keys_for(2)), (154, 77, 77));
        assert_eq!(g.macs(), (2 * 5 * (154 + 77 + 77) * 8) as u64);
    }

    #[test]
    fn a_key_limit_that_does_not_fit_is_an_error_naming_the_op() {
        let bad = [
            KeyLimit { rows_begin: 0, rows_end: 1, keys: 0 },
            KeyLimit { rows_begin: 0, rows_end: 1, keys: 155 },
            KeyLimit { rows_begin: 2, rows_end: 4, keys: 77 },
            KeyLimit { rows_begin: 1, rows_end: 1, keys: 77 },
        ];
        for l in bad {
            let e = limited(l).lower().unwrap_err().to_string();
            assert!(e.contains("op 0 (attention)") && e.contains("key limit"), "{l:?}: {e}");
        }
        // The builder refuses it too, when it is given at build time.
        let mut b = GraphBuilder::new();
        let q = b.input(&[2, 5, 8], Elem::Act);
        let k = b.input(&[2, 77, 8], Elem::Act);
        let o = b.attention_limited(q, k, k, 2, Some(KeyLimit { rows_begin: 0, rows_end: 1, keys: 78 }));
        b.output(o);
        let e = b.finish().unwrap_err().to_string();
        assert!(e.contains("attention: key limit"), "{e}");
    }
}
