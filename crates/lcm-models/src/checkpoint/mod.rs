//! Checkpoint formats: where a model's config and weights come from, and how their names map onto the
//! architectures' ([`crate::arch`]). A diffusers folder ([`diffusers`]: `config.json` per component,
//! read by [`config`]; safetensors, fp16 variants, shards); a single-file checkpoint in the original
//! (LDM) names ([`single_file`], [`ldm`], [`open_clip`]) or a separate VAE file ([`vae_file`]), their
//! configs read from the tensor shapes ([`shapes`]); synthetic weights for benchmarks
//! ([`synthetic`]). Every format uploads through [`weights`].

pub mod config;
pub mod controlnet_file;
pub mod diffusers;
pub mod ldm;
pub mod mapped;
pub mod open_clip;
pub mod pickle;
pub mod shapes;
pub mod single_file;
pub mod synthetic;
pub mod vae_file;
pub mod weights;
