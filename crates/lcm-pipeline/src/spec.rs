//! What to load and what to generate, checked before any model runs: [`LoadSpec`] (with its
//! [`LoraSpec`]s and [`LoraMode`]), [`Request`] (with an [`InitImage`] for img2img and [`ControlUnit`]s
//! for ControlNets) and the image-size
//! rule every front end applies ([`SizeRule`]).
//!
//! Errors about a field name it as the field is called here ([`Field`]: `width`, `steps`,
//! `guidance_scale`, …) in [`Error::Invalid`]'s `what`; the CLI, the server and the C API map these
//! names onto their own flags, JSON keys or struct members.

use std::fmt;
use std::path::PathBuf;

use lcm_core::lcm::Prediction;
use lcm_core::{Error, Result, Tensor};
use lcm_models::{VaeTiling, Variant};

use crate::prompt::PromptSyntax;
use crate::scheduler::SamplerOptions;

mod batch;
mod files;
pub use batch::BatchKey;

/// A field of [`LoadSpec`] or [`Request`] that an error can name: [`Error::Invalid`]'s `what` is
/// [`Field::name`], so a front end can tell its own name for it from [`Field::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// [`Request::width`].
    Width,
    /// [`Request::height`].
    Height,
    /// [`Request::steps`].
    Steps,
    /// [`Request::num_images`].
    NumImages,
    /// [`Request::guidance_scale`].
    GuidanceScale,
    /// [`InitImage::strength`].
    Strength,
    /// [`Request::init_image`] (its pixels).
    InitImage,
    /// [`InitImage::mask`]: the inpainting mask.
    Mask,
    /// [`LoadSpec::config_dir`].
    ConfigDir,
    /// [`LoadSpec::tokenizer_dir`].
    TokenizerDir,
    /// Tiled VAE decoding itself (`Pipeline::set_vae_tiling`), e.g. asked of a VAE that cannot tile.
    VaeTiling,
    /// The tile size given to `Pipeline::set_vae_tiling`.
    VaeTileSize,
    /// [`ControlUnit::model`]: a ControlNet that cannot be read or does not fit the model.
    ControlNet,
    /// [`ControlUnit::image`].
    ControlImage,
    /// [`ControlUnit::scale`].
    ControlScale,
    /// [`ControlUnit::start`] (and the window it opens with [`ControlUnit::end`]).
    ControlStart,
    /// [`ControlUnit::end`].
    ControlEnd,
    /// [`Request::sampler`]'s kind.
    Scheduler,
    /// [`SamplerOptions::eta`].
    Eta,
    /// [`SamplerOptions::timestep_spacing`].
    TimestepSpacing,
    /// [`LoadSpec::prediction_type`].
    PredictionType,
    /// [`Request::prompt`] (too long, say).
    Prompt,
    /// [`Request::negative_prompt`].
    NegativePrompt,
    /// [`Request::prompt_syntax`].
    PromptSyntax,
}

impl Field {
    /// Every field, for a front end's mapping table.
    pub const ALL: [Field; 24] = [
        Field::Width,
        Field::Height,
        Field::Steps,
        Field::NumImages,
        Field::GuidanceScale,
        Field::Strength,
        Field::InitImage,
        Field::Mask,
        Field::ConfigDir,
        Field::TokenizerDir,
        Field::VaeTiling,
        Field::VaeTileSize,
        Field::ControlNet,
        Field::ControlImage,
        Field::ControlScale,
        Field::ControlStart,
        Field::ControlEnd,
        Field::Scheduler,
        Field::Eta,
        Field::TimestepSpacing,
        Field::PredictionType,
        Field::Prompt,
        Field::NegativePrompt,
        Field::PromptSyntax,
    ];

