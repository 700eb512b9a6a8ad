//! The denoising loop as one graph: every UNet call and LCM step of a generation unrolled, sharing the
//! UNet's weights, so the latents stay on the backend from the first step to the VAE (on CUDA the whole
//! loop is one graph replay), and the models hand their results to each other on the backend.
//!
//! Inputs (in this order, see [`input`] and [`DenoiseInputs`]): the initial latents `F32 [N, h, w, c]`
//! (NHWC), the text context `Act [B, T, D]` (B = 2N when guided: uncond then cond; T = the longer of
//! the two texts when they differ, [`DenoiseShape::uncond_ctx_len`]), the UNet's
//! timesteps `Act [steps, B]`, the schedule `F32 [steps, STEP_ROW]` (`lcm_core::lcm::StepRow`), the
//! noise `F32 [rows, N, h, w, c]` (row k for step k; [`NoiseSteps::rows`]); for LCM UNets the guidance embedding `Act [B, d]`
//! (B = N: the pipeline never runs such a UNet with CFG); with two text encoders the context comes in
//! two parts, `Act [B, T, D₁]` then `Act [B, T, D − D₁]`, joined on the channels in the graph (each
//! encoder copies its states into its own part); for SDXL UNets the pooled text embeds `Act [B, P]` and
//! the time ids `Act [6, B]`; for inpainting ([`Inpaint`]) with a 9-channel UNet the mask
//! `Act [B, h, w, 1]` and the masked image's latents `Act [B, h, w, c]`, with a 4-channel UNet the image's
//! latents `F32 [N, h, w, c]`, the initial noise `F32 [N, h, w, c]` and the mask `F32 [N, h, w, 1]`;
//! with ControlNets ([`DenoiseControl`]) each one's control image
//! `F32 [N, H, W, 3]` (NHWC, in [0, 1]) and then their weights `F32 [controls, B]`
//! (`controlnet_conditioning_scale` per ControlNet and row of the UNet's batch). All are written once
//! per generation.
//!
//! Uncond and cond texts of different lengths (A1111 prompts of different chunk counts, which A1111 runs
//! as two UNet calls) run as one batch: the shorter half's rows are padded to the longer and every
//! cross-attention (UNet and ControlNets) limits those rows to their own tokens (`Op::Attention`'s
//! `key_limit`), which gives exactly what a call over those tokens alone gives. The caller writes zeros
//! into the padded tokens (never read by attention, but the k/v projections run over them).
//!
//! A ControlNet runs inside the same graph, with its own weights (`GraphBuilder::set_weight_scope`:
//! the executor runs with the UNet's weights then each ControlNet's, `Executor::with_parts`): its
//! control-image embedding (and SDXL added embedding) once before the loop, its encoder at each step
//! where its guidance window has it active, its residuals added into that step's UNet.
//! Outputs: 0 the final denoised latents (`F32`, NHWC), 1 the VAE decoder's input
//! (`F32`, latents / scaling_factor + shift: the decoder takes `F32`, whatever its activations).

use lcm_core::lcm::{Sampling, STEP_ROW};
use lcm_core::{
    Backend, Elem, Error, Executor, Graph, GraphBuilder, HostData, KeyLimit, ModelWeights, Result, Tensor, TensorId,
};

use crate::arch::blocks::Context;
use crate::arch::clip::ClipTextModel;
use crate::arch::controlnet::ControlNetConfig;
use crate::arch::unet::{ControlResiduals, Unet, UnetConfig};
use crate::arch::vae::Vae;

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
    /// The noise z of step k's tail in row k, `F32 [rows, N, h, w, c]` ([`super::NoiseSteps::rows`]).
    pub const NOISE: usize = 4;
    /// LCM UNets only (`time_cond_proj_dim`).
    pub const COND: usize = 5;
}

