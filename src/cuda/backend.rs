//! [`CudaBackend`]: the `lcm_core::Backend` on the GPU. f16 weights uploaded once in the kernels'
//! layouts; one arena allocation per executor (plus one small scratch buffer sized on the first run);
//! a run is recorded once per (graph, arena, weights) as a list of launches and captured as a CUDA
//! graph, then replayed — so the steady state makes no allocation, no lookup and one driver call.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use half::f16;
use lcm_core::{Backend, Elem, Error, HostData, LoraDelta, Program, Result, WeightKind, WeightSpec};

use super::device::{Device, DeviceBuffer, DeviceKind, GraphExec};
use super::kernel_table::Kernel;
use super::launch::{self, Limits, Precision, Step};
use super::lora::{LoraBuffers, LoraImage};
use super::ops::gemm;
use super::record::Recorder;

// A service holds these across threads: keep them Send + Sync (checked at compile time).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CudaBackend>();
    send_sync::<CudaWeight>();
    send_sync::<CudaArena>();
};

/// Bytes at the start of the scratch buffer for status words (the embed error flag: int[2]).
pub(crate) const STATUS_BYTES: usize = 256;

pub struct CudaBackend {
    pub(crate) dev: Arc<Device>,
    pub(crate) limits: Limits,
    /// What `Elem::Act` tensors and the weights are stored in (f16; f32 for a `force_upcast` VAE).
    pub(crate) precision: Precision,
    graphs: bool,
}

/// A weight on the GPU: in the backend's precision and the layout its kernel reads (see
/// `ops::gemm::gemm_weight_layout`), and optionally an attached LoRA slot for the unmerged path.
pub struct CudaWeight {
    pub(crate) buf: DeviceBuffer,
    pub(crate) spec: WeightSpec,
    pub(crate) lora: Option<Arc<LoraBuffers>>,
}

impl CudaWeight {
    pub fn spec(&self) -> &WeightSpec {
        &self.spec
    }

    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr
    }
}

/// An executor's activations: the planner's arena, a scratch buffer for kernel workspaces, and the
/// recorded run (launch list and CUDA graph) for the graph last run in it.
pub struct CudaArena {
    pub(crate) buf: DeviceBuffer,
    pub(crate) scratch: Option<DeviceBuffer>,
    recorded: Option<Recorded>,
}

struct Recorded {
    key: u64,
    steps: Vec<Step>,
    exec: Option<GraphExec>,
}

impl CudaArena {
    pub fn bytes(&self) -> usize {
        self.buf.bytes
    }

    pub fn device_ptr(&self) -> u64 {
        self.buf.ptr
    }

    /// Launches in the recorded run (0 before the first run).
    pub fn recorded_launches(&self) -> usize {
        self.recorded.as_ref().map_or(0, |r| r.steps.len())
    }

    /// The recorded run's launches, one line each: kernel, grid, block, dynamic shared memory (what a
    /// failing test prints so the failure names its kernel and geometry).
    pub fn recorded_kernels(&self) -> Vec<String> {
        let steps = self.recorded.as_ref().map_or(&[][..], |r| &r.steps[..]);
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Kernel(l) => Some(l.describe()),
                Step::Zero32 { .. } => None,
            })
            .collect()
    }
}

impl CudaBackend {
    /// Opens the device `$LCM_CUDA_DEVICE` names: a GPU ordinal (default 0), or `emulated` for the
    /// kernel emulator. An error — never a panic — when the binary was built without nvcc, the driver is
    /// missing, there is no GPU, or the GPU is older than sm_80. `$LCM_CUDA_GRAPHS=0` turns graph capture
    /// off (replays the launch list instead; useful under compute-sanitizer and for profiling single
    /// kernels).
    pub fn new() -> Result<CudaBackend> {
        let kind = match std::env::var("LCM_CUDA_DEVICE") {
            Ok(v) if v == "emulated" => DeviceKind::Emulated,
            Ok(v) => DeviceKind::Gpu(v.parse().map_err(|_| {
                Error::invalid("LCM_CUDA_DEVICE", format!("`{v}`: a GPU ordinal (0, 1, …) or `emulated`"))
            })?),
            Err(_) => DeviceKind::Gpu(0),
        };
        CudaBackend::open(kind)
    }

