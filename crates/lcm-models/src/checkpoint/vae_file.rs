//! A VAE inside one safetensors file, in LDM names (`encoder.down.0.block.0…`, as
//! [`super::ldm::vae_to_ldm`] maps them; the mid-block attention as 1x1 convs) or diffusers names,
//! after a prefix: a separately distributed VAE ([`VaeFile`]), or a full checkpoint's own
//! (`first_stage_model.…`, read by [`super::single_file::Checkpoint`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use lcm_core::{Backend, Error, Result, SafeTensorsFile};

use super::ldm::{vae_to_ldm, UNET_PREFIX, VAE_PREFIX};
use super::mapped::{check_tensor, mapped_source, open_safetensors, upload_mapped, FileKey};
use super::shapes::{self, View};
use crate::arch::vae::{EncoderSource, Vae, VaeConfig, VaeParts};
use crate::runner::Runner;

/// What a VAE file's names may start with, tried in this order: `first_stage_model.` (as in a full
/// checkpoint), `vae.`, or nothing.
pub(crate) const VAE_FILE_PREFIXES: [&str; 3] = [VAE_PREFIX, "vae.", ""];

/// Extras a separately distributed VAE file may hold: EMA bookkeeping, and the training loss's
/// weights (`loss.*`: LPIPS and the discriminator of LDM's autoencoder training).
fn vae_file_extra(key: &str) -> bool {
    key.starts_with("model_ema.") || key.starts_with("loss.")
}

/// How a VAE's weights are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VaeLayout {
    /// `encoder.down.0.block.0…` after `prefix` (`first_stage_model.`, `vae.` or nothing).
    Ldm {
        /// What precedes the VAE's names.
        prefix: String,
    },
    /// diffusers' own names (`decoder.up_blocks.0.resnets.0…`) after `prefix`.
    Diffusers {
        /// What precedes the VAE's names.
        prefix: String,
    },
}

impl VaeLayout {
    /// The first of `prefixes` under which `file` has a VAE decoder, in LDM or diffusers names.
    pub(crate) fn detect(file: &SafeTensorsFile, prefixes: &[&str]) -> Option<VaeLayout> {
        prefixes.iter().find_map(|&p| {
            let prefix = p.to_string();
            if file.contains(&format!("{p}decoder.up.0.block.0.conv1.weight")) {
                Some(VaeLayout::Ldm { prefix })
            } else if file.contains(&format!("{p}decoder.up_blocks.0.resnets.0.conv1.weight")) {
                Some(VaeLayout::Diffusers { prefix })
            } else {
                None
            }
        })
    }

    /// What precedes the VAE's names in the file.
    fn prefix(&self) -> &str {
        match self {
            VaeLayout::Ldm { prefix } | VaeLayout::Diffusers { prefix } => prefix,
        }
    }

    /// Blocks, counted in the file's own names (LDM numbers the decoder from the bottom, so the
    /// mapping needs this count first).
    pub(crate) fn levels(&self, file: &SafeTensorsFile) -> usize {
        let p = self.prefix();
        (0..)
            .take_while(|i| match self {
                VaeLayout::Ldm { .. } => file.contains(&format!("{p}decoder.up.{i}.block.0.conv1.weight")),
                VaeLayout::Diffusers { .. } => {
                    file.contains(&format!("{p}decoder.up_blocks.{i}.resnets.0.conv1.weight"))
                }
            })
            .count()
    }

    fn key(&self, name: &str, levels: usize) -> Option<String> {
        match self {
            VaeLayout::Ldm { prefix } => vae_to_ldm(name, levels).map(|k| format!("{prefix}{k}")),
            VaeLayout::Diffusers { prefix } => Some(format!("{prefix}{name}")),
        }
    }
}

/// A VAE inside a file: the file, its layout and block count.
pub(crate) struct VaePart<'a> {
    pub(crate) file: &'a SafeTensorsFile,
    pub(crate) layout: &'a VaeLayout,
    pub(crate) levels: usize,
}

