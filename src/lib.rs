//! lcm: Latent Consistency Model inference for SD1.5 and SDXL (and SSD-1B, Segmind-Vega) — the engine.
//!
//! The engine's parts live in the workspace crates, re-exported here: `lcm_core` (graph, planner,
//! executor, weight files), `lcm_cpu` (the f32 reference backend), `lcm_models` (architectures and
//! checkpoint formats) and `lcm_pipeline` (tokenizer, scheduler, RNG, LoRA, txt2img/img2img). This crate
//! adds the CUDA backend ([`cuda`]), the stage benchmark ([`bench`]) and the facade every app uses:
//! [`Engine`] and [`Device`] (auto / cpu / cuda / emulated, and the weight precision each loads). The
//! apps sit on top: `lcm-cli` (the `lcm` command), `lcm-serve` (HTTP) and `lcm-capi` (C ABI).
//!
//! Embedding it in a service: load an engine once, generate many times. An [`Engine`] is `Send`, so it
//! can live in a worker thread; generation takes `&mut self` (one generation at a time per pipeline,
//! which owns its arenas), and a cancellation flag another thread may set.
//!
//! ```no_run
//! use std::sync::atomic::AtomicBool;
//!
//! use lcm::pipeline::spec::{LoadSpec, Request};
//! use lcm::{Device, Engine};
//!
//! # fn main() -> lcm::core::Result<()> {
//! // The GPU, or the CPU reference when there is none (the note says why).
//! let spec = LoadSpec { model_dir: "models/lcm-dreamshaper-v7".into(), ..LoadSpec::default() };
//! let (mut engine, note) = Engine::load(Device::Auto, spec)?;
//! if let Some(note) = note {
//!     eprintln!("note: {note}");
//! }
//! let cancel = AtomicBool::new(false); // set it from another thread to stop between stages and steps
//! let req = Request { prompt: "a cabin in the snow".into(), steps: 4, guidance_scale: 8.0, ..Request::default() };
//! let out = engine.generate_with(&req, &mut |step| eprintln!("step {}/{}", step.step, step.steps), Some(&cancel))?;
//! let rgb: Vec<u8> = out.rgb8(0); // [H, W, 3], as diffusers rounds it
//! # let _ = rgb;
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod cuda;
mod engine;
pub mod plan;

pub use engine::{Device, Engine, Opened, Prepared};
pub use lcm_core as core;
pub use lcm_cpu as cpu;
pub use lcm_models as models;
pub use lcm_pipeline as pipeline;
