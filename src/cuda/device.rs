//! The seam under the CUDA backend: one [`Device`] whose work goes either to a GPU through the driver
//! API (driver.rs) or to the kernel emulator (emulator.rs). Everything above it — recorder, arena,
//! weight layouts, LoRA slots, graph capture and replay — is the same code over both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lcm_core::{Error, Result};

use super::driver::Gpu;
use super::launch::Launch;

/// Which device a backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// The GPU with this ordinal, through the driver.
    Gpu(i32),
    /// The kernels compiled as host C++ and run on the CPU (needs a build with `cfg(lcm_emulator)`).
    Emulated,
}

enum Imp {
    Gpu(Gpu),
    #[cfg(lcm_emulator)]
    Emulated(super::emulator::Emulator),
}

pub(crate) struct Device {
    pub(crate) name: String,
    pub(crate) sm_count: u32,
    pub(crate) cc: (i32, i32),
    /// Opt-in shared memory per block, bytes (the most a kernel may ask for).
    pub(crate) smem_optin: u32,
    allocations: AtomicU64,
    live_bytes: AtomicU64,
    /// The most bytes allocations may hold at once (`u64::MAX`: no cap beyond the device's own): a
    /// service's share of a GPU, or a test's small device.
    memory_limit: AtomicU64,
    /// Host -> device and device -> host copies so far (a generation's must be a fixed handful).
    to_device: AtomicU64,
    to_host: AtomicU64,
    /// Device -> device copies so far (the loop's hand-overs, prepared LoRA swaps).
    within: AtomicU64,
    /// Graph runs recorded (walked into launches and captured) so far.
    pub(crate) recordings: AtomicU64,
    imp: Imp,
}

impl Device {
    pub(crate) fn open(kind: DeviceKind) -> Result<Arc<Device>> {
        let counters = |name, sm_count, cc, smem_optin, imp| Device {
            name,
            sm_count,
            cc,
            smem_optin,
            allocations: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            memory_limit: AtomicU64::new(u64::MAX),
            to_device: AtomicU64::new(0),
            to_host: AtomicU64::new(0),
            within: AtomicU64::new(0),
            recordings: AtomicU64::new(0),
            imp,
        };
        match kind {
            DeviceKind::Gpu(ordinal) => {
                if !super::fatbin::compiled() {
                    return Err(Error::backend(
                        "this binary was built without nvcc, so it has no CUDA kernels: run scripts/install-nvcc.sh (or set NVCC / CUDA_HOME) and rebuild",
                    ));
                }
                let (gpu, f) = Gpu::open(ordinal, super::fatbin::FATBIN)?;
                Ok(Arc::new(counters(f.name, f.sm_count, f.cc, f.smem_optin, Imp::Gpu(gpu))))
            }
            #[cfg(lcm_emulator)]
            DeviceKind::Emulated => {
                use super::emulator::{Emulator, NAME, SMEM_OPTIN, SM_COUNT};
                let imp = Imp::Emulated(Emulator::new());
                Ok(Arc::new(counters(NAME.to_string(), SM_COUNT, (8, 0), SMEM_OPTIN, imp)))
            }
            #[cfg(not(lcm_emulator))]
            DeviceKind::Emulated => Err(Error::backend(
                "this binary was built without the kernel emulator (it needs the CUDA headers nvcc brings): run scripts/install-nvcc.sh and rebuild",
            )),
        }
    }

    pub(crate) fn is_emulated(&self) -> bool {
        !matches!(self.imp, Imp::Gpu(_))
    }

    /// Makes the device current on this thread (the driver's context; nothing for the emulator).
    pub(crate) fn bind(&self) -> Result<()> {
        match &self.imp {
            Imp::Gpu(g) => g.bind(),
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => Ok(()),
        }
    }

    /// Waits for all queued work; reports a failed kernel.
    pub(crate) fn synchronize(&self) -> Result<()> {
        match &self.imp {
            Imp::Gpu(g) => g.synchronize(),
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => Ok(()), // work runs when submitted
        }
    }

