//! LoRA on the GPU, both ways:
//! - merged: [`CudaBackend::merge_lora`] adds scale·up@down into a stored weight (kernels/lora.cu);
//! - unmerged: a [`LoraSlot`] holds fixed-size buffers for one target weight (down in the GEMM layout,
//!   scale·up zero-padded to the slot's rank); [`CudaWeight::attach_lora`] makes every GEMM on that
//!   weight run as [x | x·Aᵀ]·[W | s·B]ᵀ (two launches, see ops/gemm.rs), and [`CudaBackend::set_lora`]
//!   swaps adapters by copying into the same buffers — no allocation, no re-merge, no graph re-capture.
//!
//! The pipeline's runtime LoRA mode (`lcm_pipeline::lora_swap`) gives every LoRA target a slot at load
//! time ([`CudaBackend::lora_slots`]: all in one device allocation, the slot *region*) and attaches each
//! before the first run. A swap is then either `set_lora` per target (the factors converted and
//! uploaded from the host), or — for LoRA sets prepared ahead — one device-to-device copy of a
//! [`LoraImage`], the region's whole contents prepared in device memory of its own: no host work at all.
//! Attaching changes the launch sequence, so the next run re-records (once). Both ways work
//! on f16 weights only (the f32 backend serves VAEs, which LoRAs do not target).

use std::sync::Arc;

use half::f16;
use lcm_core::{Error, LoraDelta, Result, WeightKind, WeightSpec};

use super::backend::{CudaBackend, CudaWeight};
use super::device::DeviceBuffer;
use super::launch::Precision;
use super::ops::gemm::gemm_weight_layout;
use super::ops::lora::lora_merge;

/// The device buffers of one LoRA slot: two ranges of its region.
pub struct LoraBuffers {
    /// The allocation this slot's buffers lie in (shared with the other slots made with it).
    region: Arc<DeviceBuffer>,
    /// Byte offset in the region of `[rp, kh, kw, cip]` f16: the down projection as a GEMM weight, rows
    /// past the rank zero.
    down: usize,
    /// Byte offset in the region of `[out, rp]` f16: scale·up, columns past the rank zero.
    up: usize,
    /// Rank capacity rounded up to 8 (the GEMM's second K segment).
    pub(crate) rp: usize,
    target: WeightSpec,
}

impl LoraBuffers {
    /// Device address of the down projection.
    pub(crate) fn down_ptr(&self) -> u64 {
        self.region.ptr + self.down as u64
    }

    /// Device address of scale·up.
    pub(crate) fn up_ptr(&self) -> u64 {
        self.region.ptr + self.up as u64
    }

    /// Elements (f16) of the down buffer, then of the up buffer.
    fn sizes(&self) -> (usize, usize) {
        slot_elems(&self.target, self.rp).expect("checked when the slot was made")
    }

    /// The slot's contents for `lora` (`None`: zeros, the LoRA off), f16 down then up, in the layouts
    /// the GEMM reads.
    fn contents(&self, lora: Option<&LoraDelta>) -> Result<(Vec<f16>, Vec<f16>)> {
        let (nd, nu) = self.sizes();
        let Some(l) = lora else { return Ok((vec![f16::ZERO; nd], vec![f16::ZERO; nu])) };
        let (o, i, kh, kw) = check_factors(&self.target, &l.down, &l.up, l.rank)?;
        if l.rank > self.rp {
            return Err(Error::invalid(
                &self.target.name,
                format!("LoRA rank {} exceeds the slot's {}", l.rank, self.rp),
            ));
        }
        let mut d = gemm_weight_layout::<f16>(&l.down, l.rank, i, kh, kw);
        d.resize(nd, f16::ZERO);
        let mut u = vec![f16::ZERO; nu];
        for r in 0..o {
            for j in 0..l.rank {
                u[r * self.rp + j] = f16::from_f32(l.up[r * l.rank + j]);
            }
        }
        Ok((d, u))
    }
}

/// A fixed set of buffers for a LoRA on one target weight.
#[derive(Clone)]
pub struct LoraSlot {
    inner: Arc<LoraBuffers>,
}

