//! lcm-models: CLIPTextModel, UNet2DConditionModel, AutoencoderKL and AutoencoderTiny (TAESD) as lcm graphs, built from the
//! `config.json` of each diffusers component and loaded from its safetensors weights by checkpoint name,
//! or from a single-file (LDM-layout) checkpoint with configs read from its shapes.

#![warn(missing_docs)]

pub mod blocks;
pub mod clip;
pub mod config;
pub mod denoise;
pub mod infer;
pub mod ldm;
pub mod loader;
pub mod open_clip;
pub mod runner;
pub mod sd15;
pub mod sdxl;
pub mod single_file;
pub mod synthetic;
pub mod taesd;
pub mod unet;
pub mod unet_config;
pub mod vae;
pub mod vae_tiling;

pub use clip::{ClipConfig, ClipTextModel};
pub use loader::{LoadOptions, Variant, WeightHook, WeightSource};
pub use single_file::{Checkpoint, VaeFile, VaeLayout};
pub use taesd::TaesdConfig;
pub use unet::{AddedCond, Unet, UnetConfig};
pub use vae::{Encoded, Vae, VaeArch, VaeConfig, VaeParts};
pub use vae_tiling::VaeTiling;
