//! txt2img with a Latent Consistency Model: load a diffusers folder once, generate many times.
//!
//! The order of work and of random draws is diffusers' (StableDiffusionPipeline with LCMScheduler, or
//! LatentConsistencyModelPipeline for UNets with `time_cond_proj_dim`; their Img2Img variants with an
//! init image), so the same seed gives the same image: latents first (for img2img: the VAE posterior
//! sample, then the noise), then one noise draw after each UNet call but the last, all from one
//! torch-compatible generator.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Error, HostData, Op, Result, Tensor};
use lcm_models::denoise::{input, DenoiseConfig, DenoiseShape};
use lcm_models::{Encoded, Unet, Vae, VaeTiling, Variant};

use crate::lora::{LoraSet, Targets};
use crate::lora_swap::{LoraMode, Slots, DEFAULT_MAX_LORA_RANK};
use crate::rng::TorchRng;
use crate::scheduler::{guidance_embedding, LcmScheduler};
use crate::text::{PromptRows, TextEncoders};
use crate::tokenizer::CLIP_MAX_LEN;

/// A LoRA file and the scale it is applied with.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA's `.safetensors` file (kohya or peft names).
    pub path: PathBuf,
    /// s_user, multiplying the file's every delta (1: as trained).
    pub scale: f32,
}

/// How to load a model: a diffusers folder, or a single-file checkpoint with its configs read from the
/// shapes or taken from `config_dir`, plus LoRAs and optionally a separate VAE.
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
    /// or `config_dir`'s; a single-file model without `config_dir` needs it (SD1.5's).
    pub tokenizer_dir: Option<PathBuf>,
    /// Merged into the weights (default), or unmerged from fixed buffers a swap copies into
    /// ([`Pipeline::set_loras`], `crate::lora_swap`).
    pub lora_mode: LoraMode,
    /// Runtime mode: the largest rank (summed over the LoRAs on one weight) the buffers hold; default
    /// [`crate::lora_swap::DEFAULT_MAX_LORA_RANK`], or the load's LoRAs' if larger.
    pub max_lora_rank: Option<usize>,
}

/// img2img: the image to start from and how much of it to repaint.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// `[1, 3, H, W]` in [-1, 1] (diffusers' preprocessing: u8/255·2−1).
    pub pixels: Tensor,
    /// In (0, 1]: 1 starts from noise, small values keep more of the image.
    pub strength: f32,
}

impl InitImage {
    /// From 8-bit RGB pixels, row-major `[height, width, 3]`; `rgb` must hold exactly width·height
    /// pixels (an error names both sizes otherwise).
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8], strength: f32) -> Result<Self> {
        if rgb.len() != 3 * width * height {
            return Err(Error::invalid(
                "init image",
                format!("{} bytes of RGB for a {width}x{height} image (expected {})", rgb.len(), 3 * width * height),
            ));
        }
        let mut data = vec![0.0f32; 3 * width * height];
        for (p, px) in rgb.chunks_exact(3).enumerate() {
            for c in 0..3 {
                data[c * width * height + p] = 2.0 * (px[c] as f32 / 255.0) - 1.0;
            }
        }
        Ok(InitImage { pixels: Tensor::new(vec![1, 3, height, width], data), strength })
    }
}

/// What to generate. `validate` checks everything before any model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The text the image follows (cut to the 75 tokens CLIP's 77 positions leave between bos and eos).
    pub prompt: String,
    /// The uncond prompt of classic CFG (`None`: ""); unused without CFG.
    pub negative_prompt: Option<String>,
    /// LCM steps (UNet calls), 1..=`original_inference_steps`; SD img2img runs the last
    /// int(steps·strength) of them.
    pub steps: usize,
    /// A UNet with a guidance embedding gets w = guidance_scale − 1 embedded; any other UNet runs
    /// classic CFG when it is above 1 (1, LCM-LoRA's usual value, means no CFG).
    pub guidance_scale: f32,
    /// Seeds the torch-compatible generator as `torch.Generator("cpu").manual_seed(seed)` (its low
    /// 32 bits count).
    pub seed: u64,
    /// Image width in pixels: a multiple of 8 in [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub width: usize,
    /// Image height in pixels: a multiple of 8 in [`MIN_SIZE`]..=[`MAX_SIZE`].
    pub height: usize,
    /// Images per generation (N), from one prompt and one generator stream.
    pub num_images: usize,
    /// img2img when given; the output then has the image's size (width/height must match it).
    pub init_image: Option<InitImage>,
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
        }
    }
}

