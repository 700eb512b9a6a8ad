//! The building blocks diffusers' UNet and VAE share, transcribed op for op: ResnetBlock2D,
//! the attention of a BasicTransformerBlock, Transformer2DModel, and the VAE's mid-block attention.
//! Names are checkpoint prefixes; the graph's fusion pass merges GroupNorm+SiLU and the residual adds.

use lcm_core::{Activation, GraphBuilder, KeyLimit, TensorId};

/// A GroupNorm's settings, shared by the blocks of one model.
pub struct Norm {
    /// Groups the channels are normalised in (`norm_num_groups`, 32 in SD).
    pub groups: usize,
    /// Added to the variance (`norm_eps` / `resnet_eps`).
    pub eps: f32,
}

/// The text context the cross-attentions read, `[B, T, D]`, and the batch rows that see only its first
/// tokens (a guided batch whose uncond and cond texts have different lengths, the shorter padded:
/// `DenoiseShape::uncond_ctx_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The context tensor.
    pub tensor: TensorId,
    /// The rows limited to fewer tokens, if any.
    pub limit: Option<KeyLimit>,
}

impl From<TensorId> for Context {
    /// A context every row sees whole.
    fn from(tensor: TensorId) -> Self {
        Context { tensor, limit: None }
    }
}

/// ResnetBlock2D: norm1 → SiLU → conv1 (+ time_emb_proj(SiLU(temb)) per channel) → norm2 → SiLU →
/// conv2, plus the input (through a 1x1 `conv_shortcut` when channels change), over `output_scale`.
/// `temb_act` is SiLU(temb), computed once per UNet call since every ResNet applies the same SiLU.
pub fn resnet(
    b: &mut GraphBuilder,
    p: &str,
    x: TensorId,
    temb_act: Option<TensorId>,
    out_c: usize,
    norm: &Norm,
    output_scale: f32,
) -> TensorId {
    let in_c = b.channels(x);
    // The shortcut first: it must exist before conv2 runs for the add to fuse into conv2's epilogue.
    let shortcut =
        if in_c != out_c { b.conv2d(&format!("{p}.conv_shortcut"), x, out_c, 1, 1, [0; 4], true) } else { x };
    let h = b.group_norm(&format!("{p}.norm1"), x, norm.groups, norm.eps, false);
    let h = b.activation(h, Activation::Silu);
    let mut h = b.conv2d(&format!("{p}.conv1"), h, out_c, 3, 1, [1; 4], true);
    if let Some(t) = temb_act {
        let t = b.linear(&format!("{p}.time_emb_proj"), t, out_c, true);
        h = b.add_channel(h, t);
    }
    let h = b.group_norm(&format!("{p}.norm2"), h, norm.groups, norm.eps, false);
    let h = b.activation(h, Activation::Silu);
    let h = b.conv2d(&format!("{p}.conv2"), h, out_c, 3, 1, [1; 4], true);
    let out = b.add(h, shortcut);
    if output_scale != 1.0 {
        b.scale(out, 1.0 / output_scale, 0.0)
    } else {
        out
    }
}

/// diffusers `Attention` as used in transformer blocks: to_q/k/v (bias as given), multi-head
/// attention, to_out.0 with bias. `ctx` is the key/value source (the input itself for self-attention),
/// its `limit` the rows that see only its first tokens.
pub fn attention(b: &mut GraphBuilder, p: &str, x: TensorId, ctx: Context, heads: usize, qkv_bias: bool) -> TensorId {
    let c = b.channels(x);
    let q = b.linear(&format!("{p}.to_q"), x, c, qkv_bias);
    let k = b.linear(&format!("{p}.to_k"), ctx.tensor, c, qkv_bias);
    let v = b.linear(&format!("{p}.to_v"), ctx.tensor, c, qkv_bias);
    let o = b.attention_limited(q, k, v, heads, ctx.limit);
    b.linear(&format!("{p}.to_out.0"), o, c, true)
}

/// BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each pre-LayerNorm
/// with a residual add.
fn transformer_block(b: &mut GraphBuilder, p: &str, x: TensorId, ctx: Context, heads: usize) -> TensorId {
    let c = b.channels(x);
    let n = b.layer_norm(&format!("{p}.norm1"), x, 1e-5);
    let a = attention(b, &format!("{p}.attn1"), n, n.into(), heads, false);
    let x = b.add(a, x);
    let n = b.layer_norm(&format!("{p}.norm2"), x, 1e-5);
    let a = attention(b, &format!("{p}.attn2"), n, ctx, heads, false);
    let x = b.add(a, x);
    let n = b.layer_norm(&format!("{p}.norm3"), x, 1e-5);
    let f = b.linear(&format!("{p}.ff.net.0.proj"), n, 8 * c, true);
    let f = b.geglu(f);
    let f = b.linear(&format!("{p}.ff.net.2"), f, c, true);
    b.add(f, x)
}

/// Transformer2DModel over an NHWC image: GroupNorm(eps 1e-6), proj_in (1x1 conv or linear — the same
/// arithmetic on NHWC data, but different weight shapes), the blocks, proj_out, plus the input.
pub fn transformer_2d(
    b: &mut GraphBuilder,
    p: &str,
    x: TensorId,
    ctx: Context,
    heads: usize,
    layers: usize,
    groups: usize,
    linear_proj: bool,
) -> TensorId {
    let c = b.channels(x);
    let proj = |b: &mut GraphBuilder, name: &str, t: TensorId| {
        if linear_proj {
            b.linear(&format!("{p}.{name}"), t, c, true)
        } else {
            b.conv2d(&format!("{p}.{name}"), t, c, 1, 1, [0; 4], true)
        }
    };
    let h = b.group_norm(&format!("{p}.norm"), x, groups, 1e-6, false);
    let mut h = proj(b, "proj_in", h);
    for i in 0..layers {
        h = transformer_block(b, &format!("{p}.transformer_blocks.{i}"), h, ctx, heads);
    }
    let h = proj(b, "proj_out", h);
    b.add(h, x)
}

/// The VAE mid-block attention: GroupNorm, single- or multi-head self-attention with biased q/k/v,
/// to_out.0, plus the input (`residual_connection=True`), over `output_scale`.
pub fn vae_attention(
    b: &mut GraphBuilder,
    p: &str,
    x: TensorId,
    heads: usize,
    norm: &Norm,
    output_scale: f32,
) -> TensorId {
    let h = b.group_norm(&format!("{p}.group_norm"), x, norm.groups, norm.eps, false);
    let o = attention(b, p, h, h.into(), heads, true);
    let out = b.add(o, x);
    if output_scale != 1.0 {
        b.scale(out, 1.0 / output_scale, 0.0)
    } else {
        out
    }
}
