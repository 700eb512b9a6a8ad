//! `lcm serve`: load a model once per device, then answer OpenAI images API, A1111 txt2img/img2img and
//! Open Inference Protocol requests over HTTP (crates/lcm-serve, docs/serving.md).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use lcm::with_pipeline;
use lcm::Opened;
use lcm_core::{Error, Result};
use lcm_pipeline::lora::LoraSet;
use lcm_pipeline::spec::{LoadSpec, LoraMode, LoraSpec, SizeRule};
use lcm_serve::{ApiKeys, ControlNetDir, Limits, LoraDir, ServeConfig};

use crate::device::DeviceArg;
use crate::model_args::{
    model_and_loras, parse_embedding, parse_lora, parse_prediction, parse_scheduler, parse_spacing, sampler_options,
    SchedulerArg,
};
use crate::vae_tiling::VaeTilingArgs;
use lcm_core::lcm::Prediction;
use lcm_pipeline::scheduler::Spacing;

/// Images per batch when --max-batch is not given (docs/serving.md, "Batching": crates/lcm-cli/tests/serve_load.rs
/// measures it; docs/BENCH_LOG.md: 4 beat 1 in mean time per image on the CPU).
pub const DEFAULT_MAX_BATCH: usize = 4;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A diffusers folder or a single-file SD1.5-family checkpoint, as for `lcm generate`. Without it,
    /// SD1.5 + the LCM-LoRA from the Hugging Face cache (downloaded if missing).
    #[arg(long, value_name = "DIR|FILE")]
    pub model: Option<PathBuf>,
    /// A LoRA every request runs with, before its own (e.g. the LCM-LoRA on a plain SD1.5 model):
    /// FILE[:SCALE], repeatable.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = parse_lora)]
    pub loras: Vec<LoraSpec>,
    /// A folder of LoRA .safetensors files requests may name (`loras: [{name, scale}]`, A1111's
    /// `<lora:NAME:SCALE>`), each by its file name without .safetensors. Clients never pass paths.
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// A folder of ControlNets requests may name (A1111's `alwayson_scripts.controlnet.args[].model`):
    /// each subfolder with a config.json (a diffusers ControlNet) by its folder name, each .safetensors
    /// file by its name without .safetensors. Each loads on its first use and stays loaded.
    #[arg(long, value_name = "DIR")]
    pub controlnet_dir: Option<PathBuf>,
    /// A textual-inversion embedding every request may use by its trigger word, as `lcm generate
    /// --embedding` (FILE[:TOKEN], repeatable).
    #[arg(long = "embedding", value_name = "FILE[:TOKEN]", value_parser = parse_embedding)]
    pub embeddings: Vec<(PathBuf, Option<String>)>,
    /// A folder of embeddings every request may use (A1111's embeddings/: each .safetensors file by
    /// its stem; misfits skipped with a warning); `GET /sdapi/v1/embeddings` lists them.
    #[arg(long, value_name = "DIR")]
    pub embeddings_dir: Option<PathBuf>,
    /// Where to run: auto takes cuda when a GPU opens, else cpu (with a note); emulated is for debugging.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
    /// Several devices, one worker and pipeline each, all taking batches from one queue: GPU
    /// ordinals (`0,1,3`) or `all` (every GPU the driver sees) with --device cuda/auto; with --device
    /// cpu or emulated, N entries are N workers (each its own copy of the model; the CPU backend already
    /// uses every core, so more than one is for tests and overlap) and `all` is one. Default: one.
    #[arg(long, value_name = "LIST|all", value_parser = parse_devices)]
    pub devices: Option<Devices>,
    /// A file of API keys, one per line: every API route then wants `Authorization: Bearer KEY` (what
    /// the openai clients send as api_key); /health, /ready, /v2/health/* and /metrics stay open. The
    /// environment variable LCM_API_KEY (one key) does the same when this is not given.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Address to listen on. Loopback by default; 0.0.0.0 (or ::) serves every interface.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Most images one batch runs: queued requests of the same size, steps, guidance scale and LoRAs
    /// run together up to this many images.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// LoRA sets kept prepared for a fast swap back to them, most recent first: on CUDA a swap to one
    /// is a single device copy (each costs device memory the size of the LoRA buffers: ~135 MB at
    /// rank 64 on SD1.5); 0 swaps from the files every time.
    #[arg(long, default_value_t = 4)]
    pub lora_cache: usize,
    /// Requests the queue holds; beyond it requests are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take from arrival to answer; past it its work is cancelled and 504
    /// answered.
    #[arg(long, default_value_t = 120.0)]
    pub timeout_s: f64,
    /// Largest image side a request may ask for (a multiple of 8, at most 2048).
    #[arg(long, default_value_t = 1024)]
    pub max_size: usize,
    /// Most images one request may ask for (`n`, `batch_size`).
    #[arg(long, default_value_t = 8)]
    pub max_images: usize,
    /// Largest request body in MiB (base64 init images included).
    #[arg(long, default_value_t = 32)]
    pub max_body_mb: usize,
    /// On CUDA LoRAs run unmerged from fixed buffers (a swap is a copy): the largest rank on one layer
    /// they hold [default: 64].
    #[arg(long, value_name = "N")]
    pub max_lora_rank: Option<usize>,
    /// The sampler requests run unless they name one (A1111's `sampler_name`, the OpenAI routes'
    /// `sampler`): lcm, tcd, euler, euler-a, ddim, or auto: the model folder's own scheduler class.
    #[arg(long, value_name = "NAME", default_value = "lcm", value_parser = parse_scheduler)]
    pub scheduler: SchedulerArg,
    /// --scheduler tcd's gamma / ddim's eta, in [0, 1] [default: 0].
    #[arg(long, value_name = "F")]
    pub eta: Option<f32>,
    /// --scheduler ddim, euler and euler-a: leading, trailing or linspace timesteps [default: the model's
    /// scheduler config's].
    #[arg(long, value_name = "SPACING", value_parser = parse_spacing)]
    pub timestep_spacing: Option<Spacing>,
    /// What the UNet predicts, for single files: epsilon or v_prediction (as `lcm generate`'s).
    #[arg(long, value_name = "TYPE", value_parser = parse_prediction)]
    pub prediction_type: Option<Prediction>,
    /// Test hooks (POST /debug/panic, a worker panic on one prompt): for the tests only.
    #[arg(long, hide = true)]
    pub debug_hooks: bool,
    /// Tiled VAE for every request (large sizes within bounded memory).
    #[command(flatten)]
    pub tiling: VaeTilingArgs,
}

