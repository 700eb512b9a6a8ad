//! The GPU side of the device seam: the CUDA driver API through cudarc's `sys`, loaded at run time. One
//! device, its primary context, one stream, the kernel module with every function resolved once.
//!
//! Every entry point binds the context to the calling thread first, so the handles can be used from
//! whichever thread holds the backend.

use std::ffi::c_void;

use cudarc::driver::sys;
use lcm_core::{Error, Result};

use super::kernel_table::Kernel;

/// Turns a driver status into the engine's error, naming what was being done.
pub(crate) fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let err = cudarc::driver::result::DriverError(r);
    let name = err.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{r:?}"));
    let text = err.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    Err(Error::backend(format!("{what}: {name} ({text})")))
}

/// What the GPU is, read once at start-up.
pub(crate) struct GpuFacts {
    pub(crate) name: String,
    pub(crate) sm_count: u32,
    pub(crate) cc: (i32, i32),
    pub(crate) smem_optin: u32,
}

pub(crate) struct Gpu {
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    module: sys::CUmodule,
    /// Resolved in `Kernel::ALL` order: a launch is an array load, no lookup, no string.
    funcs: Vec<sys::CUfunction>,
}

// SAFETY: driver handles are plain identifiers valid from any thread once the context is current, and
// every method binds it first. One stream orders all work.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

/// How many CUDA devices the driver sees (0 without the driver library or a GPU).
pub(crate) fn device_count() -> usize {
    // SAFETY: probing for the library has no preconditions; the driver calls run only if it loaded.
    unsafe {
        if !sys::is_culib_present() || sys::cuInit(0) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
        let mut count = 0;
        if sys::cuDeviceGetCount(&mut count) != sys::CUresult::CUDA_SUCCESS {
            return 0;
        }
        count.max(0) as usize
    }
}

