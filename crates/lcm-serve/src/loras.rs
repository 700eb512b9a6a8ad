//! LoRAs by name: `--lora-dir` is read once at start-up (every `*.safetensors` in it, named by its
//! file stem, each parsed to check it is a LoRA); requests name them and never pass paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};
use lcm_pipeline::lora::LoraSet;

use super::error::ApiError;

/// A LoRA a request chose: its name, file and scale.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraChoice {
    pub name: String,
    pub path: PathBuf,
    pub scale: f32,
}

/// The LoRAs a server may apply, by name.
#[derive(Debug, Default)]
pub struct LoraDir {
    pub dir: Option<PathBuf>,
    pub files: BTreeMap<String, PathBuf>,
}

impl LoraDir {
    /// Reads `dir` (none: no LoRAs can be asked for). A file that is not a readable LoRA is an error
    /// naming it, at start-up rather than at a client's first request.
    pub fn scan(dir: Option<&Path>) -> Result<Self> {
        let Some(dir) = dir else { return Ok(LoraDir::default()) };
        let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read --lora-dir: {e}")))?;
        let mut files = BTreeMap::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::file(dir, format!("cannot read --lora-dir: {e}")))?.path();
            if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                LoraSet::open(&[(path.clone(), 1.0)])?;
                files.insert(name, path);
            }
        }
        Ok(LoraDir { dir: Some(dir.to_path_buf()), files })
    }

    /// The LoRA called `name` at `scale`, or a 400 listing the names there are.
    pub fn choose(&self, name: &str, scale: f32) -> std::result::Result<LoraChoice, ApiError> {
        match self.files.get(name) {
            Some(path) => Ok(LoraChoice { name: name.to_string(), path: path.clone(), scale }),
            None if self.dir.is_none() => {
                Err(ApiError::bad("loras", format!("no LoRA `{name}`: this server was started without --lora-dir")))
            }
            None => {
                let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
                let name: String = name.chars().take(64).collect();
                Err(ApiError::bad("loras", format!("no LoRA `{name}` in --lora-dir (there are: {})", known.join(", "))))
            }
        }
    }
}
