//! The five samplers' host half (timesteps, Euler's sigmas, init_noise_sigma, each step's row applied by
//! `lcm::step`, add_noise and inpainting's kept region) against diffusers 0.42.1, bit for bit (records
//! written by tests/fixtures/generate_schedulers.py), and the config and option errors.

mod common;

use common::fixtures;

use lcm_core::lcm::{self, Prediction};
use lcm_core::SafeTensorsFile;
use lcm_pipeline::scheduler::{LcmConfig, SamplerKind, SamplerOptions, Scheduler, SchedulerConfig, Spacing};
use serde_json::{json, Value};

struct Records {
    cases: Vec<Value>,
    file: SafeTensorsFile,
}

fn records() -> Records {
    let dir = fixtures().join("records");
    let text = std::fs::read_to_string(dir.join("schedulers.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let file = SafeTensorsFile::open(dir.join("schedulers.safetensors")).unwrap();
    Records { cases: json["cases"].as_array().unwrap().clone(), file }
}

impl Records {
    fn tensor(&self, name: &str) -> Vec<f32> {
        self.file.get(name).unwrap_or_else(|e| panic!("{name}: {e}")).to_f32()
    }

    fn try_tensor(&self, name: &str) -> Option<Vec<f32>> {
        self.file.get(name).ok().map(|t| t.to_f32())
    }
}

/// The case's scheduler, set to `n` steps.
fn scheduler(case: &Value, n: usize) -> Scheduler {
    let kind = SamplerKind::parse(case["sampler"].as_str().unwrap()).unwrap();
    let config = SchedulerConfig::from_json(&case["config"]).unwrap();
    let eta = case["eta"].as_f64().map(|e| e as f32);
    let mut s = Scheduler::new(&config, &SamplerOptions { kind, eta, timestep_spacing: None })
        .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    s.set_timesteps(n, case["strength"].as_f64().unwrap()).unwrap();
    s
}

/// Each case's step counts with their recorded timesteps and noise draws.
fn runs(case: &Value) -> impl Iterator<Item = (usize, &Value)> {
    case["steps"].as_array().unwrap().iter().map(|r| (r["n"].as_u64().unwrap() as usize, r))
}

/// Distance in units in the last place (0 for equal values, +0 and −0 included).
fn ulps(a: f32, b: f32) -> u64 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i64;
        if bits < 0 {
            i64::MIN - bits
        } else {
            bits
        }
    };
    key(a).abs_diff(key(b))
}

fn worst_ulps(got: &[f32], want: &[f32]) -> u64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| if g.is_nan() || w.is_nan() { u64::MAX } else { ulps(g, w) }).max().unwrap_or(0)
}

/// Cases where torch's own f32 square root disagrees with the correctly rounded one lcm uses, on a
/// scalar the case needs. torch's CPU `sqrt` (and `** 0.5`) goes through MKL's VML `vsSqrt` (high
/// accuracy mode, not correctly rounded: on this machine 0.5% of random inputs come out 1 ulp off, the
/// largest error 0.556 ulp). The scheduler's scalars are then 1 ulp apart, which the step carries into
/// the sample (more ulps where the terms cancel), and `rescale_betas_zero_snr` takes sqrt of all 1000
/// ā, so its betas differ in a few places. These cases are held to a bound proportional to the terms'
/// magnitude instead of bit equality; every other case must be bit-identical.
const TORCH_SQRT_DIFFERS: [&str; 8] = [
    "lcm_xl_zero_snr",
    "ddim_sd_leading",
    "ddim_sd_trailing_eta03",
    "ddim_sd_linspace_eta1",
    "ddim_sd_sample",
    "ddim_xl_zero_snr",
    "euler_xl_zero_snr",
    "euler-a_xl_zero_snr",
];

/// Checks `got` against `want`: bit-identical, or (for [`TORCH_SQRT_DIFFERS`]) within
/// 2⁻²⁰·scale(j) per element (a few ulp of the largest term). Returns whether all were identical.
fn check(case: &str, what: &str, got: &[f32], want: &[f32], scale: impl Fn(usize) -> f32) -> bool {
    let worst = worst_ulps(got, want);
    if worst == 0 {
        return true;
    }
    assert!(TORCH_SQRT_DIFFERS.contains(&case), "{what}: off by {worst} ulp");
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        let bound = scale(j) * 2f32.powi(-20);
        assert!((g - w).abs() <= bound, "{what}[{j}]: {g} vs {w} (bound {bound})");
    }
    false
}

