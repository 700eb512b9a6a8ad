//! lcm-pipeline: from a prompt to pixels with a Latent Consistency Model, for the Stable Diffusion 1.5
//! and SDXL families (diffusers folders or single-file checkpoints).
//!
//! Modules, each depending only on those listed before it:
//! - [`spec`]: what to load ([`spec::LoadSpec`], LoRAs, [`spec::LoraMode`]) and what to generate
//!   ([`spec::Request`], [`spec::InitImage`]), checked before any model runs; the image-size rule
//!   ([`spec::SizeRule`]) and the field names errors carry ([`spec::Field`]).
//! - [`tokenizer`] (CLIP BPE, with [`clip_vocab`]: CLIP's vocabulary built in), [`prompt`] (A1111's
//!   emphasis syntax and 75-token chunks, on the tokenizer), [`scheduler`] (LCM, TCD, DDIM, Euler,
//!   Euler-ancestral), [`rng`] (torch's CPU generator).
//! - [`embeddings`]: textual-inversion embedding files (A1111, diffusers, SDXL) and folders.
//! - [`lora`]: LoRA files (kohya, peft) resolved onto the model's weights and merged as they load.
//! - [`text`]: one or two text encoders written straight into the denoising loop's inputs.
//! - [`load`]: what a [`spec::LoadSpec`] reads, from where.
//! - [`lora_swap`]: the LoRA state of a loaded pipeline, merged or in runtime buffers.
//! - [`pipeline`]: [`pipeline::Pipeline`], loaded once and generating many times (txt2img and
//!   img2img, batches, LoRA swaps, tiled VAE).
//! - [`infer`]: the Triton / Open Inference Protocol tensor contract, inputs to [`spec::Request`]s.
//! - [`output`]: PNGs with the settings in a tEXt chunk, latents as safetensors, init images read.
//! - [`control_image`]: ControlNet control-image preprocessing (Pillow's Lanczos resize, OpenCV's
//!   Canny), exact against those libraries; depends on nothing else here.

#![warn(missing_docs)]

pub mod clip_vocab;
pub mod control_image;
pub mod embeddings;
pub mod infer;
pub mod load;
pub mod lora;
pub mod lora_swap;
pub mod output;
pub mod pipeline;
pub mod prompt;
pub mod rng;
pub mod scheduler;
pub mod spec;
pub mod text;
pub mod tokenizer;