impl LoraSlot {
    pub fn max_rank(&self) -> usize {
        self.inner.rp
    }
}

/// A LoRA state for a whole slot region, prepared in device memory of its own
/// (`Backend::lora_image`): `Backend::load_lora_image` copies it over the region in one device-to-device
/// copy.
pub struct LoraImage {
    region: Arc<DeviceBuffer>,
    image: DeviceBuffer,
}

/// Slot buffers start on 256-byte boundaries, as every allocation does.
const SLOT_ALIGN: usize = 256;

/// Elements of a slot's down buffer (`[rp, kh, kw, cip]`) and up buffer (`[out, rp]`) on `target`.
fn slot_elems(target: &WeightSpec, rp: usize) -> Result<(usize, usize)> {
    let (o, i, kh, kw) = gemm_dims(target)?;
    Ok((rp * kh * kw * i.div_ceil(8) * 8, o * rp))
}

/// `(out, in, kh, kw)` of a GEMM weight.
fn gemm_dims(spec: &WeightSpec) -> Result<(usize, usize, usize, usize)> {
    match (spec.kind, spec.shape.as_slice()) {
        (WeightKind::Linear, &[o, i]) => Ok((o, i, 1, 1)),
        (WeightKind::Conv, &[o, i, kh, kw]) => Ok((o, i, kh, kw)),
        _ => Err(Error::invalid(&spec.name, "LoRA targets a linear or conv weight")),
    }
}

/// Checks factor sizes: down `[rank, in, kh, kw]` (or `[rank, in]`), up `[out, rank]` (or `[out, rank, 1, 1]`).
fn check_factors(spec: &WeightSpec, down: &[f32], up: &[f32], rank: usize) -> Result<(usize, usize, usize, usize)> {
    let (o, i, kh, kw) = gemm_dims(spec)?;
    if rank == 0 || down.len() != rank * i * kh * kw || up.len() != o * rank {
        return Err(Error::invalid(
            &spec.name,
            format!(
                "LoRA rank {rank}: down has {} values (want {}), up has {} (want {})",
                down.len(),
                rank * i * kh * kw,
                up.len(),
                o * rank
            ),
        ));
    }
    Ok((o, i, kh, kw))
}

impl CudaWeight {
    /// Runs this weight's GEMMs with the slot's LoRA added (unmerged). The slot must be for this weight.
    pub fn attach_lora(&mut self, slot: &LoraSlot) -> Result<()> {
        if slot.inner.target.shape != self.spec.shape || slot.inner.target.kind != self.spec.kind {
            return Err(Error::invalid(
                &self.spec.name,
                format!("LoRA slot was made for {} {:?}", slot.inner.target.name, slot.inner.target.shape),
            ));
        }
        self.lora = Some(slot.inner.clone());
        Ok(())
    }
}

impl CudaBackend {
    fn lora_weights_f16(&self, target: &WeightSpec) -> Result<()> {
        match self.precision {
            Precision::F16 => Ok(()),
            Precision::F32 => Err(Error::invalid(&target.name, "LoRAs apply to f16 weights only on CUDA")),
        }
    }

    /// Allocates a zeroed slot (a zero LoRA adds nothing) for LoRAs of rank ≤ `max_rank` on `target`.
    pub fn lora_slot(&self, target: &WeightSpec, max_rank: usize) -> Result<LoraSlot> {
        Ok(self.lora_slots(std::slice::from_ref(target), max_rank)?.remove(0))
    }

    /// Zeroed slots for every weight of `targets`, all in one allocation (the region a [`LoraImage`]
    /// loads with one copy).
    pub fn lora_slots(&self, targets: &[WeightSpec], max_rank: usize) -> Result<Vec<LoraSlot>> {
        let rp = max_rank.max(1).div_ceil(8) * 8;
        let mut layout = Vec::with_capacity(targets.len());
        let mut bytes = 0;
        for target in targets {
            self.lora_weights_f16(target)?;
            let (nd, nu) = slot_elems(target, rp)?;
            let down = bytes;
            let up = down + (2 * nd).next_multiple_of(SLOT_ALIGN);
            bytes = up + (2 * nu).next_multiple_of(SLOT_ALIGN);
            layout.push((down, up));
        }
        let region = Arc::new(DeviceBuffer::alloc(&self.dev, bytes.max(SLOT_ALIGN))?);
        region.fill_u16(0, 0, region.bytes / 2)?;
        Ok(targets
            .iter()
            .zip(layout)
            .map(|(target, (down, up))| LoraSlot {
                inner: Arc::new(LoraBuffers { region: region.clone(), down, up, rp, target: target.clone() }),
            })
            .collect())
    }

