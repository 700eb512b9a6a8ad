//! ControlNetModel (diffusers' `models/controlnets/controlnet.py`): a copy of the UNet's encoder — time
//! embedding, `conv_in`, the down blocks and the mid block, the same code as [`UnetConfig::encode`] —
//! whose input is the latents plus an embedding of the control image, and whose outputs are 1x1 "zero
//! convolutions" of every skip connection and of the mid block: residuals the UNet adds to its own
//! (`down_block_additional_residuals`, `mid_block_additional_residual`). `config.json` is read into
//! [`ControlNetConfig`] by `crate::checkpoint::config`.

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor, TensorId};

use crate::arch::blocks::Context;
use crate::arch::unet::{AddedCond, UnetConfig, TEXT_TIME_IDS};
use crate::runner::Runner;

/// ControlNetModel's `config.json`, as far as the graph depends on it.
#[derive(Debug, Clone)]
pub struct ControlNetConfig {
    /// The encoder's settings, read with UNet2DConditionModel's keys and defaults (ControlNetModel
    /// takes the same ones); its up path is the down path mirrored and unused. No ControlNet has a
    /// guidance embedding (`time_cond_proj_dim`): diffusers' ControlNetModel takes none, and its
    /// pipelines never pass one to it.
    pub unet: UnetConfig,
    /// `conditioning_channels`: the control image's channels (3).
    pub conditioning_channels: usize,
    /// `conditioning_embedding_out_channels`: the widths of ControlNetConditioningEmbedding's levels
    /// (16, 32, 96, 256); each level after the first halves the size, so the control image is
    /// 2^(levels − 1) times the latents.
    pub conditioning_embedding_out_channels: Vec<usize>,
    /// `controlnet_conditioning_channel_order: "bgr"`: the control image's channels are flipped before
    /// the model sees them.
    pub bgr: bool,
}

/// The inputs of [`ControlNetConfig::graph`], in order.
pub mod input {
    /// The latents, NHWC `Act [B, h, w, in_channels]`.
    pub const SAMPLE: usize = 0;
    /// Timesteps `Act [B]`.
    pub const TIMESTEP: usize = 1;
    /// The text context `Act [B, T, cross_attention_dim]`.
    pub const CONTEXT: usize = 2;
    /// The control image, NHWC `Act [B, H, W, conditioning_channels]`, pixels in [0, 1].
    pub const IMAGE: usize = 3;
}

impl ControlNetConfig {
    /// A ControlNet for `unet` as diffusers' `ControlNetModel.from_unet` makes one: the UNet's encoder
    /// (without a guidance embedding) and the default control-image embedding (16, 32, 96, 256 over
    /// three channels): the synthetic ControlNet `lcm bench --controlnet synthetic` times.
    pub fn from_unet(unet: &UnetConfig) -> Self {
        let unet = UnetConfig { time_cond_proj_dim: None, conv_in_kernel: 3, ..unet.clone() };
        ControlNetConfig {
            unet,
            conditioning_channels: 3,
            conditioning_embedding_out_channels: vec![16, 32, 96, 256],
            bgr: false,
        }
    }

    /// How many times larger than the latents the control image is: 2^(levels − 1).
    pub fn image_factor(&self) -> usize {
        1 << self.conditioning_embedding_out_channels.len().saturating_sub(1)
    }

    /// ControlNetConditioningEmbedding over the control image `image` (NHWC, `Act`): conv_in, SiLU, then
    /// per level a 3x3 conv and a stride-2 3x3 conv, each followed by SiLU, then `conv_out` to
    /// `block_out_channels[0]`. It depends on neither the timestep nor the latents, so a denoising
    /// loop builds it once for all its steps. Call it first (weights are declared in call order).
    pub fn cond_embedding(&self, b: &mut GraphBuilder, image: TensorId) -> TensorId {
        let p = "controlnet_cond_embedding";
        let widths = &self.conditioning_embedding_out_channels;
        let mut x = b.conv2d(&format!("{p}.conv_in"), image, widths[0], 3, 1, [1; 4], true);
        x = b.activation(x, Activation::Silu);
        for (i, pair) in widths.windows(2).enumerate() {
            x = b.conv2d(&format!("{p}.blocks.{}", 2 * i), x, pair[0], 3, 1, [1; 4], true);
            x = b.activation(x, Activation::Silu);
            x = b.conv2d(&format!("{p}.blocks.{}", 2 * i + 1), x, pair[1], 3, 2, [1; 4], true);
            x = b.activation(x, Activation::Silu);
        }
        b.conv2d(&format!("{p}.conv_out"), x, self.unet.block_out_channels[0], 3, 1, [1; 4], true)
    }

