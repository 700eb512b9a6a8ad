//! UNet2DConditionModel (SD1.5's and SDXL's denoiser, SSD-1B's and Segmind-Vega's distilled ones,
//! and LCM's): its config as the graph reads it (SD1.5's layout and SDXL's: a plain first level,
//! per-level head counts, transformer depths per layer and a different up path for SSD-1B and Vega,
//! the `text_time` added embedding), the graph, and the loaded model. `config.json` is read into
//! [`UnetConfig`] by `crate::checkpoint::config`.

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor, TensorId, WeightSpec};

use crate::arch::blocks::{resnet, transformer_2d, Context, Norm};
use crate::runner::Runner;

/// The kind of a UNet level's block, for the down path and (mirrored) the up path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlock {
    /// Resnets each followed by a Transformer2DModel (`CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`).
    CrossAttn,
    /// Resnets only (`DownBlock2D` / `UpBlock2D`).
    Plain,
}

/// `mid_block_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidBlock {
    /// `UNetMidBlock2DCrossAttn` (the default): resnet, transformer, resnet.
    CrossAttn,
    /// `UNetMidBlock2D` as UNet2DConditionModel builds it (`num_layers=0`, no attention): one resnet
    /// (SSD-1B, Segmind-Vega).
    Resnet,
    /// An explicit null: no mid block.
    None,
}

/// How many values `time_ids` holds per image in StableDiffusionXLPipeline: original size (h, w),
/// crop top-left (y, x), target size (h, w). (The refiner's img2img pipeline passes five, with an
/// aesthetic score; lcm does not run it.)
pub const TEXT_TIME_IDS: usize = 6;

/// `addition_embed_type: "text_time"` (SDXL): `add_time_proj` embeds each time id as a sinusoid of
/// `time_embed_dim` (the UNet's `flip_sin_to_cos` and `freq_shift`); pooled text embeds ++ those six
/// sinusoids go through `add_embedding.linear_1` → SiLU → `linear_2` and are added to the time
/// embedding (`UNet2DConditionModel.get_aug_embed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTime {
    /// `addition_time_embed_dim` (SDXL: 256).
    pub time_embed_dim: usize,
    /// `projection_class_embeddings_input_dim`: `add_embedding.linear_1`'s input width (SDXL: 2816 =
    /// 1280 pooled + 6 · 256).
    pub input_dim: usize,
}

impl TextTime {
    /// The pooled text embedding's width the UNet takes: `input_dim` less the time ids' sinusoids.
    pub fn pooled_dim(&self) -> usize {
        self.input_dim - TEXT_TIME_IDS * self.time_embed_dim
    }
}

