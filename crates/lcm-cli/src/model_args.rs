//! The flags `generate` and `frames` share (the model, its LoRAs, the prompt and the sampling), defined
//! once and flattened into each command, and what they turn into: a [`LoadSpec`] and a loaded
//! [`Pipeline`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use lcm::{with_pipeline, Engine, Opened};
use lcm_core::lcm::Prediction;
use lcm_core::{Error, Result};
use lcm_models::Variant;
use lcm_pipeline::pipeline::max_steps_for;
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions, SchedulerConfig, Spacing};
use lcm_pipeline::spec::{Field, InitImage, LoadSpec, LoraMode, LoraSpec, Request, SizeRule};

use crate::device::DeviceArg;
use crate::vae_tiling::VaeTilingArgs;

/// What to load and where to run it.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A diffusers folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/), or a
    /// single-file SD1.5-family or SD2 checkpoint (.safetensors with original SD key names, as A1111,
    /// ComfyUI and civitai ship fine-tunes: its architecture is read from the tensor shapes, its
    /// tokenizer is CLIP's, built in: nothing is downloaded), or an SDXL one with --config. Without it,
    /// SD1.5 + the LCM-LoRA are taken from the Hugging Face cache (downloaded if missing).
    #[arg(long, value_name = "DIR|FILE")]
    pub model: Option<PathBuf>,
    /// With a single-file --model: a diffusers folder whose unet/, vae/, text_encoder/ configs, tokenizer/
    /// and scheduler/ are used instead of what the shapes say (diffusers' from_single_file(config=...)),
    /// for non-standard architectures. Only configs are read from it, never weights. Without it, the
    /// tokenizer is CLIP's, built in (padding as SD1.5's, or SD2's for an SD2 file), and the scheduler
    /// SD1.5's.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// A separate VAE instead of the model's: a diffusers VAE folder (config.json + weights), a model folder
    /// with vae/, or a .safetensors file in original SD or diffusers names (e.g.
    /// vae-ft-mse-840000-ema-pruned.safetensors).
    #[arg(long, value_name = "FILE|DIR")]
    pub vae: Option<PathBuf>,
    #[command(flatten)]
    pub tiling: VaeTilingArgs,
    /// A LoRA (kohya or peft/diffusers safetensors) with an optional scale (default 1). Repeat for
    /// several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub loras: Vec<LoraSpec>,
    /// A textual-inversion embedding (.safetensors: A1111's emb_params / string_to_param, diffusers'
    /// learned_embeds, SDXL's clip_l + clip_g) with an optional token that calls it in prompts [default:
    /// a diffusers file's own token, else the file's stem]. The part after the last ':' is the token
    /// unless the whole argument is an existing file. Multi-vector embeddings expand as diffusers
    /// expands them. Repeat for several.
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]", value_parser = parse_embedding)]
    pub embeddings: Vec<(PathBuf, Option<String>)>,
    /// A folder of embeddings, read as A1111 reads its embeddings/: every .safetensors file under it,
    /// triggered by its stem; pickles (.pt, .bin), embeddings for another model family and names
    /// already taken are skipped with a warning.
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// merged: LoRAs are merged into the weights at load (no cost per step). runtime: on CUDA the UNet
    /// runs them unmerged from fixed buffers that a service swaps by copying (Pipeline::set_loras);
    /// the CPU merges either way.
    #[arg(long, value_enum, default_value = "merged")]
    pub lora_mode: LoraModeArg,
    /// runtime mode: the largest LoRA rank on one layer the buffers hold [default: 64, or the LoRAs'].
    #[arg(long, value_name = "N")]
    pub max_lora_rank: Option<usize>,
    /// diffusers' clip_skip: use the text encoder's output that many layers before the last.
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// What the UNet predicts, for single files, whose files do not say: epsilon or v_prediction
    /// [default: the --config folder's scheduler config; a bare SD2 file v_prediction (SD2.1-768, as
    /// diffusers' from_single_file), others epsilon]. An error where a model folder's config says
    /// otherwise.
    #[arg(long, value_name = "TYPE", value_parser = parse_prediction)]
    pub prediction_type: Option<Prediction>,
    /// Where to run: auto takes cuda when a GPU and the kernels are present, else cpu (with a note);
    /// emulated runs the CUDA kernels on the CPU by the emulator (slow, for debugging on tiny models).
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
}