    /// Opens `kind`: a GPU, or the emulator that runs the same kernels on the CPU (slowly; for tests and
    /// debugging — see docs/kernels.md for what it does and does not model). Then runs the self-check
    /// (every kernel family once against the CPU; `LCM_SKIP_SELF_CHECK=1` skips it): a device that
    /// computes wrong results is an error naming the family, never silently used.
    pub fn open(kind: DeviceKind) -> Result<CudaBackend> {
        let dev = Device::open(kind)?;
        let limits = Limits { sm_count: dev.sm_count, smem_optin: dev.smem_optin };
        let graphs = std::env::var("LCM_CUDA_GRAPHS").map_or(true, |v| v != "0");
        let backend = CudaBackend { dev, limits, precision: Precision::F16, graphs };
        if std::env::var("LCM_SKIP_SELF_CHECK").map_or(true, |v| v != "1") {
            backend.self_check()?;
        }
        Ok(backend)
    }

    /// Another backend on the same device (context, module, allocation counters): cheap, unlike `open`,
    /// which loads the kernels again. Its precision and CUDA-graph setting start as this one's.
    pub fn share(&self) -> CudaBackend {
        self.with_precision(self.precision)
    }

    /// [`CudaBackend::share`] with activations and weights stored in `precision`: f32 runs a model that
    /// overflows in f16 (a `force_upcast` VAE) on the f32 instantiations of the kernels it needs
    /// (GEMM and attention on tf32 tensor cores, GroupNorm, element-wise). Other families refuse f32.
    pub fn with_precision(&self, precision: Precision) -> CudaBackend {
        CudaBackend { dev: self.dev.clone(), limits: self.limits, precision, graphs: self.graphs }
    }

    /// The device limits the launch planners read (what `cuda::plan_launches` takes).
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// What this backend stores activations and weights in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether this backend runs on the kernel emulator rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        self.dev.is_emulated()
    }

    /// e.g. "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs)", or "emulated (sm_80 model, 4 SMs)".
    pub fn device_name(&self) -> String {
        let kind = if self.is_emulated() { " model" } else { "" };
        format!("{} (sm_{}{}{kind}, {} SMs)", self.dev.name, self.dev.cc.0, self.dev.cc.1, self.dev.sm_count)
    }

    /// How many device allocations this backend has made so far (weights, arenas, scratch, LoRA slots).
    /// A second run of the same executor must not move it.
    pub fn device_allocations(&self) -> u64 {
        self.dev.allocations()
    }

    /// (host -> device, device -> host) copies so far on this device: a generation's are a fixed few,
    /// however many steps it runs.
    pub fn transfers(&self) -> (u64, u64) {
        self.dev.transfers()
    }

    /// Device -> device copies so far on this device (a prepared LoRA swap is one).
    pub fn device_copies(&self) -> u64 {
        self.dev.device_copies()
    }

    /// Runs recorded so far (a graph walked into launches and captured): a repeated generation of the
    /// same shape must not add any.
    pub fn recordings(&self) -> u64 {
        self.dev.recordings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes currently allocated on the device through this backend.
    pub fn device_bytes(&self) -> u64 {
        self.dev.live_bytes()
    }

    /// Caps the bytes this device's allocations may hold at once (`None`: only the device's own size).
    /// An allocation past it fails as one past the device's memory does: an `Error`, after which the
    /// backend and the pipelines on it stay usable.
    pub fn set_device_memory_limit(&self, bytes: Option<u64>) {
        self.dev.set_memory_limit(bytes);
    }

    /// Capture runs as CUDA graphs (the default) or replay the recorded launch list one by one.
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = on;
    }

    /// Waits for all queued work; reports a failed kernel.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// Fills the whole arena with NaN (all-ones bits: NaN in f16 and in f32), so a test sees any element
    /// a kernel failed to write.
    pub fn poison(&self, arena: &CudaArena) -> Result<()> {
        arena.buf.fill_u16(0, 0xFFFF, arena.buf.bytes / 2)
    }

    /// Enqueues recorded steps on the stream (directly, or inside a capture). The caller has bound the
    /// context, so only stream work happens here — safe inside a capture.
    pub(crate) fn enqueue(&self, steps: &[Step]) -> Result<()> {
        for s in steps {
            match *s {
                Step::Kernel(ref l) => self.launch(l)?,
                // SAFETY: `ptr` is inside the scratch buffer the recorder sized for it.
                Step::Zero32 { ptr, words } => unsafe { self.dev.zero_d32(ptr, words)? },
            }
        }
        Ok(())
    }

    pub(crate) fn launch(&self, l: &launch::Launch) -> Result<()> {
        // SAFETY: launches are only built by the `launch` planners from addresses of live buffers of
        // this backend (the device checks the parameter struct against the kernel).
        unsafe { self.dev.launch(l) }
    }

    /// Identifies what a recording depends on: the graph (by identity and op sequence), the plan, the
    /// arena and every weight's device address (a re-uploaded weight or an attached LoRA changes it).
    fn fingerprint(&self, program: &Program, weights: &[&CudaWeight], arena: &CudaArena) -> u64 {
        let (graph, plan) = (&program.graph, &program.plan);
        let mut h = DefaultHasher::new();
        // The op list's heap address, not the Graph's: an Executor may move, its op list does not.
        let ops = graph.ops.as_ptr() as usize;
        (ops, graph.ops.len(), graph.tensors.len(), plan.size, arena.buf.ptr, self.graphs, self.precision).hash(&mut h);
        for op in &graph.ops {
            (std::mem::discriminant(op), op.output()).hash(&mut h);
        }
        for w in weights {
            (w.buf.ptr, w.lora.as_ref().map(|l| Arc::as_ptr(l) as usize)).hash(&mut h);
        }
        h.finish()
    }
}