/// UNet2DConditionModel's `config.json`, as far as the graph depends on it. Defaults are diffusers'.
#[derive(Debug, Clone)]
pub struct UnetConfig {
    /// `in_channels`: latent channels in (4).
    pub in_channels: usize,
    /// `out_channels`: channels of the prediction (4).
    pub out_channels: usize,
    /// `block_out_channels`: the width of each level, full resolution first (SD1.5: 320, 640, 1280,
    /// 1280; SDXL: 320, 640, 1280); its length is the number of levels.
    pub block_out_channels: Vec<usize>,
    /// `down_block_types`, per down block: with cross-attention or not. Up blocks mirror them (checked).
    pub down_blocks: Vec<DownBlock>,
    /// `up_block_types`, lowest resolution first: `down_blocks` reversed.
    pub up_blocks: Vec<DownBlock>,
    /// `mid_block_type`.
    pub mid_block: MidBlock,
    /// `layers_per_block` (an int or one per level): resnets per down block; each up block has one more.
    pub layers_per_block: Vec<usize>,
    /// BasicTransformerBlocks in the Transformer2DModel after each resnet of each down block, per level
    /// then per resnet: `transformer_layers_per_block` (an int, one per level, or one list per level).
    pub down_transformer_layers: Vec<Vec<usize>>,
    /// The same per up block (lowest resolution first) and resnet: `reverse_transformer_layers_per_block`
    /// when given (SSD-1B, Segmind-Vega), else the down path's per-level values reversed.
    pub up_transformer_layers: Vec<Vec<usize>>,
    /// The mid block transformer's depth: the last level's (its first entry when per layer).
    pub mid_transformer_layers: usize,
    /// Attention heads per down block (diffusers reads `attention_head_dim` as heads when
    /// `num_attention_heads` is absent — SD1.5's and SDXL's configs rely on that); up blocks mirror them.
    pub heads: Vec<usize>,
    /// `cross_attention_dim`: the width of the text context the cross-attention reads (768 for
    /// CLIP-L, 2048 for SDXL's two encoders); one value for every block.
    pub cross_attention_dim: usize,
    /// `norm_num_groups`: GroupNorm groups (32).
    pub norm_groups: usize,
    /// `norm_eps`: the resnets' and `conv_norm_out`'s GroupNorm eps (1e-5); the transformers' GroupNorm
    /// uses 1e-6, as diffusers hard-codes.
    pub norm_eps: f32,
    /// `use_linear_projection`: `proj_in`/`proj_out` are linear layers `[C, C]` rather than 1x1 convs
    /// `[C, C, 1, 1]`.
    pub use_linear_projection: bool,
    /// `time_cond_proj_dim`: the guidance-scale embedding's width in a full LCM UNet (256), added to the
    /// timestep sinusoid through `time_embedding.cond_proj` (no bias); `None` for SD UNets.
    pub time_cond_proj_dim: Option<usize>,
    /// `addition_embed_type: "text_time"` and its sizes (SDXL); `None` without an added embedding.
    pub text_time: Option<TextTime>,
    /// `time_embedding_dim`, default 4·`block_out_channels[0]` (1280): the timestep embedding's width.
    pub time_embed_dim: usize,
    /// `flip_sin_to_cos`: the timestep sinusoid puts cos first (true for SD).
    pub flip_sin_to_cos: bool,
    /// `freq_shift`: the sinusoid's `downscale_freq_shift` (0 for SD).
    pub freq_shift: f32,
    /// `downsample_padding`: padding of the stride-2 3x3 downsampler convs (1).
    pub downsample_padding: usize,
    /// `mid_block_scale_factor`: the mid block's resnets divide their output by it (1).
    pub mid_block_scale_factor: f32,
    /// `conv_in_kernel`: `conv_in`'s kernel size (3; odd, padded by half).
    pub conv_in_kernel: usize,
    /// `conv_out_kernel`: `conv_out`'s kernel size (3; odd, padded by half).
    pub conv_out_kernel: usize,
    /// `sample_size`: the latent size the model was trained at (SD1.5: 64, SDXL: 128); pipelines
    /// default to this times the VAE's factor.
    pub sample_size: Option<usize>,
}

impl UnetConfig {
    /// One UNet call as a graph: inputs `sample` NHWC `Act [batch, h, w, in_channels]`, timesteps
    /// `Act [batch]`, context `Act [batch, ctx_len, cross_attention_dim]`, with `time_cond_proj_dim`
    /// the guidance embedding `Act [batch, d]`, and with `text_time` the pooled text embeds
    /// `Act [batch, pooled]` and the time ids `Act [6, batch]` (id r of every image in row r); output
    /// NHWC `[batch, h, w, out_channels]`. Any latent size builds: each downsampler halves it (rounding
    /// up with `downsample_padding` 1) and each upsampler restores its skip's size. An empty shape is an
    /// error naming `unet input`.
    pub fn graph(&self, batch: usize, h: usize, w: usize, ctx_len: usize) -> Result<Graph> {
        if batch == 0 || h == 0 || w == 0 || ctx_len == 0 {
            return Err(Error::invalid(
                "unet input",
                format!("empty shape: batch {batch}, latent {h}x{w}, context {ctx_len}"),
            ));
        }
        let mut b = GraphBuilder::new();
        let sample = b.input(&[batch, h, w, self.in_channels], Elem::Act);
        let t = b.input(&[batch], Elem::Act);
        let ctx = b.input(&[batch, ctx_len, self.cross_attention_dim], Elem::Act);
        let cond = self.time_cond_proj_dim.map(|d| b.input(&[batch, d], Elem::Act));
        let aug = self.added_inputs(&mut b, batch).map(|(text, ids)| self.add_embedding(&mut b, text, ids));
        let out = self.build(&mut b, sample, (t, 0), Context::from(ctx), cond, aug, &[]);
        b.output(out);
        b.finish()
    }

