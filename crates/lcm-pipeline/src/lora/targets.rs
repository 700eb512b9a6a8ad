//! The weights a LoRA may target ([`Targets`]) and every name a LoRA file may give each of them.

use std::collections::{HashMap, HashSet};

use lcm_core::{Error, Result, WeightKind, WeightSpec};
use lcm_models::arch::clip::ClipOutput;
use lcm_models::checkpoint::ldm::UnetLayout;
use lcm_models::{ClipConfig, UnetConfig};

use super::file::{Component, LoraFile, LoraFormat, LoraTensor};

/// What the second text encoder's weights are called in LoRA plans and targets, so that they do not
/// collide with the first one's (both are `text_model.…`).
pub const TEXT_ENCODER_2_PREFIX: &str = "text_encoder_2.";

/// The weights LoRAs may target, as the models' graphs name them.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The UNet graph's weights.
    pub unet: Vec<WeightSpec>,
    /// Needed to read LDM-named kohya keys (`lora_unet_input_blocks_…`); `None`: diffusers names only.
    pub unet_layout: Option<UnetLayout>,
    /// The text-encoder graph's weights (the layers `clip_skip` keeps).
    pub text_encoder: Vec<WeightSpec>,
    /// Text-encoder weights of layers that clip_skip leaves out (never loaded).
    pub text_encoder_skipped: Vec<WeightSpec>,
    /// SDXL's second text encoder's weights, named [`TEXT_ENCODER_2_PREFIX`] + its own names.
    pub text_encoder_2: Vec<WeightSpec>,
    /// Its weights that clip_skip leaves out, named likewise.
    pub text_encoder_2_skipped: Vec<WeightSpec>,
}

impl Targets {
    /// The weights of a UNet and a text encoder with these configs, with the UNet's LDM layout.
    pub fn for_models(unet: &UnetConfig, clip: &ClipConfig) -> Result<Targets> {
        let (text_encoder, text_encoder_skipped) = encoder_weights(clip)?;
        Ok(Targets {
            // Which weights a UNet has does not depend on the latent size.
            unet: unet.graph(1, 8, 8, 1)?.weights,
            unet_layout: Some(UnetLayout::from_config(unet)),
            text_encoder,
            text_encoder_skipped,
            text_encoder_2: Vec::new(),
            text_encoder_2_skipped: Vec::new(),
        })
    }

    /// The weights of a pipeline's UNet and text encoder(s): [`Self::for_sdxl`] with a second text
    /// encoder, [`Self::for_models`] without.
    pub fn for_pipeline(unet: &UnetConfig, clip: &ClipConfig, clip_2: Option<&ClipConfig>) -> Result<Targets> {
        match clip_2 {
            None => Self::for_models(unet, clip),
            Some(clip_2) => Self::for_sdxl(unet, clip, clip_2),
        }
    }

    /// [`Self::for_models`] with SDXL's second text encoder.
    pub fn for_sdxl(unet: &UnetConfig, clip: &ClipConfig, clip_2: &ClipConfig) -> Result<Targets> {
        let mut t = Self::for_models(unet, clip)?;
        let rename = |specs: Vec<WeightSpec>| -> Vec<WeightSpec> {
            specs.into_iter().map(|s| WeightSpec { name: format!("{TEXT_ENCODER_2_PREFIX}{}", s.name), ..s }).collect()
        };
        let (loaded, skipped) = encoder_weights(clip_2)?;
        (t.text_encoder_2, t.text_encoder_2_skipped) = (rename(loaded), rename(skipped));
        Ok(t)
    }
}

/// A text encoder's weights: those its graph reads, and those of the layers `clip_skip` leaves out.
fn encoder_weights(clip: &ClipConfig) -> Result<(Vec<WeightSpec>, Vec<WeightSpec>)> {
    let loaded = clip.graph(1, 1)?.weights;
    let names: HashSet<&str> = loaded.iter().map(|s| s.name.as_str()).collect();
    let all = ClipConfig { clip_skip: 0, output: ClipOutput::FinalNorm, ..clip.clone() }.graph(1, 1)?.weights;
    let skipped = all.into_iter().filter(|s| !names.contains(s.name.as_str())).collect();
    Ok((loaded, skipped))
}

/// Every name a LoRA file may give a target weight → that weight.
pub(super) struct Index<'t> {
    by_key: HashMap<String, Vec<(&'t WeightSpec, bool)>>,
}

