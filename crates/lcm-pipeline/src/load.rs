//! What [`crate::pipeline::Pipeline::load`] reads: a diffusers folder, or a single-file checkpoint
//! with its configs read from the shapes or taken from a `config_dir` (diffusers'
//! `from_single_file(config=…)`), plus an optional separate VAE.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lcm_core::{Backend, Error, Result};
use lcm_models::loader::component_config;
use lcm_models::{
    Checkpoint, ClipConfig, ClipTextModel, LoadOptions, Unet, UnetConfig, Vae, VaeConfig, VaeFile, VaeParts, Variant,
};

use crate::lora::{LoraSet, Targets};
use crate::pipeline::LoadSpec;
use crate::scheduler::{LcmConfig, LcmScheduler};
use crate::tokenizer::ClipTokenizer;

/// SD1.5's VAE scaling factor: a single file's latent space when no config says otherwise.
pub const SD15_SCALING_FACTOR: f32 = 0.18215;

pub(crate) struct Components<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel<B>,
    pub unet: Unet<B>,
    pub vae: Vae<B>,
    pub scheduler: LcmScheduler,
    /// The weights a LoRA was merged into.
    pub lora_merged: BTreeSet<String>,
}

const FOLDER_LAYOUT: &str = "a diffusers folder: model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/";

fn component(dir: &Path, name: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::file(dir, format!("model folder not found (expected {FOLDER_LAYOUT})")));
    }
    Ok(dir.join(name))
}

/// The scheduler a bare single file gets: `LCMScheduler.from_config` of SD1.5's scheduler_config.json
/// (scaled_linear 0.00085–0.012, `set_alpha_to_one: false`), what diffusers' `from_single_file` uses
/// for an SD1.5 checkpoint.
pub fn sd15_scheduler_config() -> LcmConfig {
    LcmConfig { set_alpha_to_one: false, ..LcmConfig::sd15() }
}

/// The scheduler `spec` gets — its folder's, its config folder's, or SD1.5's for a bare single file —
/// read without touching any weights (to check a request before loading).
pub fn scheduler(spec: &LoadSpec) -> Result<LcmScheduler> {
    let path = &spec.model_dir;
    match &spec.config_dir {
        _ if path.is_dir() => LcmScheduler::from_config_json(path.join("scheduler").join("scheduler_config.json")),
        Some(cfg) if path.is_file() => {
            LcmScheduler::from_config_json(cfg.join("scheduler").join("scheduler_config.json"))
        }
        None if path.is_file() => LcmScheduler::new(sd15_scheduler_config()),
        _ => Err(not_found(path)),
    }
}

fn not_found(path: &Path) -> Error {
    if path.extension().is_some_and(|e| e == "safetensors") {
        Error::file(path, "model file not found (expected a single-file .safetensors checkpoint)")
    } else {
        Error::file(
            path,
            format!("model folder not found (expected {FOLDER_LAYOUT}; or a single-file .safetensors checkpoint)"),
        )
    }
}

pub(crate) fn load<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let path = &spec.model_dir;
    let parts = if path.is_file() {
        from_single_file(backend, spec)?
    } else if path.is_dir() {
        from_folder(backend, spec)?
    } else {
        return Err(not_found(path));
    };
    // The components must fit each other; a mismatch names the UNet's config and both numbers.
    let (unet, text_encoder, vae) = (&parts.unet.config, &parts.text_encoder.config, &parts.vae.config);
    for (what, unet_value, other, other_value) in [
        ("cross_attention_dim", unet.cross_attention_dim, "the text encoder's hidden_size", text_encoder.hidden_size),
        ("in_channels", unet.in_channels, "the VAE's latent_channels", vae.latent_channels),
    ] {
        if unet_value != other_value {
            let msg = format!("{what} {unet_value} differs from {other} {other_value}");
            let origin = match (&spec.config_dir, path.is_dir()) {
                (_, true) => path.join("unet/config.json"),
                (Some(cfg), false) => cfg.join("unet/config.json"),
                (None, false) => path.clone(),
            };
            return Err(Error::config(origin, msg));
        }
    }
    Ok(parts)
}

fn from_folder<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let dir = &spec.model_dir;
    if let Some(cfg) = &spec.config_dir {
        return Err(Error::invalid(
            "--config",
            format!(
                "{}: configs come from a single-file model's config folder; {} is a diffusers folder with its own",
                cfg.display(),
                dir.display()
            ),
        ));
    }
    let loras = open_loras(spec)?;
    let scheduler = scheduler(spec)?;
    let tokenizer = ClipTokenizer::from_dir(spec.tokenizer_dir.clone().unwrap_or(component(dir, "tokenizer")?))?;
    let unet_dir = component(dir, "unet")?;
    let te_dir = component(dir, "text_encoder")?;
    let unet_cfg = UnetConfig::from_file(&unet_dir.join("config.json"))?;
    let te_cfg = ClipConfig::from_file(&te_dir.join("config.json"), spec.clip_skip)?;
    let mut merger = loras.resolve(&Targets::for_models(&unet_cfg, &te_cfg)?)?;
    let text_encoder = {
        let mut hook = merger.hook();
        let opts = LoadOptions { variant: spec.variant, hook: Some(&mut hook) };
        ClipTextModel::load(backend, &te_dir, spec.clip_skip, opts)?
    };
    let unet = {
        let mut hook = merger.hook();
        Unet::load(backend, &unet_dir, LoadOptions { variant: spec.variant, hook: Some(&mut hook) })?
    };
    merger.finish()?;
    let lora_merged = merger.targets().map(str::to_string).collect();
    let vae_dir = component(dir, "vae")?;
    let vae = match &spec.vae {
        Some(v) => {
            let own = VaeConfig::from_file(&component_config(&vae_dir)?)?;
            separate_vae(backend, v, spec.variant, own.scaling_factor, own.shift_factor)?
        }
        None => Vae::load(backend, &vae_dir, VaeParts::Decoder, LoadOptions { variant: spec.variant, hook: None })?,
    };
    Ok(Components { tokenizer, text_encoder, unet, vae, scheduler, lora_merged })
}

