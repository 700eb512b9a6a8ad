//! The networks, built as lcm graphs from their configs: what each model computes, independent of
//! how its weights are stored. Weights are addressed by their diffusers names; reading them from a
//! folder or a single file, and reading the configs, is [`crate::checkpoint`]'s (which builds on
//! these modules, never the other way).

pub mod blocks;
pub mod clip;
pub mod controlnet;
pub mod sd15;
pub mod sd2;
pub mod sdxl;
pub mod taesd;
pub mod unet;
pub mod vae;
pub mod vae_tiling;
