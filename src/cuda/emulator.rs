//! The emulated side of the device seam: the same `kernels/*.cu`, compiled as host C++ by build.rs
//! (`cfg(lcm_emulator)`), run on the CPU by the runtime in `kernels/emulate/runtime.cpp` — a block's
//! threads as fibers with real barriers, warp collectives with the PTX fragment semantics, shared memory
//! at the launched size behind a guard page. Device pointers are host addresses; allocations end at a
//! guard page too. Blocks run in parallel on rayon. Graph capture records the work list and a replay
//! runs it.
//!
//! The emulated device models an sm_80 part with 4 SMs and sm_86's 99 KiB of opt-in shared memory (the
//! smallest of the targets): few SMs make the launch planners pick their large tiles and multi-chunk
//! reductions at the small sizes an emulated run can afford, and a launch that fits here fits on every
//! GPU the kernels are built for.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Mutex;

use lcm_core::{Error, Result};
use rayon::prelude::*;

use super::launch::Launch;

/// Facts the emulated device reports (see the module docs).
pub(crate) const SM_COUNT: u32 = 4;
pub(crate) const SMEM_OPTIN: u32 = 101_376;
pub(crate) const NAME: &str = "emulated";

#[repr(C)]
struct EmuLaunch {
    thunk: unsafe extern "C" fn(*const c_void),
    params: *const c_void,
    name: *const c_char,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
}

// SAFETY: read-only description of a launch; the pointers stay valid for the call that uses it.
unsafe impl Sync for EmuLaunch {}

extern "C" {
    fn lcm_emu_run_blocks(l: *const EmuLaunch, first: u64, count: u64, err: *mut c_char, errlen: usize) -> c_int;
    fn lcm_emu_alloc(bytes: usize) -> *mut c_void;
    fn lcm_emu_free(p: *mut c_void);
}

/// Device work as the emulator queues it inside a capture.
#[derive(Clone, Copy)]
pub(crate) enum Work {
    Launch(Launch),
    MemsetD32 { dst: u64, value: u32, count: usize },
}

pub(crate) struct Emulator {
    /// `Some` while a graph is being captured: work is recorded instead of run.
    capture: Mutex<Option<Vec<Work>>>,
}

impl Emulator {
    pub(crate) fn new() -> Emulator {
        Emulator { capture: Mutex::new(None) }
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        // SAFETY: plain allocation.
        let p = unsafe { lcm_emu_alloc(bytes) };
        if p.is_null() {
            return Err(Error::backend(format!("emulated device: cannot allocate {bytes} bytes")));
        }
        Ok(p as u64)
    }

    pub(crate) fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from `alloc` and is freed once.
        unsafe { lcm_emu_free(ptr as *mut c_void) }
    }

    /// Runs `w` now, or records it while capturing.
    pub(crate) fn submit(&self, w: Work) -> Result<()> {
        if let Some(list) = self.capture.lock().expect("capture lock").as_mut() {
            list.push(w);
            return Ok(());
        }
        run(&w)
    }

    /// What `record` submits, as a list for `replay`.
    pub(crate) fn capture(&self, record: impl FnOnce() -> Result<()>) -> Result<Vec<Work>> {
        *self.capture.lock().expect("capture lock") = Some(Vec::new());
        let recorded = record();
        let list = self.capture.lock().expect("capture lock").take().unwrap_or_default();
        recorded.map(|()| list)
    }

    pub(crate) fn replay(&self, list: &[Work]) -> Result<()> {
        list.iter().try_for_each(run)
    }
}

fn run(w: &Work) -> Result<()> {
    match *w {
        Work::Launch(ref l) => launch(l),
        Work::MemsetD32 { dst, value, count } => {
            // SAFETY: the caller (the backend) sized the words inside one of its allocations.
            unsafe { std::slice::from_raw_parts_mut(dst as *mut u32, count).fill(value) };
            Ok(())
        }
    }
}