#[test]
fn timesteps_sigmas_and_noise_draws_match_diffusers() {
    let rec = records();
    for case in &rec.cases {
        let name = case["name"].as_str().unwrap();
        for (n, run) in runs(case) {
            let s = scheduler(case, n);
            let key = format!("{name}/n{n}");
            let want: Vec<f64> = rec.tensor(&format!("{key}/timesteps")).iter().map(|&t| t as f64).collect();
            assert_eq!(s.timesteps(), want.as_slice(), "{key}: timesteps");
            if let Some(want) = rec.try_tensor(&format!("{key}/sigmas")) {
                let got = s.sigmas().unwrap();
                check(name, &format!("{key}: sigmas"), got, &want, |j| 1.0 + want[j].abs());
            }
            let init = rec.tensor(&format!("{key}/init_noise_sigma"));
            check(name, &format!("{key}: init_noise_sigma"), &[s.init_noise_sigma()], &init, |_| 1.0 + init[0]);
            let draws: Vec<usize> =
                run["noise_draws"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let ours: Vec<usize> = (0..n).filter(|&i| s.noise_steps().at(i, n)).collect();
            // Euler-ancestral draws at its last step too and multiplies the draw by σ_up = 0.
            let expected = if s.kind() == SamplerKind::EulerAncestral { &draws[..n - 1] } else { &draws[..] };
            assert_eq!(ours, expected, "{key}: steps that take noise");
        }
    }
}

#[test]
fn steps_match_diffusers_bit_for_bit() {
    let rec = records();
    let (mut checked, mut identical) = (0, 0);
    for case in &rec.cases {
        let name = case["name"].as_str().unwrap();
        for (n, _) in runs(case) {
            let s = scheduler(case, n);
            for i in 0..n {
                let key = format!("{name}/n{n}/step{i}");
                let x = rec.tensor(&format!("{key}/sample"));
                let m = rec.tensor(&format!("{key}/model_output"));
                let noise = rec.try_tensor(&format!("{key}/noise"));
                let takes = s.noise_steps().at(i, n);
                let got = s.step(i, &m, &x, noise.as_deref().filter(|_| takes)).unwrap();
                let row = s.row(i, 1.0);
                // The terms' size: x, the model output (times σ for Euler), the noise (times its weight).
                let scale = |j: usize| {
                    let z = noise.as_ref().map_or(0.0, |z| z[j].abs() * row.noise);
                    1.0 + x[j].abs() + m[j].abs() * (1.0 + row.sigma) + z
                };
                let exact =
                    check(name, &format!("{key}: prev_sample"), &got, &rec.tensor(&format!("{key}/prev")), scale);
                checked += 1;
                identical += exact as usize;
                if let Some(want) = rec.try_tensor(&format!("{key}/model_input")) {
                    let input: Vec<f32> = x.iter().map(|&v| lcm::model_input(v, &row)).collect();
                    check(name, &format!("{key}: scale_model_input"), &input, &want, |j| 1.0 + x[j].abs());
                } else {
                    assert_eq!(s.row(i, 1.0).input_div, 1.0, "{key}: input_div");
                }
            }
        }
    }
    eprintln!("{identical} of {checked} steps bit-identical to diffusers (the rest: see TORCH_SQRT_DIFFERS)");
    assert!(identical * 10 >= checked * 9, "only {identical} of {checked} steps bit-identical");
}

#[test]
fn add_noise_and_inpainting_keep_match_diffusers() {
    let rec = records();
    for case in &rec.cases {
        let name = case["name"].as_str().unwrap();
        for (n, _) in runs(case) {
            let s = scheduler(case, n);
            let key = format!("{name}/n{n}/add_noise");
            let (x0, z) = (rec.tensor(&format!("{key}/x0")), rec.tensor(&format!("{key}/noise")));
            for i in 0..n {
                let want = rec.tensor(&format!("{key}/out{i}"));
                let mut got = x0.clone();
                s.add_noise(&mut got, &z, i).unwrap();
                let scale = |j: usize| 1.0 + x0[j].abs() + z[j].abs() * (1.0 + s.sigmas().map_or(0.0, |sg| sg[i]));
                check(name, &format!("{key} at step {i}"), &got, &want, scale);
                // After step i − 1 the inpainting blend keeps add_noise at timesteps[i] (mask 0).
                if i > 0 {
                    let row = s.row(i - 1, 1.0);
                    let kept: Vec<f32> =
                        x0.iter().zip(&z).map(|(&a, &b)| lcm::inpaint_blend(0.0, a, b, 0.0, &row, false)).collect();
                    check(name, &format!("{key}: keep_image/keep_noise of step {}", i - 1), &kept, &want, scale);
                }
            }
        }
    }
}

fn refusal(config: Value, kind: SamplerKind) -> String {
    let config = SchedulerConfig::from_json(&config).unwrap();
    match Scheduler::new(&config, &SamplerOptions::new(kind)) {
        Ok(_) => panic!("{config:?} accepted for {kind:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn configs_a_sampler_cannot_use_are_refused_naming_the_key() {
    use SamplerKind::*;
    let cases = [
        (json!({"thresholding": true}), Ddim, "thresholding"),
        (json!({"thresholding": true}), Lcm, "thresholding"),
        (json!({"use_karras_sigmas": true}), Euler, "use_karras_sigmas"),
        (json!({"use_exponential_sigmas": true}), Euler, "use_exponential_sigmas"),
        (json!({"use_beta_sigmas": true}), Euler, "use_beta_sigmas"),
        (json!({"timestep_type": "continuous"}), Euler, "timestep_type"),
        (json!({"interpolation_type": "log_linear"}), Euler, "interpolation_type"),
        (json!({"final_sigmas_type": "denoise_to_zero"}), Euler, "final_sigmas_type"),
        (json!({"timestep_spacing": "karras"}), Ddim, "timestep_spacing"),
        (json!({"beta_schedule": "sigmoid"}), Tcd, "beta_schedule"),
        (json!({"prediction_type": "flow"}), Lcm, "prediction_type"),
        (json!({"prediction_type": "sample"}), EulerAncestral, "prediction_type"),
        (json!({"steps_offset": "1"}), Ddim, "`steps_offset`: expected an integer, got \"1\""),
        (json!({"num_train_timesteps": 0}), Euler, "num_train_timesteps"),
        (json!({"clip_sample": 1}), Ddim, "clip_sample"),
        (json!({"beta_start": "0.1"}), EulerAncestral, "beta_start"),
        (json!({"trained_betas": [0.1, 0.2]}), Lcm, "trained_betas"),
        (json!({"original_inference_steps": 2.5}), Tcd, "original_inference_steps"),
    ];
    for (config, kind, key) in cases {
        let err = refusal(config.clone(), kind);
        assert!(err.contains(key), "{config} for {kind:?}: {err}");
    }
    // What a sampler does not read never makes it fail (diffusers drops such keys in from_config).
    let ignored = json!({"use_karras_sigmas": true, "thresholding": true, "timestep_type": "continuous"});
    let config = SchedulerConfig::from_json(&ignored).unwrap();
    Scheduler::new(&config, &SamplerOptions::new(EulerAncestral)).unwrap();
    assert!(SchedulerConfig::from_json(&json!([1])).is_err());
    assert!(SchedulerConfig::from_json(&json!({"_class_name": 3})).unwrap_err().contains("_class_name"));
}

#[test]
fn options_are_checked() {
    use SamplerKind::*;
    let sd = SchedulerConfig::sd15();
    let with = |kind, eta, spacing| Scheduler::new(&sd, &SamplerOptions { kind, eta, timestep_spacing: spacing });
    for (kind, eta) in [(Tcd, 1.5), (Ddim, -0.1), (Euler, 0.3), (EulerAncestral, 0.0), (Lcm, 0.3)] {
        let err = with(kind, Some(eta), None).unwrap_err().to_string();
        assert!(err.contains("eta"), "{kind:?} eta {eta}: {err}");
    }
    assert!(with(Tcd, Some(1.0), None).is_ok() && with(Ddim, Some(0.0), None).is_ok());
    let err = with(Lcm, None, Some(Spacing::Trailing)).unwrap_err().to_string();
    assert!(err.contains("timestep_spacing"), "{err}");
    let mut euler = with(Euler, None, None).unwrap();
    assert!(euler.set_timesteps(4, 0.5).unwrap_err().to_string().contains("strength"));
    assert!(euler.set_custom_timesteps(&[999, 499], 1.0).unwrap_err().to_string().contains("timesteps"));
    assert!(euler.set_timesteps(0, 1.0).is_err() && euler.set_timesteps(1001, 1.0).is_err());
    assert_eq!(euler.max_steps(), 1000);
    let mut lcm = with(Lcm, None, None).unwrap();
    assert_eq!(lcm.max_steps(), 50);
    assert_eq!(lcm.set_custom_timesteps(&[999, 499, 259, 9], 0.5).unwrap(), [259.0, 9.0]);
    assert!(lcm.set_timesteps(51, 1.0).is_err());
    // The spacing option is the config key.
    for spacing in [Spacing::Leading, Spacing::Trailing, Spacing::Linspace] {
        for kind in [Ddim, Euler, EulerAncestral] {
            let mut a = with(kind, None, Some(spacing)).unwrap();
            let mut keys = json!({"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "set_alpha_to_one": false, "steps_offset": 1});
            keys["timestep_spacing"] = json!(spacing.name());
            let cfg = SchedulerConfig::from_json(&keys).unwrap();
            let mut b = Scheduler::new(&cfg, &SamplerOptions::new(kind)).unwrap();
            assert_eq!(a.set_timesteps(4, 1.0).unwrap(), b.set_timesteps(4, 1.0).unwrap(), "{kind:?} {spacing:?}");
            assert_eq!(Spacing::parse(spacing.name()), Some(spacing));
        }
    }
}

#[test]
fn names_and_config_accessors() {
    for kind in SamplerKind::ALL {
        assert_eq!(SamplerKind::parse(kind.name()), Some(kind));
        assert_eq!(SamplerKind::from_class_name(kind.class_name()), Some(kind));
        assert_eq!(SamplerKind::from_a1111(&kind.a1111_name().to_uppercase()), Some(kind));
    }
    assert_eq!(SamplerKind::from_a1111("euler a"), Some(SamplerKind::EulerAncestral));
    assert_eq!(SamplerKind::parse("dpm++"), None);
    let sd = SchedulerConfig::sd15();
    let file = SchedulerConfig::from_json_file(fixtures().join("tiny-sd/scheduler/scheduler_config.json")).unwrap();
    assert_eq!(sd.class_kind(), None);
    assert_eq!(sd.prediction_type(), None);
    assert_eq!(file.prediction_type(), Some(Prediction::Epsilon));
    let v = sd.clone().with_prediction(Prediction::VPrediction);
    assert_eq!(v.prediction_type(), Some(Prediction::VPrediction));
    let s = Scheduler::new(&v, &SamplerOptions::new(SamplerKind::Ddim)).unwrap();
    assert_eq!(s.sampling().prediction, Prediction::VPrediction);
    assert_eq!(s.sampling().clip, None, "SD1.5's config says clip_sample: false");
    let xl = fixtures().join("sdxl/tiny-sdxl/scheduler/scheduler_config.json");
    assert_eq!(SchedulerConfig::from_json_file(xl).unwrap().class_kind(), Some(SamplerKind::Euler));
    // A bare single file's LCM is the one load.rs has always built (SD1.5's, set_alpha_to_one false).
    let lcm = Scheduler::new(&sd, &SamplerOptions::new(SamplerKind::Lcm)).unwrap();
    let old = LcmConfig { set_alpha_to_one: false, ..LcmConfig::sd15() };
    let mut a = lcm.clone();
    let mut b = lcm_pipeline::scheduler::LcmScheduler::new(old).unwrap();
    let ts: Vec<f64> = b.set_timesteps(4, 1.0).unwrap().iter().map(|&t| t as f64).collect();
    assert_eq!(a.set_timesteps(4, 1.0).unwrap(), ts.as_slice());
    assert_eq!(a.row(1, 1.0), b.row(1, 1.0));
}
