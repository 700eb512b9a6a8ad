//! `lcm bench`: the whole pipeline — CLIP, n UNet steps, VAE decode — after warm-up, repeated, with the
//! median/min/max of each stage and of the end to end, and a TAESD decode of the same latents beside it. With no model folder it builds SD1.5-, SD2-, SDXL- or
//! SSD-1B-shaped models ([`Arch`]) with seeded random weights (f16-rounded), so it needs no download.
//! SDXL runs both text encoders and the UNet's pooled and time-id conditioning. `lora_rank` adds an
//! unmerged LoRA on the UNet (CUDA only; see [`lora`]). `strength` times img2img as `lcm frames` runs
//! it: a VAE encode per image, the img2img share of the steps, the decode, and frames per second.

pub mod lora;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Result, Tensor};
use lcm_models::arch::clip::{output, ClipOutput};
use lcm_models::arch::unet::TEXT_TIME_IDS;
use lcm_models::checkpoint::synthetic::random_source;
use lcm_models::{
    arch::{sd15, sd2, sdxl},
    AddedCond, ClipConfig, ClipTextModel, ControlNet, ControlNetConfig, Unet, UnetConfig, Vae, VaeConfig, VaeTiling,
    Variant,
};
use lcm_pipeline::load::upcast_vae_backend;
use lcm_pipeline::spec::{Field, LoadSpec};
use lora::{BenchBackend, LoraSummary, LoraSwaps};
use serde_json::json;

/// The synthetic model family `lcm bench` builds when no folder is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// SD1.5: one text encoder, four UNet levels.
    Sd15,
    /// SD2.1 (768-v): SD1.5's levels with 64-wide heads, linear projections, a 1024-wide OpenCLIP-H
    /// context (23 layers, gelu).
    Sd2,
    /// SDXL base: two text encoders, three levels with depths 1/2/10.
    Sdxl,
    /// An SSD-1B-shaped UNet (per-layer depths, own up path) with SDXL's text encoders and VAE.
    Ssd1b,
}

/// The `config.json` texts of an [`Arch`]'s models.
#[derive(Debug, Clone, Copy)]
pub struct ArchConfigs {
    pub text_encoder: &'static str,
    /// SDXL's second text encoder.
    pub text_encoder_2: Option<&'static str>,
    pub unet: &'static str,
    pub vae: &'static str,
}

impl Arch {
    /// Its models' configs: what the synthetic models and the launch plan (`crate::plan`) are built from.
    pub fn configs(self) -> ArchConfigs {
        let (text_encoder, text_encoder_2, unet, vae) = match self {
            Arch::Sd15 => (sd15::TEXT_ENCODER_CONFIG, None, sd15::UNET_CONFIG, sd15::VAE_CONFIG),
            Arch::Sd2 => (sd2::TEXT_ENCODER_CONFIG, None, sd2::UNET_CONFIG, sd2::VAE_CONFIG),
            Arch::Sdxl => {
                (sdxl::TEXT_ENCODER_CONFIG, Some(sdxl::TEXT_ENCODER_2_CONFIG), sdxl::UNET_CONFIG, sdxl::VAE_CONFIG)
            }
            Arch::Ssd1b => (
                sdxl::TEXT_ENCODER_CONFIG,
                Some(sdxl::TEXT_ENCODER_2_CONFIG),
                sdxl::SSD_1B_UNET_CONFIG,
                sdxl::VAE_CONFIG,
            ),
        };
        ArchConfigs { text_encoder, text_encoder_2, unet, vae }
    }