    /// Copies a LoRA (torch layouts, f32) into `slot`: Δ = scale·up@down. Stream-ordered with runs, so
    /// the next run (or graph replay) sees the new adapter.
    pub fn set_lora(&self, slot: &LoraSlot, down: &[f32], up: &[f32], rank: usize, scale: f32) -> Result<()> {
        let up = up.iter().map(|&u| scale * u).collect();
        self.fill_lora(&slot.inner, Some(&LoraDelta { down: down.to_vec(), up, rank }))
    }

    /// Writes `lora` into one slot's buffers (`None`: zeroes the up factor, which switches it off).
    pub(crate) fn fill_lora(&self, l: &LoraBuffers, lora: Option<&LoraDelta>) -> Result<()> {
        if lora.is_none() {
            return l.region.fill_u16(l.up, 0, l.sizes().1);
        }
        let (d, u) = l.contents(lora)?;
        l.region.upload(l.down, &d)?;
        l.region.upload(l.up, &u)
    }

    /// Switches the slot's LoRA off (zero up factor).
    pub fn clear_lora(&self, slot: &LoraSlot) -> Result<()> {
        self.fill_lora(&slot.inner, None)
    }

    /// The contents of a whole slot region, prepared on the device: every slot listed gets its delta
    /// (`None`: off), every other slot of the region zeros. The slots must share one region.
    pub(crate) fn prepare_lora_image(&self, slots: &[(&LoraBuffers, Option<&LoraDelta>)]) -> Result<LoraImage> {
        let Some((first, _)) = slots.first() else {
            return Err(Error::invalid("LoRA image", "no LoRA slots to prepare"));
        };
        let region = first.region.clone();
        let mut host = vec![f16::ZERO; region.bytes / 2];
        for &(l, lora) in slots {
            if !Arc::ptr_eq(&l.region, &region) {
                return Err(Error::invalid(&l.target.name, "LoRA slot from another set of slots"));
            }
            let (d, u) = l.contents(lora)?;
            host[l.down / 2..l.down / 2 + d.len()].copy_from_slice(&d);
            host[l.up / 2..l.up / 2 + u.len()].copy_from_slice(&u);
        }
        let image = DeviceBuffer::alloc(&self.dev, region.bytes)?;
        image.upload(0, &host)?;
        Ok(LoraImage { region, image })
    }

    /// Loads a prepared image into its slots: one device-to-device copy, stream-ordered with runs.
    pub(crate) fn copy_lora_image(&self, image: &LoraImage) -> Result<()> {
        image.region.copy_from(0, &image.image, 0, image.image.bytes)
    }

    /// Merged mode: weight += scale·up@down, in place, in f32 arithmetic rounded once to f16. Undoing it
    /// (scale → −scale) restores the weight up to f16 rounding; keep the base weights if exact switching
    /// matters.
    pub fn merge_lora(&self, weight: &CudaWeight, down: &[f32], up: &[f32], rank: usize, scale: f32) -> Result<()> {
        self.lora_weights_f16(&weight.spec)?;
        let (o, i, kh, kw) = check_factors(&weight.spec, down, up, rank)?;
        let d = DeviceBuffer::alloc(&self.dev, down.len() * 4)?;
        let u = DeviceBuffer::alloc(&self.dev, up.len() * 4)?;
        d.upload(0, down)?;
        u.upload(0, up)?;
        self.launch(&lora_merge([o, i, kh, kw, rank], scale, [weight.buf.ptr, d.ptr, u.ptr], self.limits)?)?;
        // The factors are freed on return: wait for the kernel first.
        self.synchronize()
    }
}
