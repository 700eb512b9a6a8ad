//! The op graph: a flat, topologically ordered list of ops over numbered tensors.
//!
//! Activations are NHWC (`[B, H, W, C]`) everywhere; a token sequence `[B, T, C]` is the same memory as
//! an image `[B, H, W, C]` with `T = H·W`, so the transformer blocks need no transposes. Every op states
//! its inputs and its one output; nothing aliases. Weights are named by their checkpoint names and kept in
//! torch layout here; each backend reorders them once at upload.

/// Index of a tensor in [`Graph::tensors`].
pub type TensorId = usize;

/// What an element of a tensor is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// An activation: f32 on the CPU, f16 on CUDA.
    Act,
    /// f32 on every backend: what must not lose precision between model calls (latents, noise, the
    /// LCM schedule).
    F32,
    /// A 32-bit integer (token ids).
    I32,
}

impl Elem {
    /// Bytes per element on a backend whose activations take `act_bytes`.
    pub fn bytes(self, act_bytes: usize) -> usize {
        match self {
            Elem::Act => act_bytes,
            Elem::F32 | Elem::I32 => 4,
        }
    }
}

/// Where a tensor's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Written by the caller before a run; index into `Graph::inputs`.
    Input(usize),
    /// A model weight; index into `Graph::weights`.
    Weight(usize),
    /// Produced by an op, placed in the arena by the planner.
    Activation,
}

/// A tensor of the graph.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    /// Dimensions, outermost first (`[B, H, W, C]` for images, torch layout for weights).
    pub shape: Vec<usize>,
    /// Element type.
    pub elem: Elem,
    /// Input, weight or activation.
    pub storage: Storage,
}

impl TensorDesc {
    /// Element count.
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

/// A weight the graph reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    /// Checkpoint name (`down_blocks.0.resnets.0.conv1.weight`).
    pub name: String,
    /// Shape in torch layout.
    pub shape: Vec<usize>,
    /// How ops use it.
    pub kind: WeightKind,
}

/// An element-wise activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x·sigmoid(x)`.
    Silu,
    /// Exact (erf) GELU, as `torch.nn.functional.gelu`.
    Gelu,
    /// CLIP's `x·sigmoid(1.702·x)`.
    QuickGelu,
    /// `max(x, 0)` (TAESD's blocks).
    Relu,
    /// `3·tanh(x/3)`: TAESD's decoder soft-clamps its latents to (−3, 3) with it (diffusers'
    /// `DecoderTiny.forward`).
    TanhClamp,
}

/// An element-wise function ([`Op::Map`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MapKind {
    /// `act(x)`.
    Act(Activation),
    /// `x·mul + add`.
    Scale {
        /// Multiplier.
        mul: f32,
        /// Offset, added after the product.
        add: f32,
    },
    /// `x + y`.
    Add,
}

impl MapKind {
    /// Operands the function takes: 1, or 2 (`x` and `y`).
    pub fn arity(self) -> usize {
        match self {
            MapKind::Act(_) | MapKind::Scale { .. } => 1,
            MapKind::Add => 2,
        }
    }

    /// The name for profiles and reports.
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Act(_) => "activation",
            MapKind::Scale { .. } => "scale",
            MapKind::Add => "add",
        }
    }
}

/// Batch rows `rows_begin..rows_end` of an attention see only keys `0..keys` (of its M): their result is
/// exactly that of a call over k and v holding those keys alone, as if the keys past them did not exist
/// (they contribute exactly zero). A guided batch whose uncond and cond texts have different token
/// counts runs as one call this way: the shorter context is padded to the longer, and its rows limited.
/// A pair of bounds rather than a `Range` so that `Op` stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyLimit {
    /// First batch row limited.
    pub rows_begin: usize,
    /// One past the last batch row limited.
    pub rows_end: usize,
    /// Keys those rows see: `0..keys`.
    pub keys: usize,
}

impl KeyLimit {
    /// The limited batch rows.
    pub fn rows(&self) -> std::ops::Range<usize> {
        self.rows_begin..self.rows_end
    }

    /// Whether the limit fits an attention over `batch` rows of `n_kv` keys: `1 ≤ keys ≤ n_kv` and a
    /// non-empty row range within the batch; the error says what was expected.
    pub fn check(&self, batch: usize, n_kv: usize) -> Result<(), String> {
        if self.keys == 0 || self.keys > n_kv || self.rows_begin >= self.rows_end || self.rows_end > batch {
            return Err(format!(
                "key limit {self:?} does not fit {batch} batch rows of {n_kv} keys (want 1 ≤ keys ≤ {n_kv} and \
                 a non-empty row range within 0..{batch})"
            ));
        }
        Ok(())
    }

