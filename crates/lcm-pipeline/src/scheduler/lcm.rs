//! diffusers' `LCMScheduler` (scheduling_lcm.py, diffusers 0.42): the noise schedule, the LCM
//! timestep selection and the consistency step, in the same float32 operations as diffusers on the
//! CPU so that the same model outputs give the same bits.

use std::path::Path;

use lcm_core::lcm::{self, Prediction, Sampling, StepRow, StepRule};
use lcm_core::{Error, Result};
#[cfg(test)]
use serde_json::Value;

use super::config::{cumprod_alphas, scaled_linear_betas, Params, SchedulerConfig};
use super::SamplerKind;

/// The scheduler settings LCM reads from a `scheduler_config.json` (any `_class_name`: SD1.5 ships
/// a PNDMScheduler config, which diffusers turns into an LCMScheduler with `from_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct LcmConfig {
    /// `num_train_timesteps` (1000): the length of the noise schedule.
    pub num_train_timesteps: usize,
    /// f32 betas, one per training timestep.
    pub betas: Vec<f32>,
    /// `set_alpha_to_one`: ā before timestep 0 is 1 rather than ā_0 (LCMScheduler's default true;
    /// SD1.5's config says false).
    pub set_alpha_to_one: bool,
    /// `prediction_type`: what the UNet outputs.
    pub prediction_type: Prediction,
    /// `clip_sample_range` when `clip_sample` is on.
    pub clip_sample: Option<f32>,
    /// `timestep_scaling` (10): τ = t·timestep_scaling in the boundary scalings.
    pub timestep_scaling: f32,
    /// `original_inference_steps` (50): the size of the distillation grid timesteps are chosen from.
    pub original_inference_steps: usize,
}

impl LcmConfig {
    /// The LCMScheduler defaults with SD1.5's noise schedule (scaled_linear 0.00085 → 0.012 over
    /// 1000 steps).
    pub fn sd15() -> Self {
        LcmConfig {
            num_train_timesteps: 1000,
            betas: scaled_linear_betas(0.00085, 0.012, 1000),
            set_alpha_to_one: true,
            prediction_type: Prediction::Epsilon,
            clip_sample: None,
            timestep_scaling: 10.0,
            original_inference_steps: 50,
        }
    }

    /// Reads a diffusers `scheduler_config.json` as `LCMScheduler.from_config` does (see
    /// [`SchedulerConfig`]): keys LCM does not use (skip_prk_steps, timestep_spacing, ...) are ignored;
    /// what LCM cannot honour (thresholding, unknown beta schedules) is an error naming the key.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let config = SchedulerConfig::from_json_file(path)?;
        Self::from_config(&config)
    }

    /// `LCMScheduler.from_config(config)`.
    pub fn from_config(config: &SchedulerConfig) -> Result<Self> {
        let params = Params::resolve(config, SamplerKind::Lcm).map_err(|msg| config.error(msg))?;
        Ok(Self::from_params(params))
    }

    pub(crate) fn from_params(p: Params) -> Self {
        LcmConfig {
            num_train_timesteps: p.num_train_timesteps,
            betas: p.betas,
            set_alpha_to_one: p.set_alpha_to_one,
            prediction_type: p.prediction,
            clip_sample: p.clip,
            timestep_scaling: p.timestep_scaling,
            original_inference_steps: p.original_inference_steps,
        }
    }

    #[cfg(test)]
    fn from_json(json: &Value) -> std::result::Result<Self, String> {
        let config = SchedulerConfig::from_json(json)?;
        Params::resolve(&config, SamplerKind::Lcm).map(Self::from_params)
    }
}

/// The LCM scheduler: fixed noise schedule plus the timesteps chosen by the last `set_timesteps`.
#[derive(Debug, Clone)]
pub struct LcmScheduler {
    config: LcmConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<i64>,
}