/// Where each input of a denoising graph is: the fixed first five ([`input`]), then those only some
/// models have, numbered after them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenoiseInputs {
    /// The guidance embedding (`time_cond_proj_dim`), [`input::COND`].
    pub cond: Option<usize>,
    /// The second text encoder's part of the context (`DenoiseConfig::context_split`).
    pub context_2: Option<usize>,
    /// The pooled text embeds (`text_time`).
    pub text_embeds: Option<usize>,
    /// The time ids (`text_time`), `Act [6, B]`.
    pub time_ids: Option<usize>,
    /// Inpainting's first input ([`Inpaint::inputs`] of them, in the module docs' order).
    pub inpaint: Option<usize>,
    /// The first ControlNet's control image; the k-th's is this + k.
    pub control_images: Option<usize>,
    /// The ControlNets' weights `F32 [controls, B]`.
    pub control_scales: Option<usize>,
}

/// A ControlNet in a denoising loop.
#[derive(Debug, Clone, Copy)]
pub struct DenoiseControl<'a> {
    /// Its config.
    pub config: &'a ControlNetConfig,
    /// Which of the caller's ControlNets it is: part of the executor's key (two ControlNets of one shape
    /// still run with different weights, so their graphs must not be confused).
    pub id: usize,
    /// Bit k: active at step k (diffusers' `controlnet_keep`); steps where it is not are left out.
    pub active: u64,
}

/// Inpainting (diffusers' StableDiffusionInpaintPipeline), by the UNet's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inpaint {
    /// An inpainting UNet (`in_channels` = 2·latent + 1): the latents, the mask and the masked image's
    /// latents concatenated on the channels at every step.
    Concat,
    /// An ordinary UNet: after each step the kept region is the image's latents re-noised to the next
    /// timestep, blended in by the mask (`Op::InpaintBlend`).
    Blend,
}

impl Inpaint {
    /// How many inputs it adds to the graph.
    pub fn inputs(self) -> usize {
        match self {
            Inpaint::Concat => 2,
            Inpaint::Blend => 3,
        }
    }
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
    /// Text tokens (77 for CLIP; 77·k for an A1111 prompt of k chunks): the cond rows' (all rows' when
    /// `uncond_ctx_len` is `None`).
    pub ctx_len: usize,
    /// Guided only, and only when it differs from `ctx_len`: the uncond rows' text tokens. The context
    /// input(s) then hold [`DenoiseShape::context_tokens`] = max(this, `ctx_len`) tokens a row, the
    /// shorter half's rows padded with zeros by the caller and each cross-attention limiting those rows
    /// to their own tokens.
    pub uncond_ctx_len: Option<usize>,
    /// UNet calls (sampler steps) run.
    pub steps: usize,
    /// The sampler's step: its rule, what the UNet predicts, x0's clamp.
    pub sampling: Sampling,
    /// Which steps take noise.
    pub noise: NoiseSteps,
    /// Classifier-free guidance: the UNet runs a batch of 2N and the step combines u + g·(c − u).
    pub guided: bool,
    /// Inpainting, and how.
    pub inpaint: Option<Inpaint>,
}

/// The VAE's and text encoders' settings the graph bakes in (fixed per pipeline).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiseConfig {
    /// The VAE's `scaling_factor`: output 1 is latents / vae_scale + vae_shift.
    pub vae_scale: f32,
    /// The VAE's `shift_factor` (0 when absent).
    pub vae_shift: f32,
    /// Two text encoders (SDXL): the first one's width D₁; the context input holds those channels and
    /// a second input the rest. `None`: one context input of the full width.
    pub context_split: Option<usize>,
}

impl DenoiseShape {
    /// The UNet's batch: 2N when guided.
    pub fn batch(&self) -> usize {
        self.images * if self.guided { 2 } else { 1 }
    }

    /// Tokens a row of the context input holds: the longer of the uncond and cond texts.
    pub fn context_tokens(&self) -> usize {
        self.uncond_ctx_len.map_or(self.ctx_len, |t| t.max(self.ctx_len))
    }

    /// The rows of the shorter text (the uncond rows `0..N` or the cond rows `N..2N`) and their token
    /// count, for each cross-attention; `None` when every row sees the whole context.
    pub fn context_limit(&self) -> Option<KeyLimit> {
        let t = self.uncond_ctx_len?;
        let n = self.images;
        Some(if t < self.ctx_len {
            KeyLimit { rows_begin: 0, rows_end: n, keys: t }
        } else {
            KeyLimit { rows_begin: n, rows_end: 2 * n, keys: self.ctx_len }
        })
    }