    /// Keys batch row `row` sees, of `n_kv`.
    pub fn keys_for(limit: Option<KeyLimit>, row: usize, n_kv: usize) -> usize {
        match limit {
            Some(l) if l.rows().contains(&row) => l.keys,
            _ => n_kv,
        }
    }
}

/// One op: its input tensors, its parameters and the one tensor `out` it writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// NHWC convolution, weight `[Co, Ci, kh, kw]`; `pad` is (top, left, bottom, right).
    Conv2d {
        /// Input `[B, H, W, Ci]`.
        x: TensorId,
        /// Weight `[Co, Ci, kh, kw]`.
        w: TensorId,
        /// Bias `[Co]`.
        bias: Option<TensorId>,
        /// Added after the bias (a fused `MapKind::Add`); `out`'s shape.
        residual: Option<TensorId>,
        /// Stride on both axes.
        stride: usize,
        /// Zero padding: top, left, bottom, right.
        pad: [usize; 4],
        /// Output `[B, Ho, Wo, Co]`.
        out: TensorId,
    },
    /// `out = x·Wᵀ (+ bias) (+ residual)` over the last dimension; weight `[N, K]`. With `geglu` (a
    /// fused `Linear → Geglu`) the output is hidden·gelu(gate) of the two halves of N: N/2 columns.
    Linear {
        /// Input `[…, K]`.
        x: TensorId,
        /// Weight `[N, K]`.
        w: TensorId,
        /// Bias `[N]`.
        bias: Option<TensorId>,
        /// Added after the bias (a fused `MapKind::Add`); `out`'s shape. Never with `geglu`.
        residual: Option<TensorId>,
        /// The GEGLU epilogue (a fused `Geglu`).
        geglu: bool,
        /// Output `[…, N]`, or `[…, N/2]` with `geglu`.
        out: TensorId,
    },
    /// GroupNorm over NHWC with per-channel affine, optionally followed by SiLU.
    GroupNorm {
        /// Input `[B, H, W, C]`.
        x: TensorId,
        /// Scale `[C]`.
        gamma: TensorId,
        /// Shift `[C]`.
        beta: TensorId,
        /// Groups, each of C/groups contiguous channels.
        groups: usize,
        /// Added to the variance.
        eps: f32,
        /// SiLU after the affine (a fused SiLU `Map`).
        silu: bool,
        /// Output, x's shape.
        out: TensorId,
    },
    /// LayerNorm over the last dimension.
    LayerNorm {
        /// Input `[…, C]`.
        x: TensorId,
        /// Scale `[C]`.
        gamma: TensorId,
        /// Shift `[C]`.
        beta: TensorId,
        /// Added to the variance.
        eps: f32,
        /// Output, x's shape.
        out: TensorId,
    },
    /// Multi-head scaled dot-product attention. q `[B, N, H·d]`, k and v `[B, M, H·d]`; head h uses
    /// channels `h·d..(h+1)·d`. `causal` masks key j > query i; `key_limit` gives some batch rows fewer
    /// keys.
    Attention {
        /// Queries `[B, N, H·d]`, or an NHWC image whose H·W pixels are the N tokens.
        q: TensorId,
        /// Keys `[B, M, H·d]`.
        k: TensorId,
        /// Values, k's shape.
        v: TensorId,
        /// Heads H.
        heads: usize,
        /// Mask keys after the query (CLIP's text encoder).
        causal: bool,
        /// Batch rows that see only the first keys (a guided batch whose two halves have texts of
        /// different lengths).
        key_limit: Option<KeyLimit>,
        /// Output, q's shape.
        out: TensorId,
    },
    /// `x = [hidden | gate]` on the last dimension -> `hidden · gelu(gate)`.
    Geglu {
        /// Input `[…, 2C]`.
        x: TensorId,
        /// Output `[…, C]`.
        out: TensorId,
    },
    /// `out[i] = f(x[i])`, or `f(x[i], y[i])` for a binary `kind`: every element-wise op is one of
    /// these, so a new one is a [`MapKind`] and its two functions (CPU closure, device functor).
    Map {
        /// The function.
        kind: MapKind,
        /// First operand.
        x: TensorId,
        /// Second operand, x's shape: present exactly when `kind` is binary.
        y: Option<TensorId>,
        /// Output, x's shape.
        out: TensorId,
    },
    /// `x [B, H, W, C] + bias [B, C]` broadcast over space (a ResNet's time embedding).
    AddChannel {
        /// Input `[B, H, W, C]`.
        x: TensorId,
        /// Per-image channel bias `[B, C]`.
        bias: TensorId,
        /// Output, x's shape.
        out: TensorId,
    },
    /// `out[b, …] = x[b, …] + scale[row, b]·y[b, …]`: a residual added with a per-image weight read
    /// from a graph input at run time (a ControlNet's residuals times `controlnet_conditioning_scale`),
    /// so one recorded graph serves every weight.
    AddScaled {
        /// The base `[B, …]`.
        x: TensorId,
        /// The residual, x's shape.
        y: TensorId,
        /// Weights `F32 [rows, B]`.
        scale: TensorId,
        /// The row of `scale` read.
        row: usize,
        /// Output, x's shape.
        out: TensorId,
    },
    /// Concatenation on the last (channel) dimension.
    Concat {
        /// `[…, Ca]`.
        a: TensorId,
        /// `[…, Cb]`, a's other dimensions.
        b: TensorId,
        /// `[…, Ca + Cb]`.
        out: TensorId,
    },
    /// Nearest-neighbour resize to `out`'s spatial size (×2, or to a skip connection's size).
    Upsample {
        /// Input `[B, H, W, C]`.
        x: TensorId,
        /// Output `[B, Ho, Wo, C]`.
        out: TensorId,
    },
    /// Token plus position embedding: ids `[B, T]` (I32), table `[V, C]`, positions `[P, C]` (P ≥ T).
    Embed {
        /// Token ids `[B, T]` (`I32`).
        ids: TensorId,
        /// Token embedding `[V, C]`.
        table: TensorId,
        /// Position embedding `[P, C]`; rows `0..T` are read.
        positions: TensorId,
        /// Output `[B, T, C]`.
        out: TensorId,
    },
    /// Sinusoidal embedding of timesteps -> `[B, dim]`, as diffusers' `get_timestep_embedding`; `t` is
    /// `[R, B]` (or `[B]`) and row `row` is embedded (a denoising loop keeps every step's timesteps in
    /// one input).
    TimestepEmbed {
        /// Timesteps `[R, B]` or `[B]`.
        t: TensorId,
        /// The row of `t` embedded.
        row: usize,
        /// Cosines in the first half, sines in the second (diffusers' `flip_sin_to_cos`).
        flip_sin_to_cos: bool,
        /// diffusers' `downscale_freq_shift`: frequency j is exp(−ln(10000)·j / (dim/2 − shift)).
        freq_shift: f32,
        /// Output `[B, dim]`.
        out: TensorId,
    },
    /// `out[i] = x[i mod numel(x)] / div + add`, converted between element types (`Act` ↔ `F32`):
    /// latents into the UNet (repeated for a guided batch), denoised latents into the VAE
    /// (`/ scaling_factor + shift`, the division diffusers does).
    Cast {
        /// Input, `Act` or `F32`.
        x: TensorId,
        /// Divisor.
        div: f32,
        /// Offset, added after the division.
        add: f32,
        /// When given, row `.1` of this schedule (`F32 [steps, STEP_ROW]`) supplies the divisor instead
        /// of `div`: its `input_div` (the sampler's `scale_model_input`, latents into the UNet).
        row: Option<(TensorId, usize)>,
        /// Output, `Act` or `F32`: x's shape with its batch repeated a whole number of times.
        out: TensorId,
    },
    /// One sampler step (`lcm::step`, by `sampling`'s rule) over latents `x` (`F32`): row `step` of `schedule`
    /// (`F32 [steps, STEP_ROW]`) gives the coefficients, a row of `noise` the noise z of the step's tail
    /// (absent at steps that take none). `model_output` (`Act`) has x's shape, or twice
    /// its batch when `guided`: then it is [uncond; cond], combined as u + g·(c − u) first.
    LcmStep {
        /// Latents x_t (`F32`).
        x: TensorId,
        /// The UNet's output (`Act`).
        model_output: TensorId,
        /// Noise `F32 [rows, …x]` and the row read.
        noise: Option<(TensorId, usize)>,
        /// Coefficients `F32 [steps, STEP_ROW]`, one [`crate::lcm::StepRow`] per step.
        schedule: TensorId,
        /// Step index: the row of `schedule`.
        step: usize,
        /// `model_output` is a guided [uncond; cond] batch.
        guided: bool,
        /// The step's rule, what the model output means and x0's clamp.
        sampling: crate::lcm::Sampling,
        /// Next latents (`F32`, x's shape).
        out: TensorId,
    },
    /// Inpainting with an ordinary (4-channel) UNet, after each LCM step (diffusers'
    /// StableDiffusionInpaintPipeline): the region to keep is the image's latents re-noised to the next
    /// timestep, `keep = keep_image·image + keep_noise·noise` with row `step` of `schedule` (the
    /// image's latents themselves after the `last` step), and `out = (1 − mask)·keep + mask·x`.
    InpaintBlend {
        /// The latents the LCM step gave (`F32 [N, h, w, c]`).
        x: TensorId,
        /// The image's latents (`F32`, x's shape).
        image: TensorId,
        /// The noise the initial latents were drawn with (`F32`, x's shape).
        noise: TensorId,
        /// 1 where the image is repainted, 0 where it is kept (`F32 [N, h, w, 1]`).
        mask: TensorId,
        /// Coefficients `F32 [steps, STEP_ROW]`.
        schedule: TensorId,
        /// The row of `schedule` read.
        step: usize,
        /// The last step: the kept region is the image's latents, not re-noised.
        last: bool,
        /// The blended latents (`F32`, x's shape).
        out: TensorId,
    },
}

