//! `lcm generate`: prompt in, PNGs out.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use lcm::with_pipeline;
use lcm_core::{Backend, Error, Result};
use lcm_pipeline::output::{
    numbered_paths, parameters_text, read_image_rgb8, read_mask_gray8, write_latents, write_png,
};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, Request};

use crate::control_args::ControlArgs;
use crate::device::open;
use crate::model_args::{check_init_size, load_engine, model_label, ModelArgs, SamplingArgs};
use crate::progress::{ms, Progress};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Image width in pixels, a multiple of 8 in 64..=2048 [default: the model's, 512 for SD1.5 and
    /// 1024 for SDXL, or the --image's width].
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height in pixels, a multiple of 8 in 64..=2048 [default: the model's, 512 for SD1.5 and
    /// 1024 for SDXL, or the --image's height].
    #[arg(long)]
    pub height: Option<usize>,
    /// img2img: start from this PNG instead of pure noise (its size is the output size; sides must be
    /// multiples of 8). --strength says how much of it to repaint.
    #[arg(long, value_name = "FILE.png")]
    pub image: Option<PathBuf>,
    /// Inpainting, with --image: repaint only where this mask is white (grey 128 and up: diffusers
    /// binarises at 0.5; black is kept). A PNG with an alpha channel uses its alpha instead: opaque =
    /// repaint, transparent = keep. Same size as --image. Inpainting UNets (9 input channels,
    /// sd-v1-5-inpainting) and ordinary ones both work, as in diffusers' inpaint pipelines.
    #[arg(long, value_name = "FILE.png", requires = "image")]
    pub mask: Option<PathBuf>,
    /// Images per prompt, generated as one batch; FILE.png becomes FILE-0.png, FILE-1.png, ...
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Where to write the PNG (8-bit RGB, settings in a `parameters` text chunk).
    #[arg(long, default_value = "lcm.png", value_name = "FILE.png")]
    pub output: PathBuf,
    /// Also write the final denoised latents (f32 tensor `latents`, [N,4,H/8,W/8], before VAE scaling).
    #[arg(long, value_name = "FILE.safetensors")]
    pub save_latents: Option<PathBuf>,
    #[command(flatten)]
    pub control: ControlArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let (model_dir, loras) = args.model.model_and_loras()?;
    let seed = args.sampling.seed_or_random();
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
            check_init_size(path, w, h)?;
            let init = InitImage::from_rgb8(w, h, &rgb, args.sampling.strength)?;
            Some(match &args.mask {
                Some(mask) => with_mask(init, mask)?,
                None => init,
            })
        }
    };
    let control = &args.control;
    control.check("--control-image", control.images.len())?;
    let control_images =
        control.images.iter().enumerate().map(|(k, p)| control.read_image(k, p)).collect::<Result<Vec<_>>>()?;
    let (width, height) = match (&init_image, control_images.first()) {
        (Some(i), _) => (i.pixels.shape[3], i.pixels.shape[2]),
        (None, _) if args.width.is_some() && args.height.is_some() => {
            (args.width.unwrap_or(0), args.height.unwrap_or(0))
        }
        // diffusers' ControlNet pipelines: the control image's size, rounded down to multiples of 8.
        (None, Some(first)) => {
            let (w, h) = ControlArgs::default_size(first, &control.images[0])?;
            (args.width.unwrap_or(w), args.height.unwrap_or(h))
        }
        (None, None) => {
            // The model's own size (SDXL's 1024), read from its configs before anything loads.
            let probe =
                LoadSpec { model_dir: model_dir.clone(), config_dir: args.model.config.clone(), ..LoadSpec::default() };
            let side = lcm_pipeline::load::default_image_size(&probe)?;
            (args.width.unwrap_or(side), args.height.unwrap_or(side))
        }
    };
    let img2img = init_image.is_some();
    let mut req = args.sampling.request(seed, (width, height), args.num_images, init_image);
    req.controls = control.units(&control_images, (width, height), img2img)?;
    // Everything that can be checked without loading a model is checked first.
    let spec = args.model.load_spec(model_dir, loras);
    let (sampler, max_steps) = args.sampling.sampler(&lcm_pipeline::load::scheduler(&spec)?)?;
    req.sampler = Some(sampler);
    req.validate(max_steps)?;
    args.model.check_files(&spec)?;
    if let Some(dir) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(Error::file(dir, "output folder does not exist"));
        }
    }
    eprintln!("seed: {seed}");
    let (mut engine, load_time) = load_engine(open(args.model.device)?, spec, req.steps, args.model.tiling)?;
    with_pipeline!(&mut engine, p => generate_with(p, &req, &args, load_time))
}

fn generate_with<B: Backend>(
    pipe: &mut Pipeline<B>,
    req: &Request,
    args: &GenerateArgs,
    load_time: Duration,
) -> Result<()> {
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

/// `init` with the inpainting mask read from `path` (errors name the file); a mask that repaints every
/// pixel gets a note: it keeps nothing of the image but what the masked-image latents carry.
pub fn with_mask(init: InitImage, path: &Path) -> Result<InitImage> {
    let (w, h, gray, _) = read_mask_gray8(path)?;
    let init = init.with_mask_gray8(w, h, &gray).map_err(|e| Error::file(path, format!("--mask: {}", msg(&e))))?;
    if init.mask_is_full() {
        eprintln!(
            "note: the --mask repaints every pixel (nothing of --image is kept outside the masked-image conditioning)"
        );
    }
    Ok(init)
}

/// An error's message without its field name.
fn msg(e: &Error) -> String {
    match e {
        Error::Invalid { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}