impl LcmScheduler {
    /// A scheduler with ā = cumprod(1 − β) of `config`'s betas; betas that do not number
    /// `num_train_timesteps` are an error.
    pub fn new(config: LcmConfig) -> Result<Self> {
        if config.betas.len() != config.num_train_timesteps || config.betas.is_empty() {
            return Err(Error::invalid(
                "scheduler betas",
                format!("{} betas for {} training timesteps", config.betas.len(), config.num_train_timesteps),
            ));
        }
        let alphas_cumprod = cumprod_alphas(&config.betas);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(LcmScheduler { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new() })
    }

    /// From a diffusers `scheduler/scheduler_config.json`.
    pub fn from_config_json(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(LcmConfig::from_json_file(path)?)
    }

    /// The schedule of the last `set_timesteps` / `set_custom_timesteps`.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The settings it was built from.
    pub fn config(&self) -> &LcmConfig {
        &self.config
    }

    /// ā_t for t in 0..num_train_timesteps, f32 as torch stores them.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ā for a timestep below 0: 1 with `set_alpha_to_one`, else ā_0. LCM's steps never reach it (the
    /// last step takes its own ā_t as ā_prev, as diffusers).
    pub fn final_alpha_cumprod(&self) -> f32 {
        self.final_alpha_cumprod
    }

    /// diffusers' `original_inference_steps` argument of `set_timesteps`: the distillation grid
    /// size.
    pub fn set_original_inference_steps(&mut self, steps: usize) {
        self.config.original_inference_steps = steps;
    }

