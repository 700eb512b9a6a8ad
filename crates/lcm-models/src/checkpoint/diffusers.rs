//! The diffusers folder: a component's `config.json` and weight file (`.safetensors`, its `.fp16`
//! variant, or shards), and loading exactly the tensors a graph names into a backend, one tensor at a
//! time. The UNet, text encoder and VAE load from their folders here.

use std::path::{Path, PathBuf};

use lcm_core::{Backend, Error, ModelWeights, Result, SafeTensorsFile, WeightFiles, WeightSpec};

use super::pickle::pickle_refusal;
use super::weights::{reborrow, upload_weights, WeightHook};
use crate::arch::clip::{ClipConfig, ClipTextModel};
use crate::arch::controlnet::{ControlNet, ControlNetConfig};
use crate::arch::unet::{Unet, UnetConfig};
use crate::arch::vae::{EncoderSource, Vae, VaeConfig, VaeParts};
use crate::runner::Runner;

/// Which weight file to take when a folder holds both the full-precision and the `.fp16` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The full-precision file if present, else the fp16 one (what the f32 CPU backend wants).
    #[default]
    PreferFull,
    /// The fp16 file if present, else the full one (half the bytes to read for an f16 backend).
    PreferHalf,
}

/// How a diffusers component folder is loaded.
pub struct LoadOptions<'a> {
    /// Which weight file to read when both precisions are there.
    pub variant: Variant,
    /// Sees every weight before upload (LoRA merging); `None`: weights load as stored.
    pub hook: Option<WeightHook<'a>>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { variant: Variant::PreferFull, hook: None }
    }
}

/// Checks that `dir` is a component folder and returns its `config.json` path.
pub fn component_config(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "missing component folder (expected a diffusers folder with text_encoder/, unet/, vae/, tokenizer/, scheduler/)"));
    }
    let cfg = dir.join("config.json");
    if !cfg.is_file() {
        return Err(Error::file(&cfg, "missing config.json"));
    }
    Ok(cfg)
}

/// Opens `<stem>.safetensors`, `<stem>.fp16.safetensors`, or the shards of their `.index.json`.
/// A pickle (`.bin`, `.ckpt`, `.pt`) in their place is refused with a way to convert it.
pub fn find_weights(dir: &Path, stem: &str, variant: Variant) -> Result<WeightFiles> {
    let full = [format!("{stem}.safetensors"), format!("{stem}.safetensors.index.json")];
    let half = [format!("{stem}.fp16.safetensors"), format!("{stem}.fp16.safetensors.index.json")];
    let order: Vec<&String> = match variant {
        Variant::PreferFull => full.iter().chain(&half).collect(),
        Variant::PreferHalf => half.iter().chain(&full).collect(),
    };
    for name in order {
        let p = dir.join(name);
        if p.is_file() {
            return if name.ends_with(".index.json") { open_sharded(&p) } else { WeightFiles::open(&p) };
        }
    }
    let pickles = [format!("{stem}.bin"), format!("{stem}.fp16.bin"), format!("{stem}.ckpt"), format!("{stem}.pt")];
    if let Some(p) = pickles.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Err(pickle_refusal(&p));
    }
    Err(Error::file(
        dir.join(&full[0]),
        format!("missing weight file (also looked for {} and sharded index files)", half[0]),
    ))
}

fn open_sharded(index: &Path) -> Result<WeightFiles> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::file(index, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map =
        v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(index, "no `weight_map` object"))?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    // A shard is a file beside the index: a name with a directory in it (`../x`, `/dev/zero`) would
    // let a downloaded index open any file on the machine.
    if let Some(bad) = shards.iter().find(|s| Path::new(s).file_name() != Some(std::ffi::OsStr::new(s.as_str()))) {
        return Err(Error::file(index, format!("shard `{bad}` is not a file name beside the index")));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let files = shards.iter().map(|s| SafeTensorsFile::open(dir.join(s))).collect::<Result<Vec<_>>>()?;
    Ok(WeightFiles::from_files(files))
}

/// Loads every tensor `specs` names from `files` into `backend`, checking shapes; the hook (LoRA) sees
/// each tensor in f32 torch layout first. Peak extra memory is one tensor in f32.
pub fn load_weights<B: Backend>(
    backend: &B,
    specs: &[WeightSpec],
    files: &WeightFiles,
    hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut from_file = |spec: &WeightSpec, buf: &mut Vec<f32>| {
        files.get_shaped(file_name_of(files, &spec.name), &spec.shape)?.to_f32_into(buf);
        Ok(())
    };
    upload_weights(backend, specs, &files.location(), &mut from_file, hook)
}

/// A source that reads weights from `files` again, pristine (kept by a model whose weights a LoRA swap
/// re-merges).
pub fn file_source(files: WeightFiles) -> lcm_core::WeightSource {
    Box::new(move |spec: &WeightSpec, buf: &mut Vec<f32>| {
        files.get_shaped(file_name_of(&files, &spec.name), &spec.shape)?.to_f32_into(buf);
        Ok(())
    })
}

