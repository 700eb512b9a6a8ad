//! The CPU GEMM at SD1.5's shapes (batch 1), both ways the backend could run a layer: the packed GEMM
//! (`lcm_cpu::packed`: B packed once at load, bias in the epilogue), which the backend uses, and the
//! `gemm` crate (B packed on every call, the bias a second pass), which only the convolutions with fewer
//! than 16 output channels use, with achieved GFLOP/s. A convolution appears as the GEMM of one gathered patch block (pixels × kh·kw·Ci)
//! against its `[K, Co]` weight; a linear layer's weight is torch's `[out, in]`, read transposed, as the
//! backend reads it. This is the measurement behind that split (docs/BENCH_LOG.md).
//!
//! `cargo bench -p lcm-cpu --bench gemm` runs criterion on every case; `LCM_BENCH_QUICK=1` prints one
//! table (median of 5 calls per case after one warm-up, both GEMMs in the same run, their ratio); an
//! argument keeps only the cases whose name contains it.

mod common;

use criterion::{Criterion, Throughput};
use lcm_cpu::gemm::{gemm as crate_gemm, MatRef};
use lcm_cpu::packed::{gemm, Epilogue, PackedB};

/// (name, M, K, N); a name with "conv" is a convolution, the others are linear layers.
const CASES: &[(&str, usize, usize, usize)] = &[
    ("unet conv 320 64x64", 4096, 2880, 320),
    ("unet conv 640 32x32", 1024, 5760, 640),
    ("unet conv 640 16x16", 256, 5760, 640),
    ("unet conv 1280 16x16", 256, 11520, 1280),
    ("unet conv 1280 8x8", 64, 11520, 1280),
    ("unet conv 1280 4x4", 16, 11520, 1280),
    ("unet conv 1x1 1024x320", 1024, 320, 320),
    ("vae conv 1x1 512>256", 2048, 512, 256),
    ("vae conv_out 128>3", 2048, 1152, 3),
    ("vae conv 512 block", 2048, 4608, 512),
    ("unet linear 4096x320", 4096, 320, 320),
    ("unet ff.2 1024x2560", 1024, 2560, 640),
    ("unet linear 256x1280", 256, 1280, 1280),
    ("unet linear 64x1280", 64, 1280, 1280),
    ("unet geglu 256x10240", 256, 1280, 10240),
    ("clip fc1 77x3072", 77, 768, 3072),
];

struct Inputs {
    a: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    packed: PackedB,
    c: Vec<f32>,
}

/// Whether case `name` is a linear layer (weight `[n, k]`, read transposed) rather than a convolution.
fn linear(name: &str) -> bool {
    !name.contains("conv")
}

/// B's strides (rs, cs) in `w`: `[k, n]` row-major for a convolution, `[n, k]` transposed for a linear.
fn strides(name: &str, k: usize, n: usize) -> (usize, usize) {
    if linear(name) {
        (1, k)
    } else {
        (n, 1)
    }
}

fn inputs(name: &str, m: usize, k: usize, n: usize) -> Inputs {
    let w = common::fill(k * n, 5);
    let (rs, cs) = strides(name, k, n);
    let packed = PackedB::new(k, n, &w, rs, cs);
    Inputs { a: common::fill(m * k, 7), w, bias: common::fill(n, 3), packed, c: vec![0.0; m * n] }
}

fn packed_call(m: usize, x: &mut Inputs) {
    gemm(m, &x.a, x.packed.k(), &x.packed, &mut x.c, Epilogue { bias: Some(&x.bias), residual: None });
}

/// The crate's way: B packed inside the call, then the bias as a second pass.
fn crate_call(name: &str, m: usize, k: usize, n: usize, x: &mut Inputs) {
    let (rs, cs) = strides(name, k, n);
    crate_gemm(m, n, k, MatRef { data: &x.a, rs: k, cs: 1 }, MatRef { data: &x.w, rs, cs }, &mut x.c);
    x.c.chunks_mut(n).for_each(|row| row.iter_mut().zip(&x.bias).for_each(|(o, b)| *o += b));
}

fn quick(filter: &str) {
    println!("{:<24} {:>10} {:>9} {:>10} {:>9} {:>8}", "case", "packed ms", "GFLOP/s", "crate ms", "GFLOP/s", "ratio");
    for &(name, m, k, n) in CASES.iter().filter(|c| c.0.contains(filter)) {
        let mut x = inputs(name, m, k, n);
        let flops = 2.0 * (m * k * n) as f64;
        let p = common::median_s(|| packed_call(m, &mut x));
        let g = common::median_s(|| crate_call(name, m, k, n, &mut x));
        println!(
            "{name:<24} {:>10.2} {:>9.1} {:>10.2} {:>9.1} {:>8.2}",
            p * 1e3,
            flops / p / 1e9,
            g * 1e3,
            flops / g / 1e9,
            p / g
        );
    }
}

fn main() {
    if let Some(filter) = common::quick_filter() {
        return quick(&filter);
    }
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mut group = c.benchmark_group("cpu_gemm");
    for &(name, m, k, n) in CASES {
        let mut x = inputs(name, m, k, n);
        group.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        group.bench_function(format!("packed {name}"), |b| b.iter(|| packed_call(m, &mut x)));
        group.bench_function(format!("gemm crate {name}"), |b| b.iter(|| crate_call(name, m, k, n, &mut x)));
    }
    group.finish();
    c.final_summary();
}
