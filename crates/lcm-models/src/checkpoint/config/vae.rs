//! A VAE's `config.json` read into [`VaeConfig`]: AutoencoderKL's, or AutoencoderTiny's (TAESD) with
//! its own keys, each with diffusers' defaults.

use std::path::Path;

use lcm_core::Result;
use serde_json::json;

use super::{Config, MAX_LAYERS};
use crate::arch::taesd::TaesdConfig;
use crate::arch::vae::{VaeArch, VaeConfig};

/// `sample_size`: an integer, or diffusers' `[height, width]` form, whose first entry diffusers' tiling
/// uses.
fn sample_size(c: &Config) -> Result<Option<usize>> {
    match c.get("sample_size") {
        Some(serde_json::Value::Array(v)) => match v.first().and_then(serde_json::Value::as_u64) {
            Some(n) if n > 0 => Ok(Some(n as usize)),
            _ => Err(c.error("sample_size", "expected a positive integer or a list of them")),
        },
        _ => c.usize_opt("sample_size"),
    }
}

impl VaeConfig {
    /// Reads a `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&Config::read(path)?)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?)
    }

    /// From a JSON value (an inferred config); `origin` names it in errors.
    pub fn parse_value(origin: &Path, value: serde_json::Value) -> Result<Self> {
        Self::parse(&Config::from_value(origin, value))
    }

    fn parse(c: &Config) -> Result<Self> {
        match c.str_or("_class_name", "AutoencoderKL")? {
            "AutoencoderTiny" => return parse_tiny(c),
            "AutoencoderKL" => {}
            other => {
                return Err(
                    c.error("_class_name", format!("`{other}` is not supported (AutoencoderKL or AutoencoderTiny)"))
                )
            }
        }
        c.require("act_fn", &json!("silu"))?;
        c.require("norm_type", &json!("group"))?;
        let block_out_channels = c.usizes("block_out_channels")?;
        let n = block_out_channels.len();
        for (key, want) in [("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")] {
            let types = c.strings(key)?;
            if let Some(bad) = types.iter().find(|t| *t != want) {
                return Err(c.error(key, format!("unknown block type `{bad}` (expected {want})")));
            }
            if types.len() != n {
                return Err(c.error(key, format!("{} blocks for {n} channel counts", types.len())));
            }
        }
        // Playground-style per-channel latent statistics are not the LCM families' (and the loop's
        // decode cast is per tensor): refused rather than ignored.
        for key in ["latents_mean", "latents_std"] {
            c.require_absent(key)?;
        }
        let cfg = VaeConfig {
            force_upcast: c.bool_or("force_upcast", true)?,
            in_channels: c.usize_or("in_channels", 3)?,
            out_channels: c.usize_or("out_channels", 3)?,
            latent_channels: c.usize_or("latent_channels", 4)?,
            layers_per_block: c.usize_or("layers_per_block", 1)?,
            norm_groups: c.usize_or("norm_num_groups", 32)?,
            scaling_factor: c.f32_or("scaling_factor", 0.18215)?,
            shift_factor: c.f32_opt("shift_factor")?,
            use_quant_conv: c.bool_or("use_quant_conv", true)?,
            use_post_quant_conv: c.bool_or("use_post_quant_conv", true)?,
            mid_block_attention: c.bool_or("mid_block_add_attention", true)?,
            sample_size: sample_size(c)?,
            block_out_channels,
            arch: VaeArch::Kl,
        };
        if let Some(&bad) = cfg.block_out_channels.iter().find(|&&ch| ch % cfg.norm_groups != 0) {
            return Err(
                c.error("block_out_channels", format!("{bad} channels do not divide into {} groups", cfg.norm_groups))
            );
        }
        Ok(cfg)
    }
}

/// diffusers' `AutoencoderTiny` defaults (what the released `taesd` and `taesdxl` use).
const DEFAULT_CHANNELS: [usize; 4] = [64; 4];
const DEFAULT_ENCODER_BLOCKS: [usize; 4] = [1, 3, 3, 3];
const DEFAULT_DECODER_BLOCKS: [usize; 4] = [3, 3, 3, 1];

