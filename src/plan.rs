//! `lcm bench --plan GPU`: one generation's launches as the CUDA backend would make them on that GPU,
//! costed, without a device. The graphs are the ones the pipeline runs (text encoders, the denoising
//! loop with every step unrolled, the VAE decoder), built from an [`Arch`]'s configs without weights,
//! fused, lowered and planned as the executor does; the launches are the backend's own recorder's
//! (`cuda::plan_launches`) with the GPU's [`Limits`](crate::cuda::launch::Limits); each is costed by
//! `cuda::cost` (model and constants in docs/kernels.md).

use std::path::Path;

use lcm_core::graph::{Op, Storage};
use lcm_core::lcm::Sampling;
use lcm_core::{Elem, Error, Program, Result};
use lcm_models::arch::clip::ClipOutput;
use lcm_models::denoise::{DenoiseConfig, DenoiseShape, NoiseSteps};
use lcm_models::{ClipConfig, UnetConfig, VaeConfig};
use serde_json::json;

use crate::bench::Arch;
use crate::cuda::cost::{cost, LaunchCost};
use crate::cuda::{plan_launches, GpuSpec, Precision};

/// CLIP's context length.
const TOKENS: usize = 77;

/// Where in a generation a launch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The text encoders.
    Text,
    /// Once per generation inside the denoising graph, outside the per-step work (the joined context,
    /// SDXL's added embedding, the decoder's input).
    Once,
    /// A UNet call.
    Unet,
    /// The sampler's per-step work around the UNet (input scaling, the step itself).
    Step,
    /// The VAE decoder.
    Vae,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Text, Stage::Once, Stage::Unet, Stage::Step, Stage::Vae];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Text => "text",
            Stage::Once => "once",
            Stage::Unet => "unet",
            Stage::Step => "step",
            Stage::Vae => "vae",
        }
    }
}

/// What to plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanConfig {
    pub arch: Arch,
    pub width: usize,
    pub height: usize,
    pub num_images: usize,
    pub steps: usize,
}

/// One costed launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedLaunch {
    pub stage: Stage,
    /// The sampler step it belongs to (`Unet` and `Step` launches; 0 otherwise).
    pub step: usize,
    pub cost: LaunchCost,
}

/// Launch count, FLOPs and predicted time of a set of launches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub launches: usize,
    pub flops: f64,
    pub predicted_us: f64,
}

impl Totals {
    fn of<'a>(launches: impl Iterator<Item = &'a PlannedLaunch>) -> Totals {
        launches.fold(Totals::default(), |t, l| Totals {
            launches: t.launches + 1,
            flops: t.flops + l.cost.work.flops,
            predicted_us: t.predicted_us + l.cost.predicted_us,
        })
    }

    fn json(&self) -> serde_json::Value {
        json!({ "launches": self.launches, "flops": self.flops, "predicted_us": self.predicted_us })
    }
}

/// A generation's launch plan on one GPU.
#[derive(Debug, Clone)]
pub struct Plan {
    pub gpu: &'static GpuSpec,
    pub config: PlanConfig,
    /// In execution order.
    pub launches: Vec<PlannedLaunch>,
}

/// The image size the arch's pipelines default to (`UnetConfig::default_image_size`: 512 for SD1.5,
/// 768 for SD2.1, 1024 for SDXL).
pub fn native_size(arch: Arch) -> Result<usize> {
    let origin = Path::new(arch.name());
    let vae = VaeConfig::from_json(origin, arch.configs().vae)?;
    let unet = UnetConfig::from_json(origin, arch.configs().unet)?;
    Ok(unet.default_image_size(vae.downscale()).unwrap_or_else(|| vae.tile_size()))
}

