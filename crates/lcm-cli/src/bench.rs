//! `lcm bench` flags.

use std::path::PathBuf;

use clap::Args;
use lcm::bench::lora::{cpu_refusal, BenchBackend};
use lcm::bench::{run as bench, Arch, BenchConfig, BenchControlNet};
use lcm::Opened;
use lcm_core::{Error, Result};
use lcm_models::Variant;
use lcm_pipeline::spec::SizeRule;

use crate::device::{open, DeviceArg};
use crate::vae_tiling::VaeTilingArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A diffusers folder to time (SD1.5, SD2 or SDXL layout); default: synthetic models of --arch with
    /// seeded random weights (no download).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The synthetic models' shapes without --model: sd15, sd2 (SD2.1: OpenCLIP-H text encoder, 64-wide
    /// UNet heads), sdxl (SDXL base) or ssd-1b (SSD-1B-shaped UNet, SDXL's text encoders and VAE).
    #[arg(long, value_enum, default_value_t = ArchArg::Sd15)]
    pub arch: ArchArg,
    /// Image width (default 512 on CUDA, 256 on the CPU).
    #[arg(long)]
    pub width: Option<usize>,
    /// Image height (default 512 on CUDA, 256 on the CPU).
    #[arg(long)]
    pub height: Option<usize>,
    /// UNet steps per generation.
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    /// Batch size (images per generation).
    #[arg(long = "num-images", default_value_t = 1)]
    pub num_images: usize,
    /// auto (cuda when available, else cpu), cpu, cuda or emulated. Default size: 512 on cuda, 256 on
    /// cpu, 64 on the emulator.
    #[arg(long, value_enum, default_value_t)]
    pub device: DeviceArg,
    /// Untimed generations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed generations.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Seed of the synthetic weights and the latents.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Add an unmerged LoRA of this rank on every UNet LoRA target (to_q/k/v, to_out.0, proj_in/out,
    /// ff, resnet convs, time_emb_proj, down/upsampler convs), applied at run time. CUDA only.
    #[arg(long, value_name = "R")]
    pub lora_rank: Option<usize>,
    /// Time img2img as `lcm frames` runs it, at this strength in (0, 1]: a VAE encode of each image, the
    /// last int(steps·strength) UNet steps (all steps on a UNet with a guidance embedding), the decode;
    /// the table adds frames per second.
    #[arg(long, value_name = "F")]
    pub strength: Option<f32>,
    /// CPU only: also print the time spent in each op family (conv2d, linear, attention, ...).
    #[arg(long)]
    pub profile: bool,
    /// Tiled decoding (the report's VAE arena line shows the memory it saves).
    #[command(flatten)]
    pub tiling: VaeTilingArgs,
    /// No run: print the launches one generation makes on this GPU (h100, h200, a100, l40s) as the CUDA
    /// backend plans them, each with its grid, occupancy, waves, FLOPs, bytes, bound and predicted time
    /// (a cost model, docs/kernels.md), and totals per stage. Needs no GPU. Default size: the arch's
    /// native one (512 for sd15, 768 for sd2, 1024 for sdxl and ssd-1b).
    #[arg(long, value_name = "GPU", conflicts_with_all = ["model", "lora_rank", "strength", "controlnet", "profile"])]
    pub plan: Option<String>,
    /// With --plan: also write the launches as a roofline chart (SVG): arithmetic intensity against
    /// predicted TFLOP/s, the GPU's ceilings drawn, points by stage, the ten costliest labelled.
    #[arg(long, value_name = "FILE.svg", requires = "plan")]
    pub plot: Option<PathBuf>,
    /// Run a ControlNet before each UNet step and time it (the controlnet_step stage, its share of a
    /// step): `synthetic` (diffusers' ControlNetModel.from_unet of the benchmarked UNet, seeded random
    /// weights), or a ControlNet folder or .safetensors file of the model's family.
    #[arg(long, value_name = "synthetic|PATH")]
    pub controlnet: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchArg {
    Sd15,
    Sd2,
    Sdxl,
    #[value(name = "ssd-1b")]
    Ssd1b,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(gpu) = &args.plan {
        return plan(gpu, &args);
    }
    if args.steps == 0 || args.num_images == 0 || args.repeat == 0 {
        return Err(Error::invalid("lcm bench", "--steps, --num-images and --repeat must be at least 1"));
    }
    if let Some(s) = args.strength.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
        return Err(Error::invalid("--strength", format!("{s}: expected a value in (0, 1]")));
    }
    if args.lora_rank == Some(0) {
        return Err(Error::invalid("--lora-rank", "0: expected at least 1"));
    }
    let opened = open(args.device)?;
    let variant = opened.variant();
    match opened {
        Opened::Cpu(_) if args.lora_rank.is_some() => Err(cpu_refusal()),
        Opened::Cpu(_) if args.profile => {
            let b = lcm::cpu::CpuBackend::profiling();
            go(&b, &args, 256, variant)?;
            eprintln!("{:<18} {:>7} {:>11} {:>9}", "op (all stages)", "calls", "time ms", "GFLOP/s");
            for (name, calls, t, macs) in b.profile() {
                let gflops = 2.0 * macs as f64 / t.as_secs_f64().max(1e-12) / 1e9;
                eprintln!("{name:<18} {calls:>7} {:>11.1} {gflops:>9.1}", t.as_secs_f64() * 1e3);
            }
            Ok(())
        }
        Opened::Cpu(b) => go(&b, &args, 256, variant),
        Opened::Cuda(_) if args.profile => {
            Err(Error::invalid("--profile", "per-op profiles are CPU-only; on CUDA use nsys/ncu"))
        }
        Opened::Cuda(b) => go(&*b, &args, if b.is_emulated() { 64 } else { 512 }, variant),
    }
}

