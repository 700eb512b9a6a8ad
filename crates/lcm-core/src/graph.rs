//! The op graph: a flat, topologically ordered list of ops over numbered tensors.
//!
//! Activations are NHWC (`[B, H, W, C]`) everywhere; a token sequence `[B, T, C]` is the same memory as
//! an image `[B, H, W, C]` with `T = H·W`, so the transformer blocks need no transposes. Every op states
//! its inputs and its one output; nothing aliases. Weights are named by their checkpoint names and kept in
//! torch layout here; each backend reorders them once at upload.

pub type TensorId = usize;

/// What an element of a tensor is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// An activation: f32 on the CPU, f16 on CUDA.
    Act,
    /// A 32-bit integer (token ids).
    I32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Written by the caller before a run; index into `Graph::inputs`.
    Input(usize),
    /// A model weight; index into `Graph::weights`.
    Weight(usize),
    /// Produced by an op, placed in the arena by the planner.
    Activation,
}

#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub shape: Vec<usize>,
    pub elem: Elem,
    pub storage: Storage,
}

impl TensorDesc {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// How a weight is used, so a backend can choose its storage layout once at upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// `[out, in]`, used as `y = x·Wᵀ`.
    Linear,
    /// `[out, in, kh, kw]`.
    Conv,
    /// A bias, norm scale or shift, or an embedding table: used as stored.
    Plain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: WeightKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// Exact (erf) GELU, as `torch.nn.functional.gelu`.
    Gelu,
    /// CLIP's `x·sigmoid(1.702·x)`.
    QuickGelu,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// NHWC convolution, weight `[Co, Ci, kh, kw]`; `pad` is (top, left, bottom, right).
    Conv2d {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        residual: Option<TensorId>,
        stride: usize,
        pad: [usize; 4],
        out: TensorId,
    },
    /// `out = x·Wᵀ (+ bias) (+ residual)` over the last dimension; weight `[N, K]`.
    Linear {
        x: TensorId,
        w: TensorId,
        bias: Option<TensorId>,
        residual: Option<TensorId>,
        out: TensorId,
    },
    /// GroupNorm over NHWC with per-channel affine, optionally followed by SiLU.
    GroupNorm {
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
        groups: usize,
        eps: f32,
        silu: bool,
        out: TensorId,
    },
    /// LayerNorm over the last dimension.
    LayerNorm {
        x: TensorId,
        gamma: TensorId,
        beta: TensorId,
        eps: f32,
        out: TensorId,
    },
    /// Multi-head scaled dot-product attention. q `[B, N, H·d]`, k and v `[B, M, H·d]`; head h uses
    /// channels `h·d..(h+1)·d`. `causal` masks key j > query i.
    Attention {
        q: TensorId,
        k: TensorId,
        v: TensorId,
        heads: usize,
        causal: bool,
        out: TensorId,
    },
    /// `x = [hidden | gate]` on the last dimension -> `hidden · gelu(gate)`.
    Geglu {
        x: TensorId,
        out: TensorId,
    },
    Act {
        x: TensorId,
        act: Activation,
        out: TensorId,
    },
    Add {
        a: TensorId,
        b: TensorId,
        out: TensorId,
    },
    /// `x [B, H, W, C] + bias [B, C]` broadcast over space (a ResNet's time embedding).
    AddChannel {
        x: TensorId,
        bias: TensorId,
        out: TensorId,
    },
    /// Concatenation on the last (channel) dimension.
    Concat {
        a: TensorId,
        b: TensorId,
        out: TensorId,
    },
    /// Nearest-neighbour resize to `out`'s spatial size (×2, or to a skip connection's size).
    Upsample {
        x: TensorId,
        out: TensorId,
    },
    /// Token plus position embedding: ids `[B, T]` (I32), table `[V, C]`, positions `[P, C]` (P ≥ T).
    Embed {
        ids: TensorId,
        table: TensorId,
        positions: TensorId,
        out: TensorId,
    },
    /// Sinusoidal embedding of timesteps `[B]` -> `[B, dim]`, as diffusers' `get_timestep_embedding`.
    TimestepEmbed {
        t: TensorId,
        flip_sin_to_cos: bool,
        freq_shift: f32,
        out: TensorId,
    },
    /// `out = x·mul + add`.
    Scale {
        x: TensorId,
        mul: f32,
        add: f32,
        out: TensorId,
    },
}

