//! Reading a component's `config.json` with errors that name the file and the key, into the
//! architectures' configs ([`crate::arch::clip::ClipConfig`], [`crate::arch::unet::UnetConfig`],
//! [`crate::arch::vae::VaeConfig`]: their `from_file`, `from_json` and `parse_value` are here, one
//! submodule per config). A config inferred from a single file's shapes is the same JSON, read by the
//! same code.

mod clip;
mod controlnet;
mod unet;
mod vae;

use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};
use serde_json::Value;

/// A component's `config.json` as a JSON object, kept with where it came from so that every error
/// names the file and the key.
pub struct Config {
    /// The config file, or the checkpoint an inferred config was read from; errors name it.
    pub path: PathBuf,
    value: Value,
}

/// The largest integer a config may give a size (channels, vocabulary, positions, …): far above any
/// real model (SDXL's largest is 49408), and small enough that products of a few never overflow.
pub const MAX_SIZE: u64 = 1 << 20;
/// The largest layer count (`num_hidden_layers`, `layers_per_block`, …): a graph is built per layer.
pub const MAX_LAYERS: u64 = 1 << 10;
/// Sizes a model divides by or shapes a tensor with: 0 is refused here, by name, rather than met as a
/// division by zero or an empty tensor deep in a graph. (Zero is meaningful elsewhere:
/// `downsample_padding`, layer counts.)
const NONZERO: &[&str] = &[
    "norm_num_groups",
    "num_attention_heads",
    "attention_head_dim",
    "block_out_channels",
    "encoder_block_out_channels",
    "decoder_block_out_channels",
    "hidden_size",
    "intermediate_size",
    "in_channels",
    "out_channels",
    "latent_channels",
    "cross_attention_dim",
    "vocab_size",
    "max_position_embeddings",
    "time_embedding_dim",
    "time_cond_proj_dim",
];

impl Config {
    /// Reads and parses `path`; an unreadable file, invalid JSON or a non-object is an error naming it.
    pub fn read(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read config: {e}")))?;
        Self::parse(path, &text)
    }

    /// Parses JSON `text`; `path` names where it came from in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(Error::config(path, "expected a JSON object"));
        }
        Ok(Config { path: path.to_path_buf(), value })
    }

    /// Wraps an already-built JSON value (a config inferred from tensor shapes); `path` names it in
    /// errors.
    pub fn from_value(path: &Path, value: Value) -> Config {
        Config { path: path.to_path_buf(), value }
    }

    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        Error::config(&self.path, format!("`{key}`: {msg}"))
    }

    /// Whether `key` is present and an explicit JSON null (which some keys give a meaning of its own).
    pub fn is_null(&self, key: &str) -> bool {
        self.value.get(key).is_some_and(Value::is_null)
    }

    /// The value of `key`, treating JSON null as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    /// The non-negative integer at `key`; missing or of another type is an error naming the key.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    /// The non-negative integer at `key`, or `default` when absent or null.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }

    /// The non-negative integer at `key`, `None` when absent or null.
    pub fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) => self.bounded(key, n).map(Some),
                None => Err(self.err(key, format!("expected a non-negative integer, got {v}"))),
            },
        }
    }

    /// `n` read at `key`, refused when absurd ([`MAX_SIZE`], [`MAX_LAYERS`] for layer counts) before any
    /// graph or buffer is sized by it.
    fn bounded(&self, key: &str, n: u64) -> Result<usize> {
        let max = if key.contains("layers") { MAX_LAYERS } else { MAX_SIZE };
        if n > max {
            return Err(self.err(key, format!("{n} is too large (at most {max})")));
        }
        if n == 0 && NONZERO.contains(&key) {
            return Err(self.err(key, "must be at least 1"));
        }
        Ok(n as usize)
    }

    /// The number at `key` as f32, or `default` when absent or null.
    pub fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| self.err(key, format!("expected a number, got {v}"))),
        }
    }

    /// The number at `key` as f32, `None` when absent or null.
    pub fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().map(|x| Some(x as f32)).ok_or_else(|| self.err(key, format!("expected a number, got {v}")))
            }
        }
    }

    /// The boolean at `key`, or `default` when absent or null.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))),
        }
    }

    /// The string at `key`, or `default` when absent or null.
    pub fn str_or<'a>(&'a self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_str().ok_or_else(|| self.err(key, format!("expected a string, got {v}"))),
        }
    }

    /// The list of strings at `key` (required), e.g. `down_block_types`.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        v.as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.err(key, format!("expected a list of strings, got {v}")))
    }

    /// The list of non-negative integers at `key` (required), e.g. `block_out_channels`.
    pub fn usizes(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.get(key).ok_or_else(|| self.err(key, "missing"))?;
        let ints = v
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.err(key, format!("expected a list of integers, got {v}")))?;
        if ints.is_empty() && NONZERO.contains(&key) {
            return Err(self.err(key, "must not be empty"));
        }
        ints.into_iter().map(|n| self.bounded(key, n)).collect()
    }

    /// An integer applying to every block, or one per block (diffusers accepts both).
    pub fn per_block(&self, key: &str, blocks: usize, default: Option<usize>) -> Result<Option<Vec<usize>>> {
        match self.get(key) {
            None => Ok(default.map(|d| vec![d; blocks])),
            Some(Value::Number(n)) => {
                let n = n.as_u64().ok_or_else(|| self.err(key, "expected a non-negative integer"))?;
                let n = self.bounded(key, n)?;
                Ok(Some(vec![n; blocks]))
            }
            Some(Value::Array(_)) => {
                let v = self.usizes(key)?;
                if v.len() != blocks {
                    return Err(self.err(key, format!("has {} entries for {blocks} blocks", v.len())));
                }
                Ok(Some(v))
            }
            Some(v) => Err(self.err(key, format!("expected an integer or a list, got {v}"))),
        }
    }

    /// Errors unless `key` is absent, null, or equal to `expected` (features this engine does not build).
    pub fn require(&self, key: &str, expected: &Value) -> Result<()> {
        match self.get(key) {
            Some(v) if v != expected => Err(self.err(key, format!("{v} is not supported (only {expected})"))),
            _ => Ok(()),
        }
    }

    /// Errors unless `key` is absent or null.
    pub fn require_absent(&self, key: &str) -> Result<()> {
        match self.get(key) {
            Some(v) => Err(self.err(key, format!("{v} is not supported"))),
            None => Ok(()),
        }
    }

    /// A config error naming this file and `key`.
    pub fn error(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        self.err(key, msg)
    }
}