    /// Rows of the noise input (see [`NoiseSteps::rows`]).
    pub fn noise_rows(&self) -> usize {
        self.noise.rows(self.steps)
    }
}

/// Which steps of a loop draw noise z for their tail (`lcm_core::lcm::step`), as the scheduler does:
/// LCM, TCD with eta > 0 and Euler-ancestral every step but the last; DDIM with eta > 0 every step;
/// Euler and eta = 0 none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoiseSteps {
    /// No step.
    None,
    /// Every step but the last.
    AllButLast,
    /// Every step.
    All,
}

impl NoiseSteps {
    /// Whether step `step` of `steps` takes noise.
    pub fn at(self, step: usize, steps: usize) -> bool {
        match self {
            NoiseSteps::None => false,
            NoiseSteps::AllButLast => step + 1 < steps,
            NoiseSteps::All => true,
        }
    }

    /// Rows of the noise input: row k for step k, up to the last step that takes noise (at least one, so
    /// the input always exists).
    pub fn rows(self, steps: usize) -> usize {
        (0..steps).filter(|&k| self.at(k, steps)).count().max(1)
    }
}

impl UnetConfig {
    /// Which optional inputs a denoising graph of this UNet with `cfg` and `controls` ControlNets has,
    /// and their indices.
    pub fn denoise_inputs(&self, cfg: &DenoiseConfig, inpaint: Option<Inpaint>, controls: usize) -> DenoiseInputs {
        let mut next = input::COND;
        let mut take = |present: bool| {
            present.then(|| {
                next += 1;
                next - 1
            })
        };
        let cond = take(self.time_cond_proj_dim.is_some());
        let context_2 = take(cfg.context_split.is_some());
        let text_embeds = take(self.text_time.is_some());
        let time_ids = take(self.text_time.is_some());
        let inpaint = inpaint.map(|k| {
            next += k.inputs();
            next - k.inputs()
        });
        let control_images = (controls > 0).then_some(next);
        let control_scales = (controls > 0).then_some(next + controls);
        DenoiseInputs { cond, context_2, text_embeds, time_ids, inpaint, control_images, control_scales }
    }

