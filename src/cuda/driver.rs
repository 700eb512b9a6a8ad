//! The thin layer over the CUDA driver API (cudarc's `sys`, loaded at run time): one device, its primary
//! context, one stream, the kernel module, and device buffers that count their allocations.
//!
//! Every entry point binds the context to the calling thread first (`Device::bind`), so the handles can
//! be used from whichever thread holds the backend.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cudarc::driver::sys;
use lcm_core::{Error, Result};

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

pub(crate) struct Device {
    pub(crate) dev: sys::CUdevice,
    ctx: sys::CUcontext,
    pub(crate) stream: sys::CUstream,
    pub(crate) module: sys::CUmodule,
    pub(crate) name: String,
    pub(crate) sm_count: u32,
    pub(crate) cc: (i32, i32),
    /// Opt-in shared memory per block, bytes (the most a kernel may ask for).
    pub(crate) smem_optin: u32,
    allocations: AtomicU64,
    live_bytes: AtomicU64,
}

// SAFETY: driver handles are plain identifiers valid from any thread once the context is current, and
// every method binds it first; the Rust-side state is atomics. One stream orders all work.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `ordinal` and loads `fatbin`. Fails cleanly (never panics) when the driver library
    /// is missing, no GPU is present, or the fatbin has no image for this GPU.
    pub(crate) fn open(ordinal: i32, fatbin: &[u8]) -> Result<Arc<Device>> {
        // SAFETY: probing for the library has no preconditions; everything after runs only if it loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::backend("the NVIDIA driver library (libcuda.so) was not found: no CUDA device"));
        }
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            let mut count = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
            if ordinal >= count {
                return Err(Error::backend(format!("CUDA device {ordinal} requested, {count} present")));
            }
            let mut dev = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal), "cuDeviceGet")?;
            let mut ctx = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
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
                sys::cuDevicePrimaryCtxRelease_v2(dev);
                return Err(Error::backend(format!(
                    "{name} is compute capability {}.{}; the kernels need 8.0 or newer",
                    cc.0, cc.1
                )));
            }
            let mut stream = std::ptr::null_mut();
            check(
                sys::cuStreamCreate(&mut stream, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32),
                "cuStreamCreate",
            )?;
            // cuModuleLoadData reads the fatbin header as 8-byte words: copy it into an aligned buffer.
            let mut aligned = vec![0u64; fatbin.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..fatbin.len()].copy_from_slice(fatbin);
            let mut module = std::ptr::null_mut();
            let r = sys::cuModuleLoadData(&mut module, aligned.as_ptr() as *const c_void);
            if r != sys::CUresult::CUDA_SUCCESS {
                sys::cuStreamDestroy_v2(stream);
                sys::cuDevicePrimaryCtxRelease_v2(dev);
                check(r, &format!("loading the kernel fatbin on {name} (sm_{}{})", cc.0, cc.1))?;
            }
            Ok(Arc::new(Device {
                dev,
                ctx,
                stream,
                module,
                name,
                sm_count,
                cc,
                smem_optin,
                allocations: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
            }))
        }
    }

    pub(crate) fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the device's lifetime.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    pub(crate) fn function(&self, name: &str) -> Result<sys::CUfunction> {
        let c = CString::new(name).expect("kernel names have no NUL");
        let mut f = std::ptr::null_mut();
        // SAFETY: the module lives as long as the device.
        check(
            unsafe { sys::cuModuleGetFunction(&mut f, self.module, c.as_ptr()) },
            &format!("kernel `{name}` in the fatbin"),
        )?;
        Ok(f)
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: valid stream.
        check(
            unsafe { sys::cuStreamSynchronize(self.stream) },
            "cuStreamSynchronize (a kernel failed, or the copy did)",
        )
    }

    pub(crate) fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: handles created in `open`, released once; errors at teardown are not actionable.
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            sys::cuStreamSynchronize(self.stream);
            sys::cuModuleUnload(self.module);
            sys::cuStreamDestroy_v2(self.stream);
            sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
    }
}

/// One device allocation, freed on drop. Every one is counted: the steady state must make none.
pub(crate) struct DeviceBuffer {
    dev: Arc<Device>,
    pub(crate) ptr: sys::CUdeviceptr,
    pub(crate) bytes: usize,
}

impl DeviceBuffer {
    pub(crate) fn alloc(dev: &Arc<Device>, bytes: usize) -> Result<DeviceBuffer> {
        dev.bind()?;
        let mut ptr = 0;
        // Zero-byte allocations are legal in the API but not in the driver; round up to one word.
        // SAFETY: plain allocation on the current context.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes.max(4)) }, &format!("allocating {bytes} bytes on the GPU"))?;
        dev.allocations.fetch_add(1, Ordering::Relaxed);
        dev.live_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(DeviceBuffer { dev: dev.clone(), ptr, bytes })
    }

