//! Single-file checkpoints as A1111, ComfyUI and civitai ship them: one `.safetensors` with the
//! original Stable Diffusion (LDM) key names —
//! - `model.diffusion_model.…`: the UNet, named as [`crate::ldm::UnetLayout`] maps them; a full LCM
//!   keeps diffusers' name for its guidance projection, `model.diffusion_model.time_embedding.cond_proj`
//!   (LDM has none, and diffusers' `convert_diffusers_to_original_stable_diffusion.py` leaves unmapped
//!   keys as they are);
//! - `first_stage_model.…`: the VAE ([`crate::ldm::vae_to_ldm`]; its mid-block attention as 1x1 convs);
//! - `cond_stage_model.transformer.…`: CLIP-L with HF names, with or without the `text_model.` level.
//!
//! Every key must be accounted for: a weight of one of the three models, or one of the known extras
//! ([`known_extra`]). Anything else is an error naming the key, so a checkpoint of another kind (SD2,
//! SDXL, inpainting, a LoRA, a bare VAE) is refused instead of half-loaded. Separately distributed
//! VAEs ([`VaeFile`]) come in LDM names (with or without `first_stage_model.` / `vae.`) or diffusers
//! names.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use lcm_core::{Backend, Error, ModelWeights, Result, SafeTensorsFile, WeightSpec};
use serde_json::Value;

use crate::clip::{ClipConfig, ClipOutput, ClipTextModel};
use crate::config::Config;
use crate::infer::{self, View};
use crate::ldm::{vae_ldm_is_conv, vae_to_ldm, UnetLayout};
use crate::loader::{is_pickle, pickle_refusal, upload_weights, WeightHook};
use crate::open_clip::{open_clip_key, FileKey, Take};
use crate::runner::Runner;
use crate::unet::{Unet, UnetConfig};
use crate::vae::{Vae, VaeConfig, VaeOrigin, VaeParts};

/// Key prefix of the UNet's weights (LDM names follow).
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Key prefix of the VAE's weights (LDM names follow).
pub const VAE_PREFIX: &str = "first_stage_model.";
/// Key prefix of the CLIP-L text encoder's weights (HF names follow, with or without `text_model.`).
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// SDXL: the key prefix of its first text encoder (CLIP-L, HF names as [`CLIP_PREFIX`]).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// SDXL: the key prefix of its second text encoder (OpenCLIP names, see [`crate::open_clip`]).
pub const SDXL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

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
/// - the twelve [`SCHEDULE_BUFFERS`] (`betas`, `alphas_cumprod`, …).
pub fn known_extra(key: &str) -> Option<&'static str> {
    if key.starts_with("model_ema.") {
        return Some("EMA weights and bookkeeping");
    }
    let text_encoder = key.starts_with(CLIP_PREFIX) || key.starts_with(SDXL_CLIP_PREFIX);
    if text_encoder && key.ends_with("embeddings.position_ids") {
        return Some("text-encoder position ids (regenerated)");
    }
    if key == format!("{SDXL_OPEN_CLIP_PREFIX}logit_scale") {
        return Some("OpenCLIP's contrastive temperature (no weight of the text tower)");
    }
    SCHEDULE_BUFFERS.contains(&key).then_some("DDPM schedule buffer (the scheduler config gives the schedule)")
}

/// Extras a separately distributed VAE file may hold: EMA bookkeeping, and the training loss's
/// weights (`loss.*`: LPIPS and the discriminator of LDM's autoencoder training).
fn vae_file_extra(key: &str) -> bool {
    key.starts_with("model_ema.") || key.starts_with("loss.")
}

fn open_safetensors(path: &Path) -> Result<SafeTensorsFile> {
    if !path.is_file() {
        return Err(Error::file(path, "not found (expected a .safetensors file)"));
    }
    if is_pickle(path) {
        return Err(pickle_refusal(path));
    }
    SafeTensorsFile::open(path)
}