    /// Its `--arch` value.
    pub fn flag(self) -> &'static str {
        match self {
            Arch::Sd15 => "sd15",
            Arch::Sd2 => "sd2",
            Arch::Sdxl => "sdxl",
            Arch::Ssd1b => "ssd-1b",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Sd15 => "SD1.5",
            Arch::Sd2 => "SD2.1",
            Arch::Sdxl => "SDXL",
            Arch::Ssd1b => "SSD-1B-shaped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub model: Option<PathBuf>,
    /// The synthetic model's family (ignored with `model`).
    pub arch: Arch,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub batch: usize,
    pub warmup: usize,
    pub repeat: usize,
    pub seed: u64,
    /// An unmerged LoRA of this rank on every UNet LoRA target (CUDA backend only).
    pub lora_rank: Option<usize>,
    /// Tiled VAE decoding: `Some(None)` with the VAE's default tile, `Some(Some(px))` with `px`-pixel tiles.
    pub vae_tiling: Option<Option<usize>>,
    /// img2img at this strength: each image VAE-encoded alone (as the pipeline does), then
    /// int(steps·strength) UNet steps (all `steps` for a UNet with a guidance embedding, whose schedule
    /// shortens instead), then the decode.
    pub strength: Option<f32>,
    /// A ControlNet run before each UNet step (the `controlnet_step` stage): its folder or file, or
    /// one made from the UNet's config with seeded random weights.
    pub controlnet: Option<BenchControlNet>,
}

/// The ControlNet `lcm bench` times.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchControlNet {
    /// `ControlNetModel.from_unet` of the benchmarked UNet, with seeded random weights.
    Synthetic,
    /// A ControlNet folder or single file.
    Path(PathBuf),
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
    /// text_encoder, vae_encode (img2img only), unet (all steps), unet_step (one step), vae_decode,
    /// end_to_end, taesd_decode; with `lora_rank`, lora_swap and lora_set (see `lora`)
    pub stages: Vec<Stage>,
    pub lora: Option<LoraSummary>,
    pub vae_arena: VaeArena,
}

/// The VAE decoder's activation memory after the run: its arenas (one per input shape it planned).
#[derive(Debug, Clone, Copy)]
pub struct VaeArena {
    pub bytes: usize,
    pub shapes: usize,
    pub tiling: Option<VaeTiling>,
    /// Decoded with f32 activations on a backend whose own are f16 (`force_upcast`, as the pipeline).
    pub upcast: bool,
}

struct Models<B: Backend> {
    clip: ClipTextModel<B>,
    /// SDXL's second text encoder (CLIPTextModelWithProjection).
    clip_2: Option<ClipTextModel<B>>,
    unet: Unet<B>,
    vae: Vae<B>,
    /// The VAE's backend when it is upcast to f32 as the pipeline would (`upcast_vae_backend`).
    vae_backend: Option<B>,
    /// TAESD at its released widths with seeded random weights, timed beside the full VAE.
    taesd: Vae<B>,
}

fn load<B: Backend>(
    backend: &B,
    model: Option<&Path>,
    arch: Arch,
    variant: Variant,
    seed: u64,
    encoder: bool,
) -> Result<(Models<B>, String)> {
    // SDXL's text encoders give the UNet their penultimate hidden states, as StableDiffusionXLPipeline.
    let penultimate = |c: ClipConfig, two: bool| if two { c.with_output(ClipOutput::Penultimate) } else { c };
    match model {
        Some(dir) => {
            // The pipeline's own loader: the same folder rules, configs, variants and checks as `lcm generate`.
            let spec = LoadSpec { model_dir: dir.to_path_buf(), variant, ..LoadSpec::default() };
            let c = lcm_pipeline::load::load(backend, &spec)?;
            let mut vae = c.vae;
            if encoder {
                vae.load_encoder(c.vae_backend.as_ref().unwrap_or(backend), &dir.join("vae"), variant)?;
            }
            let (clip, clip_2) = (c.text.first.model, c.text.second.map(|t| t.model));
            let taesd = synthetic_taesd(backend, seed)?;
            Ok((
                Models { clip, clip_2, unet: c.unet, vae, vae_backend: c.vae_backend, taesd },
                dir.display().to_string(),
            ))
        }
        None => {
            let origin = Path::new("synthetic");
            let mut src = random_source(seed);
            let ArchConfigs { text_encoder: te, text_encoder_2: te2, unet, vae } = arch.configs();
            let two = te2.is_some();
            let mut clip_model = |json: &str| {
                let cfg = penultimate(ClipConfig::from_json(origin, json, 0)?, two);
                ClipTextModel::from_source(backend, cfg, origin, &mut src)
            };
            let clip = clip_model(te)?;
            let clip_2 = te2.map(&mut clip_model).transpose()?;
            let unet = Unet::from_source(backend, UnetConfig::from_json(origin, unet)?, origin, &mut src)?;
            let vae_cfg = VaeConfig::from_json(origin, vae)?;
            let vae_backend = upcast_vae_backend(backend, two, &vae_cfg);
            let vae_be = vae_backend.as_ref().unwrap_or(backend);
            let mut vae = Vae::from_source(vae_be, vae_cfg, origin, &mut src)?;
            if encoder {
                vae.encoder_from_source(vae_be, origin, &mut src)?;
            }
            let taesd = synthetic_taesd(backend, seed)?;
            let name = format!("synthetic {} (seed {seed})", arch.name());
            Ok((Models { clip, clip_2, unet, vae, vae_backend, taesd }, name))
        }
    }
}

