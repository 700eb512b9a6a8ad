//! txt2img and img2img with a Latent Consistency Model, in the order diffusers works and draws.
//!
//! The order of work and of random draws is diffusers' (StableDiffusionPipeline with LCMScheduler, or
//! LatentConsistencyModelPipeline for UNets with `time_cond_proj_dim`; their Img2Img variants with an
//! init image; the StableDiffusionXL ones for SDXL), so the same seed gives the same image: latents
//! first (for img2img: the VAE posterior sample, then the noise), then one noise draw after each UNet
//! call but the last, all from one torch-compatible generator.
//!
//! A batch runs in named steps: `check_batch`, `lay_out` (the schedule, every random draw and every
//! host input), then on the backend the text encoders into the loop's context, the loop (`run_loop`)
//! and the VAE straight from the loop's output (`decode_loop_output`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Error, Executor, HostData, ModelWeights, Op, Result, Tensor};
use lcm_models::denoise::{input, DenoiseConfig, DenoiseInputs, DenoiseShape, Inpaint};

use super::control::{control_inputs, ControlInputs};
use super::inpaint::Inpainted;
use lcm_models::{Encoded, Vae, VaeConfig, VaeTiling};

use super::{Output, Pipeline, StageTimes, StepEvent};
use crate::rng::TorchRng;
use crate::scheduler::{guidance_embedding, SamplerKind, Scheduler};
use crate::spec::{BatchKey, Field, InitImage, Request};
use crate::text::{PromptPlan, PromptRows};

/// One batch's denoising loop, laid out before any model runs: its graph's shape and settings, the
/// timesteps it runs and every host input, random draws included.
struct Batch {
    shape: DenoiseShape,
    config: DenoiseConfig,
    inputs: DenoiseInputs,
    /// The latents' channels (the UNet's `in_channels`).
    channels: usize,
    /// The timesteps the loop runs.
    run: Vec<f64>,
    /// The initial latents, NHWC.
    latents: Vec<f32>,
    /// One noise tensor per step that takes noise (`NoiseSteps::rows`), NHWC and step-major: step k
    /// holds every image's draw for that step.
    noise: Vec<f32>,
    /// Each step's timestep, once per row of the UNet's batch.
    timestep_rows: Vec<f32>,
    /// The scheduler's row of each step run.
    schedule: Vec<f32>,
    /// w = guidance_scale − 1, embedded, for a UNet with `time_cond_proj_dim`.
    w_embedding: Option<Vec<f32>>,
    /// SDXL's micro-conditioning, one column per row of the UNet's batch.
    time_ids: Vec<f32>,
    /// The ControlNets' ids (in the pipeline's `ControlNets`), in the requests' order.
    control_ids: Vec<usize>,
    /// Inpainting's inputs in the graph's order (`lcm_models::denoise::Inpaint`).
    inpaint: Vec<Vec<f32>>,
}

/// One batch's random draws and what inpainting derives from the images, NHWC.
struct Draws {
    /// The initial latents.
    latents: Vec<f32>,
    /// One noise tensor per step that takes noise (at least one), step-major.
    noise: Vec<f32>,
    /// Inpainting's inputs in the graph's order.
    inpaint: Vec<Vec<f32>>,
}

