//! What `Pipeline::load` reads: a diffusers folder (StableDiffusionPipeline's
//! layout, or StableDiffusionXLPipeline's with `text_encoder_2/` and `tokenizer_2/`), or a single-file
//! checkpoint with its configs read from the shapes or taken from a `config_dir` (diffusers'
//! `from_single_file(config=…)`), plus an optional separate VAE.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lcm_core::lcm::Prediction;
use lcm_core::{Backend, Error, Result};
use lcm_models::arch::clip::ClipOutput;
use lcm_models::checkpoint::diffusers::component_config;
use lcm_models::checkpoint::single_file::Family as CheckpointFamily;
use lcm_models::{
    Checkpoint, ClipConfig, ClipTextModel, LoadOptions, Unet, UnetConfig, Vae, VaeConfig, VaeFile, VaeParts, Variant,
};
use serde_json::Value;

use crate::clip_vocab::CLIP_VOCAB_SIZE;
use crate::embeddings::{load_embedding, scan_embeddings_dir};
use crate::lora::{LoraSet, Targets};
use crate::scheduler::SchedulerConfig;
use crate::spec::{Field, LoadSpec};
use crate::text::{TextEncoder, TextEncoders};
use crate::tokenizer::{BuiltinPad, ClipTokenizer};

/// SD1.5's VAE scaling factor: a single file's latent space when no config says otherwise.
pub const SD15_SCALING_FACTOR: f32 = 0.18215;

/// Every model a [`LoadSpec`] names, loaded and checked against each other: what a `Pipeline` is built
/// from, and what `lcm bench` times stage by stage (the same rules for folders, single files, VAEs and
/// LoRAs).
pub struct Components<B: Backend> {
    /// The text encoder(s) with their tokenizers.
    pub text: TextEncoders<B>,
    /// The UNet.
    pub unet: Unet<B>,
    /// The VAE's decoder (its encoder loads on first use: [`Vae::load_encoder`]).
    pub vae: Vae<B>,
    /// The backend the VAE was loaded on when not the pipeline's ([`upcast_vae_backend`]).
    pub vae_backend: Option<B>,
    /// The scheduler config of the model's folder (or SD1.5's defaults).
    pub scheduler: SchedulerConfig,
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

/// The image side diffusers' `from_single_file` gives a bare SD2 text-to-image file with no config:
/// stable-diffusion-2-1's, 768.
pub const SD2_V_IMAGE_SIZE: usize = 768;

/// Whether the bare single file at `path` is an SD2 text-to-image model, which diffusers takes for
/// stable-diffusion-2-1 (v-prediction, 768 pixels: [`scheduler`]); an SD2 inpainting file
/// (9 input channels) it takes for stable-diffusion-2-inpainting, an epsilon model at 512, as SD1.5's.
fn is_bare_sd2_v(path: &Path) -> Result<bool> {
    let ck = Checkpoint::open(path)?;
    Ok(ck.family() == CheckpointFamily::Sd2 && ck.unet_in_channels() != Some(9))
}

/// The scheduler config `spec` gets — its folder's, its config folder's, or for a bare single file
/// SD1.5's ([`SchedulerConfig::sd15`], what diffusers' `from_single_file` gives an SD1.5 checkpoint) —
/// read without touching any weights (to check a request before loading). A bare SD2 text-to-image file
/// gets SD1.5's with v-prediction: an SD2 file does not say what it predicts, and diffusers'
/// `from_single_file` without a config takes it for stabilityai/stable-diffusion-2-1 (768 pixels,
/// v_prediction; the rule's one exception, a `global_step` of 875000 in a pickled checkpoint, cannot
/// occur in a safetensors file). SD2-base and SD-Turbo files are epsilon models: give their config
/// folder, or `prediction_type`. `spec.prediction_type` sets what a config leaves unsaid, and is an
/// error where the config says otherwise.
pub fn scheduler(spec: &LoadSpec) -> Result<SchedulerConfig> {
    let path = &spec.model_dir;
    let file = |dir: &Path| SchedulerConfig::from_json_file(dir.join("scheduler").join("scheduler_config.json"));
    let (config, implied) = match &spec.config_dir {
        _ if path.is_dir() => (file(path)?, false),
        Some(cfg) if path.is_file() => (file(cfg)?, false),
        None if path.is_file() && is_bare_sd2_v(path)? => {
            (SchedulerConfig::sd15().with_prediction(Prediction::VPrediction), true)
        }
        None if path.is_file() => (SchedulerConfig::sd15(), true),
        _ => return Err(not_found(path)),
    };
    match (spec.prediction_type, config.prediction_type()) {
        (None, _) => Ok(config),
        (Some(asked), Some(written)) if asked != written && !implied => Err(Field::PredictionType.invalid(format!(
            "{}: the model's scheduler config says {}; the flag is for single files, whose files do not say",
            prediction_name(asked),
            prediction_name(written)
        ))),
        (Some(asked), _) => Ok(config.with_prediction(asked)),
    }
}

/// diffusers' name of a prediction type.
pub fn prediction_name(p: Prediction) -> &'static str {
    match p {
        Prediction::Epsilon => "epsilon",
        Prediction::VPrediction => "v_prediction",
        Prediction::Sample => "sample",
    }
}

