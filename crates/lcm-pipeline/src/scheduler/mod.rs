//! The samplers (diffusers 0.42's `LCMScheduler`, `TCDScheduler`, `DDIMScheduler`,
//! `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`) as the host half of the graph's step:
//! each computes its timesteps and, per step, the [`StepRow`] of scalars that [`lcm::step`] applies, in
//! f32 as torch computes them, and says which steps take noise. One [`Scheduler`] over all of them.
//!
//! - [`config`]: a `scheduler_config.json` read as `X.from_config` reads it.
//! - [`lcm`](self::lcm), [`tcd`], [`ddim`], [`euler`] (Euler and Euler-ancestral): one sampler each.

mod config;
mod ddim;
mod euler;
mod lcm;
mod tcd;

use lcm_core::lcm::{self as step_rule, Sampling, StepRow};
use lcm_core::{Error, Result};
use lcm_models::denoise::NoiseSteps;

use self::config::Params;
pub use self::config::{scaled_linear_betas, torch_linspace_f32, SchedulerConfig};
use self::ddim::DdimScheduler;
use self::euler::EulerScheduler;
pub use self::lcm::{guidance_embedding, LcmConfig, LcmScheduler};
use self::tcd::TcdScheduler;

/// The samplers lcm runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplerKind {
    /// `LCMScheduler`: the consistency step (LCM UNets and LCM-LoRAs).
    Lcm,
    /// `TCDScheduler`: trajectory consistency distillation, `eta` (gamma) of stochasticity.
    Tcd,
    /// `EulerDiscreteScheduler`.
    Euler,
    /// `EulerAncestralDiscreteScheduler`.
    EulerAncestral,
    /// `DDIMScheduler`.
    Ddim,
}

/// (kind, CLI name, diffusers class, A1111 name).
const KINDS: [(SamplerKind, &str, &str, &str); 5] = [
    (SamplerKind::Lcm, "lcm", "LCMScheduler", "LCM"),
    (SamplerKind::Tcd, "tcd", "TCDScheduler", "TCD"),
    (SamplerKind::Euler, "euler", "EulerDiscreteScheduler", "Euler"),
    (SamplerKind::EulerAncestral, "euler-a", "EulerAncestralDiscreteScheduler", "Euler a"),
    (SamplerKind::Ddim, "ddim", "DDIMScheduler", "DDIM"),
];

impl SamplerKind {
    /// Every sampler, in the order of the names above.
    pub const ALL: [SamplerKind; 5] =
        [SamplerKind::Lcm, SamplerKind::Tcd, SamplerKind::Euler, SamplerKind::EulerAncestral, SamplerKind::Ddim];

    fn entry(self) -> &'static (SamplerKind, &'static str, &'static str, &'static str) {
        KINDS.iter().find(|e| e.0 == self).expect("every kind is listed")
    }

    /// From its name: "lcm", "tcd", "euler", "euler-a", "ddim".
    pub fn parse(name: &str) -> Option<Self> {
        KINDS.iter().find(|e| e.1 == name).map(|e| e.0)
    }

    /// Its name (what [`SamplerKind::parse`] reads).
    pub fn name(self) -> &'static str {
        self.entry().1
    }

    /// From a diffusers class name (`_class_name` of a scheduler_config.json).
    pub fn from_class_name(class: &str) -> Option<Self> {
        KINDS.iter().find(|e| e.2 == class).map(|e| e.0)
    }

    /// The diffusers class.
    pub fn class_name(self) -> &'static str {
        self.entry().2
    }

    /// The sampler's name in A1111's infotext ("Sampler: Euler a").
    pub fn a1111_name(self) -> &'static str {
        self.entry().3
    }

    /// From an A1111 sampler name, case-insensitive.
    pub fn from_a1111(name: &str) -> Option<Self> {
        KINDS.iter().find(|e| e.3.eq_ignore_ascii_case(name.trim())).map(|e| e.0)
    }

    /// Whether `step` takes an `eta` (TCD's gamma, DDIM's eta).
    pub fn takes_eta(self) -> bool {
        matches!(self, SamplerKind::Tcd | SamplerKind::Ddim)
    }
}

