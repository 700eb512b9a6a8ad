//! diffusers' `DDIMScheduler` (scheduling_ddim.py): x0 and eps from ā_t, then
//! x_prev = sqrt(ā_prev)·x0 + sqrt(1 − ā_prev − σ²)·eps + σ·z with σ = η·sqrt(variance).

use lcm_core::lcm::{Sampling, StepRow, StepRule};
use lcm_models::denoise::NoiseSteps;

use super::config::Params;
use super::Spacing;

#[derive(Debug, Clone)]
pub(crate) struct DdimScheduler {
    params: Params,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    eta: f32,
    timesteps: Vec<i64>,
}

impl DdimScheduler {
    pub fn new(params: Params, eta: f32) -> Self {
        let alphas_cumprod = params.alphas_cumprod();
        let final_alpha_cumprod = if params.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        DdimScheduler { params, alphas_cumprod, final_alpha_cumprod, eta, timesteps: Vec::new() }
    }

    pub fn sampling(&self) -> Sampling {
        Sampling { rule: StepRule::Ddim, prediction: self.params.prediction, clip: self.params.clip }
    }

    /// With η > 0 DDIM draws noise at every step, the last included.
    pub fn noise_steps(&self) -> NoiseSteps {
        if self.eta > 0.0 {
            NoiseSteps::All
        } else {
            NoiseSteps::None
        }
    }

    pub fn max_steps(&self) -> usize {
        self.params.num_train_timesteps
    }

    /// "linspace": round(linspace(0, N−1, n)) reversed; "leading": (0..n)·(N // n) reversed +
    /// steps_offset; "trailing": round(arange(N, 0, −N/n)) − 1.
    pub fn set_timesteps(&mut self, n: usize) -> Vec<f64> {
        let p = &self.params;
        let spaced = super::spaced(p.spacing, p.num_train_timesteps, n);
        self.timesteps = match p.spacing {
            Spacing::Linspace => spaced.iter().map(|t| t.round_ties_even() as i64).collect(),
            Spacing::Leading => spaced.iter().map(|&t| t as i64 + p.steps_offset).collect(),
            Spacing::Trailing => spaced.iter().map(|&t| t as i64 - 1).collect(),
        };
        self.timesteps.iter().map(|&t| t as f64).collect()
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.alphas_cumprod[t as usize]
        } else {
            self.final_alpha_cumprod
        }
    }

    /// Step i: prev_t = t − N // n whatever the spacing (diffusers' `step`), ā_prev =
    /// final_alpha_cumprod below 0.
    pub fn row(&self, i: usize, guidance: f32) -> StepRow {
        let t = self.timesteps[i];
        let prev_t = t - (self.params.num_train_timesteps / self.timesteps.len()) as i64;
        let (alpha_t, alpha_prev) = (self.alpha(t), self.alpha(prev_t));
        let (beta_t, beta_prev) = (1.0 - alpha_t, 1.0 - alpha_prev);
        let variance = (beta_prev / beta_t) * (1.0 - alpha_t / alpha_prev);
        // `eta * variance ** 0.5`: a Python float times an f32 tensor is an f32 product.
        let sigma = self.eta * variance.sqrt();
        let (keep_image, keep_noise) = match self.timesteps.get(i + 1) {
            Some(&next) => super::ddpm_coefs(&self.alphas_cumprod, next),
            None => (0.0, 0.0),
        };
        StepRow {
            timestep: t as f32,
            guidance,
            sqrt_alpha_t: alpha_t.sqrt(),
            sqrt_beta_t: beta_t.sqrt(),
            input_div: 1.0,
            x0_coef: alpha_prev.sqrt(),
            eps_coef: (1.0 - alpha_prev - sigma * sigma).sqrt(),
            renoise: 1.0,
            noise: sigma,
            keep_image,
            keep_noise,
            ..StepRow::default()
        }
    }

    pub fn add_noise_coefs(&self, i: usize) -> (f32, f32) {
        super::ddpm_coefs(&self.alphas_cumprod, self.timesteps[i])
    }
}