impl<B: Backend> Pipeline<B> {
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
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        self.check_batch(reqs)?;
        let downscale = self.vae.config.downscale();
        let control_ids = self.controlnets.ensure(
            &self.backend,
            &reqs[0].controls,
            &self.unet.config,
            downscale,
            self.spec.variant,
        )?;
        let start = Instant::now();
        let stop = || if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) { Err(Error::Cancelled) } else { Ok(()) };
        // The prompts' chunks fix the loop's context length; too long a prompt fails here, before work.
        let guided = self.guided(&reqs[0]);
        let plan = self.text.plan(reqs[0].prompt_syntax, &prompt_rows(reqs), guided)?;
        let batch = self.lay_out(reqs, control_ids, &plan)?;

        let Pipeline { backend, text, unet, vae, vae_backend, vae_tiling, controlnets, .. } = self;
        let vae_be = vae_backend.as_ref().unwrap_or(backend);
        let control = control_inputs(controlnets, &batch.control_ids, reqs, batch.run.len(), batch.shape.guided);
        let control_weights = controlnets.weights(&batch.control_ids);
        let (den, weights) =
            unet.denoiser(backend, &batch.shape, &batch.config, &control.controls, &control_weights)?;
        let parts: Vec<_> = std::iter::once(weights).chain(control_weights.iter().copied()).collect();
        // The decoder's arena too, before any work: a size the memory cannot hold fails here, not after
        // the loop. (Tiles are planned as they come; their arenas are small.)
        if vae_tiling.is_none() {
            vae.prepare_decoder(vae_be, batch.shape.images, batch.shape.h, batch.shape.w)?;
        }
        stop()?;
        let t0 = Instant::now();
        let (n, guided) = (batch.shape.images, batch.shape.guided);
        text.encode_into(backend, &plan, &prompt_rows(reqs), n, guided, den, &batch.inputs)?;
        let text_encoder = t0.elapsed();
        batch.set_inputs(backend, den, &control)?;
        stop()?;

        let (denoised, unet_steps) = batch.run_loop(backend, den, &parts, progress, &stop, start)?;
        stop()?;

        let tv = Instant::now();
        let images = decode_loop_output(vae, backend, vae_be, *vae_tiling, den)?;
        let times = StageTimes { text_encoder, unet_steps, vae_decode: tv.elapsed(), total: start.elapsed() };
        Ok(split_outputs(reqs, &denoised, &images, &times))
    }

    /// Every request valid, and all of them on one schedule (see [`Pipeline::generate_batch`]): equal
    /// [`BatchKey`]s, the default sampler resolved.
    fn check_batch(&self, reqs: &[Request]) -> Result<()> {
        let key = |r: &Request| BatchKey { sampler: Some(r.sampler.unwrap_or(self.sampler())), ..r.batch_key() };
        let first = key(&reqs[0]);
        for r in reqs {
            r.validate(self.max_steps(r.sampler.as_ref())?)?;
            if key(r) != first {
                return Err(Error::invalid(
                    "batch",
                    "requests batched together must share width, height, steps and guidance scale, be \
                     all txt2img, all img2img or all inpainting with one strength, and use the same \
                     sampler, prompt syntax and ControlNets with the same guidance windows",
                ));
            }
        }
        Ok(())
    }

    /// Whether `req` runs classic CFG: a guidance scale above 1 on a UNet without a guidance embedding.
    fn guided(&self, req: &Request) -> bool {
        !self.has_guidance_embedding() && req.guidance_scale > 1.0
    }

    /// The batch's loop before it runs: the schedule, every random draw (img2img encodes the init
    /// images here) and the loop's other inputs.
    fn lay_out(&mut self, reqs: &[Request], control_ids: Vec<usize>, prompts: &PromptPlan) -> Result<Batch> {
        let req = &reqs[0];
        let n: usize = reqs.iter().map(|r| r.num_images).sum();
        let inpaint = self.inpaint_kind(req)?; // before the schedule: a missing mask is the first error
        let mut scheduler = self.scheduler_for(req.sampler.as_ref())?;
        let first = self.timesteps(req, &mut scheduler)?;
        let run = scheduler.timesteps()[first..].to_vec();
        let guided = self.guided(req);
        let scale = self.vae.config.downscale();
        let (h, w) = (req.height / scale, req.width / scale);
        let (sampling, noise) = (scheduler.sampling(), scheduler.noise_steps());
        let (ctx_len, uncond) = (prompts.cond_tokens, prompts.uncond_tokens);
        let uncond_ctx_len = (guided && uncond != ctx_len).then_some(uncond);
        let steps = run.len();
        let shape = DenoiseShape { images: n, h, w, ctx_len, uncond_ctx_len, steps, sampling, noise, guided, inpaint };
        let channels = self.unet.config.out_channels;
        let Draws { latents, noise, inpaint: inpaint_inputs } = self.draw(reqs, &shape, channels, &scheduler, first)?;

        let batch = shape.batch();
        let timestep_rows = run.iter().flat_map(|&t| std::iter::repeat_n(t as f32, batch)).collect();
        let schedule = (first..scheduler.timesteps().len())
            .flat_map(|i| scheduler.row(i, req.guidance_scale).as_slice().to_vec())
            .collect();
        let w_embedding =
            self.unet.config.time_cond_proj_dim.map(|d| guidance_embedding(&vec![req.guidance_scale - 1.0; n], d));
        let vae = &self.vae.config;
        let config = DenoiseConfig {
            vae_scale: vae.scaling_factor,
            vae_shift: vae.shift_factor.unwrap_or(0.0),
            context_split: self.text.context_split(),
        };
        let inputs = self.unet.config.denoise_inputs(&config, inpaint, control_ids.len());
        // SDXL's micro-conditioning, diffusers' defaults: original size = target size = (h, w), crop
        // (0, 0), the same for the negative; one column per row of the UNet's batch.
        let time_ids = [req.height, req.width, 0, 0, req.height, req.width]
            .iter()
            .flat_map(|&v| std::iter::repeat_n(v as f32, batch))
            .collect();
        Ok(Batch {
            shape,
            config,
            inputs,
            channels,
            run,
            latents,
            noise,
            timestep_rows,
            schedule,
            w_embedding,
            time_ids,
            control_ids,
            inpaint: inpaint_inputs,
        })
    }

    /// Every draw of each request, in diffusers' order, from its own generator: the latents (img2img:
    /// the posterior sample, then the noise; inpainting: see [`Pipeline::inpaint_draws`]), then one
    /// noise tensor for each step that takes noise. The noise is step-major (row k holds every image's
    /// draw for step k). `first` is the schedule's first step run.
    fn draw(
        &mut self,
        reqs: &[Request],
        shape: &DenoiseShape,
        c: usize,
        scheduler: &Scheduler,
        first: usize,
    ) -> Result<Draws> {
        let (n, h, w) = (shape.images, shape.h, shape.w);
        let per_image = c * h * w;
        let nchw = |k: usize, data: Vec<f32>| Tensor::new(vec![k, c, h, w], data).nchw_to_nhwc().data;
        let mut latents = Vec::with_capacity(n * per_image);
        let mut noise = vec![0.0f32; n * per_image * shape.noise_rows()];
        let mut inpaint = Inpainted::default();
        let mut image0 = 0;
        let sigma = scheduler.init_noise_sigma();
        for r in reqs {
            let mut rng = TorchRng::new(r.seed);
            let numel = r.num_images * per_image;
            match (&r.init_image, shape.inpaint) {
                // prepare_latents: randn · init_noise_sigma (1 but for Euler, where × 1 is exact).
                (None, _) => latents.extend(nchw(r.num_images, rng.randn(numel).iter().map(|z| z * sigma).collect())),
                (Some(init), None) => {
                    let l = self.noised_image_latents(init, r.num_images, scheduler, first, &mut rng)?;
                    latents.extend(nchw(r.num_images, l))
                }
                (Some(init), Some(kind)) => {
                    let mut d = self.inpaint_draws(init, r.num_images, (scheduler, first), kind, (h, w), &mut rng)?;
                    latents.extend(nchw(r.num_images, std::mem::take(&mut d.latents)));
                    inpaint.extend(d, nchw, r.num_images);
                }
            }
            for k in (0..shape.steps).filter(|&k| shape.noise.at(k, shape.steps)) {
                let z = nchw(r.num_images, rng.randn(numel));
                let at = (k * n + image0) * per_image;
                noise[at..at + numel].copy_from_slice(&z);
            }
            image0 += r.num_images;
        }
        let inpaint = match shape.inpaint {
            None => Vec::new(),
            // The guided batch's uncond rows take the same mask and masked image as the cond rows.
            Some(Inpaint::Concat) => {
                let twice = |v: Vec<f32>| if shape.guided { v.repeat(2) } else { v };
                vec![twice(inpaint.mask), twice(inpaint.masked)]
            }
            Some(Inpaint::Blend) => vec![inpaint.image, inpaint.noise0, inpaint.mask],
        };
        Ok(Draws { latents, noise, inpaint })
    }

    /// The VAE's latents of `pixels` (`[1, 3, H, W]` in [-1, 1]) times the scaling factor, NCHW: a
    /// posterior sample (one draw from `rng`) for AutoencoderKL, the encoder's output for TAESD.
    pub(super) fn image_latents(&mut self, pixels: &Tensor, rng: &mut TorchRng) -> Result<Vec<f32>> {
        let vae_dir = self.spec.model_dir.join("vae");
        let be = self.vae_backend.as_ref().unwrap_or(&self.backend);
        self.vae.load_encoder(be, &vae_dir, self.spec.variant)?;
        let sf = self.vae.config.scaling_factor;
        Ok(match self.vae.encode(be, pixels, self.vae_tiling)? {
            Encoded::Moments(moments) => {
                let per = moments.numel() / 2;
                let (mean, logvar) = moments.data.split_at(per);
                let z = rng.randn(per);
                (0..per).map(|i| (mean[i] + (0.5 * logvar[i].clamp(-30.0, 20.0)).exp() * z[i]) * sf).collect()
            }
            Encoded::Latents(latents) => latents.data.iter().map(|&v| v * sf).collect(),
        })
    }

    /// The schedule and the index of its first step to run. txt2img and LCM img2img run all of it (LCM's
    /// img2img shortens the origin grid by the strength: LatentConsistencyModelImg2ImgPipeline); SD img2img
    /// keeps the last int(n·strength) steps (StableDiffusionImg2ImgPipeline's `get_timesteps`).
    fn timesteps(&self, req: &Request, scheduler: &mut Scheduler) -> Result<usize> {
        let n = req.steps;
        match &req.init_image {
            None => scheduler.set_timesteps(n, 1.0).map(|_| 0),
            // The inpainting pipelines keep the last int(n·strength) steps for every UNet.
            Some(init)
                if self.has_guidance_embedding() && init.mask.is_none() && scheduler.kind() == SamplerKind::Lcm =>
            {
                scheduler.set_timesteps(n, init.strength as f64).map(|_| 0)
            }
            Some(init) => {
                scheduler.set_timesteps(n, 1.0)?;
                let keep = ((n as f64 * init.strength as f64) as usize).min(n);
                if keep == 0 {
                    return Err(Field::Strength
                        .invalid(format!("{} of {n} steps runs none; raise strength or steps", init.strength)));
                }
                Ok(n - keep)
            }
        }
    }

    /// diffusers' img2img `prepare_latents`: a sample of the VAE posterior (`mean + std·z`, log-variance
    /// clamped to [-30, 20]) times the scaling factor, repeated for the batch, then noised to the first
    /// timestep — two draws from the generator, in that order. TAESD's encoder gives latents, not a
    /// distribution (`retrieve_latents` takes `.latents`): then only the noise is drawn.
    fn noised_image_latents(
        &mut self,
        init: &InitImage,
        n: usize,
        scheduler: &Scheduler,
        first: usize,
        rng: &mut TorchRng,
    ) -> Result<Vec<f32>> {
        let mut latents = self.image_latents(&init.pixels, rng)?.repeat(n);
        let noise = rng.randn(latents.len());
        scheduler.add_noise(&mut latents, &noise, first)?;
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
        };
        postprocess(img, &self.vae.config, be.act_bytes() < 4)
    }
}

