//! Single-file checkpoints as A1111, ComfyUI and civitai ship them: one `.safetensors` with the
//! original Stable Diffusion (LDM) key names —
//! - `model.diffusion_model.…`: the UNet, named as [`super::ldm::UnetLayout`] maps them; a full LCM
//!   keeps diffusers' name for its guidance projection, `model.diffusion_model.time_embedding.cond_proj`
//!   (LDM has none, and diffusers' `convert_diffusers_to_original_stable_diffusion.py` leaves unmapped
//!   keys as they are);
//! - `first_stage_model.…`: the VAE ([`super::vae_file`]);
//! - `cond_stage_model.transformer.…`: SD1.5's CLIP-L with HF names, with or without the `text_model.`
//!   level; SD2's OpenCLIP-H under `cond_stage_model.model.…` (OpenCLIP names, [`super::open_clip`],
//!   with one layer more than the model uses: see [`Family::Sd2`]); SDXL's two text encoders under
//!   `conditioner.embedders.0.transformer.…` (CLIP-L) and `conditioner.embedders.1.model.…` (OpenCLIP).
//!
//! Every key must be accounted for: a weight of one of the models, or one of the known extras
//! ([`known_extra`]). Anything else is an error naming the key, so a checkpoint of another kind (a
//! LoRA, a bare VAE) is refused instead of half-loaded; SD2's variants that run other pipelines (the
//! x4 upscaler, depth-to-image, unCLIP) are refused by name. Inpainting checkpoints (9 input channels)
//! are read like any other. The configs come from the shapes ([`super::shapes`]) or from a config
//! folder.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use lcm_core::{Backend, Error, Result, SafeTensorsFile};
use serde_json::Value;

use super::ldm::{
    UnetLayout, CLIP_PREFIX, SD2_OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX,
};
use super::mapped::{check_tensor, mapped_source, open_safetensors, upload_mapped, FileKey};
use super::open_clip::open_clip_key;
use super::shapes::{self, UnetHeads, View};
use super::vae_file::{VaeLayout, VaePart, VAE_FILE_PREFIXES};
use super::weights::WeightHook;
use crate::arch::clip::{ClipConfig, ClipOutput, ClipTextModel};
use crate::arch::unet::{Unet, UnetConfig};
use crate::arch::vae::{Vae, VaeConfig, VaeParts};
use crate::runner::Runner;

/// The DDPM schedule buffers LatentDiffusion registers; SD1.5 checkpoints store them at the top level.
/// lcm takes the schedule from the scheduler config instead.
pub const SCHEDULE_BUFFERS: [&str; 12] = [
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "betas",
    "log_one_minus_alphas_cumprod",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "posterior_variance",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
];

/// Why a key that is no weight lcm loads may be in a checkpoint, or `None` for an unknown key. The
/// whole list:
/// - `model_ema.*`: EMA copies of the UNet and their bookkeeping (`decay`, `num_updates`);
/// - `cond_stage_model.transformer.[text_model.]embeddings.position_ids`: 0..76, regenerated (merges
///   store them as floats, sometimes no longer exact);
/// - OpenCLIP's `logit_scale` (SD2's and SDXL's), and SD2's `text_projection` (SD2 conditions on
///   hidden states, not on the projected embedding);
/// - the twelve [`SCHEDULE_BUFFERS`] (`betas`, `alphas_cumprod`, …).
///
/// (An SD2 file's last OpenCLIP layer is expected too, by [`Checkpoint::check`]: it depends on the config.)
pub fn known_extra(key: &str) -> Option<&'static str> {
    if key.starts_with("model_ema.") {
        return Some("EMA weights and bookkeeping");
    }
    let text_encoder = key.starts_with(CLIP_PREFIX) || key.starts_with(SDXL_CLIP_PREFIX);
    if text_encoder && key.ends_with("embeddings.position_ids") {
        return Some("text-encoder position ids (regenerated)");
    }
    if key == format!("{SDXL_OPEN_CLIP_PREFIX}logit_scale") || key == format!("{SD2_OPEN_CLIP_PREFIX}logit_scale") {
        return Some("OpenCLIP's contrastive temperature (no weight of the text tower)");
    }
    if key == format!("{SD2_OPEN_CLIP_PREFIX}text_projection") {
        return Some("OpenCLIP's text projection (SD2 conditions on the hidden states)");
    }
    SCHEDULE_BUFFERS.contains(&key).then_some("DDPM schedule buffer (the scheduler config gives the schedule)")
}

