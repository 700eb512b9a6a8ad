//! Shared by the GPU tests: open the CUDA backend or say why not, random weights and inputs, and one
//! graph run on both the CUDA backend and the CPU reference.
#![allow(dead_code)]

use lcm::cuda::CudaBackend;
use lcm_core::{rel_l2, Backend, Elem, Executor, Graph, HostData, ModelWeights, WeightKind, WeightSpec};
use lcm_cpu::CpuBackend;

/// The GPU test runner (these test files use `harness = false`). libtest has no run-time skip: a test
/// that returns early without a GPU would be counted as passed. Here, without a CUDA backend, the whole
/// suite prints one `SKIPPED` line with the reason and runs nothing; with one, each test gets a fresh
/// backend and a libtest-style `test NAME ... ok|FAILED` line. Free arguments filter by name (a test
/// runs when its name contains any of them; as with libtest, a filter may match nothing, and the
/// device scripts count "0 passed" as a failure). libtest's own options are accepted and ignored —
/// with their values, so `--test-threads 2` does not become a filter "2" — and tests run one after
/// another.
/// A named GPU test: it gets its own freshly opened backend.
pub type GpuTest<'a> = (&'a str, fn(CudaBackend));

pub fn run_gpu_tests(suite: &str, tests: &[GpuTest]) -> std::process::ExitCode {
    use std::process::ExitCode;
    if let Err(e) = CudaBackend::new() {
        println!("SKIPPED: {suite}: {} GPU tests not run: no CUDA backend here ({e})", tests.len());
        return ExitCode::SUCCESS;
    }
    let filters = name_filters(std::env::args().skip(1));
    let (mut passed, mut failed) = (0, Vec::new());
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let be = CudaBackend::new().expect("the CUDA backend opened a moment ago");
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(be))).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok {
            passed += 1;
        } else {
            failed.push(*name);
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!("test result: {verdict}. {passed} passed; {} failed ({suite})", failed.len());
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
                Elem::Act => Input::F32(rng.vec(d.numel(), 1.0)),
                Elem::I32 => Input::I32((0..d.numel()).map(|_| (rng.next_u64() % vocab as u64) as i32).collect()),
            }
        })
        .collect()
}

pub fn upload<B: Backend>(be: &B, specs: &[WeightSpec], data: &[Vec<f32>]) -> ModelWeights<B> {
    let weights = specs.iter().zip(data).map(|(s, d)| be.upload_weight(s, d).expect("upload weight")).collect();
    ModelWeights { specs: specs.to_vec(), weights }
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

    /// Poisons the GPU arena with NaN, writes `inputs` to both, runs both, and returns the relative L2
    /// error of every output (CUDA against CPU).
    pub fn run(&mut self, inputs: &[Input]) -> Vec<f64> {
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
                rel_l2(&g, &c)
            })
            .collect()
    }

    pub fn gpu_output(&self, i: usize) -> Vec<f32> {
        self.ge.output(self.gpu, i).expect("GPU output")
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

/// Runs `g` on fresh random inputs and weights and checks every output against the CPU.
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
    let mut pair = Pair::new(gpu, g, &mut rng);
    for (i, e) in pair.run(&inputs).into_iter().enumerate() {
        println!("{what}: output {i}: rel L2 {e:.2e}");
        assert!(e < TOL, "{what}: output {i}: rel L2 {e:.3e} (limit {TOL:.0e})");
    }
}