/// `--devices`: GPU ordinals or worker slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    All,
    List(Vec<usize>),
}

fn parse_devices(s: &str) -> std::result::Result<Devices, String> {
    if s == "all" {
        return Ok(Devices::All);
    }
    let mut list = Vec::new();
    for part in s.split(',') {
        let n: usize =
            part.trim().parse().map_err(|_| format!("`{part}`: expected device ordinals like 0,1 or `all`"))?;
        if list.contains(&n) {
            return Err(format!("device {n} is listed twice"));
        }
        if n > 255 {
            return Err(format!("device {n}: expected an ordinal below 256"));
        }
        list.push(n);
    }
    Ok(Devices::List(list))
}

/// The ordinals `--devices` names for `device` (see its help).
fn ordinals(device: DeviceArg, devices: Option<&Devices>) -> Result<Vec<usize>> {
    Ok(match (devices, device) {
        (None, _) => vec![0],
        (Some(Devices::List(list)), _) => list.clone(),
        (Some(Devices::All), DeviceArg::Cpu | DeviceArg::Emulated) => vec![0],
        (Some(Devices::All), DeviceArg::Cuda | DeviceArg::Auto) => match lcm::cuda::gpu_count() {
            0 if device == DeviceArg::Cuda => {
                return Err(Error::invalid("--devices all", "the CUDA driver sees no GPU"));
            }
            0 => vec![0],
            n => (0..n).collect(),
        },
    })
}

