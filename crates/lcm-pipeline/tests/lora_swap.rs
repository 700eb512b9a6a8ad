//! LoRA hot-swap on the CPU: a pipeline that swaps A → B → none → A gives, at each stage, exactly the
//! bits of a pipeline loaded fresh with those LoRAs (UNet and text-encoder LoRAs both), in either mode
//! (the CPU merges in both), whether it swaps from the files (`set_loras`) or to a set prepared ahead
//! (`prepare_loras`, `use_loras`). Swap times are printed beside a step's (speed goals live in `lcm bench`).

mod common;

use common::fixtures;

use std::time::{Duration, Instant};

use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{LoadSpec, LoraMode, LoraSpec, Request};

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
        // Each swap twice: from files (set_loras), then from a set prepared ahead (use_loras).
        let stages = [("B", &b), ("none", &vec![]), ("A", &a)];
        let prepared: Vec<_> = stages.iter().map(|(_, l)| p.prepare_loras(l).expect("prepare")).collect();
        for ((what, loras), prepared) in stages.iter().zip(&prepared) {
            let want = generate(&mut Pipeline::load(CpuBackend::new(), spec(loras.to_vec(), mode)).unwrap()).0;
            for how in ["set_loras", "use_loras"] {
                let start = Instant::now();
                match how {
                    "set_loras" => p.set_loras(loras),
                    _ => p.use_loras(prepared),
                }
                .unwrap_or_else(|e| panic!("{mode:?}: {how} to {what}: {e}"));
                let swap = start.elapsed();
                let (got, step) = generate(&mut p);
                println!(
                    "{mode:?}: {how} to {what} in {:.1} ms (a UNet step: {:.1} ms)",
                    swap.as_secs_f64() * 1e3,
                    step.as_secs_f64() * 1e3
                );
                assert!(
                    got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{mode:?}: {how} to {what} differs from a fresh load"
                );
                assert_eq!(
                    got == base,
                    loras.is_empty(),
                    "{mode:?}: {what}: the LoRAs must change the result, and none must not"
                );
                assert_eq!(&p.spec.loras, *loras, "{mode:?}: {how} to {what}: the pipeline's LoRA list");
            }
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