    /// The field's name in the spec: `width`, `num_images`, `config_dir`, …
    pub fn name(self) -> &'static str {
        match self {
            Field::Width => "width",
            Field::Height => "height",
            Field::Steps => "steps",
            Field::NumImages => "num_images",
            Field::GuidanceScale => "guidance_scale",
            Field::Strength => "strength",
            Field::InitImage => "init_image",
            Field::Mask => "mask",
            Field::ConfigDir => "config_dir",
            Field::TokenizerDir => "tokenizer_dir",
            Field::VaeTiling => VaeTiling::FIELD,
            Field::VaeTileSize => VaeTiling::TILE_SIZE_FIELD,
            Field::ControlNet => "controlnet",
            Field::ControlImage => "control_image",
            Field::ControlScale => "controlnet_conditioning_scale",
            Field::ControlStart => "control_guidance_start",
            Field::ControlEnd => "control_guidance_end",
            Field::Scheduler => "scheduler",
            Field::Eta => "eta",
            Field::TimestepSpacing => "timestep_spacing",
            Field::PredictionType => "prediction_type",
            Field::Prompt => "prompt",
            Field::NegativePrompt => "negative_prompt",
            Field::PromptSyntax => "prompt_syntax",
        }
    }

    /// The field an [`Error::Invalid`] names, if it names one.
    pub fn of(error: &Error) -> Option<Field> {
        match error {
            Error::Invalid { what, .. } => Field::ALL.into_iter().find(|f| f.name() == what.as_str()),
            _ => None,
        }
    }

    /// [`Error::Invalid`] naming this field.
    pub fn invalid(self, msg: impl Into<String>) -> Error {
        Error::invalid(self.name(), msg)
    }
}

/// The image-size rule: each side a multiple of 8 (the VAE's downscale) from [`SizeRule::MIN`] up to a
/// maximum, [`SizeRule::DEFAULT_MAX`] unless a front end lowers it ([`SizeRule::up_to`]). Shown as
/// "a multiple of 8 in 64..=2048".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeRule {
    max: usize,
}

impl SizeRule {
    /// Every side is a multiple of this: the VAE's downscale, so the latents have whole pixels.
    pub const MULTIPLE: usize = 8;
    /// The smallest side accepted, in pixels.
    pub const MIN: usize = 64;
    /// The largest side accepted by default, in pixels.
    pub const DEFAULT_MAX: usize = 2048;

    /// The rule with the maximum `max`, which must itself be a side the default rule accepts (an error
    /// naming `what`, the front end's name for the setting, otherwise).
    pub fn up_to(what: &str, max: usize) -> Result<SizeRule> {
        SizeRule::default().check(what, max)?;
        Ok(SizeRule { max })
    }

    /// The largest side accepted.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether `side` pixels is a side this rule accepts.
    pub fn accepts(&self, side: usize) -> bool {
        side.is_multiple_of(Self::MULTIPLE) && (Self::MIN..=self.max).contains(&side)
    }

    /// `side`, or an [`Error::Invalid`] naming `what` that gives the side and what is accepted.
    pub fn check(&self, what: &str, side: usize) -> Result<usize> {
        if self.accepts(side) {
            return Ok(side);
        }
        Err(Error::invalid(what, format!("{side}: expected {self}")))
    }

    /// Checks both sides of an image, the error naming [`Field::Width`] or [`Field::Height`].
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        self.check(Field::Width.name(), width)?;
        self.check(Field::Height.name(), height)?;
        Ok(())
    }
}

impl Default for SizeRule {
    fn default() -> Self {
        SizeRule { max: Self::DEFAULT_MAX }
    }
}

impl fmt::Display for SizeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a multiple of {} in {}..={}", Self::MULTIPLE, Self::MIN, self.max)
    }
}

/// The most images one request may ask for (a bound before any buffer is sized by it; memory is the
/// real limit, and a batch this large at [`SizeRule::DEFAULT_MAX`] would not fit most machines).
pub const MAX_IMAGES: usize = 64;

/// A LoRA file and the scale it is applied with.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA's `.safetensors` file (kohya or peft names).
    pub path: PathBuf,
    /// s_user, multiplying the file's every delta (1: as trained).
    pub scale: f32,
}

impl LoraSpec {
    /// `FILE[:SCALE]`, as `--lora` and the Triton backend's `loras` parameter write it (default scale
    /// 1). The scale follows the last ':' only when it parses as a number, so paths with ':' still work.
    pub fn parse(s: &str) -> std::result::Result<LoraSpec, String> {
        let (path, scale) = match s.rsplit_once(':') {
            Some((p, sc)) if !p.is_empty() => match sc.parse::<f32>() {
                Ok(v) if v.is_finite() => (p, v),
                Ok(_) => return Err(format!("scale `{sc}` must be finite")),
                Err(_) => (s, 1.0),
            },
            _ => (s, 1.0),
        };
        Ok(LoraSpec { path: PathBuf::from(path), scale })
    }
}