    /// Every weight of this UNet (name, torch shape, use) in graph order: what a loader reads. Weights do
    /// not depend on the input size, so the smallest graph declares them all.
    pub fn weights(&self) -> Result<Vec<WeightSpec>> {
        Ok(self.graph(1, 8, 8, 1)?.weights)
    }

    /// With `text_time`: the inputs `text_embeds` `Act [batch, pooled]` and `time_ids`
    /// `Act [TEXT_TIME_IDS, batch]`, declared in that order.
    pub fn added_inputs(&self, b: &mut GraphBuilder, batch: usize) -> Option<(TensorId, TensorId)> {
        let tt = self.text_time?;
        let text = b.input(&[batch, tt.pooled_dim()], Elem::Act);
        let ids = b.input(&[TEXT_TIME_IDS, batch], Elem::Act);
        Some((text, ids))
    }

    /// SDXL's added embedding (`get_aug_embed` for `text_time`): the pooled text embeds `[B, pooled]`
    /// then the sinusoid of each time id (rows of `time_ids` `[6, B]`), concatenated in that order,
    /// through `add_embedding.linear_1` → SiLU → `linear_2`: `[B, time_embed_dim]`, to be added to the
    /// time embedding. It depends on neither the timestep nor the latents, so a denoising loop builds it
    /// once for all its steps. Call it before [`Self::build`] (weights are declared in call order).
    pub fn add_embedding(&self, b: &mut GraphBuilder, text_embeds: TensorId, time_ids: TensorId) -> TensorId {
        let dim = self.text_time.map_or(0, |tt| tt.time_embed_dim);
        let mut x = text_embeds;
        for row in 0..TEXT_TIME_IDS {
            let e = b.timestep_embed_row(time_ids, row, dim, self.flip_sin_to_cos, self.freq_shift);
            x = b.concat(x, e);
        }
        let x = b.linear("add_embedding.linear_1", x, self.time_embed_dim, true);
        let x = b.activation(x, Activation::Silu);
        b.linear("add_embedding.linear_2", x, self.time_embed_dim, true)
    }

