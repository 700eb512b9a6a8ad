//! `lcm bench`: the whole pipeline — CLIP, n UNet steps, VAE decode — after warm-up, repeated, with the
//! median/min/max of each stage and of the end to end. With no model folder it builds SD1.5-shaped models
//! with seeded random weights (f16-rounded), so it needs no download. `lora_rank` adds an unmerged
//! LoRA on the UNet (CUDA only; see [`lora`]).

pub mod lora;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Result, Tensor};
use lcm_models::synthetic::random_source;
use lcm_models::{sd15, ClipConfig, ClipTextModel, LoadOptions, Unet, UnetConfig, Vae, VaeConfig, VaeParts, Variant};
use lora::{BenchBackend, LoraSummary};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: Option<PathBuf>,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub batch: usize,
    pub warmup: usize,
    pub repeat: usize,
    pub seed: u64,
    /// An unmerged LoRA of this rank on every UNet LoRA target (CUDA backend only).
    pub lora_rank: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: &'static str,
    /// Multiply-accumulates per call of this stage (all its model calls), for achieved-throughput figures.
    pub macs: u64,
    pub samples: Vec<Duration>,
}

impl Stage {
    fn sorted(&self) -> Vec<Duration> {
        let mut s = self.samples.clone();
        s.sort();
        s
    }
    pub fn median(&self) -> Duration {
        let s = self.sorted();
        s.get(s.len() / 2).copied().unwrap_or_default()
    }
    pub fn min(&self) -> Duration {
        self.sorted().first().copied().unwrap_or_default()
    }
    pub fn max(&self) -> Duration {
        self.sorted().last().copied().unwrap_or_default()
    }
}

pub struct BenchReport {
    pub device: String,
    pub config: BenchConfig,
    pub model: String,
    /// text_encoder, unet (all steps), unet_step (one step), vae_decode, end_to_end
    pub stages: Vec<Stage>,
    pub lora: Option<LoraSummary>,
}

struct Models<B: Backend> {
    clip: ClipTextModel<B>,
    unet: Unet<B>,
    vae: Vae<B>,
}

fn load<B: Backend>(backend: &B, model: Option<&Path>, variant: Variant, seed: u64) -> Result<(Models<B>, String)> {
    match model {
        Some(dir) => {
            let opts = || LoadOptions { variant, hook: None };
            let clip = ClipTextModel::load(backend, &dir.join("text_encoder"), 0, opts())?;
            let unet = Unet::load(backend, &dir.join("unet"), opts())?;
            let vae = Vae::load(backend, &dir.join("vae"), VaeParts::Decoder, opts())?;
            Ok((Models { clip, unet, vae }, dir.display().to_string()))
        }
        None => {
            let origin = Path::new("synthetic SD1.5");
            let mut src = random_source(seed);
            let clip = ClipTextModel::from_source(
                backend,
                ClipConfig::from_json(origin, sd15::TEXT_ENCODER_CONFIG, 0)?,
                origin,
                &mut src,
            )?;
            let unet = Unet::from_source(backend, UnetConfig::from_json(origin, sd15::UNET_CONFIG)?, origin, &mut src)?;
            let vae = Vae::from_source(backend, VaeConfig::from_json(origin, sd15::VAE_CONFIG)?, origin, &mut src)?;
            Ok((Models { clip, unet, vae }, format!("synthetic SD1.5 (seed {seed})")))
        }
    }
}