/// The image side a request without a size gets when the model's configs give none (SD1.5's).
pub const FALLBACK_IMAGE_SIZE: usize = 512;

/// The image side a request without a size gets for `spec`, read from its configs without touching
/// any weights: the UNet's `sample_size` times the VAE's downscale, as diffusers' pipelines default
/// (512 for SD1.5, 1024 for SDXL); for a bare single file [`FALLBACK_IMAGE_SIZE`] ([`SD2_V_IMAGE_SIZE`] for
/// an SD2 text-to-image file, as diffusers), and for a config without a square `sample_size`.
pub fn default_image_size(spec: &LoadSpec) -> Result<usize> {
    let dir = if spec.model_dir.is_dir() { Some(&spec.model_dir) } else { spec.config_dir.as_ref() };
    let Some(dir) = dir else {
        let sd2 = spec.model_dir.is_file() && is_bare_sd2_v(&spec.model_dir)?;
        return Ok(if sd2 { SD2_V_IMAGE_SIZE } else { FALLBACK_IMAGE_SIZE });
    };
    let unet = UnetConfig::from_file(&component_config(&dir.join("unet"))?)?;
    let vae = VaeConfig::from_file(&component_config(&dir.join("vae"))?)?;
    Ok(unet.default_image_size(vae.downscale()).unwrap_or(FALLBACK_IMAGE_SIZE))
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

/// Loads every component `spec` names onto `backend` (LoRAs merged), checking that they fit each other.
pub fn load<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let path = &spec.model_dir;
    // Embedding files are small: read before any weight, so that a bad one fails fast.
    let files = spec.embeddings.iter().map(|(p, token)| load_embedding(p, token.as_deref())).collect::<Result<_>>()?;
    let dir = spec.embeddings_dir.as_ref().map(scan_embeddings_dir).transpose()?;
    let mut parts = if path.is_file() {
        from_single_file(backend, spec)?
    } else if path.is_dir() {
        from_folder(backend, spec)?
    } else {
        return Err(not_found(path));
    };
    parts.text.add_named_embeddings(backend, files, dir)?;
    // The components must fit each other; a mismatch names the UNet's config and both numbers.
    let (unet, vae) = (&parts.unet.config, &parts.vae.config);
    let te = &parts.text.first.model.config;
    let te2 = parts.text.second.as_ref().map(|t| &t.model.config);
    let (context, context_what) = match te2 {
        None => (te.hidden_size, "the text encoder's hidden_size".to_string()),
        Some(t2) => (
            te.hidden_size + t2.hidden_size,
            format!("the text encoders' hidden sizes together ({} + {})", te.hidden_size, t2.hidden_size),
        ),
    };
    let pooled =
        (unet.text_time.map_or(0, |t| t.pooled_dim()), "the pooled text embedding the UNet's add_embedding takes");
    let projection = te2.and_then(|t| t.projection_dim).unwrap_or(0);
    // An inpainting UNet takes the latents, the mask and the masked image's latents: 2·latent + 1.
    let inpainting = unet.in_channels == 2 * vae.latent_channels + 1;
    let in_what = if inpainting { "(2·latent + 1 for an inpainting UNet)" } else { "the VAE's latent_channels" };
    let latent_in = if inpainting { unet.in_channels } else { vae.latent_channels };
    let mut checks = vec![
        ("cross_attention_dim", unet.cross_attention_dim, context_what, context),
        ("in_channels", unet.in_channels, in_what.to_string(), latent_in),
        ("out_channels", unet.out_channels, "the VAE's latent_channels".to_string(), vae.latent_channels),
    ];
    if te2.is_some() || unet.text_time.is_some() {
        // diffusers' `_get_add_time_ids` check: addition_time_embed_dim · 6 + text_encoder_2's
        // projection_dim must be add_embedding's input width.
        checks.push((pooled.1, pooled.0, "text_encoder_2's projection_dim (0: none)".to_string(), projection));
    }
    for (what, unet_value, other, other_value) in checks {
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

/// What a diffusers folder's `model_index.json` says about the text side: whether it is an SDXL
/// pipeline (two text encoders) and its `force_zeros_for_empty_prompt`.
struct Family {
    sdxl: bool,
    force_zeros_for_empty_prompt: bool,
}

fn family(dir: &Path) -> Result<Family> {
    let index = dir.join("model_index.json");
    let json: Value = match std::fs::read_to_string(&index) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::config(&index, format!("not valid JSON: {e}")))?,
        Err(_) => Value::Null, // older folders may lack it: the subfolders decide
    };
    let class = json.get("_class_name").and_then(Value::as_str).unwrap_or("");
    let has =
        |name: &str| dir.join(name).is_dir() && !json.get(name).is_some_and(|v| v.get(0).is_some_and(Value::is_null));
    // The base pipelines and their inpainting variants (the refiner's img2img pipeline has another
    // conditioning: aesthetic scores, one text encoder).
    const SDXL: [&str; 2] = ["StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"];
    if class.contains("XL") && !SDXL.contains(&class) {
        return Err(Error::config(
            &index,
            format!(
                "`_class_name` {class}: lcm runs StableDiffusionXLPipeline and StableDiffusionXLInpaintPipeline \
                 folders of the SDXL family"
            ),
        ));
    }
    // SD2's pipelines that take more than a prompt: their UNets take other inputs (a low-resolution
    // image and a noise level; a depth map; a CLIP image embedding).
    const OTHER_SD2: [(&str, &str); 4] = [
        ("StableDiffusionUpscalePipeline", "x4 upscaler"),
        ("StableDiffusionDepth2ImgPipeline", "depth-to-image"),
        ("StableUnCLIPPipeline", "unCLIP"),
        ("StableUnCLIPImg2ImgPipeline", "unCLIP"),
    ];
    if let Some((_, what)) = OTHER_SD2.iter().find(|(name, _)| *name == class) {
        return Err(Error::config(
            &index,
            format!(
                "`_class_name` {class}: Stable Diffusion 2's {what} is not supported; lcm runs SD2.x text-to-image \
                 (StableDiffusionPipeline: 2.0, 2.1, SD-Turbo) and inpainting folders"
            ),
        ));
    }
    let sdxl = SDXL.contains(&class) || has("text_encoder_2");
    if sdxl && !(has("text_encoder") && has("text_encoder_2") && dir.join("tokenizer_2").is_dir()) {
        return Err(Error::file(
            dir,
            "is an SDXL pipeline without both text encoders (text_encoder/, text_encoder_2/, tokenizer/, \
             tokenizer_2/); the SDXL refiner (text_encoder_2 alone, img2img) is not supported",
        ));
    }
    let force_zeros_for_empty_prompt =
        json.get("force_zeros_for_empty_prompt").and_then(Value::as_bool).unwrap_or(true);
    Ok(Family { sdxl, force_zeros_for_empty_prompt })
}