    /// The UNet's ops on `sample` `[B, H, W, in_channels]` with timesteps row `t.1` of `t.0` (`[B]` or
    /// `[rows, B]`), context `ctx` (with the rows that see fewer of its tokens), for LCM UNets the guidance embedding `cond` and for SDXL the added
    /// embedding `aug` ([`Self::add_embedding`]), each ControlNet's residuals in `control` added to the
    /// skip connections and the mid block's output: the model output. Weights are declared by name, so
    /// building it twice in one graph shares them.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        &self,
        b: &mut GraphBuilder,
        sample: TensorId,
        t: (TensorId, usize),
        ctx: Context,
        cond: Option<TensorId>,
        aug: Option<TensorId>,
        control: &[ControlResiduals],
    ) -> TensorId {
        let temb_act = self.time_embedding(b, t, cond, aug);
        let h = self.conv_in(b, sample);
        let (mut x, mut skips) = self.encode(b, h, temb_act, ctx);
        // UNet2DConditionModel: each skip plus its residual, the mid block's output plus the mid residual
        // (MultiControlNet sums the ControlNets' residuals: here added one ControlNet after another).
        for c in control {
            for (skip, &r) in skips.iter_mut().zip(&c.down) {
                *skip = b.add_scaled(*skip, r, c.scale.0, c.scale.1);
            }
            x = b.add_scaled(x, c.mid, c.scale.0, c.scale.1);
        }
        self.decode(b, x, skips, temb_act, ctx)
    }

    /// SiLU(the time embedding) every resnet reads: the timestep sinusoid (plus `cond_proj(cond)` for
    /// LCM UNets) through `time_embedding.linear_1` → SiLU → `linear_2`, plus `aug` (SDXL).
    pub fn time_embedding(
        &self,
        b: &mut GraphBuilder,
        t: (TensorId, usize),
        cond: Option<TensorId>,
        aug: Option<TensorId>,
    ) -> TensorId {
        let c0 = self.block_out_channels[0];
        let mut temb = b.timestep_embed_row(t.0, t.1, c0, self.flip_sin_to_cos, self.freq_shift);
        if let Some(cond) = cond {
            let proj = b.linear("time_embedding.cond_proj", cond, c0, false);
            temb = b.add(temb, proj);
        }
        let temb = b.linear("time_embedding.linear_1", temb, self.time_embed_dim, true);
        let temb = b.activation(temb, Activation::Silu);
        let mut temb = b.linear("time_embedding.linear_2", temb, self.time_embed_dim, true);
        if let Some(aug) = aug {
            temb = b.add(temb, aug); // emb + aug_emb, before the resnets' SiLU
        }
        b.activation(temb, Activation::Silu)
    }

    /// `conv_in` over the latents.
    pub fn conv_in(&self, b: &mut GraphBuilder, sample: TensorId) -> TensorId {
        let pad = self.conv_in_kernel / 2;
        b.conv2d("conv_in", sample, self.block_out_channels[0], self.conv_in_kernel, 1, [pad; 4], true)
    }

    /// The down blocks and the mid block from `conv_in`'s output `h`: the mid block's output and the
    /// skip connections (`h` first, then each resnet's or transformer's output and each downsampler's),
    /// what UNet2DConditionModel and ControlNetModel share.
    pub fn encode(
        &self,
        b: &mut GraphBuilder,
        h: TensorId,
        temb_act: TensorId,
        ctx: Context,
    ) -> (TensorId, Vec<TensorId>) {
        let norm = Norm { groups: self.norm_groups, eps: self.norm_eps };
        let temb_act = Some(temb_act);
        let n = self.block_out_channels.len();
        let mut x = h;
        let mut skips = vec![x];
        for i in 0..n {
            let out_c = self.block_out_channels[i];
            for l in 0..self.layers_per_block[i] {
                x = resnet(b, &format!("down_blocks.{i}.resnets.{l}"), x, temb_act, out_c, &norm, 1.0);
                if self.down_blocks[i] == DownBlock::CrossAttn {
                    let depth = self.down_transformer_layers[i][l];
                    x = self.transformer(b, &format!("down_blocks.{i}.attentions.{l}"), x, ctx, i, depth);
                }
                skips.push(x);
            }
            if i + 1 < n {
                let p = self.downsample_padding;
                x = b.conv2d(&format!("down_blocks.{i}.downsamplers.0.conv"), x, out_c, 3, 2, [p; 4], true);
                skips.push(x);
            }
        }
        let (last, scale) = (n - 1, self.mid_block_scale_factor);
        let c = self.block_out_channels[last];
        match self.mid_block {
            MidBlock::CrossAttn => {
                x = resnet(b, "mid_block.resnets.0", x, temb_act, c, &norm, scale);
                x = self.transformer(b, "mid_block.attentions.0", x, ctx, last, self.mid_transformer_layers);
                x = resnet(b, "mid_block.resnets.1", x, temb_act, c, &norm, scale);
            }
            MidBlock::Resnet => x = resnet(b, "mid_block.resnets.0", x, temb_act, c, &norm, scale),
            MidBlock::None => {}
        }
        (x, skips)
    }

    /// The up blocks (each resnet concatenating the next skip) and the output norm and conv.
    fn decode(
        &self,
        b: &mut GraphBuilder,
        mut x: TensorId,
        mut skips: Vec<TensorId>,
        temb_act: TensorId,
        ctx: Context,
    ) -> TensorId {
        let norm = Norm { groups: self.norm_groups, eps: self.norm_eps };
        let temb_act = Some(temb_act);
        let n = self.block_out_channels.len();
        for i in 0..n {
            let level = n - 1 - i; // the down level this up block mirrors
            let out_c = self.block_out_channels[level];
            for l in 0..self.layers_per_block[level] + 1 {
                let skip = skips.pop().expect("one skip per resnet");
                x = b.concat(x, skip);
                x = resnet(b, &format!("up_blocks.{i}.resnets.{l}"), x, temb_act, out_c, &norm, 1.0);
                if self.up_blocks[i] == DownBlock::CrossAttn {
                    let depth = self.up_transformer_layers[i][l];
                    x = self.transformer(b, &format!("up_blocks.{i}.attentions.{l}"), x, ctx, level, depth);
                }
            }
            if i + 1 < n {
                // Upsample to the next skip's size: ×2, or diffusers' `upsample_size` when the latent
                // size is not a multiple of 2^(levels-1).
                let next = *skips.last().expect("skips remain for the next level");
                let (th, tw) = (b.shape(next)[1], b.shape(next)[2]);
                x = b.upsample(x, th, tw);
                x = b.conv2d(&format!("up_blocks.{i}.upsamplers.0.conv"), x, out_c, 3, 1, [1; 4], true);
            }
        }
        let x = b.group_norm("conv_norm_out", x, self.norm_groups, self.norm_eps, false);
        let x = b.activation(x, Activation::Silu);
        let pad = self.conv_out_kernel / 2;
        b.conv2d("conv_out", x, self.out_channels, self.conv_out_kernel, 1, [pad; 4], true)
    }

    /// The skip connections [`Self::encode`] makes: conv_in's output, one per resnet, one per
    /// downsampler. A ControlNet gives one residual for each.
    pub fn skip_count(&self) -> usize {
        let n = self.block_out_channels.len();
        1 + self.layers_per_block.iter().sum::<usize>() + (n - 1)
    }

    fn transformer(
        &self,
        b: &mut GraphBuilder,
        p: &str,
        x: TensorId,
        ctx: Context,
        level: usize,
        depth: usize,
    ) -> TensorId {
        transformer_2d(b, p, x, ctx, self.heads[level], depth, self.norm_groups, self.use_linear_projection)
    }

    /// The image size pipelines default to: `sample_size` times the VAE's `downscale` (diffusers'
    /// `default_sample_size * vae_scale_factor`: 512 for SD1.5, 1024 for SDXL); `None` without one.
    pub fn default_image_size(&self, downscale: usize) -> Option<usize> {
        self.sample_size.map(|s| s * downscale)
    }
}

