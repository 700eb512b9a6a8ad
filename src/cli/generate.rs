//! `lcm generate`: prompt in, PNGs out.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use lcm_core::{Backend, Error, Result};
use lcm_models::Variant;
use lcm_pipeline::lora::LoraSet;
use lcm_pipeline::lora_swap::LoraMode;
use lcm_pipeline::output::{numbered_paths, parameters_text, read_image_rgb8, write_latents, write_png};
use lcm_pipeline::pipeline::{InitImage, LoadSpec, LoraSpec, Pipeline, Request};

use super::device::{choose, Chosen, Device};
use super::progress::{ms, Progress};
use super::vae_tiling::VaeTilingArgs;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A diffusers folder (model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/), or a
    /// single-file SD1.5-family checkpoint (.safetensors with original SD key names, as A1111, ComfyUI and
    /// civitai ship fine-tunes: its architecture is read from the tensor shapes). Without it, SD1.5 + the
    /// LCM-LoRA are taken from the Hugging Face cache (downloaded if missing).
    #[arg(long, value_name = "DIR|FILE")]
    pub model: Option<PathBuf>,
    /// With a single-file --model: a diffusers folder whose unet/, vae/, text_encoder/ configs, tokenizer/
    /// and scheduler/ are used instead of what the shapes say (diffusers' from_single_file(config=...)),
    /// for non-standard architectures. Only configs are read from it, never weights. Without it, the
    /// tokenizer is SD1.5's from the Hugging Face cache and the scheduler SD1.5's.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// A separate VAE instead of the model's: a diffusers VAE folder (config.json + weights), a model folder
    /// with vae/, or a .safetensors file in original SD or diffusers names (e.g.
    /// vae-ft-mse-840000-ema-pruned.safetensors).
    #[arg(long, value_name = "FILE|DIR")]
    pub vae: Option<PathBuf>,
    #[command(flatten)]
    pub tiling: VaeTilingArgs,
    /// The prompt (may be empty).
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// What to steer away from; used only with classifier-free guidance (--guidance-scale > 1 on a
    /// UNet without a guidance embedding).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// A LoRA (kohya or peft/diffusers safetensors) with an optional scale (default 1). Repeat for
    /// several.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub loras: Vec<LoraSpec>,
    /// merged: LoRAs are merged into the weights at load (no cost per step). runtime: on CUDA the UNet
    /// runs them unmerged from fixed buffers that a service swaps by copying (Pipeline::set_loras);
    /// the CPU merges either way.
    #[arg(long, value_enum, default_value = "merged")]
    pub lora_mode: LoraModeArg,
    /// runtime mode: the largest LoRA rank on one layer the buffers hold [default: 64, or the LoRAs'].
    #[arg(long, value_name = "N")]
    pub max_lora_rank: Option<usize>,
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
    /// Image width in pixels, a multiple of 8 in 64..=2048 [default: the model's, 512 for SD1.5 and
    /// 1024 for SDXL, or the --image's width].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels, a multiple of 8 in 64..=2048 [default: the model's, 512 for SD1.5 and
    /// 1024 for SDXL, or the --image's height].
    #[arg(long)]
    pub height: Option<usize>,
    /// img2img: start from this PNG instead of pure noise (its size is the output size; sides must be
    /// multiples of 8).
    #[arg(long, value_name = "FILE.png")]
    pub image: Option<PathBuf>,
    /// img2img: how much of --image to repaint, in (0, 1]. SD + LCM-LoRA runs the last
    /// int(steps·strength) of the steps; LCM models shorten their schedule instead (as diffusers does).
    #[arg(long, default_value_t = 0.8)]
    pub strength: f32,
    /// Images per prompt, generated as one batch; FILE.png becomes FILE-0.png, FILE-1.png, ...
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// cpu, cuda or emulated (the CUDA kernels run on the CPU by the emulator: slow, for debugging on
    /// tiny models). Default: cuda when a GPU and the kernels are present, else cpu (with a note).
    #[arg(long, value_enum)]
    pub device: Option<Device>,
    /// diffusers' clip_skip: use the text encoder's output that many layers before the last.
    #[arg(long, default_value_t = 0)]
    pub clip_skip: usize,
    /// Where to write the PNG (8-bit RGB, settings in a `parameters` text chunk).
    #[arg(long, default_value = "lcm.png", value_name = "FILE.png")]
    pub output: PathBuf,
    /// Also write the final denoised latents (f32 tensor `latents`, [N,4,H/8,W/8], before VAE scaling).
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_latents: Option<PathBuf>,
}

/// `--lora-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoraModeArg {
    Merged,
    Runtime,
}