/// The text encoders' configs as the pipeline reads them: SDXL's take the penultimate hidden state.
fn text_configs(te: ClipConfig, te2: Option<ClipConfig>) -> Result<(ClipConfig, Option<ClipConfig>)> {
    let Some(te2) = te2 else { return Ok((te, None)) };
    if te2.projection_dim.is_none() {
        return Err(Error::invalid(
            "text_encoder_2",
            "is not a CLIPTextModelWithProjection (its config's `architectures`): SDXL's pooled text embeds need its \
             text_projection",
        ));
    }
    Ok((te.with_output(ClipOutput::Penultimate), Some(te2.with_output(ClipOutput::Penultimate))))
}

/// Refuses a model whose weights cannot fit what the backend has free ([`Backend::memory_available`]),
/// before any weight is read: every weight element of the UNet and the text encoders, and of the VAE's
/// decoder when its config is known, at the width the backend stores them in (its activations': f32 on
/// the CPU, f16 on CUDA, f32 for a VAE it upcasts). A model larger than the machine fails here with the
/// sizes, not in an allocation halfway through the load.
fn check_weight_memory<B: Backend>(
    backend: &B,
    model: &Path,
    unet: &UnetConfig,
    text: &[&ClipConfig],
    vae: Option<(&VaeConfig, bool)>,
) -> Result<()> {
    let Some(available) = backend.memory_available() else { return Ok(()) };
    let numel =
        |specs: Vec<lcm_core::WeightSpec>| specs.iter().map(|s| s.shape.iter().product::<usize>() as u64).sum::<u64>();
    let width = backend.act_bytes() as u64;
    let mut bytes = numel(unet.graph(1, 8, 8, 1)?.weights) * width;
    for te in text {
        bytes += numel(te.graph(1, 1)?.weights) * width;
    }
    if let Some((v, sdxl)) = vae {
        let vae_width = if upcast_vae_backend(backend, sdxl, v).is_some() { 4 } else { width };
        bytes += numel(v.decoder_graph(1, 1, 1)?.weights) * vae_width;
    }
    if bytes > available {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        return Err(Error::file(
            model,
            format!(
                "its weights need {:.1} MiB on the {} backend ({} bytes a weight), but {:.1} MiB are free (the \
                 backend's memory cap, the host's MemAvailable or the GPU's free memory)",
                mib(bytes),
                backend.name(),
                width,
                mib(available)
            ),
        ));
    }
    Ok(())
}

