//! The checks of a [`LoadSpec`] that read no model: every front end (the `lcm` command, the Python
//! module) runs them before loading, so a wrong path is reported by name in seconds rather than after
//! a model has loaded, and in the same words everywhere.

use lcm_core::{Error, Result};
use lcm_models::checkpoint::pickle::{is_pickle, pickle_refusal};

use super::{Field, LoadSpec};
use crate::embeddings::load_embedding;
use crate::lora::LoraSet;

impl LoadSpec {
    /// The model path alone, before anything reads it: a pickle is refused by name (lcm never
    /// unpickles), and [`LoadSpec::config_dir`] goes only with a single-file model.
    pub fn check_model(&self) -> Result<()> {
        let model = &self.model_dir;
        if model.is_file() && is_pickle(model) {
            return Err(pickle_refusal(model));
        }
        // A missing model is left to the loader, whose error says "not found".
        if self.config_dir.is_some() && model.is_dir() {
            return Err(Field::ConfigDir.invalid(format!(
                "names the configs of a single-file checkpoint, but the model {} is a folder; give the \
                 model as FILE.safetensors with it",
                model.display()
            )));
        }
        Ok(())
    }

    /// [`LoadSpec::check_model`], then the files beside the model: the VAE exists, every LoRA file
    /// parses (headers of memory-mapped files; shapes are checked against the model at load), every
    /// embedding loads and the embeddings folder exists.
    pub fn check_files(&self) -> Result<()> {
        self.check_model()?;
        if let Some(vae) = self.vae.as_ref().filter(|v| !v.exists()) {
            return Err(Error::file(vae, "VAE not found (expected a .safetensors file or a diffusers VAE folder)"));
        }
        LoraSet::open(&self.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
        for (path, token) in &self.embeddings {
            load_embedding(path, token.as_deref())?;
        }
        if let Some(dir) = self.embeddings_dir.as_ref().filter(|d| !d.is_dir()) {
            return Err(Error::file(dir, "embeddings folder not found"));
        }
        Ok(())
    }
}