/// What to generate: the prompt and the sampling settings.
#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// The prompt (may be empty).
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// What to steer away from; used only with classifier-free guidance (--guidance-scale > 1 on a
    /// UNet without a guidance embedding).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// Denoising steps, 1..=original_inference_steps (50 for SD1.5); LCMs look good at 2-8.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Guidance scale. LCM UNets take it as an embedding (w = scale - 1); other UNets run classifier-free
    /// guidance when it is above 1 (LCM-LoRA is meant for 1-2).
    #[arg(long, default_value_t = 1.0)]
    pub guidance_scale: f32,
    /// Random seed (torch.Generator("cpu").manual_seed compatible: the same seed gives diffusers' image).
    /// Random and printed when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// img2img: how much of the input image to repaint, in (0, 1]. SD + LCM-LoRA runs the last
    /// int(steps·strength) of the steps; LCM models shorten their schedule instead (as diffusers does).
    #[arg(long, default_value_t = 0.8)]
    pub strength: f32,
    /// The sampler, built from the model's scheduler config as diffusers' X.from_config(pipe.scheduler.config):
    /// lcm (LCM models, LCM-LoRA), tcd (TCD LoRAs, Hyper-SD), euler and euler-a (SD-Turbo, SDXL-Turbo,
    /// SDXL-Lightning; guidance 0 or 1), ddim (Hyper-SD, SD2 v-prediction models), or auto: the model
    /// folder's own scheduler class (what a Turbo or Lightning folder ships).
    #[arg(long, value_name = "NAME", default_value = "lcm", value_parser = parse_scheduler)]
    pub scheduler: SchedulerArg,
    /// tcd's gamma / ddim's eta, in [0, 1]: how much fresh noise each step takes [default: 0, what
    /// diffusers' pipelines pass; TCD's authors suggest 0.3].
    #[arg(long, value_name = "F")]
    pub eta: Option<f32>,
    /// ddim, euler and euler-a: leading, trailing (Turbo, Lightning, Hyper-SD) or linspace timesteps
    /// [default: the model's scheduler config's, else the sampler's own].
    #[arg(long, value_name = "SPACING", value_parser = parse_spacing)]
    pub timestep_spacing: Option<Spacing>,
    /// How the prompts are read. plain: as diffusers reads them (the same text gives diffusers' image;
    /// cut at 75 tokens). a1111: AUTOMATIC1111's syntax — (word) x1.1, [word] /1.1, (word:1.3),
    /// BREAK, prompts longer than 75 tokens in 75-token chunks, embeddings by trigger word (README,
    /// "Prompts").
    #[arg(long, value_name = "SYNTAX", default_value = "plain", value_parser = parse_prompt_syntax)]
    pub prompt_syntax: PromptSyntax,
}

pub(crate) fn parse_prompt_syntax(s: &str) -> std::result::Result<PromptSyntax, String> {
    PromptSyntax::parse(s).map_err(|e| e.to_string())
}

/// `--scheduler`: a sampler, or the model's own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SchedulerArg {
    Auto,
    Kind(SamplerKind),
}

pub(crate) fn parse_scheduler(s: &str) -> std::result::Result<SchedulerArg, String> {
    if s == "auto" {
        return Ok(SchedulerArg::Auto);
    }
    SamplerKind::parse(s).map(SchedulerArg::Kind).ok_or_else(|| {
        let names: Vec<&str> = SamplerKind::ALL.iter().map(|k| k.name()).collect();
        format!("`{s}`: expected one of {}, auto", names.join(", "))
    })
}

pub(crate) fn parse_spacing(s: &str) -> std::result::Result<Spacing, String> {
    Spacing::parse(s).ok_or_else(|| format!("`{s}`: expected leading, trailing or linspace"))
}

pub(crate) fn parse_prediction(s: &str) -> std::result::Result<Prediction, String> {
    match s {
        "epsilon" => Ok(Prediction::Epsilon),
        "v_prediction" | "v" => Ok(Prediction::VPrediction),
        _ => Err(format!("`{s}`: expected epsilon or v_prediction")),
    }
}

/// `--lora-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraModeArg {
    Merged,
    Runtime,
}

/// `--lora FILE[:SCALE]`, for `generate`, `frames` and `serve` ([`LoraSpec::parse`]).
pub(crate) fn parse_lora(s: &str) -> std::result::Result<LoraSpec, String> {
    LoraSpec::parse(s)
}