/// How a pipeline applies LoRAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraMode {
    /// Merged into the weights (at load, and again from pristine weights on a swap): no cost per step.
    #[default]
    Merged,
    /// Unmerged on the UNet, from fixed buffers a swap copies into: swaps cost a copy (CUDA); each step
    /// pays two thin GEMMs per adapted layer. Backends without an unmerged path merge instead.
    Runtime,
}

/// The rank a runtime-mode pipeline's buffers hold when [`LoadSpec::max_lora_rank`] is not given:
/// LCM-LoRA's.
pub const DEFAULT_MAX_LORA_RANK: usize = 64;

/// How to load a model: a diffusers folder (SD1.5 or SDXL family), or a single-file checkpoint with
/// its configs read from the shapes or taken from `config_dir`, plus LoRAs and optionally a separate VAE.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec {
    /// A diffusers folder, or a single-file checkpoint (`.safetensors`, original SD / LDM key names).
    pub model_dir: PathBuf,
    /// The LoRAs to apply, together.
    pub loras: Vec<LoraSpec>,
    /// diffusers' `clip_skip`: 0 uses the text encoder's last layer.
    pub clip_skip: usize,
    /// Which weight file a diffusers folder's components are read from (`.fp16` or full precision).
    pub variant: Variant,
    /// For a single-file model: a diffusers folder whose `unet/`, `vae/`, `text_encoder/` configs,
    /// `tokenizer/` and `scheduler/` are used instead of what the shapes say and SD1.5's defaults, as
    /// diffusers' `from_single_file(config=…)`. Only configs are read from it, never weights.
    pub config_dir: Option<PathBuf>,
    /// A separate VAE instead of the model's: a diffusers VAE folder (or a model folder with `vae/`),
    /// or a file with LDM or diffusers names.
    pub vae: Option<PathBuf>,
    /// The tokenizer folder (`tokenizer.json`, or `vocab.json` + `merges.txt`) instead of the model's
    /// or `config_dir`'s. A single-file model without either gets CLIP's built-in tokenizer, padding as
    /// its family's (`ClipTokenizer::builtin`): nothing is downloaded.
    pub tokenizer_dir: Option<PathBuf>,
    /// Merged into the weights (default), or unmerged from fixed buffers a swap copies into
    /// (`Pipeline::set_loras`, `crate::lora_swap`).
    pub lora_mode: LoraMode,
    /// Runtime mode: the largest rank (summed over the LoRAs on one weight) the buffers hold; default
    /// [`DEFAULT_MAX_LORA_RANK`], or the load's LoRAs' if larger.
    pub max_lora_rank: Option<usize>,
    /// What the UNet predicts, for single files (whose files do not say; a bare SD2 file is taken for
    /// v-prediction as diffusers does): None keeps the scheduler config's. An error where the model's
    /// scheduler config says otherwise.
    pub prediction_type: Option<Prediction>,
    /// Textual-inversion embedding files, each with the token that calls it (None: the file's own,
    /// see `crate::embeddings`), added as diffusers' `load_textual_inversion` adds them. A file that
    /// cannot be read or does not fit the model is an error.
    pub embeddings: Vec<(PathBuf, Option<String>)>,
    /// A folder of embeddings read as A1111 reads its `embeddings/` (`crate::embeddings::scan_embeddings_dir`):
    /// each `*.safetensors` file triggered by its stem; files that cannot be loaded, or are for
    /// another model family, are skipped and listed (`TextEncoders::embeddings`).
    pub embeddings_dir: Option<PathBuf>,
}

/// img2img: the image to start from and how much of it to repaint; with a mask, inpainting (diffusers'
/// StableDiffusionInpaintPipeline / StableDiffusionXLInpaintPipeline): only the masked region is
/// repainted.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// `[1, 3, H, W]` in [-1, 1] (diffusers' preprocessing: u8/255·2−1).
    pub pixels: Tensor,
    /// In (0, 1]: 1 starts from noise, small values keep more of the image.
    pub strength: f32,
    /// Inpainting: `[1, 1, H, W]`, 1 where the image is repainted and 0 where it is kept
    /// ([`InitImage::with_mask_gray8`]).
    pub mask: Option<Tensor>,
}

