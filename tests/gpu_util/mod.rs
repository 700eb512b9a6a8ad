//! Shared by the GPU tests: the device they run on (a GPU, or the kernel emulator), random weights and
//! inputs, and one graph run on both the CUDA backend and the CPU reference.
#![allow(dead_code)]

pub mod recorded;

use std::cell::RefCell;
use std::io::Write;
use std::sync::OnceLock;

use lcm::cuda::{CudaBackend, DeviceKind, Precision};
use lcm_core::{rel_l2, Backend, Elem, Executor, Graph, HostData, ModelWeights, WeightKind, WeightSpec};
use lcm_cpu::CpuBackend;

/// The suite's backend, opened once (one context and one loaded module per suite); every test gets a
/// `share()` of it.
static SUITE: OnceLock<Suite> = OnceLock::new();

struct Suite {
    kind: DeviceKind,
    backend: CudaBackend,
}

/// The device the suite runs on: `$LCM_TEST_DEVICE` = `gpu` (GPU 0 or `$LCM_CUDA_DEVICE`) or `emulated`;
/// unset, the GPU when one opens, else the emulator (every CI run).
fn choose_device() -> Result<(DeviceKind, CudaBackend), String> {
    let gpu = || match std::env::var("LCM_CUDA_DEVICE").ok().map(|v| v.parse()) {
        Some(Ok(n)) => DeviceKind::Gpu(n),
        Some(Err(_)) => DeviceKind::Emulated, // LCM_CUDA_DEVICE=emulated
        None => DeviceKind::Gpu(0),
    };
    let wanted = std::env::var("LCM_TEST_DEVICE").unwrap_or_default();
    let kind = match wanted.as_str() {
        "gpu" => gpu(),
        "emulated" => DeviceKind::Emulated,
        "" => match CudaBackend::open(gpu()) {
            Ok(b) => return Ok((gpu(), b)),
            Err(_) => DeviceKind::Emulated,
        },
        other => return Err(format!("LCM_TEST_DEVICE={other}: expected `gpu` or `emulated`")),
    };
    CudaBackend::open(kind).map(|b| (kind, b)).map_err(|e| e.to_string())
}

/// A backend on the suite's device (each test gets its own; a test may take more).
pub fn backend() -> CudaBackend {
    SUITE.get().expect("run_gpu_tests opened the device").backend.share()
}

/// Whether the suite runs on the emulator: tests then shrink what would take minutes on the CPU.
pub fn emulated() -> bool {
    SUITE.get().is_some_and(|s| s.kind == DeviceKind::Emulated)
}

thread_local! {
    /// Failed cases of the running test: `check` records each and goes on, so one run lists them all.
    static FAILURES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records a failed case of the running test (the test goes on; the runner fails it at the end).
pub fn fail_case(line: String) {
    println!("FAILED case: {line}");
    FAILURES.with(|f| f.borrow_mut().push(line));
}

/// The GPU test runner (these test files use `harness = false`). libtest has no run-time skip: a test
/// that returns early without a GPU would be counted as passed. Here the suite runs on the GPU, or on
/// the kernel emulator where there is none, and says which; only when neither opens (a build without
/// nvcc) does it print one `SKIPPED` line with the reason. The device is opened once per suite and each
/// test gets a share of it; its name is printed before it runs (a hang or a fault still names it), then a libtest-style `test NAME ...
/// ok|FAILED` line with every failed case listed. Free arguments filter by name (a test runs when its
/// name contains any of them; as with libtest, a filter may match nothing, and the device scripts count
/// "0 passed" as a failure). libtest's own options are accepted and ignored — with their values, so
/// `--test-threads 2` does not become a filter "2" — and tests run one after another.
/// A named GPU test: it gets a backend on the suite's device.
pub type GpuTest<'a> = (&'a str, fn(CudaBackend));

