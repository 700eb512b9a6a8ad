//! Reading a `scheduler_config.json` the way `X.from_config(cfg)` does in diffusers 0.42: the saved
//! keys that X's `__init__` takes, X's own defaults for the rest (a PNDM config has no
//! `timestep_spacing`: Euler reads "linspace", DDIM "leading"), the rest ignored. Each sampler reads
//! only its own keys, so a key it would ignore never makes it fail; what it reads but cannot honour
//! (thresholding, Karras sigmas, ...) or reads with the wrong JSON type is an error naming the key.

use std::path::{Path, PathBuf};

use lcm_core::lcm::Prediction;
use lcm_core::{Error, Result};
use serde_json::{Map, Value};

use super::{SamplerKind, Spacing};

/// A scheduler_config.json as read (its `_class_name` and keys), SD1.5's when there is no file.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    keys: Map<String, Value>,
    /// The file it came from, for errors.
    source: Option<PathBuf>,
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler/scheduler_config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::config(path, format!("not JSON: {e}")))?;
        let mut config = Self::from_json(&json).map_err(|msg| Error::config(path, msg))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// A config from parsed JSON: an object whose `_class_name`, when present, is a string. The keys
    /// are checked when a sampler reads them ([`super::Scheduler::new`]).
    pub fn from_json(json: &Value) -> std::result::Result<Self, String> {
        let keys = json.as_object().ok_or("expected a JSON object")?.clone();
        if let Some(class) = keys.get("_class_name").filter(|v| !v.is_null()) {
            class.as_str().ok_or(format!("`_class_name`: expected a string, got {class}"))?;
        }
        Ok(SchedulerConfig { keys, source: None })
    }

    /// SD1.5's scheduler_config.json (PNDMScheduler: scaled_linear 0.00085 → 0.012 over 1000 steps,
    /// `set_alpha_to_one: false`, `steps_offset: 1`, `clip_sample: false`): what diffusers'
    /// `from_single_file` gives a bare SD1.5 checkpoint.
    pub fn sd15() -> Self {
        let json = serde_json::json!({
            "_class_name": "PNDMScheduler",
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "clip_sample": false,
            "num_train_timesteps": 1000,
            "set_alpha_to_one": false,
            "skip_prk_steps": true,
            "steps_offset": 1,
            "trained_betas": null,
        });
        Self::from_json(&json).expect("a JSON object")
    }

    /// The file's `_class_name`.
    pub fn class_name(&self) -> Option<&str> {
        self.keys.get("_class_name").and_then(Value::as_str)
    }

    /// The folder's own sampler when it is one lcm runs (`--scheduler auto`); None for the others
    /// (SD1.5's PNDMScheduler).
    pub fn class_kind(&self) -> Option<SamplerKind> {
        self.class_name().and_then(SamplerKind::from_class_name)
    }

    /// `prediction_type` as written in the file; None when absent (or not a known value, which the
    /// scheduler then refuses).
    pub fn prediction_type(&self) -> Option<Prediction> {
        self.keys.get("prediction_type").and_then(Value::as_str).and_then(parse_prediction)
    }

    /// The config with `prediction_type` set (a user's flag, for SD2 single files).
    pub fn with_prediction(mut self, p: Prediction) -> Self {
        let name = match p {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
            Prediction::Sample => "sample",
        };
        self.keys.insert("prediction_type".into(), Value::from(name));
        self
    }

    /// An error about this config: a config error naming its file, or an invalid input.
    pub(crate) fn error(&self, msg: String) -> Error {
        match &self.source {
            Some(path) => Error::config(path, msg),
            None => Error::invalid("scheduler config", msg),
        }
    }

    fn reader(&self) -> Reader<'_> {
        Reader { keys: &self.keys }
    }
}

fn parse_prediction(name: &str) -> Option<Prediction> {
    match name {
        "epsilon" => Some(Prediction::Epsilon),
        "v_prediction" => Some(Prediction::VPrediction),
        "sample" => Some(Prediction::Sample),
        _ => None,
    }
}

type Res<T> = std::result::Result<T, String>;

