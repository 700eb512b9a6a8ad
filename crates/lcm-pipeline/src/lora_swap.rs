//! LoRA hot-swap: [`Pipeline::set_loras`] replaces the adapters of a loaded pipeline without loading it
//! again.
//!
//! - Merged ([`LoraMode::Merged`], and the CPU backend in either mode): every weight an old or a new LoRA
//!   touches is read again pristine from its file (the mmap the model was loaded from) and merged anew,
//!   then rewritten in place on the backend (same storage, so recorded runs stay valid). Bit-identical to
//!   a pipeline loaded with the new LoRAs.
//! - Runtime ([`LoraMode::Runtime`] on a backend with an unmerged path: CUDA): at load every UNet LoRA
//!   target gets fixed buffers for LoRAs up to `max_lora_rank`, and its GEMMs add x·Aᵀ·Bᵀ from them; a swap
//!   copies the new factors in (several LoRAs on one weight side by side), with no merge, no allocation
//!   and no re-recording. Text-encoder LoRAs, and UNet weights outside the target list, are merged.

use std::collections::BTreeSet;

use lcm_core::{Backend, Error, LoraDelta, Result, WeightKind, WeightSpec};

use crate::lora::{LoraFactors, LoraSet, TEXT_ENCODER_2_PREFIX};
use crate::pipeline::{LoraSpec, Pipeline};

/// How a pipeline applies LoRAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraMode {
    /// Merged into the weights (at load, and again from pristine weights on a swap): no cost per step.
    #[default]
    Merged,
    /// Unmerged on the UNet, from fixed buffers a swap copies into: swaps cost a copy (CUDA); each step
    /// pays two thin GEMMs per adapted layer. Backends without an unmerged path merge instead.
    Runtime,
}

/// The rank a runtime-mode pipeline's buffers hold when `LoadSpec::max_lora_rank` is not given: LCM-LoRA's.
pub const DEFAULT_MAX_LORA_RANK: usize = 64;

/// Module suffixes LCM-LoRA (and kohya's SD1.5 LoRAs) adapt in the UNet: attention projections,
/// transformer proj_in/out and feed-forward, resnet convs and time projection, down/upsampler convs.
pub const UNET_LORA_TARGETS: &[&str] = &[
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
];

/// Indices of the UNet weights a LoRA adapts (linear and conv weights whose module ends in one of
/// [`UNET_LORA_TARGETS`]).
pub fn unet_lora_targets(specs: &[WeightSpec]) -> Vec<usize> {
    specs
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.kind, WeightKind::Linear | WeightKind::Conv))
        .filter(|(_, s)| {
            s.name.strip_suffix(".weight").is_some_and(|m| {
                UNET_LORA_TARGETS.iter().any(|t| m == *t || m.strip_suffix(t).is_some_and(|p| p.ends_with('.')))
            })
        })
        .map(|(i, _)| i)
        .collect()
}

/// The LoRAs of one weight as one unmerged delta: factors side by side, each file's scale folded into
/// its up columns (Δ = Σ s_i·U_i·D_i = [s_1·U_1 | s_2·U_2]·[D_1; D_2]).
fn combined(factors: &[LoraFactors], out: usize) -> Option<LoraDelta> {
    let rank: usize = factors.iter().map(|f| f.rank).sum();
    if rank == 0 {
        return None;
    }
    let down = factors.iter().flat_map(|f| f.down.iter().copied()).collect();
    let mut up = Vec::with_capacity(out * rank);
    for o in 0..out {
        for f in factors {
            up.extend(f.up[o * f.rank..(o + 1) * f.rank].iter().map(|&u| f.scale * u));
        }
    }
    Some(LoraDelta { down, up, rank })
}

/// The weights of a pipeline that run unmerged LoRAs, and the rank their buffers hold.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots {
    pub(crate) names: BTreeSet<String>,
    pub(crate) max_rank: usize,
}

impl<B: Backend> Pipeline<B> {
    /// Gives every UNet LoRA target fixed LoRA buffers (runtime mode on a backend that has them).
    pub(crate) fn attach_lora_slots(&mut self, max_rank: usize) -> Result<()> {
        let weights = &mut self.unet.runner_mut().weights;
        let mut names = BTreeSet::new();
        for i in unet_lora_targets(&weights.specs) {
            self.backend.attach_lora(&mut weights.weights[i], &weights.specs[i], max_rank)?;
            names.insert(weights.specs[i].name.clone());
        }
        self.slots = Some(Slots { names, max_rank });
        Ok(())
    }

    /// Replaces the pipeline's LoRAs with `loras` (none: the base model). Everything — files, names,
    /// shapes, ranks against the runtime buffers — is checked before any weight changes. The result
    /// equals a pipeline loaded with `loras` (bit for bit when merged; within the backend's precision
    /// when unmerged). If reading a weight file fails halfway (an I/O error), some weights may already
    /// hold the new LoRAs: call again.
    pub fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<()> {
        let set = LoraSet::open(&loras.iter().map(|l| (l.path.clone(), l.scale)).collect::<Vec<_>>())?;
        let targets = self.lora_targets()?;
        let mut merger = set.resolve(&targets)?;
        let new: BTreeSet<String> = merger.targets().map(str::to_string).collect();
        let slots = self.slots.clone().unwrap_or_default();
        let mut deltas = Vec::new();
        for name in &slots.names {
            let spec =
                self.unet.runner().weights.specs.iter().find(|s| &s.name == name).expect("slot on a UNet weight");
            let delta = combined(&merger.factors(name)?, spec.shape[0]);
            if let Some(d) = &delta {
                if d.rank > slots.max_rank {
                    return Err(Error::invalid(
                        name,
                        format!(
                            "the LoRAs add rank {} here; the runtime LoRA buffers hold {} (load with a larger max_lora_rank)",
                            d.rank, slots.max_rank
                        ),
                    ));
                }
            }
            deltas.push((spec.clone(), delta));
        }

        // Unmerged: a copy into each buffer (switched off where no LoRA targets the weight).
        let unet = &mut self.unet.runner_mut().weights;
        for (spec, delta) in &deltas {
            let i = unet.index(&spec.name).expect("slot on a UNet weight");
            self.backend.set_lora(&unet.weights[i], spec, delta.as_ref())?;
        }
        // Merged: what an old or a new LoRA touches, read pristine and merged anew.
        let mut buf = Vec::new();
        let merged: BTreeSet<String> = new.iter().filter(|n| !slots.names.contains(*n)).cloned().collect();
        for name in self.lora_merged.union(&merged) {
            if let Some(own) = name.strip_prefix(TEXT_ENCODER_2_PREFIX) {
                let te2 = self.text.second.as_mut().expect("a text_encoder_2 target has its model");
                te2.model.runner_mut().weights.reload(
                    &self.backend,
                    own,
                    &mut merger.hook_text_encoder_2(),
                    &mut buf,
                )?;
                continue;
            }
            let mut hook = merger.hook();
            let weights = if self.unet.runner().weights.index(name).is_some() {
                &mut self.unet.runner_mut().weights
            } else {
                &mut self.text.first.model.runner_mut().weights
            };
            weights.reload(&self.backend, name, &mut hook, &mut buf)?;
        }
        self.lora_merged = merged;
        self.spec.loras = loras.to_vec();
        Ok(())
    }
}
