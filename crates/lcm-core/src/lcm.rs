//! The sampler step (diffusers' `LCMScheduler.step`, `TCDScheduler.step`, `DDIMScheduler.step`,
//! `EulerDiscreteScheduler.step` and `EulerAncestralDiscreteScheduler.step`) as the graph runs it: the
//! layout of one step's coefficients (a row of the graph's `schedule` input) and the per-element
//! arithmetic. One source for the host schedulers, the CPU backend's op and, by the same layout
//! (`LcmStepRow` in kernels/include/lcm_abi.h, compared by tests/abi.rs), the CUDA kernel.
//!
//! Every scheduler is one of three [`StepRule`]s over the same row: the host fills the row with that
//! scheduler's scalars (computed in f32 as torch computes them), and the element-wise part is
//! written here once, in each scheduler's order of operations, so the same model outputs give the same
//! bits as diffusers.

/// What model outputs mean: the noise, v = sqrt(ā)·eps − sqrt(1−ā)·x0, or x0 itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise eps (`prediction_type: "epsilon"`).
    Epsilon,
    /// v (`"v_prediction"`).
    VPrediction,
    /// x0 (`"sample"`).
    Sample,
}

/// How a step turns x_t and the model output into the next sample: the shape of a scheduler family's
/// update. The scalars come from the row; which of them a rule reads is listed on [`StepRow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepRule {
    /// LCMScheduler: x0 from ā_t, y = c_out·x0 + c_skip·x (the consistency boundary condition).
    Consistency,
    /// DDIMScheduler and TCDScheduler: x0 and eps from ā_t, y = a·x0 + b·eps (DDIM: a = sqrt(ā_prev),
    /// b = sqrt(1 − ā_prev − σ²); TCD: a = sqrt(ā_s), b = sqrt(1 − ā_s)).
    Ddim,
    /// Euler and Euler-ancestral (k-diffusion's sigma parametrisation): x0 from σ,
    /// y = x + ((x − x0)/σ)·dt. The UNet reads x/sqrt(σ²+1) (`scale_model_input`).
    Euler,
}

impl StepRule {
    /// Whether the UNet reads the sample scaled by the row's `input_div` (`scale_model_input` is not
    /// the identity).
    pub fn scales_input(self) -> bool {
        self == StepRule::Euler
    }
}

/// How a graph's step op is configured: the rule, what the model predicts, and x0's clamp.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// The update's shape.
    pub rule: StepRule,
    /// What the model output means (the scheduler's `prediction_type`).
    pub prediction: Prediction,
    /// x0 clamped to ±this (`clip_sample_range` when `clip_sample` is on; LCM and DDIM read it).
    pub clip: Option<f32>,
}

impl Sampling {
    /// LCMScheduler with epsilon prediction and no clamp (what a graph built before the other samplers
    /// ran).
    pub const LCM: Sampling = Sampling { rule: StepRule::Consistency, prediction: Prediction::Epsilon, clip: None };
}

/// One step's coefficients, f32 on every backend; the host computes each as the scheduler does. Unused
/// fields are 0 (`Default`). The rules read:
/// - all: `guidance` (when the step combines a guided batch), then the tail
///   `next = renoise·y + noise·z` when the step takes noise z, else `next = y`;
/// - [`StepRule::Consistency`]: `sqrt_alpha_t`, `sqrt_beta_t`, `x0_coef` (c_out), `skip_coef` (c_skip);
/// - [`StepRule::Ddim`]: `sqrt_alpha_t`, `sqrt_beta_t`, `x0_coef`, `eps_coef`;
/// - [`StepRule::Euler`]: `sigma`, `sigma_sq1`, `input_div`, `dt`;
/// - inpainting's blend (any rule): `keep_image`, `keep_noise`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    /// The UNet's timestep at this step (informational; the UNet reads its own `t` input).
    pub timestep: f32,
    /// Classifier-free guidance scale g.
    pub guidance: f32,
    /// sqrt(ā_t).
    pub sqrt_alpha_t: f32,
    /// sqrt(1 − ā_t).
    pub sqrt_beta_t: f32,
    /// σ_t (Euler).
    pub sigma: f32,
    /// σ_t² + 1 (Euler's v-prediction).
    pub sigma_sq1: f32,
    /// sqrt(σ_t² + 1): the UNet reads x / this (Euler's `scale_model_input`); 1 for the other rules.
    pub input_div: f32,
    /// Weight of x0 in y: LCM's c_out, DDIM's sqrt(ā_prev), TCD's sqrt(ā_s).
    pub x0_coef: f32,
    /// Weight of x_t in y (LCM's c_skip).
    pub skip_coef: f32,
    /// Weight of eps in y (DDIM's sqrt(1 − ā_prev − σ²), TCD's sqrt(1 − ā_s)).
    pub eps_coef: f32,
    /// dt = σ_next − σ (Euler; σ_down − σ for Euler-ancestral).
    pub dt: f32,
    /// Weight of y when noise is added: LCM's sqrt(ā_prev), TCD's sqrt(ā_prev/ā_s), 1 for DDIM and Euler.
    pub renoise: f32,
    /// Weight of the noise z: LCM's sqrt(1 − ā_prev), TCD's sqrt(1 − ā_prev/ā_s), DDIM's σ_t, Euler-a's σ_up.
    pub noise: f32,
    /// Inpainting: the kept region is keep_image·image + keep_noise·noise0 (the scheduler's
    /// `add_noise` at the next timestep: sqrt(ā), sqrt(1−ā); or 1, σ for Euler).
    pub keep_image: f32,
    /// See `keep_image`.
    pub keep_noise: f32,
    /// Padding to 64 bytes (0).
    pub pad: f32,
}

