//! lcm: Latent Consistency Model inference for Stable Diffusion 1.5.
//!
//! The engine's parts live in the workspace crates, re-exported here: `lcm_core` (graph, planner,
//! executor, weight files), `lcm_cpu` (the f32 reference backend), `lcm_models` (CLIP, UNet, VAE from
//! diffusers folders) and `lcm_pipeline` (tokenizer, scheduler, RNG, LoRA, txt2img). This crate adds the
//! CUDA backend and the `lcm` command.

pub mod bench;
pub mod cuda;
pub mod hub;

pub use lcm_core as core;