impl Op {
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Conv2d { out, .. }
            | Op::Linear { out, .. }
            | Op::GroupNorm { out, .. }
            | Op::LayerNorm { out, .. }
            | Op::Attention { out, .. }
            | Op::Geglu { out, .. }
            | Op::Act { out, .. }
            | Op::Add { out, .. }
            | Op::AddChannel { out, .. }
            | Op::Concat { out, .. }
            | Op::Upsample { out, .. }
            | Op::Embed { out, .. }
            | Op::TimestepEmbed { out, .. }
            | Op::Scale { out, .. } => out,
        }
    }

    /// Every tensor the op reads (weights included).
    pub fn inputs(&self) -> Vec<TensorId> {
        let mut v = Vec::with_capacity(4);
        match *self {
            Op::Conv2d { x, w, bias, residual, .. } | Op::Linear { x, w, bias, residual, .. } => {
                v.extend([x, w]);
                v.extend(bias);
                v.extend(residual);
            }
            Op::GroupNorm { x, gamma, beta, .. } | Op::LayerNorm { x, gamma, beta, .. } => v.extend([x, gamma, beta]),
            Op::Attention { q, k, v: vv, .. } => v.extend([q, k, vv]),
            Op::Geglu { x, .. } | Op::Act { x, .. } | Op::Upsample { x, .. } | Op::Scale { x, .. } => v.push(x),
            Op::Add { a, b, .. } | Op::Concat { a, b, .. } => v.extend([a, b]),
            Op::AddChannel { x, bias, .. } => v.extend([x, bias]),
            Op::Embed { ids, table, positions, .. } => v.extend([ids, table, positions]),
            Op::TimestepEmbed { t, .. } => v.push(t),
        }
        v
    }

    /// The op's family name in the field's words, for profiles and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::GroupNorm { silu: true, .. } => "group_norm_silu",
            Op::GroupNorm { .. } => "group_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Attention { .. } => "attention",
            Op::Geglu { .. } => "geglu",
            Op::Act { .. } => "activation",
            Op::Add { .. } => "add",
            Op::AddChannel { .. } => "add_channel",
            Op::Concat { .. } => "concat",
            Op::Upsample { .. } => "upsample_nearest",
            Op::Embed { .. } => "embed",
            Op::TimestepEmbed { .. } => "timestep_embed",
            Op::Scale { .. } => "scale",
        }
    }
}

/// A Conv2d op's geometry, read off its tensors' shapes once for every backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub h: usize,
    pub w: usize,
    pub ci: usize,
    pub ho: usize,
    pub wo: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    /// top, left, bottom, right
    pub pad: [usize; 4],
}

/// A model instantiated for one input shape.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub tensors: Vec<TensorDesc>,
    pub weights: Vec<WeightSpec>,
    pub ops: Vec<Op>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

impl Graph {
    pub fn shape(&self, t: TensorId) -> &[usize] {
        &self.tensors[t].shape
    }

    /// How many ops read each tensor (graph outputs count as one more reader).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.tensors.len()];
        for op in &self.ops {
            for t in op.inputs() {
                uses[t] += 1;
            }
        }
        for &t in &self.outputs {
            uses[t] += 1;
        }
        uses
    }

    /// The geometry of a `Conv2d` op (NHWC input and output, `[Co, Ci, kh, kw]` weight); `None` for any
    /// other op or malformed shapes.
    pub fn conv_geometry(&self, op: &Op) -> Option<ConvGeometry> {
        let Op::Conv2d { x, w, stride, pad, out, .. } = *op else { return None };
        let (xs, ws, os) = (self.shape(x), self.shape(w), self.shape(out));
        let [batch, h, wd, ci] = <[usize; 4]>::try_from(xs).ok()?;
        let [_, _, kh, kw] = <[usize; 4]>::try_from(ws).ok()?;
        let [_, ho, wo, co] = <[usize; 4]>::try_from(os).ok()?;
        Some(ConvGeometry { batch, h, w: wd, ci, ho, wo, co, kh, kw, stride, pad })
    }

    /// Multiply-accumulate count of the whole graph (conv, linear, attention), for FLOP reports.
    pub fn macs(&self) -> u64 {
        self.ops.iter().map(|op| self.op_macs(op)).sum()
    }

    pub fn op_macs(&self, op: &Op) -> u64 {
        let n = |t: TensorId| self.tensors[t].numel() as u64;
        match *op {
            Op::Conv2d { w, out, .. } => {
                let ws = self.shape(w);
                n(out) * (ws[1] * ws[2] * ws[3]) as u64
            }
            Op::Linear { w, out, .. } => n(out) * self.shape(w)[1] as u64,
            Op::Attention { q, k, .. } => {
                // QKᵀ and PV: 2 · N · M · C per batch entry; q may be an NHWC image (N = H·W).
                let (qs, c) = (self.shape(q), *self.shape(q).last().unwrap_or(&1) as u64);
                let batch = qs[0] as u64;
                let tokens = |t: TensorId| n(t) / (batch * c).max(1);
                2 * batch * tokens(q) * tokens(k) * c
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Elem, GraphBuilder};

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
}
