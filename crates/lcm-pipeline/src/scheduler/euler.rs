//! diffusers' `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler`
//! (scheduling_euler_discrete.py, scheduling_euler_ancestral_discrete.py): k-diffusion's σ
//! parametrisation, σ = sqrt((1 − ā)/ā) interpolated at the (possibly fractional) timesteps; Euler
//! steps to σ_{i+1} (s_churn 0: no noise), Euler-ancestral to σ_down and adds σ_up·z.

use lcm_core::lcm::{Sampling, StepRow, StepRule};
use lcm_models::denoise::NoiseSteps;

use super::config::Params;
use super::Spacing;

#[derive(Debug, Clone)]
pub(crate) struct EulerScheduler {
    params: Params,
    ancestral: bool,
    /// σ at each training timestep, ascending with t: ((1 − ā)/ā)^0.5 in f32.
    train_sigmas: Vec<f32>,
    /// σ_min = σ at t = 0 (`final_sigmas_type: "sigma_min"`).
    sigma_min: f32,
    timesteps: Vec<f32>,
    /// One per timestep plus the final σ.
    sigmas: Vec<f32>,
}

impl EulerScheduler {
    pub fn new(params: Params, ancestral: bool) -> Self {
        let mut alphas_cumprod = params.alphas_cumprod();
        if params.rescale_zero_snr {
            // diffusers: close to 0 without being 0, so the first σ is finite (fp16's smallest subnormal).
            *alphas_cumprod.last_mut().expect("at least one timestep") = 2f32.powi(-24);
        }
        let train_sigmas: Vec<f32> = alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let sigma_min = train_sigmas[0];
        EulerScheduler { params, ancestral, train_sigmas, sigma_min, timesteps: Vec::new(), sigmas: Vec::new() }
    }

    pub fn sampling(&self) -> Sampling {
        Sampling { rule: StepRule::Euler, prediction: self.params.prediction, clip: None }
    }

    /// Euler draws nothing (s_churn 0); Euler-ancestral draws at every step, the last included, but
    /// multiplies that draw by σ_up = 0: skipping it changes only the generator's state afterwards.
    pub fn noise_steps(&self) -> NoiseSteps {
        if self.ancestral {
            NoiseSteps::AllButLast
        } else {
            NoiseSteps::None
        }
    }

    pub fn max_steps(&self) -> usize {
        self.params.num_train_timesteps
    }

    /// f32 timesteps ("linspace" keeps numpy's fractions, "leading" adds steps_offset, "trailing"
    /// subtracts 1), σ = np.interp(t, 0..N, σ_train) in f64 then f32, and the final σ.
    pub fn set_timesteps(&mut self, n: usize) -> Vec<f64> {
        let p = &self.params;
        let spaced = super::spaced(p.spacing, p.num_train_timesteps, n);
        self.timesteps = match p.spacing {
            Spacing::Linspace => spaced.iter().map(|&t| t as f32).collect(),
            Spacing::Leading => spaced.iter().map(|&t| t as f32 + p.steps_offset as f32).collect(),
            Spacing::Trailing => spaced.iter().map(|&t| t as f32 - 1.0).collect(),
        };
        let last = if !self.ancestral && p.final_sigma_min { self.sigma_min } else { 0.0 };
        self.sigmas = self.timesteps.iter().map(|&t| interp(t as f64, &self.train_sigmas) as f32).collect();
        self.sigmas.push(last);
        self.timesteps.iter().map(|&t| t as f64).collect()
    }

    /// The schedule's σ, the final one included.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// `init_noise_sigma`: max σ for "linspace" and "trailing", (max σ² + 1)^0.5 for "leading".
    pub fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        match self.params.spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// Step i: σ = σ_i, the UNet reads x/(σ²+1)^0.5; Euler: dt = σ_{i+1} − σ; ancestral:
    /// σ_up = (σ_to²·(σ_from² − σ_to²)/σ_from²)^0.5, σ_down = (σ_to² − σ_up²)^0.5, dt = σ_down − σ,
    /// each one f32 rounding in diffusers' order.
    pub fn row(&self, i: usize, guidance: f32) -> StepRow {
        let (sigma, to) = (self.sigmas[i], self.sigmas[i + 1]);
        let sigma_sq1 = sigma * sigma + 1.0;
        let (dt, noise) = if self.ancestral {
            let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
            let down = (to * to - up * up).sqrt();
            (down - sigma, up)
        } else {
            (to - sigma, 0.0)
        };
        StepRow {
            timestep: self.timesteps[i],
            guidance,
            sigma,
            sigma_sq1,
            input_div: sigma_sq1.sqrt(),
            dt,
            renoise: 1.0,
            noise,
            // add_noise at timesteps[i + 1]: x0 + noise·σ_{i+1}.
            keep_image: 1.0,
            keep_noise: to,
            ..StepRow::default()
        }
    }

    pub fn add_noise_coefs(&self, i: usize) -> (f32, f32) {
        (1.0, self.sigmas[i])
    }
}

/// `np.interp(x, arange(len(fp)), fp)` in f64 (numpy's compiled loop: the left/right values outside,
/// fp[j] at a grid point, else slope·(x − j) + fp[j]).
fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x.is_nan() {
        return x;
    }
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}