/// Plans one txt2img generation of `cfg` on `gpu`, as the pipeline runs it: no classifier-free
/// guidance (LCM's guidance scale ≤ 1 or a guidance embedding), LCM sampling, 77-token prompts.
pub fn plan(gpu: &'static GpuSpec, cfg: &PlanConfig) -> Result<Plan> {
    if cfg.steps == 0 || cfg.num_images == 0 {
        return Err(Error::invalid("lcm bench --plan", "--steps and --num-images must be at least 1"));
    }
    let origin = Path::new(cfg.arch.name());
    let configs = cfg.arch.configs();
    let two = configs.text_encoder_2.is_some();
    let limits = gpu.limits();
    let mut launches = Vec::new();
    let mut push = |program: &Program, precision: Precision, stage: &dyn Fn(usize) -> (Stage, usize)| -> Result<()> {
        for (op, l) in plan_launches(program, limits, precision)? {
            let (stage, step) = stage(op);
            launches.push(PlannedLaunch { stage, step, cost: cost(&l, gpu) });
        }
        Ok(())
    };

    // The text encoders (SDXL's give the UNet their penultimate states, as StableDiffusionXLPipeline).
    let mut context_split = None;
    for json in [Some(configs.text_encoder), configs.text_encoder_2].into_iter().flatten() {
        let mut c = ClipConfig::from_json(origin, json, 0)?;
        if two {
            c = c.with_output(ClipOutput::Penultimate);
        }
        context_split.get_or_insert(c.hidden_size);
        push(&Program::new(c.graph(1, TOKENS)?, 2)?, Precision::F16, &|_| (Stage::Text, 0))?;
    }

    let unet = UnetConfig::from_json(origin, configs.unet)?;
    let vae = VaeConfig::from_json(origin, configs.vae)?;
    let scale = vae.downscale();
    for (what, v) in [("--width", cfg.width), ("--height", cfg.height)] {
        if v == 0 || !v.is_multiple_of(scale) {
            return Err(Error::invalid(what, format!("{v}: expected a positive multiple of {scale}")));
        }
    }
    let (h, w) = (cfg.height / scale, cfg.width / scale);
    let shape = DenoiseShape {
        images: cfg.num_images,
        h,
        w,
        ctx_len: TOKENS,
        uncond_ctx_len: None,
        steps: cfg.steps,
        sampling: Sampling::LCM,
        noise: NoiseSteps::AllButLast,
        guided: false,
        inpaint: None,
    };
    let dcfg = DenoiseConfig {
        vae_scale: vae.scaling_factor,
        vae_shift: vae.shift_factor.unwrap_or(0.0),
        context_split: context_split.filter(|_| two),
    };
    let denoise = Program::new(unet.denoise_graph(&shape, &dcfg, &[])?, 2)?;
    let stages = loop_stages(&denoise);
    push(&denoise, Precision::F16, &|op| stages[op])?;

    let vae_precision = if lcm_pipeline::load::vae_upcast(two, &vae) { Precision::F32 } else { Precision::F16 };
    let decoder = Program::new(vae.decoder_graph(cfg.num_images, h, w)?, vae_precision.bytes())?;
    push(&decoder, vae_precision, &|_| (Stage::Vae, 0))?;
    Ok(Plan { gpu, config: *cfg, launches })
}

/// Each op of a denoising loop's program: its stage and step. The loop state (the latents input and
/// each step's output) is read by a step's input scaling and by the step itself; a UNet call is what
/// lies between. Ops before the first step's input scaling, and after the last step, run once.
fn loop_stages(p: &Program) -> Vec<(Stage, usize)> {
    let g = &p.graph;
    let mut state = vec![false; g.tensors.len()];
    for &t in &g.inputs {
        if matches!(g.tensors[t].storage, Storage::Input(0)) {
            state[t] = true; // lcm_models::denoise::input::LATENTS
        }
    }
    let is_step = |op: &Op| matches!(op, Op::LcmStep { .. } | Op::InpaintBlend { .. });
    let last_step = g.ops.iter().rposition(is_step).unwrap_or(0);
    let mut step = 0;
    let mut started = false;
    let mut out = Vec::with_capacity(g.ops.len());
    for (i, op) in g.ops.iter().enumerate() {
        let reads_state = op.inputs().into_iter().any(|t| state[t]);
        let stage = if is_step(op) {
            state[op.output()] = true;
            Stage::Step
        } else if i > last_step {
            Stage::Once
        } else if reads_state && g.tensors[op.output()].elem == Elem::Act {
            started = true;
            Stage::Step
        } else if started {
            Stage::Unet
        } else {
            Stage::Once
        };
        out.push((stage, step));
        if is_step(op) && matches!(op, Op::LcmStep { .. }) {
            step += 1;
        }
    }
    out
}

impl Plan {
    /// Totals of the launches of `stage`.
    pub fn stage(&self, stage: Stage) -> Totals {
        Totals::of(self.launches.iter().filter(|l| l.stage == stage))
    }

    /// One UNet call: the first step's.
    pub fn unet_call(&self) -> Totals {
        Totals::of(self.launches.iter().filter(|l| l.stage == Stage::Unet && l.step == 0))
    }

    pub fn generation(&self) -> Totals {
        Totals::of(self.launches.iter())
    }