/// How a VAE's weights are named in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeLayout {
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
    fn detect(file: &SafeTensorsFile, prefixes: &[&str]) -> Option<VaeLayout> {
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
    pub fn prefix(&self) -> &str {
        match self {
            VaeLayout::Ldm { prefix } | VaeLayout::Diffusers { prefix } => prefix,
        }
    }

    /// Blocks, counted in the file's own names (LDM numbers the decoder from the bottom, so the
    /// mapping needs this count first).
    fn levels(&self, file: &SafeTensorsFile) -> usize {
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
struct VaePart<'a> {
    file: &'a SafeTensorsFile,
    layout: &'a VaeLayout,
    levels: usize,
}

impl VaePart<'_> {
    fn key(&self, name: &str) -> Option<String> {
        self.layout.key(name, self.levels)
    }

    fn config(&self, scaling_factor: f32, shift_factor: Option<f32>) -> Result<VaeConfig> {
        let key = |n: &str| self.key(n);
        let view = View { file: self.file, key: &key, what: "the VAE" };
        let json = infer::vae_config(&view, self.levels, scaling_factor, shift_factor)?;
        VaeConfig::parse_value(self.file.path(), json)
    }

    /// Every key of this VAE (decoder and encoder) under `config`.
    fn keys(&self, config: &VaeConfig) -> Result<Vec<String>> {
        let s = config.downscale();
        let specs = config.decoder_graph(1, 1, 1)?.weights.into_iter().chain(config.encoder_graph(1, s, s)?.weights);
        Ok(specs.filter_map(|spec| self.key(&spec.name)).collect())
    }

    fn load<B: Backend>(&self, backend: &B, config: VaeConfig, parts: VaeParts) -> Result<Vae<B>> {
        let key = |n: &str| self.key(n).map(FileKey::whole);
        let dec = config.decoder_graph(1, 1, 1)?.weights;
        let decoder = Runner::new(upload_mapped(backend, self.file, &dec, &key, "the VAE", None)?);
        let origin = Some(VaeOrigin::File(self.file.path().to_path_buf(), self.layout.clone()));
        let mut vae = Vae { config, decoder, encoder: None, origin };
        if parts == VaeParts::Both {
            vae.encoder = Some(Runner::new(self.load_encoder(backend, &vae.config)?));
        }
        Ok(vae)
    }

    fn load_encoder<B: Backend>(&self, backend: &B, config: &VaeConfig) -> Result<ModelWeights<B>> {
        let key = |n: &str| self.key(n).map(FileKey::whole);
        let s = config.downscale();
        upload_mapped(backend, self.file, &config.encoder_graph(1, s, s)?.weights, &key, "the VAE encoder", None)
    }
}

/// Loads the encoder of a VAE read from a file (for img2img after a decoder-only load).
pub(crate) fn load_vae_encoder<B: Backend>(
    backend: &B,
    path: &Path,
    layout: &VaeLayout,
    config: &VaeConfig,
) -> Result<ModelWeights<B>> {
    let file = SafeTensorsFile::open(path)?;
    let part = VaePart { file: &file, layout, levels: layout.levels(&file) };
    part.load_encoder(backend, config)
}

/// Reads `spec` from `file` as `key`: present, a float type, and shaped as the graph needs (an LDM
/// VAE attention projection may be the 1x1 conv it is in the file).
fn fetch(file: &SafeTensorsFile, key: &FileKey, spec: &WeightSpec, what: &str, buf: &mut Vec<f32>) -> Result<()> {
    check_tensor(file, key, spec, what)?;
    let t = file.get(&key.key)?;
    t.to_f32_into(buf);
    key.extract(buf, t.shape);
    Ok(())
}

fn check_tensor(file: &SafeTensorsFile, key: &FileKey, spec: &WeightSpec, what: &str) -> Result<()> {
    let k = key.key.as_str();
    let Some(shape) = file.shape(k) else {
        let msg = format!("missing ({what}'s `{}`, shape {:?})", spec.name, spec.shape);
        return Err(Error::tensor(file.path(), k, msg));
    };
    let want = key.file_shape(&spec.shape);
    let conv_1x1 = vae_ldm_is_conv(k) && shape.len() == 4 && shape[..2] == spec.shape[..] && shape[2..] == [1, 1];
    if shape != want.as_ref() && !conv_1x1 {
        let part = match key.take {
            Take::All => String::new(),
            Take::Third(i) => format!(", whose rows stack q, k and v: part {i} of 3"),
            Take::Transposed => ", stored transposed".to_string(),
        };
        let msg = format!("has shape {shape:?}, expected {want:?} ({what}'s `{}` {:?}{part})", spec.name, spec.shape);
        return Err(Error::tensor(file.path(), k, msg));
    }
    Ok(())
}

