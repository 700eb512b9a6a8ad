//! TAESD (diffusers' `AutoencoderTiny`): a distilled VAE of plain 3x3 convs and ReLUs, no norms and no
//! attention, about 1% of AutoencoderKL's decoder work. Same latent space as the model's own VAE
//! (`taesd` for SD1.5, `taesdxl` for SDXL: one architecture, different weights), so it decodes the
//! pipeline's latents directly (`scaling_factor` 1.0).
//!
//! Layout (diffusers' `EncoderTiny` / `DecoderTiny`, weights named by their `nn.Sequential` index):
//! - block (`AutoencoderTinyBlock`): relu(conv(relu(conv(relu(conv(x))))) + x), weights `conv.{0,2,4}`;
//! - decoder: 3·tanh(z/3), conv + relu, then per level its blocks, a ×2 nearest upsample and a
//!   bias-free conv (the last level: no upsample, a conv with bias to the image channels); out·2 − 1;
//! - encoder: (x + 1)/2, per level a conv (the first with bias; the others stride 2, bias-free) and its
//!   blocks, then a conv to the latent channels.

use lcm_core::{Activation, Elem, Graph, GraphBuilder, Result, TensorId};

/// The `AutoencoderTiny` parts of a TAESD `config.json` (the shared ones live in
/// [`crate::arch::vae::VaeConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaesdConfig {
    /// `encoder_block_out_channels`: the width of each encoder level (one width throughout).
    pub encoder_channels: Vec<usize>,
    /// `decoder_block_out_channels`: the width of each decoder level (one width throughout).
    pub decoder_channels: Vec<usize>,
    /// `num_encoder_blocks`: blocks per encoder level (TAESD: 1, 3, 3, 3).
    pub encoder_blocks: Vec<usize>,
    /// `num_decoder_blocks`: blocks per decoder level (TAESD: 3, 3, 3, 1).
    pub decoder_blocks: Vec<usize>,
    /// `upsampling_scaling_factor`: the decoder's nearest-upsample factor per level.
    pub upsampling: usize,
}

/// The released `taesd` / `taesdxl` config (diffusers' `AutoencoderTiny` defaults; the two differ only
/// in weights): what `lcm bench` builds its synthetic TAESD from.
pub const TAESD_CONFIG: &str = r#"{"_class_name": "AutoencoderTiny", "act_fn": "relu", "in_channels": 3,
  "out_channels": 3, "latent_channels": 4, "encoder_block_out_channels": [64, 64, 64, 64],
  "decoder_block_out_channels": [64, 64, 64, 64], "num_encoder_blocks": [1, 3, 3, 3],
  "num_decoder_blocks": [3, 3, 3, 1], "upsampling_scaling_factor": 2, "scaling_factor": 1.0,
  "force_upcast": false}"#;

/// `AutoencoderTinyBlock` with equal widths (its skip is the identity): relu(convs(x) + x).
fn block(b: &mut GraphBuilder, p: &str, x: TensorId) -> TensorId {
    let c = b.channels(x);
    let mut h = x;
    for (i, conv) in [0, 2, 4].into_iter().enumerate() {
        h = b.conv2d(&format!("{p}.conv.{conv}"), h, c, 3, 1, [1; 4], true);
        if i < 2 {
            h = b.activation(h, Activation::Relu);
        }
    }
    let sum = b.add(h, x); // fused into the last conv's epilogue by lcm_core::fuse
    b.activation(sum, Activation::Relu)
}

impl TaesdConfig {
    /// Latents NHWC `Act [B, h, w, latent]` (already divided by the scaling factor) -> image NHWC
    /// `[B, 8h, 8w, out]` in [-1, 1] (not clamped), as `AutoencoderTiny.decode`.
    pub(crate) fn decoder_graph(
        &self,
        latent_channels: usize,
        out_channels: usize,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Graph> {
        let mut b = GraphBuilder::new();
        let z = b.input(&[batch, h, w, latent_channels], Elem::F32);
        let z = b.cast(z, Elem::Act, 1, 1.0, 0.0); // F32 in, as AutoencoderKL's decoder (vae.rs)
        let x = b.activation(z, Activation::TanhClamp);
        let mut x = b.conv2d("decoder.layers.0", x, self.decoder_channels[0], 3, 1, [1; 4], true);
        x = b.activation(x, Activation::Relu);
        let mut idx = 2; // the index in diffusers' nn.Sequential: conv, relu, then the levels
        let levels = self.decoder_channels.len();
        for (level, (&width, &blocks)) in self.decoder_channels.iter().zip(&self.decoder_blocks).enumerate() {
            for _ in 0..blocks {
                x = block(&mut b, &format!("decoder.layers.{idx}"), x);
                idx += 1;
            }
            let last = level + 1 == levels;
            if !last {
                let s = b.shape(x).to_vec();
                x = b.upsample(x, s[1] * self.upsampling, s[2] * self.upsampling);
                idx += 1;
            }
            let co = if last { out_channels } else { width };
            x = b.conv2d(&format!("decoder.layers.{idx}"), x, co, 3, 1, [1; 4], last);
            idx += 1;
        }
        // [0, 1] -> [-1, 1]: x·2 − 1, exact as torch's mul(2).sub(1).
        let out = b.scale(x, 2.0, -1.0);
        b.output(out);
        b.finish()
    }

    /// Image NHWC `Act [B, H, W, in]` in [-1, 1] -> latents NHWC `[B, H/8, W/8, latent]`, as
    /// `AutoencoderTiny.encode(x).latents` (no distribution: nothing to sample).
    pub(crate) fn encoder_graph(
        &self,
        in_channels: usize,
        latent_channels: usize,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Graph> {
        let mut b = GraphBuilder::new();
        let img = b.input(&[batch, h, w, in_channels], Elem::Act);
        // [-1, 1] -> [0, 1]: (x + 1)/2 rounds as x·0.5 + 0.5 (halving is exact).
        let mut x = b.scale(img, 0.5, 0.5);
        let mut idx = 0;
        for (level, (&width, &blocks)) in self.encoder_channels.iter().zip(&self.encoder_blocks).enumerate() {
            let p = format!("encoder.layers.{idx}");
            x = if level == 0 {
                b.conv2d(&p, x, width, 3, 1, [1; 4], true)
            } else {
                b.conv2d(&p, x, width, 3, 2, [1; 4], false)
            };
            idx += 1;
            for _ in 0..blocks {
                x = block(&mut b, &format!("encoder.layers.{idx}"), x);
                idx += 1;
            }
        }
        let out = b.conv2d(&format!("encoder.layers.{idx}"), x, latent_channels, 3, 1, [1; 4], true);
        b.output(out);
        b.finish()
    }
}