impl<'t> Index<'t> {
    pub(super) fn new(t: &'t Targets) -> Self {
        let mut by_key: HashMap<String, Vec<(&WeightSpec, bool)>> = HashMap::new();
        let mut add = |key: String, spec: &'t WeightSpec, skipped: bool| {
            let hits = by_key.entry(key).or_default();
            if !hits.iter().any(|(s, _)| s.name == spec.name) {
                hits.push((spec, skipped));
            }
        };
        let lora_targets = |specs: &'t [WeightSpec]| {
            specs
                .iter()
                .filter(|s| matches!(s.kind, WeightKind::Linear | WeightKind::Conv))
                .filter_map(|s| s.name.strip_suffix(".weight").map(|m| (s, m)))
        };
        for (spec, m) in lora_targets(&t.unet) {
            add(format!("unet.{m}"), spec, false);
            add(format!("lora_unet_{}", m.replace('.', "_")), spec, false);
            if let Some(ldm) = t.unet_layout.as_ref().and_then(|l| l.to_ldm(m)) {
                add(format!("lora_unet_{}", ldm.replace('.', "_")), spec, false);
            }
            if let Some(processor) = attention_processor_name(m) {
                add(format!("unet.{processor}"), spec, false);
            }
        }
        let te = lora_targets(&t.text_encoder).map(|x| (x, false));
        for ((spec, m), skipped) in te.chain(lora_targets(&t.text_encoder_skipped).map(|x| (x, true))) {
            // transformers 5 saves CLIPTextModel without the `text_model.` level; accept both spellings.
            for m in [m, m.strip_prefix("text_model.").unwrap_or(m)] {
                add(format!("text_encoder.{m}"), spec, skipped);
                add(format!("lora_te_{}", m.replace('.', "_")), spec, skipped);
                add(format!("lora_te1_{}", m.replace('.', "_")), spec, skipped);
            }
        }
        let te2 = lora_targets(&t.text_encoder_2).map(|x| (x, false));
        for ((spec, m), skipped) in te2.chain(lora_targets(&t.text_encoder_2_skipped).map(|x| (x, true))) {
            let m = m.strip_prefix(TEXT_ENCODER_2_PREFIX).unwrap_or(m);
            for m in [m, m.strip_prefix("text_model.").unwrap_or(m)] {
                add(format!("text_encoder_2.{m}"), spec, skipped);
                add(format!("lora_te2_{}", m.replace('.', "_")), spec, skipped);
            }
        }
        Index { by_key }
    }

    pub(super) fn find(&self, file: &LoraFile, t: &LoraTensor, targets: &Targets) -> Result<(&'t WeightSpec, bool)> {
        match self.by_key.get(&t.key_stem).map(Vec::as_slice) {
            Some(&[hit]) => Ok(hit),
            Some(hits) => {
                let names: Vec<&str> = hits.iter().map(|(s, _)| s.name.as_str()).collect();
                Err(Error::tensor(&file.path, &t.down_key, format!("is ambiguous: it could target {names:?}")))
            }
            None => {
                let hint = match t.component {
                    Component::Unet if t.format == LoraFormat::Kohya && targets.unet_layout.is_none() => {
                        " (LDM-named keys need the UNet's layout)"
                    }
                    Component::TextEncoder2 if targets.text_encoder_2.is_empty() => {
                        " (this model has one text encoder: the LoRA is for SDXL)"
                    }
                    _ => "",
                };
                let what = t.component.describe();
                Err(Error::tensor(&file.path, &t.down_key, format!("matches no module of {what}{hint}")))
            }
        }
    }
}

/// The name diffusers' attention-processor LoRA files give an attention projection:
/// `….attn1.to_q` → `….attn1.processor.to_q`, `….to_out.0` → `….processor.to_out` (its
/// `_lora.down.weight` suffix is split off with the factor suffixes).
fn attention_processor_name(module: &str) -> Option<String> {
    let (attn, proj) = module.rsplit_once(".to_")?;
    if !(attn.ends_with(".attn1") || attn.ends_with(".attn2")) {
        return None;
    }
    let proj = match proj {
        "q" | "k" | "v" => proj,
        "out.0" => "out",
        _ => return None,
    };
    Some(format!("{attn}.processor.to_{proj}"))
}

/// Checks that `t`'s delta has `spec`'s shape. A 1×1 conv and a linear layer take the same factors
/// (peft and kohya files flatten or keep the 1×1 kernel depending on the model they were trained on).
pub(super) fn check_fit(file: &LoraFile, t: &LoraTensor, spec: &WeightSpec) -> Result<()> {
    let (out, inner) = match spec.shape.as_slice() {
        [o, rest @ ..] if !rest.is_empty() => (*o, rest),
        _ => return Err(Error::tensor(&file.path, &t.down_key, format!("targets `{}`, not a matrix", spec.name))),
    };
    let down_in = &t.down_shape[1..];
    let is_1x1 = |s: &[usize]| s[1..].iter().all(|&k| k == 1);
    let fits_in = down_in == inner || (is_1x1(inner) && is_1x1(down_in) && down_in[0] == inner[0]);
    if fits_in && t.up_shape[0] == out {
        return Ok(());
    }
    Err(Error::tensor(
        &file.path,
        &t.down_key,
        format!(
            "does not fit `{}` {:?}: down is {:?}, up is {:?} (expected [rank, {}] and [{out}, rank])",
            spec.name,
            spec.shape,
            t.down_shape,
            t.up_shape,
            inner.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
        ),
    ))
}