/// The smallest image side accepted, in pixels; sides must be multiples of 8 (the VAE's factor).
pub const MIN_SIZE: usize = 64;
/// The largest image side accepted, in pixels.
pub const MAX_SIZE: usize = 2048;
/// The most images one request may ask for (a bound before any buffer is sized by it; memory is the
/// real limit, and a batch this large at [`MAX_SIZE`] would not fit most machines).
pub const MAX_IMAGES: usize = 64;

impl Request {
    /// Checks sizes, steps against `original_steps`, the image count, the guidance scale and the init
    /// image; an error names the CLI flag (`--width`, `--steps`, `--strength`, `--image`, …) and what
    /// it accepts.
    pub fn validate(&self, original_steps: usize) -> Result<()> {
        for (flag, v) in [("--width", self.width), ("--height", self.height)] {
            if v % 8 != 0 || !(MIN_SIZE..=MAX_SIZE).contains(&v) {
                return Err(Error::invalid(flag, format!("{v}: expected a multiple of 8 in {MIN_SIZE}..={MAX_SIZE}")));
            }
        }
        if self.steps == 0 || self.steps > original_steps {
            return Err(Error::invalid(
                "--steps",
                format!("{}: expected 1..={original_steps} (the model's original_inference_steps)", self.steps),
            ));
        }
        if self.num_images == 0 || self.num_images > MAX_IMAGES {
            return Err(Error::invalid("--num-images", format!("{}: expected 1..={MAX_IMAGES}", self.num_images)));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(Error::invalid(
                "--guidance-scale",
                format!("{}: expected a finite number ≥ 0", self.guidance_scale),
            ));
        }
        if let Some(init) = &self.init_image {
            if !(init.strength > 0.0 && init.strength <= 1.0) {
                return Err(Error::invalid("--strength", format!("{}: expected a value in (0, 1]", init.strength)));
            }
            if init.pixels.shape != [1, 3, self.height, self.width] {
                return Err(Error::invalid(
                    "--image",
                    format!("pixels {:?} do not match the requested {}x{}", init.pixels.shape, self.width, self.height),
                ));
            }
        }
        Ok(())
    }
}

/// Wall time of each stage of one generation.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    /// Tokenizing and encoding the prompts into the denoising loop's context.
    pub text_encoder: Duration,
    /// Each step (UNet call and LCM step); a backend that runs the loop as one graph has its time
    /// split evenly.
    pub unet_steps: Vec<Duration>,
    /// VAE decoding and the postprocessing to [0, 1].
    pub vae_decode: Duration,
    /// From after validation to the decoded images, noise drawing and img2img encoding included.
    pub total: Duration,
}

/// What one generation produced.
pub struct Output {
    /// Final denoised latents NCHW `[N, C, H/8, W/8]` (C: the UNet's `in_channels`, 4), before the
    /// VAE's scaling (diffusers' `output_type="latent"`).
    pub latents: Tensor,
    /// Decoded images NHWC `[N, H, W, 3]` in [0, 1] (diffusers' `output_type="np"`).
    pub images: Tensor,
    /// Wall time of each stage.
    pub times: StageTimes,
}

impl Output {
    /// 8-bit RGB pixels of image `i`, rounded as diffusers does (`(x·255).round()`, ties to even as numpy).
    pub fn rgb8(&self, i: usize) -> Vec<u8> {
        let per = self.images.numel() / self.images.shape[0];
        self.images.data[i * per..(i + 1) * per].iter().map(|&v| (v * 255.0).round_ties_even() as u8).collect()
    }
}

/// Progress events, one per UNet step.
#[derive(Debug, Clone, Copy)]
pub struct StepEvent {
    /// The step just run, from 1.
    pub step: usize,
    /// Steps this generation runs.
    pub steps: usize,
    /// The step's timestep.
    pub timestep: i64,
    /// Since the generation started.
    pub elapsed: Duration,
}