    /// Copies `data` into the buffer at byte `offset` (stream-ordered; the host slice may be dropped on
    /// return — pageable copies are staged by the driver before it returns).
    pub(crate) fn upload<T: bytemuck::Pod>(&self, offset: usize, data: &[T]) -> Result<()> {
        let bytes = std::mem::size_of_val(data);
        if offset + bytes > self.bytes {
            return Err(Error::backend(format!(
                "upload of {bytes} bytes at {offset} past a {}-byte buffer",
                self.bytes
            )));
        }
        self.dev.bind()?;
        // SAFETY: in bounds (checked); the source is a live host slice.
        check(
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    self.ptr + offset as u64,
                    data.as_ptr() as *const c_void,
                    bytes,
                    self.dev.stream,
                )
            },
            "copy to the GPU",
        )
    }

    /// Copies bytes at `offset` into `out`, waiting for the stream first.
    pub(crate) fn download<T: bytemuck::Pod>(&self, offset: usize, out: &mut [T]) -> Result<()> {
        let bytes = std::mem::size_of_val(out);
        if offset + bytes > self.bytes {
            return Err(Error::backend(format!("read of {bytes} bytes at {offset} past a {}-byte buffer", self.bytes)));
        }
        self.dev.bind()?;
        // SAFETY: in bounds (checked); the destination is a live, exclusively borrowed host slice, and
        // the stream is synchronised before it is released.
        unsafe {
            check(
                sys::cuMemcpyDtoHAsync_v2(
                    out.as_mut_ptr() as *mut c_void,
                    self.ptr + offset as u64,
                    bytes,
                    self.dev.stream,
                ),
                "copy from the GPU",
            )?;
        }
        self.dev.synchronize()
    }

    /// Fills `count` 16-bit words from byte `offset` with `value` (stream-ordered).
    pub(crate) fn fill_u16(&self, offset: usize, value: u16, count: usize) -> Result<()> {
        if offset + 2 * count > self.bytes {
            return Err(Error::backend("fill past the end of a device buffer"));
        }
        self.dev.bind()?;
        // SAFETY: in bounds (checked).
        check(
            unsafe { sys::cuMemsetD16Async(self.ptr + offset as u64, value, count, self.dev.stream) },
            "cuMemsetD16Async",
        )
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `alloc`, freed once. The stream is drained first so no queued kernel
        // still uses the memory; errors at teardown are not actionable.
        unsafe {
            sys::cuCtxSetCurrent(self.dev.ctx);
            sys::cuStreamSynchronize(self.dev.stream);
            sys::cuMemFree_v2(self.ptr);
        }
        self.dev.live_bytes.fetch_sub(self.bytes as u64, Ordering::Relaxed);
    }
}

/// An instantiated CUDA graph, destroyed on drop.
pub(crate) struct GraphExec {
    dev: Arc<Device>,
    pub(crate) exec: sys::CUgraphExec,
}

// SAFETY: the exec handle is only launched through `&self` with the context bound; the driver allows
// launching an exec from any thread (launches of one exec are serialised on the one stream).
unsafe impl Send for GraphExec {}
unsafe impl Sync for GraphExec {}

impl GraphExec {
    /// Records whatever `record` enqueues on the device's stream into a graph and instantiates it.
    /// Nothing is executed. The capture is always ended, also when `record` fails.
    pub(crate) fn capture(dev: &Arc<Device>, record: impl FnOnce() -> Result<()>) -> Result<GraphExec> {
        dev.bind()?;
        // SAFETY: valid stream; thread-local mode so other threads' driver calls are not disturbed.
        unsafe {
            check(
                sys::cuStreamBeginCapture_v2(dev.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                "cuStreamBeginCapture",
            )?;
        }
        let recorded = record();
        let mut graph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above on the same stream.
        let ended = check(unsafe { sys::cuStreamEndCapture(dev.stream, &mut graph) }, "cuStreamEndCapture");
        recorded?;
        ended?;
        let mut exec = std::ptr::null_mut();
        // SAFETY: `graph` is the captured graph; it is destroyed once instantiated (the exec is independent).
        unsafe {
            let r = sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0);
            sys::cuGraphDestroy(graph);
            check(r, "cuGraphInstantiateWithFlags")?;
        }
        Ok(GraphExec { dev: dev.clone(), exec })
    }

    pub(crate) fn launch(&self) -> Result<()> {
        self.dev.bind()?;
        // SAFETY: valid exec and stream.
        check(unsafe { sys::cuGraphLaunch(self.exec, self.dev.stream) }, "cuGraphLaunch")
    }
}

impl Drop for GraphExec {
    fn drop(&mut self) {
        // SAFETY: created in `capture`, destroyed once, after the stream has drained.
        unsafe {
            sys::cuCtxSetCurrent(self.dev.ctx);
            sys::cuStreamSynchronize(self.dev.stream);
            sys::cuGraphExecDestroy(self.exec);
        }
    }
}

/// Enqueues one kernel on the device's stream with its parameter struct as the only argument.
///
/// # Safety
/// `f` must be a kernel of the loaded module whose single parameter has exactly the layout of `P`, and
/// every device pointer inside `params` must be valid for what the kernel does with it.
pub(crate) unsafe fn launch<P>(
    dev: &Device,
    f: sys::CUfunction,
    grid: [u32; 3],
    block: [u32; 3],
    smem: u32,
    params: &P,
) -> Result<()> {
    let mut args = [params as *const P as *mut c_void];
    check(
        sys::cuLaunchKernel(
            f,
            grid[0],
            grid[1],
            grid[2],
            block[0],
            block[1],
            block[2],
            smem,
            dev.stream,
            args.as_mut_ptr(),
            std::ptr::null_mut(),
        ),
        "cuLaunchKernel",
    )
}