/// One ControlNet's residuals for a UNet call ([`UnetConfig::build`]), unscaled: one per skip connection
/// and one for the mid block, added times row `scale.1` of the `F32 [rows, B]` weights `scale.0`
/// (`controlnet_conditioning_scale` per image).
#[derive(Debug, Clone)]
pub struct ControlResiduals {
    /// One per skip connection, in [`UnetConfig::encode`]'s order.
    pub down: Vec<TensorId>,
    /// Added to the mid block's output.
    pub mid: TensorId,
    /// The weights and their row.
    pub scale: (TensorId, usize),
}

/// SDXL's added conditions for one plain UNet call (diffusers' `added_cond_kwargs`).
#[derive(Debug, Clone, Copy)]
pub struct AddedCond<'a> {
    /// `text_embeds` `[B, pooled]`: text_encoder_2's projected pooled output.
    pub text_embeds: &'a Tensor,
    /// `time_ids` `[B, 6]`: original size, crop top-left, target size.
    pub time_ids: &'a Tensor,
}

impl AddedCond<'_> {
    /// The time ids as the graphs take them: id r of every image in row r (`[6, B]`), each row one
    /// sinusoid op's input.
    pub fn time_id_rows(&self) -> Vec<f32> {
        let bsz = self.time_ids.shape[0];
        (0..TEXT_TIME_IDS).flat_map(|r| (0..bsz).map(move |i| self.time_ids.data[i * TEXT_TIME_IDS + r])).collect()
    }
}

/// A loaded UNet on a backend.
pub struct Unet<B: Backend> {
    /// The config the graph is built from.
    pub config: UnetConfig,
    pub(crate) runner: Runner<B>,
}

