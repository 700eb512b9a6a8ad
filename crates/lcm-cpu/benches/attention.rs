//! The CPU attention kernel at SD1.5's shapes (512x512, batch 1): the UNet's self-attention at 4096,
//! 1024 and 256 tokens (8 heads), its cross-attention over 77 keys, and the VAE's single-head
//! attention, with achieved GFLOP/s.
//!
//! `cargo bench -p lcm-cpu --bench attention` runs criterion on every case; `LCM_BENCH_QUICK=1` instead
//! prints one table (median of 5 calls per case after one warm-up), for side-by-side runs of two builds;
//! an argument keeps only the cases whose name contains it.

mod common;

use criterion::{Criterion, Throughput};
use lcm_cpu::attention::{attention, AttnShape};

struct Case {
    name: &'static str,
    n: usize,
    m: usize,
    c: usize,
    heads: usize,
}

const CASES: &[Case] = &[
    Case { name: "unet self 4096 tok", n: 4096, m: 4096, c: 320, heads: 8 },
    Case { name: "unet cross 4096x77", n: 4096, m: 77, c: 320, heads: 8 },
    Case { name: "unet self 1024 tok", n: 1024, m: 1024, c: 640, heads: 8 },
    Case { name: "unet self 256 tok", n: 256, m: 256, c: 1280, heads: 8 },
    Case { name: "vae mid 4096 tok", n: 4096, m: 4096, c: 512, heads: 1 },
];

impl Case {
    fn shape(&self) -> AttnShape {
        AttnShape { batch: 1, n: self.n, m: self.m, c: self.c, heads: self.heads, causal: false, key_limit: None }
    }
    /// Two GEMMs of n·m·c MACs each, 2 flops per MAC.
    fn flops(&self) -> f64 {
        4.0 * (self.n * self.m * self.c) as f64
    }
    fn inputs(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        (
            common::fill(self.n * self.c, 7),
            common::fill(self.m * self.c, 5),
            common::fill(self.m * self.c, 3),
            vec![0.0; self.n * self.c],
        )
    }
}

/// `filter`: run only the cases whose name contains it.
fn quick(filter: &str) {
    println!("{:<22} {:>10} {:>10}", "case", "ms", "GFLOP/s");
    for case in CASES.iter().filter(|c| c.name.contains(filter)) {
        let (q, k, v, mut out) = case.inputs();
        let s = case.shape();
        let median = common::median_s(|| attention(&s, &q, &k, &v, &mut out));
        println!("{:<22} {:>10.2} {:>10.1}", case.name, median * 1e3, case.flops() / median / 1e9);
    }
}

fn main() {
    if let Some(filter) = common::quick_filter() {
        return quick(&filter);
    }
    let mut c = Criterion::default().configure_from_args().sample_size(10);
    let mut group = c.benchmark_group("cpu_attention");
    for case in CASES {
        let (q, k, v, mut out) = case.inputs();
        let s = case.shape();
        group.throughput(Throughput::Elements(case.flops() as u64));
        group.bench_function(case.name, |b| b.iter(|| attention(&s, &q, &k, &v, &mut out)));
    }
    group.finish();
    c.final_summary();
}