fn from_folder<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let dir = &spec.model_dir;
    if let Some(cfg) = &spec.config_dir {
        return Err(Field::ConfigDir.invalid(format!(
            "{}: configs come from a single-file model's config folder; {} is a diffusers folder with its own",
            cfg.display(),
            dir.display()
        )));
    }
    let loras = LoraSet::from_specs(&spec.loras)?;
    let scheduler = scheduler(spec)?;
    let fam = family(dir)?;
    let tokenizer = ClipTokenizer::from_dir(spec.tokenizer_dir.clone().unwrap_or(component(dir, "tokenizer")?))?;
    let unet_dir = component(dir, "unet")?;
    let te_dir = component(dir, "text_encoder")?;
    let unet_cfg = UnetConfig::from_file(&unet_dir.join("config.json"))?;
    let te2_dir = component(dir, "text_encoder_2")?;
    let te_cfg = ClipConfig::from_file(&te_dir.join("config.json"), spec.clip_skip)?;
    let te2_cfg = fam.sdxl.then(|| ClipConfig::from_file(&te2_dir.join("config.json"), spec.clip_skip)).transpose()?;
    let (te_cfg, te2_cfg) = text_configs(te_cfg, te2_cfg)?;
    let vae_dir = component(dir, "vae")?;
    let own_vae = VaeConfig::from_file(&component_config(&vae_dir)?)?;
    let text_cfgs: Vec<&ClipConfig> = std::iter::once(&te_cfg).chain(te2_cfg.as_ref()).collect();
    check_weight_memory(backend, dir, &unet_cfg, &text_cfgs, Some((&own_vae, fam.sdxl)))?;
    let mut merger = loras.resolve(&Targets::for_pipeline(&unet_cfg, &te_cfg, te2_cfg.as_ref())?)?;
    let text_encoder = {
        let mut hook = merger.hook();
        ClipTextModel::load_as(backend, te_cfg, &te_dir, LoadOptions { variant: spec.variant, hook: Some(&mut hook) })?
    };
    let second = match te2_cfg {
        None => None,
        Some(cfg) => {
            let tokenizer = ClipTokenizer::from_dir(component(dir, "tokenizer_2")?)?;
            let mut hook = merger.hook_text_encoder_2();
            let opts = LoadOptions { variant: spec.variant, hook: Some(&mut hook) };
            Some(TextEncoder { tokenizer, model: ClipTextModel::load_as(backend, cfg, &te2_dir, opts)? })
        }
    };
    let unet = {
        let mut hook = merger.hook();
        Unet::load(backend, &unet_dir, LoadOptions { variant: spec.variant, hook: Some(&mut hook) })?
    };
    merger.finish()?;
    let lora_merged = merger.targets().map(str::to_string).collect();
    let text = TextEncoders {
        first: TextEncoder { tokenizer, model: text_encoder },
        second,
        force_zeros_for_empty_prompt: fam.force_zeros_for_empty_prompt,
        embeddings: Default::default(),
    };
    let (vae_cfg, source) = match &spec.vae {
        Some(v) => open_separate_vae(v, own_vae.scaling_factor, own_vae.shift_factor)?,
        None => (own_vae, VaeSource::Folder(vae_dir)),
    };
    let sdxl = text.second.is_some();
    let (vae, vae_backend) = load_vae(backend, sdxl, vae_cfg, source, spec.variant)?;
    Ok(Components { text, unet, vae, vae_backend, scheduler, lora_merged })
}

