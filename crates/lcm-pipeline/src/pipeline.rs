//! txt2img with a Latent Consistency Model: load a diffusers folder once, generate many times.
//!
//! The order of work and of random draws is diffusers' (StableDiffusionPipeline with LCMScheduler, or
//! LatentConsistencyModelPipeline for UNets with `time_cond_proj_dim`), so the same seed gives the same
//! image: latents first, then one noise draw after each UNet call but the last, all from one
//! torch-compatible generator.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Error, Result, Tensor};
use lcm_models::{ClipTextModel, LoadOptions, Unet, Vae, VaeParts, Variant};

use crate::lora::{LoraSet, Targets};
use crate::rng::TorchRng;
use crate::scheduler::{guidance_embedding, LcmScheduler};
use crate::tokenizer::ClipTokenizer;

/// A LoRA file and the scale it is merged with.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub scale: f32,
}

/// How to load a model folder.
#[derive(Debug, Clone, Default)]
pub struct LoadSpec {
    pub model_dir: PathBuf,
    pub loras: Vec<LoraSpec>,
    /// diffusers' `clip_skip`: 0 uses the text encoder's last layer.
    pub clip_skip: usize,
    pub variant: Variant,
}

/// What to generate. `validate` checks everything before any model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: usize,
    pub guidance_scale: f32,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
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
        }
    }
}

/// Image sizes accepted: multiples of 8 (the VAE's factor) in this range.
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 2048;

impl Request {
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
        if self.num_images == 0 {
            return Err(Error::invalid("--num-images", "0: expected at least 1"));
        }
        if !self.guidance_scale.is_finite() || self.guidance_scale < 0.0 {
            return Err(Error::invalid(
                "--guidance-scale",
                format!("{}: expected a finite number ≥ 0", self.guidance_scale),
            ));
        }
        Ok(())
    }
}

/// Wall time of each stage of one generation.
#[derive(Debug, Clone, Default)]
pub struct StageTimes {
    pub text_encoder: Duration,
    pub unet_steps: Vec<Duration>,
    pub vae_decode: Duration,
    pub total: Duration,
}

pub struct Output {
    /// Final denoised latents `[N, 4, H/8, W/8]`, before the VAE's scaling (diffusers' `output_type="latent"`).
    pub latents: Tensor,
    /// Decoded images `[N, H, W, 3]` in [0, 1] (diffusers' `output_type="np"`).
    pub images: Tensor,
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
    pub step: usize,
    pub steps: usize,
    pub timestep: i64,
    pub elapsed: Duration,
}

pub struct Pipeline<B: Backend> {
    pub backend: B,
    pub spec: LoadSpec,
    tokenizer: ClipTokenizer,
    text_encoder: ClipTextModel<B>,
    unet: Unet<B>,
    vae: Vae<B>,
    scheduler: LcmScheduler,
}

fn component(dir: &Path, name: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "model folder not found (expected a diffusers folder: model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/)"));
    }
    Ok(dir.join(name))
}

