//! AutoencoderKL (the SD VAE): the decoder that turns latents into pixels and the encoder (for
//! img2img) that turns pixels into the latent distribution's moments. TAESD (`AutoencoderTiny`) runs
//! through the same types: [`VaeArch`] is the one place the two kinds part (graphs built by
//! [`crate::arch::taesd`]). Tiled calls, and [`Vae::encode`] which may tile, are in
//! [`crate::arch::vae_tiling`]; `config.json` is read into [`VaeConfig`] by `crate::checkpoint::config`.

use std::path::PathBuf;

use lcm_core::{Activation, Backend, Elem, Error, Graph, GraphBuilder, HostData, Result, Tensor, TensorId, WeightSpec};

use crate::arch::blocks::{resnet, vae_attention, Norm};
use crate::arch::taesd::TaesdConfig;
use crate::runner::Runner;

/// Which autoencoder a [`VaeConfig`] describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeArch {
    /// AutoencoderKL: resnets, GroupNorm, a mid-block attention; the encoder gives a distribution.
    Kl,
    /// AutoencoderTiny (TAESD): its own widths and block counts; the encoder gives latents directly.
    Tiny(TaesdConfig),
}

/// What the encoder of a VAE gives for an image.
#[derive(Debug, Clone)]
pub enum Encoded {
    /// AutoencoderKL: the posterior's moments NCHW `[B, 2·latent, h, w]`, mean then log-variance
    /// (diffusers samples it: one draw from the generator).
    Moments(Tensor),
    /// AutoencoderTiny: the latents NCHW `[B, latent, h, w]` (diffusers' `retrieve_latents` takes
    /// `.latents`: no draw).
    Latents(Tensor),
}

/// AutoencoderKL's `config.json`, as far as the graphs depend on it. Defaults are diffusers'.
#[derive(Debug, Clone)]
pub struct VaeConfig {
    /// `in_channels`: image channels into the encoder (3).
    pub in_channels: usize,
    /// `out_channels`: image channels out of the decoder (3).
    pub out_channels: usize,
    /// `latent_channels`: channels of the latent space (4).
    pub latent_channels: usize,
    /// `block_out_channels`: the width of each level in encoder order, full resolution first (SD:
    /// 128, 256, 512, 512); the decoder runs them reversed.
    pub block_out_channels: Vec<usize>,
    /// `layers_per_block`: resnets per encoder block (SD: 2); each decoder block has one more.
    pub layers_per_block: usize,
    /// `norm_num_groups`: GroupNorm groups (32).
    pub norm_groups: usize,
    /// `scaling_factor` (SD1.5: 0.18215): latents are the encoder's sample times it, and are divided
    /// by it before decoding.
    pub scaling_factor: f32,
    /// `shift_factor`: added after dividing by `scaling_factor`, before decoding; `None` for SD1.5.
    pub shift_factor: Option<f32>,
    /// `use_quant_conv`: a 1x1 `quant_conv` on the encoder's moments.
    pub use_quant_conv: bool,
    /// `use_post_quant_conv`: a 1x1 `post_quant_conv` on the latents before the decoder.
    pub use_post_quant_conv: bool,
    /// `mid_block_add_attention`: the mid blocks have their single-head self-attention.
    pub mid_block_attention: bool,
    /// `force_upcast`: diffusers decodes with this VAE in f32 even in an f16 pipeline (SDXL's VAE
    /// overflows in f16; its fp16-fix variant says false). lcm's CUDA backend decodes in f16 either
    /// way and reports NaN/Inf in the image as an error (see the README).
    pub force_upcast: bool,
    /// `sample_size`: the image size the VAE was trained at (SD1.5: 512, SDXL: 1024), the tile size of
    /// tiled decoding and encoding ([`crate::arch::vae_tiling`]); `None` when inferred from a single file.
    pub sample_size: Option<usize>,
    /// AutoencoderKL, or TAESD with its own layout (the KL-only fields above are then unused, and
    /// `block_out_channels` holds the decoder's widths, as diffusers registers them).
    pub arch: VaeArch,
}

/// The VAE's norms: its blocks are built with `resnet_eps=1e-6`.
const EPS: f32 = 1e-6;

/// SDXL's VAE `scaling_factor` (SD1.5's is 0.18215).
pub const SDXL_SCALING_FACTOR: f32 = 0.13025;

impl VaeConfig {
    /// The tile size of tiled decoding: `sample_size`, or, for a config without one (inferred from a
    /// single file), what the SD1.5 and SDXL VAE configs say.
    pub fn tile_size(&self) -> usize {
        self.sample_size.unwrap_or(if self.scaling_factor == SDXL_SCALING_FACTOR { 1024 } else { 512 })
    }

    fn norm(&self) -> Norm {
        Norm { groups: self.norm_groups, eps: EPS }
    }