    /// The distillation grid [k−1, 2k−1, ...] (k = N // original_steps) cut to
    /// original_steps·strength.
    fn origin_grid(&self, strength: f64) -> Result<Vec<i64>> {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(Error::invalid("strength", format!("{strength}: expected a value in (0, 1]")));
        }
        let original = self.config.original_inference_steps;
        let train = self.config.num_train_timesteps;
        if original == 0 || original > train {
            return Err(Error::invalid(
                "original_inference_steps",
                format!("{original}: expected 1..={train} (the scheduler's training timesteps)"),
            ));
        }
        let k = (train / original) as i64;
        let len = (original as f64 * strength) as i64;
        Ok((1..=len).map(|i| i * k - 1).collect())
    }

    /// LCM's schedule of `num_inference_steps` timesteps: evenly spaced indices into the reversed
    /// distillation grid (n = 4 → [999, 759, 499, 259] for SD1.5). `strength` < 1 (img2img) keeps
    /// the low-noise part of the grid.
    pub fn set_timesteps(&mut self, num_inference_steps: usize, strength: f64) -> Result<&[i64]> {
        let grid = self.origin_grid(strength)?;
        let n = num_inference_steps;
        let original = self.config.original_inference_steps;
        if n == 0 || n > original {
            return Err(Error::invalid(
                "steps",
                format!("{n}: expected 1..={original} (the scheduler's original_inference_steps)"),
            ));
        }
        if grid.len() < n {
            let msg = format!(
                "{n} steps at strength {strength}: {original} original steps × strength leave {} \
                 timesteps; lower the steps or raise the strength",
                grid.len()
            );
            return Err(Error::invalid("steps", msg));
        }
        // numpy: floor(linspace(0, L, n, endpoint=False)) = floor(j · (L / n)) in f64.
        let step = grid.len() as f64 / n as f64;
        self.timesteps = (0..n).map(|j| grid[grid.len() - 1 - (j as f64 * step).floor() as usize]).collect();
        Ok(&self.timesteps)
    }

    /// A caller-chosen schedule (strictly descending, each in 0..num_train_timesteps). As in
    /// diffusers, `strength` < 1 drops the first len − floor(len·strength) timesteps. (diffusers
    /// then still draws noise at the last kept step, into a sample nobody decodes; here the last
    /// step never takes noise, which changes only the generator's state after the loop.)
    pub fn set_custom_timesteps(&mut self, timesteps: &[i64], strength: f64) -> Result<&[i64]> {
        self.origin_grid(strength)?;
        let train = self.config.num_train_timesteps as i64;
        if timesteps.is_empty() {
            return Err(Error::invalid("timesteps", "empty: expected at least one timestep"));
        }
        if let Some(&t) = timesteps.iter().find(|&&t| t < 0 || t >= train) {
            return Err(Error::invalid("timesteps", format!("{t}: expected timesteps in 0..{train}")));
        }
        if timesteps.windows(2).any(|w| w[1] >= w[0]) {
            return Err(Error::invalid("timesteps", format!("{timesteps:?}: expected strictly descending values")));
        }
        let len = timesteps.len();
        let keep = ((len as f64 * strength) as usize).min(len);
        if keep == 0 {
            return Err(Error::invalid(
                "strength",
                format!("{strength} keeps none of the {len} custom timesteps; raise the strength"),
            ));
        }
        self.timesteps = timesteps[len - keep..].to_vec();
        Ok(&self.timesteps)
    }

    /// The consistency-model boundary scalings at timestep t (σ_data = 0.5, τ =
    /// t·timestep_scaling): c_skip = σ²/(τ²+σ²), c_out = τ/sqrt(τ²+σ²), in f32 as diffusers
    /// evaluates them on a timestep tensor.
    pub fn scalings(&self, t: i64) -> (f32, f32) {
        const SIGMA_DATA_SQ: f32 = 0.25;
        let tau = t as f32 * self.config.timestep_scaling;
        let denom = tau * tau + SIGMA_DATA_SQ;
        // Python's `0.25 / tensor` is `tensor.reciprocal() * 0.25` in torch.
        ((1.0 / denom) * SIGMA_DATA_SQ, tau / denom.sqrt())
    }

    /// Whether step `step_index` re-injects noise: every step but the last (diffusers draws none
    /// there).
    pub fn noise_needed(&self, step_index: usize) -> bool {
        step_index + 1 < self.timesteps.len()
    }

    /// ā at a timestep of the schedule; `final_alpha_cumprod` below 0.
    fn alpha_cumprod_at(&self, t: i64) -> f32 {
        if t < 0 {
            self.final_alpha_cumprod
        } else {
            self.alphas_cumprod[t as usize]
        }
    }

    /// One LCM step, allocating its outputs: see [`LcmScheduler::step_into`]. Returns (prev_sample,
    /// denoised).
    pub fn step(
        &self,
        step_index: usize,
        model_output: &[f32],
        sample: &[f32],
        noise: Option<&[f32]>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut prev = sample.to_vec();
        let mut denoised = vec![0.0; sample.len()];
        self.step_into(step_index, model_output, &mut prev, &mut denoised, noise)?;
        Ok((prev, denoised))
    }

    /// One LCM step in place: `sample` (x_t) becomes x_prev and `denoised` receives c_out·x0 +
    /// c_skip·x_t. `noise` (z ~ N(0, 1), drawn from the pipeline's generator) must be given exactly
    /// when [`LcmScheduler::noise_needed`]: x_prev = sqrt(ā_prev)·denoised + sqrt(1−ā_prev)·z; at
    /// the last step x_prev = denoised. Every operation is one f32 rounding, in diffusers' order.
    pub fn step_into(
        &self,
        step_index: usize,
        model_output: &[f32],
        sample: &mut [f32],
        denoised: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<()> {
        if step_index >= self.timesteps.len() {
            return Err(Error::invalid(
                "step_index",
                format!("{step_index}: the schedule has {} timesteps (call set_timesteps first)", self.timesteps.len()),
            ));
        }
        let n = sample.len();
        check_len("model_output", model_output.len(), n)?;
        check_len("denoised", denoised.len(), n)?;
        let noise = match (self.noise_needed(step_index), noise) {
            (true, Some(z)) => check_len("noise", z.len(), n).map(|_| Some(z))?,
            (false, None) => None,
            (true, None) => return Err(Error::invalid("noise", format!("step {step_index} needs noise"))),
            // Drawing noise diffusers does not draw would shift the generator's stream.
            (false, Some(_)) => {
                let msg = format!("step {step_index} is the last and takes no noise (diffusers draws none)");
                return Err(Error::invalid("noise", msg));
            }
        };

        let row = self.row(step_index, 1.0);
        let sampling = Sampling {
            rule: StepRule::Consistency,
            prediction: self.config.prediction_type,
            clip: self.config.clip_sample,
        };
        for i in 0..n {
            let x = sample[i];
            // The same value the last step returns as the next sample: x_prev without noise.
            let d = lcm::step(x, model_output[i], None, &row, &sampling);
            denoised[i] = d;
            sample[i] = match noise {
                Some(z) => lcm::step(x, model_output[i], Some(z[i]), &row, &sampling),
                None => d,
            };
        }
        Ok(())
    }

    /// The coefficients of step `step_index` of the current schedule (see [`StepRow`]), with
    /// classifier-free guidance scale `guidance`. ā_prev is the next step's ā (at the last step, where
    /// no noise is added, diffusers takes t itself).
    pub fn row(&self, step_index: usize, guidance: f32) -> StepRow {
        let t = self.timesteps[step_index];
        let prev_t = self.timesteps.get(step_index + 1).copied().unwrap_or(t);
        let alpha_t = self.alpha_cumprod_at(t);
        let alpha_prev = self.alpha_cumprod_at(prev_t);
        let (c_skip, c_out) = self.scalings(t);
        let (sqrt_alpha_prev, sqrt_beta_prev) = (alpha_prev.sqrt(), (1.0 - alpha_prev).sqrt());
        StepRow {
            timestep: t as f32,
            guidance,
            sqrt_alpha_t: alpha_t.sqrt(),
            sqrt_beta_t: (1.0 - alpha_t).sqrt(),
            input_div: 1.0,
            x0_coef: c_out,
            skip_coef: c_skip,
            renoise: sqrt_alpha_prev,
            noise: sqrt_beta_prev,
            // add_noise at the next timestep, which is ā_prev's.
            keep_image: sqrt_alpha_prev,
            keep_noise: sqrt_beta_prev,
            ..StepRow::default()
        }
    }

    /// diffusers' `add_noise` (img2img): sqrt(ā_t)·x0 + sqrt(1−ā_t)·noise, in place on `x0`.
    pub fn add_noise(&self, x0: &mut [f32], noise: &[f32], t: i64) -> Result<()> {
        if t < 0 || t as usize >= self.alphas_cumprod.len() {
            return Err(Error::invalid("timestep", format!("{t}: expected 0..{}", self.alphas_cumprod.len())));
        }
        check_len("noise", noise.len(), x0.len())?;
        let alpha = self.alphas_cumprod[t as usize];
        let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        for (x, z) in x0.iter_mut().zip(noise) {
            *x = a * *x + b * z;
        }
        Ok(())
    }
}

