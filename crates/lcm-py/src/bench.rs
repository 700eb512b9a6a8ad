//! `lcm.bench(...)`: `lcm bench`'s per-stage timings ([`lcm::bench::run`]) as a dict, the same fields
//! as `lcm bench --json` (one source: [`lcm::bench::BenchReport::json`]).

use std::path::PathBuf;

use lcm::bench::lora::BenchBackend;
use lcm::bench::{run, Arch, BenchConfig, BenchReport};
use lcm::models::Variant;
use lcm::{Device, Opened};
use lcm_pipeline::spec::SizeRule;
use pyo3::prelude::*;

use crate::errors::{invalid, to_py};
use crate::run::run_cancellable;

/// Times each stage of generation (text encoder, UNet step, VAE decode, end to end) on `model`, or on
/// a synthetic model of family `arch` (sd15, sd2, sdxl, ssd1b) with random weights when `model` is None.
/// Returns `lcm bench --json`'s dict: device, model, stages (name, median_ms, min_ms, max_ms, macs), ...
#[pyfunction]
#[pyo3(signature = (model=None, *, device="auto", arch="sd15", width=None, height=None, num_inference_steps=4,
    num_images_per_prompt=1, warmup=1, repeat=3, seed=0))]
#[allow(clippy::too_many_arguments)]
pub fn bench<'py>(
    py: Python<'py>,
    model: Option<PathBuf>,
    device: &str,
    arch: &str,
    width: Option<usize>,
    height: Option<usize>,
    num_inference_steps: usize,
    num_images_per_prompt: usize,
    warmup: usize,
    repeat: usize,
    seed: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let device: Device = device.parse().map_err(to_py)?;
    let arch = match arch {
        "sd15" => Arch::Sd15,
        "sd2" => Arch::Sd2,
        "sdxl" => Arch::Sdxl,
        "ssd1b" => Arch::Ssd1b,
        other => return Err(invalid("arch", format!("`{other}`: expected sd15, sd2, sdxl or ssd1b"))),
    };
    for (name, n) in [
        ("num_inference_steps", num_inference_steps),
        ("num_images_per_prompt", num_images_per_prompt),
        ("repeat", repeat),
    ] {
        if n == 0 {
            return Err(invalid(name, "0: expected at least 1"));
        }
    }
    if let Some(m) = model.as_ref().filter(|m| !m.exists()) {
        return Err(pyo3::exceptions::PyFileNotFoundError::new_err(format!("{}: model not found", m.display())));
    }
    let report = run_cancellable(py, None, |_, _| {
        let (opened, _cpu_note) = Opened::open(device)?;
        let variant = opened.variant();
        // The default side as `lcm bench`'s: small enough for the CPU and the emulator.
        match opened {
            Opened::Cpu(b) => go(
                &b,
                model,
                arch,
                (width, height, 256),
                variant,
                (num_inference_steps, num_images_per_prompt, warmup, repeat, seed),
            ),
            Opened::Cuda(b) => {
                let side = if b.is_emulated() { 64 } else { 512 };
                go(
                    &*b,
                    model,
                    arch,
                    (width, height, side),
                    variant,
                    (num_inference_steps, num_images_per_prompt, warmup, repeat, seed),
                )
            }
        }
    })?;
    py.import("json")?.call_method1("loads", (report.json().to_string(),))
}

fn go<B: BenchBackend>(
    backend: &B,
    model: Option<PathBuf>,
    arch: Arch,
    (width, height, side): (Option<usize>, Option<usize>, usize),
    variant: Variant,
    (steps, batch, warmup, repeat, seed): (usize, usize, usize, usize, u64),
) -> lcm_core::Result<BenchReport> {
    let (width, height) = (width.unwrap_or(side), height.unwrap_or(side));
    SizeRule::default().check("width", width)?;
    SizeRule::default().check("height", height)?;
    let cfg = BenchConfig {
        model,
        arch,
        width,
        height,
        steps,
        batch,
        warmup,
        repeat,
        seed,
        lora_rank: None,
        vae_tiling: None,
        strength: None,
        controlnet: None,
    };
    run(backend, &cfg, variant, &mut |_| {})
}
