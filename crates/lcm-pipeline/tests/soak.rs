//! Soak: many generations in one process on the tiny fixture (CPU) with mixed shapes, seeds, LoRA
//! swaps, CFG and img2img, sampling the resident set size (/proc/self/statm) after each. After a
//! warm-up (one period of the mix, 120 generations, so that every shape's plan and every LoRA set has
//! been seen) the RSS must stay flat: growth under 1%.
//!
//! CI runs `LCM_SOAK_GENERATIONS` (default 240) generations; the full run of docs/robustness.md is
//! `LCM_SOAK_GENERATIONS=1000 cargo test --release -p lcm-pipeline --test soak -- --nocapture`.

mod common;

use common::fixtures;

use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_image_rgb8;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, LoraSpec, Request};

/// Resident pages of this process (the page size cancels out of every ratio below).
fn rss_pages() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm's resident field")
}

const PAGE_MB: f64 = 4096.0 / (1 << 20) as f64;

/// One step of the mix: a request, and the LoRAs to swap to before it (`None`: keep the current ones).
fn mix(i: usize, init: &(usize, usize, Vec<u8>)) -> (Request, Option<Vec<LoraSpec>>) {
    let lora = |name: &str, scale| LoraSpec { path: fixtures().join("loras").join(name), scale };
    let loras = match i % 8 {
        0 => Some(vec![]),
        2 => Some(vec![lora("lora_kohya.safetensors", 1.0)]),
        4 => Some(vec![lora("lora_peft.safetensors", 0.7), lora("lora2_peft.safetensors", 0.5)]),
        6 => Some(vec![lora("lora_kohya_ldm.safetensors", 0.3)]),
        _ => None,
    };
    let (width, height) = [(64, 64), (64, 80), (96, 64)][i % 3];
    let mut req = Request {
        prompt: format!("soak prompt {}", i % 5),
        steps: 1 + i % 3,
        seed: i as u64 * 7919,
        width,
        height,
        num_images: 1 + (i % 4 == 3) as usize,
        guidance_scale: if i % 5 == 4 { 1.5 } else { 1.0 },
        ..Default::default()
    };
    if i % 6 == 5 {
        let (w, h, rgb) = init;
        req = Request {
            width: *w,
            height: *h,
            num_images: 1,
            steps: 2,
            init_image: Some(InitImage::from_rgb8(*w, *h, rgb, 0.6).unwrap()),
            ..req
        };
    }
    (req, loras)
}

#[test]
fn rss_is_flat_over_many_mixed_generations() {
    let n: usize = std::env::var("LCM_SOAK_GENERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(240);
    // The mix's period: lcm(8 LoRA sets, 3 shapes and step counts, 4 image counts, 5 CFG, 6 img2img).
    let warmup = 120.min(n / 2);
    let init = read_image_rgb8(&fixtures().join("images/init_64x64.png")).unwrap();
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let start = std::time::Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (req, loras) = mix(i, &init);
        if let Some(l) = loras {
            p.set_loras(&l).unwrap_or_else(|e| panic!("generation {i}: swap: {e}"));
        }
        let out = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("generation {i}: {e}"));
        assert!(out.images.data.iter().all(|v| v.is_finite()), "generation {i}: non-finite pixels");
        samples.push(rss_pages());
    }
    let base = samples[warmup];
    let after = &samples[warmup..];
    let max = *after.iter().max().unwrap();
    let last = *samples.last().unwrap();
    let growth = (max as f64 - base as f64) / base as f64;
    println!(
        "soak: {n} generations in {:.1} s; RSS first {:.1} MB, after warm-up ({warmup}) {:.1} MB, max after {:.1} MB, \
         last {:.1} MB; growth {:.3}%",
        start.elapsed().as_secs_f64(),
        samples[0] as f64 * PAGE_MB,
        base as f64 * PAGE_MB,
        max as f64 * PAGE_MB,
        last as f64 * PAGE_MB,
        100.0 * growth
    );
    // The curve, in tenths, for the docs.
    let step = (n / 10).max(1);
    let curve: Vec<String> =
        samples.iter().enumerate().step_by(step).map(|(i, s)| format!("{i}:{:.1}", *s as f64 * PAGE_MB)).collect();
    println!("soak: RSS curve (generation:MB) {}", curve.join(" "));
    assert!(growth < 0.01, "RSS grew {:.3}% after warm-up (from {base} to {max} pages)", 100.0 * growth);
}