/// f32 values in a [`StepRow`]: the width of the graph's `schedule` input.
pub const STEP_ROW: usize = std::mem::size_of::<StepRow>() / 4;

impl StepRow {
    /// Row `step` of a schedule tensor's data (`[steps, STEP_ROW]`).
    pub fn of(schedule: &[f32], step: usize) -> StepRow {
        bytemuck::pod_read_unaligned(bytemuck::cast_slice(&schedule[step * STEP_ROW..(step + 1) * STEP_ROW]))
    }

    /// The row as the schedule tensor holds it.
    pub fn as_slice(&self) -> &[f32] {
        bytemuck::cast_slice(std::slice::from_ref(self))
    }
}

/// Classifier-free guidance: u + g·(c − u), one f32 rounding per operation as torch does it.
#[inline]
pub fn guide(uncond: f32, cond: f32, g: f32) -> f32 {
    uncond + g * (cond - uncond)
}

/// The UNet's input element at this step: x / input_div (`scale_model_input`; a division by 1 for the
/// rules that do not scale, which is exact).
#[inline]
pub fn model_input(x: f32, r: &StepRow) -> f32 {
    x / r.input_div
}

/// One element of inpainting's blend (diffusers' StableDiffusionInpaintPipeline with a 4-channel UNet):
/// the kept region is the image's latent re-noised to the next timestep (`scheduler.add_noise`), or
/// the latent itself after the last step; `(1 − mask)·keep + mask·x`, one f32 rounding per operation.
#[inline]
pub fn inpaint_blend(x: f32, image: f32, noise: f32, mask: f32, r: &StepRow, last: bool) -> f32 {
    let keep = if last { image } else { r.keep_image * image + r.keep_noise * noise };
    (1.0 - mask) * keep + mask * x
}

/// One element of the step: x0 (and eps) from the model output by the rule's parametrisation, y by the
/// rule, then the noise tail. Every operation is one f32 rounding, in diffusers' order (see each
/// scheduler's `step`).
#[inline]
pub fn step(x: f32, model_output: f32, noise: Option<f32>, r: &StepRow, s: &Sampling) -> f32 {
    let m = model_output;
    let y = match s.rule {
        StepRule::Consistency | StepRule::Ddim => {
            let (a, b) = (r.sqrt_alpha_t, r.sqrt_beta_t);
            let (mut x0, eps) = match s.prediction {
                Prediction::Epsilon => ((x - b * m) / a, m),
                Prediction::VPrediction => (a * x - b * m, a * m + b * x),
                Prediction::Sample => (m, (x - a * m) / b),
            };
            // DDIM clamps x0 after eps is taken (use_clipped_model_output is off in the pipelines).
            if let Some(range) = s.clip {
                x0 = x0.clamp(-range, range);
            }
            match s.rule {
                StepRule::Consistency => r.x0_coef * x0 + r.skip_coef * x,
                _ => r.x0_coef * x0 + r.eps_coef * eps,
            }
        }
        StepRule::Euler => {
            let x0 = match s.prediction {
                Prediction::Epsilon => x - r.sigma * m,
                // model_output · (−σ / sqrt(σ²+1)) + x / (σ²+1)
                Prediction::VPrediction => m * (-r.sigma / r.input_div) + x / r.sigma_sq1,
                Prediction::Sample => m,
            };
            x + ((x - x0) / r.sigma) * r.dt
        }
    };
    match noise {
        Some(z) => r.renoise * y + r.noise * z,
        None => y,
    }
}