/// TAESD (taesd / taesdxl: the same shapes) with seeded random weights.
fn synthetic_taesd<B: Backend>(backend: &B, seed: u64) -> Result<Vae<B>> {
    let origin = Path::new("synthetic taesd");
    let cfg = VaeConfig::from_json(origin, lcm_models::arch::taesd::TAESD_CONFIG)?;
    Vae::from_source(backend, cfg, origin, &mut random_source(seed))
}

/// One prompt's text conditioning: the context `[1, 77, D]` and, for SDXL, the pooled text embeds
/// `[1, P]` (text_encoder_2's projected state at its pooled token).
fn encode<B: Backend>(backend: &B, m: &mut Models<B>, ids: &[i32]) -> Result<(Tensor, Option<Tensor>)> {
    let Some(te2) = m.clip_2.as_mut() else { return Ok((m.clip.forward(backend, ids, 1)?, None)) };
    let a = m.clip.forward(backend, ids, 1)?;
    let outs = te2.forward_outputs(backend, ids, 1)?;
    let (b, p) = (&outs[output::CONTEXT], te2.config.projection_dim.unwrap_or(0));
    let (da, db) = (a.shape[2], b.shape[2]);
    let ctx: Vec<f32> =
        (0..ids.len()).flat_map(|t| [&a.data[t * da..(t + 1) * da], &b.data[t * db..(t + 1) * db]].concat()).collect();
    let at = te2.config.pooled_position(ids) * p;
    let pooled = Tensor::new(vec![1, p], outs[output::PROJECTED].data[at..at + p].to_vec());
    Ok((Tensor::new(vec![1, ids.len(), da + db], ctx), Some(pooled)))
}