impl Op {
    /// The tensor the op writes.
    pub fn output(&self) -> TensorId {
        match *self {
            Op::Conv2d { out, .. }
            | Op::Linear { out, .. }
            | Op::GroupNorm { out, .. }
            | Op::LayerNorm { out, .. }
            | Op::Attention { out, .. }
            | Op::Geglu { out, .. }
            | Op::Map { out, .. }
            | Op::AddChannel { out, .. }
            | Op::AddScaled { out, .. }
            | Op::Concat { out, .. }
            | Op::Upsample { out, .. }
            | Op::Embed { out, .. }
            | Op::TimestepEmbed { out, .. }
            | Op::Cast { out, .. }
            | Op::LcmStep { out, .. }
            | Op::InpaintBlend { out, .. } => out,
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
            Op::Geglu { x, .. } | Op::Upsample { x, .. } => v.push(x),
            Op::Cast { x, row, .. } => {
                v.push(x);
                v.extend(row.map(|(schedule, _)| schedule));
            }
            Op::Map { x, y, .. } => {
                v.push(x);
                v.extend(y);
            }
            Op::Concat { a, b, .. } => v.extend([a, b]),
            Op::AddChannel { x, bias, .. } => v.extend([x, bias]),
            Op::AddScaled { x, y, scale, .. } => v.extend([x, y, scale]),
            Op::Embed { ids, table, positions, .. } => v.extend([ids, table, positions]),
            Op::TimestepEmbed { t, .. } => v.push(t),
            Op::LcmStep { x, model_output, noise, schedule, .. } => {
                v.extend([x, model_output, schedule]);
                v.extend(noise.map(|(z, _)| z));
            }
            Op::InpaintBlend { x, image, noise, mask, schedule, .. } => v.extend([x, image, noise, mask, schedule]),
        }
        v
    }

