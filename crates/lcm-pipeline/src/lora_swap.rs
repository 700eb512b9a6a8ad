//! LoRA hot-swap: the LoRA state of a loaded pipeline, which `Pipeline::set_loras`,
//! `Pipeline::prepare_loras` and `Pipeline::use_loras` change without loading the model again.
//!
//! - Merged ([`LoraMode::Merged`], and the CPU backend in either mode): every weight an old or a new LoRA
//!   touches is read again pristine from its file (the mmap the model was loaded from) and merged anew,
//!   then rewritten in place on the backend (same storage, so recorded runs stay valid). Bit-identical to
//!   a pipeline loaded with the new LoRAs.
//! - Runtime ([`LoraMode::Runtime`] on a backend with an unmerged path: CUDA): at load every UNet LoRA
//!   target gets fixed buffers for LoRAs up to `max_lora_rank`, and its GEMMs add x·Aᵀ·Bᵀ from them; a swap
//!   copies the new factors in (several LoRAs on one weight side by side), with no merge, no allocation
//!   and no re-recording. Text-encoder LoRAs, and UNet weights outside the target list, are merged.
//!
//! [`LoraMode::Merged`]: crate::spec::LoraMode::Merged
//! [`LoraMode::Runtime`]: crate::spec::LoraMode::Runtime

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use lcm_core::{Backend, Error, LoraDelta, Result, WeightKind, WeightSpec};
use lcm_models::Unet;

use crate::lora::{LoraFactors, LoraSet, Targets, TEXT_ENCODER_2_PREFIX};
use crate::spec::{LoraSpec, DEFAULT_MAX_LORA_RANK};
use crate::text::TextEncoders;

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
struct Slots {
    names: BTreeSet<String>,
    max_rank: usize,
    /// Unique per set of buffers: a [`PreparedLoras`] loads only into the buffers it was made for.
    id: u64,
}

/// LoRAs made ready for `Pipeline::use_loras`: files opened and mapped onto the pipeline's weights,
/// and on a backend with runtime LoRA buffers (CUDA in runtime mode) every buffer's contents
/// prepared in device memory of their own, so that switching to them is one device-to-device copy —
/// no file read, no conversion, no upload. A service prepares the adapters it serves once, then swaps
/// between them per request. The device memory is that of the buffers (for LCM-LoRA's rank 64 on
/// SD1.5, ~135 MB) and is freed on drop.
pub struct PreparedLoras<B: Backend> {
    loras: Vec<LoraSpec>,
    set: LoraSet,
    image: Option<B::LoraImage>,
    /// The [`Slots::id`] the image was made for (0: no image).
    slots_id: u64,
}

impl<B: Backend> PreparedLoras<B> {
    /// The LoRAs, as given to `Pipeline::prepare_loras`.
    pub fn loras(&self) -> &[LoraSpec] {
        &self.loras
    }
}

/// Every unmerged buffer's new contents for a LoRA set, checked against the buffers' rank.
struct Swap {
    set: LoraSet,
    /// (UNet weight index, delta; `None`: switched off) for every weight with buffers.
    deltas: Vec<(usize, Option<LoraDelta>)>,
}

/// The rank runtime LoRA buffers are made for: `max_lora_rank` when given, else the larger of
/// [`DEFAULT_MAX_LORA_RANK`] and the largest rank `loras` put on one weight (their ranks summed there).
pub(crate) fn slot_rank(loras: &[LoraSpec], targets: &Targets, max_lora_rank: Option<usize>) -> Result<usize> {
    if let Some(rank) = max_lora_rank {
        return Ok(rank);
    }
    let set = LoraSet::from_specs(loras)?;
    let merger = set.resolve(targets)?;
    let load_rank = merger.targets().map(|t| merger.rank(t)).max().unwrap_or(0);
    Ok(DEFAULT_MAX_LORA_RANK.max(load_rank))
}

/// Which weights of a pipeline hold which LoRAs: those merged into the weights, and the unmerged
/// buffers of runtime mode. Its methods take the models they change from the pipeline, with the
/// [`Targets`] of those models.
#[derive(Debug)]
pub(crate) struct LoraState {
    /// Weights a LoRA is merged into now (re-read pristine on a swap).
    merged: BTreeSet<String>,
    /// Runtime mode: the UNet weights with unmerged LoRA buffers.
    slots: Option<Slots>,
}

impl LoraState {
    /// The state of a pipeline loaded with LoRAs merged into the weights `merged`.
    pub(crate) fn new(merged: BTreeSet<String>) -> Self {
        LoraState { merged, slots: None }
    }