    /// Launches of one UNet call over 1 GFLOP whose grid has fewer CTAs than the GPU has SMs.
    pub fn small_grids(&self) -> usize {
        self.launches
            .iter()
            .filter(|l| l.stage == Stage::Unet && l.step == 0)
            .filter(|l| l.cost.work.flops > 1e9 && l.cost.ctas < self.gpu.sm_count as u64)
            .count()
    }

    pub fn json(&self) -> serde_json::Value {
        let c = &self.config;
        let launches: Vec<serde_json::Value> = self
            .launches
            .iter()
            .map(|l| {
                json!({
                    "stage": l.stage.name(),
                    "kernel": l.cost.kernel.name(),
                    "grid": l.cost.grid,
                    "ctas": l.cost.ctas,
                    "ctas_per_sm": l.cost.ctas_per_sm,
                    "waves": l.cost.waves,
                    "flops": l.cost.work.flops,
                    "bytes": l.cost.work.dram_bytes,
                    "bound": l.cost.bound.name(),
                    "predicted_us": l.cost.predicted_us,
                })
            })
            .collect();
        json!({
            "gpu": self.gpu.name,
            "arch": c.arch.flag(),
            "width": c.width,
            "height": c.height,
            "num_images": c.num_images,
            "steps": c.steps,
            "unet_call": self.unet_call().json(),
            "generation": self.generation().json(),
            "launches": launches,
        })
    }