impl Gpu {
    /// Opens device `ordinal`, loads `fatbin` and resolves every kernel. Fails cleanly (never panics)
    /// when the driver library is missing, no GPU is present, or the fatbin has no image for this GPU.
    pub(crate) fn open(ordinal: i32, fatbin: &[u8]) -> Result<(Gpu, GpuFacts)> {
        // SAFETY: probing for the library has no preconditions; everything after runs only if it loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::backend("the NVIDIA driver library (libcuda.so) was not found: no CUDA device"));
        }
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            let mut count = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
            if ordinal >= count {
                let exist = if count > 0 { format!("ordinals 0..={}", count - 1) } else { "none".to_string() };
                return Err(Error::backend(format!("CUDA device {ordinal} requested; {count} present ({exist})")));
            }
            let mut dev = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            // From here on `gpu` owns what was created: an early return releases it (Drop).
            let mut gpu =
                Gpu { dev, ctx, stream: std::ptr::null_mut(), module: std::ptr::null_mut(), funcs: Vec::new() };
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
                let mut v = 0;
                check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute")?;
                Ok(v)
            };
            use sys::CUdevice_attribute::*;
            let sm_count = attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
            let cc = (
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let smem_optin = attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
            let mut raw = [0 as std::ffi::c_char; 256];
            check(sys::cuDeviceGetName(raw.as_mut_ptr(), raw.len() as i32, dev), "cuDeviceGetName")?;
            let name = std::ffi::CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned();
            if cc.0 < 8 {
                return Err(Error::backend(format!(
                    "{name} is compute capability {}.{}; the kernels need 8.0 or newer",
                    cc.0, cc.1
                )));
            }
            check(
                sys::cuStreamCreate(&mut gpu.stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
                "cuStreamCreate",
            )?;
            // cuModuleLoadData reads the fatbin header as 8-byte words: copy it into an aligned buffer.
            let mut aligned = vec![0u64; fatbin.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..fatbin.len()].copy_from_slice(fatbin);
            check(
                sys::cuModuleLoadData(&mut gpu.module, aligned.as_ptr() as *const c_void),
                &format!("loading the kernel fatbin on {name} (sm_{}{})", cc.0, cc.1),
            )?;
            gpu.resolve(smem_optin)?;
            Ok((gpu, GpuFacts { name, sm_count, cc, smem_optin }))
        }
    }

    /// Resolves every kernel and lets each use the device's full opt-in shared memory (the launch
    /// planner checks each launch's request against that limit).
    fn resolve(&mut self, smem_optin: u32) -> Result<()> {
        for &k in Kernel::ALL {
            let mut f = std::ptr::null_mut();
            let mut static_smem = 0;
            // SAFETY: the module lives as long as `self`; `f` is one of its functions once found.
            unsafe {
                check(
                    sys::cuModuleGetFunction(&mut f, self.module, k.c_name().as_ptr()),
                    &format!("kernel `{}` in the fatbin", k.name()),
                )?;
                check(
                    sys::cuFuncGetAttribute(
                        &mut static_smem,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                        f,
                    ),
                    "cuFuncGetAttribute",
                )?;
                check(
                    sys::cuFuncSetAttribute(
                        f,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        smem_optin as i32 - static_smem,
                    ),
                    &format!("raising the shared-memory limit of {}", k.name()),
                )?;
            }
            self.funcs.push(f);
        }
        Ok(())
    }

    pub(crate) fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the device's lifetime.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: valid stream.
        check(
            unsafe { sys::cuStreamSynchronize(self.stream) },
            "cuStreamSynchronize (a kernel failed, or the copy did)",
        )
    }

    /// Free device memory in bytes (`cuMemGetInfo`).
    pub(crate) fn free_memory(&self) -> Result<u64> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two out-parameters on the current context.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "reading the GPU's free memory")?;
        Ok(free as u64)
    }

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        let mut ptr = 0;
        // Zero-byte allocations are legal in the API but not in the driver; round up to one word.
        // SAFETY: plain allocation on the current context.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(4)) }, &format!("allocating {bytes} bytes on the GPU"))?;
        Ok(ptr)
    }

    /// Frees after draining the stream, so no queued kernel still uses the memory; errors at teardown
    /// are not actionable.
    pub(crate) fn free(&self, ptr: u64) {
        // SAFETY: `ptr` came from `alloc` and is freed once.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            sys::cuStreamSynchronize(self.stream);
            sys::cuMemFree_v2(ptr);
        }
    }

    /// Stream-ordered; pageable copies are staged by the driver before it returns, so `src` may go.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` must be inside one live allocation.
    pub(crate) unsafe fn upload(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.bind()?;
        check(
            unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.as_ptr() as *const c_void, src.len(), self.stream) },
            "copy to the GPU",
        )
    }

    /// Waits for the stream, so `out` is filled on return.
    ///
    /// # Safety
    /// `src .. src + out.len()` must be inside one live allocation.
    pub(crate) unsafe fn download(&self, src: u64, out: &mut [u8]) -> Result<()> {
        self.bind()?;
        check(
            unsafe { sys::cuMemcpyDtoHAsync_v2(out.as_mut_ptr() as *mut c_void, src, out.len(), self.stream) },
            "copy from the GPU",
        )?;
        self.synchronize()
    }

    /// Device to device, stream-ordered.
    ///
    /// # Safety
    /// Both ranges must be inside live allocations.
    pub(crate) unsafe fn copy(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        self.bind()?;
        check(unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, self.stream) }, "copy on the GPU")
    }

    /// # Safety
    /// The words must be inside one live allocation.
    pub(crate) unsafe fn memset_d16(&self, dst: u64, value: u16, count: usize) -> Result<()> {
        self.bind()?;
        check(unsafe { sys::cuMemsetD16Async(dst, value, count, self.stream) }, "cuMemsetD16Async")
    }

    /// Stream work only (no bind): safe inside a capture.
    ///
    /// # Safety
    /// The words must be inside one live allocation.
    pub(crate) unsafe fn memset_d32(&self, dst: u64, value: u32, count: usize) -> Result<()> {
        check(unsafe { sys::cuMemsetD32Async(dst, value, count, self.stream) }, "cuMemsetD32Async")
    }

    /// Enqueues `kernel` with `arg` (its parameter struct) as the only argument. Stream work only.
    ///
    /// # Safety
    /// `arg` must point at the struct `kernel` takes, and every device pointer in it must be valid for
    /// what the kernel does with it.
    pub(crate) unsafe fn launch(
        &self,
        kernel: Kernel,
        grid: [u32; 3],
        block: [u32; 3],
        smem: u32,
        arg: *const c_void,
    ) -> Result<()> {
        let mut args = [arg as *mut c_void];
        check(
            unsafe {
                sys::cuLaunchKernel(
                    self.funcs[kernel as usize],
                    grid[0],
                    grid[1],
                    grid[2],
                    block[0],
                    block[1],
                    block[2],
                    smem,
                    self.stream,
                    args.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }

    /// Records what `record` enqueues into a CUDA graph and instantiates it; nothing runs. The capture
    /// is always ended, also when `record` fails.
    pub(crate) fn capture(&self, record: impl FnOnce() -> Result<()>) -> Result<sys::CUgraphExec> {
        self.bind()?;
        // SAFETY: valid stream; thread-local mode so other threads' driver calls are not disturbed.
        unsafe {
            check(
                sys::cuStreamBeginCapture_v2(
                    self.stream,
                    sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                ),
                "cuStreamBeginCapture",
            )?;
        }
        let recorded = record();
        let mut graph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above on the same stream.
        let ended = check(unsafe { sys::cuStreamEndCapture(self.stream, &mut graph) }, "cuStreamEndCapture");
        recorded?;
        ended?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: `graph` is the captured graph; it is destroyed once instantiated (the exec is independent).
        unsafe {
            let r = sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0);
            sys::cuGraphDestroy(graph);
            check(r, "cuGraphInstantiateWithFlags")?;
        }
        Ok(exec)
    }

    pub(crate) fn replay(&self, exec: sys::CUgraphExec) -> Result<()> {
        self.bind()?;
        // SAFETY: an exec from `capture` on this device, not yet destroyed.
        check(unsafe { sys::cuGraphLaunch(exec, self.stream) }, "cuGraphLaunch")
    }

    pub(crate) fn destroy(&self, exec: sys::CUgraphExec) {
        // SAFETY: destroyed once, after the stream has drained.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            sys::cuStreamSynchronize(self.stream);
            sys::cuGraphExecDestroy(exec);
        }
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: handles created in `open` (null when `open` failed before making them), released once;
        // errors at teardown are not actionable.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            if !self.stream.is_null() {
                sys::cuStreamSynchronize(self.stream);
            }
            if !self.module.is_null() {
                sys::cuModuleUnload(self.module);
            }
            if !self.stream.is_null() {
                sys::cuStreamDestroy_v2(self.stream);
            }
            sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
    }
}