/// A text-encoder weight's key in the file: `text_model.…` under the file's CLIP prefix.
fn clip_key(prefix: &str, name: &str) -> Option<String> {
    name.strip_prefix("text_model.").map(|rest| format!("{prefix}{rest}"))
}

/// The model family a checkpoint's text encoders say it is (the UNets look alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD1.5 and its fine-tunes (inpainting too): CLIP-L at `cond_stage_model.transformer.`.
    Sd15,
    /// SD2.x (2.0, 2.1, their 512 and 768 models, SD-Turbo, SD2 inpainting): OpenCLIP-H at
    /// `cond_stage_model.model.`, whose last layer the model does not use — LDM conditions on the
    /// penultimate layer's states through `ln_final`, so diffusers' text encoder (and lcm's) has one
    /// layer fewer (23 of OpenCLIP-H's 24). Which prediction type it was trained for is not in the
    /// file.
    Sd2,
    /// SDXL: CLIP-L and OpenCLIP-bigG at `conditioner.embedders.{0,1}.`.
    Sdxl,
}

/// Where a text encoder's weights are in the file, and under which names.
#[derive(Debug, Clone)]
enum Tower {
    /// transformers' CLIP names (`text_model.` left out) after this prefix.
    Clip(String),
    /// OpenCLIP's names after this prefix ([`super::open_clip`]).
    OpenClip(String),
}

impl Tower {
    fn key(&self, name: &str) -> Option<FileKey> {
        match self {
            Tower::Clip(prefix) => clip_key(prefix, name).map(FileKey::whole),
            Tower::OpenClip(prefix) => open_clip_key(prefix, name),
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Tower::Clip(p) | Tower::OpenClip(p) => p,
        }
    }
}

/// A single-file SD1.5-family, SD2 or SDXL checkpoint, memory-mapped (shared with the models loaded
/// from it, which read their weights again from it on a LoRA swap).
pub struct Checkpoint {
    file: Arc<SafeTensorsFile>,
    family: Family,
    /// The text encoders: SD1.5's CLIP-L under `cond_stage_model.transformer.[text_model.]`, SD2's
    /// OpenCLIP-H, or SDXL's two.
    towers: Vec<Tower>,
    vae: Option<(VaeLayout, usize)>,
}

impl Checkpoint {
    /// Opens `path` and checks it is an SD1.5-family, SD2 or SDXL checkpoint: files that are no full
    /// checkpoint (a LoRA, a VAE, a diffusers component) and SD2's variants for other pipelines are
    /// refused by name.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = open_safetensors(path)?;
        let any = |prefix: &str| file.names().any(|k| k.starts_with(prefix));
        if let Some(why) = other_sd2_pipeline(&file) {
            return Err(Error::file(path, why));
        }
        let family = if any("conditioner.embedders.") {
            Family::Sdxl
        } else if any(SD2_OPEN_CLIP_PREFIX) {
            Family::Sd2
        } else {
            Family::Sd15
        };
        if !any(UNET_PREFIX) {
            return Err(Error::file(path, not_a_checkpoint(&file)));
        }
        let open_clip = |prefix: &str, what: &str| {
            let key = format!("{prefix}token_embedding.weight");
            match file.contains(&key) {
                true => Ok(Tower::OpenClip(prefix.to_string())),
                false => Err(Error::file(path, format!("{what} (`{key}`)"))),
            }
        };
        let towers = match family {
            Family::Sd15 => vec![Tower::Clip(clip_prefix(&file, CLIP_PREFIX)?)],
            Family::Sd2 => vec![open_clip(
                SD2_OPEN_CLIP_PREFIX,
                "is an SD2-style checkpoint (`cond_stage_model.model.…`) without its OpenCLIP token embedding",
            )?],
            Family::Sdxl => {
                // The second encoder first: without it, this is the refiner, refused as such.
                let open_clip = open_clip(
                    SDXL_OPEN_CLIP_PREFIX,
                    "is an SDXL-style checkpoint (`conditioner.embedders.…`) without its second text encoder; the \
                     SDXL refiner (OpenCLIP alone) is not supported",
                )?;
                vec![Tower::Clip(clip_prefix(&file, SDXL_CLIP_PREFIX)?), open_clip]
            }
        };
        let vae = VaeLayout::detect(&file, &[VAE_PREFIX]).map(|l| {
            let levels = l.levels(&file);
            (l, levels)
        });
        Ok(Checkpoint { file: Arc::new(file), family, towers, vae })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Whether the file holds its VAE (`first_stage_model.…`); without one, a separate VAE is needed.
    pub fn has_vae(&self) -> bool {
        self.vae.is_some()
    }

