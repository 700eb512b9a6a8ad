//! A device allocation that fails is an `Error`, never an abort, and the pipeline stays usable after it:
//! on the emulated device with its memory capped (`CudaBackend::set_device_memory_limit`). On a GPU the
//! driver's own out-of-memory takes the same path (`cuMemAlloc`'s error is returned, not unwrapped).

use std::path::{Path, PathBuf};

use lcm::cuda::{CudaBackend, DeviceKind};
use lcm::pipeline::pipeline::Pipeline;
use lcm::pipeline::spec::{LoadSpec, Request};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn an_allocation_past_the_device_memory_is_an_error_and_the_pipeline_recovers() {
    if !lcm::cuda::emulator_built() {
        println!("SKIPPED: this build has no kernel emulator (no CUDA headers at build time)");
        return;
    }
    let backend = CudaBackend::open(DeviceKind::Emulated).unwrap();
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let mut p = Pipeline::load(backend, spec).unwrap();
    let small = Request { prompt: "a red house".into(), steps: 1, width: 64, height: 64, ..Default::default() };
    let first = p.generate(&small, &mut |_| {}).unwrap().images.data;
    let used = p.backend.device_bytes();

    // A larger shape needs a larger arena: past the cap, it is refused with an error saying so.
    p.backend.set_device_memory_limit(Some(used + 1024));
    let big = Request { width: 128, height: 128, ..small.clone() };
    let err = p.generate(&big, &mut |_| {}).err().expect("past the cap").to_string();
    println!("{err}");
    assert!(err.contains("out of device memory") && err.contains("bytes requested"), "{err}");
    // Nothing leaked, and the shape that fits still runs and gives the same image.
    assert!(p.backend.device_bytes() <= used + 1024);
    assert_eq!(p.generate(&small, &mut |_| {}).unwrap().images.data, first);

    // Without the cap the larger shape runs.
    p.backend.set_device_memory_limit(None);
    let out = p.generate(&big, &mut |_| {}).unwrap();
    assert_eq!(out.images.shape, [1, 128, 128, 3]);
}

/// Weights past the device's free memory (here the emulated device's cap less what the self-check left
/// live) are refused before any is uploaded, naming the model and the sizes (f16: 2 bytes a weight).
#[test]
fn weights_past_the_device_memory_are_refused_before_the_load() {
    if !lcm::cuda::emulator_built() {
        println!("SKIPPED: this build has no kernel emulator (no CUDA headers at build time)");
        return;
    }
    let backend = CudaBackend::open(DeviceKind::Emulated).unwrap();
    let before = backend.device_bytes();
    backend.set_device_memory_limit(Some(before + (1 << 20)));
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    let err = Pipeline::load(backend.share(), spec.clone()).err().expect("past the cap").to_string();
    println!("{err}");
    assert!(err.contains("tiny-sd") && err.contains("weights need") && err.contains("2 bytes a weight"), "{err}");
    assert_eq!(backend.device_bytes(), before, "the refused load uploaded something");
    backend.set_device_memory_limit(None);
    Pipeline::load(backend, spec).expect("without the cap it loads");
}