impl InitImage {
    /// From 8-bit RGB pixels, row-major `[height, width, 3]`; `rgb` must hold exactly width·height
    /// pixels (an error names both sizes otherwise).
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8], strength: f32) -> Result<Self> {
        // diffusers' VaeImageProcessor: u8/255, then normalised to [-1, 1].
        let pixels = planar_rgb(Field::InitImage, width, height, rgb, |v| 2.0 * (v as f32 / 255.0) - 1.0)?;
        Ok(InitImage { pixels, strength, mask: None })
    }

    /// Inpainting: the mask from 8-bit gray values, row-major `[height, width]` (white = repaint), as
    /// diffusers' mask processor makes it: /255, binarised at 0.5 (128 and up repaint). It must have
    /// the image's size and mark at least one pixel.
    pub fn with_mask_gray8(mut self, width: usize, height: usize, gray: &[u8]) -> Result<Self> {
        let (h, w) = (self.pixels.shape[2], self.pixels.shape[3]);
        if (width, height) != (w, h) || gray.len() != width * height {
            return Err(Field::Mask.invalid(format!(
                "{width}x{height} ({} values) for a {w}x{h} image: the mask must have the image's size",
                gray.len()
            )));
        }
        let data: Vec<f32> = gray.iter().map(|&g| if g as f32 / 255.0 >= 0.5 { 1.0 } else { 0.0 }).collect();
        if data.iter().all(|&m| m == 0.0) {
            return Err(Field::Mask.invalid(
                "marks no pixel to repaint (white, 128 and up, is repainted; black is kept): the output would be \
                 the input",
            ));
        }
        self.mask = Some(Tensor::new(vec![1, 1, h, w], data));
        Ok(self)
    }

    /// Whether the whole image is repainted (a full mask: inpainting then starts from the masked image's
    /// latents alone, a 4-channel UNet keeps nothing of the image).
    pub fn mask_is_full(&self) -> bool {
        self.mask.as_ref().is_some_and(|m| m.data.iter().all(|&v| v == 1.0))
    }
}

/// The most ControlNets one request may apply together.
pub const MAX_CONTROLNETS: usize = 8;

/// One ControlNet applied to a request, as diffusers' ControlNet pipelines take it: the model, its
/// control image, `controlnet_conditioning_scale`, and the guidance window `control_guidance_start` /
/// `control_guidance_end` (fractions of the steps run: the ControlNet is active at step i of n unless
/// i/n < start or (i+1)/n > end). Several are summed (MultiControlNet).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlUnit {
    /// A ControlNet: a diffusers folder (`config.json` + `diffusion_pytorch_model[.fp16].safetensors`)
    /// or a single `.safetensors` file in the original (`control_model.*`) names. Loaded on first use
    /// and kept by the pipeline.
    pub model: PathBuf,
    /// The control image, `[1, 3, H, W]` in [0, 1] at the request's size (diffusers'
    /// `control_image_processor`: RGB/255, not normalised): [`ControlUnit::image_from_rgb8`].
    pub image: Tensor,
    /// `controlnet_conditioning_scale`: the residuals' weight (finite).
    pub scale: f32,
    /// `control_guidance_start`, in [0, 1) (f64: diffusers compares Python floats).
    pub start: f64,
    /// `control_guidance_end`, in (start, 1].
    pub end: f64,
}

impl ControlUnit {
    /// The default `controlnet_conditioning_scale` of diffusers' pipelines: 1.0 for text-to-image, 0.8
    /// for img2img (StableDiffusionControlNetImg2ImgPipeline).
    pub fn default_scale(img2img: bool) -> f32 {
        if img2img {
            0.8
        } else {
            1.0
        }
    }

    /// The control image from 8-bit RGB pixels, row-major `[height, width, 3]`, as `[1, 3, H, W]` in
    /// [0, 1]; `rgb` must hold exactly width·height pixels.
    pub fn image_from_rgb8(width: usize, height: usize, rgb: &[u8]) -> Result<Tensor> {
        planar_rgb(Field::ControlImage, width, height, rgb, |v| v as f32 / 255.0)
    }