/// How timesteps are spread over the training schedule (`timestep_spacing`; Table 2 of
/// "Common Diffusion Noise Schedules and Sample Steps are Flawed"). DDIM, Euler and Euler-ancestral
/// read it; LCM and TCD choose from their distillation grid instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spacing {
    /// `(0..n)·(N // n)` reversed, plus `steps_offset`.
    Leading,
    /// `round(arange(N, 0, −N/n)) − 1`.
    Trailing,
    /// `linspace(0, N − 1, n)` reversed (DDIM rounds it; Euler keeps fractions).
    Linspace,
}

impl Spacing {
    /// From "leading", "trailing" or "linspace".
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "leading" => Some(Spacing::Leading),
            "trailing" => Some(Spacing::Trailing),
            "linspace" => Some(Spacing::Linspace),
            _ => None,
        }
    }

    /// Its name in a config.
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Leading => "leading",
            Spacing::Trailing => "trailing",
            Spacing::Linspace => "linspace",
        }
    }
}

/// What a user chooses on top of the model's scheduler config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOptions {
    /// The sampler.
    pub kind: SamplerKind,
    /// TCD's gamma / DDIM's eta in [0, 1]; None is 0, what diffusers' pipelines pass to `step`
    /// unless told (TCDScheduler's own default 0.3 is never used by a pipeline).
    pub eta: Option<f32>,
    /// Overrides the config's `timestep_spacing` (DDIM, Euler, Euler-ancestral only).
    pub timestep_spacing: Option<Spacing>,
}

impl SamplerOptions {
    /// `kind` with the config's settings.
    pub fn new(kind: SamplerKind) -> Self {
        SamplerOptions { kind, eta: None, timestep_spacing: None }
    }
}

#[derive(Debug, Clone)]
enum Inner {
    Lcm(LcmScheduler),
    Tcd(TcdScheduler),
    Ddim(DdimScheduler),
    Euler(EulerScheduler),
}

/// A sampler built from a model's scheduler config: its timesteps for n steps and each step's
/// [`StepRow`].
#[derive(Debug, Clone)]
pub struct Scheduler {
    kind: SamplerKind,
    inner: Inner,
    timesteps: Vec<f64>,
}

impl Scheduler {
    /// `kind.from_config(config)` with the user's options. Errors: `eta` outside [0, 1] or given to a
    /// sampler that takes none, a spacing given to LCM/TCD, a config key the sampler reads but cannot
    /// honour.
    pub fn new(config: &SchedulerConfig, options: &SamplerOptions) -> Result<Self> {
        let kind = options.kind;
        let eta = match options.eta {
            Some(eta) if !kind.takes_eta() => {
                let msg = format!("{eta}: the {} sampler takes no eta (only tcd and ddim do)", kind.name());
                return Err(Error::invalid("eta", msg));
            }
            Some(eta) if !(0.0..=1.0).contains(&eta) => {
                return Err(Error::invalid("eta", format!("{eta}: expected a value in [0, 1]")));
            }
            eta => eta.unwrap_or(0.0),
        };
        let mut params = Params::resolve(config, kind).map_err(|msg| config.error(msg))?;
        if let Some(spacing) = options.timestep_spacing {
            if matches!(kind, SamplerKind::Lcm | SamplerKind::Tcd) {
                let msg = format!(
                    "{}: the {} sampler picks timesteps from its distillation grid",
                    spacing.name(),
                    kind.name()
                );
                return Err(Error::invalid("timestep_spacing", msg));
            }
            params.spacing = spacing;
        }
        let inner = match kind {
            SamplerKind::Lcm => Inner::Lcm(LcmScheduler::new(LcmConfig::from_params(params))?),
            SamplerKind::Tcd => Inner::Tcd(TcdScheduler::new(params, eta)?),
            SamplerKind::Ddim => Inner::Ddim(DdimScheduler::new(params, eta)),
            SamplerKind::Euler => Inner::Euler(EulerScheduler::new(params, false)),
            SamplerKind::EulerAncestral => Inner::Euler(EulerScheduler::new(params, true)),
        };
        Ok(Scheduler { kind, inner, timesteps: Vec::new() })
    }

    /// The sampler.
    pub fn kind(&self) -> SamplerKind {
        self.kind
    }