    /// UNetMidBlock2D: resnet, attention (one head of the full width), resnet.
    fn mid(&self, b: &mut GraphBuilder, p: &str, x: TensorId) -> TensorId {
        let c = b.channels(x);
        let norm = self.norm();
        let mut x = resnet(b, &format!("{p}.resnets.0"), x, None, c, &norm, 1.0);
        if self.mid_block_attention {
            x = vae_attention(b, &format!("{p}.attentions.0"), x, 1, &norm, 1.0);
        }
        resnet(b, &format!("{p}.resnets.1"), x, None, c, &norm, 1.0)
    }

    /// Latents NHWC `F32 [B, h, w, latent]` (already divided by the scaling factor) -> image NHWC
    /// `[B, s·h, s·w, out_channels]` with s = [`Self::downscale`] (8 for SD), nominally in [-1, 1].
    /// The latents come in as `F32` on every backend, so a denoising loop in f16 hands them to a VAE
    /// in f32 (`force_upcast`) byte for byte; the graph's first op casts them to its activations.
    pub fn decoder_graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        if let VaeArch::Tiny(t) = &self.arch {
            return t.decoder_graph(self.latent_channels, self.out_channels, batch, h, w);
        }
        let mut b = GraphBuilder::new();
        let z = b.input(&[batch, h, w, self.latent_channels], Elem::F32);
        let z = b.cast(z, Elem::Act, 1, 1.0, 0.0);
        let lc = self.latent_channels;
        let mut x = if self.use_post_quant_conv { b.conv2d("post_quant_conv", z, lc, 1, 1, [0; 4], true) } else { z };
        let top = *self.block_out_channels.last().expect("at least one block");
        x = b.conv2d("decoder.conv_in", x, top, 3, 1, [1; 4], true);
        x = self.mid(&mut b, "decoder.mid_block", x);
        let n = self.block_out_channels.len();
        let norm = self.norm();
        for i in 0..n {
            let out_c = self.block_out_channels[n - 1 - i];
            for l in 0..self.layers_per_block + 1 {
                x = resnet(&mut b, &format!("decoder.up_blocks.{i}.resnets.{l}"), x, None, out_c, &norm, 1.0);
            }
            if i + 1 < n {
                let s = b.shape(x).to_vec();
                x = b.upsample(x, 2 * s[1], 2 * s[2]);
                x = b.conv2d(&format!("decoder.up_blocks.{i}.upsamplers.0.conv"), x, out_c, 3, 1, [1; 4], true);
            }
        }
        let x = b.group_norm("decoder.conv_norm_out", x, self.norm_groups, EPS, false);
        let x = b.activation(x, Activation::Silu);
        let out = b.conv2d("decoder.conv_out", x, self.out_channels, 3, 1, [1; 4], true);
        b.output(out);
        b.finish()
    }

    /// Image NHWC `Act [B, H, W, in_channels]` in [-1, 1] -> moments NHWC `[B, H/s, W/s, 2·latent]`
    /// (mean channels, then log-variance channels), s = [`Self::downscale`]; for TAESD the latents
    /// `[B, H/s, W/s, latent]`.
    pub fn encoder_graph(&self, batch: usize, h: usize, w: usize) -> Result<Graph> {
        if let VaeArch::Tiny(t) = &self.arch {
            return t.encoder_graph(self.in_channels, self.latent_channels, batch, h, w);
        }
        let mut b = GraphBuilder::new();
        let img = b.input(&[batch, h, w, self.in_channels], Elem::Act);
        let mut x = b.conv2d("encoder.conv_in", img, self.block_out_channels[0], 3, 1, [1; 4], true);
        let n = self.block_out_channels.len();
        let norm = self.norm();
        for i in 0..n {
            let out_c = self.block_out_channels[i];
            for l in 0..self.layers_per_block {
                x = resnet(&mut b, &format!("encoder.down_blocks.{i}.resnets.{l}"), x, None, out_c, &norm, 1.0);
            }
            if i + 1 < n {
                // diffusers pads (0, 1, 0, 1) — right and bottom only — then convolves with stride 2.
                x = b.conv2d(
                    &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                    x,
                    out_c,
                    3,
                    2,
                    [0, 0, 1, 1],
                    true,
                );
            }
        }
        x = self.mid(&mut b, "encoder.mid_block", x);
        let x = b.group_norm("encoder.conv_norm_out", x, self.norm_groups, EPS, false);
        let x = b.activation(x, Activation::Silu);
        let moments = 2 * self.latent_channels;
        let mut out = b.conv2d("encoder.conv_out", x, moments, 3, 1, [1; 4], true);
        if self.use_quant_conv {
            out = b.conv2d("quant_conv", out, moments, 1, 1, [0; 4], true);
        }
        b.output(out);
        b.finish()
    }

    /// Every weight of the decoder (name, torch shape, use) in graph order: what a loader reads.
    pub fn decoder_weights(&self) -> Result<Vec<WeightSpec>> {
        Ok(self.decoder_graph(1, 1, 1)?.weights)
    }

    /// Every weight of the encoder, as [`Self::decoder_weights`] (its smallest image is one latent).
    pub fn encoder_weights(&self) -> Result<Vec<WeightSpec>> {
        let s = self.downscale();
        Ok(self.encoder_graph(1, s, s)?.weights)
    }

    /// The size factor between pixels and latents: 2^(blocks-1).
    pub fn downscale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// What to build: the decoder alone (txt2img) or the encoder too (img2img).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeParts {
    /// The decoder only.
    Decoder,
    /// The decoder and the encoder.
    Both,
}