fn upload_mapped<B: Backend>(
    backend: &B,
    file: &SafeTensorsFile,
    specs: &[WeightSpec],
    key: &dyn Fn(&str) -> Option<FileKey>,
    what: &str,
    hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut source = |spec: &WeightSpec, buf: &mut Vec<f32>| {
        let k = key(&spec.name).ok_or_else(|| {
            Error::tensor(file.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
        })?;
        fetch(file, &k, spec, what, buf)
    };
    upload_weights(backend, specs, file.path(), &mut source, hook)
}

/// A text-encoder weight's key in the file: `text_model.…` under the file's CLIP prefix.
fn clip_key(prefix: &str, name: &str) -> Option<String> {
    name.strip_prefix("text_model.").map(|rest| format!("{prefix}{rest}"))
}

/// Text encoder `index`'s weight `name`: CLIP-L's under `clip_prefix`, or SDXL's OpenCLIP one.
fn text_encoder_key(clip_prefix: &str, open_clip: Option<&str>, index: usize, name: &str) -> Option<FileKey> {
    match (index, open_clip) {
        (0, _) => clip_key(clip_prefix, name).map(FileKey::whole),
        (_, Some(p)) => open_clip_key(p, name),
        (_, None) => None,
    }
}

/// Reads weights from a mapped file again (a LoRA swap's pristine values), names mapped by `key`.
fn mapped_source(
    file: Arc<SafeTensorsFile>,
    key: impl Fn(&str) -> Option<FileKey> + Send + 'static,
    what: &'static str,
) -> lcm_core::WeightSource {
    Box::new(move |spec: &WeightSpec, buf: &mut Vec<f32>| {
        let k = key(&spec.name).ok_or_else(|| {
            Error::tensor(file.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
        })?;
        fetch(&file, &k, spec, what, buf)
    })
}

/// A single-file SD1.5-family or SDXL checkpoint, memory-mapped (shared with the models loaded from
/// it, which read their weights again from it on a LoRA swap).
pub struct Checkpoint {
    file: Arc<SafeTensorsFile>,
    /// `cond_stage_model.transformer.` (SDXL: `conditioner.embedders.0.transformer.`) plus
    /// `text_model.` when the file has that level.
    clip_prefix: String,
    /// SDXL's second text encoder's prefix, [`SDXL_OPEN_CLIP_PREFIX`]; `None` for SD1.5.
    open_clip: Option<String>,
    vae: Option<(VaeLayout, usize)>,
}

impl Checkpoint {
    /// Opens `path` and checks it is an SD1.5-family or SDXL checkpoint: SD2.x, inpainting and files
    /// that are no full checkpoint (a LoRA, a VAE, a diffusers component) are refused by name.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let file = open_safetensors(path)?;
        let any = |prefix: &str| file.names().any(|k| k.starts_with(prefix));
        let sdxl = any("conditioner.embedders.");
        let (clip_root, open_clip) = if sdxl {
            if !file.contains(&format!("{SDXL_OPEN_CLIP_PREFIX}token_embedding.weight")) {
                return Err(Error::file(
                    path,
                    format!(
                        "is an SDXL-style checkpoint (`conditioner.embedders.…`) without its second text encoder \
                         (`{SDXL_OPEN_CLIP_PREFIX}token_embedding.weight`); the SDXL refiner (OpenCLIP alone) is not \
                         supported"
                    ),
                ));
            }
            (SDXL_CLIP_PREFIX, Some(SDXL_OPEN_CLIP_PREFIX.to_string()))
        } else {
            (CLIP_PREFIX, None)
        };
        if any("cond_stage_model.model.") {
            return Err(Error::file(
                path,
                "is a Stable Diffusion 2.x checkpoint (OpenCLIP text encoder `cond_stage_model.model.…`, usually \
                 v-prediction); lcm runs the SD1.5 family (CLIP-L text encoder `cond_stage_model.transformer.…`)",
            ));
        }
        if !any(UNET_PREFIX) {
            return Err(Error::file(path, not_a_checkpoint(&file)));
        }
        let clip_prefix = ["text_model.", ""]
            .iter()
            .map(|level| format!("{clip_root}{level}"))
            .find(|p| file.contains(&format!("{p}embeddings.token_embedding.weight")))
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!(
                        "has a UNet (`{UNET_PREFIX}…`) but no CLIP text encoder (`{clip_root}[text_model.]embeddings.\
                         token_embedding.weight`); a full checkpoint holds both"
                    ),
                )
            })?;
        let vae = VaeLayout::detect(&file, &[VAE_PREFIX]).map(|l| {
            let levels = l.levels(&file);
            (l, levels)
        });
        Ok(Checkpoint { file: Arc::new(file), clip_prefix, open_clip, vae })
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

    fn clip_key(&self, name: &str) -> Option<String> {
        clip_key(&self.clip_prefix, name)
    }

    /// Whether this is an SDXL checkpoint (two text encoders, `conditioner.embedders.…`).
    pub fn is_sdxl(&self) -> bool {
        self.open_clip.is_some()
    }

    fn vae_part(&self) -> Option<VaePart<'_>> {
        self.vae.as_ref().map(|(layout, levels)| VaePart { file: &self.file, layout, levels: *levels })
    }

    /// The UNet's config as diffusers would write it, read from the shapes (SDXL's added embedding
    /// with the pooled width of the second text encoder's projection).
    pub fn infer_unet_json(&self) -> Result<Value> {
        let pooled = match self.is_sdxl() {
            true => self.infer_text_encoder_2_json()?["projection_dim"].as_u64().map(|p| p as usize),
            false => None,
        };
        let key = |n: &str| Some(format!("{UNET_PREFIX}{n}"));
        infer::unet_config(&View { file: &*self.file, key: &key, what: "the UNet" }, pooled)
    }

    /// SDXL's second text encoder's config as transformers would write it, read from its OpenCLIP
    /// shapes; an error for an SD1.5 file.
    pub fn infer_text_encoder_2_json(&self) -> Result<Value> {
        let prefix = self
            .open_clip
            .as_deref()
            .ok_or_else(|| Error::file(self.path(), "has one text encoder (an SD1.5-family checkpoint)"))?;
        let key = |n: &str| Some(format!("{prefix}{n}"));
        infer::open_clip_config(&View { file: &*self.file, key: &key, what: "the second text encoder" })
    }

    /// [`Self::infer_text_encoder_2_json`], parsed with `clip_skip`.
    pub fn infer_text_encoder_2(&self, clip_skip: usize) -> Result<ClipConfig> {
        ClipConfig::parse_value(self.path(), self.infer_text_encoder_2_json()?, clip_skip)
    }

    /// [`Self::infer_unet_json`], parsed.
    pub fn infer_unet(&self) -> Result<UnetConfig> {
        UnetConfig::parse(&Config::from_value(self.path(), self.infer_unet_json()?))
    }

    /// The text encoder's config as transformers would write it, read from the shapes.
    pub fn infer_text_encoder_json(&self) -> Result<Value> {
        let key = |n: &str| self.clip_key(n);
        infer::clip_config(&View { file: &*self.file, key: &key, what: "the text encoder" })
    }

    /// [`Self::infer_text_encoder_json`], parsed with `clip_skip`.
    pub fn infer_text_encoder(&self, clip_skip: usize) -> Result<ClipConfig> {
        ClipConfig::parse_value(self.path(), self.infer_text_encoder_json()?, clip_skip)
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
        for spec in unet.graph(1, 8, 8, 1)?.weights {
            let key = FileKey::whole(Self::unet_key(&layout, &spec.name));
            check_tensor(&self.file, &key, &spec, "the UNet")?;
            expected.insert(key.key);
        }
        let encoders = [(Some(clip), "the text encoder"), (clip_2, "the second text encoder")];
        if self.is_sdxl() != clip_2.is_some() {
            let (kind, configs) = if self.is_sdxl() { ("an SDXL", "one") } else { ("an SD1.5-family", "two") };
            return Err(Error::file(
                self.path(),
                format!("is {kind} checkpoint, checked against {configs} text encoder config(s)"),
            ));
        }
        for (i, (config, what)) in encoders.into_iter().enumerate() {
            let Some(config) = config else { continue };
            // Every layer, whatever clip_skip leaves out (the file holds them).
            let full = ClipConfig { clip_skip: 0, output: ClipOutput::FinalNorm, ..config.clone() };
            let mut specs = full.graph(1, 1)?.weights;
            if config.projection_dim.is_some() {
                specs.extend(config.clone().with_output(ClipOutput::Penultimate).graph(1, 1)?.weights);
            }
            for spec in specs {
                let key = self.text_encoder_key(i, &spec.name).ok_or_else(|| {
                    Error::tensor(self.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
                })?;
                check_tensor(&self.file, &key, &spec, what)?;
                expected.insert(key.key);
            }
        }
        if let (Some(part), Some(config)) = (self.vae_part(), vae) {
            for spec in config.decoder_graph(1, 1, 1)?.weights {
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
                     encoder(s) (`{}`{}) as their configs describe them, nor a known extra (model_ema.*, \
                     position_ids, DDPM schedule buffers){}",
                    self.clip_prefix,
                    self.open_clip.as_deref().map_or(String::new(), |p| format!(", `{p}`")),
                    if rest.is_empty() { String::new() } else { format!("; {} more unknown keys", rest.len()) }
                ),
            )),
        }
    }

    /// The UNet, its weights through `hook` (LoRA merging) as they load; a LoRA swap reads them
    /// again from this file.
    pub fn load_unet<B: Backend>(&self, backend: &B, config: UnetConfig, hook: Option<WeightHook>) -> Result<Unet<B>> {
        let layout = UnetLayout::from_config(&config);
        let key = move |n: &str| Some(FileKey::whole(Self::unet_key(&layout, n)));
        let specs = config.graph(1, 8, 8, 1)?.weights;
        let mut weights = upload_mapped(backend, &self.file, &specs, &key, "the UNet", hook)?;
        weights.source = Some(mapped_source(self.file.clone(), key, "the UNet"));
        Ok(Unet { config, runner: Runner::new(weights) })
    }

    /// Where text encoder `index` (0; SDXL's second is 1) keeps weight `name` in this file.
    fn text_encoder_key(&self, index: usize, name: &str) -> Option<FileKey> {
        text_encoder_key(&self.clip_prefix, self.open_clip.as_deref(), index, name)
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
    /// an error for an SD1.5 file.
    pub fn load_text_encoder_2<B: Backend>(
        &self,
        backend: &B,
        config: ClipConfig,
        hook: Option<WeightHook>,
    ) -> Result<ClipTextModel<B>> {
        if !self.is_sdxl() {
            return Err(Error::file(self.path(), "has one text encoder (an SD1.5-family checkpoint)"));
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
        let (prefix, open_clip) = (self.clip_prefix.clone(), self.open_clip.clone());
        let key = move |n: &str| text_encoder_key(&prefix, open_clip.as_deref(), index, n);
        let what = ["the text encoder", "the second text encoder"][index];
        let specs = config.graph(1, 1)?.weights;
        let mut weights = upload_mapped(backend, &self.file, &specs, &key, what, hook)?;
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
    } else if VaeLayout::detect(file, &["first_stage_model.", "vae.", ""]).is_some() {
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
        "is neither an SD1.5-family nor an SDXL checkpoint: none of its {} tensors is named `{UNET_PREFIX}…` \
         (first: `{first}`); {hint}",
        names.len()
    )
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
        let layout = VaeLayout::detect(&file, &["first_stage_model.", "vae.", ""]).ok_or_else(|| {
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

    /// How the file names the VAE's weights.
    pub fn layout(&self) -> &VaeLayout {
        &self.layout
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
        for spec in config.decoder_graph(1, 1, 1)?.weights {
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