fn from_single_file<B: Backend>(backend: &B, spec: &LoadSpec) -> Result<Components<B>> {
    let ck = Checkpoint::open(&spec.model_dir)?;
    let loras = LoraSet::from_specs(&spec.loras)?;
    // SDXL's second text encoder: its config, tokenizer and model_index.json's zeros rule.
    let mut second: Option<(ClipConfig, PathBuf, bool)> = None;
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
            let tokenizer = Some(spec.tokenizer_dir.clone().unwrap_or(cfg.join("tokenizer")));
            let fam = family(cfg)?;
            if fam.sdxl && !ck.is_sdxl() {
                return Err(Error::file(
                    cfg,
                    format!(
                        "is an SDXL config folder, but {} is {} checkpoint: give its own family's",
                        ck.path().display(),
                        family_name(ck.family())
                    ),
                ));
            }
            if ck.is_sdxl() {
                if !fam.sdxl {
                    return Err(Error::file(
                        cfg,
                        format!(
                            "is an SD1.5-family config folder, but {} is an SDXL checkpoint: give SDXL's (with \
                             text_encoder_2/ and tokenizer_2/)",
                            ck.path().display()
                        ),
                    ));
                }
                let te2 = ClipConfig::from_file(&component_config(&cfg.join("text_encoder_2"))?, spec.clip_skip)?;
                second = Some((te2, cfg.join("tokenizer_2"), fam.force_zeros_for_empty_prompt));
            }
            (unet, te, Some(vae), tokenizer, scheduler(spec)?)
        }
        None if ck.is_sdxl() => {
            return Err(Error::file(
                ck.path(),
                "is an SDXL checkpoint: give SDXL's config folder as `config_dir` (unet/, text_encoder/, \
                 text_encoder_2/, tokenizer/, tokenizer_2/, vae/, scheduler/ configs; no weights needed), as \
                 diffusers' from_single_file(config=…)",
            ))
        }
        None => {
            // The file holds no tokenizer: `tokenizer_dir`, else the built-in one of its family.
            let tokenizer = spec.tokenizer_dir.clone();
            let vae = ck.infer_vae(SD15_SCALING_FACTOR, None)?;
            (ck.infer_unet()?, ck.infer_text_encoder(spec.clip_skip)?, vae, tokenizer, scheduler(spec)?)
        }
    };
    // Everything is checked (missing, misshapen and unknown tensors) before anything is uploaded.
    let own_vae = if ck.has_vae() { vae_cfg.as_ref() } else { None };
    let (te_cfg, te2_cfg) = text_configs(te_cfg, second.as_ref().map(|s| s.0.clone()))?;
    ck.check(&unet_cfg, &te_cfg, te2_cfg.as_ref(), own_vae)?;
    let text_cfgs: Vec<&ClipConfig> = std::iter::once(&te_cfg).chain(te2_cfg.as_ref()).collect();
    check_weight_memory(backend, ck.path(), &unet_cfg, &text_cfgs, own_vae.map(|v| (v, ck.is_sdxl())))?;
    let tokenizer = match tokenizer_dir {
        Some(dir) => ClipTokenizer::from_dir(dir)?,
        None => builtin_tokenizer(&ck, te_cfg.vocab_size)?,
    };

    let mut merger = loras.resolve(&Targets::for_pipeline(&unet_cfg, &te_cfg, te2_cfg.as_ref())?)?;
    let text_encoder = {
        let mut hook = merger.hook();
        ck.load_text_encoder(backend, te_cfg, Some(&mut hook))?
    };
    let (second, force_zeros_for_empty_prompt) = match (te2_cfg, second) {
        (Some(cfg), Some((_, tokenizer_2, zeros))) => {
            let mut hook = merger.hook_text_encoder_2();
            let model = ck.load_text_encoder_2(backend, cfg, Some(&mut hook))?;
            (Some(TextEncoder { tokenizer: ClipTokenizer::from_dir(tokenizer_2)?, model }), zeros)
        }
        _ => (None, true),
    };
    let unet = {
        let mut hook = merger.hook();
        ck.load_unet(backend, unet_cfg, Some(&mut hook))?
    };
    merger.finish()?;
    let lora_merged = merger.targets().map(str::to_string).collect();
    let (scaling, shift) = vae_cfg.as_ref().map_or((SD15_SCALING_FACTOR, None), |c| (c.scaling_factor, c.shift_factor));
    let (vae_cfg, source) = match (&spec.vae, vae_cfg) {
        (Some(v), _) => open_separate_vae(v, scaling, shift)?,
        (None, Some(cfg)) if ck.has_vae() => (cfg, VaeSource::Checkpoint(&ck)),
        (None, _) => {
            return Err(Error::file(
                ck.path(),
                "has no VAE (`first_stage_model.…` tensors); give a separate one as `vae` (a VAE file or folder)",
            ))
        }
    };
    let (vae, vae_backend) = load_vae(backend, second.is_some(), vae_cfg, source, spec.variant)?;
    let text = TextEncoders {
        first: TextEncoder { tokenizer, model: text_encoder },
        second,
        force_zeros_for_empty_prompt,
        embeddings: Default::default(),
    };
    Ok(Components { text, unet, vae, vae_backend, scheduler, lora_merged })
}

