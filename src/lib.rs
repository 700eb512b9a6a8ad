//! lcm: Latent Consistency Model inference for Stable Diffusion 1.5.
//!
//! The engine's parts live in the workspace crates, re-exported here: `lcm_core` (graph, planner,
//! executor, weight files), `lcm_cpu` (the f32 reference backend), `lcm_models` (CLIP, UNet, VAE from
//! diffusers folders) and `lcm_pipeline` (tokenizer, scheduler, RNG, LoRA, txt2img). This crate adds the
//! CUDA backend and the `lcm` command.
//!
//! Embedding it in a service: depend on `lcm` with `default-features = false` (no clap, no downloads),
//! load a pipeline once, generate many times. A [`pipeline::pipeline::Pipeline`] is `Send`, so it can live in a
//! worker thread; `generate` takes `&mut self` (one generation at a time per pipeline, which owns its
//! arenas), and a cancellation flag another thread may set.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//!
//! use lcm::cuda::CudaBackend;
//! use lcm::pipeline::pipeline::Pipeline;
//! use lcm::pipeline::spec::{LoadSpec, Request};
//!
//! # fn main() -> lcm::core::Result<()> {
//! // The GPU, or the CPU reference when there is none (`lcm_cpu::CpuBackend::new()`).
//! let backend = CudaBackend::new()?;
//! let spec = LoadSpec { model_dir: "models/lcm-dreamshaper-v7".into(), ..LoadSpec::default() };
//! let mut pipe = Pipeline::load(backend, spec)?;
//! let cancel = AtomicBool::new(false); // set it from another thread to stop between stages and steps
//! let req = Request { prompt: "a cabin in the snow".into(), steps: 4, guidance_scale: 8.0, ..Request::default() };
//! let out = pipe.generate_with(&req, &mut |step| eprintln!("step {}/{}", step.step, step.steps), Some(&cancel))?;
//! let rgb: Vec<u8> = out.rgb8(0); // [H, W, 3], as diffusers rounds it
//! # let _ = rgb;
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod cuda;
pub mod hub;
#[cfg(feature = "serve")]
pub mod serve;

pub use lcm_core as core;
pub use lcm_pipeline as pipeline;

// A service moves a pipeline into the thread that serves it: keep both backends' pipelines Send
// (checked at compile time). Not needed to be Sync: generation takes `&mut self`.
const _: () = {
    const fn send<T: Send>() {}
    send::<lcm_pipeline::pipeline::Pipeline<cuda::CudaBackend>>();
    send::<lcm_pipeline::pipeline::Pipeline<lcm_cpu::CpuBackend>>();
};