/// Runs the benchmark; `log` receives one line per timed repetition.
pub fn run<B: BenchBackend>(
    backend: &B,
    cfg: &BenchConfig,
    variant: Variant,
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let (mut m, model) = load(backend, cfg.model.as_deref(), variant, cfg.seed)?;
    let lora = match cfg.lora_rank {
        Some(rank) => Some(backend.attach_unmerged_lora(&mut m.unet, rank, cfg.seed)?),
        None => None,
    };
    let scale = m.vae.config.downscale();
    let (h, w, b) = (cfg.height / scale, cfg.width / scale, cfg.batch);
    let lc = m.unet.config.in_channels;
    let ids: Vec<i32> = (0..77).map(|i| if i == 0 { 49406 } else { 49407 - (i % 3 == 1) as i32 * 1000 }).collect();
    let latents = Tensor::new(vec![b, lc, h, w], lcm_pipeline::rng::TorchRng::new(cfg.seed).randn(b * lc * h * w));
    let cond = m.unet.config.time_cond_proj_dim.map(|d| Tensor::new(vec![b, d], vec![0.1; b * d]));
    let timesteps: Vec<f32> = (0..cfg.steps).map(|i| (999 - i * (1000 / cfg.steps.max(1))) as f32).collect();

    let ctx_len = 77;
    let macs_text = m.clip.config.graph(1, ctx_len)?.macs();
    let macs_step = m.unet.config.graph(b, h, w, ctx_len)?.macs();
    let macs_vae = m.vae.config.decoder_graph(b, h, w)?.macs();
    let mut stages = vec![
        Stage { name: "text_encoder", macs: macs_text, samples: vec![] },
        Stage { name: "unet", macs: macs_step * cfg.steps as u64, samples: vec![] },
        Stage { name: "unet_step", macs: macs_step, samples: vec![] },
        Stage { name: "vae_decode", macs: macs_vae, samples: vec![] },
        Stage { name: "end_to_end", macs: macs_text + macs_step * cfg.steps as u64 + macs_vae, samples: vec![] },
    ];
    for rep in 0..cfg.warmup + cfg.repeat {
        let t0 = Instant::now();
        let text = m.clip.forward(backend, &ids, 1)?;
        let t_text = t0.elapsed();
        let ctx = Tensor::new(vec![b, ctx_len, text.shape[2]], text.data.repeat(b));
        let mut x = latents.clone();
        let mut steps = Vec::new();
        for &t in &timesteps {
            let ts = Instant::now();
            x = m.unet.forward(backend, &x, &vec![t; b], &ctx, cond.as_ref())?;
            steps.push(ts.elapsed());
        }
        let tv = Instant::now();
        m.vae.decode(backend, &x)?;
        let t_vae = tv.elapsed();
        let total = t0.elapsed();
        if rep >= cfg.warmup {
            let unet: Duration = steps.iter().sum();
            stages[0].samples.push(t_text);
            stages[1].samples.push(unet);
            stages[2].samples.extend(&steps);
            stages[3].samples.push(t_vae);
            stages[4].samples.push(total);
            log(&format!("repeat {}/{}: {:.1} ms", rep - cfg.warmup + 1, cfg.repeat, total.as_secs_f64() * 1e3));
        } else {
            log(&format!("warm-up {}/{}: {:.1} ms", rep + 1, cfg.warmup, total.as_secs_f64() * 1e3));
        }
    }
    Ok(BenchReport { device: backend.name().to_string(), config: cfg.clone(), model, stages, lora })
}

impl BenchReport {
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "lcm bench: {} on {}, {}x{}, batch {}, {} steps, {} repeats after {} warm-up\n",
            self.model, self.device, c.width, c.height, c.batch, c.steps, c.repeat, c.warmup
        );
        if let Some(l) = &self.lora {
            s += &format!(
                "unmerged LoRA: rank {} on {} UNet weights ({:.1} M parameters; not counted in TFLOP/s)\n",
                l.rank,
                l.targets,
                l.params as f64 / 1e6
            );
        }
        s += &format!("{:<13} {:>11} {:>11} {:>11} {:>12}\n", "stage", "median ms", "min ms", "max ms", "TFLOP/s");
        for st in &self.stages {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let tflops = 2.0 * st.macs as f64 / st.median().as_secs_f64().max(1e-12) / 1e12;
            s += &format!(
                "{:<13} {:>11.2} {:>11.2} {:>11.2} {:>12.3}\n",
                st.name,
                ms(st.median()),
                ms(st.min()),
                ms(st.max()),
                tflops
            );
        }
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let c = &self.config;
        json!({
            "device": self.device, "model": self.model,
            "width": c.width, "height": c.height, "batch": c.batch, "steps": c.steps,
            "warmup": c.warmup, "repeat": c.repeat,
            "lora_rank": self.lora.map(|l| l.rank),
            "lora_targets": self.lora.map(|l| l.targets),
            "lora_params": self.lora.map(|l| l.params),
            "stages": self.stages.iter().map(|st| json!({
                "name": st.name, "macs": st.macs,
                "median_ms": st.median().as_secs_f64() * 1e3,
                "min_ms": st.min().as_secs_f64() * 1e3,
                "max_ms": st.max().as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
        })
    }
}