/// Typed reads of a config's keys; JSON null means "not given" (diffusers saves `"trained_betas": null`).
struct Reader<'a> {
    keys: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).filter(|v| !v.is_null())
    }

    fn num(&self, key: &str, default: f64) -> Res<f64> {
        self.get(key).map_or(Ok(default), |v| v.as_f64().ok_or(format!("`{key}`: expected a number, got {v}")))
    }

    fn int(&self, key: &str, default: i64) -> Res<i64> {
        self.get(key).map_or(Ok(default), |v| v.as_i64().ok_or(format!("`{key}`: expected an integer, got {v}")))
    }

    fn count(&self, key: &str, default: usize) -> Res<usize> {
        let n = self.int(key, default as i64)?;
        usize::try_from(n).ok().filter(|&n| n > 0).ok_or(format!("`{key}`: expected a positive integer, got {n}"))
    }

    fn flag(&self, key: &str, default: bool) -> Res<bool> {
        self.get(key).map_or(Ok(default), |v| v.as_bool().ok_or(format!("`{key}`: expected true or false, got {v}")))
    }

    fn string<'s>(&'s self, key: &str, default: &'s str) -> Res<&'s str> {
        self.get(key).map_or(Ok(default), |v| v.as_str().ok_or(format!("`{key}`: expected a string, got {v}")))
    }

    /// A key that must be false (a feature lcm does not implement).
    fn refuse_true(&self, key: &str, why: &str) -> Res<()> {
        if self.flag(key, false)? {
            return Err(format!("`{key}`: true is not supported ({why})"));
        }
        Ok(())
    }
}

/// What one sampler reads from a config, its own defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Params {
    pub num_train_timesteps: usize,
    /// f32 betas, after `rescale_betas_zero_snr`.
    pub betas: Vec<f32>,
    pub rescale_zero_snr: bool,
    pub prediction: Prediction,
    /// DDIM, Euler, Euler-ancestral.
    pub spacing: Spacing,
    pub steps_offset: i64,
    /// LCM, TCD, DDIM.
    pub set_alpha_to_one: bool,
    /// `clip_sample_range` when `clip_sample` (LCM and DDIM clip x0; TCD reads the key but never clips).
    pub clip: Option<f32>,
    /// Euler: `final_sigmas_type: "sigma_min"` (else "zero").
    pub final_sigma_min: bool,
    /// LCM, TCD.
    pub original_inference_steps: usize,
    /// LCM.
    pub timestep_scaling: f32,
}

/// `(beta_start, beta_end, beta_schedule)` defaults of each sampler's `__init__`.
fn beta_defaults(kind: SamplerKind) -> (f64, f64, &'static str) {
    match kind {
        SamplerKind::Lcm | SamplerKind::Tcd => (0.00085, 0.012, "scaled_linear"),
        SamplerKind::Ddim | SamplerKind::Euler | SamplerKind::EulerAncestral => (0.0001, 0.02, "linear"),
    }
}

impl Params {
    /// `kind.from_config(config)`: the keys `kind`'s `__init__` takes, its defaults for the rest.
    pub fn resolve(config: &SchedulerConfig, kind: SamplerKind) -> Res<Params> {
        use SamplerKind::*;
        let r = config.reader();
        let num_train_timesteps = r.count("num_train_timesteps", 1000)?;
        let rescale_zero_snr = r.flag("rescale_betas_zero_snr", false)?;
        let mut betas = betas(&r, kind, num_train_timesteps)?;
        if rescale_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let prediction = {
            let name = r.string("prediction_type", "epsilon")?;
            parse_prediction(name)
                .ok_or(format!("`prediction_type` \"{name}\": expected \"epsilon\", \"v_prediction\" or \"sample\""))?
        };
        let spacing = match kind {
            Lcm | Tcd => Spacing::Leading, // read by neither's set_timesteps
            Ddim => spacing(r.string("timestep_spacing", "leading")?)?,
            Euler | EulerAncestral => spacing(r.string("timestep_spacing", "linspace")?)?,
        };
        if matches!(kind, Lcm | Tcd | Ddim) {
            r.refuse_true("thresholding", "dynamic thresholding is for pixel-space models")?;
        }
        if kind == Euler {
            for key in ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"] {
                r.refuse_true(key, "only the scheduler's own sigmas are implemented")?;
            }
            let timestep_type = r.string("timestep_type", "discrete")?;
            if timestep_type != "discrete" {
                return Err(format!("`timestep_type` \"{timestep_type}\": only \"discrete\" is supported"));
            }
            let interpolation = r.string("interpolation_type", "linear")?;
            if interpolation != "linear" {
                return Err(format!("`interpolation_type` \"{interpolation}\": only \"linear\" is supported"));
            }
        }
        if kind == EulerAncestral && prediction == Prediction::Sample {
            // EulerAncestralDiscreteScheduler.step raises NotImplementedError for it.
            return Err("`prediction_type` \"sample\": EulerAncestralDiscreteScheduler does not implement it".into());
        }
        let final_sigma_min = match kind {
            Euler => match r.string("final_sigmas_type", "zero")? {
                "zero" => false,
                "sigma_min" => true,
                other => {
                    return Err(format!("`final_sigmas_type` \"{other}\": expected \"zero\" or \"sigma_min\""));
                }
            },
            _ => false,
        };
        let clip_default = kind == Ddim;
        let clip = match kind {
            Lcm | Ddim => r.flag("clip_sample", clip_default)?.then(|| r.num("clip_sample_range", 1.0)).transpose()?,
            _ => None,
        }
        .map(|c| c as f32);
        let (steps_offset, set_alpha_to_one) = match kind {
            Lcm | Tcd | Ddim => (r.int("steps_offset", 0)?, r.flag("set_alpha_to_one", true)?),
            Euler | EulerAncestral => (r.int("steps_offset", 0)?, true),
        };
        let (original_inference_steps, timestep_scaling) = match kind {
            Lcm | Tcd => (r.count("original_inference_steps", 50)?, r.num("timestep_scaling", 10.0)? as f32),
            _ => (50, 10.0),
        };
        Ok(Params {
            num_train_timesteps,
            betas,
            rescale_zero_snr,
            prediction,
            spacing,
            steps_offset,
            set_alpha_to_one,
            clip,
            final_sigma_min,
            original_inference_steps,
            timestep_scaling,
        })
    }

    /// ā = cumprod(1 − β) as torch stores it.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        cumprod_alphas(&self.betas)
    }
}