/// `--plan GPU`: the launch plan, as a table or (`--json`) one JSON object.
fn plan(gpu: &str, args: &BenchArgs) -> Result<()> {
    let gpu = lcm::cuda::GpuSpec::by_name(gpu)?;
    let arch = arch(args.arch);
    let native = lcm::plan::native_size(arch)?;
    let (width, height) = (args.width.unwrap_or(native), args.height.unwrap_or(native));
    SizeRule::default().check("--width", width)?;
    SizeRule::default().check("--height", height)?;
    let cfg = lcm::plan::PlanConfig { arch, width, height, num_images: args.num_images, steps: args.steps };
    let p = lcm::plan::plan(gpu, &cfg)?;
    let text = if args.json { format!("{}\n", p.json()) } else { p.table() };
    // A reader that stops early (`| head`) is not an error: the table is long.
    if let Err(e) = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(Error::invalid("stdout", e.to_string()));
        }
    }
    if let Some(path) = &args.plot {
        crate::plan_plot::roofline(&p, path)?;
        eprintln!("roofline written to {}", path.display());
    }
    Ok(())
}

fn arch(a: ArchArg) -> Arch {
    match a {
        ArchArg::Sd15 => Arch::Sd15,
        ArchArg::Sd2 => Arch::Sd2,
        ArchArg::Sdxl => Arch::Sdxl,
        ArchArg::Ssd1b => Arch::Ssd1b,
    }
}

fn go<B: BenchBackend>(backend: &B, args: &BenchArgs, default_size: usize, variant: Variant) -> Result<()> {
    let (width, height) = (args.width.unwrap_or(default_size), args.height.unwrap_or(default_size));
    SizeRule::default().check("--width", width)?;
    SizeRule::default().check("--height", height)?;
    let cfg = BenchConfig {
        model: args.model.clone(),
        arch: arch(args.arch),
        width,
        height,
        steps: args.steps,
        batch: args.num_images,
        warmup: args.warmup,
        repeat: args.repeat,
        seed: args.seed,
        lora_rank: args.lora_rank,
        vae_tiling: args.tiling.setting(),
        strength: args.strength,
        controlnet: args.controlnet.as_deref().map(|c| match c {
            "synthetic" => BenchControlNet::Synthetic,
            path => BenchControlNet::Path(PathBuf::from(path)),
        }),
    };
    let report = bench(backend, &cfg, variant, &mut |line| eprintln!("{line}"))?;
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