/// The tokenizer a single file gets without a config or tokenizer folder: CLIP's, built in, padding
/// as the tokenizer folder diffusers' `from_single_file` fetches for its family does —
/// stable-diffusion-v1-5's (openai/clip-vit-large-patch14's) with `<|endoftext|>`,
/// stable-diffusion-2-1's (OpenCLIP-H) with "!" (its special_tokens_map.json). Its ids index the text
/// encoder's token embedding, which must have CLIP's 49408 rows (or more: added embeddings).
fn builtin_tokenizer(ck: &Checkpoint, vocab_size: usize) -> Result<ClipTokenizer> {
    if vocab_size < CLIP_VOCAB_SIZE {
        return Err(Error::file(
            ck.path(),
            format!(
                "its text encoder has {vocab_size} token embeddings, fewer than the {CLIP_VOCAB_SIZE} ids of CLIP's \
                 vocabulary (the built-in tokenizer): give its own tokenizer in a config folder (`config_dir`)"
            ),
        ));
    }
    ClipTokenizer::builtin(match ck.family() {
        CheckpointFamily::Sd2 => BuiltinPad::Exclamation,
        CheckpointFamily::Sd15 | CheckpointFamily::Sdxl => BuiltinPad::EndOfText,
    })
}

/// A checkpoint family as messages name it.
fn family_name(family: CheckpointFamily) -> &'static str {
    match family {
        CheckpointFamily::Sd15 => "an SD1.5-family",
        CheckpointFamily::Sd2 => "an SD2",
        CheckpointFamily::Sdxl => "an SDXL",
    }
}