pub fn run_gpu_tests(suite: &str, tests: &[GpuTest]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (kind, opened) = match choose_device() {
        Ok(k) => k,
        // The emulator is part of every build with the CUDA headers: failing to open it (its start-up
        // self-check found a wrong kernel) fails the suite; only a build without it may skip.
        Err(e) if lcm::cuda::emulator_built() => {
            println!("{suite}: the CUDA backend did not open: {e}");
            println!("test result: FAILED. 0 passed; {} failed ({suite})", tests.len());
            return ExitCode::FAILURE;
        }
        Err(e) => {
            println!("SKIPPED: {suite}: {} GPU tests not run: no CUDA backend here ({e})", tests.len());
            return ExitCode::SUCCESS;
        }
    };
    if SUITE.set(Suite { kind, backend: opened }).is_err() {
        panic!("run_gpu_tests runs once per process");
    }
    let device = backend().device_name();
    println!("{suite}: running on {device}");
    let filters = name_filters(std::env::args().skip(1));
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("running {name}");
        let _ = std::io::stdout().flush();
        FAILURES.with(|f| f.borrow_mut().clear());
        let start = std::time::Instant::now();
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(backend()))).is_ok();
        let cases = FAILURES.with(|f| std::mem::take(&mut *f.borrow_mut()));
        let ok = finished && cases.is_empty();
        println!("test {name} ... {} ({:.1} s)", if ok { "ok" } else { "FAILED" }, start.elapsed().as_secs_f64());
        for c in &cases {
            println!("    failed case: {c}");
        }
        if ok {
            passed += 1;
        } else {
            failed.push(*name);
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!("test result: {verdict}. {passed} passed; {} failed ({suite} on {device})", failed.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

/// The free arguments of a test command line, skipping libtest's options and the values of those
/// that take one.
pub fn name_filters(mut args: impl Iterator<Item = String>) -> Vec<String> {
    const WITH_VALUE: &[&str] = &["--test-threads", "--skip", "--logfile", "--format", "--color", "-Z"];
    let mut filters = Vec::new();
    while let Some(a) = args.next() {
        if WITH_VALUE.contains(&a.as_str()) {
            args.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    filters
}

/// xorshift64*: deterministic per seed, different for every test that picks its own seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Approximately standard normal (sum of four uniforms, rescaled): enough for test data.
    pub fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Random weights scaled so activations stay O(1): GEMM weights by 1/sqrt(fan-in), the rest uniform.
pub fn random_weight(spec: &WeightSpec, rng: &mut Rng) -> Vec<f32> {
    let n: usize = spec.shape.iter().product();
    match spec.kind {
        WeightKind::Linear | WeightKind::Conv => {
            let fan_in: usize = spec.shape[1..].iter().product();
            rng.vec(n, 1.0 / (fan_in as f32).sqrt())
        }
        WeightKind::Plain => (0..n).map(|_| rng.uniform()).collect(),
    }
}

/// An input of the graph: f32 activations, or token ids below `vocab`.
pub enum Input {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl Input {
    fn host(&self) -> HostData<'_> {
        match self {
            Input::F32(v) => HostData::F32(v),
            Input::I32(v) => HostData::I32(v),
        }
    }
}

/// Random inputs for every input of `g` (ids uniform below `vocab`).
pub fn random_inputs(g: &Graph, rng: &mut Rng, vocab: usize) -> Vec<Input> {
    g.inputs
        .iter()
        .map(|&t| {
            let d = &g.tensors[t];
            match d.elem {
                Elem::Act | Elem::F32 => Input::F32(rng.vec(d.numel(), 1.0)),
                Elem::I32 => Input::I32((0..d.numel()).map(|_| (rng.next_u64() % vocab as u64) as i32).collect()),
            }
        })
        .collect()
}

pub fn upload<B: Backend>(be: &B, specs: &[WeightSpec], data: &[Vec<f32>]) -> ModelWeights<B> {
    let weights = specs.iter().zip(data).map(|(s, d)| be.upload_weight(s, d).expect("upload weight")).collect();
    ModelWeights::new(specs.to_vec(), weights)
}

/// Both backends with the same weights, ready to run one graph.
pub struct Pair<'a> {
    pub gpu: &'a CudaBackend,
    pub cpu: CpuBackend,
    pub gw: ModelWeights<CudaBackend>,
    pub cw: ModelWeights<CpuBackend>,
    pub ge: Executor<CudaBackend>,
    pub ce: Executor<CpuBackend>,
}

impl<'a> Pair<'a> {
    pub fn new(gpu: &'a CudaBackend, g: Graph, rng: &mut Rng) -> Pair<'a> {
        let data: Vec<Vec<f32>> = g.weights.iter().map(|s| random_weight(s, rng)).collect();
        Self::with_weights(gpu, g, &data)
    }

    pub fn with_weights(gpu: &'a CudaBackend, g: Graph, data: &[Vec<f32>]) -> Pair<'a> {
        let cpu = CpuBackend::new();
        let gw = upload(gpu, &g.weights, data);
        let cw = upload(&cpu, &g.weights, data);
        let ge = Executor::new(gpu, g.clone(), &gw).expect("CUDA executor");
        let ce = Executor::new(&cpu, g, &cw).expect("CPU executor");
        Pair { gpu, cpu, gw, cw, ge, ce }
    }

    /// Poisons the GPU arena with NaN, writes `inputs` to both, runs both, and compares every output
    /// (CUDA against CPU).
    pub fn run(&mut self, inputs: &[Input]) -> Vec<Diff> {
        self.gpu.poison(self.ge.arena()).expect("poison");
        for (i, x) in inputs.iter().enumerate() {
            self.ge.set_input(self.gpu, i, x.host()).expect("GPU input");
            self.ce.set_input(&self.cpu, i, x.host()).expect("CPU input");
        }
        self.ge.run(self.gpu, &self.gw).expect("GPU run");
        self.ce.run(&self.cpu, &self.cw).expect("CPU run");
        (0..self.ge.graph().outputs.len())
            .map(|i| {
                let g = self.ge.output(self.gpu, i).expect("GPU output");
                let c = self.ce.output(&self.cpu, i).expect("CPU output");
                Diff::of(&g, &c)
            })
            .collect()
    }

    /// The kernels the GPU run launched, with their geometry.
    pub fn kernels(&self) -> String {
        let mut k = self.ge.arena().recorded_kernels();
        k.dedup();
        k.join("; ")
    }

    pub fn gpu_output(&self, i: usize) -> Vec<f32> {
        self.ge.output(self.gpu, i).expect("GPU output")
    }
}

/// How a GPU output differs from the CPU's.
#[derive(Debug, Clone, Copy)]
pub struct Diff {
    pub rel_l2: f64,
    pub max_abs: f32,
    /// NaNs in the GPU output: an element never written (the arena was poisoned) or a real NaN.
    pub nans: usize,
}

impl Diff {
    pub fn of(gpu: &[f32], cpu: &[f32]) -> Diff {
        let max_abs = gpu.iter().zip(cpu).map(|(a, b)| (a - b).abs()).filter(|d| !d.is_nan()).fold(0.0, f32::max);
        Diff { rel_l2: rel_l2(gpu, cpu), max_abs, nans: gpu.iter().filter(|v| v.is_nan()).count() }
    }

    pub fn ok(&self) -> bool {
        self.rel_l2 < TOL && self.nans == 0
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rel L2 {:.2e}, max |err| {:.2e}, NaN {}", self.rel_l2, self.max_abs, self.nans)
    }
}

pub const TOL: f64 = 1e-2;

/// `LCM_GPU_TESTS_REDUCED=1` (compute-sanitizer memcheck, where kernels run 10-100x slower) keeps only
/// cases under 50 M multiply-accumulates and 2 M activation elements; `=2` (racecheck, slower still)
/// under 5 M and 300 k.
pub fn too_big_for_reduced_run(g: &Graph, what: &str) -> bool {
    let (macs, elems) = match std::env::var("LCM_GPU_TESTS_REDUCED").as_deref() {
        Ok("1") => (50_000_000, 2_000_000),
        Ok("2") => (5_000_000, 300_000),
        _ => return false,
    };
    let largest =
        g.tensors.iter().filter(|t| t.storage == lcm_core::Storage::Activation).map(|t| t.numel()).max().unwrap_or(0);
    let big = g.macs() > macs || largest > elems;
    if big {
        println!("{what}: left out of the reduced run");
    }
    big
}

/// The input shapes of `g`, for failure lines.
pub fn input_shapes(g: &Graph) -> String {
    let shapes: Vec<String> = g.inputs.iter().map(|&t| format!("{:?}", g.tensors[t].shape)).collect();
    shapes.join(" ")
}

/// Runs `g` on fresh random inputs and weights and checks every output against the CPU; a failing
/// output is recorded (with shapes, kernels and geometry) and the test goes on to its next case.
pub fn check(gpu: &CudaBackend, g: Graph, seed: u64, what: &str) {
    if too_big_for_reduced_run(&g, what) {
        return;
    }
    let mut rng = Rng::new(seed);
    let vocab = g
        .ops
        .iter()
        .find_map(|op| match *op {
            lcm_core::Op::Embed { table, .. } => Some(g.tensors[table].shape[0]),
            _ => None,
        })
        .unwrap_or(1);
    let inputs = random_inputs(&g, &mut rng, vocab);
    let shapes = input_shapes(&g);
    let mut pair = Pair::new(gpu, g, &mut rng);
    let diffs = pair.run(&inputs);
    // A backend with f32 activations must never hand its tensors to an f16 kernel.
    if gpu.precision() == Precision::F32 && pair.kernels().contains("f16") {
        fail_case(format!("{what}: an f16 kernel ran on f32 activations: {}", pair.kernels()));
    }
    for (i, d) in diffs.into_iter().enumerate() {
        println!("{what}: output {i}: {d}");
        if !d.ok() {
            fail_case(format!(
                "{what}: inputs {shapes}: output {i}: {d} (limit {TOL:.0e}); kernels: {}",
                pair.kernels()
            ));
        }
    }
}

/// On the emulator, the most multiply-accumulates one case may cost (about a second of emulated work),
/// and the most elements a memory-bound case may touch.
pub const EMULATED_MACS: u64 = 150_000_000;
pub const EMULATED_ELEMENTS: u64 = 4_000_000;

/// On the emulator, halves every dimension in `dims` (rounding up, never below its `min`) until
/// `cost(dims)` fits `budget`; channel counts, heads and kernel sizes are left out of `dims`, so the
/// same kernels and tile paths run as at full size. On a GPU, `dims` as given.
pub fn fit<const N: usize>(
    dims: [usize; N],
    mins: [usize; N],
    budget: u64,
    cost: impl Fn([usize; N]) -> u64,
) -> [usize; N] {
    let mut d = dims;
    while emulated() && cost(d) > budget && d.iter().zip(&mins).any(|(v, m)| v > m) {
        for (v, m) in d.iter_mut().zip(&mins) {
            *v = v.div_ceil(2).max(*m);
        }
    }
    d
}