impl Batch {
    /// Writes the loop's inputs (the text encoders wrote its context).
    fn set_inputs<B: Backend>(&self, backend: &B, den: &mut Executor<B>, control: &ControlInputs) -> Result<()> {
        if let Some(first) = self.inputs.inpaint {
            for (k, data) in self.inpaint.iter().enumerate() {
                den.set_input(backend, first + k, HostData::F32(data))?;
            }
        }
        if let (Some(first), Some(scales)) = (self.inputs.control_images, self.inputs.control_scales) {
            for (k, img) in control.images.iter().enumerate() {
                den.set_input(backend, first + k, HostData::F32(img))?;
            }
            den.set_input(backend, scales, HostData::F32(&control.scales))?;
        }
        if let Some(i) = self.inputs.time_ids {
            den.set_input(backend, i, HostData::F32(&self.time_ids))?;
        }
        den.set_input(backend, input::LATENTS, HostData::F32(&self.latents))?;
        den.set_input(backend, input::TIMESTEPS, HostData::F32(&self.timestep_rows))?;
        den.set_input(backend, input::SCHEDULE, HostData::F32(&self.schedule))?;
        den.set_input(backend, input::NOISE, HostData::F32(&self.noise))?;
        if let Some(e) = &self.w_embedding {
            den.set_input(backend, input::COND, HostData::F32(e))?;
        }
        Ok(())
    }