/// Where a pipeline's VAE is read from, once its config is known: so the backend it runs on is chosen
/// before any weight is uploaded.
enum VaeSource<'a> {
    /// A diffusers VAE folder (`config.json` + weights).
    Folder(PathBuf),
    /// A separate VAE file (LDM or diffusers names), checked against its config.
    File(VaeFile),
    /// A single-file checkpoint's own VAE.
    Checkpoint(&'a Checkpoint),
}

/// Whether a pipeline decodes with `vae` in f32 whatever its own precision ([`upcast_vae_backend`]).
pub fn vae_upcast(sdxl: bool, vae: &VaeConfig) -> bool {
    sdxl && vae.force_upcast
}

/// The backend a pipeline's VAE runs on when it is not the pipeline's own: diffusers' SDXL pipelines
/// decode (and encode) a `force_upcast` VAE in f32 even in an f16 pipeline, because SDXL's VAE
/// overflows in f16 (StableDiffusionPipeline ignores the flag). A backend whose activations are f16
/// lends its f32 twin ([`Backend::f32_activations`]); one already in f32 (the CPU) needs none.
pub fn upcast_vae_backend<B: Backend>(backend: &B, sdxl: bool, vae: &VaeConfig) -> Option<B> {
    if vae_upcast(sdxl, vae) {
        backend.f32_activations()
    } else {
        None
    }
}

/// Loads the VAE's decoder from `source` on the backend [`upcast_vae_backend`] picks.
fn load_vae<B: Backend>(
    backend: &B,
    sdxl: bool,
    cfg: VaeConfig,
    source: VaeSource<'_>,
    variant: Variant,
) -> Result<(Vae<B>, Option<B>)> {
    let upcast = upcast_vae_backend(backend, sdxl, &cfg);
    let be = upcast.as_ref().unwrap_or(backend);
    let vae = match source {
        VaeSource::Folder(dir) => {
            Vae::load_with_config(be, &dir, cfg, VaeParts::Decoder, LoadOptions { variant, hook: None })?
        }
        VaeSource::File(file) => file.load(be, cfg, VaeParts::Decoder)?,
        VaeSource::Checkpoint(ck) => ck.load_vae(be, cfg, VaeParts::Decoder)?,
    };
    Ok((vae, upcast))
}

/// A VAE given apart from the model: a diffusers VAE folder (`config.json` + weights), a model folder
/// with `vae/`, or a file (LDM or diffusers names; its config from its shapes, with the scaling factor
/// of the model's latent space, which the file cannot say). Its config and where to load it from.
fn open_separate_vae(
    path: &Path,
    scaling_factor: f32,
    shift_factor: Option<f32>,
) -> Result<(VaeConfig, VaeSource<'static>)> {
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
        return Ok((VaeConfig::from_file(&component_config(&dir)?)?, VaeSource::Folder(dir)));
    }
    let file = VaeFile::open(path)?;
    let config = file.infer(scaling_factor, shift_factor)?;
    file.check(&config)?;
    Ok((config, VaeSource::File(file)))
}