/// The name a weight has in the file: transformers 5 saves CLIPTextModel without the `text_model.`
/// level that SD checkpoints (and the graph) use, so both spellings are accepted.
fn file_name_of<'a>(files: &WeightFiles, name: &'a str) -> &'a str {
    match name.strip_prefix("text_model.") {
        Some(rest) if !files.contains(name) && files.contains(rest) => rest,
        _ => name,
    }
}

impl<B: Backend> Unet<B> {
    /// Loads `dir` (a diffusers `unet/` folder: `config.json` and the weights, see [`find_weights`]),
    /// each weight through `opts.hook` (LoRA merging); the weights keep the file as their source for a
    /// LoRA swap.
    pub fn load(backend: &B, dir: &Path, opts: LoadOptions) -> Result<Self> {
        let config = UnetConfig::from_file(&component_config(dir)?)?;
        let files = find_weights(dir, "diffusion_pytorch_model", opts.variant)?;
        let mut weights = load_weights(backend, &config.weights()?, &files, opts.hook)?;
        weights.source = Some(file_source(files));
        Ok(Unet { config, runner: Runner::new(weights) })
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// Loads `dir` (a diffusers `text_encoder/` folder: `config.json` and `model.safetensors` or its
    /// variants, see [`find_weights`]), each weight through `opts.hook` (LoRA merging); the weights
    /// keep the file as their source for a LoRA swap.
    pub fn load(backend: &B, dir: &Path, clip_skip: usize, opts: LoadOptions) -> Result<Self> {
        Self::load_as(backend, ClipConfig::from_file(&component_config(dir)?, clip_skip)?, dir, opts)
    }

    /// [`Self::load`] with the config given (read from `dir`'s and set up by the caller, e.g. with
    /// [`ClipConfig::with_output`]).
    pub fn load_as(backend: &B, config: ClipConfig, dir: &Path, opts: LoadOptions) -> Result<Self> {
        let files = find_weights(dir, "model", opts.variant)?;
        let mut weights = load_weights(backend, &config.weights()?, &files, opts.hook)?;
        weights.source = Some(file_source(files));
        Ok(ClipTextModel { config, runner: Runner::new(weights) })
    }
}

/// A VAE folder's weights for an encoder loaded later: the weight file found and opened again then.
fn folder_encoder_source(dir: PathBuf, variant: Variant) -> EncoderSource {
    Box::new(move || {
        let files = find_weights(&dir, "diffusion_pytorch_model", variant)?;
        Ok((files.location(), file_source(files)))
    })
}

impl<B: Backend> Vae<B> {
    /// Loads `dir` (a diffusers `vae/` folder): the decoder, and the encoder too with
    /// [`VaeParts::Both`]; every weight passes through `opts.hook`.
    pub fn load(backend: &B, dir: &Path, parts: VaeParts, opts: LoadOptions) -> Result<Self> {
        Self::load_with_config(backend, dir, VaeConfig::from_file(&component_config(dir)?)?, parts, opts)
    }

    /// [`Vae::load`] with `dir`'s config already read (to choose the backend from it first).
    pub fn load_with_config(
        backend: &B,
        dir: &Path,
        config: VaeConfig,
        parts: VaeParts,
        mut opts: LoadOptions,
    ) -> Result<Self> {
        let files = find_weights(dir, "diffusion_pytorch_model", opts.variant)?;
        let decoder = Runner::new(load_weights(backend, &config.decoder_weights()?, &files, reborrow(&mut opts.hook))?);
        let encoder = match parts {
            VaeParts::Decoder => None,
            VaeParts::Both => {
                let enc = config.encoder_weights()?;
                Some(Runner::new(load_weights(backend, &enc, &files, reborrow(&mut opts.hook))?))
            }
        };
        let encoder_source = Some(folder_encoder_source(dir.to_path_buf(), opts.variant));
        Ok(Vae { config, decoder, encoder, encoder_source })
    }

    /// Loads the encoder (for img2img) into a VAE loaded with its decoder only; a no-op if it is there.
    /// It comes from where the decoder came from (the VAE's folder, or the single-file checkpoint or
    /// VAE file it was read from); `dir` and `variant` are used only for a VAE made by `from_source`.
    pub fn load_encoder(&mut self, backend: &B, dir: &Path, variant: Variant) -> Result<()> {
        if self.encoder.is_some() {
            return Ok(());
        }
        let (origin, mut source) = match &self.encoder_source {
            Some(open) => open()?,
            None => folder_encoder_source(dir.to_path_buf(), variant)()?,
        };
        let specs = self.config.encoder_weights()?;
        self.encoder = Some(Runner::new(upload_weights(backend, &specs, &origin, &mut *source, None)?));
        Ok(())
    }
}

impl<B: Backend> ControlNet<B> {
    /// Loads a ControlNet from a diffusers folder (`config.json` + `diffusion_pytorch_model[.fp16]`).
    pub fn load_folder(backend: &B, dir: &Path, variant: Variant) -> Result<Self> {
        let config = ControlNetConfig::from_file(&component_config(dir)?)?;
        let files = find_weights(dir, "diffusion_pytorch_model", variant)?;
        let weights = load_weights(backend, &config.weights()?, &files, None)?;
        Ok(ControlNet::new(config, weights))
    }
}