/// `--lora FILE[:SCALE]`, for `generate` and `serve`.
pub(crate) fn parse_lora(s: &str) -> std::result::Result<LoraSpec, String> {
    // The scale follows the last ':' only when it parses as a number, so paths with ':' still work.
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

fn random_seed() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    // splitmix64 of time and pid: distinct per run, no dependency for one number.
    let mut z = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) >> 11 // keep it short enough to type back
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.config.is_some() && args.model.as_ref().is_none_or(|m| m.is_dir()) {
        return Err(Error::invalid(
            "--config",
            "names the configs of a single-file checkpoint; give --model FILE.safetensors with it",
        ));
    }
    let (model_dir, mut loras) = match &args.model {
        Some(dir) => (dir.clone(), Vec::new()),
        None => {
            let found = lcm::hub::default_model(&mut |m| eprintln!("{m}"))?;
            eprintln!("model: {} + LCM-LoRA {}", found.model_dir.display(), found.lora.display());
            (found.model_dir, vec![LoraSpec { path: found.lora, scale: 1.0 }])
        }
    };
    loras.extend(args.loras.iter().cloned());
    let seed = args.seed.unwrap_or_else(random_seed);
    let init_image = match &args.image {
        None => None,
        Some(path) => {
            let (w, h, rgb) = read_image_rgb8(path)?;
            for (flag, given, actual) in [("--width", args.width, w), ("--height", args.height, h)] {
                if given.is_some_and(|g| g != actual) {
                    return Err(Error::invalid(
                        flag,
                        format!(
                            "{} differs from the --image's {actual}; img2img keeps the image's size",
                            given.unwrap_or(0)
                        ),
                    ));
                }
            }
            if w % 8 != 0 || h % 8 != 0 {
                return Err(Error::file(
                    path,
                    format!("is {w}x{h}; img2img needs sides that are multiples of 8 (resize or crop it)"),
                ));
            }
            Some(InitImage::from_rgb8(w, h, &rgb, args.strength)?)
        }
    };
    let (width, height) = match &init_image {
        Some(i) => (i.pixels.shape[3], i.pixels.shape[2]),
        None if args.width.is_some() && args.height.is_some() => (args.width.unwrap_or(0), args.height.unwrap_or(0)),
        None => {
            // The model's own size (SDXL's 1024), read from its configs before anything loads.
            let probe =
                LoadSpec { model_dir: model_dir.clone(), config_dir: args.config.clone(), ..LoadSpec::default() };
            let side = lcm_pipeline::load::default_image_size(&probe)?;
            (args.width.unwrap_or(side), args.height.unwrap_or(side))
        }
    };
    let req = Request {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        steps: args.steps,
        guidance_scale: args.guidance_scale,
        seed,
        width,
        height,
        num_images: args.num_images,
        init_image,
    };
    // Everything that can be checked without loading a model is checked first.
    let mut spec = LoadSpec {
        model_dir: model_dir.clone(),
        loras,
        clip_skip: args.clip_skip,
        variant: Variant::PreferFull,
        config_dir: args.config.clone(),
        vae: args.vae.clone(),
        tokenizer_dir: None,
        lora_mode: match args.lora_mode {
            LoraModeArg::Merged => LoraMode::Merged,
            LoraModeArg::Runtime => LoraMode::Runtime,
        },
        max_lora_rank: args.max_lora_rank,
    };
    let sched = lcm_pipeline::load::scheduler(&spec)?;
    req.validate(sched.config().original_inference_steps)?;
    if let Some(vae) = args.vae.as_ref().filter(|v| !v.exists()) {
        return Err(Error::file(vae, "VAE not found (expected a .safetensors file or a diffusers VAE folder)"));
    }
    // Parsing is cheap (headers of memory-mapped files); shapes are checked against the model at load.
    LoraSet::open(&spec.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
    if let Some(dir) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::file(dir, "output folder does not exist"));
        }
    }
    if model_dir.is_file() && args.config.is_none() {
        // A single file holds no tokenizer; diffusers' from_single_file fetches SD1.5's too.
        spec.tokenizer_dir = Some(lcm::hub::sd15_tokenizer(&mut |m| eprintln!("{m}"))?);
    }
    eprintln!("seed: {seed}");
    match choose(args.device)? {
        Chosen::Cpu(b) => generate_with(b, spec, &req, &args),
        Chosen::Cuda(b) => generate_with(*b, LoadSpec { variant: Variant::PreferHalf, ..spec }, &req, &args),
    }
}

fn generate_with<B: Backend>(backend: B, spec: LoadSpec, req: &Request, args: &GenerateArgs) -> Result<()> {
    let t_load = std::time::Instant::now();
    eprintln!("loading {} on {}", spec.model_dir.display(), backend.name());
    let mut pipe = Pipeline::load(backend, spec)?;
    pipe.set_vae_tiling(args.tiling.setting())?;
    let load_time = t_load.elapsed();
    if !pipe.has_guidance_embedding() && pipe.spec.loras.is_empty() && req.steps < 8 {
        eprintln!(
            "note: this UNet is not LCM-distilled and no --lora was given; a few steps give blurry images \
             (add the LCM-LoRA: --lora lcm-lora-sdv1-5/pytorch_lora_weights.safetensors)"
        );
    }
    let mut bar = Progress::new("unet");
    let out = pipe.generate(req, &mut |e| bar.update(e.step, e.steps, &format!("t={}", e.timestep), e.elapsed))?;

    let model_name = model_label(&pipe.spec.model_dir);
    let params = parameters_text(req, &model_name, &pipe.spec.loras);
    let paths = numbered_paths(&args.output, req.num_images);
    for (i, p) in paths.iter().enumerate() {
        write_png(p, req.width, req.height, &out.rgb8(i), &params)?;
        println!("{}", p.display());
    }
    if let Some(p) = &args.save_latents {
        write_latents(p, &out.latents)?;
        println!("{}", p.display());
    }
    let t = &out.times;
    let unet: Duration = t.unet_steps.iter().sum();
    eprintln!(
        "load {} | text encoder {} | unet {} steps {} ({}/step) | vae decode {} | generate {}",
        ms(load_time),
        ms(t.text_encoder),
        t.unet_steps.len(),
        ms(unet),
        ms(unet / t.unet_steps.len().max(1) as u32),
        ms(t.vae_decode),
        ms(t.total)
    );
    Ok(())
}

fn model_label(dir: &Path) -> String {
    // A HF cache snapshot path says little; name the repo folder above it when there is one.
    let s = dir.display().to_string();
    match s.find("models--") {
        Some(i) => s[i + 8..].split('/').next().unwrap_or(&s).replacen("--", "/", 1),
        None => s,
    }
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
}