    /// The step op's configuration: rule, prediction, x0's clamp.
    pub fn sampling(&self) -> Sampling {
        match &self.inner {
            Inner::Lcm(s) => {
                Sampling { clip: s.config().clip_sample, prediction: s.config().prediction_type, ..Sampling::LCM }
            }
            Inner::Tcd(s) => s.sampling(),
            Inner::Ddim(s) => s.sampling(),
            Inner::Euler(s) => s.sampling(),
        }
    }

    /// Which steps take noise.
    pub fn noise_steps(&self) -> NoiseSteps {
        match &self.inner {
            Inner::Lcm(_) => NoiseSteps::AllButLast,
            Inner::Tcd(s) => s.noise_steps(),
            Inner::Ddim(s) => s.noise_steps(),
            Inner::Euler(s) => s.noise_steps(),
        }
    }

    /// The most steps `set_timesteps` accepts: LCM/TCD's `original_inference_steps`, the others'
    /// `num_train_timesteps`.
    pub fn max_steps(&self) -> usize {
        match &self.inner {
            Inner::Lcm(s) => s.config().original_inference_steps,
            Inner::Tcd(s) => s.max_steps(),
            Inner::Ddim(s) => s.max_steps(),
            Inner::Euler(s) => s.max_steps(),
        }
    }

    /// The full schedule for `n` steps (f64: Euler's linspace gives fractional timesteps).
    /// `lcm_strength` < 1 cuts LCM's and TCD's distillation grid (their own img2img pipelines); it
    /// must be 1 for the others, whose img2img keeps the last int(n·strength) steps of this schedule.
    pub fn set_timesteps(&mut self, n: usize, lcm_strength: f64) -> Result<&[f64]> {
        let uses_strength = matches!(self.kind, SamplerKind::Lcm | SamplerKind::Tcd);
        if !uses_strength && lcm_strength != 1.0 {
            let msg = format!("{lcm_strength}: only lcm and tcd cut their schedule by strength; pass 1.0");
            return Err(Error::invalid("strength", msg));
        }
        if n == 0 || n > self.max_steps() {
            let msg = format!("{n}: expected 1..={} for the {} sampler", self.max_steps(), self.kind.name());
            return Err(Error::invalid("steps", msg));
        }
        self.timesteps = match &mut self.inner {
            Inner::Lcm(s) => s.set_timesteps(n, lcm_strength)?.iter().map(|&t| t as f64).collect(),
            Inner::Tcd(s) => s.set_timesteps(n, lcm_strength)?,
            Inner::Ddim(s) => s.set_timesteps(n),
            Inner::Euler(s) => s.set_timesteps(n),
        };
        Ok(&self.timesteps)
    }

    /// A caller-chosen LCM schedule (see [`LcmScheduler::set_custom_timesteps`]); the other samplers
    /// refuse it.
    pub fn set_custom_timesteps(&mut self, ts: &[i64], strength: f64) -> Result<&[f64]> {
        let Inner::Lcm(s) = &mut self.inner else {
            let msg = format!("custom timesteps are for the lcm sampler, not {}", self.kind.name());
            return Err(Error::invalid("timesteps", msg));
        };
        self.timesteps = s.set_custom_timesteps(ts, strength)?.iter().map(|&t| t as f64).collect();
        Ok(&self.timesteps)
    }

    /// The schedule of the last `set_timesteps`.
    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// Euler's and Euler-ancestral's σ of the schedule, the final one included (n + 1 values); None
    /// for the other samplers.
    pub fn sigmas(&self) -> Option<&[f32]> {
        match &self.inner {
            Inner::Euler(s) => Some(s.sigmas()),
            _ => None,
        }
    }

    /// The coefficients of step `i` of the full schedule, with guidance scale `guidance`.
    pub fn row(&self, i: usize, guidance: f32) -> StepRow {
        assert!(i < self.timesteps.len(), "step {i} of a {}-step schedule", self.timesteps.len());
        match &self.inner {
            Inner::Lcm(s) => s.row(i, guidance),
            Inner::Tcd(s) => s.row(i, guidance),
            Inner::Ddim(s) => s.row(i, guidance),
            Inner::Euler(s) => s.row(i, guidance),
        }
    }

    /// The standard deviation of the initial latents (`init_noise_sigma`): 1, or Euler's σ_max (with
    /// "leading" spacing sqrt(σ_max² + 1)) of the current schedule.
    pub fn init_noise_sigma(&self) -> f32 {
        match &self.inner {
            Inner::Euler(s) => s.init_noise_sigma(),
            _ => 1.0,
        }
    }