impl VaePart<'_> {
    /// The file key of the VAE weight `name`.
    pub(crate) fn key(&self, name: &str) -> Option<String> {
        self.layout.key(name, self.levels)
    }

    /// The config from the shapes, with the latent space's scaling (and shift) factor.
    pub(crate) fn config(&self, scaling_factor: f32, shift_factor: Option<f32>) -> Result<VaeConfig> {
        let key = |n: &str| self.key(n);
        let view = View { file: self.file, key: &key, what: "the VAE" };
        let json = shapes::vae_config(&view, self.levels, scaling_factor, shift_factor)?;
        VaeConfig::parse_value(self.file.path(), json)
    }

    /// Every key of this VAE (decoder and encoder) under `config`.
    pub(crate) fn keys(&self, config: &VaeConfig) -> Result<Vec<String>> {
        let specs = config.decoder_weights()?.into_iter().chain(config.encoder_weights()?);
        Ok(specs.filter_map(|spec| self.key(&spec.name)).collect())
    }

    /// Loads the VAE as `config` describes it: the decoder, and the encoder too with [`VaeParts::Both`].
    pub(crate) fn load<B: Backend>(&self, backend: &B, config: VaeConfig, parts: VaeParts) -> Result<Vae<B>> {
        let key = |n: &str| self.key(n).map(FileKey::whole);
        let decoder =
            Runner::new(upload_mapped(backend, self.file, &config.decoder_weights()?, &key, "the VAE", None)?);
        let encoder = match parts {
            VaeParts::Decoder => None,
            VaeParts::Both => {
                let specs = config.encoder_weights()?;
                Some(Runner::new(upload_mapped(backend, self.file, &specs, &key, "the VAE encoder", None)?))
            }
        };
        Ok(Vae { config, decoder, encoder, encoder_source: Some(self.encoder_source()) })
    }

    /// This VAE's weights for an encoder loaded later: the file opened again then, its blocks counted
    /// again.
    fn encoder_source(&self) -> EncoderSource {
        let (path, layout) = (self.file.path().to_path_buf(), self.layout.clone());
        Box::new(move || {
            let file = SafeTensorsFile::open(&path)?;
            let levels = layout.levels(&file);
            let layout = layout.clone();
            let key = move |n: &str| layout.key(n, levels).map(FileKey::whole);
            Ok((path.clone(), mapped_source(Arc::new(file), key, "the VAE encoder")))
        })
    }
}

/// A separately distributed VAE: LDM names (`encoder.down.0.block.0…`, with or without
/// `first_stage_model.` / `vae.`, as vae-ft-mse-840000-ema-pruned.safetensors) or diffusers names;
/// a full checkpoint's VAE too (its other tensors are then not this file's concern).
pub struct VaeFile {
    file: SafeTensorsFile,
    layout: VaeLayout,
    levels: usize,
}

impl VaeFile {
    /// Opens `path` and finds the VAE in it: LDM or diffusers names after `first_stage_model.`, `vae.`
    /// or nothing, tried in that order. A pickle, or a file with no VAE decoder, is refused.
    pub fn open(path: impl AsRef<Path>) -> Result<VaeFile> {
        let path = path.as_ref();
        let file = open_safetensors(path)?;
        let layout = VaeLayout::detect(&file, &VAE_FILE_PREFIXES).ok_or_else(|| {
            Error::file(
                path,
                "is not a VAE: it has no `decoder.up.0.block.0.conv1.weight` (LDM names) or \
                 `decoder.up_blocks.0.resnets.0.conv1.weight` (diffusers names), with or without a \
                 `first_stage_model.` / `vae.` prefix",
            )
        })?;
        let levels = layout.levels(&file);
        Ok(VaeFile { file, layout, levels })
    }

    /// The VAE file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    fn part(&self) -> VaePart<'_> {
        VaePart { file: &self.file, layout: &self.layout, levels: self.levels }
    }

    /// The config from the shapes, with the scaling (and shift) factor of the latent space it decodes.
    pub fn infer(&self, scaling_factor: f32, shift_factor: Option<f32>) -> Result<VaeConfig> {
        self.part().config(scaling_factor, shift_factor)
    }

    /// Checks every decoder weight is present and shaped, and every key under the VAE's prefix is a
    /// weight of it or a known extra (`model_ema.*`, `loss.*`). In a full checkpoint only the
    /// `first_stage_model.` keys are this VAE's.
    pub fn check(&self, config: &VaeConfig) -> Result<()> {
        let part = self.part();
        for spec in config.decoder_weights()? {
            let key = part.key(&spec.name).expect("decoder weights have names in every layout");
            check_tensor(&self.file, &FileKey::whole(key), &spec, "the VAE")?;
        }
        let expected: HashSet<String> = part.keys(config)?.into_iter().collect();
        let prefix = self.layout.prefix();
        let full_checkpoint = self.file.names().any(|k| k.starts_with(UNET_PREFIX));
        let unknown = self.file.names().find(|k| {
            let ours = if full_checkpoint { k.starts_with(prefix) } else { true };
            ours && !expected.contains(*k) && !vae_file_extra(k)
        });
        match unknown {
            None => Ok(()),
            Some(k) => Err(Error::tensor(
                self.path(),
                k,
                "is not a weight of this VAE as its shapes describe it, nor a known extra (model_ema.*, loss.*)",
            )),
        }
    }

    /// Loads the VAE as `config` describes it: the decoder, and the encoder too with
    /// [`VaeParts::Both`]; each tensor is checked for presence and shape as it is read.
    pub fn load<B: Backend>(&self, backend: &B, config: VaeConfig, parts: VaeParts) -> Result<Vae<B>> {
        self.part().load(backend, config, parts)
    }
}