/// Opens where a VAE loaded with its decoder alone reads its encoder's weights later (img2img): the
/// folder or file it came from, opened again only when the encoder is asked for. It gives the path
/// that names the weights in errors and a source of their values.
pub(crate) type EncoderSource = Box<dyn Fn() -> Result<(PathBuf, lcm_core::WeightSource)> + Send + Sync>;

/// A loaded AutoencoderKL (or TAESD) on a backend: its decoder, and its encoder when loaded.
pub struct Vae<B: Backend> {
    /// The config the graphs are built from.
    pub config: VaeConfig,
    pub(crate) decoder: Runner<B>,
    pub(crate) encoder: Option<Runner<B>>,
    /// Where the encoder's weights are when it is not loaded yet; `None` for weights from a source.
    pub(crate) encoder_source: Option<EncoderSource>,
}

impl<B: Backend> Vae<B> {
    /// `vae.decode(z)`: `z` NCHW `[B, latent, h, w]`, already divided by the scaling factor (plus
    /// shift). Returns NCHW `[B, out_channels, s·h, s·w]`, nominally in [-1, 1] (not clamped).
    pub fn decode(&mut self, backend: &B, z: &Tensor) -> Result<Tensor> {
        let (bsz, h, w) = match z.shape.as_slice() {
            &[b, c, h, w] if c == self.config.latent_channels => (b, h, w),
            s => {
                return Err(Error::invalid(
                    "vae latents",
                    format!("shape {s:?}, expected [B, {}, h, w]", self.config.latent_channels),
                ))
            }
        };
        let nhwc = z.nchw_to_nhwc();
        let cfg = &self.config;
        let (out, shape) =
            self.decoder.run(backend, &[bsz, h, w], || cfg.decoder_graph(bsz, h, w), &[HostData::F32(&nhwc.data)])?;
        Ok(Tensor::new(shape, out).nhwc_to_nchw())
    }

    /// The encoder's moments NCHW `[B, 2·latent, H/s, W/s]` (mean, then log-variance) for an NCHW
    /// image `[B, in_channels, H, W]` in [-1, 1], H and W multiples of s = [`VaeConfig::downscale`];
    /// for TAESD the latents `[B, latent, H/s, W/s]`. An error if the encoder is not loaded.
    pub fn encode_moments(&mut self, backend: &B, image: &Tensor) -> Result<Tensor> {
        let s = self.config.downscale();
        let (bsz, h, w) = match image.shape.as_slice() {
            &[b, c, h, w] if c == self.config.in_channels && h % s == 0 && w % s == 0 => (b, h, w),
            sh => {
                return Err(Error::invalid(
                    "vae image",
                    format!(
                        "shape {sh:?}, expected [B, {}, H, W] with H and W multiples of {s}",
                        self.config.in_channels
                    ),
                ))
            }
        };
        let cfg = &self.config;
        let enc = self
            .encoder
            .as_mut()
            .ok_or_else(|| Error::invalid("vae", "loaded without its encoder (VaeParts::Decoder)"))?;
        let nhwc = image.nchw_to_nhwc();
        let (out, shape) =
            enc.run(backend, &[bsz, h, w], || cfg.encoder_graph(bsz, h, w), &[HostData::F32(&nhwc.data)])?;
        Ok(Tensor::new(shape, out).nhwc_to_nchw())
    }

    /// Builds the decoder's executor for `[n, h, w]` latents now (once per shape), arena included, so
    /// that a shape the memory cannot hold fails before a generation does any work.
    pub fn prepare_decoder(&mut self, backend: &B, n: usize, h: usize, w: usize) -> Result<()> {
        let cfg = &self.config;
        self.decoder.prepare(backend, &[n, h, w], || cfg.decoder_graph(n, h, w)).map(|_| ())
    }

    /// The decoder's weights and executors.
    pub fn decoder_runner(&self) -> &Runner<B> {
        &self.decoder
    }

    /// The encoder's runner, when loaded with `VaeParts::Both`.
    pub fn encoder_runner(&self) -> Option<&Runner<B>> {
        self.encoder.as_ref()
    }
}
