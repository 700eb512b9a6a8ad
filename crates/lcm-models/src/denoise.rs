//! The denoising loop as one graph: every UNet call and LCM step of a generation unrolled, sharing the
//! UNet's weights, so the latents stay on the backend from the first step to the VAE (on CUDA the whole
//! loop is one graph replay), and the models hand their results to each other on the backend.
//!
//! Inputs (in this order, see [`input`]): the initial latents `F32 [N, h, w, c]` (NHWC), the text
//! context `Act [B, T, D]` (B = 2N when guided: uncond then cond), the UNet's timesteps
//! `Act [steps, B]`, the schedule `F32 [steps, STEP_ROW]` (`lcm_core::lcm::StepRow`), the noise
//! `F32 [max(steps − 1, 1), N, h, w, c]` and, for LCM UNets, the guidance embedding `Act [B, d]`
//! (B = N: the pipeline never runs such a UNet with CFG).
//! Outputs: 0 the final denoised latents (`F32`, NHWC), 1 the VAE decoder's input
//! (`Act`, latents / scaling_factor + shift).

use lcm_core::lcm::{Prediction, STEP_ROW};
use lcm_core::{Backend, Elem, Error, Executor, Graph, GraphBuilder, HostData, ModelWeights, Result, Tensor};

use crate::clip::ClipTextModel;
use crate::unet::{Unet, UnetConfig};
use crate::vae::Vae;

/// Input indices of the denoising graph.
pub mod input {
    /// The initial latents x_T (img2img: the noised image latents), `F32 [N, h, w, c]`.
    pub const LATENTS: usize = 0;
    /// The text context `Act [B, T, D]`: the N uncond rows first when guided, then the N cond rows.
    pub const CONTEXT: usize = 1;
    /// The UNet's timestep for each step and batch entry, `Act [steps, B]`.
    pub const TIMESTEPS: usize = 2;
    /// One `lcm_core::lcm::StepRow` per step, `F32 [steps, STEP_ROW]`.
    pub const SCHEDULE: usize = 3;
    /// The noise z re-injected after step k in row k, `F32 [noise_rows, N, h, w, c]`.
    pub const NOISE: usize = 4;
    /// LCM UNets only (`time_cond_proj_dim`).
    pub const COND: usize = 5;
}

/// What one denoising graph is built for; each distinct value gets its own executor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiseShape {
    /// Images per generation (N).
    pub images: usize,
    /// Latent height (image height / the VAE's downscale).
    pub h: usize,
    /// Latent width.
    pub w: usize,
    /// Text tokens (77 for CLIP).
    pub ctx_len: usize,
    /// UNet calls (LCM steps) run.
    pub steps: usize,
    /// Classifier-free guidance: the UNet runs a batch of 2N and the step combines u + g·(c − u).
    pub guided: bool,
}

/// The scheduler's and the VAE's settings the graph bakes in (fixed per pipeline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiseConfig {
    /// The scheduler's `prediction_type`: what the UNet outputs.
    pub prediction: Prediction,
    /// `clip_sample_range` when `clip_sample` is on.
    pub clip: Option<f32>,
    /// The VAE's `scaling_factor`: output 1 is latents / vae_scale + vae_shift.
    pub vae_scale: f32,
    /// The VAE's `shift_factor` (0 when absent).
    pub vae_shift: f32,
}

impl DenoiseShape {
    /// The UNet's batch: 2N when guided.
    pub fn batch(&self) -> usize {
        self.images * if self.guided { 2 } else { 1 }
    }

    /// Rows of the noise input: one per step but the last (at least one, so the input always exists).
    pub fn noise_rows(&self) -> usize {
        self.steps.saturating_sub(1).max(1)
    }
}