impl Backend for CudaBackend {
    type Weight = CudaWeight;
    type Arena = CudaArena;
    type LoraImage = LoraImage;

    fn name(&self) -> &'static str {
        if self.is_emulated() {
            "cuda (emulated)"
        } else {
            "cuda"
        }
    }

    fn act_bytes(&self) -> usize {
        self.precision.bytes()
    }

    fn memory_available(&self) -> Option<u64> {
        self.dev.available()
    }

    fn f32_activations(&self) -> Option<CudaBackend> {
        (self.precision != Precision::F32).then(|| self.with_precision(Precision::F32))
    }

    fn upload_weight(&self, spec: &WeightSpec, data: &[f32]) -> Result<CudaWeight> {
        let numel = stored_numel(spec, data)?;
        let buf = DeviceBuffer::alloc(&self.dev, numel * self.precision.bytes())?;
        self.store(&buf, spec, data)?;
        Ok(CudaWeight { buf, spec: spec.clone(), lora: None })
    }

    fn update_weight(&self, w: &mut CudaWeight, spec: &WeightSpec, data: &[f32]) -> Result<()> {
        if *spec != w.spec {
            return Err(Error::invalid(&spec.name, format!("updating the weight stored for {}", w.spec.name)));
        }
        self.store(&w.buf, spec, data)
    }

    fn supports_unmerged_lora(&self) -> bool {
        self.precision == Precision::F16
    }

    fn attach_loras(
        &self,
        weights: &mut [CudaWeight],
        specs: &[WeightSpec],
        targets: &[usize],
        max_rank: usize,
    ) -> Result<()> {
        let target_specs: Vec<WeightSpec> = targets.iter().map(|&i| specs[i].clone()).collect();
        for (&i, slot) in targets.iter().zip(self.lora_slots(&target_specs, max_rank)?) {
            weights[i].attach_lora(&slot)?;
        }
        Ok(())
    }

    fn set_lora(&self, w: &CudaWeight, spec: &WeightSpec, lora: Option<&LoraDelta>) -> Result<()> {
        self.fill_lora(slot_of(w, spec)?, lora)
    }

    fn lora_image(&self, slots: &[(&CudaWeight, &WeightSpec, Option<&LoraDelta>)]) -> Result<LoraImage> {
        let buffers =
            slots.iter().map(|&(w, spec, lora)| Ok((&**slot_of(w, spec)?, lora))).collect::<Result<Vec<_>>>()?;
        self.prepare_lora_image(&buffers)
    }

    fn load_lora_image(&self, image: &LoraImage) -> Result<()> {
        self.copy_lora_image(image)
    }

    fn alloc_arena(&self, bytes: usize) -> Result<CudaArena> {
        Ok(CudaArena { buf: DeviceBuffer::alloc(&self.dev, bytes)?, scratch: None, recorded: None })
    }

    fn write(&self, arena: &mut CudaArena, offset: usize, elem: Elem, data: HostData<'_>) -> Result<()> {
        match (elem, data) {
            (Elem::Act, HostData::F32(d)) if self.precision == Precision::F16 => {
                let h: Vec<f16> = d.iter().map(|&v| f16::from_f32(v)).collect();
                arena.buf.upload(offset, &h)
            }
            (_, HostData::F32(d)) => arena.buf.upload(offset, d),
            (_, HostData::I32(d)) => arena.buf.upload(offset, d),
        }
    }

    fn read(&self, arena: &CudaArena, offset: usize, elem: Elem, out: &mut [f32]) -> Result<()> {
        if elem == Elem::Act && self.precision == Precision::F16 {
            let mut h = vec![f16::ZERO; out.len()];
            arena.buf.download(offset, &mut h)?;
            for (o, v) in out.iter_mut().zip(&h) {
                *o = v.to_f32();
            }
        } else {
            arena.buf.download(offset, out)?;
        }
        // Only a run with token ids has a status word worth a second download.
        let has_status =
            arena.recorded.as_ref().is_some_and(|r| r.steps.iter().any(|s| matches!(s, Step::Zero32 { .. })));
        if let (Some(s), true) = (&arena.scratch, has_status) {
            let mut status = [0i32; 2];
            s.download(0, &mut status)?;
            if status[0] != 0 {
                s.upload(0, &[0i32; 2])?;
                return Err(Error::invalid("token ids", format!("id {} is outside the embedding table", status[1])));
            }
        }
        Ok(())
    }

    fn copy(
        &self,
        src: &CudaArena,
        src_offset: usize,
        dst: &mut CudaArena,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        dst.buf.copy_from(dst_offset, &src.buf, src_offset, bytes)
    }

    /// Queues the whole graph (one CUDA-graph replay after the first run): `watch` is not called.
    fn run(
        &self,
        program: &Program,
        weights: &[&CudaWeight],
        arena: &mut CudaArena,
        _watch: Option<&mut dyn FnMut(usize) -> Result<()>>,
    ) -> Result<()> {
        self.dev.bind()?;
        let key = self.fingerprint(program, weights, arena);
        if arena.recorded.as_ref().map(|r| r.key) != Some(key) {
            arena.recorded = None;
            let mut rec = Recorder::new(self, program, weights, arena.buf.ptr);
            let need = STATUS_BYTES + rec.scratch_bytes()?;
            if arena.scratch.as_ref().is_none_or(|s| s.bytes < need) {
                arena.scratch = None;
                let s = DeviceBuffer::alloc(&self.dev, need)?;
                s.upload(0, &[0i32; 2])?;
                arena.scratch = Some(s);
            }
            let scratch = arena.scratch.as_ref().expect("allocated above").ptr;
            let steps = rec.record(scratch)?;
            let exec = if self.graphs { Some(GraphExec::capture(&self.dev, || self.enqueue(&steps))?) } else { None };
            arena.recorded = Some(Recorded { key, steps, exec });
            self.dev.recordings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let r = arena.recorded.as_ref().expect("recorded above");
        match &r.exec {
            Some(e) => e.launch(),
            None => self.enqueue(&r.steps),
        }
    }
}