/// `--embedding FILE[:TOKEN]`: the token follows the last ':' unless the whole argument is an existing
/// file (so a file whose name holds ':' still loads with its own token).
pub(crate) fn parse_embedding(s: &str) -> std::result::Result<(PathBuf, Option<String>), String> {
    if Path::new(s).is_file() {
        return Ok((PathBuf::from(s), None));
    }
    match s.rsplit_once(':') {
        Some(("", _)) => Err(format!("`{s}`: no file before the ':'")),
        Some((_, t)) if t.trim().is_empty() => Err(format!("`{s}`: empty token after the ':'")),
        Some((p, t)) => Ok((PathBuf::from(p), Some(t.to_string()))),
        None => Ok((PathBuf::from(s), None)),
    }
}

impl SamplingArgs {
    /// `--seed`, or a random one (printed by the caller, so the run can be repeated).
    pub fn seed_or_random(&self) -> u64 {
        self.seed.unwrap_or_else(lcm_pipeline::rng::random_seed)
    }

    /// The request these flags describe, with what the command decides itself.
    pub fn request(
        &self,
        seed: u64,
        (width, height): (usize, usize),
        num_images: usize,
        init_image: Option<InitImage>,
    ) -> Request {
        Request {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            seed,
            width,
            height,
            num_images,
            controls: Vec::new(),
            init_image,
            sampler: None,
            prompt_syntax: self.prompt_syntax,
        }
    }

    /// The sampler these flags ask of a model with scheduler config `config` (`auto`: its own class),
    /// and the most steps it takes; errors name the flag's field.
    pub fn sampler(&self, config: &SchedulerConfig) -> Result<(SamplerOptions, usize)> {
        sampler_options(self.scheduler, self.eta, self.timestep_spacing, config)
    }
}

/// `--scheduler` (`auto`: the class of the scheduler config `config`), `--eta` and
/// `--timestep-spacing` as the sampler they ask of that model, and the most steps it takes; errors
/// name the flag's field.
pub(crate) fn sampler_options(
    scheduler: SchedulerArg,
    eta: Option<f32>,
    timestep_spacing: Option<Spacing>,
    config: &SchedulerConfig,
) -> Result<(SamplerOptions, usize)> {
    let kind = match scheduler {
        SchedulerArg::Kind(k) => k,
        SchedulerArg::Auto => config.class_kind().ok_or_else(|| {
            Field::Scheduler.invalid(format!(
                "auto: the model's scheduler is {}, not one lcm runs; name one (lcm, tcd, euler, euler-a, ddim)",
                config.class_name().unwrap_or("not named")
            ))
        })?,
    };
    let options = SamplerOptions { kind, eta, timestep_spacing };
    Ok((options, max_steps_for(config, &options)?))
}

impl ModelArgs {
    /// The model folder (the Hugging Face cache's SD1.5 + LCM-LoRA without `--model`) and every LoRA.
    /// Only the default model may download; nothing is loaded.
    pub fn model_and_loras(&self) -> Result<(PathBuf, Vec<LoraSpec>)> {
        if self.config.is_some() && self.model.is_none() {
            return Err(Field::ConfigDir
                .invalid("names the configs of a single-file checkpoint; give --model FILE.safetensors with it"));
        }
        model_and_loras(self.model.as_ref(), self.config.as_ref(), &self.loras)
    }

    /// The load spec (the engine picks the weight precision for the device it loads on).
    pub fn load_spec(&self, model_dir: PathBuf, loras: Vec<LoraSpec>) -> LoadSpec {
        LoadSpec {
            model_dir,
            loras,
            clip_skip: self.clip_skip,
            variant: Variant::PreferFull,
            config_dir: self.config.clone(),
            vae: self.vae.clone(),
            tokenizer_dir: None,
            lora_mode: match self.lora_mode {
                LoraModeArg::Merged => LoraMode::Merged,
                LoraModeArg::Runtime => LoraMode::Runtime,
            },
            max_lora_rank: self.max_lora_rank,
            prediction_type: self.prediction_type,
            embeddings: self.embeddings.clone(),
            embeddings_dir: self.embeddings_dir.clone(),
        }
    }

    /// The checks that need no model loaded ([`LoadSpec::check_files`]; shared with the Python module).
    pub fn check_files(&self, spec: &LoadSpec) -> Result<()> {
        spec.check_files()
    }
}