/// Runs the benchmark; `log` receives one line per timed repetition.
pub fn run<B: BenchBackend>(
    backend: &B,
    cfg: &BenchConfig,
    variant: Variant,
    log: &mut dyn FnMut(&str),
) -> Result<BenchReport> {
    let (mut m, model) = load(backend, cfg.model.as_deref(), cfg.arch, variant, cfg.seed, cfg.strength.is_some())?;
    let (lora, swaps) = match cfg.lora_rank {
        Some(rank) => {
            let (summary, swaps) = backend.attach_unmerged_lora(&mut m.unet, rank, cfg.seed)?;
            (Some(summary), Some(swaps))
        }
        None => (None, None),
    };
    let tiling = cfg.vae_tiling.map(|px| VaeTiling::new(&m.vae.config, px)).transpose()?;
    let mut controlnet = match &cfg.controlnet {
        None => None,
        Some(BenchControlNet::Synthetic) => {
            let c = ControlNetConfig::from_unet(&m.unet.config);
            Some(ControlNet::from_source(backend, c, Path::new("synthetic controlnet"), &mut random_source(cfg.seed))?)
        }
        Some(BenchControlNet::Path(p)) if p.is_dir() => Some(ControlNet::load_folder(backend, p, variant)?),
        Some(BenchControlNet::Path(p)) => Some(ControlNet::load_single_file_for(backend, p, Some(&m.unet.config))?),
    };
    let scale = m.vae.config.downscale();
    let (h, w, b) = (cfg.height / scale, cfg.width / scale, cfg.batch);
    let lc = m.unet.config.in_channels;
    // CLIP's BOS, then EOS and ordinary ids: only the count (77) matters for the timing. Folded into the
    // vocabulary of the encoder with the fewest rows, so small test models (a 1000-token vocabulary) run too.
    let vocab = m.clip.config.vocab_size.min(m.clip_2.as_ref().map_or(usize::MAX, |c| c.config.vocab_size)) as i32;
    let ids: Vec<i32> =
        (0..77).map(|i| if i == 0 { 49406 } else { 49407 - (i % 3 == 1) as i32 * 1000 } % vocab).collect();
    let latents = Tensor::new(vec![b, lc, h, w], lcm_pipeline::rng::TorchRng::new(cfg.seed).randn(b * lc * h * w));
    let cond = m.unet.config.time_cond_proj_dim.map(|d| Tensor::new(vec![b, d], vec![0.1; b * d]));
    let steps = match cfg.strength {
        Some(s) if m.unet.config.time_cond_proj_dim.is_none() => (cfg.steps as f64 * s as f64) as usize,
        _ => cfg.steps,
    };
    if steps == 0 {
        return Err(Field::Strength.invalid("runs none of the steps; raise strength or steps"));
    }
    let timesteps: Vec<f32> = (0..steps).map(|i| (999 - i * (1000 / steps)) as f32).collect();
    // img2img's inputs: one image per batch entry in [-1, 1], encoded one at a time as the pipeline does.
    let image = cfg.strength.map(|_| {
        let n = 3 * cfg.height * cfg.width;
        let data = lcm_pipeline::rng::TorchRng::new(cfg.seed + 1).randn(n).iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        Tensor::new(vec![1, 3, cfg.height, cfg.width], data)
    });

    let ctx_len = 77;
    let macs_text = m.clip.config.graph(1, ctx_len)?.macs()
        + m.clip_2.as_ref().map_or(Ok(0), |c| c.config.graph(1, ctx_len).map(|g| g.macs()))?;
    // SDXL's time ids: original size, crop top-left, target size (diffusers' defaults).
    let time_ids: Vec<f32> = [cfg.height, cfg.width, 0, 0, cfg.height, cfg.width].map(|v| v as f32).repeat(b);
    let time_ids = Tensor::new(vec![b, TEXT_TIME_IDS], time_ids);
    let macs_step = m.unet.config.graph(b, h, w, ctx_len)?.macs();
    let macs_vae = m.vae.config.decoder_graph(b, h, w)?.macs();
    let macs_enc = match image {
        Some(_) => m.vae.config.encoder_graph(1, cfg.height, cfg.width)?.macs() * b as u64,
        None => 0,
    };
    let macs_unet = macs_step * steps as u64;
    let macs_taesd = m.taesd.config.decoder_graph(b, h, w)?.macs();
    let macs_control = controlnet.as_ref().map_or(Ok(0), |c| c.config.graph(b, h, w, ctx_len).map(|g| g.macs()))?;
    // The control image: random pixels in [0, 1] at the output's size.
    let control_image = controlnet.as_ref().map(|c| {
        let n = b * c.config.conditioning_channels * cfg.height * cfg.width;
        let data = lcm_pipeline::rng::TorchRng::new(cfg.seed + 2).randn(n).iter().map(|v| v.abs().min(1.0)).collect();
        Tensor::new(vec![b, c.config.conditioning_channels, cfg.height, cfg.width], data)
    });
    let mut stages = vec![
        Stage { name: "text_encoder", macs: macs_text, samples: vec![] },
        Stage { name: "vae_encode", macs: macs_enc, samples: vec![] },
        Stage { name: "unet", macs: macs_unet, samples: vec![] },
        Stage { name: "unet_step", macs: macs_step, samples: vec![] },
        Stage { name: "vae_decode", macs: macs_vae, samples: vec![] },
        Stage {
            name: "end_to_end",
            macs: macs_text + macs_enc + macs_unet + macs_control * steps as u64 + macs_vae,
            samples: vec![],
        },
        // The alternative decoder, outside end_to_end (which uses the full VAE).
        Stage { name: "taesd_decode", macs: macs_taesd, samples: vec![] },
        // One ControlNet call per step, inside end_to_end, apart from `unet` and `unet_step`.
        Stage { name: "controlnet_step", macs: macs_control, samples: vec![] },
    ];
    for rep in 0..cfg.warmup + cfg.repeat {
        let t0 = Instant::now();
        let (text, pooled) = encode(backend, &mut m, &ids)?;
        let t_text = t0.elapsed();
        let ctx = Tensor::new(vec![b, ctx_len, text.shape[2]], text.data.repeat(b));
        let pooled = pooled.map(|p| Tensor::new(vec![b, p.shape[1]], p.data.repeat(b)));
        let added = pooled.as_ref().map(|text_embeds| AddedCond { text_embeds, time_ids: &time_ids });
        let te = Instant::now();
        let vae_be = m.vae_backend.as_ref().unwrap_or(backend);
        if let Some(img) = &image {
            for _ in 0..b {
                m.vae.encode_moments(vae_be, img)?;
            }
        }
        let t_enc = te.elapsed();
        let mut x = latents.clone();
        let mut steps = Vec::new();
        let mut control_steps = Vec::new();
        for &t in &timesteps {
            if let (Some(net), Some(img)) = (controlnet.as_mut(), &control_image) {
                let tc = Instant::now();
                net.forward(backend, &x, &vec![t; b], &ctx, img, 1.0, added)?;
                control_steps.push(tc.elapsed());
            }
            let ts = Instant::now();
            x = m.unet.forward_added(backend, &x, &vec![t; b], &ctx, cond.as_ref(), added)?;
            steps.push(ts.elapsed());
        }
        let tv = Instant::now();
        match tiling {
            Some(t) => m.vae.decode_tiled(vae_be, &x, t)?,
            None => m.vae.decode(vae_be, &x)?,
        };
        let t_vae = tv.elapsed();
        let total = t0.elapsed();
        let tt = Instant::now();
        m.taesd.decode(backend, &x)?;
        let t_taesd = tt.elapsed();
        if rep >= cfg.warmup {
            let unet: Duration = steps.iter().sum();
            stages[0].samples.push(t_text);
            stages[1].samples.push(t_enc);
            stages[2].samples.push(unet);
            stages[3].samples.extend(&steps);
            stages[4].samples.push(t_vae);
            stages[5].samples.push(total);
            stages[6].samples.push(t_taesd);
            stages[7].samples.extend(&control_steps);
            log(&format!("repeat {}/{}: {:.1} ms", rep - cfg.warmup + 1, cfg.repeat, total.as_secs_f64() * 1e3));
        } else {
            log(&format!("warm-up {}/{}: {:.1} ms", rep + 1, cfg.warmup, total.as_secs_f64() * 1e3));
        }
    }
    if let Some(swaps) = &swaps {
        stages.extend(time_lora_swaps(backend, &m.unet, swaps, cfg)?);
    }
    if controlnet.is_none() {
        stages.pop(); // no controlnet_step without a ControlNet
    }
    if image.is_none() {
        stages.remove(1); // no vae_encode without img2img
    }
    // Every decoder arena stays allocated (one per tile shape): their sum is the decode's memory.
    let arenas = m.vae.decoder_runner().arenas();
    let (bytes, shapes, upcast) = (arenas.iter().map(|(_, b)| b).sum(), arenas.len(), m.vae_backend.is_some());
    let vae_arena = VaeArena { bytes, shapes, tiling, upcast };
    Ok(BenchReport { device: backend.name().to_string(), config: cfg.clone(), model, stages, lora, vae_arena })
}