fn from_single_file<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let ck = Checkpoint::open(&spec.model_dir)?;
    let loras = open_loras(spec)?;
    let (unet_cfg, te_cfg, vae_cfg, tokenizer_dir, scheduler) = match &spec.config_dir {
        Some(cfg) => {
            if !cfg.is_dir() {
                return Err(Error::file(
                    cfg,
                    format!("config folder not found (expected {FOLDER_LAYOUT}, weights not needed)"),
                ));
            }
            let unet = UnetConfig::from_file(&component_config(&cfg.join("unet"))?)?;
            let te = ClipConfig::from_file(&component_config(&cfg.join("text_encoder"))?, spec.clip_skip)?;
            let vae = VaeConfig::from_file(&component_config(&cfg.join("vae"))?)?;
            let tokenizer = spec.tokenizer_dir.clone().unwrap_or(cfg.join("tokenizer"));
            (unet, te, Some(vae), tokenizer, scheduler(spec)?)
        }
        None => {
            let tokenizer = spec.tokenizer_dir.clone().ok_or_else(|| {
                Error::invalid(
                    "tokenizer",
                    format!(
                        "{} is a single-file checkpoint, which holds no tokenizer: give a config folder (--config DIR) \
                         or SD1.5's tokenizer folder",
                        spec.model_dir.display()
                    ),
                )
            })?;
            let vae = ck.infer_vae(SD15_SCALING_FACTOR, None)?;
            (ck.infer_unet()?, ck.infer_text_encoder(spec.clip_skip)?, vae, tokenizer, scheduler(spec)?)
        }
    };
    // Everything is checked (missing, misshapen and unknown tensors) before anything is uploaded.
    let own_vae = if ck.has_vae() { vae_cfg.as_ref() } else { None };
    ck.check(&unet_cfg, &te_cfg, own_vae)?;
    let tokenizer = ClipTokenizer::from_dir(tokenizer_dir)?;

    let mut merger = loras.resolve(&Targets::for_models(&unet_cfg, &te_cfg)?)?;
    let text_encoder = {
        let mut hook = merger.hook();
        ck.load_text_encoder(backend, te_cfg, Some(&mut hook))?
    };
    let unet = {
        let mut hook = merger.hook();
        ck.load_unet(backend, unet_cfg, Some(&mut hook))?
    };
    merger.finish()?;
    let lora_merged = merger.targets().map(str::to_string).collect();
    let (scaling, shift) = vae_cfg.as_ref().map_or((SD15_SCALING_FACTOR, None), |c| (c.scaling_factor, c.shift_factor));
    let vae = match (&spec.vae, vae_cfg) {
        (Some(v), _) => separate_vae(backend, v, spec.variant, scaling, shift)?,
        (None, Some(cfg)) if ck.has_vae() => ck.load_vae(backend, cfg, VaeParts::Decoder)?,
        (None, _) => {
            return Err(Error::file(
                ck.path(),
                "has no VAE (`first_stage_model.…` tensors); give a separate one (--vae FILE|DIR)",
            ))
        }
    };
    Ok(Components { tokenizer, text_encoder, unet, vae, scheduler, lora_merged })
}

fn open_loras(spec: &LoadSpec) -> Result<LoraSet> {
    LoraSet::open(&spec.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())
}

/// A VAE given apart from the model: a diffusers VAE folder (`config.json` + weights), a model folder
/// with `vae/`, or a file (LDM or diffusers names; its config from its shapes, with the scaling factor
/// of the model's latent space, which the file cannot say).
pub(crate) fn separate_vae<B: Backend>(
    backend: &B,
    path: &Path,
    variant: Variant,
    scaling_factor: f32,
    shift_factor: Option<f32>,
) -> Result<Vae<B>> {
    if path.is_dir() {
        let dir = if path.join("config.json").is_file() {
            path.to_path_buf()
        } else if path.join("vae").join("config.json").is_file() {
            path.join("vae")
        } else {
            return Err(Error::file(
                path,
                "is neither a diffusers VAE folder (config.json + diffusion_pytorch_model.safetensors) nor a model \
                 folder with vae/",
            ));
        };
        return Vae::load(backend, &dir, VaeParts::Decoder, LoadOptions { variant, hook: None });
    }
    let file = VaeFile::open(path)?;
    let config = file.infer(scaling_factor, shift_factor)?;
    file.check(&config)?;
    file.load(backend, config, VaeParts::Decoder)
}