    /// The denoising graph (see the module docs). Each ControlNet must fit this UNet
    /// (`ControlNetConfig::check_fits`, which the caller checks with the VAE's downscale).
    pub fn denoise_graph(&self, d: &DenoiseShape, cfg: &DenoiseConfig, controls: &[DenoiseControl]) -> Result<Graph> {
        if d.images == 0 || d.steps == 0 || d.h == 0 || d.w == 0 || d.ctx_len == 0 {
            return Err(Error::invalid("denoising loop", format!("empty: {d:?}")));
        }
        if let Some(t) = d.uncond_ctx_len {
            if !d.guided || t == 0 || t == d.ctx_len {
                return Err(Error::invalid(
                    "uncond_ctx_len",
                    format!(
                        "{t} with ctx_len {} (guided: {}): expected a guided loop and a non-zero token count \
                         other than ctx_len (None when both texts have ctx_len tokens)",
                        d.ctx_len, d.guided
                    ),
                ));
            }
        }
        if !controls.is_empty() && d.steps > u64::BITS as usize {
            // DenoiseControl::active has one bit per step.
            return Err(Error::invalid("steps", format!("{}: ControlNets run at most 64 steps", d.steps)));
        }
        // The latents have the UNet's output channels (an inpainting UNet takes more in).
        let (n, batch, c) = (d.images, d.batch(), self.out_channels);
        let concat_in = c + 1 + c;
        let fits = match d.inpaint {
            None | Some(Inpaint::Blend) => self.in_channels == c,
            Some(Inpaint::Concat) => self.in_channels == concat_in,
        };
        if !fits {
            return Err(Error::invalid(
                "denoising loop",
                format!(
                    "a UNet of {} input channels cannot run {:?} inpainting of {c} latent channels",
                    self.in_channels, d.inpaint
                ),
            ));
        }
        let width = self.cross_attention_dim;
        if cfg.context_split.is_some_and(|w1| w1 == 0 || w1 >= width) {
            return Err(Error::invalid(
                "denoising loop",
                format!("context split {:?} of cross_attention_dim {width}", cfg.context_split),
            ));
        }
        let mut b = GraphBuilder::new();
        let mut x = b.input(&[n, d.h, d.w, c], Elem::F32);
        let tokens = d.context_tokens();
        let ctx = b.input(&[batch, tokens, cfg.context_split.unwrap_or(width)], Elem::Act);
        let t = b.input(&[d.steps, batch], Elem::Act);
        let schedule = b.input(&[d.steps, STEP_ROW], Elem::F32);
        let noise = b.input(&[d.noise_rows(), n, d.h, d.w, c], Elem::F32);
        let cond = self.time_cond_proj_dim.map(|dim| b.input(&[batch, dim], Elem::Act));
        let ctx = match cfg.context_split {
            Some(w1) => {
                let second = b.input(&[batch, tokens, width - w1], Elem::Act);
                b.concat(ctx, second) // once, before the loop: every step reads the joined context
            }
            None => ctx,
        };
        let ctx = Context { tensor: ctx, limit: d.context_limit() };
        let added = self.added_inputs(&mut b, batch);
        let aug = added.map(|(text, ids)| self.add_embedding(&mut b, text, ids));
        let inpaint = d.inpaint.map(|kind| match kind {
            Inpaint::Concat => {
                let mask = b.input(&[batch, d.h, d.w, 1], Elem::Act);
                [mask, b.input(&[batch, d.h, d.w, c], Elem::Act), 0]
            }
            Inpaint::Blend => {
                let image = b.input(&[n, d.h, d.w, c], Elem::F32);
                let noise0 = b.input(&[n, d.h, d.w, c], Elem::F32);
                [image, noise0, b.input(&[n, d.h, d.w, 1], Elem::F32)]
            }
        });
        let nets = self.control_inputs(&mut b, d, controls, added)?;
        for step in 0..d.steps {
            let mut sample = if d.sampling.rule.scales_input() {
                b.scale_model_input(x, batch / n, schedule, step)
            } else {
                b.cast(x, Elem::Act, batch / n, 1.0, 0.0)
            };
            if let (Some(Inpaint::Concat), Some([mask, masked, _])) = (d.inpaint, inpaint) {
                // latents ++ mask ++ masked image latents, as the pipeline concatenates them.
                let with_mask = b.concat(sample, mask);
                sample = b.concat(with_mask, masked);
            }
            let mut residuals = Vec::new();
            for (k, (c, net)) in controls.iter().zip(&nets).enumerate().filter(|(_, (c, _))| c.active >> step & 1 == 1)
            {
                b.set_weight_scope(k + 1);
                let (down, mid) = c.config.residuals(&mut b, sample, (t, step), ctx, net.aug, net.image);
                b.set_weight_scope(0);
                residuals.push(ControlResiduals { down, mid, scale: (net.scales, k) });
            }
            let eps = self.build(&mut b, sample, (t, step), ctx, cond, aug, &residuals);
            let z = d.noise.at(step, d.steps).then_some((noise, step));
            x = b.lcm_step(x, eps, z, schedule, step, d.guided, d.sampling);
            if let (Some(Inpaint::Blend), Some([image, noise0, mask])) = (d.inpaint, inpaint) {
                x = b.inpaint_blend(x, image, noise0, mask, schedule, step, step + 1 == d.steps);
            }
        }
        b.output(x);
        let vae_in = b.cast(x, Elem::F32, 1, cfg.vae_scale, cfg.vae_shift);
        b.output(vae_in);
        b.finish()
    }
}

/// What the loop needs of each ControlNet, made before its first step.
struct ControlNodes {
    /// The control image's embedding.
    image: TensorId,
    /// SDXL's added embedding through this ControlNet's own `add_embedding`.
    aug: Option<TensorId>,
    /// The weights input, row k for ControlNet k.
    scales: TensorId,
}