    /// Runs the loop, reporting each step to `progress` and checking `stop` at each LCM step op where
    /// the backend runs ops one by one; a backend that queued the whole loop has its steps reported
    /// after it, sharing the loop's time. Returns the final latents (NCHW) and each step's time.
    fn run_loop<B: Backend>(
        &self,
        backend: &B,
        den: &mut Executor<B>,
        weights: &[&ModelWeights<B>],
        progress: &mut dyn FnMut(StepEvent),
        stop: &dyn Fn() -> Result<()>,
        start: Instant,
    ) -> Result<(Tensor, Vec<Duration>)> {
        let run = &self.run;
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
        let mut watch = |op| {
            if let Some(k) = step_ops.iter().position(|&o| o == op) {
                report(k, &mut unet_steps, Instant::now());
                stop()?;
            }
            Ok(())
        };
        den.run_parts(backend, weights, Some(&mut watch))?;
        let (n, h, w, c) = (self.shape.images, self.shape.h, self.shape.w, self.channels);
        let denoised = Tensor::new(vec![n, h, w, c], den.output(backend, 0)?).nhwc_to_nchw();
        check_finite("denoising loop", &denoised.data, "the final latents")?;
        let done = unet_steps.len();
        if done < run.len() {
            let each = t_loop.elapsed() / run.len() as u32;
            for k in done..run.len() {
                unet_steps.push(each);
                progress(StepEvent { step: k + 1, steps: run.len(), timestep: run[k], elapsed: start.elapsed() });
            }
        }
        Ok((denoised, unet_steps))
    }
}