impl CudaBackend {
    /// Writes `data` (torch layout, f32) into `buf` in this backend's precision and the weight's layout.
    fn store(&self, buf: &DeviceBuffer, spec: &WeightSpec, data: &[f32]) -> Result<()> {
        match self.precision {
            Precision::F16 => buf.upload(0, &stored_layout::<f16>(spec, data)?),
            Precision::F32 => buf.upload(0, &stored_layout::<f32>(spec, data)?),
        }
    }
}

/// The LoRA buffers attached to `w`.
fn slot_of<'w>(w: &'w CudaWeight, spec: &WeightSpec) -> Result<&'w Arc<LoraBuffers>> {
    w.lora.as_ref().ok_or_else(|| Error::invalid(&spec.name, "has no LoRA buffers (attach_loras first)"))
}

/// Elements of `spec` as stored (GEMM weights pad their input channels to 8), after checking `data`.
fn stored_numel(spec: &WeightSpec, data: &[f32]) -> Result<usize> {
    let numel: usize = spec.shape.iter().product();
    if data.len() != numel {
        return Err(Error::invalid(&spec.name, format!("{} values for shape {:?}", data.len(), spec.shape)));
    }
    match (spec.kind, spec.shape.as_slice()) {
        (WeightKind::Conv, &[co, ci, kh, kw]) => Ok(co * kh * kw * gemm::padded_channels(ci)),
        (WeightKind::Linear, &[n, k]) => Ok(n * gemm::padded_channels(k)),
        (WeightKind::Conv | WeightKind::Linear, s) => {
            Err(Error::invalid(&spec.name, format!("{:?} weight of shape {s:?}", spec.kind)))
        }
        (WeightKind::Plain, _) => Ok(numel),
    }
}

/// A weight in the layout its kernels read: GEMM weights `[co, kh, kw, cip]`, the rest as given, in `T`.
fn stored_layout<T: gemm::Stored>(spec: &WeightSpec, data: &[f32]) -> Result<Vec<T>> {
    stored_numel(spec, data)?;
    Ok(match (spec.kind, spec.shape.as_slice()) {
        (WeightKind::Conv, &[co, ci, kh, kw]) => gemm::gemm_weight_layout(data, co, ci, kh, kw),
        (WeightKind::Linear, &[n, k]) => gemm::gemm_weight_layout(data, n, k, 1, 1),
        _ => data.iter().map(|&v| T::from_f32(v)).collect(),
    })
}

/// Kernels every test and bench can name without a GPU: the number of instantiations compiled.
pub fn kernel_names() -> Vec<&'static str> {
    Kernel::ALL.iter().map(|k| k.name()).collect()
}