    pub(crate) fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }

    /// What may still be allocated: the cap less what is live, and on a GPU the driver's free memory
    /// (`cuMemGetInfo`); `None` on the emulator without a cap.
    pub(crate) fn available(&self) -> Option<u64> {
        let limit = self.memory_limit.load(Ordering::Relaxed);
        let cap = (limit != u64::MAX).then(|| limit.saturating_sub(self.live_bytes()));
        match (cap, self.gpu_free()) {
            (Some(c), Some(f)) => Some(c.min(f)),
            (c, f) => c.or(f),
        }
    }

    /// The driver's free device memory (`cuMemGetInfo`); `None` on the emulator, or if the call fails.
    fn gpu_free(&self) -> Option<u64> {
        match &self.imp {
            Imp::Gpu(g) => g.free_memory().ok(),
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => None,
        }
    }

    pub(crate) fn set_memory_limit(&self, bytes: Option<u64>) {
        self.memory_limit.store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// (host -> device, device -> host) copies so far.
    pub(crate) fn transfers(&self) -> (u64, u64) {
        (self.to_device.load(Ordering::Relaxed), self.to_host.load(Ordering::Relaxed))
    }

    /// Device -> device copies so far.
    pub(crate) fn device_copies(&self) -> u64 {
        self.within.load(Ordering::Relaxed)
    }

    /// Enqueues one kernel. The launch must carry the parameter struct its kernel takes.
    ///
    /// # Safety
    /// Every device pointer in the parameters must be valid for what the kernel does with it.
    pub(crate) unsafe fn launch(&self, l: &Launch) -> Result<()> {
        let (params, arg) = l.params.as_arg();
        if params != l.kernel.params_struct() {
            return Err(Error::backend(format!(
                "{} takes {}, the launch carries {params}",
                l.kernel.name(),
                l.kernel.params_struct()
            )));
        }
        match &self.imp {
            // SAFETY: `arg` is the kernel's struct (checked above); pointers are the caller's promise.
            Imp::Gpu(g) => unsafe { g.launch(l.kernel, l.grid, l.block, l.smem, arg) }
                .map_err(|e| Error::backend(format!("{}: {e}", l.kernel.name()))),
            // The emulator's errors name the kernel, block and thread themselves.
            #[cfg(lcm_emulator)]
            Imp::Emulated(e) => e.submit(super::emulator::Work::Launch(*l)),
        }
    }

    /// Zeroes `count` 32-bit words at `dst` (stream-ordered; recorded inside a capture).
    ///
    /// # Safety
    /// The words must lie inside one live allocation of this device.
    pub(crate) unsafe fn zero_d32(&self, dst: u64, count: usize) -> Result<()> {
        match &self.imp {
            // SAFETY: the caller's promise.
            Imp::Gpu(g) => unsafe { g.memset_d32(dst, 0, count) },
            #[cfg(lcm_emulator)]
            Imp::Emulated(e) => e.submit(super::emulator::Work::MemsetD32 { dst, value: 0, count }),
        }
    }
}

/// One device allocation, freed on drop. Every one is counted: the steady state must make none.
pub(crate) struct DeviceBuffer {
    dev: Arc<Device>,
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
}

impl DeviceBuffer {
    pub(crate) fn alloc(dev: &Arc<Device>, bytes: usize) -> Result<DeviceBuffer> {
        let (live, limit) = (dev.live_bytes(), dev.memory_limit.load(Ordering::Relaxed));
        // The driver's free memory first, so that a request past it is refused by name rather than by
        // cuMemAlloc's generic out-of-memory.
        if let Some(free) = dev.gpu_free().filter(|&free| bytes as u64 > free) {
            return Err(Error::backend(format!(
                "out of device memory: {bytes} bytes requested, {free} free on the GPU (cuMemGetInfo)"
            )));
        }
        if live.saturating_add(bytes as u64) > limit {
            return Err(Error::backend(format!(
                "out of device memory: {bytes} bytes requested with {live} of the {limit} allowed in use"
            )));
        }
        let ptr = match &dev.imp {
            Imp::Gpu(g) => g.alloc(bytes)?,
            #[cfg(lcm_emulator)]
            Imp::Emulated(e) => e.alloc(bytes)?,
        };
        dev.allocations.fetch_add(1, Ordering::Relaxed);
        dev.live_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(DeviceBuffer { dev: dev.clone(), ptr, bytes })
    }

    fn check_range(&self, offset: usize, bytes: usize, what: &str) -> Result<()> {
        if offset.checked_add(bytes).is_none_or(|end| end > self.bytes) {
            return Err(Error::backend(format!(
                "{what} of {bytes} bytes at {offset} past a {}-byte buffer",
                self.bytes
            )));
        }
        Ok(())
    }

    /// Copies `data` into the buffer at byte `offset` (stream-ordered; the host slice may be dropped on
    /// return).
    pub(crate) fn upload<T: bytemuck::Pod>(&self, offset: usize, data: &[T]) -> Result<()> {
        let src: &[u8] = bytemuck::cast_slice(data);
        self.check_range(offset, src.len(), "upload")?;
        self.dev.to_device.fetch_add(1, Ordering::Relaxed);
        let dst = self.ptr + offset as u64;
        match &self.dev.imp {
            // SAFETY: in bounds (checked).
            Imp::Gpu(g) => unsafe { g.upload(dst, src) },
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => {
                // SAFETY: in bounds (checked); device memory is host memory here, and no kernel runs
                // concurrently (work runs when submitted).
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
                Ok(())
            }
        }
    }