    /// The residuals, unscaled, for latents `sample` at timesteps row `t.1` of `t.0`, context `ctx`,
    /// SDXL's added embedding `aug` (this ControlNet's own `add_embedding` of the UNet's inputs) and the
    /// control image's embedding `cond` ([`Self::cond_embedding`]): one per skip connection of
    /// [`UnetConfig::encode`], then the mid block's.
    pub fn residuals(
        &self,
        b: &mut GraphBuilder,
        sample: TensorId,
        t: (TensorId, usize),
        ctx: Context,
        aug: Option<TensorId>,
        cond: TensorId,
    ) -> (Vec<TensorId>, TensorId) {
        let u = &self.unet;
        let temb_act = u.time_embedding(b, t, None, aug);
        let h = u.conv_in(b, sample);
        let h = b.add(h, cond);
        let (x, skips) = u.encode(b, h, temb_act, ctx);
        let down = skips
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let c = b.channels(s);
                b.conv2d(&format!("controlnet_down_blocks.{i}"), s, c, 1, 1, [0; 4], true)
            })
            .collect();
        let c = b.channels(x);
        let mid = b.conv2d("controlnet_mid_block", x, c, 1, 1, [0; 4], true);
        (down, mid)
    }

    /// One ControlNet call as a graph (see [`input`]; with `text_time` the pooled text embeds
    /// `Act [B, pooled]` and the time ids `Act [6, B]` follow): outputs the unscaled residuals, NHWC,
    /// one per skip connection then the mid block's. An image that is not the latents times
    /// [`Self::image_factor`] is an error naming `controlnet input`.
    pub fn graph(&self, batch: usize, h: usize, w: usize, ctx_len: usize) -> Result<Graph> {
        let f = self.image_factor();
        if batch == 0 || h == 0 || w == 0 || ctx_len == 0 {
            return Err(Error::invalid("controlnet input", format!("empty shape: batch {batch}, latent {h}x{w}")));
        }
        let u = &self.unet;
        let mut b = GraphBuilder::new();
        let sample = b.input(&[batch, h, w, u.in_channels], Elem::Act);
        let t = b.input(&[batch], Elem::Act);
        let ctx = b.input(&[batch, ctx_len, u.cross_attention_dim], Elem::Act);
        let image = b.input(&[batch, h * f, w * f, self.conditioning_channels], Elem::Act);
        let cond = self.cond_embedding(&mut b, image);
        let aug = u.added_inputs(&mut b, batch).map(|(text, ids)| u.add_embedding(&mut b, text, ids));
        let (down, mid) = self.residuals(&mut b, sample, (t, 0), Context::from(ctx), aug, cond);
        for d in down {
            b.output(d);
        }
        b.output(mid);
        b.finish()
    }

    /// Every weight, in the order a denoising loop declares them too: the control image's embedding,
    /// SDXL's added embedding, then the rest.
    pub fn weights(&self) -> Result<Vec<lcm_core::WeightSpec>> {
        Ok(self.graph(1, 1, 1, 1)?.weights)
    }

    /// Whether this ControlNet's residuals fit `unet`'s skip connections: the same levels, widths and
    /// resnets per level, the same context width and added embedding, and a control image at the VAE's
    /// `downscale`. The error says what differs (a ControlNet of the other family, say).
    pub fn check_fits(&self, unet: &UnetConfig, downscale: usize) -> std::result::Result<(), String> {
        let c = &self.unet;
        let differs = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            Err(format!("its {what} is {a:?}, the UNet's {b:?}"))
        };
        if c.block_out_channels != unet.block_out_channels {
            return differs("block_out_channels", &c.block_out_channels, &unet.block_out_channels);
        }
        if c.layers_per_block != unet.layers_per_block {
            return differs("layers_per_block", &c.layers_per_block, &unet.layers_per_block);
        }
        if c.cross_attention_dim != unet.cross_attention_dim {
            return differs("cross_attention_dim", &c.cross_attention_dim, &unet.cross_attention_dim);
        }
        if c.text_time.map(|t| t.pooled_dim()) != unet.text_time.map(|t| t.pooled_dim()) {
            return Err(format!(
                "it {} SDXL's text_time conditioning and the UNet {}",
                if c.text_time.is_some() { "takes" } else { "lacks" },
                if unet.text_time.is_some() { "has it" } else { "does not" }
            ));
        }
        if c.in_channels != unet.in_channels {
            return differs("in_channels", &c.in_channels, &unet.in_channels);
        }
        if self.image_factor() != downscale {
            return Err(format!(
                "its conditioning embedding downsamples {}x, the VAE {downscale}x",
                self.image_factor()
            ));
        }
        Ok(())
    }
}

