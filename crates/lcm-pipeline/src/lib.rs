//! lcm-pipeline: from a prompt to pixels — the CLIP tokenizer, the LCM scheduler, a torch-compatible
//! RNG, LoRA merging and hot-swap, the txt2img/img2img pipeline (load once, generate many) and
//! PNG/latent output.

#![warn(missing_docs)]

pub mod ldm_names;
pub mod load;
pub mod lora;
mod lora_peft;
pub mod lora_swap;
pub mod output;
pub mod pipeline;
pub mod rng;
pub mod scheduler;
pub mod text;
pub mod tokenizer;
