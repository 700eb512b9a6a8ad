//! Full-size SD1.5-shaped models on the CUDA backend against PyTorch (issue 4): the UNet at 512x512
//! (64x64 latents) batch 1 and a CFG batch of 2, the VAE decoder at 512x512, and the CLIP text encoder,
//! with seeded random weights that `scripts/torch_fullsize.py` made on the GPU machine, saved as a
//! diffusers folder in f16, and ran through diffusers/transformers in f32 (same f16-rounded weights, no
//! TF32). Relative L2 < 2e-2 for every output.
//!
//! `LCM_FULLSIZE_DIR` names that folder (text_encoder/, unet/, vae/ and reference.safetensors); unset,
//! the suite prints SKIPPED. `LCM_FULLSIZE_BACKEND=cpu` runs the same comparison on the CPU backend: on a
//! `torch_fullsize.py --tiny` folder it checks the folder format and the references without a GPU.
//!
//! On the GPU each model runs twice, the second time after its arenas were poisoned with NaN; both runs
//! must give the same bits.

mod gpu_util;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use gpu_util::{run_gpu_tests, GpuTest};
use lcm::cuda::CudaBackend;
use lcm_core::{rel_l2, Backend, SafeTensorsFile, Tensor};
use lcm_cpu::CpuBackend;
use lcm_models::runner::Runner;
use lcm_models::{ClipTextModel, LoadOptions, Unet, Vae, VaeParts, Variant};

const TOL: f64 = 2e-2;

fn folder() -> Option<PathBuf> {
    std::env::var_os("LCM_FULLSIZE_DIR").map(PathBuf::from)
}

fn reference() -> SafeTensorsFile {
    let p = folder().expect("LCM_FULLSIZE_DIR checked in main").join("reference.safetensors");
    SafeTensorsFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn tensor(file: &SafeTensorsFile, name: &str) -> Tensor {
    let v = file.get(name).unwrap_or_else(|e| panic!("reference.safetensors: {e}"));
    Tensor::new(v.shape.to_vec(), v.to_f32())
}

fn opts() -> LoadOptions<'static> {
    LoadOptions { variant: Variant::PreferHalf, hook: None }
}

/// What a backend does between the two runs of a model: poison its arenas (CUDA) or nothing (CPU).
trait Poison: Backend + Sized {
    fn poison_all(&self, runner: &Runner<Self>);
}

impl Poison for CudaBackend {
    fn poison_all(&self, runner: &Runner<Self>) {
        for ex in runner.executors() {
            self.poison(ex.arena()).expect("poison arena");
        }
    }
}

impl Poison for CpuBackend {
    fn poison_all(&self, _: &Runner<Self>) {}
}

fn check(what: &str, first: &Tensor, again: &Tensor, torch: &Tensor, ms: f64) {
    assert_eq!(first.shape, torch.shape, "{what}: shape");
    let e = rel_l2(&first.data, &torch.data);
    println!("{what}: rel L2 vs PyTorch f32 {e:.2e} (first run {ms:.0} ms)");
    let same = first.data.iter().zip(&again.data).all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "{what}: the run after poisoning the arenas differs from the first");
    assert!(e < TOL, "{what}: rel L2 {e:.3e} vs PyTorch (limit {TOL:.0e})");
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64() * 1e3)
}

fn unet_check<B: Poison>(be: &B) {
    let rec = reference();
    let dir = folder().expect("checked in main").join("unet");
    let (unet, load_ms) = timed(|| Unet::load(be, &dir, opts()));
    let mut unet = unet.expect("load the full-size UNet");
    println!("unet: loaded in {load_ms:.0} ms");
    for case in ["b1", "cfg"] {
        let sample = tensor(&rec, &format!("unet_{case}_sample"));
        let t = tensor(&rec, &format!("unet_{case}_timestep")).data;
        let ctx = tensor(&rec, &format!("unet_{case}_context"));
        let (first, ms) = timed(|| unet.forward(be, &sample, &t, &ctx, None).expect("UNet"));
        be.poison_all(unet.runner());
        let again = unet.forward(be, &sample, &t, &ctx, None).expect("UNet, poisoned");
        let what = format!("unet {case} {:?} t={}", sample.shape, t[0]);
        check(&what, &first, &again, &tensor(&rec, &format!("unet_{case}_out")), ms);
    }
}

fn vae_check<B: Poison>(be: &B) {
    let rec = reference();
    let dir = folder().expect("checked in main").join("vae");
    let mut vae = Vae::load(be, &dir, VaeParts::Decoder, opts()).expect("load the full-size VAE");
    let z = tensor(&rec, "vae_latents");
    let (first, ms) = timed(|| vae.decode(be, &z).expect("VAE decode"));
    be.poison_all(vae.decoder_runner());
    let again = vae.decode(be, &z).expect("VAE decode, poisoned");
    check(&format!("vae decode {:?}", z.shape), &first, &again, &tensor(&rec, "vae_image"), ms);
}

fn clip_check<B: Poison>(be: &B) {
    let rec = reference();
    let dir = folder().expect("checked in main").join("text_encoder");
    let mut clip = ClipTextModel::load(be, &dir, 0, opts()).expect("load the full-size CLIP text model");
    let ids: Vec<i32> = tensor(&rec, "clip_ids").data.iter().map(|&v| v as i32).collect();
    let batch = ids.len() / 77;
    let (first, ms) = timed(|| clip.forward(be, &ids, batch).expect("CLIP"));
    be.poison_all(clip.runner());
    let again = clip.forward(be, &ids, batch).expect("CLIP, poisoned");
    check(&format!("clip {:?}", first.shape), &first, &again, &tensor(&rec, "clip_hidden"), ms);
}

fn main() -> ExitCode {
    let tests: [GpuTest; 3] = [
        ("clip_matches_torch", |be| clip_check(&be)),
        ("unet_matches_torch", |be| unet_check(&be)),
        ("vae_decode_matches_torch", |be| vae_check(&be)),
    ];
    let Some(dir) = folder() else {
        println!(
            "SKIPPED: gpu_fullsize: {} tests not run: LCM_FULLSIZE_DIR is not set (scripts/torch_fullsize.py \
             writes the folder on the GPU machine; scripts/device-check.sh runs both)",
            tests.len()
        );
        return ExitCode::SUCCESS;
    };
    if !dir.join("reference.safetensors").is_file() {
        println!("gpu_fullsize: {} has no reference.safetensors", dir.display());
        return ExitCode::FAILURE;
    }
    if std::env::var("LCM_FULLSIZE_BACKEND").as_deref() == Ok("cpu") {
        let be = CpuBackend::new();
        clip_check(&be);
        unet_check(&be);
        vae_check(&be);
        println!("test result: ok. 3 passed; 0 failed (gpu_fullsize on the CPU backend)");
        return ExitCode::SUCCESS;
    }
    run_gpu_tests("gpu_fullsize", &tests)
}