    /// The control image from 8-bit RGB pixels (`[height, width, 3]`) at the output's size
    /// `out_width`x`out_height`: resized with Pillow's Lanczos filter when the sizes differ, as diffusers'
    /// `control_image_processor` resizes a PIL image.
    pub fn image_at(width: usize, height: usize, rgb: &[u8], out_width: usize, out_height: usize) -> Result<Tensor> {
        if (width, height) == (out_width, out_height) {
            return Self::image_from_rgb8(width, height, rgb);
        }
        let resized = crate::control_image::resize_lanczos_rgb8(rgb, width, height, out_width, out_height)
            .map_err(|e| Field::ControlImage.invalid(e.to_string()))?;
        Self::image_from_rgb8(out_width, out_height, &resized)
    }

    /// Whether the ControlNet runs at step `i` of the `n` a generation runs (diffusers' `controlnet_keep`).
    pub fn active_at(&self, i: usize, n: usize) -> bool {
        let (i, n) = (i as f64, n as f64);
        !(i / n < self.start || (i + 1.0) / n > self.end)
    }

    /// Checks the unit (the `k`-th of its request) for a `width`x`height` output.
    fn validate(&self, k: usize, width: usize, height: usize) -> Result<()> {
        let at =
            |f: Field, msg: String| Err(f.invalid(format!("ControlNet {} ({}): {msg}", k + 1, self.model.display())));
        if !self.scale.is_finite() {
            return at(Field::ControlScale, format!("{}: expected a finite number", self.scale));
        }
        if !(0.0..1.0).contains(&self.start) {
            return at(Field::ControlStart, format!("{}: expected a value in [0, 1)", self.start));
        }
        if !(self.end > self.start && self.end <= 1.0) {
            return at(
                Field::ControlEnd,
                format!("{}: expected a value in ({}, 1] (after the start)", self.end, self.start),
            );
        }
        if self.image.shape != [1, 3, height, width] {
            return at(
                Field::ControlImage,
                format!("pixels {:?} do not match the requested {width}x{height} (resize it first)", self.image.shape),
            );
        }
        Ok(())
    }
}

/// 8-bit RGB pixels, row-major `[height, width, 3]`, as a planar `[1, 3, H, W]` tensor of `f(value)`;
/// `rgb` must hold exactly width·height pixels (an error naming `field` and both sizes otherwise).
fn planar_rgb(field: Field, width: usize, height: usize, rgb: &[u8], f: impl Fn(u8) -> f32) -> Result<Tensor> {
    if rgb.len() != 3 * width * height || width == 0 || height == 0 {
        return Err(field.invalid(format!(
            "{} bytes of RGB for a {width}x{height} image (expected {})",
            rgb.len(),
            3 * width * height
        )));
    }
    let mut data = vec![0.0f32; 3 * width * height];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * width * height + p] = f(px[c]);
        }
    }
    Ok(Tensor::new(vec![1, 3, height, width], data))
}

/// What to generate. `validate` checks everything before any model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The text the image follows, read as [`Request::prompt_syntax`] says (plain: cut to the 75 tokens
    /// CLIP's 77 positions leave between bos and eos, as diffusers does).
    pub prompt: String,
    /// The uncond prompt of classic CFG (`None`: ""); unused without CFG.
    pub negative_prompt: Option<String>,
    /// Sampler steps (UNet calls), 1..=`Pipeline::max_steps`; SD img2img runs the last
    /// int(steps·strength) of them.
    pub steps: usize,
    /// A UNet with a guidance embedding gets w = guidance_scale − 1 embedded; any other UNet runs
    /// classic CFG when it is above 1 (1, LCM-LoRA's usual value, means no CFG).
    pub guidance_scale: f32,
    /// Seeds the torch-compatible generator as `torch.Generator("cpu").manual_seed(seed)` (its low
    /// 32 bits count).
    pub seed: u64,
    /// Image width in pixels, a side [`SizeRule::default`] accepts.
    pub width: usize,
    /// Image height in pixels, a side [`SizeRule::default`] accepts.
    pub height: usize,
    /// Images per generation (N), from one prompt and one generator stream.
    pub num_images: usize,
    /// img2img when given; the output then has the image's size (width/height must match it).
    pub init_image: Option<InitImage>,
    /// ControlNets guiding the generation (none: plain txt2img / img2img), at most [`MAX_CONTROLNETS`].
    pub controls: Vec<ControlUnit>,
    /// The sampler and its options; None: the pipeline's default (`Pipeline::set_sampler`, LCM unless
    /// changed).
    pub sampler: Option<SamplerOptions>,
    /// How the prompts are read: plain text as diffusers reads it (the default), or AUTOMATIC1111's
    /// syntax (weights, BREAK, long prompts; `crate::prompt`).
    pub prompt_syntax: PromptSyntax,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            prompt: String::new(),
            negative_prompt: None,
            steps: 4,
            guidance_scale: 1.0,
            seed: 0,
            width: 512,
            height: 512,
            num_images: 1,
            init_image: None,
            controls: Vec::new(),
            sampler: None,
            prompt_syntax: PromptSyntax::Plain,
        }
    }
}