    fn unet_key(layout: &UnetLayout, name: &str) -> String {
        match layout.to_ldm(name) {
            Some(ldm) => format!("{UNET_PREFIX}{ldm}"),
            None => format!("{UNET_PREFIX}{name}"), // time_embedding.cond_proj: no LDM name
        }
    }

    /// The family its text encoders say it is.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The UNet's input channels, from `conv_in`'s shape (4; 9 for inpainting), without reading the
    /// rest of its architecture; `None` when the file lacks it (the full check names it).
    pub fn unet_in_channels(&self) -> Option<usize> {
        let shape = self.file.shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))?;
        shape.get(1).copied()
    }

    /// Whether this is an SDXL checkpoint (two text encoders, `conditioner.embedders.…`).
    pub fn is_sdxl(&self) -> bool {
        self.family == Family::Sdxl
    }

    fn vae_part(&self) -> Option<VaePart<'_>> {
        self.vae.as_ref().map(|(layout, levels)| VaePart { file: &self.file, layout, levels: *levels })
    }

    /// The UNet's config read from the shapes, as diffusers would write it (SDXL's added embedding
    /// with the pooled width of the second text encoder's projection).
    pub fn infer_unet(&self) -> Result<UnetConfig> {
        let pooled = match self.is_sdxl() {
            true => self.text_encoder_2_json()?["projection_dim"].as_u64().map(|p| p as usize),
            false => None,
        };
        let key = |n: &str| Some(format!("{UNET_PREFIX}{n}"));
        let heads = if self.family == Family::Sd2 { UnetHeads::Sd2 } else { UnetHeads::Sd15 };
        let view = View { file: &*self.file, key: &key, what: "the UNet" };
        let json = shapes::unet::unet_config(&view, pooled, heads)?;
        UnetConfig::parse_value(self.path(), json)
    }

    /// SDXL's second text encoder's config as transformers would write it, read from its OpenCLIP
    /// shapes; an error for a file with one text encoder.
    fn text_encoder_2_json(&self) -> Result<Value> {
        let prefix = match self.towers.get(1) {
            Some(tower) => tower.prefix(),
            None => return Err(self.one_text_encoder()),
        };
        let key = |n: &str| Some(format!("{prefix}{n}"));
        shapes::open_clip_config(&View { file: &*self.file, key: &key, what: "the second text encoder" })
    }

    /// SDXL's second text encoder's config read from its OpenCLIP shapes, with `clip_skip`; an error
    /// for a file with one text encoder.
    pub fn infer_text_encoder_2(&self, clip_skip: usize) -> Result<ClipConfig> {
        ClipConfig::parse_value(self.path(), self.text_encoder_2_json()?, clip_skip)
    }

    /// The text encoder's config read from the shapes, with `clip_skip`: CLIP-L's names (SD1.5, SDXL's
    /// first), or SD2's OpenCLIP-H without the last layer ([`Family::Sd2`]).
    pub fn infer_text_encoder(&self, clip_skip: usize) -> Result<ClipConfig> {
        let json = match &self.towers[0] {
            Tower::Clip(prefix) => {
                let key = |n: &str| clip_key(prefix, n);
                shapes::clip_config(&View { file: &*self.file, key: &key, what: "the text encoder" })?
            }
            Tower::OpenClip(prefix) => {
                let key = |n: &str| Some(format!("{prefix}{n}"));
                shapes::sd2_text_config(&View { file: &*self.file, key: &key, what: "the text encoder" })?
            }
        };
        ClipConfig::parse_value(self.path(), json, clip_skip)
    }

    fn one_text_encoder(&self) -> Error {
        let kind = if self.family == Family::Sd2 { "an SD2" } else { "an SD1.5-family" };
        Error::file(self.path(), format!("has one text encoder ({kind} checkpoint)"))
    }

    /// The VAE's config from its shapes, with the latent space's scaling (and shift) factor; `None`
    /// when the file has no VAE.
    pub fn infer_vae(&self, scaling_factor: f32, shift_factor: Option<f32>) -> Result<Option<VaeConfig>> {
        self.vae_part().map(|v| v.config(scaling_factor, shift_factor)).transpose()
    }

    /// Checks the file against the configs before anything is loaded: every weight the models need
    /// is present with its shape, and every key of the file is one of them or a known extra. `clip_2`
    /// is SDXL's second text encoder (required for an SDXL file). `vae` is the config of the file's
    /// own VAE (needed when it has one, even if another is used).
    pub fn check(
        &self,
        unet: &UnetConfig,
        clip: &ClipConfig,
        clip_2: Option<&ClipConfig>,
        vae: Option<&VaeConfig>,
    ) -> Result<()> {
        let mut expected: HashSet<String> = HashSet::new();
        let layout = UnetLayout::from_config(unet);
        for spec in unet.weights()? {
            let key = FileKey::whole(Self::unet_key(&layout, &spec.name));
            check_tensor(&self.file, &key, &spec, "the UNet")?;
            expected.insert(key.key);
        }
        self.check_text_encoders(clip, clip_2, &mut expected)?;
        if let (Some(part), Some(config)) = (self.vae_part(), vae) {
            for spec in config.decoder_weights()? {
                let key = part.key(&spec.name).expect("decoder weights have LDM names");
                check_tensor(&self.file, &FileKey::whole(key), &spec, "the VAE")?;
            }
            expected.extend(part.keys(config)?);
        }
        let unknown: Vec<&str> =
            self.file.names().filter(|k| !expected.contains(*k) && known_extra(k).is_none()).collect();
        match unknown.as_slice() {
            [] => Ok(()),
            [first, rest @ ..] => Err(Error::tensor(
                self.path(),
                *first,
                format!(
                    "is not a weight of this checkpoint's UNet (`{UNET_PREFIX}…`), VAE (`{VAE_PREFIX}…`) or text \
                     encoder(s) (`{}`) as their configs describe them, nor a known extra (model_ema.*, \
                     position_ids, DDPM schedule buffers){}",
                    self.towers.iter().map(Tower::prefix).collect::<Vec<_>>().join("`, `"),
                    if rest.is_empty() { String::new() } else { format!("; {} more unknown keys", rest.len()) }
                ),
            )),
        }
    }

    /// [`Self::check`]'s part for the text encoders: every weight of each (whatever clip_skip leaves out:
    /// the file holds them) present with its shape, and added to `expected` with, for SD2, the file's
    /// last OpenCLIP layer, which the model does not use ([`Family::Sd2`]).
    fn check_text_encoders(
        &self,
        clip: &ClipConfig,
        clip_2: Option<&ClipConfig>,
        expected: &mut HashSet<String>,
    ) -> Result<()> {
        if self.is_sdxl() != clip_2.is_some() {
            let (kind, configs) = match self.family {
                Family::Sdxl => ("an SDXL", "one"),
                Family::Sd2 => ("an SD2", "two"),
                Family::Sd15 => ("an SD1.5-family", "two"),
            };
            return Err(Error::file(
                self.path(),
                format!("is {kind} checkpoint, checked against {configs} text encoder config(s)"),
            ));
        }
        let encoders = [(Some(clip), "the text encoder"), (clip_2, "the second text encoder")];
        for (i, (config, what)) in encoders.into_iter().enumerate() {
            let Some(config) = config else { continue };
            let full = ClipConfig { clip_skip: 0, output: ClipOutput::FinalNorm, ..config.clone() };
            let mut specs = full.weights()?;
            if config.projection_dim.is_some() {
                specs.extend(config.clone().with_output(ClipOutput::Penultimate).weights()?);
            }
            for spec in specs {
                let key = self.text_encoder_key(i, &spec.name).ok_or_else(|| {
                    Error::tensor(self.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
                })?;
                check_tensor(&self.file, &key, &spec, what)?;
                expected.insert(key.key);
            }
        }
        if self.family == Family::Sd2 {
            let unused = format!("{SD2_OPEN_CLIP_PREFIX}transformer.resblocks.{}.", clip.layers);
            expected.extend(self.file.names().filter(|k| k.starts_with(&unused)).map(str::to_string));
        }
        Ok(())
    }

    /// The UNet, its weights through `hook` (LoRA merging) as they load; a LoRA swap reads them
    /// again from this file.
    pub fn load_unet<B: Backend>(&self, backend: &B, config: UnetConfig, hook: Option<WeightHook>) -> Result<Unet<B>> {
        let layout = UnetLayout::from_config(&config);
        let key = move |n: &str| Some(FileKey::whole(Self::unet_key(&layout, n)));
        let mut weights = upload_mapped(backend, &self.file, &config.weights()?, &key, "the UNet", hook)?;
        weights.source = Some(mapped_source(self.file.clone(), key, "the UNet"));
        Ok(Unet { config, runner: Runner::new(weights) })
    }

    /// Where text encoder `index` (0; SDXL's second is 1) keeps weight `name` in this file.
    fn text_encoder_key(&self, index: usize, name: &str) -> Option<FileKey> {
        self.towers.get(index)?.key(name)
    }

    /// The text encoder, its weights through `hook` (LoRA merging) as they load; a LoRA swap reads
    /// them again from this file.
    pub fn load_text_encoder<B: Backend>(
        &self,
        backend: &B,
        config: ClipConfig,
        hook: Option<WeightHook>,
    ) -> Result<ClipTextModel<B>> {
        self.load_encoder(backend, 0, config, hook)
    }

    /// SDXL's second text encoder (OpenCLIP in the file, built as a CLIPTextModelWithProjection);
    /// an error for a file with one text encoder.
    pub fn load_text_encoder_2<B: Backend>(
        &self,
        backend: &B,
        config: ClipConfig,
        hook: Option<WeightHook>,
    ) -> Result<ClipTextModel<B>> {
        if !self.is_sdxl() {
            return Err(self.one_text_encoder());
        }
        self.load_encoder(backend, 1, config, hook)
    }

    fn load_encoder<B: Backend>(
        &self,
        backend: &B,
        index: usize,
        config: ClipConfig,
        hook: Option<WeightHook>,
    ) -> Result<ClipTextModel<B>> {
        let tower = self.towers[index].clone();
        let key = move |n: &str| tower.key(n);
        let what = ["the text encoder", "the second text encoder"][index];
        let mut weights = upload_mapped(backend, &self.file, &config.weights()?, &key, what, hook)?;
        weights.source = Some(mapped_source(self.file.clone(), key, what));
        Ok(ClipTextModel { config, runner: Runner::new(weights) })
    }

    /// The file's own VAE; an error when it has none.
    pub fn load_vae<B: Backend>(&self, backend: &B, config: VaeConfig, parts: VaeParts) -> Result<Vae<B>> {
        let part = self.vae_part().ok_or_else(|| {
            Error::file(self.path(), format!("has no VAE (`{VAE_PREFIX}…`); give a separate VAE (--vae FILE|DIR)"))
        })?;
        part.load(backend, config, parts)
    }
}