/// Each request's prompts and the images of the batch they are for, in the requests' order.
fn prompt_rows(reqs: &[Request]) -> Vec<PromptRows<'_>> {
    let mut image0 = 0;
    reqs.iter()
        .map(|r| {
            let rows = PromptRows {
                prompt: &r.prompt,
                negative: r.negative_prompt.as_deref(),
                first: image0,
                count: r.num_images,
            };
            image0 += r.num_images;
            rows
        })
        .collect()
}

/// Decodes the loop's output 1 (latents / scaling_factor + shift_factor) on the VAE's backend `vae_be`:
/// straight from the loop's buffer, or, tiled, from the latents read back first (tiles are cut on the
/// host). Then diffusers' postprocessing, as NHWC `[N, H, W, 3]` in [0, 1].
fn decode_loop_output<B: Backend>(
    vae: &mut Vae<B>,
    backend: &B,
    vae_be: &B,
    tiling: Option<VaeTiling>,
    den: &Executor<B>,
) -> Result<Tensor> {
    let img = match tiling {
        Some(tiling) => {
            let z = Tensor::new(den.output_shape(1).to_vec(), den.output(backend, 1)?).nhwc_to_nchw();
            vae.decode_tiled(vae_be, &z, tiling)?
        }
        None => vae.decode_from(vae_be, den, 1)?,
    };
    postprocess(img, &vae.config, vae_be.act_bytes() < 4)
}

/// A decoded NCHW image in [-1, 1], checked finite ([`check_vae_output`]), as NHWC in [0, 1]
/// (diffusers' `VaeImageProcessor.postprocess`: x/2 + 0.5, clamped).
fn postprocess(img: Tensor, vae: &VaeConfig, in_f16: bool) -> Result<Tensor> {
    let img = img.nchw_to_nhwc();
    check_vae_output(&img.data, vae, in_f16)?;
    Ok(Tensor::new(img.shape, img.data.iter().map(|&v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect()))
}

/// The batch's latents and images cut into one [`Output`] per request, in the requests' order.
fn split_outputs(reqs: &[Request], denoised: &Tensor, images: &Tensor, times: &StageTimes) -> Vec<Output> {
    let n: usize = reqs.iter().map(|r| r.num_images).sum();
    let (per_latent, per_pixel) = (denoised.numel() / n, images.numel() / n);
    let mut image0 = 0;
    reqs.iter()
        .map(|r| {
            let k = r.num_images;
            let slice = |t: &Tensor, per: usize| {
                let shape = std::iter::once(k).chain(t.shape[1..].iter().copied()).collect();
                Tensor::new(shape, t.data[image0 * per..(image0 + k) * per].to_vec())
            };
            let out =
                Output { latents: slice(denoised, per_latent), images: slice(images, per_pixel), times: times.clone() };
            image0 += k;
            out
        })
        .collect()
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
fn check_vae_output(data: &[f32], vae: &VaeConfig, in_f16: bool) -> Result<()> {
    check_finite("vae decode", data, "the decoded image").map_err(|e| match e {
        Error::NonFinite { stage, msg } if vae.force_upcast && in_f16 => Error::non_finite(
            stage,
            format!(
                "{msg}; this VAE's config says force_upcast (it overflows in f16, as SDXL's does), and this \
                 pipeline decodes it in f16 as diffusers' StableDiffusionPipeline does (only SDXL pipelines \
                 upcast): use an fp16-safe VAE or the CPU backend"
            ),
        ),
        e => e,
    })
}