impl<B: Backend> Unet<B> {
    /// One denoiser call. `sample` is NCHW `[B, C, H, W]`; `timestep` one value per batch entry;
    /// `context` `[B, T, D]`; `cond` `[B, time_cond_proj_dim]` for LCM models. Returns NCHW. A UNet
    /// with `text_time` (SDXL) needs [`Self::forward_added`].
    pub fn forward(
        &mut self,
        backend: &B,
        sample: &Tensor,
        timestep: &[f32],
        context: &Tensor,
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_added(backend, sample, timestep, context, cond, None)
    }

    /// [`Self::forward`] with SDXL's added conditions, which a `text_time` UNet requires and any other
    /// refuses.
    pub fn forward_added(
        &mut self,
        backend: &B,
        sample: &Tensor,
        timestep: &[f32],
        context: &Tensor,
        cond: Option<&Tensor>,
        added: Option<AddedCond<'_>>,
    ) -> Result<Tensor> {
        let (bsz, h, w) = match sample.shape.as_slice() {
            &[b, c, h, w] if c == self.config.in_channels => (b, h, w),
            s => {
                return Err(Error::invalid(
                    "unet sample",
                    format!("shape {s:?}, expected [B, {}, H, W]", self.config.in_channels),
                ))
            }
        };
        let ctx_len = match context.shape.as_slice() {
            &[b, t, d] if b == bsz && d == self.config.cross_attention_dim => t,
            s => {
                return Err(Error::invalid(
                    "unet context",
                    format!("shape {s:?}, expected [{bsz}, T, {}]", self.config.cross_attention_dim),
                ))
            }
        };
        if timestep.len() != bsz {
            return Err(Error::invalid("unet timestep", format!("{} values for batch {bsz}", timestep.len())));
        }
        let nhwc = sample.nchw_to_nhwc();
        let mut inputs = vec![HostData::F32(&nhwc.data), HostData::F32(timestep), HostData::F32(&context.data)];
        match (self.config.time_cond_proj_dim, cond) {
            (Some(d), Some(c)) if c.shape == [bsz, d] => inputs.push(HostData::F32(&c.data)),
            (Some(d), _) => {
                return Err(Error::invalid(
                    "unet timestep_cond",
                    format!("this UNet needs a [{bsz}, {d}] guidance embedding"),
                ))
            }
            (None, Some(_)) => return Err(Error::invalid("unet timestep_cond", "this UNet has no time_cond_proj_dim")),
            (None, None) => {}
        }
        // Time ids go in as rows (id r of every image in row r): each row is one sinusoid op's input.
        let time_rows: Vec<f32>;
        match (self.config.text_time, added) {
            (Some(tt), Some(a)) => {
                if a.text_embeds.shape != [bsz, tt.pooled_dim()] || a.time_ids.shape != [bsz, TEXT_TIME_IDS] {
                    return Err(Error::invalid(
                        "unet added_cond_kwargs",
                        format!(
                            "text_embeds {:?} and time_ids {:?}, expected [{bsz}, {}] and [{bsz}, {TEXT_TIME_IDS}]",
                            a.text_embeds.shape,
                            a.time_ids.shape,
                            tt.pooled_dim()
                        ),
                    ));
                }
                time_rows = a.time_id_rows();
                inputs.push(HostData::F32(&a.text_embeds.data));
                inputs.push(HostData::F32(&time_rows));
            }
            (Some(_), None) => {
                return Err(Error::invalid(
                    "unet added_cond_kwargs",
                    "this UNet has addition_embed_type \"text_time\" (SDXL): it needs text_embeds and time_ids",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid("unet added_cond_kwargs", "this UNet has no addition_embed_type"))
            }
            (None, None) => {}
        }
        let cfg = &self.config;
        let (out, shape) =
            self.runner.run(backend, &[bsz, h, w, ctx_len], || cfg.graph(bsz, h, w, ctx_len), &inputs)?;
        Ok(Tensor::new(shape, out).nhwc_to_nchw())
    }

    /// The weights and the executors built so far.
    pub fn runner(&self) -> &Runner<B> {
        &self.runner
    }

    /// Mutable access to the weights, for backend-specific changes after loading (attaching an
    /// unmerged LoRA to a CUDA weight). A change of weight addresses is seen by the next run.
    pub fn runner_mut(&mut self) -> &mut Runner<B> {
        &mut self.runner
    }
}