    /// Copies bytes at `offset` into `out`, after all queued work.
    pub(crate) fn download<T: bytemuck::Pod>(&self, offset: usize, out: &mut [T]) -> Result<()> {
        let out: &mut [u8] = bytemuck::cast_slice_mut(out);
        self.check_range(offset, out.len(), "read")?;
        self.dev.to_host.fetch_add(1, Ordering::Relaxed);
        let src = self.ptr + offset as u64;
        match &self.dev.imp {
            // SAFETY: in bounds (checked).
            Imp::Gpu(g) => unsafe { g.download(src, out) },
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => {
                // SAFETY: as in `upload`.
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), out.len()) };
                Ok(())
            }
        }
    }

    /// Copies `bytes` of `src` from `src_offset` to this buffer at `offset`, device to device
    /// (stream-ordered).
    pub(crate) fn copy_from(&self, offset: usize, src: &DeviceBuffer, src_offset: usize, bytes: usize) -> Result<()> {
        self.check_range(offset, bytes, "copy")?;
        src.check_range(src_offset, bytes, "copy")?;
        let (dst, from) = (self.ptr + offset as u64, src.ptr + src_offset as u64);
        self.dev.within.fetch_add(1, Ordering::Relaxed);
        match &self.dev.imp {
            // SAFETY: both ranges in bounds (checked).
            Imp::Gpu(g) => unsafe { g.copy(dst, from, bytes) },
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => {
                // SAFETY: both in bounds (checked); `copy` handles an overlap within one buffer.
                unsafe { std::ptr::copy(from as *const u8, dst as *mut u8, bytes) };
                Ok(())
            }
        }
    }

    /// Fills `count` 16-bit words from byte `offset` with `value` (stream-ordered).
    pub(crate) fn fill_u16(&self, offset: usize, value: u16, count: usize) -> Result<()> {
        self.check_range(offset, 2 * count, "fill")?;
        let dst = self.ptr + offset as u64;
        match &self.dev.imp {
            // SAFETY: in bounds (checked).
            Imp::Gpu(g) => unsafe { g.memset_d16(dst, value, count) },
            #[cfg(lcm_emulator)]
            Imp::Emulated(_) => {
                // SAFETY: in bounds (checked); 2-byte alignment holds (allocations are 16-byte aligned
                // and every caller passes an even offset).
                unsafe { std::slice::from_raw_parts_mut(dst as *mut u16, count).fill(value) };
                Ok(())
            }
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        match &self.dev.imp {
            Imp::Gpu(g) => g.free(self.ptr),
            #[cfg(lcm_emulator)]
            Imp::Emulated(e) => e.free(self.ptr),
        }
        self.dev.live_bytes.fetch_sub(self.bytes as u64, Ordering::Relaxed);
    }
}

/// A captured run: a CUDA graph on the GPU, the recorded work list on the emulator.
pub(crate) struct GraphExec {
    dev: Arc<Device>,
    imp: ExecImp,
}

enum ExecImp {
    Gpu(cudarc::driver::sys::CUgraphExec),
    #[cfg(lcm_emulator)]
    Emulated(Vec<super::emulator::Work>),
}

// SAFETY: the exec handle is only launched through `&self` with the context bound; the driver allows
// launching an exec from any thread (launches of one exec are serialised on the one stream). The
// emulator's list is plain data.
unsafe impl Send for GraphExec {}
unsafe impl Sync for GraphExec {}

impl GraphExec {
    /// Records whatever `record` enqueues into a graph; nothing is executed.
    pub(crate) fn capture(dev: &Arc<Device>, record: impl FnOnce() -> Result<()>) -> Result<GraphExec> {
        let imp = match &dev.imp {
            Imp::Gpu(g) => ExecImp::Gpu(g.capture(record)?),
            #[cfg(lcm_emulator)]
            Imp::Emulated(e) => ExecImp::Emulated(e.capture(record)?),
        };
        Ok(GraphExec { dev: dev.clone(), imp })
    }

    pub(crate) fn launch(&self) -> Result<()> {
        match (&self.dev.imp, &self.imp) {
            (Imp::Gpu(g), ExecImp::Gpu(x)) => g.replay(*x),
            #[cfg(lcm_emulator)]
            (Imp::Emulated(e), ExecImp::Emulated(list)) => e.replay(list),
            #[allow(unreachable_patterns)]
            _ => unreachable!("a graph replays on the device that captured it"),
        }
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // Irrefutable in a build without the emulator (then every device is a GPU).
        #[allow(irrefutable_let_patterns)]
        if let (Imp::Gpu(g), ExecImp::Gpu(x)) = (&self.dev.imp, &self.imp) {
            g.destroy(*x);
        }
    }
}
