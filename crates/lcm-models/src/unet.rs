//! UNet2DConditionModel (SD1.5's denoiser and LCM's distilled one) from `unet/config.json`.

use std::path::Path;

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor, TensorId};
use serde_json::json;

use crate::blocks::{resnet, transformer_2d, Norm};
use crate::config::Config;
use crate::loader::{
    component_config, file_source, find_weights, load_weights, upload_weights, LoadOptions, WeightSource,
};
use crate::runner::Runner;

/// The kind of a UNet level's block, for the down path and (mirrored) the up path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlock {
    /// Resnets each followed by a Transformer2DModel (`CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`).
    CrossAttn,
    /// Resnets only (`DownBlock2D` / `UpBlock2D`).
    Plain,
}

/// UNet2DConditionModel's `config.json`, as far as the graph depends on it. Defaults are diffusers'.
#[derive(Debug, Clone)]
pub struct UnetConfig {
    /// `in_channels`: latent channels in (4).
    pub in_channels: usize,
    /// `out_channels`: channels of the prediction (4).
    pub out_channels: usize,
    /// `block_out_channels`: the width of each level, full resolution first (SD1.5: 320, 640, 1280,
    /// 1280); its length is the number of levels.
    pub block_out_channels: Vec<usize>,
    /// `down_block_types`, per down block: with cross-attention or not. Up blocks mirror them (checked).
    pub down_blocks: Vec<DownBlock>,
    /// `up_block_types`, lowest resolution first: `down_blocks` reversed.
    pub up_blocks: Vec<DownBlock>,
    /// `mid_block_type` is `UNetMidBlock2DCrossAttn` (resnet, transformer, resnet), the only kind built.
    pub mid_block: bool,
    /// `layers_per_block` (an int or one per level): resnets per down block; each up block has one more.
    pub layers_per_block: Vec<usize>,
    /// `transformer_layers_per_block` (an int or one per level): BasicTransformerBlocks in each
    /// Transformer2DModel of a level.
    pub transformer_layers: Vec<usize>,
    /// Attention heads per down block (diffusers reads `attention_head_dim` as heads when
    /// `num_attention_heads` is absent — SD1.5's config relies on that).
    pub heads: Vec<usize>,
    /// `cross_attention_dim`: the width of the text context the cross-attention reads (768 for
    /// CLIP-L); one value for every block.
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
}