impl Request {
    /// Checks the size ([`SizeRule::default`]), steps against `max_steps` (`Pipeline::max_steps`), the
    /// image count, the guidance scale and the init image; an error names the [`Field`] and what it
    /// accepts.
    pub fn validate(&self, max_steps: usize) -> Result<()> {
        SizeRule::default().check_size(self.width, self.height)?;
        if self.steps == 0 || self.steps > max_steps {
            return Err(Field::Steps.invalid(format!(
                "{}: expected 1..={max_steps} (the most the sampler takes with this model)",
                self.steps
            )));
        }
        if self.num_images == 0 || self.num_images > MAX_IMAGES {
            return Err(Field::NumImages.invalid(format!("{}: expected 1..={MAX_IMAGES}", self.num_images)));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(Field::GuidanceScale.invalid(format!("{}: expected a finite number ≥ 0", self.guidance_scale)));
        }
        if let Some(init) = &self.init_image {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(Field::Strength.invalid(format!("{}: expected a value in (0, 1]", init.strength)));
            }
            if init.pixels.shape != [1, 3, self.height, self.width] {
                return Err(Field::InitImage.invalid(format!(
                    "pixels {:?} do not match the requested {}x{}",
                    init.pixels.shape, self.width, self.height
                )));
            }
            if let Some(m) = &init.mask {
                if m.shape != [1, 1, self.height, self.width] {
                    return Err(Field::Mask.invalid(format!(
                        "{:?} does not match the requested {}x{}",
                        m.shape, self.width, self.height
                    )));
                }
                if !self.controls.is_empty() {
                    return Err(Field::Mask.invalid(
                        "inpainting with ControlNets (diffusers' ControlNet inpaint pipelines) is not built",
                    ));
                }
            }
        }
        if self.controls.len() > MAX_CONTROLNETS {
            return Err(Field::ControlNet
                .invalid(format!("{} ControlNets: at most {MAX_CONTROLNETS} per request", self.controls.len())));
        }
        for (k, c) in self.controls.iter().enumerate() {
            c.validate(k, self.width, self.height)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_rule_bounds_and_message() {
        let rule = SizeRule::default();
        for side in [64, 72, 512, 2048] {
            assert!(rule.accepts(side), "{side}");
        }
        for side in [0, 56, 60, 100, 2056] {
            assert!(!rule.accepts(side), "{side}");
        }
        assert_eq!(rule.to_string(), "a multiple of 8 in 64..=2048");
        let e = rule.check("--max-size", 100).unwrap_err();
        assert_eq!(e.to_string(), "--max-size: 100: expected a multiple of 8 in 64..=2048");

        let small = SizeRule::up_to("max_size", 1024).unwrap();
        assert!(small.accepts(1024) && !small.accepts(1032));
        assert_eq!(small.to_string(), "a multiple of 8 in 64..=1024");
        for bad in [0, 1001, 4096] {
            assert!(SizeRule::up_to("max_size", bad).unwrap_err().to_string().starts_with("max_size: "));
        }
    }

    #[test]
    fn errors_name_their_field() {
        let e = SizeRule::default().check_size(512, 30).unwrap_err();
        assert_eq!(Field::of(&e), Some(Field::Height));
        for f in Field::ALL {
            assert_eq!(Field::of(&f.invalid("x")), Some(f));
        }
        assert_eq!(Field::of(&Error::invalid("batch", "x")), None);
        assert_eq!(Field::of(&Error::file("width", "x")), None);
    }
}