/// What a file without `model.diffusion_model.` keys looks like, for the refusal.
fn not_a_checkpoint(file: &SafeTensorsFile) -> String {
    let names: Vec<&str> = file.names().collect();
    let has = |needle: &str| names.iter().any(|k| k.contains(needle));
    let hint = if has("lora_down") || has("lora_A") || names.iter().any(|k| k.starts_with("lora_")) {
        "it looks like a LoRA: pass it with --lora"
    } else if VaeLayout::detect(file, &VAE_FILE_PREFIXES).is_some() {
        "it looks like a VAE alone: pass it with --vae"
    } else if has("down_blocks.0.resnets.0.conv1.weight") {
        "it looks like a diffusers UNet file: pass the diffusers folder it belongs to"
    } else if has("embeddings.token_embedding.weight") {
        "it looks like a text encoder alone"
    } else {
        "it is none of the kinds lcm knows"
    };
    let first = names.first().copied().unwrap_or("(no tensors)");
    format!(
        "is not an SD1.5-family, SD2 or SDXL checkpoint: none of its {} tensors is named `{UNET_PREFIX}…` \
         (first: `{first}`); {hint}",
        names.len()
    )
}

/// The CLIP prefix of a file's text encoder under `root`: with the `text_model.` level or without.
fn clip_prefix(file: &SafeTensorsFile, root: &str) -> Result<String> {
    ["text_model.", ""]
        .iter()
        .map(|level| format!("{root}{level}"))
        .find(|p| file.contains(&format!("{p}embeddings.token_embedding.weight")))
        .ok_or_else(|| {
            Error::file(
                file.path(),
                format!(
                    "has a UNet (`{UNET_PREFIX}…`) but no CLIP text encoder (`{root}[text_model.]embeddings.\
                 token_embedding.weight`); a full checkpoint holds both"
                ),
            )
        })
}

