//! CLIPTextModel's `config.json` (a `CLIPTextConfig`, or the `text_config` of a full CLIPModel's) read
//! into [`ClipConfig`], with transformers' defaults.

use std::path::Path;

use lcm_core::{Activation, Error, Result};

use super::Config;
use crate::arch::clip::{ClipConfig, ClipOutput};

impl ClipConfig {
    /// Reads a `text_encoder/config.json`; `clip_skip` must leave at least one layer.
    pub fn from_file(path: &Path, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::read(path)?, clip_skip)
    }

    /// From JSON text; `origin` names it in errors.
    pub fn from_json(origin: &Path, text: &str, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::parse(origin, text)?, clip_skip)
    }

    /// From a JSON value (an inferred config); `origin` names it in errors.
    pub fn parse_value(origin: &Path, value: serde_json::Value, clip_skip: usize) -> Result<Self> {
        Self::parse(&Config::from_value(origin, value), clip_skip)
    }

    fn parse(c: &Config, clip_skip: usize) -> Result<Self> {
        let path = c.path.clone();
        // transformers nests the text config under `text_config` in full CLIPModel configs.
        let nested;
        let c = match c.get("text_config") {
            Some(v) if v.is_object() => {
                nested = Config::from_value(&path, v.clone());
                &nested
            }
            _ => c,
        };
        let act = match c.str_or("hidden_act", "quick_gelu")? {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => return Err(c.error("hidden_act", format!("`{other}` is not supported (quick_gelu or gelu)"))),
        };
        let with_projection = c
            .get("architectures")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("CLIPTextModelWithProjection")));
        let eos_token_id = match c.get("eos_token_id") {
            None => 49407,
            Some(v) => v.as_i64().ok_or_else(|| c.error("eos_token_id", format!("expected an integer, got {v}")))?,
        };
        let cfg = ClipConfig {
            projection_dim: if with_projection { Some(c.usize_or("projection_dim", 512)?) } else { None },
            eos_token_id,
            output: ClipOutput::FinalNorm,
            vocab_size: c.usize_or("vocab_size", 49408)?,
            hidden_size: c.usize_or("hidden_size", 512)?,
            intermediate_size: c.usize_or("intermediate_size", 2048)?,
            layers: c.usize_or("num_hidden_layers", 12)?,
            heads: c.usize_or("num_attention_heads", 8)?,
            max_positions: c.usize_or("max_position_embeddings", 77)?,
            eps: c.f32_or("layer_norm_eps", 1e-5)?,
            act,
            clip_skip,
        };
        if cfg.heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.heads) {
            return Err(c.error(
                "num_attention_heads",
                format!("{} heads do not divide hidden_size {}", cfg.heads, cfg.hidden_size),
            ));
        }
        if clip_skip >= cfg.layers {
            return Err(Error::invalid(
                "clip_skip",
                format!("{clip_skip} skips every one of the {} layers", cfg.layers),
            ));
        }
        Ok(cfg)
    }
}
