//! diffusers' `TCDScheduler` (scheduling_tcd.py): LCM's distillation grid of timesteps, and a step that
//! predicts the sample at s = floor((1 − γ)·t_prev) (DDIM's x0 + eps rule with ā_s) and, when γ > 0,
//! re-noises it to t_prev.

use lcm_core::lcm::{Sampling, StepRow, StepRule};
use lcm_core::Result;
use lcm_models::denoise::NoiseSteps;

use super::config::Params;
use super::lcm::{LcmConfig, LcmScheduler};

/// TCD: the grid and ā of an [`LcmScheduler`] built from the same config, plus γ (`eta`).
#[derive(Debug, Clone)]
pub(crate) struct TcdScheduler {
    grid: LcmScheduler,
    eta: f32,
}

impl TcdScheduler {
    pub fn new(params: Params, eta: f32) -> Result<Self> {
        // TCD reads clip_sample but its step never clamps.
        let config = LcmConfig { clip_sample: None, ..LcmConfig::from_params(params) };
        Ok(TcdScheduler { grid: LcmScheduler::new(config)?, eta })
    }

    pub fn sampling(&self) -> Sampling {
        Sampling { rule: StepRule::Ddim, prediction: self.grid.config().prediction_type, clip: None }
    }

    /// Noise at every step but the last when γ > 0 (`step` draws none at the last index).
    pub fn noise_steps(&self) -> NoiseSteps {
        if self.eta > 0.0 {
            NoiseSteps::AllButLast
        } else {
            NoiseSteps::None
        }
    }

    pub fn max_steps(&self) -> usize {
        self.grid.config().original_inference_steps
    }

    /// TCDScheduler.set_timesteps without custom timesteps is LCMScheduler's: evenly spaced indices
    /// into the reversed distillation grid, cut by `strength`.
    pub fn set_timesteps(&mut self, n: usize, strength: f64) -> Result<Vec<f64>> {
        Ok(self.grid.set_timesteps(n, strength)?.iter().map(|&t| t as f64).collect())
    }

    fn timestep(&self, i: usize) -> Option<i64> {
        self.grid.timesteps().get(i).copied()
    }

    /// Step i: t, t_prev = the next timestep (0 after the last: `torch.tensor(0)`, not
    /// final_alpha_cumprod), s = floor(f32(1 − γ)·t_prev) (a Python float times a long tensor is an f32
    /// product).
    pub fn row(&self, i: usize, guidance: f32) -> StepRow {
        let ac = self.grid.alphas_cumprod();
        let t = self.timestep(i).expect("a step of the schedule");
        let prev_t = self.timestep(i + 1).unwrap_or(0);
        let s = ((1.0 - self.eta as f64) as f32 * prev_t as f32).floor() as i64;
        let (alpha_t, alpha_prev, alpha_s) = (ac[t as usize], ac[prev_t as usize], ac[s as usize]);
        let ratio = alpha_prev / alpha_s;
        let (keep_image, keep_noise) = (alpha_prev.sqrt(), (1.0 - alpha_prev).sqrt());
        StepRow {
            timestep: t as f32,
            guidance,
            sqrt_alpha_t: alpha_t.sqrt(),
            sqrt_beta_t: (1.0 - alpha_t).sqrt(),
            input_div: 1.0,
            x0_coef: alpha_s.sqrt(),
            eps_coef: (1.0 - alpha_s).sqrt(),
            renoise: ratio.sqrt(),
            noise: (1.0 - ratio).sqrt(),
            keep_image,
            keep_noise,
            ..StepRow::default()
        }
    }

    pub fn add_noise_coefs(&self, i: usize) -> (f32, f32) {
        super::ddpm_coefs(self.grid.alphas_cumprod(), self.timestep(i).expect("a step of the schedule"))
    }
}