impl UnetConfig {
    /// Declares the ControlNets' inputs (each control image, then the weights) and builds what each
    /// needs once: its image embedding and SDXL added embedding, in its own weight scope.
    fn control_inputs(
        &self,
        b: &mut GraphBuilder,
        d: &DenoiseShape,
        controls: &[DenoiseControl],
        added: Option<(TensorId, TensorId)>,
    ) -> Result<Vec<ControlNodes>> {
        let (n, batch) = (d.images, d.batch());
        let mut images = Vec::with_capacity(controls.len());
        for c in controls {
            let f = c.config.image_factor();
            if c.config.unet.skip_count() != self.skip_count() || c.config.unet.text_time.is_some() != added.is_some() {
                return Err(Error::invalid("denoising loop", "a ControlNet that does not fit this UNet"));
            }
            images.push(b.input(&[n, d.h * f, d.w * f, c.config.conditioning_channels], Elem::F32));
        }
        if controls.is_empty() {
            return Ok(Vec::new());
        }
        let scales = b.input(&[controls.len(), batch], Elem::F32);
        let mut nodes = Vec::with_capacity(controls.len());
        for (k, (c, &img)) in controls.iter().zip(&images).enumerate() {
            b.set_weight_scope(k + 1);
            let img = b.cast(img, Elem::Act, batch / n, 1.0, 0.0); // the same image for uncond and cond
            let image = c.config.cond_embedding(b, img);
            let aug = added.map(|(text, ids)| c.config.unet.add_embedding(b, text, ids));
            b.set_weight_scope(0);
            nodes.push(ControlNodes { image, aug, scales });
        }
        Ok(nodes)
    }
}

/// The executor key of a denoising graph: disjoint from the UNet's plain-call keys (4 values); each
/// ControlNet adds which one it is and its active steps. Every field of the shape is in it.
fn key(d: &DenoiseShape, controls: &[DenoiseControl]) -> Vec<usize> {
    let inpaint = d.inpaint.map_or(0, |k| 1 + k as usize);
    let uncond_ctx_len = d.uncond_ctx_len.map_or(0, |t| 1 + t);
    let mut k = vec![usize::MAX, d.images, d.h, d.w, d.ctx_len, uncond_ctx_len, d.steps, d.guided as usize, inpaint];
    let s = &d.sampling;
    let clip = s.clip.map_or(0, |c| 1 + c.to_bits() as usize);
    k.extend([s.rule as usize, s.prediction as usize, clip, d.noise as usize]);
    for c in controls {
        k.extend([c.id, c.active as usize]);
    }
    k
}

impl<B: Backend> Unet<B> {
    /// The denoising graph's executor for `d` (built, fused, planned and its arena allocated on first
    /// use, then reused) beside the UNet's weights. `cfg` must be the same on every call. With
    /// ControlNets, `control_weights` are theirs in `controls`' order, and every run passes the UNet's
    /// weights then these (`Executor::run_parts`).
    pub fn denoiser(
        &mut self,
        backend: &B,
        d: &DenoiseShape,
        cfg: &DenoiseConfig,
        controls: &[DenoiseControl],
        control_weights: &[&ModelWeights<B>],
    ) -> Result<(&mut Executor<B>, &ModelWeights<B>)> {
        let config = &self.config;
        self.runner
            .prepare_parts(backend, &key(d, controls), control_weights, || config.denoise_graph(d, cfg, controls))
    }
}

/// One copy of a text encoder's result into a denoising graph's input: elements `elements` of output
/// `output` (for batch-1 encodings: all of it, or one token's row) to input `input` at each element
/// offset in `at` (a prompt for several images, or uncond then cond).
#[derive(Debug, Clone)]
pub struct TextCopy {
    /// The encoder graph's output.
    pub output: usize,
    /// Its elements copied.
    pub elements: std::ops::Range<usize>,
    /// The denoising graph's input.
    pub input: usize,
    /// Element offsets in that input, one copy each.
    pub at: Vec<usize>,
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
        let all = ids.len() * self.config.hidden_size;
        self.encode_copies(backend, ids, dst, &[TextCopy { output: 0, elements: 0..all, input, at: at.to_vec() }])
    }

    /// Encodes one prompt's `ids` and makes each copy of its outputs into `dst`, on the backend.
    pub fn encode_copies(
        &mut self,
        backend: &B,
        ids: &[i32],
        dst: &mut Executor<B>,
        copies: &[TextCopy],
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
        for c in copies {
            for &a in &c.at {
                ex.copy_output_range_to(backend, c.output, c.elements.clone(), dst, c.input, a)?;
            }
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