/// The two ways to swap the UNet's unmerged LoRA, each timed to completion on the device: `lora_swap`
/// loads a prepared LoRA (one device copy; A and B alternate), `lora_set` converts LoRA B's factors on
/// the host and uploads them buffer by buffer.
fn time_lora_swaps<B: BenchBackend>(
    backend: &B,
    unet: &Unet<B>,
    swaps: &LoraSwaps<B>,
    cfg: &BenchConfig,
) -> Result<[Stage; 2]> {
    let weights = &unet.runner().weights;
    let mut prepared = Stage { name: "lora_swap", macs: 0, samples: vec![] };
    let mut from_host = Stage { name: "lora_set", macs: 0, samples: vec![] };
    for rep in 0..cfg.warmup + cfg.repeat {
        let t = Instant::now();
        backend.load_lora_image(&swaps.images[rep % 2])?;
        backend.sync()?;
        let t_prepared = t.elapsed();
        let t = Instant::now();
        for (i, delta) in &swaps.host {
            backend.set_lora(&weights.weights[*i], &weights.specs[*i], Some(delta))?;
        }
        backend.sync()?;
        if rep >= cfg.warmup {
            prepared.samples.push(t_prepared);
            from_host.samples.push(t.elapsed());
        }
    }
    Ok([prepared, from_host])
}