    /// (a, b) of `add_noise` at timesteps[i]: a·x0 + b·noise.
    fn add_noise_coefs(&self, i: usize) -> (f32, f32) {
        match &self.inner {
            Inner::Lcm(s) => ddpm_coefs(s.alphas_cumprod(), self.timesteps[i] as i64),
            Inner::Tcd(s) => s.add_noise_coefs(i),
            Inner::Ddim(s) => s.add_noise_coefs(i),
            Inner::Euler(s) => s.add_noise_coefs(i),
        }
    }

    /// The scheduler's `add_noise` at timesteps[i] (img2img's start, inpainting's kept region), in
    /// place on `x0`: sqrt(ā)·x0 + sqrt(1−ā)·noise, or Euler's x0 + noise·σ_i (the same bits as
    /// 1·x0 + σ_i·noise).
    pub fn add_noise(&self, x0: &mut [f32], noise: &[f32], i: usize) -> Result<()> {
        self.check_step(i)?;
        lcm::check_len("noise", noise.len(), x0.len())?;
        let (a, b) = self.add_noise_coefs(i);
        for (x, z) in x0.iter_mut().zip(noise) {
            *x = a * *x + b * z;
        }
        Ok(())
    }

    /// One step on the host, as the graph's step op computes it (for tests): `noise` must be given
    /// exactly at the steps [`Scheduler::noise_steps`] names.
    pub fn step(&self, i: usize, model_output: &[f32], sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>> {
        self.check_step(i)?;
        lcm::check_len("model_output", model_output.len(), sample.len())?;
        let wants = self.noise_steps().at(i, self.timesteps.len());
        match (wants, noise) {
            (true, Some(z)) => lcm::check_len("noise", z.len(), sample.len())?,
            (false, None) => {}
            (true, None) => return Err(Error::invalid("noise", format!("step {i} takes noise"))),
            (false, Some(_)) => return Err(Error::invalid("noise", format!("step {i} takes no noise"))),
        }
        let (row, sampling) = (self.row(i, 1.0), self.sampling());
        Ok((0..sample.len())
            .map(|j| step_rule::step(sample[j], model_output[j], noise.map(|z| z[j]), &row, &sampling))
            .collect())
    }

    fn check_step(&self, i: usize) -> Result<()> {
        if i < self.timesteps.len() {
            return Ok(());
        }
        let msg = format!("{i}: the schedule has {} steps (call set_timesteps first)", self.timesteps.len());
        Err(Error::invalid("step", msg))
    }
}

/// DDPM's `add_noise` coefficients at timestep t: (ā^0.5, (1 − ā)^0.5), f32.
fn ddpm_coefs(alphas_cumprod: &[f32], t: i64) -> (f32, f32) {
    let a = alphas_cumprod[t as usize];
    (a.sqrt(), (1.0 - a).sqrt())
}

/// numpy's `np.round` (half to even) of `linspace` / `arange` values, as timesteps are spaced:
/// "linspace" `np.linspace(0, N − 1, n)` (unrounded: Euler keeps fractions, DDIM rounds), "leading"
/// `round(arange(n)·(N // n))` reversed (steps_offset not added), "trailing" `round(arange(N, 0, −N/n))`
/// (1 not subtracted). f64, descending.
fn spaced(spacing: Spacing, train: usize, n: usize) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            // numpy: i·step + start, the last set to stop; n = 1 gives [start].
            let stop = (train - 1) as f64;
            let step = if n > 1 { stop / (n - 1) as f64 } else { 0.0 };
            (0..n).rev().map(|i| if n > 1 && i == n - 1 { stop } else { i as f64 * step }).collect()
        }
        Spacing::Leading => {
            let ratio = (train / n) as f64;
            (0..n).rev().map(|i| (i as f64 * ratio).round_ties_even()).collect()
        }
        Spacing::Trailing => {
            // np.arange(start, stop, step) with a float step: ceil((stop − start)/step) values, the
            // i-th start + i·delta with delta = (start + step) − start.
            let (start, step) = (train as f64, -(train as f64 / n as f64));
            let len = ((0.0 - start) / step).ceil() as usize;
            let delta = (start + step) - start;
            (0..len).map(|i| (start + i as f64 * delta).round_ties_even()).collect()
        }
    }
}