    /// The op's family name in the field's words, for profiles and reports.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "conv2d",
            Op::Linear { geglu: true, .. } => "linear_geglu",
            Op::Linear { .. } => "linear",
            Op::GroupNorm { silu: true, .. } => "group_norm_silu",
            Op::GroupNorm { .. } => "group_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Attention { .. } => "attention",
            Op::Geglu { .. } => "geglu",
            Op::Map { kind, .. } => kind.name(),
            Op::AddChannel { .. } => "add_channel",
            Op::AddScaled { .. } => "add_scaled",
            Op::Concat { .. } => "concat",
            Op::Upsample { .. } => "upsample_nearest",
            Op::Embed { .. } => "embed",
            Op::TimestepEmbed { .. } => "timestep_embed",
            Op::Cast { .. } => "cast",
            Op::LcmStep { .. } => "lcm_step",
            Op::InpaintBlend { .. } => "inpaint_blend",
        }
    }
}

/// A model instantiated for one input shape.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    /// Every tensor, indexed by [`TensorId`].
    pub tensors: Vec<TensorDesc>,
    /// The weights in upload order; a tensor of storage `Weight(i)` is `weights[i]`.
    pub weights: Vec<WeightSpec>,
    /// Ops in execution (topological) order.
    pub ops: Vec<Op>,
    /// Input tensors in the order callers write them; a tensor of storage `Input(i)` is `inputs[i]`.
    pub inputs: Vec<TensorId>,
    /// Output tensors in the order callers read them.
    pub outputs: Vec<TensorId>,
}

impl Graph {
    /// Shape of `t`.
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
}