impl BenchReport {
    /// Images per second end to end: the batch over the median end-to-end time.
    pub fn frames_per_s(&self) -> f64 {
        let e2e = self.stages.iter().find(|s| s.name == "end_to_end").map_or(0.0, |s| s.median().as_secs_f64());
        self.config.batch as f64 / e2e.max(1e-12)
    }

    pub fn table(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "lcm bench: {} on {}, {}x{}, batch {}, {} steps, {} repeats after {} warm-up\n",
            self.model, self.device, c.width, c.height, c.batch, c.steps, c.repeat, c.warmup
        );
        if let Some(st) = c.strength {
            s += &format!(
                "img2img strength {st}: VAE encode of each image, {} UNet steps, decode; {:.3} frames/s\n",
                self.stages.iter().find(|s| s.name == "unet_step").map_or(0, |u| u.samples.len() / c.repeat.max(1)),
                self.frames_per_s()
            );
        }
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
            // Stages that are copies, not arithmetic (the LoRA swaps), have no throughput.
            let tflops = match st.macs {
                0 => "-".to_string(),
                macs => format!("{:.3}", 2.0 * macs as f64 / st.median().as_secs_f64().max(1e-12) / 1e12),
            };
            s += &format!(
                "{:<13} {:>11.2} {:>11.2} {:>11.2} {:>12}\n",
                st.name,
                ms(st.median()),
                ms(st.min()),
                ms(st.max()),
                tflops
            );
        }
        let a = &self.vae_arena;
        let tiles = a.tiling.map_or("untiled".to_string(), |t| format!("{} px tiles", t.tile));
        s += &format!(
            "vae decode arena: {:.1} MiB ({tiles}, {} shape{}{})\n",
            a.bytes as f64 / (1 << 20) as f64,
            a.shapes,
            if a.shapes == 1 { "" } else { "s" },
            if a.upcast { ", f32 activations: force_upcast" } else { "" }
        );
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let c = &self.config;
        json!({
            "device": self.device, "model": self.model,
            "width": c.width, "height": c.height, "batch": c.batch, "steps": c.steps,
            "warmup": c.warmup, "repeat": c.repeat,
            "strength": c.strength, "images_per_s": self.frames_per_s(),
            "lora_rank": self.lora.map(|l| l.rank),
            "lora_targets": self.lora.map(|l| l.targets),
            "lora_params": self.lora.map(|l| l.params),
            "vae_tile": self.vae_arena.tiling.map(|t| t.tile),
            "vae_arena_bytes": self.vae_arena.bytes,
            "vae_f32": self.vae_arena.upcast,
            "stages": self.stages.iter().map(|st| json!({
                "name": st.name, "macs": st.macs,
                "median_ms": st.median().as_secs_f64() * 1e3,
                "min_ms": st.min().as_secs_f64() * 1e3,
                "max_ms": st.max().as_secs_f64() * 1e3,
            })).collect::<Vec<_>>(),
        })
    }
}