    /// The table `lcm bench --plan` prints: every launch of the text encoders, the work done once, the
    /// first step (its UNet call and step), the VAE, then totals per stage. Later steps repeat the
    /// first step's launches and are summed, not listed.
    pub fn table(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "launch plan: {} {}x{}, {} image(s), {} steps on {} ({} SMs, mma.sync {:.0} TFLOP/s, DRAM {:.0} GB/s)\n",
            c.arch.name(),
            c.width,
            c.height,
            c.num_images,
            c.steps,
            self.gpu.model,
            self.gpu.sm_count,
            self.gpu.mma_flops() / 1e12,
            self.gpu.dram_gbs
        );
        s += &format!(
            "{:>5} {:<5} {:<26} {:>16} {:>6} {:>6} {:>5} {:>8} {:>8} {:<7} {:>9}\n",
            "#", "stage", "kernel", "grid", "ctas", "cta/sm", "waves", "GFLOP", "MB", "bound", "pred µs"
        );
        for (i, l) in self.launches.iter().enumerate().filter(|(_, l)| l.step == 0) {
            let k = &l.cost;
            s += &format!(
                "{i:>5} {:<5} {:<26} {:>16} {:>6} {:>6} {:>5} {:>8.3} {:>8.2} {:<7} {:>9.1}\n",
                l.stage.name(),
                k.kernel.name(),
                format!("{}x{}x{}", k.grid[0], k.grid[1], k.grid[2]),
                k.ctas,
                k.ctas_per_sm,
                k.waves,
                k.work.flops / 1e9,
                k.work.dram_bytes / 1e6,
                k.bound.name(),
                k.predicted_us
            );
        }
        if c.steps > 1 {
            s += &format!("      (steps 2..{} repeat step 1's launches; counted below)\n", c.steps);
        }
        s += &format!("\n{:<10} {:>8} {:>10} {:>10} {:>9}\n", "stage", "launches", "GFLOP", "pred ms", "TFLOP/s");
        let mut line = |name: &str, t: Totals| {
            let tflops = if t.predicted_us > 0.0 { t.flops / t.predicted_us / 1e6 } else { 0.0 };
            s += &format!(
                "{name:<10} {:>8} {:>10.1} {:>10.3} {:>9.1}\n",
                t.launches,
                t.flops / 1e9,
                t.predicted_us / 1e3,
                tflops
            );
        };
        for stage in Stage::ALL {
            line(stage.name(), self.stage(stage));
        }
        line("unet call", self.unet_call());
        line("generation", self.generation());
        s += &format!(
            "launches of one UNet call over 1 GFLOP with fewer CTAs than the {} SMs: {}\n",
            self.gpu.sm_count,
            self.small_grids()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15(gpu: &str, steps: usize) -> Plan {
        let cfg = PlanConfig { arch: Arch::Sd15, width: 512, height: 512, num_images: 1, steps };
        plan(GpuSpec::by_name(gpu).unwrap(), &cfg).unwrap()
    }

    #[test]
    fn a_unet_call_is_the_launches_of_one_unet_graph() {
        let p = sd15("h100", 3);
        let unet = UnetConfig::from_json(Path::new("sd15"), Arch::Sd15.configs().unet).unwrap();
        let alone = Program::new(unet.graph(1, 64, 64, TOKENS).unwrap(), 2).unwrap();
        let alone: Vec<String> = plan_launches(&alone, p.gpu.limits(), Precision::F16)
            .unwrap()
            .iter()
            .map(|(_, l)| format!("{} {:?}", l.kernel.name(), l.grid))
            .collect();
        for step in 0..3 {
            let staged: Vec<String> = p
                .launches
                .iter()
                .filter(|l| l.stage == Stage::Unet && l.step == step)
                .map(|l| format!("{} {:?}", l.cost.kernel.name(), l.cost.grid))
                .collect();
            assert_eq!(staged, alone, "step {step}");
        }
        assert_eq!(p.unet_call().launches, alone.len());
        assert_eq!(p.stage(Stage::Unet).launches, 3 * alone.len());
        // Each step: the input cast and the sampler step; once: the decoder's input.
        assert_eq!(p.stage(Stage::Step).launches, 3 * 2);
        assert_eq!(p.stage(Stage::Once).launches, 1);
        let sum: usize = Stage::ALL.iter().map(|&s| p.stage(s).launches).sum();
        assert_eq!(sum, p.generation().launches);
    }

    #[test]
    fn sdxl_joins_its_contexts_and_embeds_its_time_ids_once() {
        let cfg = PlanConfig { arch: Arch::Sdxl, width: 1024, height: 1024, num_images: 1, steps: 2 };
        let p = plan(GpuSpec::by_name("h100").unwrap(), &cfg).unwrap();
        let once: Vec<&str> =
            p.launches.iter().filter(|l| l.stage == Stage::Once).map(|l| l.cost.kernel.name()).collect();
        assert!(once.contains(&"concat_v8_f16") && once.iter().any(|k| k.starts_with("igemm")), "{once:?}");
        // The f32 VAE (force_upcast) runs the tf32 kernels.
        assert!(p.launches.iter().any(|l| l.stage == Stage::Vae && l.cost.kernel.name().contains("tf32")));
    }

    #[test]
    fn no_launch_is_predicted_faster_than_its_flops_at_the_tensor_peak() {
        for gpu in ["h100", "a100", "l40s"] {
            let p = sd15(gpu, 1);
            let peak = p.gpu.tensor_peak_tflops * 1e12;
            for l in &p.launches {
                let floor_us = l.cost.work.flops / peak * 1e6;
                assert!(
                    l.cost.predicted_us >= floor_us,
                    "{gpu} {}: {} < {floor_us}",
                    l.cost.kernel.name(),
                    l.cost.predicted_us
                );
            }
            let g = p.generation();
            assert!(g.predicted_us >= g.flops / peak * 1e6);
        }
    }

    #[test]
    fn the_json_has_the_documented_fields() {
        let v = sd15("h200", 2).json();
        for k in ["gpu", "arch", "width", "height", "num_images", "steps", "unet_call", "generation", "launches"] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!((v["gpu"].as_str(), v["arch"].as_str(), v["steps"].as_u64()), (Some("h200"), Some("sd15"), Some(2)));
        for part in ["unet_call", "generation"] {
            for k in ["launches", "flops", "predicted_us"] {
                assert!(v[part][k].is_number(), "{part}.{k}");
            }
        }
        let launches = v["launches"].as_array().unwrap();
        assert_eq!(launches.len() as u64, v["generation"]["launches"].as_u64().unwrap());
        for l in launches {
            for k in ["stage", "kernel", "ctas", "ctas_per_sm", "waves", "flops", "bytes", "bound", "predicted_us"] {
                assert!(l.get(k).is_some(), "launch field {k}");
            }
            let stage = l["stage"].as_str().unwrap();
            assert!(["text", "once", "unet", "step", "vae"].contains(&stage), "{stage}");
        }
    }

    #[test]
    fn native_sizes_are_the_pipelines_defaults() {
        let sizes = [Arch::Sd15, Arch::Sd2, Arch::Sdxl, Arch::Ssd1b].map(|a| native_size(a).unwrap());
        assert_eq!(sizes, [512, 768, 1024, 1024]);
    }

    #[test]
    fn bad_sizes_and_counts_are_errors_naming_the_flag() {
        let gpu = GpuSpec::by_name("h100").unwrap();
        let e = plan(gpu, &PlanConfig { arch: Arch::Sd15, width: 500, height: 512, num_images: 1, steps: 4 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--width") && e.contains("500"), "{e}");
        let e = plan(gpu, &PlanConfig { arch: Arch::Sd15, width: 512, height: 512, num_images: 1, steps: 0 })
            .unwrap_err()
            .to_string();
        assert!(e.contains("--steps"), "{e}");
    }
}
