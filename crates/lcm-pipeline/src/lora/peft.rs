//! The peft `LoraConfig` diffusers' `save_lora_weights` stores in a LoRA file's safetensors header
//! (`__metadata__["lora_adapter_metadata"]`): where a peft file's alpha (and rsLoRA, DoRA) come from.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use lcm_core::{Error, Result};
use serde_json::{Map, Value};

/// The peft `LoraConfig`s diffusers writes into the header, keyed `"<component>.<field>"`.
pub(super) struct PeftConfig(Map<String, Value>);

impl PeftConfig {
    /// Reads the header's `__metadata__["lora_adapter_metadata"]` (empty when absent). Called after
    /// `SafeTensorsFile::open` validated the header.
    pub(super) fn read(path: &Path) -> Result<PeftConfig> {
        let bad = |e: &dyn std::fmt::Display| Error::file(path, format!("cannot read the safetensors header: {e}"));
        let mut f = File::open(path).map_err(|e| bad(&e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|e| bad(&e))?;
        let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
        f.read_exact(&mut header).map_err(|e| bad(&e))?;
        let header: Value = serde_json::from_slice(&header).map_err(|e| bad(&e))?;
        let Some(text) = header.pointer("/__metadata__/lora_adapter_metadata").and_then(Value::as_str) else {
            return Ok(PeftConfig(Map::new()));
        };
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(PeftConfig(map)),
            _ => Err(Error::file(path, "header metadata `lora_adapter_metadata` is not a JSON object")),
        }
    }

    /// `component.field` (`component`: the peft prefix, `unet`, `text_encoder`, `text_encoder_2`).
    fn get(&self, component: &str, field: &str) -> Option<&Value> {
        self.0.get(&format!("{component}.{field}")).filter(|v| !v.is_null())
    }

    /// A per-module override from `alpha_pattern`/`rank_pattern`. peft matches a pattern key against the
    /// end of the module path at a dot; diffusers writes literal module paths, so no regex is needed.
    fn pattern(&self, component: &str, field: &str, module: &str) -> Option<&Value> {
        let patterns = self.get(component, field)?.as_object()?;
        patterns.iter().find(|(k, _)| module == k.as_str() || module.ends_with(&format!(".{k}"))).map(|(_, v)| v)
    }

    pub(super) fn alpha(&self, path: &Path, component: &str, stem: &str, rank: usize) -> Result<Option<f32>> {
        let module = stem.split_once('.').map_or(stem, |(_, m)| m);
        let r = self.pattern(component, "rank_pattern", module).or(self.get(component, "r"));
        if let Some(r) = r.and_then(Value::as_u64).filter(|&r| r != rank as u64) {
            return Err(Error::tensor(
                path,
                stem,
                format!("header metadata says rank {r}, the factors have rank {rank}"),
            ));
        }
        let alpha = self.pattern(component, "alpha_pattern", module).or(self.get(component, "lora_alpha"));
        Ok(alpha.and_then(Value::as_f64).map(|a| a as f32))
    }

    pub(super) fn flag(&self, component: &str, field: &str) -> bool {
        self.get(component, field).and_then(Value::as_bool).unwrap_or(false)
    }
}