/// Loads the pipeline on the opened device, saying where, and warns when few steps on a non-LCM UNet
/// will be blurry.
pub fn load_engine(opened: Opened, spec: LoadSpec, steps: usize, tiling: VaeTilingArgs) -> Result<(Engine, Duration)> {
    let t_load = Instant::now();
    eprintln!("loading {} on {}", spec.model_dir.display(), opened.name());
    let mut engine = opened.load(spec)?;
    with_pipeline!(&mut engine, p => p.set_vae_tiling(tiling.setting()))?;
    with_pipeline!(&engine, p => {
        for s in &p.embeddings().skipped {
            eprintln!("warning: embedding skipped: {}: {}", s.path.display(), s.reason);
        }
    });
    let lcm_unet = with_pipeline!(&engine, p => p.has_guidance_embedding());
    if !lcm_unet && engine.spec().loras.is_empty() && steps < 8 {
        eprintln!(
            "note: this UNet is not LCM-distilled and no --lora was given; a few steps give blurry images \
             (add the LCM-LoRA: --lora lcm-lora-sdv1-5/pytorch_lora_weights.safetensors)"
        );
    }
    Ok((engine, t_load.elapsed()))
}

/// An img2img input's size must suit the VAE: sides multiples of 8 in 64..=2048 (the error names the
/// file and what to do).
pub fn check_init_size(path: &Path, w: usize, h: usize) -> Result<()> {
    let rule = SizeRule::default();
    if rule.accepts(w) && rule.accepts(h) {
        return Ok(());
    }
    Err(Error::file(
        path,
        format!(
            "is {w}x{h}; img2img needs sides that are multiples of 8 in {}..={} (resize or crop it)",
            SizeRule::MIN,
            rule.max()
        ),
    ))
}

/// The model's name for the PNG's `parameters`: a HF cache snapshot path says little, so the repo
/// folder above it when there is one.
pub fn model_label(dir: &Path) -> String {
    let s = dir.display().to_string();
    match s.find("models--") {
        Some(i) => s[i + 8..].split('/').next().unwrap_or(&s).replacen("--", "/", 1),
        None => s,
    }
}

/// `--model` (or, without it, the Hugging Face cache's SD1.5 with the LCM-LoRA first) and the `--lora`s:
/// for every command that loads a model. The model path is checked before anything else reads it
/// ([`LoadSpec::check_model`]: pickles are refused by name; `--config` only with a single file).
pub fn model_and_loras(
    model: Option<&PathBuf>,
    config: Option<&PathBuf>,
    extra: &[LoraSpec],
) -> Result<(PathBuf, Vec<LoraSpec>)> {
    let (model_dir, mut loras) = match model {
        Some(dir) => {
            LoadSpec { model_dir: dir.clone(), config_dir: config.cloned(), ..LoadSpec::default() }.check_model()?;
            (dir.clone(), Vec::new())
        }
        None => {
            let found = crate::hub::default_model(&mut |m| eprintln!("{m}"))?;
            eprintln!("model: {} + LCM-LoRA {}", found.model_dir.display(), found.lora.display());
            (found.model_dir, vec![LoraSpec { path: found.lora, scale: 1.0 }])
        }
    };
    loras.extend(extra.iter().cloned());
    Ok((model_dir, loras))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_flag_parses_scale_after_the_last_colon() {
        assert_eq!(parse_lora("a.safetensors").unwrap().scale, 1.0);
        let l = parse_lora("dir:x/a.safetensors:0.5").unwrap();
        assert_eq!((l.path, l.scale), (PathBuf::from("dir:x/a.safetensors"), 0.5));
        assert!(parse_lora("a.safetensors:inf").is_err());
    }

    #[test]
    fn embedding_flag_takes_the_token_after_the_last_colon() {
        let parse = |s| parse_embedding(s).unwrap();
        assert_eq!(parse("e.safetensors"), (PathBuf::from("e.safetensors"), None));
        assert_eq!(parse("d:x/e.safetensors:<tok>"), (PathBuf::from("d:x/e.safetensors"), Some("<tok>".into())));
        assert!(parse_embedding("e.safetensors:").is_err());
        assert!(parse_embedding(":tok").is_err());
        // An existing file whose name holds ':' is the file, not FILE:TOKEN.
        let dir = std::env::temp_dir().join(format!("lcm-emb-flag-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("a:b.safetensors");
        std::fs::write(&odd, b"x").unwrap();
        assert_eq!(parse(odd.to_str().unwrap()), (odd.clone(), None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