pub fn run(args: ServeArgs) -> Result<()> {
    // Everything that can be checked before loading a model is checked first.
    if args.max_batch == 0 || args.max_batch > 64 {
        return Err(Error::invalid("--max-batch", format!("{}: expected 1..=64", args.max_batch)));
    }
    if args.queue == 0 {
        return Err(Error::invalid("--queue", "0: expected at least 1"));
    }
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0 && args.timeout_s <= 86400.0) {
        return Err(Error::invalid("--timeout-s", format!("{}: expected seconds in (0, 86400]", args.timeout_s)));
    }
    let size = SizeRule::up_to("--max-size", args.max_size)?;
    if args.max_images == 0 || args.max_body_mb == 0 {
        return Err(Error::invalid("--max-images/--max-body-mb", "expected at least 1"));
    }
    let api_keys = ApiKeys::load(args.api_key_file.as_deref(), std::env::var("LCM_API_KEY").ok())?;
    let ordinals = ordinals(args.device, args.devices.as_ref())?;
    let loras = LoraDir::scan(args.lora_dir.as_deref())?;
    let controlnets = ControlNetDir::scan(args.controlnet_dir.as_deref())?;
    let (model_dir, base_loras) = model_and_loras(args.model.as_ref(), None, &args.loras)?;
    LoraSet::open(&base_loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
    let spec = LoadSpec {
        model_dir: model_dir.clone(),
        loras: base_loras.clone(),
        // Unmerged on CUDA, so a swap between batches is a copy into fixed buffers; the CPU re-merges.
        lora_mode: LoraMode::Runtime,
        max_lora_rank: args.max_lora_rank,
        prediction_type: args.prediction_type,
        embeddings: args.embeddings.clone(),
        embeddings_dir: args.embeddings_dir.clone(),
        ..LoadSpec::default()
    };
    let default_size = lcm_pipeline::load::default_image_size(&spec)?.min(size.max());
    let model_name = model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let cfg = |max_steps: usize, sampler, embeddings| ServeConfig {
        host: args.host.clone(),
        port: args.port,
        max_batch: args.max_batch,
        queue: args.queue,
        timeout: Duration::from_secs_f64(args.timeout_s),
        limits: Limits {
            max_body_bytes: args.max_body_mb << 20,
            max_prompt_chars: 4000,
            size,
            max_images: args.max_images,
            max_steps,
            max_loras: 8,
            sampler,
        },
        loras,
        controlnets,
        base_loras,
        lora_cache: args.lora_cache,
        model_name,
        debug_hooks: args.debug_hooks,
        embeddings,
        api_keys,
        default_size,
    };
    let t = std::time::Instant::now();
    let mut workers = Vec::with_capacity(ordinals.len());
    for &ordinal in &ordinals {
        let (opened, note) = Opened::open_ordinal(args.device.into(), ordinal)?;
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        let device = match opened.name() {
            "cpu" => format!("cpu:{ordinal}"),
            "cuda" => format!("cuda:{ordinal}"),
            _ => format!("emulated:{ordinal}"),
        };
        eprintln!("loading {} on {device}", spec.model_dir.display());
        let mut engine = opened.load(spec.clone())?;
        with_pipeline!(&mut engine, p => p.set_vae_tiling(args.tiling.setting()))?;
        workers.push(lcm_serve::Worker { device, engine });
    }
    let (sampler, _) = with_pipeline!(&workers[0].engine, p =>
        sampler_options(args.scheduler, args.eta, args.timestep_spacing, p.scheduler_config()))?;
    for w in &mut workers {
        with_pipeline!(&mut w.engine, p => p.set_sampler(sampler))?;
    }
    let engine = &workers[0].engine;
    let embeddings = with_pipeline!(engine, p => p.embeddings().clone());
    for s in &embeddings.skipped {
        eprintln!("warning: embedding {} skipped: {}", s.path.display(), s.reason);
    }
    let cfg = cfg(with_pipeline!(engine, p => p.max_steps(None))?, sampler, embeddings);
    eprintln!(
        "loaded on {} device(s) in {:.0} ms; sampler {}; {} LoRAs in --lora-dir, {} ControlNets in --controlnet-dir; \
         max batch {}, queue {}, timeout {} s{}",
        workers.len(),
        t.elapsed().as_secs_f64() * 1e3,
        sampler.kind.name(),
        cfg.loras.files.len(),
        cfg.controlnets.models.len(),
        cfg.max_batch,
        cfg.queue,
        cfg.timeout.as_secs_f64(),
        if cfg.api_keys.is_some() { "; API keys required" } else { "" }
    );
    lcm_serve::run(workers, cfg)
}
