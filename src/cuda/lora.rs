//! LoRA on the GPU, both ways:
//! - merged: [`CudaBackend::merge_lora`] adds scale·up@down into a stored weight (kernels/lora.cu);
//! - unmerged: a [`LoraSlot`] holds fixed-size buffers for one target weight (down in the GEMM layout,
//!   scale·up zero-padded to the slot's rank); [`CudaWeight::attach_lora`] makes every GEMM on that
//!   weight run as [x | x·Aᵀ]·[W | s·B]ᵀ (two launches, see record.rs), and [`CudaBackend::set_lora`]
//!   swaps adapters by copying into the same buffers — no allocation, no re-merge, no graph re-capture.
//!
//! Wiring into models (not done yet): the model loader creates a slot per LoRA target at load time
//! (`lora_slot(spec, max_rank)`), attaches it to the weight before the first run, and a LoRA switch is
//! `set_lora` per target (or `clear_lora` to switch it off). Attaching or detaching changes the launch
//! sequence, so the next run re-records (once).

use std::sync::Arc;

use lcm_core::{Error, Result, WeightKind, WeightSpec};

use super::abi::LcmLoraMergeParams;
use super::backend::{CudaBackend, CudaWeight};
use super::device::DeviceBuffer;
use super::functions::Kernel;
use super::launch::{gemm_weight_layout, Launch, Params};

/// The device buffers of one LoRA slot.
pub struct LoraBuffers {
    /// `[rp, kh, kw, cip]` f16: the down projection as a GEMM weight, rows past the rank zero.
    pub(crate) down: DeviceBuffer,
    /// `[out, rp]` f16: scale·up, columns past the rank zero.
    pub(crate) up: DeviceBuffer,
    /// Rank capacity rounded up to 8 (the GEMM's second K segment).
    pub(crate) rp: usize,
    target: WeightSpec,
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

    pub fn detach_lora(&mut self) {
        self.lora = None;
    }
}

impl CudaBackend {
    /// Allocates a zeroed slot (a zero LoRA adds nothing) for LoRAs of rank ≤ `max_rank` on `target`.
    pub fn lora_slot(&self, target: &WeightSpec, max_rank: usize) -> Result<LoraSlot> {
        let (o, i, kh, kw) = gemm_dims(target)?;
        let rp = max_rank.max(1).div_ceil(8) * 8;
        let down = DeviceBuffer::alloc(&self.dev, rp * kh * kw * i.div_ceil(8) * 8 * 2)?;
        let up = DeviceBuffer::alloc(&self.dev, o * rp * 2)?;
        down.fill_u16(0, 0, down.bytes / 2)?;
        up.fill_u16(0, 0, up.bytes / 2)?;
        Ok(LoraSlot { inner: Arc::new(LoraBuffers { down, up, rp, target: target.clone() }) })
    }

    /// Copies a LoRA (torch layouts, f32) into `slot`: Δ = scale·up@down. Stream-ordered with runs, so
    /// the next run (or graph replay) sees the new adapter.
    pub fn set_lora(&self, slot: &LoraSlot, down: &[f32], up: &[f32], rank: usize, scale: f32) -> Result<()> {
        self.fill_lora(&slot.inner, down, up, rank, scale)
    }

    pub(crate) fn fill_lora(&self, l: &LoraBuffers, down: &[f32], up: &[f32], rank: usize, scale: f32) -> Result<()> {
        let (o, i, kh, kw) = check_factors(&l.target, down, up, rank)?;
        if rank > l.rp {
            return Err(Error::invalid(&l.target.name, format!("LoRA rank {rank} exceeds the slot's {}", l.rp)));
        }
        let mut d = gemm_weight_layout(down, rank, i, kh, kw);
        d.resize(l.rp * kh * kw * i.div_ceil(8) * 8, half::f16::ZERO);
        let mut u = vec![half::f16::ZERO; o * l.rp];
        for r in 0..o {
            for j in 0..rank {
                u[r * l.rp + j] = half::f16::from_f32(scale * up[r * rank + j]);
            }
        }
        l.down.upload(0, &d)?;
        l.up.upload(0, &u)
    }

    /// Switches the slot's LoRA off (zero up factor).
    pub fn clear_lora(&self, slot: &LoraSlot) -> Result<()> {
        self.zero_lora(&slot.inner)
    }

    pub(crate) fn zero_lora(&self, l: &LoraBuffers) -> Result<()> {
        l.up.fill_u16(0, 0, l.up.bytes / 2)
    }

    /// Merged mode: weight += scale·up@down, in place, in f32 arithmetic rounded once to f16. Undoing it
    /// (scale → −scale) restores the weight up to f16 rounding; keep the base weights if exact switching
    /// matters.
    pub fn merge_lora(&self, weight: &CudaWeight, down: &[f32], up: &[f32], rank: usize, scale: f32) -> Result<()> {
        let (o, i, kh, kw) = check_factors(&weight.spec, down, up, rank)?;
        let d = DeviceBuffer::alloc(&self.dev, down.len() * 4)?;
        let u = DeviceBuffer::alloc(&self.dev, up.len() * 4)?;
        d.upload(0, down)?;
        u.upload(0, up)?;
        let params = LcmLoraMergeParams {
            w: weight.buf.ptr,
            down: d.ptr,
            up: u.ptr,
            co: o as i32,
            ci: i as i32,
            cip: i.div_ceil(8) as i32 * 8,
            kh: kh as i32,
            kw: kw as i32,
            rank: rank as i32,
            scale,
            pad0: 0,
        };
        let total = o * kh * kw * i.div_ceil(8) * 8;
        let grid = total.div_ceil(256).min(self.limits.sm_count as usize * 8) as u32;
        self.launch(&Launch {
            kernel: Kernel::LoraMerge,
            grid: [grid, 1, 1],
            block: [256, 1, 1],
            smem: 0,
            params: Params::LoraMerge(params),
        })?;
        // The factors are freed on return: wait for the kernel first.
        self.synchronize()
    }
}
