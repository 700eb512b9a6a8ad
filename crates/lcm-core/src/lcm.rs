//! The LCM consistency step (diffusers' `LCMScheduler.step`) as the graph runs it: the layout of one
//! step's coefficients (a row of the graph's `schedule` input) and the per-element arithmetic. One
//! source for the host scheduler, the CPU backend's op and, by the same layout (`LcmStepRow` in
//! kernels/include/lcm_abi.h, compared by tests/abi.rs), the CUDA kernel.

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

/// One step's coefficients, f32 on every backend. ā_t is the step's alpha_cumprod, ā_prev the next
/// step's (or the final one's); c_skip and c_out the boundary scalings at t; `guidance` the CFG scale
/// (read only when the step combines a guided batch).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepRow {
    /// The UNet's timestep at this step (informational; the UNet reads its own `t` input).
    pub timestep: f32,
    /// sqrt(ā_t).
    pub sqrt_alpha_t: f32,
    /// sqrt(1 − ā_t).
    pub sqrt_beta_t: f32,
    /// sqrt(ā_prev).
    pub sqrt_alpha_prev: f32,
    /// sqrt(1 − ā_prev).
    pub sqrt_beta_prev: f32,
    /// Weight of x_t in the denoised sample.
    pub c_skip: f32,
    /// Weight of x0 in the denoised sample.
    pub c_out: f32,
    /// Classifier-free guidance scale g.
    pub guidance: f32,
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

/// One element of inpainting's blend (diffusers' StableDiffusionInpaintPipeline with a 4-channel UNet):
/// the kept region is the image's latent re-noised to the next timestep (`scheduler.add_noise`), or
/// the latent itself after the last step; `(1 − mask)·keep + mask·x`, one f32 rounding per operation.
#[inline]
pub fn inpaint_blend(x: f32, image: f32, noise: f32, mask: f32, r: &StepRow, last: bool) -> f32 {
    let keep = if last { image } else { r.sqrt_alpha_prev * image + r.sqrt_beta_prev * noise };
    (1.0 - mask) * keep + mask * x
}

/// One element of the step: x0 from the model output, denoised = c_out·x0 + c_skip·x, then the next
/// sample sqrt(ā_prev)·denoised + sqrt(1−ā_prev)·z, or denoised itself on the last step (no noise).
/// Every operation is one f32 rounding, in diffusers' order.
#[inline]
pub fn step(
    x: f32,
    model_output: f32,
    noise: Option<f32>,
    r: &StepRow,
    prediction: Prediction,
    clip: Option<f32>,
) -> f32 {
    let mut x0 = match prediction {
        Prediction::Epsilon => (x - r.sqrt_beta_t * model_output) / r.sqrt_alpha_t,
        Prediction::VPrediction => r.sqrt_alpha_t * x - r.sqrt_beta_t * model_output,
        Prediction::Sample => model_output,
    };
    if let Some(range) = clip {
        x0 = x0.clamp(-range, range);
    }
    let denoised = r.c_out * x0 + r.c_skip * x;
    match noise {
        Some(z) => r.sqrt_alpha_prev * denoised + r.sqrt_beta_prev * z,
        None => denoised,
    }
}
