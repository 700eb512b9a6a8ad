//! The sampler step over a whole latent (kernels/lcm_step.cu): `lcm_core::lcm::step` per element,
//! after classifier-free guidance when the model output is a guided [uncond; cond] batch.

use lcm_core::lcm::{self, Sampling, StepRow};

/// The latent's step inputs: x_t, the model output (twice x's length when guided) and the noise row
/// re-injected (none on the last step).
pub struct StepInputs<'a> {
    /// Latents x_t.
    pub x: &'a [f32],
    /// The UNet's output: x's length, or [uncond; cond] of twice it when guided.
    pub model_output: &'a [f32],
    /// This step's noise, x's length.
    pub noise: Option<&'a [f32]>,
}

/// `out[i] = lcm::step(x[i], ε[i], noise[i], row)`, with ε = u + g·(c − u) of the guided halves.
pub fn lcm_step(s: StepInputs, row: &StepRow, guided: bool, sampling: &Sampling, out: &mut [f32]) {
    let n = out.len();
    let eps = s.model_output;
    for (i, o) in out.iter_mut().enumerate() {
        let e = if guided { lcm::guide(eps[i], eps[n + i], row.guidance) } else { eps[i] };
        *o = lcm::step(s.x[i], e, s.noise.map(|z| z[i]), row, sampling);
    }
}

/// Inpainting's blend over the latents (`lcm::inpaint_blend` per element); `mask` has one value per
/// pixel of `c` channels.
pub fn inpaint_blend(
    x: &[f32],
    image: &[f32],
    noise: &[f32],
    mask: &[f32],
    c: usize,
    row: &StepRow,
    last: bool,
    out: &mut [f32],
) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = lcm::inpaint_blend(x[i], image[i], noise[i], mask[i / c], row, last);
    }
}
