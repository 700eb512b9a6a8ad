//! An arena past the host's memory (or the backend's cap, `CpuBackend::set_memory_limit`) is an `Error`
//! raised before any work, never an abort, and the pipeline stays usable after it. The CUDA backend's
//! counterpart is tests/device_memory.rs.

mod common;

use common::fixtures;

use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{LoadSpec, Request};

#[test]
fn an_arena_past_the_memory_is_refused_before_any_step_and_the_pipeline_recovers() {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let small = Request { prompt: "a red house".into(), steps: 2, width: 64, height: 64, ..Default::default() };
    let first = p.generate(&small, &mut |_| {}).unwrap().images.data;
    let used = p.backend.arena_bytes();
    assert!(used > 0);

    // A larger shape needs larger arenas: past the cap it is refused, and no UNet step ran.
    p.backend.set_memory_limit(Some(used + 1024));
    let big = Request { width: 128, height: 128, ..small.clone() };
    let mut steps = 0;
    let err = p.generate(&big, &mut |_| steps += 1).err().expect("past the cap").to_string();
    println!("{err}");
    assert!(err.contains("out of host memory") && err.contains("bytes requested"), "{err}");
    assert_eq!(steps, 0, "the refusal came after {steps} steps");
    assert!(p.backend.arena_bytes() <= used + 1024);
    assert_eq!(p.generate(&small, &mut |_| {}).unwrap().images.data, first);

    p.backend.set_memory_limit(None);
    assert_eq!(p.generate(&big, &mut |_| {}).unwrap().images.shape, [1, 128, 128, 3]);
}

/// The decoder's arena is planned before the loop: with room for the UNet's arenas but not the VAE's,
/// the request still fails before its first step.
#[test]
fn the_vae_arena_is_checked_before_the_loop() {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let req = Request { prompt: "a red house".into(), steps: 2, width: 128, height: 128, ..Default::default() };
    p.generate(&req, &mut |_| {}).unwrap();
    let all = p.backend.arena_bytes();
    // A fresh pipeline capped just below everything this size needs: the text encoder and UNet fit,
    // the decoder (the largest arena here) does not.
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let mut q = Pipeline::load(CpuBackend::new(), spec).unwrap();
    q.backend.set_memory_limit(Some(all - 1));
    let mut steps = 0;
    let err = q.generate(&req, &mut |_| steps += 1).err().expect("over the cap").to_string();
    assert!(err.contains("out of host memory"), "{err}");
    assert_eq!(steps, 0, "the decoder's arena was refused only after {steps} steps");
}

/// A model whose weights do not fit what the backend has free is refused before any weight is read,
/// naming the model and the sizes; with room it loads.
#[test]
fn weights_past_the_memory_are_refused_before_the_load() {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let backend = CpuBackend::new();
    backend.set_memory_limit(Some(1 << 20)); // the tiny fixture's f32 weights are ~6 MiB
    let err = Pipeline::load(backend, spec.clone()).err().expect("past the cap").to_string();
    println!("{err}");
    assert!(err.contains("tiny-sd") && err.contains("weights need") && err.contains("1.0 MiB are free"), "{err}");
    let backend = CpuBackend::new();
    backend.set_memory_limit(Some(64 << 20));
    Pipeline::load(backend, spec).expect("room for the weights");
}
