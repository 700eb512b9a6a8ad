//! lcm-models: the models of the SD1.5, SD2.x and SDXL families (SSD-1B and Segmind-Vega among SDXL's
//! distilled UNets, and LCM's distilled UNets of each) as lcm graphs — CLIPTextModel (and
//! CLIPTextModelWithProjection), UNet2DConditionModel, AutoencoderKL and AutoencoderTiny (TAESD) — and
//! the checkpoint formats they load from.
//!
//! - [`arch`]: the networks, each built from its config: [`arch::blocks`] (ResnetBlock2D, attention,
//!   Transformer2DModel), [`arch::clip`], [`arch::unet`], [`arch::controlnet`], [`arch::vae`], [`arch::taesd`],
//!   [`arch::vae_tiling`], and the reference configs of the families ([`arch::sd15`], [`arch::sd2`], [`arch::sdxl`]).
//! - [`checkpoint`]: where configs and weights come from — [`checkpoint::diffusers`] folders (their
//!   `config.json` read by [`checkpoint::config`]), [`checkpoint::single_file`] checkpoints in LDM
//!   names ([`checkpoint::ldm`], [`checkpoint::open_clip`]) and [`checkpoint::vae_file`]s, configs read
//!   from tensor shapes ([`checkpoint::shapes`]), [`checkpoint::synthetic`] weights; all upload through
//!   [`checkpoint::weights`]. Checkpoint code builds on the architectures, never the reverse.
//! - [`denoise`]: the whole denoising loop as one graph over the loaded models.
//! - [`runner`]: a model's weights and one executor per input shape.

#![warn(missing_docs)]

pub mod arch;
pub mod checkpoint;
pub mod denoise;
pub mod runner;

pub use arch::clip::{ClipConfig, ClipTextModel};
pub use arch::controlnet::{ControlNet, ControlNetConfig};
pub use arch::taesd::TaesdConfig;
pub use arch::unet::{AddedCond, Unet, UnetConfig};
pub use arch::vae::{Encoded, Vae, VaeArch, VaeConfig, VaeParts};
pub use arch::vae_tiling::VaeTiling;
pub use checkpoint::diffusers::{LoadOptions, Variant};
pub use checkpoint::single_file::Checkpoint;
pub use checkpoint::vae_file::VaeFile;
pub use checkpoint::weights::{WeightHook, WeightSource};