impl UnetConfig {
    /// Reads a `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&Config::read(path)?)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?)
    }

    /// Reads `c`. Features the graph does not build (class or added embeddings, other block, mid-block
    /// or activation types, …) and inconsistent sizes are errors naming the key.
    pub fn parse(c: &Config) -> Result<Self> {
        for (key, value) in [
            ("act_fn", json!("silu")),
            ("resnet_time_scale_shift", json!("default")),
            ("time_embedding_type", json!("positional")),
            ("center_input_sample", json!(false)),
            ("only_cross_attention", json!(false)),
            ("dual_cross_attention", json!(false)),
            ("attention_type", json!("default")),
            ("resnet_skip_time_act", json!(false)),
            ("resnet_out_scale_factor", json!(1.0)),
        ] {
            c.require(key, &value)?;
        }
        for key in [
            "class_embed_type",
            "addition_embed_type",
            "num_class_embeds",
            "encoder_hid_dim",
            "time_embedding_act_fn",
            "timestep_post_act",
            "cross_attention_norm",
            "projection_class_embeddings_input_dim",
            "addition_time_embed_dim",
        ] {
            c.require_absent(key)?;
        }
        let block_out_channels = c.usizes("block_out_channels")?;
        let n = block_out_channels.len();
        let kind = |key: &str, name: &str, cross: &str, plain: &str| match name {
            s if s == cross => Ok(DownBlock::CrossAttn),
            s if s == plain => Ok(DownBlock::Plain),
            other => Err(c.error(key, format!("unknown block type `{other}` (expected {cross} or {plain})"))),
        };
        let down_blocks = c
            .strings("down_block_types")?
            .iter()
            .map(|s| kind("down_block_types", s, "CrossAttnDownBlock2D", "DownBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        let up_blocks = c
            .strings("up_block_types")?
            .iter()
            .map(|s| kind("up_block_types", s, "CrossAttnUpBlock2D", "UpBlock2D"))
            .collect::<Result<Vec<_>>>()?;
        if down_blocks.len() != n || up_blocks.len() != n {
            return Err(c.error(
                "block_out_channels",
                format!("{n} channel counts for {} down and {} up blocks", down_blocks.len(), up_blocks.len()),
            ));
        }
        // An explicit null is diffusers' "no mid block"; absent is its default, the cross-attention one.
        let mid_block = !c.is_null("mid_block_type")
            && match c.str_or("mid_block_type", "UNetMidBlock2DCrossAttn")? {
                "UNetMidBlock2DCrossAttn" => true,
                other => {
                    return Err(c.error(
                        "mid_block_type",
                        format!("unknown block type `{other}` (expected UNetMidBlock2DCrossAttn or null)"),
                    ))
                }
            };
        let heads = match c.per_block("num_attention_heads", n, None)? {
            Some(h) => h,
            None => c.per_block("attention_head_dim", n, Some(8))?.expect("defaulted"),
        };
        let cross_dims = c.per_block("cross_attention_dim", n, Some(1280))?.expect("defaulted");
        if cross_dims.iter().any(|&d| d != cross_dims[0]) {
            return Err(c.error("cross_attention_dim", "different dimensions per block are not supported"));
        }
        // Absent: diffusers' default, 32; an explicit null (no normalisation) is not built.
        if c.is_null("norm_num_groups") {
            return Err(c.error("norm_num_groups", "null (no normalisation) is not supported"));
        }
        let norm_groups = c.usize_or("norm_num_groups", 32)?;
        let cfg = UnetConfig {
            in_channels: c.usize_or("in_channels", 4)?,
            out_channels: c.usize_or("out_channels", 4)?,
            layers_per_block: c.per_block("layers_per_block", n, Some(2))?.expect("defaulted"),
            transformer_layers: c.per_block("transformer_layers_per_block", n, Some(1))?.expect("defaulted"),
            heads,
            cross_attention_dim: cross_dims[0],
            norm_groups,
            norm_eps: c.f32_or("norm_eps", 1e-5)?,
            use_linear_projection: c.bool_or("use_linear_projection", false)?,
            time_cond_proj_dim: c.usize_opt("time_cond_proj_dim")?,
            time_embed_dim: c.usize_opt("time_embedding_dim")?.unwrap_or(block_out_channels[0] * 4),
            flip_sin_to_cos: c.bool_or("flip_sin_to_cos", true)?,
            freq_shift: c.f32_or("freq_shift", 0.0)?,
            downsample_padding: c.usize_or("downsample_padding", 1)?,
            mid_block_scale_factor: c.f32_or("mid_block_scale_factor", 1.0)?,
            conv_in_kernel: c.usize_or("conv_in_kernel", 3)?,
            conv_out_kernel: c.usize_or("conv_out_kernel", 3)?,
            block_out_channels,
            down_blocks,
            up_blocks,
            mid_block,
        };
        let mirrored: Vec<DownBlock> = cfg.down_blocks.iter().rev().copied().collect();
        if cfg.up_blocks != mirrored {
            return Err(c.error("up_block_types", "must mirror down_block_types (cross-attention at the same levels)"));
        }
        for (i, &ch) in cfg.block_out_channels.iter().enumerate() {
            if ch % cfg.norm_groups != 0 || cfg.heads[i] == 0 || ch % cfg.heads[i] != 0 {
                return Err(c.error(
                    "block_out_channels",
                    format!(
                        "block {i}: {ch} channels must divide into {} groups and {} heads",
                        cfg.norm_groups, cfg.heads[i]
                    ),
                ));
            }
        }
        if cfg.conv_in_kernel % 2 == 0 || cfg.conv_out_kernel % 2 == 0 {
            return Err(c.error("conv_in_kernel", "kernel sizes must be odd"));
        }
        Ok(cfg)
    }

    /// One UNet call as a graph: inputs `sample` NHWC `Act [batch, h, w, in_channels]`, timesteps
    /// `Act [batch]`, context `Act [batch, ctx_len, cross_attention_dim]` and, with `time_cond_proj_dim`,
    /// the guidance embedding `Act [batch, d]`; output NHWC `[batch, h, w, out_channels]`. Any latent
    /// size builds: each downsampler halves it (rounding up with `downsample_padding` 1) and each
    /// upsampler restores its skip's size. An empty shape is an error naming `unet input`.
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
        let out = self.build(&mut b, sample, (t, 0), ctx, cond);
        b.output(out);
        b.finish()
    }

    /// The UNet's ops on `sample` `[B, H, W, in_channels]` with timesteps row `t.1` of `t.0` (`[B]` or
    /// `[rows, B]`), context `ctx` and, for LCM UNets, the guidance embedding `cond`: the model output.
    /// Weights are declared by name, so building it twice in one graph shares them.
    pub fn build(
        &self,
        b: &mut GraphBuilder,
        sample: TensorId,
        t: (TensorId, usize),
        ctx: TensorId,
        cond: Option<TensorId>,
    ) -> TensorId {
        let c0 = self.block_out_channels[0];
        let mut temb = b.timestep_embed_row(t.0, t.1, c0, self.flip_sin_to_cos, self.freq_shift);
        if let Some(cond) = cond {
            let proj = b.linear("time_embedding.cond_proj", cond, c0, false);
            temb = b.add(temb, proj);
        }
        let temb = b.linear("time_embedding.linear_1", temb, self.time_embed_dim, true);
        let temb = b.activation(temb, Activation::Silu);
        let temb = b.linear("time_embedding.linear_2", temb, self.time_embed_dim, true);
        let temb_act = Some(b.activation(temb, Activation::Silu));
        let norm = Norm { groups: self.norm_groups, eps: self.norm_eps };
        let n = self.block_out_channels.len();

        let pad = self.conv_in_kernel / 2;
        let mut x = b.conv2d("conv_in", sample, c0, self.conv_in_kernel, 1, [pad; 4], true);
        let mut skips = vec![x];
        for i in 0..n {
            let out_c = self.block_out_channels[i];
            for l in 0..self.layers_per_block[i] {
                x = resnet(b, &format!("down_blocks.{i}.resnets.{l}"), x, temb_act, out_c, &norm, 1.0);
                if self.down_blocks[i] == DownBlock::CrossAttn {
                    x = self.transformer(b, &format!("down_blocks.{i}.attentions.{l}"), x, ctx, i);
                }
                skips.push(x);
            }
            if i + 1 < n {
                let p = self.downsample_padding;
                x = b.conv2d(&format!("down_blocks.{i}.downsamplers.0.conv"), x, out_c, 3, 2, [p; 4], true);
                skips.push(x);
            }
        }
        if self.mid_block {
            let last = n - 1;
            let c = self.block_out_channels[last];
            x = resnet(b, "mid_block.resnets.0", x, temb_act, c, &norm, self.mid_block_scale_factor);
            x = self.transformer(b, "mid_block.attentions.0", x, ctx, last);
            x = resnet(b, "mid_block.resnets.1", x, temb_act, c, &norm, self.mid_block_scale_factor);
        }
        for i in 0..n {
            let level = n - 1 - i; // the down level this up block mirrors
            let out_c = self.block_out_channels[level];
            for l in 0..self.layers_per_block[level] + 1 {
                let skip = skips.pop().expect("one skip per resnet");
                x = b.concat(x, skip);
                x = resnet(b, &format!("up_blocks.{i}.resnets.{l}"), x, temb_act, out_c, &norm, 1.0);
                if self.up_blocks[i] == DownBlock::CrossAttn {
                    x = self.transformer(b, &format!("up_blocks.{i}.attentions.{l}"), x, ctx, level);
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

    fn transformer(
        &self,
        b: &mut GraphBuilder,
        p: &str,
        x: lcm_core::TensorId,
        ctx: lcm_core::TensorId,
        level: usize,
    ) -> lcm_core::TensorId {
        transformer_2d(
            b,
            p,
            x,
            ctx,
            self.heads[level],
            self.transformer_layers[level],
            self.norm_groups,
            self.use_linear_projection,
        )
    }
}

/// A loaded UNet on a backend.
pub struct Unet<B: Backend> {
    /// The config the graph is built from.
    pub config: UnetConfig,
    pub(crate) runner: Runner<B>,
}

impl<B: Backend> Unet<B> {
    /// Loads `dir` (a diffusers `unet/` folder: `config.json` and the weights, see
    /// [`crate::loader::find_weights`]), each weight through `opts.hook` (LoRA merging); the weights
    /// keep the file as their source for a LoRA swap.
    pub fn load(backend: &B, dir: &Path, opts: LoadOptions) -> Result<Self> {
        let config = UnetConfig::from_file(&component_config(dir)?)?;
        let files = find_weights(dir, "diffusion_pytorch_model", opts.variant)?;
        let specs = config.graph(1, 8, 8, 1)?.weights;
        let mut weights = load_weights(backend, &specs, &files, opts.hook)?;
        weights.source = Some(file_source(files));
        Ok(Unet { config, runner: Runner::new(weights) })
    }

    /// A UNet whose weights come from `source` (synthetic weights for benchmarks).
    pub fn from_source(backend: &B, config: UnetConfig, origin: &Path, source: WeightSource) -> Result<Self> {
        let specs = config.graph(1, 8, 8, 1)?.weights;
        let weights = upload_weights(backend, &specs, origin, source, None)?;
        Ok(Unet { config, runner: Runner::new(weights) })
    }

    /// One denoiser call. `sample` is NCHW `[B, C, H, W]`; `timestep` one value per batch entry;
    /// `context` `[B, T, D]`; `cond` `[B, time_cond_proj_dim]` for LCM models. Returns NCHW.
    pub fn forward(
        &mut self,
        backend: &B,
        sample: &Tensor,
        timestep: &[f32],
        context: &Tensor,
        cond: Option<&Tensor>,
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
