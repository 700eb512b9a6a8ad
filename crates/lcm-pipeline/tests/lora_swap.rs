//! LoRA hot-swap on the CPU: a pipeline that swaps A → B → none → A gives, at each stage, exactly the
//! bits of a pipeline loaded fresh with those LoRAs (UNet and text-encoder LoRAs both), in either mode
//! (the CPU merges in both). Swap times are printed beside a step's (speed goals live in `lcm bench`).

mod common;

use common::fixtures;

use std::time::{Duration, Instant};

use lcm_cpu::CpuBackend;
use lcm_pipeline::lora_swap::LoraMode;
use lcm_pipeline::pipeline::{LoadSpec, LoraSpec, Pipeline, Request};

fn lora(name: &str, scale: f32) -> LoraSpec {
    LoraSpec { path: fixtures().join("loras").join(name), scale }
}

fn request() -> Request {
    Request { prompt: "a photo of a cat".into(), steps: 2, seed: 3, width: 64, height: 64, ..Request::default() }
}

fn spec(loras: Vec<LoraSpec>, mode: LoraMode) -> LoadSpec {
    LoadSpec { model_dir: fixtures().join("tiny-sd"), loras, lora_mode: mode, ..LoadSpec::default() }
}

fn generate(p: &mut Pipeline<CpuBackend>) -> (Vec<f32>, Duration) {
    let out = p.generate(&request(), &mut |_| {}).expect("generate");
    let step = out.times.unet_steps.iter().copied().max().unwrap_or_default();
    (out.latents.data, step)
}

#[test]
fn swaps_equal_fresh_pipelines_bit_for_bit() {
    let a = vec![lora("lora_peft.safetensors", 1.0)];
    let b = vec![lora("lora2_peft.safetensors", 0.7), lora("lora_kohya.safetensors", 0.3)];
    for mode in [LoraMode::Merged, LoraMode::Runtime] {
        let mut p = Pipeline::load(CpuBackend::new(), spec(a.clone(), mode)).expect("load with A");
        let base = generate(&mut Pipeline::load(CpuBackend::new(), spec(vec![], mode)).unwrap()).0;
        for (what, loras) in [("B", &b), ("none", &vec![]), ("A", &a)] {
            let start = Instant::now();
            p.set_loras(loras).unwrap_or_else(|e| panic!("{mode:?}: swap to {what}: {e}"));
            let swap = start.elapsed();
            let (got, step) = generate(&mut p);
            let want = generate(&mut Pipeline::load(CpuBackend::new(), spec(loras.clone(), mode)).unwrap()).0;
            println!(
                "{mode:?}: swap to {what} in {:.1} ms (a UNet step: {:.1} ms)",
                swap.as_secs_f64() * 1e3,
                step.as_secs_f64() * 1e3
            );
            assert!(
                got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{mode:?}: {what} differs from a fresh load"
            );
            assert_eq!(
                got == base,
                loras.is_empty(),
                "{mode:?}: {what}: the LoRAs must change the result, and none must not"
            );
        }
    }
}

#[test]
fn a_lora_that_does_not_fit_changes_nothing() {
    let mut p =
        Pipeline::load(CpuBackend::new(), spec(vec![lora("lora_peft.safetensors", 1.0)], LoraMode::Merged)).unwrap();
    let before = generate(&mut p).0;
    let bad = vec![
        lora("lora2_peft.safetensors", 1.0),
        LoraSpec { path: fixtures().join("loras/missing.safetensors"), scale: 1.0 },
    ];
    let err = p.set_loras(&bad).expect_err("a missing file");
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
    assert_eq!(generate(&mut p).0, before, "a refused swap left the weights changed");
    assert_eq!(p.spec.loras.len(), 1);
}