fn spacing(name: &str) -> Res<Spacing> {
    Spacing::parse(name)
        .ok_or(format!("`timestep_spacing` \"{name}\": expected \"leading\", \"trailing\" or \"linspace\""))
}

fn betas(r: &Reader, kind: SamplerKind, n: usize) -> Res<Vec<f32>> {
    if let Some(trained) = r.get("trained_betas") {
        let list = trained.as_array().ok_or("`trained_betas`: expected a list of numbers")?;
        let betas: Option<Vec<f32>> = list.iter().map(|v| v.as_f64().map(|b| b as f32)).collect();
        let betas = betas.ok_or("`trained_betas`: expected a list of numbers")?;
        if betas.len() != n {
            return Err(format!("`trained_betas`: {} values for {n} training timesteps", betas.len()));
        }
        return Ok(betas);
    }
    let (start, end, schedule) = beta_defaults(kind);
    let (start, end) = (r.num("beta_start", start)?, r.num("beta_end", end)?);
    match r.string("beta_schedule", schedule)? {
        "scaled_linear" => Ok(scaled_linear_betas(start, end, n)),
        "linear" => Ok(torch_linspace_f32(start, end, n)),
        "squaredcos_cap_v2" => Ok(cosine_betas(n)),
        other => Err(format!(
            "`beta_schedule` \"{other}\": supported are \"scaled_linear\", \"linear\" and \"squaredcos_cap_v2\""
        )),
    }
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` as torch's CPU kernel computes it: the
/// first half counts up from `start`, the second half down from `end`, each as one f32 fused
/// multiply–add (torch's x86 build contracts `start + step * i`).
pub fn torch_linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| if i < n / 2 { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// The "scaled_linear" schedule of latent diffusion: linspace(sqrt(b0), sqrt(b1), n)².
pub fn scaled_linear_betas(beta_start: f64, beta_end: f64, n: usize) -> Vec<f32> {
    torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
}

/// "squaredcos_cap_v2" (`betas_for_alpha_bar`, cosine): min(1 − ᾱ(t₂)/ᾱ(t₁), 0.999) in Python
/// floats, then f32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// `torch.cumprod(1 - betas)`: torch's CPU kernel accumulates in double and stores each prefix
/// product as f32.
pub(crate) fn cumprod_alphas(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= (1.0 - b) as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1) in torch's f32 operations:
/// shift sqrt(ā) so its last value is 0, scale it so its first is unchanged, and turn it back into betas.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut s: Vec<f32> = cumprod_alphas(betas).iter().map(|a| a.sqrt()).collect();
    let (s0, st) = (s[0], s[s.len() - 1]);
    let scale = s0 / (s0 - st);
    for v in &mut s {
        *v = (*v - st) * scale;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    out.extend(bar.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}