/// One kernel launch: every block, on the rayon pool, each block's threads as fibers.
fn launch(l: &Launch) -> Result<()> {
    let (_, arg) = l.params.as_arg();
    let desc = EmuLaunch {
        thunk: l.kernel.emulated(),
        params: arg,
        name: l.kernel.c_name().as_ptr(),
        grid: l.grid,
        block: l.block,
        smem: l.smem,
    };
    let blocks = l.grid.iter().map(|&g| g as u64).product::<u64>();
    let threads = rayon::current_num_threads() as u64;
    let per_task = blocks.div_ceil(threads * 4).max(1);
    let tasks = blocks.div_ceil(per_task);
    // The first failing task (in block order) names the error.
    let errors: Vec<String> = (0..tasks)
        .into_par_iter()
        .filter_map(|t| {
            let first = t * per_task;
            let count = per_task.min(blocks - first);
            let mut err = [0 as c_char; 512];
            // SAFETY: `desc` points at live parameters and a kernel taking them (checked by the seam).
            let rc = unsafe { lcm_emu_run_blocks(&desc, first, count, err.as_mut_ptr(), err.len()) };
            // SAFETY: the runtime NUL-terminates the message.
            (rc != 0).then(|| unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned())
        })
        .collect();
    match errors.into_iter().next() {
        Some(e) => Err(Error::backend(format!("{e} (emulated device)"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::cuda::device::{DeviceBuffer, DeviceKind};
    use crate::cuda::launch::{self, Params, Precision};
    use crate::cuda::ops::eltwise::{eltwise, EltOp};
    use crate::cuda::ops::gemm::{gemm, GemmPtrs};
    use crate::cuda::CudaBackend;
    use lcm_core::{Activation, Gemm, MapKind};

    fn emulated() -> CudaBackend {
        CudaBackend::open(DeviceKind::Emulated).expect("the emulator is built into this binary")
    }

    fn err(be: &CudaBackend, l: &launch::Launch) -> String {
        let e = be.launch(l).expect_err("the emulator must refuse this launch").to_string();
        println!("{e}");
        e
    }

    #[test]
    fn shared_memory_one_row_short_is_an_error_naming_kernel_block_and_thread() {
        let be = emulated();
        let buf = |bytes| DeviceBuffer::alloc(&be.dev, bytes).unwrap();
        // K = 128: four k-tiles, so all three pipeline stages get used.
        let (x, w, out) = (buf(128 * 128 * 2), buf(64 * 128 * 2), buf(128 * 64 * 2));
        let p = GemmPtrs { x: x.ptr, weight: w.ptr, out: out.ptr, ..Default::default() };
        let mut l = gemm(&Gemm::linear(128, 128, 64), 0, p, Precision::F16, be.limits).unwrap();
        be.launch(&l).expect("the planned launch runs");
        l.smem -= 40 * 2; // one 40-half row of the B tile's last stage
        let e = err(&be, &l);
        assert!(e.contains("igemm_f16_64x64: block (") && e.contains("thread ("), "{e}");
        assert!(e.contains(&format!("{} bytes of shared memory", l.smem)), "{e}");
    }

    #[test]
    fn reading_past_a_device_buffer_is_an_error() {
        let be = emulated();
        let (a, out) = (DeviceBuffer::alloc(&be.dev, 64 * 2).unwrap(), DeviceBuffer::alloc(&be.dev, 72 * 2).unwrap());
        let l = eltwise(EltOp::Map(MapKind::Act(Activation::Silu)), 72, a.ptr, 0, out.ptr, Precision::F16, be.limits)
            .unwrap();
        let e = err(&be, &l);
        // Thread 8's 16-byte vector is the first past the end; which of its bytes the host code touches
        // first is the host compiler's choice.
        let byte = e.split("read at byte ").nth(1).and_then(|r| r.split(' ').next()?.parse::<usize>().ok());
        assert!(e.contains("map_v8_f16: block (0,0,0) thread (8,0,0)"), "{e}");
        assert!(byte.is_some_and(|b| (128..144).contains(&b)) && e.contains("of a 128-byte device allocation"), "{e}");
    }

    #[test]
    fn the_self_check_passes_on_the_emulated_device() {
        emulated().self_check().expect("every kernel family matches the CPU");
    }

    #[test]
    fn a_launch_carrying_another_kernels_struct_is_refused() {
        let be = emulated();
        let mut l = eltwise(EltOp::Map(MapKind::Add), 8, 0, 0, 0, Precision::F16, be.limits).unwrap();
        let Params::Eltwise(p) = l.params else { unreachable!() };
        l.kernel = crate::cuda::Kernel::LayerNormV8;
        l.params = Params::Eltwise(p);
        let e = err(&be, &l);
        assert!(e.contains("layer_norm_v8_f16 takes LcmLayerNormParams, the launch carries LcmEltwiseParams"), "{e}");
    }
}
