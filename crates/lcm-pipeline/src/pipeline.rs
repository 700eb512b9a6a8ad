//! A loaded model on one backend, ready to generate many times: [`Pipeline::load`] once, then
//! [`Pipeline::generate`] (txt2img, or img2img with an init image; `generate` holds the order of work
//! and of random draws), LoRA swaps ([`Pipeline::set_loras`]) and tiled VAE decoding between requests.

pub mod control;
mod generate;
mod inpaint;

use std::time::Duration;

use lcm_core::{Backend, Result, Tensor};
use lcm_models::{Unet, Vae, VaeTiling};

use crate::embeddings::EmbeddingSet;
use crate::lora::Targets;
use crate::lora_swap::{slot_rank, LoraState, PreparedLoras};
use crate::scheduler::{SamplerKind, SamplerOptions, Scheduler, SchedulerConfig};
use crate::spec::{LoadSpec, LoraMode, LoraSpec};
use crate::text::TextEncoders;
use control::ControlNets;

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
    pub timestep: f64,
    /// Since the generation started.
    pub elapsed: Duration,
}

/// The most steps one generation runs: its whole loop is one graph, and few-step samplers need far
/// fewer (LCM's 50-step grid is the largest of them).
pub const MAX_STEPS: usize = 64;

/// [`Pipeline::max_steps`] before loading: the most steps `sampler` takes with scheduler config `config`
/// (`crate::load::scheduler`), at most [`MAX_STEPS`].
pub fn max_steps_for(config: &SchedulerConfig, sampler: &SamplerOptions) -> Result<usize> {
    Ok(Scheduler::new(config, sampler)?.max_steps().min(MAX_STEPS))
}

/// A loaded model on one backend: tokenizer, text encoder, UNet, VAE (decoder; its encoder on first
/// img2img) and LCM scheduler, with its LoRAs applied.
pub struct Pipeline<B: Backend> {
    /// The backend every model runs on.
    pub backend: B,
    /// What was loaded; `loras` are those applied now ([`Pipeline::set_loras`] updates them).
    pub spec: LoadSpec,
    /// The text encoder (two for SDXL) and tokenizers.
    text: TextEncoders<B>,
    unet: Unet<B>,
    vae: Vae<B>,
    /// The VAE's own backend when it runs in f32 on an f16 backend (`force_upcast`, as diffusers'
    /// SDXL pipelines do: `crate::load::upcast_vae_backend`); `None`: the pipeline's.
    vae_backend: Option<B>,
    /// Tiled VAE decoding and encoding ([`Pipeline::set_vae_tiling`]); off by default.
    vae_tiling: Option<VaeTiling>,
    /// The model's scheduler config, which each request's sampler reads (`X.from_config`).
    scheduler: SchedulerConfig,
    /// The sampler a request without its own gets ([`Pipeline::set_sampler`]).
    sampler: SamplerOptions,
    /// Which weights hold which LoRAs, merged or in runtime buffers.
    loras: LoraState,
    /// The ControlNets requests have named so far (loaded on first use).
    controlnets: ControlNets<B>,
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
        let mut p = Pipeline {
            backend,
            spec: base,
            text: c.text,
            unet: c.unet,
            vae: c.vae,
            vae_backend: c.vae_backend,
            vae_tiling: None,
            scheduler: c.scheduler,
            sampler: SamplerOptions::new(SamplerKind::Lcm),
            loras: LoraState::new(c.lora_merged),
            controlnets: ControlNets::default(),
        };
        if unmerged {
            let max_rank = slot_rank(&spec.loras, &p.lora_targets()?, spec.max_lora_rank)?;
            p.loras.attach_slots(&p.backend, &mut p.unet, max_rank)?;
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

    /// The most steps a request with `sampler` (None: the pipeline's) may ask for: LCM's and TCD's
    /// `original_inference_steps`, the others' training timesteps, at most [`MAX_STEPS`] (the whole loop
    /// is one graph). An error when the sampler cannot run with this model's scheduler config.
    pub fn max_steps(&self, sampler: Option<&SamplerOptions>) -> Result<usize> {
        max_steps_for(&self.scheduler, sampler.unwrap_or(&self.sampler))
    }

    /// The sampler `sampler` (None: the pipeline's) built from the model's scheduler config.
    pub(crate) fn scheduler_for(&self, sampler: Option<&SamplerOptions>) -> Result<Scheduler> {
        Scheduler::new(&self.scheduler, sampler.unwrap_or(&self.sampler))
    }

    /// The sampler requests without their own run (LCM unless set). Checked against the model's
    /// scheduler config.
    pub fn set_sampler(&mut self, sampler: SamplerOptions) -> Result<()> {
        Scheduler::new(&self.scheduler, &sampler)?;
        self.sampler = sampler;
        Ok(())
    }

    /// The sampler requests without their own run.
    pub fn sampler(&self) -> SamplerOptions {
        self.sampler
    }

    /// The model's scheduler config (its class is what `--scheduler auto` runs).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler
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

    /// The textual-inversion embeddings loaded (trigger words, vector counts, widths, token ids) and
    /// the embeddings folder's files skipped, with why.
    pub fn embeddings(&self) -> &EmbeddingSet {
        &self.text.embeddings
    }

    /// Whether this pipeline runs SDXL's two text encoders.
    pub fn is_sdxl(&self) -> bool {
        self.text.second.is_some()
    }

    /// The weights LoRAs may target in this pipeline's UNet and text encoder(s).
    fn lora_targets(&self) -> Result<Targets> {
        let te2 = self.text.second.as_ref().map(|te2| &te2.model.config);
        Targets::for_pipeline(&self.unet.config, &self.text.first.model.config, te2)
    }

    /// Replaces the pipeline's LoRAs with `loras` (none: the base model). Everything — files, names,
    /// shapes, ranks against the runtime buffers — is checked before any weight changes. The result
    /// equals a pipeline loaded with `loras` (bit for bit when merged; within the backend's precision
    /// when unmerged). Unmerged buffers are filled from the host, one copy per buffer, allocating
    /// nothing on the device; [`Pipeline::prepare_loras`] makes a swap one device copy instead. If
    /// reading a weight file fails halfway (an I/O error), some weights may already hold the new LoRAs:
    /// call again. How each mode swaps: [`crate::lora_swap`].
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<()> {
        let targets = self.lora_targets()?;
        self.loras.set(&self.backend, &mut self.unet, &mut self.text, &targets, loras)?;
        self.spec.loras = loras.to_vec();
        Ok(())
    }

    /// Prepares `loras` for [`Pipeline::use_loras`], checking them as [`Pipeline::set_loras`] does; on a
    /// backend with runtime LoRA buffers this allocates device memory for their contents. Does not
    /// change the pipeline.
    pub fn prepare_loras(&self, loras: &[LoraSpec]) -> Result<PreparedLoras<B>> {
        self.loras.prepare(&self.backend, &self.unet, &self.lora_targets()?, loras)
    }

    /// Switches to LoRAs [`Pipeline::prepare_loras`] prepared on this pipeline: the unmerged buffers in
    /// one device copy (no host work, no allocation, no re-recording), then whatever those LoRAs change
    /// in merged weights (text encoders; every weight on a backend that merges), as `set_loras` does.
    /// The result equals `set_loras` with the same LoRAs.
    pub fn use_loras(&mut self, prepared: &PreparedLoras<B>) -> Result<()> {
        let targets = self.lora_targets()?;
        self.loras.switch(&self.backend, &mut self.unet, &mut self.text, &targets, prepared)?;
        self.spec.loras = prepared.loras().to_vec();
        Ok(())
    }
}