    /// Gives every UNet LoRA target fixed LoRA buffers of rank `max_rank`, all in one allocation
    /// (runtime mode on a backend that has them).
    pub(crate) fn attach_slots<B: Backend>(&mut self, backend: &B, unet: &mut Unet<B>, max_rank: usize) -> Result<()> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let weights = &mut unet.runner_mut().weights;
        let targets = unet_lora_targets(&weights.specs);
        backend.attach_loras(&mut weights.weights, &weights.specs, &targets, max_rank)?;
        let names = targets.iter().map(|&i| weights.specs[i].name.clone()).collect();
        self.slots = Some(Slots { names, max_rank, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) });
        Ok(())
    }

    /// Opens `loras`, maps them onto `targets` and works out every unmerged buffer's new contents,
    /// checking everything (files, names, shapes, ranks against the buffers) before any weight changes.
    fn plan<B: Backend>(&self, unet: &Unet<B>, targets: &Targets, loras: &[LoraSpec]) -> Result<Swap> {
        let set = LoraSet::from_specs(loras)?;
        let merger = set.resolve(targets)?;
        let slots = self.slots.clone().unwrap_or_default();
        let specs = &unet.runner().weights.specs;
        let mut deltas = Vec::new();
        for name in &slots.names {
            let i = specs.iter().position(|s| &s.name == name).expect("slot on a UNet weight");
            let delta = combined(&merger.factors(name)?, specs[i].shape[0]);
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
            deltas.push((i, delta));
        }
        drop(merger);
        Ok(Swap { set, deltas })
    }

    /// Merges `set` where it targets weights without unmerged buffers: every weight an old or a new
    /// merged LoRA touches is read again pristine and merged anew.
    fn remerge<B: Backend>(
        &mut self,
        backend: &B,
        unet: &mut Unet<B>,
        text: &mut TextEncoders<B>,
        targets: &Targets,
        set: &LoraSet,
    ) -> Result<()> {
        let mut merger = set.resolve(targets)?;
        let slots = self.slots.clone().unwrap_or_default();
        let merged: BTreeSet<String> =
            merger.targets().filter(|n| !slots.names.contains(*n)).map(str::to_string).collect();
        let mut buf = Vec::new();
        for name in self.merged.union(&merged) {
            if let Some(own) = name.strip_prefix(TEXT_ENCODER_2_PREFIX) {
                let te2 = text.second.as_mut().expect("a text_encoder_2 target has its model");
                te2.model.runner_mut().weights.reload(backend, own, &mut merger.hook_text_encoder_2(), &mut buf)?;
                continue;
            }
            let mut hook = merger.hook();
            let weights = if unet.runner().weights.index(name).is_some() {
                &mut unet.runner_mut().weights
            } else {
                &mut text.first.model.runner_mut().weights
            };
            weights.reload(backend, name, &mut hook, &mut buf)?;
        }
        self.merged = merged;
        Ok(())
    }

    /// Replaces the LoRAs with `loras`: the unmerged buffers filled from the host, one copy each, then
    /// the merged weights (see `Pipeline::set_loras`).
    pub(crate) fn set<B: Backend>(
        &mut self,
        backend: &B,
        unet: &mut Unet<B>,
        text: &mut TextEncoders<B>,
        targets: &Targets,
        loras: &[LoraSpec],
    ) -> Result<()> {
        let swap = self.plan(unet, targets, loras)?;
        let weights = &unet.runner().weights;
        for (i, delta) in &swap.deltas {
            backend.set_lora(&weights.weights[*i], &weights.specs[*i], delta.as_ref())?;
        }
        self.remerge(backend, unet, text, targets, &swap.set)
    }

    /// Checks and prepares `loras` for [`LoraState::switch`] (see `Pipeline::prepare_loras`).
    pub(crate) fn prepare<B: Backend>(
        &self,
        backend: &B,
        unet: &Unet<B>,
        targets: &Targets,
        loras: &[LoraSpec],
    ) -> Result<PreparedLoras<B>> {
        let swap = self.plan(unet, targets, loras)?;
        let (image, slots_id) = match &self.slots {
            Some(slots) if !swap.deltas.is_empty() => {
                let weights = &unet.runner().weights;
                let entries: Vec<_> =
                    swap.deltas.iter().map(|(i, d)| (&weights.weights[*i], &weights.specs[*i], d.as_ref())).collect();
                (Some(backend.lora_image(&entries)?), slots.id)
            }
            _ => (None, 0),
        };
        Ok(PreparedLoras { loras: loras.to_vec(), set: swap.set, image, slots_id })
    }

    /// Switches to LoRAs [`LoraState::prepare`] made for these buffers: one device copy, then the
    /// merged weights (see `Pipeline::use_loras`).
    pub(crate) fn switch<B: Backend>(
        &mut self,
        backend: &B,
        unet: &mut Unet<B>,
        text: &mut TextEncoders<B>,
        targets: &Targets,
        prepared: &PreparedLoras<B>,
    ) -> Result<()> {
        if self.slots.as_ref().map_or(0, |s| s.id) != prepared.slots_id {
            return Err(Error::invalid("PreparedLoras", "prepared on another pipeline's runtime LoRA buffers"));
        }
        if let Some(image) = &prepared.image {
            backend.load_lora_image(image)?;
        }
        self.remerge(backend, unet, text, targets, &prepared.set)
    }
}