/// A loaded model on one backend: tokenizer, text encoder, UNet, VAE (decoder; its encoder on first
/// img2img) and LCM scheduler, with its LoRAs applied.
pub struct Pipeline<B: Backend> {
    /// The backend every model runs on.
    pub backend: B,
    /// What was loaded; `loras` are those applied now ([`Pipeline::set_loras`] updates them).
    pub spec: LoadSpec,
    /// The text encoder (two for SDXL) and tokenizers.
    pub(crate) text: TextEncoders<B>,
    pub(crate) unet: Unet<B>,
    vae: Vae<B>,
    /// The VAE's own backend when it runs in f32 on an f16 backend (`force_upcast`, as diffusers'
    /// SDXL pipelines do: `crate::load::upcast_vae_backend`); `None`: the pipeline's.
    vae_backend: Option<B>,
    /// Tiled VAE decoding and encoding ([`Pipeline::set_vae_tiling`]); off by default.
    vae_tiling: Option<VaeTiling>,
    scheduler: LcmScheduler,
    /// Weights a LoRA is merged into now (re-read pristine on a swap).
    pub(crate) lora_merged: BTreeSet<String>,
    /// Runtime mode: the UNet weights with unmerged LoRA buffers.
    pub(crate) slots: Option<Slots>,
}