pub(crate) fn check_len(what: &str, len: usize, sample_len: usize) -> Result<()> {
    if len == sample_len {
        Ok(())
    } else {
        Err(Error::invalid(what, format!("{len} elements, the sample has {sample_len}")))
    }
}

/// `LatentConsistencyModelPipeline.get_guidance_scale_embedding`: for each w, with half = dim/2 and
/// f_j = exp(−j·ln(10000)/(half−1)), [sin(1000·w·f_j)..., cos(1000·w·f_j)...], zero-padded to an
/// odd `dim`. Row-major [w.len(), dim]. The f32 products are torch's; exp/sin/cos are evaluated in
/// f64 and rounded once. torch's vectorised f32 exp is sometimes an ulp off that, which 1000·w
/// carries into the sin/cos argument: expect differences up to ~1000·w·2⁻²⁴ (4e-4 at w = 7; 1e-5
/// seen in practice).
pub fn guidance_embedding(w: &[f32], dim: usize) -> Vec<f32> {
    let half = dim / 2;
    // torch.log(torch.tensor(10000.0)) / (half_dim - 1), both f32.
    let scale = (10000f64.ln() as f32) / (half as f32 - 1.0);
    let freqs: Vec<f32> = (0..half).map(|j| ((j as f32 * -scale) as f64).exp() as f32).collect();
    let mut out = vec![0.0f32; w.len() * dim];
    for (row, &wi) in out.chunks_exact_mut(dim).zip(w) {
        let w1000 = wi * 1000.0;
        for (j, &f) in freqs.iter().enumerate() {
            let arg = (w1000 * f) as f64;
            row[j] = arg.sin() as f32;
            row[half + j] = arg.cos() as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> LcmScheduler {
        LcmScheduler::new(LcmConfig::sd15()).unwrap()
    }

    #[test]
    fn lcm_timesteps_match_design_examples() {
        let mut s = sd15();
        assert_eq!(s.set_timesteps(4, 1.0).unwrap(), [999, 759, 499, 259]);
        assert_eq!(s.set_timesteps(1, 1.0).unwrap(), [999]);
        assert_eq!(s.set_timesteps(2, 0.5).unwrap(), [499, 259]);
    }

    #[test]
    fn bad_schedules_are_errors() {
        let mut s = sd15();
        assert!(s.set_timesteps(0, 1.0).is_err());
        assert!(s.set_timesteps(51, 1.0).is_err());
        assert!(s.set_timesteps(4, 0.0).is_err());
        assert!(s.set_timesteps(4, 1.5).is_err());
        assert!(s.set_timesteps(4, 0.06).is_err()); // 50 × 0.06 = 3 grid points < 4 steps
        assert!(s.set_custom_timesteps(&[999, 999], 1.0).is_err());
        assert!(s.set_custom_timesteps(&[1000, 10], 1.0).is_err());
        assert!(s.set_custom_timesteps(&[500, -1], 1.0).is_err());
        assert_eq!(s.set_custom_timesteps(&[999, 499, 259, 9], 0.5).unwrap(), [259, 9]);
    }

    #[test]
    fn boundary_scalings() {
        let s = sd15();
        let (c_skip, c_out) = s.scalings(999);
        assert!((c_skip as f64 - 0.25 / (9990.0f64.powi(2) + 0.25)).abs() < 1e-12);
        assert!((c_out - 1.0).abs() < 1e-6);
        assert_eq!(s.scalings(0), (1.0, 0.0));
    }

    #[test]
    fn last_step_returns_denoised_and_refuses_noise() {
        let mut s = sd15();
        s.set_timesteps(2, 1.0).unwrap();
        let x: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let eps: Vec<f32> = (0..32).map(|i| (i as f32 * 0.91).cos()).collect();
        assert!(s.step(0, &eps, &x, None).is_err());
        assert!(s.step(1, &eps, &x, Some(&eps)).is_err());
        let (prev, denoised) = s.step(1, &eps, &x, None).unwrap();
        assert_eq!(prev, denoised);
        assert!(s.noise_needed(0) && !s.noise_needed(1));
    }

    #[test]
    fn unsupported_config_values_name_the_key() {
        let err = LcmConfig::from_json(&serde_json::json!({"beta_schedule": "cosine"})).unwrap_err();
        assert!(err.contains("beta_schedule") && err.contains("cosine"), "{err}");
        let err = LcmConfig::from_json(&serde_json::json!({"thresholding": true})).unwrap_err();
        assert!(err.contains("thresholding"), "{err}");
        let pndm = serde_json::json!({"_class_name": "PNDMScheduler", "set_alpha_to_one": false,
            "steps_offset": 1, "skip_prk_steps": true, "trained_betas": null});
        let cfg = LcmConfig::from_json(&pndm).unwrap();
        assert_eq!(cfg.betas, LcmConfig::sd15().betas);
        assert!(!cfg.set_alpha_to_one);
    }

    #[test]
    fn guidance_embedding_layout() {
        let e = guidance_embedding(&[0.0, 0.5], 7);
        assert_eq!(e.len(), 14);
        assert_eq!(&e[..7], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
        assert!((e[7] - 500f32.sin()).abs() < 1e-6 && e[13] == 0.0);
    }
}