/// Why a file is an SD2 checkpoint of a pipeline lcm does not run, by what only it holds: the x4
/// upscaler (`low_scale_model.…`, its noise-level schedule; diffusers tells it by a UNet resnet that
/// changes width at `input_blocks.10`), depth-to-image (`depth_model.…`, MiDaS) or unCLIP
/// (`embedder.…`, a CLIP image encoder, and `noise_augmentor.…`). `None` for any other file.
fn other_sd2_pipeline(file: &SafeTensorsFile) -> Option<String> {
    let any = |prefix: &str| file.names().any(|k| k.starts_with(prefix));
    let upscaler_resnet = format!("{UNET_PREFIX}input_blocks.10.0.skip_connection.bias");
    let (what, evidence, pipeline) = if any("low_scale_model.") || file.contains(&upscaler_resnet) {
        ("the Stable Diffusion x4 upscaler", "`low_scale_model.…`, a 7-channel UNet", "StableDiffusionUpscalePipeline")
    } else if any("depth_model.") {
        (
            "Stable Diffusion 2 depth-to-image",
            "`depth_model.…` (MiDaS), a 5-channel UNet",
            "StableDiffusionDepth2ImgPipeline",
        )
    } else if any("embedder.") || any("noise_augmentor.") {
        ("Stable unCLIP", "`embedder.…` (a CLIP image encoder), `noise_augmentor.…`", "StableUnCLIPImg2ImgPipeline")
    } else {
        return None;
    };
    Some(format!(
        "is a {what} checkpoint ({evidence}): it runs diffusers' {pipeline}, which lcm does not; lcm runs SD1.5, \
         SD2.x text-to-image (2.0, 2.1, SD-Turbo, their inpainting models) and SDXL checkpoints"
    ))
}