impl<B: Backend> Pipeline<B> {
    /// Loads every component `spec` names, merging the LoRAs into the weights as they load (see
    /// [`crate::load`] for what is read from where). In [`LoraMode::Runtime`] on a backend with an
    /// unmerged path, the UNet's LoRA targets get their buffers instead and the LoRAs are set as
    /// [`Pipeline::set_loras`] sets them.
    pub fn load(backend: B, spec: LoadSpec) -> Result<Self> {
        // Runtime mode on a backend with an unmerged path loads the base weights, gives the UNet's LoRA
        // targets their buffers, then sets the LoRAs as a swap would.
        let unmerged = spec.lora_mode == LoraMode::Runtime && backend.supports_unmerged_lora();
        let base = LoadSpec { loras: if unmerged { Vec::new() } else { spec.loras.clone() }, ..spec.clone() };
        let c = crate::load::load(&backend, &base)?;
        let (text, unet, vae, scheduler) = (c.text, c.unet, c.vae, c.scheduler);
        let mut p = Pipeline {
            backend,
            spec: base,
            text,
            unet,
            vae,
            vae_backend: c.vae_backend,
            vae_tiling: None,
            scheduler,
            lora_merged: c.lora_merged,
            slots: None,
        };
        if unmerged {
            // Buffers for the largest rank the load's LoRAs put on one weight (their ranks summed there).
            let set = LoraSet::open(&spec.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
            let merger = set.resolve(&p.lora_targets()?)?;
            let load_rank = merger.targets().map(|t| merger.rank(t)).max().unwrap_or(0);
            let max_rank = spec.max_lora_rank.unwrap_or(DEFAULT_MAX_LORA_RANK.max(load_rank));
            p.attach_lora_slots(max_rank)?;
            p.set_loras(&spec.loras)?;
        }
        Ok(p)
    }

    /// Tiled VAE decoding and encoding, as diffusers' `pipe.enable_vae_tiling()`: images larger than a
    /// tile run through the VAE tile by tile with blended seams, so the VAE's memory is bounded by one
    /// tile whatever the image size (the image differs slightly from an untiled one, as diffusers'
    /// does). `Some(None)`: tiles of the VAE config's `sample_size`; `Some(Some(px))`: of `px` pixels (a
    /// multiple of 32 for SD's VAE); `None`: off.
    pub fn set_vae_tiling(&mut self, tiling: Option<Option<usize>>) -> Result<()> {
        self.vae_tiling = tiling.map(|px| VaeTiling::new(&self.vae.config, px)).transpose()?;
        Ok(())
    }

    /// The scheduler's `original_inference_steps`: the most steps a request may ask for.
    pub fn original_steps(&self) -> usize {
        self.scheduler.config().original_inference_steps
    }

    /// Whether the VAE runs with f32 activations on a backend whose own are f16: an SDXL-family VAE
    /// whose config says `force_upcast`, as diffusers' SDXL pipelines upcast it (always false on the
    /// CPU, whose activations are f32 anyway).
    pub fn vae_upcast(&self) -> bool {
        self.vae_backend.is_some()
    }

    /// Whether this UNet takes the guidance scale as an embedding (a distilled LCM) rather than CFG.
    pub fn has_guidance_embedding(&self) -> bool {
        self.unet.config.time_cond_proj_dim.is_some()
    }

    /// Runs one request. `progress` is called after each UNet step (on CUDA, where the loop is one
    /// graph replay, once per step after the loop has run).
    pub fn generate(&mut self, req: &Request, progress: &mut dyn FnMut(StepEvent)) -> Result<Output> {
        self.generate_with(req, progress, None)
    }

    /// [`Pipeline::generate`] that stops with `Error::Cancelled` once `cancel` is set: checked between
    /// the stages, and between steps where the backend runs ops one by one (the CPU).
    ///
    /// The whole denoising loop is one graph (`lcm_models::denoise`): every random number is drawn up
    /// front in diffusers' order and written once with the schedule and the timesteps; the prompt's
    /// embeddings go from the text encoder into the loop, and the final latents from the loop into the
    /// VAE, on the backend. Only the latents and the image come back.
    pub fn generate_with(
        &mut self,
        req: &Request,
        progress: &mut dyn FnMut(StepEvent),
        cancel: Option<&AtomicBool>,
    ) -> Result<Output> {
        let mut outs = self.generate_batch(std::slice::from_ref(req), progress, cancel)?;
        Ok(outs.pop().expect("one request gives one output"))
    }

    /// Several requests run as one batch (a server batching its queue): each request keeps its own
    /// prompts and its own generator, so its images are those [`Pipeline::generate`] gives for it
    /// alone; the batch shares one denoising graph of the summed image count. The requests must share
    /// width, height, steps and guidance scale (the schedule), and be all txt2img or all img2img with
    /// one strength (img2img's schedule depends on it; each request keeps its own init image, encoded
    /// alone, so its posterior sample is the one it gets unbatched: `lcm frames`).
    /// Outputs come back in the requests' order; `times` are the batch's.
    pub fn generate_batch(
        &mut self,
        reqs: &[Request],
        progress: &mut dyn FnMut(StepEvent),
        cancel: Option<&AtomicBool>,
    ) -> Result<Vec<Output>> {
        let Some(req) = reqs.first() else { return Ok(Vec::new()) };
        for r in reqs {
            r.validate(self.original_steps())?;
            let strength = |r: &Request| r.init_image.as_ref().map(|i| i.strength.to_bits());
            let same = (r.width, r.height, r.steps, r.guidance_scale.to_bits(), strength(r))
                == (req.width, req.height, req.steps, req.guidance_scale.to_bits(), strength(req));
            if !same {
                return Err(Error::invalid(
                    "batch",
                    "requests batched together must share width, height, steps and guidance scale, and be \
                     all txt2img or all img2img with one strength",
                ));
            }
        }
        let start = Instant::now();
        let stop = || if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) { Err(Error::Cancelled) } else { Ok(()) };
        let n: usize = reqs.iter().map(|r| r.num_images).sum();
        let (timesteps, first) = self.timesteps(req)?;
        let run = &timesteps[first..];
        let guided = !self.has_guidance_embedding() && req.guidance_scale > 1.0;
        let scale = self.vae.config.downscale();
        let (h, w, c) = (req.height / scale, req.width / scale, self.unet.config.in_channels);
        let nchw = vec![n, c, h, w];
        let per_image = c * h * w;

        // Every draw of each request, in diffusers' order, from its own generator: the latents
        // (img2img: the posterior sample, then the noise), then one noise tensor per step but the
        // last. The batch's noise is step-major: step k holds every image's draw for that step.
        let mut latents = Vec::with_capacity(n * per_image);
        let mut noise = vec![0.0f32; n * per_image * (run.len() - 1).max(1)]; // one step reads none
        let mut image0 = 0;
        for r in reqs {
            let mut rng = TorchRng::new(r.seed);
            let numel = r.num_images * per_image;
            latents.extend(match &r.init_image {
                None => rng.randn(numel), // init_noise_sigma is 1 for LCM
                Some(init) => self.noised_image_latents(init, r.num_images, run[0], &mut rng)?,
            });
            for k in 1..run.len() {
                let z = Tensor::new(vec![r.num_images, c, h, w], rng.randn(numel)).nchw_to_nhwc().data;
                let at = ((k - 1) * n + image0) * per_image;
                noise[at..at + numel].copy_from_slice(&z);
            }
            image0 += r.num_images;
        }
        let shape = DenoiseShape { images: n, h, w, ctx_len: CLIP_MAX_LEN, steps: run.len(), guided };
        let batch = shape.batch();
        let timestep_rows: Vec<f32> = run.iter().flat_map(|&t| std::iter::repeat_n(t as f32, batch)).collect();
        let schedule: Vec<f32> = (first..timesteps.len())
            .flat_map(|i| self.scheduler.row(i, req.guidance_scale).as_slice().to_vec())
            .collect();
        let w_embedding =
            self.unet.config.time_cond_proj_dim.map(|d| guidance_embedding(&vec![req.guidance_scale - 1.0; n], d));
        let vae = &self.vae.config;
        let dcfg = DenoiseConfig {
            prediction: self.scheduler.config().prediction_type,
            clip: self.scheduler.config().clip_sample,
            vae_scale: vae.scaling_factor,
            vae_shift: vae.shift_factor.unwrap_or(0.0),
            context_split: self.text.context_split(),
        };
        let inputs = self.unet.config.denoise_inputs(&dcfg);
        // SDXL's micro-conditioning, diffusers' defaults: original size = target size = (h, w), crop
        // (0, 0), the same for the negative; one column per row of the UNet's batch.
        let time_ids: Vec<f32> = [req.height, req.width, 0, 0, req.height, req.width]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v as f32, batch))
            .collect();

        let Pipeline { backend, text, unet, vae, vae_backend, vae_tiling, .. } = self;
        let vae_be = vae_backend.as_ref().unwrap_or(backend);
        let (den, weights) = unet.denoiser(backend, &shape, &dcfg)?;
        // The decoder's arena too, before any work: a size the memory cannot hold fails here, not after
        // the loop. (Tiles are planned as they come; their arenas are small.)
        if vae_tiling.is_none() {
            vae.prepare_decoder(vae_be, n, h, w)?;
        }
        stop()?;
        let t0 = Instant::now();
        let mut prompts = Vec::with_capacity(reqs.len());
        let mut image0 = 0;
        for r in reqs {
            let negative = r.negative_prompt.as_deref();
            prompts.push(PromptRows { prompt: &r.prompt, negative, first: image0, count: r.num_images });
            image0 += r.num_images;
        }
        text.encode_into(backend, &prompts, n, guided, den, &inputs)?;
        let text_time = t0.elapsed();
        if let Some(i) = inputs.time_ids {
            den.set_input(backend, i, HostData::F32(&time_ids))?;
        }

        den.set_input(backend, input::LATENTS, HostData::F32(&Tensor::new(nchw.clone(), latents).nchw_to_nhwc().data))?;
        den.set_input(backend, input::TIMESTEPS, HostData::F32(&timestep_rows))?;
        den.set_input(backend, input::SCHEDULE, HostData::F32(&schedule))?;
        den.set_input(backend, input::NOISE, HostData::F32(&noise))?;
        if let Some(e) = &w_embedding {
            den.set_input(backend, input::COND, HostData::F32(e))?;
        }
        stop()?;

        // Progress and cancellation at each LCM step op, where the backend runs ops one by one.
        let step_ops: Vec<usize> = den
            .graph()
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, Op::LcmStep { .. }))
            .map(|(i, _)| i)
            .collect();
        let t_loop = Instant::now();
        let mut unet_steps = Vec::with_capacity(run.len());
        let mut last = t_loop;
        let mut report = |k: usize, unet_steps: &mut Vec<Duration>, now: Instant| {
            unet_steps.push(now - last);
            last = now;
            progress(StepEvent { step: k + 1, steps: run.len(), timestep: run[k], elapsed: start.elapsed() });
        };
        den.run_watched(backend, weights, &mut |op| {
            if let Some(k) = step_ops.iter().position(|&o| o == op) {
                report(k, &mut unet_steps, Instant::now());
                stop()?;
            }
            Ok(())
        })?;
        let denoised = Tensor::new(vec![n, h, w, c], den.output(backend, 0)?).nhwc_to_nchw();
        check_finite("denoising loop", &denoised.data, "the final latents")?;
        // A backend that queued the whole loop called nothing: its steps share the loop's time.
        let done = unet_steps.len();
        if done < run.len() {
            let each = t_loop.elapsed() / run.len() as u32;
            for k in done..run.len() {
                unet_steps.push(each);
                progress(StepEvent { step: k + 1, steps: run.len(), timestep: run[k], elapsed: start.elapsed() });
            }
        }
        stop()?;

        let tv = Instant::now();
        let img = match vae_tiling {
            // Tiles are cut on the host; the latents come back first.
            Some(tiling) => {
                let z = Tensor::new(den.output_shape(1).to_vec(), den.output(backend, 1)?).nhwc_to_nchw();
                vae.decode_tiled(vae_be, &z, *tiling)?
            }
            None => vae.decode_from(vae_be, den, 1)?,
        }
        .nchw_to_nhwc();
        check_vae_output(&img.data, &vae.config, vae_be.act_bytes() < 4)?;
        let images = Tensor::new(img.shape, img.data.iter().map(|&v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect());
        let vae_time = tv.elapsed();
        let times = StageTimes { text_encoder: text_time, unet_steps, vae_decode: vae_time, total: start.elapsed() };
        let (per_latent, per_pixel) = (denoised.numel() / n, images.numel() / n);
        let mut outs = Vec::with_capacity(reqs.len());
        let mut image0 = 0;
        for r in reqs {
            let k = r.num_images;
            let slice = |t: &Tensor, per: usize| {
                let shape = std::iter::once(k).chain(t.shape[1..].iter().copied()).collect();
                Tensor::new(shape, t.data[image0 * per..(image0 + k) * per].to_vec())
            };
            outs.push(Output {
                latents: slice(&denoised, per_latent),
                images: slice(&images, per_pixel),
                times: times.clone(),
            });
            image0 += k;
        }
        Ok(outs)
    }

    /// The schedule and the index of its first step to run. txt2img and LCM img2img run all of it (LCM's
    /// img2img shortens the origin grid by the strength: LatentConsistencyModelImg2ImgPipeline); SD img2img
    /// keeps the last int(n·strength) steps (StableDiffusionImg2ImgPipeline's `get_timesteps`).
    fn timesteps(&mut self, req: &Request) -> Result<(Vec<i64>, usize)> {
        let n = req.steps;
        match &req.init_image {
            None => Ok((self.scheduler.set_timesteps(n, 1.0)?.to_vec(), 0)),
            Some(init) if self.has_guidance_embedding() => {
                Ok((self.scheduler.set_timesteps(n, init.strength as f64)?.to_vec(), 0))
            }
            Some(init) => {
                let all = self.scheduler.set_timesteps(n, 1.0)?.to_vec();
                let keep = ((n as f64 * init.strength as f64) as usize).min(n);
                if keep == 0 {
                    return Err(Error::invalid(
                        "--strength",
                        format!("{} of {n} steps runs none; raise --strength or --steps", init.strength),
                    ));
                }
                Ok((all, n - keep))
            }
        }
    }

    /// diffusers' img2img `prepare_latents`: a sample of the VAE posterior (`mean + std·z`, log-variance
    /// clamped to [-30, 20]) times the scaling factor, repeated for the batch, then noised to the first
    /// timestep — two draws from the generator, in that order. TAESD's encoder gives latents, not a
    /// distribution (`retrieve_latents` takes `.latents`): then only the noise is drawn.
    fn noised_image_latents(&mut self, init: &InitImage, n: usize, t: i64, rng: &mut TorchRng) -> Result<Vec<f32>> {
        let vae_dir = self.spec.model_dir.join("vae");
        let be = self.vae_backend.as_ref().unwrap_or(&self.backend);
        self.vae.load_encoder(be, &vae_dir, self.spec.variant)?;
        let sf = self.vae.config.scaling_factor;
        let one: Vec<f32> = match self.vae.encode(be, &init.pixels, self.vae_tiling)? {
            Encoded::Moments(moments) => {
                let per = moments.numel() / 2;
                let (mean, logvar) = moments.data.split_at(per);
                let z = rng.randn(per);
                (0..per).map(|i| (mean[i] + (0.5 * logvar[i].clamp(-30.0, 20.0)).exp() * z[i]) * sf).collect()
            }
            Encoded::Latents(latents) => latents.data.iter().map(|&v| v * sf).collect(),
        };
        let mut latents = one.repeat(n);
        let noise = rng.randn(latents.len());
        self.scheduler.add_noise(&mut latents, &noise, t)?;
        Ok(latents)
    }

    /// `vae.decode(latents / scaling_factor + shift_factor)` for NCHW `latents`, then diffusers'
    /// postprocessing to [0, 1], as NHWC `[N, H, W, 3]`.
    pub fn decode(&mut self, latents: &Tensor) -> Result<Tensor> {
        let cfg = &self.vae.config;
        let (sf, shift) = (cfg.scaling_factor, cfg.shift_factor.unwrap_or(0.0));
        let z = Tensor::new(latents.shape.clone(), latents.data.iter().map(|&v| v / sf + shift).collect());
        let be = self.vae_backend.as_ref().unwrap_or(&self.backend);
        let img = match self.vae_tiling {
            Some(tiling) => self.vae.decode_tiled(be, &z, tiling)?,
            None => self.vae.decode(be, &z)?,
        }
        .nchw_to_nhwc();
        check_vae_output(&img.data, &self.vae.config, be.act_bytes() < 4)?;
        Ok(Tensor::new(img.shape, img.data.iter().map(|&v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect()))
    }

    /// The weights LoRAs may target in this pipeline's UNet and text encoder(s).
    pub(crate) fn lora_targets(&self) -> Result<Targets> {
        let te2 = self.text.second.as_ref().map(|te2| &te2.model.config);
        crate::load::targets(&self.unet.config, &self.text.first.model.config, te2)
    }

    /// The image size a request without one gets: the UNet's `sample_size` times the VAE's factor, as
    /// diffusers' pipelines default (512 for SD1.5, 1024 for SDXL; see [`crate::load::default_image_size`]).
    pub fn default_size(&self) -> usize {
        let size = self.unet.config.default_image_size(self.vae.config.downscale());
        size.unwrap_or(crate::load::FALLBACK_IMAGE_SIZE)
    }

    /// Whether this pipeline runs SDXL's two text encoders.
    pub fn is_sdxl(&self) -> bool {
        self.text.second.is_some()
    }
}

/// A stage's result must be finite: NaN or infinity there would otherwise become a black or noisy PNG.
fn check_finite(stage: &str, data: &[f32], what: &str) -> Result<()> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    Err(Error::non_finite(stage, format!("{bad} of {} values of {what} are NaN or infinite", data.len())))
}

/// [`check_finite`] for the decoded image, naming the likely cause when the VAE asks for f32 decoding
/// (`force_upcast`) but ran in f16 (`in_f16`: an SD1.5-family pipeline on CUDA, which diffusers does not
/// upcast either).
fn check_vae_output(data: &[f32], vae: &lcm_models::VaeConfig, in_f16: bool) -> Result<()> {
    check_finite("vae decode", data, "the decoded image").map_err(|e| match e {
        Error::NonFinite { stage, msg } if vae.force_upcast && in_f16 => Error::non_finite(
            stage,
            format!(
                "{msg}; this VAE's config says force_upcast (it overflows in f16, as SDXL's does), and this \
                 pipeline decodes it in f16 as diffusers' StableDiffusionPipeline does (only SDXL pipelines \
                 upcast): use an fp16-safe VAE or --device cpu"
            ),
        ),
        e => e,
    })
}