impl UnetConfig {
    /// The denoising graph (see the module docs).
    pub fn denoise_graph(&self, d: &DenoiseShape, cfg: &DenoiseConfig) -> Result<Graph> {
        if d.images == 0 || d.steps == 0 || d.h == 0 || d.w == 0 || d.ctx_len == 0 {
            return Err(Error::invalid("denoising loop", format!("empty: {d:?}")));
        }
        let (n, batch, c) = (d.images, d.batch(), self.in_channels);
        let mut b = GraphBuilder::new();
        let mut x = b.input(&[n, d.h, d.w, c], Elem::F32);
        let ctx = b.input(&[batch, d.ctx_len, self.cross_attention_dim], Elem::Act);
        let t = b.input(&[d.steps, batch], Elem::Act);
        let schedule = b.input(&[d.steps, STEP_ROW], Elem::F32);
        let noise = b.input(&[d.noise_rows(), n, d.h, d.w, c], Elem::F32);
        let cond = self.time_cond_proj_dim.map(|dim| b.input(&[batch, dim], Elem::Act));
        for step in 0..d.steps {
            let sample = b.cast(x, Elem::Act, batch / n, 1.0, 0.0);
            let eps = self.build(&mut b, sample, (t, step), ctx, cond);
            let z = (step + 1 < d.steps).then_some(noise);
            x = b.lcm_step(x, eps, z, schedule, step, d.guided, cfg.prediction, cfg.clip);
        }
        b.output(x);
        let vae_in = b.cast(x, Elem::Act, 1, cfg.vae_scale, cfg.vae_shift);
        b.output(vae_in);
        b.finish()
    }
}

/// The executor key of a denoising graph: disjoint from the UNet's plain-call keys (4 values).
fn key(d: &DenoiseShape) -> [usize; 7] {
    [usize::MAX, d.images, d.h, d.w, d.ctx_len, d.steps, d.guided as usize]
}

impl<B: Backend> Unet<B> {
    /// The denoising graph's executor for `d` (built, fused, planned and its arena allocated on first
    /// use, then reused) beside the weights it runs with. `cfg` must be the same on every call.
    pub fn denoiser(
        &mut self,
        backend: &B,
        d: &DenoiseShape,
        cfg: &DenoiseConfig,
    ) -> Result<(&mut Executor<B>, &ModelWeights<B>)> {
        let config = &self.config;
        self.runner.prepare(backend, &key(d), || config.denoise_graph(d, cfg))
    }
}

impl<B: Backend> ClipTextModel<B> {
    /// Encodes one prompt's `ids` and copies the hidden states `[1, T, D]` into input `input` of `dst`
    /// at each element offset in `at` (a prompt for several images, or uncond then cond), on the
    /// backend: the embeddings never visit the host.
    pub fn encode_into(
        &mut self,
        backend: &B,
        ids: &[i32],
        dst: &mut Executor<B>,
        input: usize,
        at: &[usize],
    ) -> Result<()> {
        let cfg = &self.config;
        if let Some(&bad) = ids.iter().find(|&&id| id < 0 || id as usize >= cfg.vocab_size) {
            return Err(Error::invalid(
                "token ids",
                format!("id {bad} is outside the vocabulary of {} tokens", cfg.vocab_size),
            ));
        }
        let tokens = ids.len();
        let (ex, weights) = self.runner.prepare(backend, &[1, tokens], || cfg.graph(1, tokens))?;
        ex.set_input(backend, 0, HostData::I32(ids))?;
        ex.run(backend, weights)?;
        for &a in at {
            ex.copy_output_to(backend, 0, dst, input, a)?;
        }
        Ok(())
    }
}

impl<B: Backend> Vae<B> {
    /// Decodes output `output` of `src` (latents already divided by the scaling factor, NHWC `Act`
    /// `[N, h, w, latent]`) without a trip through the host: NCHW pixels in [-1, 1].
    pub fn decode_from(&mut self, backend: &B, src: &Executor<B>, output: usize) -> Result<Tensor> {
        let s = src.output_shape(output).to_vec();
        let [n, h, w, c] = <[usize; 4]>::try_from(s.as_slice())
            .map_err(|_| Error::invalid("vae latents", format!("shape {s:?}, expected [N, h, w, c]")))?;
        if c != self.config.latent_channels {
            return Err(Error::invalid(
                "vae latents",
                format!("{c} channels, the VAE takes {}", self.config.latent_channels),
            ));
        }
        let cfg = &self.config;
        let (ex, weights) = self.decoder.prepare(backend, &[n, h, w], || cfg.decoder_graph(n, h, w))?;
        src.copy_output_to(backend, output, ex, 0, 0)?;
        ex.run(backend, weights)?;
        let out = ex.output(backend, 0)?;
        Ok(Tensor::new(ex.output_shape(0).to_vec(), out).nhwc_to_nchw())
    }
}