/// The list at `key`, or `default` when absent.
fn list_or(c: &Config, key: &str, default: &[usize]) -> Result<Vec<usize>> {
    if c.get(key).is_some() {
        c.usizes(key)
    } else {
        Ok(default.to_vec())
    }
}

/// Reads an `AutoencoderTiny` config into a [`VaeConfig`] of arch [`VaeArch::Tiny`].
fn parse_tiny(c: &Config) -> Result<VaeConfig> {
    c.require("act_fn", &json!("relu"))?;
    c.require("upsample_fn", &json!("nearest"))?;
    let t = TaesdConfig {
        encoder_channels: list_or(c, "encoder_block_out_channels", &DEFAULT_CHANNELS)?,
        decoder_channels: list_or(c, "decoder_block_out_channels", &DEFAULT_CHANNELS)?,
        encoder_blocks: list_or(c, "num_encoder_blocks", &DEFAULT_ENCODER_BLOCKS)?,
        decoder_blocks: list_or(c, "num_decoder_blocks", &DEFAULT_DECODER_BLOCKS)?,
        upsampling: c.usize_or("upsampling_scaling_factor", 2)?,
    };
    for (side, chans, blocks) in
        [("encoder", &t.encoder_channels, &t.encoder_blocks), ("decoder", &t.decoder_channels, &t.decoder_blocks)]
    {
        let (ck, bk) = (format!("{side}_block_out_channels"), format!("num_{side}_blocks"));
        if blocks.len() != chans.len() {
            return Err(c.error(&bk, format!("{} levels for the {} widths of `{ck}`", blocks.len(), chans.len())));
        }
        // diffusers builds each level's first conv and blocks from that level's own width, so torch
        // itself only runs configs whose widths are all equal.
        if chans.iter().any(|&w| w != chans[0]) {
            return Err(c.error(&ck, format!("{chans:?}: every level must have the same width")));
        }
        if let Some(&n) = blocks.iter().find(|&&n| n as u64 > MAX_LAYERS) {
            return Err(c.error(&bk, format!("{n} blocks is too many (at most {MAX_LAYERS})")));
        }
    }
    if t.encoder_channels.len() != t.decoder_channels.len() {
        return Err(c.error(
            "num_encoder_blocks",
            format!(
                "{} encoder levels and {} decoder levels: the encoder's downscale must match the decoder's",
                t.encoder_channels.len(),
                t.decoder_channels.len()
            ),
        ));
    }
    // The pipeline sizes latents by 2^(levels−1) (diffusers' vae_scale_factor); another factor would
    // decode to a different size than the one asked for.
    if t.upsampling != 2 {
        return Err(c.error("upsampling_scaling_factor", format!("{} is not supported (only 2)", t.upsampling)));
    }
    Ok(VaeConfig {
        in_channels: c.usize_or("in_channels", 3)?,
        out_channels: c.usize_or("out_channels", 3)?,
        latent_channels: c.usize_or("latent_channels", 4)?,
        // diffusers registers the decoder's widths as `block_out_channels` (its pipelines size images by it).
        block_out_channels: t.decoder_channels.clone(),
        layers_per_block: 0,
        norm_groups: 1,
        scaling_factor: c.f32_or("scaling_factor", 1.0)?,
        // Saved TAESD configs say 0.0; read as for AutoencoderKL so a non-zero value is honoured alike.
        shift_factor: c.f32_opt("shift_factor")?,
        use_quant_conv: false,
        use_post_quant_conv: false,
        mid_block_attention: false,
        // AutoencoderTiny forces `force_upcast` off whatever its file says.
        force_upcast: false,
        // AutoencoderTiny tiles by its own scheme (not AutoencoderKL's blending); lcm does not tile it.
        sample_size: None,
        arch: VaeArch::Tiny(t),
    })
}
