//! LoRA adapters merged into the weights as they load: W += s_user · s_net · up @ down.
//!
//! Files ([`LoraFile::open`]), detected per key, mixed files allowed:
//! - kohya: `lora_unet_<module>` / `lora_te_<module>` + `.lora_down.weight`, `.lora_up.weight`, `.alpha`
//!   (0-dim; absent → alpha = rank). `<module>` is the module path with dots turned into underscores, in
//!   diffusers naming (LCM-LoRA's own exporter, kohya's sd-scripts) or LDM naming (`input_blocks_1_1_…`,
//!   older files); text encoder paths with or without the `text_model` level. `lora_te1_` is an alias of
//!   `lora_te_` (the SDXL-era spelling of the first text encoder, which diffusers' and ComfyUI's loaders
//!   also take for SD1.5); `lora_te2_` is SDXL's second text encoder.
//! - peft (diffusers' `save_lora_weights`): `unet.<module>` / `text_encoder.<module>` /
//!   `text_encoder_2.<module>` + `.lora_A.weight`
//!   (down), `.lora_B.weight` (up); older diffusers' `.lora.down/up.weight` and
//!   `.lora_linear_layer.down/up.weight`, and its attention-processor files
//!   (`unet.….attn1.processor.to_q_lora.down.weight`, `…to_out_lora…` for `to_out.0`); an optional `.alpha`
//!   tensor. Without one, alpha comes from the peft config diffusers stores as JSON in the header
//!   (`__metadata__["lora_adapter_metadata"]`: `unet.lora_alpha`, `unet.r`, `unet.alpha_pattern`,
//!   `unet.rank_pattern`, `unet.use_rslora`, …); without that, alpha = rank, as diffusers assumes.
//!
//! Refused by name ([`refused_kind`]), as diffusers 0.42 cannot load them either or would load them
//! wrongly: LoCon convs with a CP middle factor (`lora_mid`), DoRA (`dora_scale`, or `use_dora` in a
//! peft header; diffusers drops the magnitude with a warning), LoHa/LoKr (`hada_*`, `lokr_*`) and
//! `lycoris_`-prefixed names. A second-text-encoder module on a model with one text encoder matches
//! nothing and is an error naming it.
//!
//! s_net = alpha/rank (alpha/√rank for rsLoRA). Underscored kohya names are ambiguous (`to_q`,
//! `conv_shortcut`, `down_blocks` hold underscores themselves), so nothing is un-underscored: every
//! weight of the model is underscored instead, and a LoRA module resolves by exact lookup
//! ([`LoraSet::resolve`]) to exactly one weight, or fails naming the LoRA key. Nothing is skipped
//! silently, with one exception by design: a text-encoder LoRA on a layer that `clip_skip` leaves out is
//! checked against that layer's shapes and then not applied ([`Merger::skipped`]) — the layer never
//! runs, so the LoRA could not change the output anyway, and the same file must work at any clip_skip.

mod file;
mod merge;
mod peft;
mod targets;

pub use file::{refused_kind, Component, LoraFile, LoraFormat, LoraTensor};
pub use merge::{LoraFactors, LoraSet, Merger};
pub use targets::{Targets, TEXT_ENCODER_2_PREFIX};