/// A loaded ControlNet on a backend.
pub struct ControlNet<B: Backend> {
    /// The config the graph is built from.
    pub config: ControlNetConfig,
    pub(crate) runner: Runner<B>,
}

impl<B: Backend> ControlNet<B> {
    /// A ControlNet from its config and weights (what the loaders build).
    pub fn new(config: ControlNetConfig, weights: lcm_core::ModelWeights<B>) -> Self {
        ControlNet { config, runner: Runner::new(weights) }
    }

    /// One call, as diffusers' `ControlNetModel(sample, timestep, encoder_hidden_states,
    /// controlnet_cond, conditioning_scale, added_cond_kwargs)`: NCHW `sample` `[B, C, h, w]`, one
    /// timestep per image, `context` `[B, T, D]`, the control image NCHW `[B, 3, H, W]` in [0, 1] (RGB;
    /// flipped here for a `bgr` model), SDXL's added conditions. Returns the residuals times `scale`,
    /// NCHW: one per skip connection, and the mid block's.
    pub fn forward(
        &mut self,
        backend: &B,
        sample: &Tensor,
        timestep: &[f32],
        context: &Tensor,
        image: &Tensor,
        scale: f32,
        added: Option<AddedCond<'_>>,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let cfg = &self.config;
        let (bsz, h, w) = match sample.shape.as_slice() {
            &[b, c, h, w] if c == cfg.unet.in_channels => (b, h, w),
            s => return Err(Error::invalid("controlnet sample", format!("shape {s:?}"))),
        };
        let f = cfg.image_factor();
        if image.shape != [bsz, cfg.conditioning_channels, h * f, w * f] {
            return Err(Error::invalid(
                "controlnet image",
                format!(
                    "shape {:?}, expected [{bsz}, {}, {}, {}]",
                    image.shape,
                    cfg.conditioning_channels,
                    h * f,
                    w * f
                ),
            ));
        }
        let ctx_len = match context.shape.as_slice() {
            &[b, t, d] if b == bsz && d == cfg.unet.cross_attention_dim => t,
            s => return Err(Error::invalid("controlnet context", format!("shape {s:?}"))),
        };
        if timestep.len() != bsz {
            return Err(Error::invalid("controlnet timestep", format!("{} values for batch {bsz}", timestep.len())));
        }
        let nhwc = sample.nchw_to_nhwc();
        let mut img = image.nchw_to_nhwc();
        if cfg.bgr {
            img.data.chunks_exact_mut(cfg.conditioning_channels).for_each(|px| px.reverse());
        }
        let mut inputs = vec![
            HostData::F32(&nhwc.data),
            HostData::F32(timestep),
            HostData::F32(&context.data),
            HostData::F32(&img.data),
        ];
        let time_rows: Vec<f32>;
        match (cfg.unet.text_time, added) {
            (Some(_), Some(a)) if a.time_ids.shape == [bsz, TEXT_TIME_IDS] => {
                time_rows = a.time_id_rows();
                inputs.push(HostData::F32(&a.text_embeds.data));
                inputs.push(HostData::F32(&time_rows));
            }
            (None, None) => {}
            _ => {
                return Err(Error::invalid(
                    "controlnet added_cond_kwargs",
                    "an SDXL ControlNet (text_time) needs text_embeds and time_ids [B, 6]; any other takes none",
                ))
            }
        }
        let key = [bsz, h, w, ctx_len];
        let outs = self.runner.run_all(backend, &key, || cfg.graph(bsz, h, w, ctx_len), &inputs)?;
        let mut res: Vec<Tensor> = outs
            .into_iter()
            .map(|(data, shape)| {
                let t = Tensor::new(shape, data.iter().map(|v| v * scale).collect());
                t.nhwc_to_nchw()
            })
            .collect();
        let mid = res.pop().expect("the mid residual is the last output");
        Ok((res, mid))
    }

    /// The weights, for a denoising loop that runs this ControlNet inside the UNet's graph.
    pub fn weights(&self) -> &lcm_core::ModelWeights<B> {
        &self.runner.weights
    }
}
