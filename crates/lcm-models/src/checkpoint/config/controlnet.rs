//! ControlNetModel's `config.json` read into [`ControlNetConfig`]: the encoder with
//! UNet2DConditionModel's keys and defaults (ControlNetModel takes the same), plus the control image's
//! embedding; features the graph does not build are refused by key.

use std::path::Path;

use lcm_core::Result;
use serde_json::{json, Value};

use super::Config;
use crate::arch::controlnet::ControlNetConfig;
use crate::arch::unet::UnetConfig;

impl ControlNetConfig {
    /// Reads a ControlNet's `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&Config::read(path)?)
    }

    /// From a JSON value (a config inferred from a single file's shapes); `origin` names it in errors.
    pub fn parse_value(origin: &Path, value: Value) -> Result<Self> {
        Self::parse(&Config::from_value(origin, value))
    }

    fn parse(c: &Config) -> Result<Self> {
        match c.str_or("_class_name", "ControlNetModel")? {
            "ControlNetModel" => {}
            other => {
                return Err(c.error(
                    "_class_name",
                    format!(
                        "`{other}` is not a ControlNetModel (ControlNet-XS, Union and other variants are not built)"
                    ),
                ))
            }
        }
        if c.bool_or("global_pool_conditions", false)? {
            return Err(c.error("global_pool_conditions", "true (shuffle-style pooled residuals) is not supported"));
        }
        let bgr = match c.str_or("controlnet_conditioning_channel_order", "rgb")? {
            "rgb" => false,
            "bgr" => true,
            other => {
                return Err(c.error("controlnet_conditioning_channel_order", format!("`{other}`: expected rgb or bgr")))
            }
        };
        let widths = match c.get("conditioning_embedding_out_channels") {
            None => vec![16, 32, 96, 256],
            Some(_) => c.usizes("conditioning_embedding_out_channels")?,
        };
        if widths.is_empty() || widths.contains(&0) {
            return Err(c.error("conditioning_embedding_out_channels", "expected a non-empty list of widths ≥ 1"));
        }
        let unet = UnetConfig::parse_value(&c.path, encoder_as_unet(c)?)?;
        Ok(ControlNetConfig {
            conditioning_channels: c.usize_or("conditioning_channels", 3)?,
            conditioning_embedding_out_channels: widths,
            bgr,
            unet,
        })
    }
}

/// The config as UNet2DConditionModel's reader takes it: ControlNetModel has no up path (one mirroring
/// the down path is implied, and never built), no guidance embedding, a 3x3 `conv_in` and a time
/// embedding of 4·`block_out_channels[0]` whatever the file says.
fn encoder_as_unet(c: &Config) -> Result<Value> {
    let mut v = match c.get("down_block_types") {
        Some(_) => serde_json::Map::new(),
        None => return Err(c.error("down_block_types", "missing")),
    };
    for key in ["act_fn", "resnet_time_scale_shift", "only_cross_attention", "class_embed_type", "num_class_embeds"] {
        if let Some(x) = c.get(key) {
            v.insert(key.into(), x.clone());
        }
    }
    for key in [
        "in_channels",
        "block_out_channels",
        "down_block_types",
        "mid_block_type",
        "layers_per_block",
        "downsample_padding",
        "mid_block_scale_factor",
        "norm_num_groups",
        "norm_eps",
        "cross_attention_dim",
        "transformer_layers_per_block",
        "attention_head_dim",
        "num_attention_heads",
        "use_linear_projection",
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
        "flip_sin_to_cos",
        "freq_shift",
        "encoder_hid_dim",
        "encoder_hid_dim_type",
    ] {
        if let Some(x) = c.get(key) {
            v.insert(key.into(), x.clone());
        } else if c.is_null(key) {
            v.insert(key.into(), Value::Null);
        }
    }
    let down = c.strings("down_block_types")?;
    let up: Vec<String> = down.iter().rev().map(|s| s.replace("Down", "Up")).collect();
    v.insert("up_block_types".into(), json!(up));
    // Per-layer depths: the UNet reader wants an up path for them; one of ones is never built.
    if c.get("transformer_layers_per_block")
        .is_some_and(|d| d.as_array().is_some_and(|a| a.iter().any(Value::is_array)))
    {
        let layers = c.per_block("layers_per_block", down.len(), Some(2))?.expect("defaulted");
        let ones: Vec<Value> = layers.iter().rev().map(|&l| json!(vec![1; l + 1])).collect();
        v.insert("reverse_transformer_layers_per_block".into(), json!(ones));
    }
    Ok(Value::Object(v))
}
