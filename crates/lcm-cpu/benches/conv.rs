//! The CPU's 3x3 convolutions at SD1.5's UNet, VAE-decoder and TAESD shapes (batch 1), both ways the
//! backend can run one: the packed GEMM over gathered patches (`lcm_cpu::conv`) and Winograd F(4x4, 3x3) (`lcm_cpu::winograd`, its weight transformed once, the bias in the output
//! transform). GFLOP/s are the direct convolution's multiply-adds over the time, for both, so the
//! ratio is the speed-up. This is the measurement behind `winograd::applies` (docs/BENCH_LOG.md).
//!
//! `cargo bench -p lcm-cpu --bench conv` runs criterion on every case; `LCM_BENCH_QUICK=1` prints one
//! table (median of 5 calls per case after one warm-up, both ways in the same run, their ratio); an
//! argument keeps only the cases whose name contains it.

mod common;

use criterion::{Criterion, Throughput};
use lcm_cpu::conv::{conv2d, pack_weight, ConvShape, GemmWeight};
use lcm_cpu::packed::Epilogue;
use lcm_cpu::winograd::{self, WinogradWeight};

/// (name, side, Ci, Co): a side × side image, 3x3, stride 1, pad 1.
const CASES: &[(&str, usize, usize, usize)] = &[
    ("unet 320 64x64", 64, 320, 320),
    ("unet 320 32x32", 32, 320, 320),
    ("unet 640 32x32", 32, 640, 640),
    ("unet 640 16x16", 16, 640, 640),
    ("unet 1280 16x16", 16, 1280, 1280),
    ("unet 1280 8x8", 8, 1280, 1280),
    ("vae 512 64x64", 64, 512, 512),
    ("vae 256 128x128", 128, 256, 256),
    ("vae 128 256x256", 256, 128, 128),
    ("taesd 64 64x64", 64, 64, 64),
];

struct Inputs {
    s: ConvShape,
    x: Vec<f32>,
    gemm_w: GemmWeight,
    winograd_w: WinogradWeight,
    bias: Vec<f32>,
    out: Vec<f32>,
}

fn inputs(side: usize, ci: usize, co: usize) -> Inputs {
    let s = ConvShape {
        batch: 1,
        h: side,
        w: side,
        ci,
        ho: side,
        wo: side,
        co,
        kh: 3,
        kw: 3,
        stride: 1,
        pad: [1; 4],
        geglu: false,
    };
    let gemm_w = pack_weight(&common::fill(co * ci * 9, 5), co, ci, 3, 3);
    let winograd_w = WinogradWeight::new(&gemm_w, ci, co);
    Inputs {
        s,
        x: common::fill(side * side * ci, 7),
        gemm_w,
        winograd_w,
        bias: common::fill(co, 3),
        out: vec![0.0; side * side * co],
    }
}

fn gemm_call(x: &mut Inputs) {
    conv2d(&x.s, &x.x, &x.gemm_w, &mut x.out, Epilogue { bias: Some(&x.bias), residual: None });
}

fn winograd_call(x: &mut Inputs) {
    winograd::conv2d(&x.s, &x.x, &x.winograd_w, &mut x.out, Epilogue { bias: Some(&x.bias), residual: None });
}

fn quick(filter: &str) {
    println!(
        "{:<18} {:>8} {:>9} {:>9} {:>12} {:>9} {:>8} {:>13}",
        "case", "applies", "gemm ms", "GFLOP/s", "winograd ms", "GFLOP/s", "ratio", "transform ms"
    );
    for &(name, side, ci, co) in CASES.iter().filter(|c| c.0.contains(filter)) {
        let mut x = inputs(side, ci, co);
        let flops = 2.0 * (side * side * 9 * ci * co) as f64;
        let g = common::median_s(|| gemm_call(&mut x));
        let w = common::median_s(|| winograd_call(&mut x));
        let transform = common::median_s(|| x.winograd_w = WinogradWeight::new(&x.gemm_w, ci, co));
        let applies = winograd::applies(&x.s);
        println!(
            "{name:<18} {applies:>8} {:>9.2} {:>9.1} {:>12.2} {:>9.1} {:>8.2} {:>13.2}",
            g * 1e3,
            flops / g / 1e9,
            w * 1e3,
            flops / w / 1e9,
            w / g,
            transform * 1e3
        );
    }
}

fn main() {
    if let Some(filter) = common::quick_filter() {
        return quick(&filter);
    }
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mut group = c.benchmark_group("cpu_conv3x3");
    for &(name, side, ci, co) in CASES {
        let mut x = inputs(side, ci, co);
        group.throughput(Throughput::Elements(2 * (side * side * 9 * ci * co) as u64));
        group.bench_function(format!("gemm {name}"), |b| b.iter(|| gemm_call(&mut x)));
        group.bench_function(format!("winograd {name}"), |b| b.iter(|| winograd_call(&mut x)));
    }
    group.finish();
    c.final_summary();
}