impl<B: Backend> Pipeline<B> {
    /// Loads every component of `spec.model_dir`, merging the LoRAs into the weights as they load.
    pub fn load(backend: B, spec: LoadSpec) -> Result<Self> {
        let dir = spec.model_dir.clone();
        let loras = LoraSet::open(&spec.loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
        let scheduler = LcmScheduler::from_config_json(component(&dir, "scheduler")?.join("scheduler_config.json"))?;
        let tokenizer = ClipTokenizer::from_dir(component(&dir, "tokenizer")?)?;
        let unet_dir = component(&dir, "unet")?;
        let te_dir = component(&dir, "text_encoder")?;
        let unet_cfg = lcm_models::UnetConfig::from_file(&unet_dir.join("config.json"))?;
        let te_cfg = lcm_models::ClipConfig::from_file(&te_dir.join("config.json"), spec.clip_skip)?;
        let mut merger = loras.resolve(&Targets::for_models(&unet_cfg, &te_cfg)?)?;
        let text_encoder = {
            let mut hook = merger.hook();
            ClipTextModel::load(
                &backend,
                &te_dir,
                spec.clip_skip,
                LoadOptions { variant: spec.variant, hook: Some(&mut hook) },
            )?
        };
        let unet = {
            let mut hook = merger.hook();
            Unet::load(&backend, &unet_dir, LoadOptions { variant: spec.variant, hook: Some(&mut hook) })?
        };
        merger.finish()?;
        let vae = Vae::load(
            &backend,
            &component(&dir, "vae")?,
            VaeParts::Decoder,
            LoadOptions { variant: spec.variant, hook: None },
        )?;
        if unet.config.cross_attention_dim != text_encoder.config.hidden_size {
            return Err(Error::config(
                unet_dir.join("config.json"),
                format!(
                    "cross_attention_dim {} differs from the text encoder's hidden_size {}",
                    unet.config.cross_attention_dim, text_encoder.config.hidden_size
                ),
            ));
        }
        if unet.config.in_channels != vae.config.latent_channels {
            return Err(Error::config(
                unet_dir.join("config.json"),
                format!(
                    "in_channels {} differs from the VAE's latent_channels {}",
                    unet.config.in_channels, vae.config.latent_channels
                ),
            ));
        }
        Ok(Pipeline { backend, spec, tokenizer, text_encoder, unet, vae, scheduler })
    }

    pub fn original_steps(&self) -> usize {
        self.scheduler.config().original_inference_steps
    }

    /// Whether this UNet takes the guidance scale as an embedding (a distilled LCM) rather than CFG.
    pub fn has_guidance_embedding(&self) -> bool {
        self.unet.config.time_cond_proj_dim.is_some()
    }

    fn encode_prompt(&mut self, prompt: &str, copies: usize) -> Result<Tensor> {
        let ids: Vec<i32> = self.tokenizer.encode(prompt)?.iter().map(|&i| i as i32).collect();
        let one = self.text_encoder.forward(&self.backend, &ids, 1)?;
        let mut data = Vec::with_capacity(one.numel() * copies);
        for _ in 0..copies {
            data.extend_from_slice(&one.data);
        }
        Ok(Tensor::new(vec![copies, one.shape[1], one.shape[2]], data))
    }

    /// Runs one request. `progress` is called after each UNet step.
    pub fn generate(&mut self, req: &Request, progress: &mut dyn FnMut(StepEvent)) -> Result<Output> {
        req.validate(self.original_steps())?;
        let start = Instant::now();
        let n = req.num_images;
        let timesteps = self.scheduler.set_timesteps(req.steps, 1.0)?.to_vec();
        let cfg = !self.has_guidance_embedding() && req.guidance_scale > 1.0;

        let t0 = Instant::now();
        let cond = self.encode_prompt(&req.prompt, n)?;
        let context = if cfg {
            let uncond = self.encode_prompt(req.negative_prompt.as_deref().unwrap_or(""), n)?;
            let mut data = uncond.data;
            data.extend_from_slice(&cond.data);
            Tensor::new(vec![2 * n, cond.shape[1], cond.shape[2]], data)
        } else {
            cond
        };
        let text_time = t0.elapsed();

        let scale = self.vae.config.downscale();
        let (h, w) = (req.height / scale, req.width / scale);
        let shape = vec![n, self.unet.config.in_channels, h, w];
        let numel: usize = shape.iter().product();
        let mut rng = TorchRng::new(req.seed);
        let mut latents = rng.randn(numel); // init_noise_sigma is 1 for LCM
        let w_embedding = self
            .unet
            .config
            .time_cond_proj_dim
            .map(|d| Tensor::new(vec![n, d], guidance_embedding(&vec![req.guidance_scale - 1.0; n], d)));

        let mut denoised = vec![0.0f32; numel];
        let mut unet_steps = Vec::with_capacity(timesteps.len());
        for (i, &t) in timesteps.iter().enumerate() {
            let ts = Instant::now();
            let batch = if cfg { 2 * n } else { n };
            let mut input = latents.clone();
            if cfg {
                input.extend_from_slice(&latents);
            }
            let mut in_shape = shape.clone();
            in_shape[0] = batch;
            let eps = self.unet.forward(
                &self.backend,
                &Tensor::new(in_shape, input),
                &vec![t as f32; batch],
                &context,
                w_embedding.as_ref(),
            )?;
            let eps = if cfg {
                let (u, c) = eps.data.split_at(numel);
                let g = req.guidance_scale;
                u.iter().zip(c).map(|(&u, &c)| u + g * (c - u)).collect()
            } else {
                eps.data
            };
            let noise = self.scheduler.noise_needed(i).then(|| rng.randn(numel));
            self.scheduler.step_into(i, &eps, &mut latents, &mut denoised, noise.as_deref())?;
            unet_steps.push(ts.elapsed());
            progress(StepEvent { step: i + 1, steps: timesteps.len(), timestep: t, elapsed: start.elapsed() });
        }

        let tv = Instant::now();
        let images = self.decode(&Tensor::new(shape.clone(), denoised.clone()))?;
        let vae_time = tv.elapsed();
        Ok(Output {
            latents: Tensor::new(shape, denoised),
            images,
            times: StageTimes { text_encoder: text_time, unet_steps, vae_decode: vae_time, total: start.elapsed() },
        })
    }

    /// `vae.decode(latents / scaling_factor)` then diffusers' postprocessing to [0, 1], as `[N, H, W, 3]`.
    pub fn decode(&mut self, latents: &Tensor) -> Result<Tensor> {
        let cfg = &self.vae.config;
        let (sf, shift) = (cfg.scaling_factor, cfg.shift_factor.unwrap_or(0.0));
        let z = Tensor::new(latents.shape.clone(), latents.data.iter().map(|&v| v / sf + shift).collect());
        let img = self.vae.decode(&self.backend, &z)?.nchw_to_nhwc();
        Ok(Tensor::new(img.shape, img.data.iter().map(|&v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect()))
    }
}
