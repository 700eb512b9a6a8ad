//! Each CUDA kernel family at SD1.5 shapes (512x512, batch 1), as a one-op graph replayed through the
//! CUDA backend, with achieved TFLOP/s (GEMM, conv, attention) or GB/s (the memory-bound ops).
//!
//! `cargo bench --bench kernels` runs criterion on every case; `LCM_BENCH_QUICK=1` instead prints one
//! table (20 back-to-back replays per case, one synchronisation) — what scripts/device-check.sh runs.
//! Without a GPU it prints why and exits.

use std::time::Instant;

use criterion::{Criterion, Throughput};
use half::f16;
use lcm::cuda::CudaBackend;
use lcm_core::{Backend, Elem, Executor, Graph, GraphBuilder, HostData, ModelWeights, WeightKind};

struct Case {
    name: String,
    graph: Graph,
    /// Floating-point operations (2 per MAC) or, for memory-bound ops, 0.
    flops: f64,
    /// Bytes an ideal kernel moves (each input read once, the output written once).
    bytes: f64,
}

fn one_op(f: impl FnOnce(&mut GraphBuilder) -> usize) -> Graph {
    let mut b = GraphBuilder::new();
    let out = f(&mut b);
    b.output(out);
    b.finish().expect("bench graph")
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    let act = |n: usize| (n * 2) as f64;
    for &(h, ci, co, k, tag) in &[
        (64, 4, 320, 3, "unet conv_in"),
        (64, 320, 320, 3, "unet 64x64"),
        (32, 640, 640, 3, "unet 32x32"),
        (16, 1280, 1280, 3, "unet 16x16"),
        (8, 2560, 1280, 3, "unet up0 8x8"),
        (64, 960, 320, 1, "unet shortcut 1x1"),
        (128, 512, 512, 3, "vae 128x128"),
        (256, 256, 256, 3, "vae 256x256"),
        (512, 128, 128, 3, "vae 512x512"),
    ] {
        let graph = one_op(|b| {
            let x = b.input(&[1, h, h, ci], Elem::Act);
            b.conv2d("c", x, co, k, 1, [k / 2; 4], true)
        });
        let macs = (h * h * co * ci * k * k) as f64;
        v.push(Case {
            name: format!("conv {tag} {ci}->{co} k{k}"),
            graph,
            flops: 2.0 * macs,
            bytes: act(h * h * (ci + co)),
        });
    }
    for &(m, kk, n, geglu, tag) in &[
        (4096, 320, 320, false, "unet to_q 64x64"),
        (4096, 320, 2560, true, "unet ff GEGLU 64x64"),
        (4096, 1280, 320, false, "unet ff out 64x64"),
        (1024, 640, 640, false, "unet to_q 32x32"),
        (256, 1280, 1280, false, "unet to_q 16x16"),
        (77, 768, 768, false, "clip 77 tokens"),
    ] {
        let graph = one_op(|b| {
            let x = b.input(&[1, m, kk], Elem::Act);
            let y = b.linear("fc", x, n, true);
            if geglu {
                b.geglu(y)
            } else {
                y
            }
        });
        v.push(Case {
            name: format!("linear {tag} {m}x{kk}->{n}"),
            graph,
            flops: 2.0 * (m * kk * n) as f64,
            bytes: act(m * (kk + n)),
        });
    }
    for &(nq, nkv, heads, d, causal, tag) in &[
        (4096, 4096, 8, 40, false, "unet self 64x64 hd40"),
        (4096, 77, 8, 40, false, "unet cross 64x64 hd40"),
        (1024, 1024, 8, 80, false, "unet self 32x32 hd80"),
        (256, 256, 8, 160, false, "unet self 16x16 hd160"),
        (77, 77, 12, 64, true, "clip causal hd64"),
        (4096, 4096, 1, 512, false, "vae mid hd512"),
    ] {
        let graph = one_op(|b| {
            let q = b.input(&[1, nq, heads * d], Elem::Act);
            let k = b.input(&[1, nkv, heads * d], Elem::Act);
            let vv = b.input(&[1, nkv, heads * d], Elem::Act);
            b.attention(q, k, vv, heads, causal)
        });
        let flops = 4.0 * (nq * nkv * heads * d) as f64 * if causal { 0.5 } else { 1.0 };
        v.push(Case { name: format!("attention {tag}"), graph, flops, bytes: act(heads * d * (2 * nq + 2 * nkv)) });
    }
    for &(h, c, silu, tag) in &[
        (64, 320, true, "unet 64x64"),
        (16, 1280, false, "unet 16x16"),
        (128, 512, true, "vae 128x128"),
        (512, 128, true, "vae 512x512"),
    ] {
        let graph = one_op(|b| {
            let x = b.input(&[1, h, h, c], Elem::Act);
            b.group_norm("gn", x, 32, 1e-5, silu)
        });
        // Stats read x once; apply reads it again and writes once: 3 passes is this design's floor.
        v.push(Case { name: format!("group_norm {tag} C{c}"), graph, flops: 0.0, bytes: act(3 * h * h * c) });
    }
    let ew = [1, 64, 64, 320];
    let n = ew.iter().product::<usize>();
    v.push(Case {
        name: "layer_norm 4096x320".into(),
        graph: one_op(|b| {
            let x = b.input(&[1, 4096, 320], Elem::Act);
            b.layer_norm("ln", x, 1e-5)
        }),
        flops: 0.0,
        bytes: act(2 * 4096 * 320),
    });
    v.push(Case {
        name: "add 64x64x320".into(),
        graph: one_op(|b| {
            let (x, y) = (b.input(&ew, Elem::Act), b.input(&ew, Elem::Act));
            b.add(x, y)
        }),
        flops: 0.0,
        bytes: act(3 * n),
    });
    v.push(Case {
        name: "concat 64x64 320+320".into(),
        graph: one_op(|b| {
            let (x, y) = (b.input(&ew, Elem::Act), b.input(&ew, Elem::Act));
            b.concat(x, y)
        }),
        flops: 0.0,
        bytes: act(4 * n),
    });
    v.push(Case {
        name: "upsample 2x 32x32x640".into(),
        graph: one_op(|b| {
            let x = b.input(&[1, 32, 32, 640], Elem::Act);
            b.upsample(x, 64, 64)
        }),
        flops: 0.0,
        bytes: act(5 * 32 * 32 * 640),
    });
    v
}

/// An executor with seeded random weights and inputs, warmed up (recorded, captured, replayed once).
fn prepare(be: &CudaBackend, g: Graph) -> (Executor<CudaBackend>, ModelWeights<CudaBackend>) {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let weights = g
        .weights
        .iter()
        .map(|spec| {
            let n: usize = spec.shape.iter().product();
            let scale = if spec.kind == WeightKind::Plain {
                1.0
            } else {
                1.0 / (spec.shape[1..].iter().product::<usize>() as f32).sqrt()
            };
            let data: Vec<f32> = (0..n).map(|_| f16::from_f32(rnd() * scale).to_f32()).collect();
            be.upload_weight(spec, &data).expect("upload")
        })
        .collect();
    let mw = ModelWeights::new(g.weights.clone(), weights);
    let inputs: Vec<Vec<f32>> = g.inputs.iter().map(|&t| (0..g.tensors[t].numel()).map(|_| rnd()).collect()).collect();
    let mut ex = Executor::new(be, g, &mw).expect("executor");
    for (i, x) in inputs.iter().enumerate() {
        ex.set_input(be, i, HostData::F32(x)).expect("input");
    }
    ex.run(be, &mw).expect("warm-up run");
    be.synchronize().expect("warm-up");
    (ex, mw)
}

fn quick_table(be: &CudaBackend, cases: Vec<Case>) {
    const REPS: u32 = 20;
    println!("{:<44} {:>10} {:>10} {:>9}", "kernel (one-op graph replay)", "time (us)", "TFLOP/s", "GB/s");
    for c in cases {
        let (mut ex, w) = prepare(be, c.graph);
        let t0 = Instant::now();
        for _ in 0..REPS {
            ex.run(be, &w).expect("run");
        }
        be.synchronize().expect("sync");
        let s = t0.elapsed().as_secs_f64() / REPS as f64;
        let tflops = if c.flops > 0.0 { format!("{:.1}", c.flops / s / 1e12) } else { "-".into() };
        println!("{:<44} {:>10.1} {:>10} {:>9.0}", c.name, s * 1e6, tflops, c.bytes / s / 1e9);
    }
}

fn main() {
    let be = match CudaBackend::new() {
        Ok(be) => be,
        Err(e) => {
            println!("SKIPPED: kernel benchmarks need a GPU ({e})");
            return;
        }
    };
    println!("device: {}", be.device_name());
    if std::env::var("LCM_BENCH_QUICK").is_ok_and(|v| v == "1") {
        quick_table(&be, cases());
        return;
    }
    let mut crit = Criterion::default().configure_from_args();
    for c in cases() {
        let mut group = crit.benchmark_group("kernels");
        group.throughput(if c.flops > 0.0 {
            Throughput::Elements(c.flops as u64)
        } else {
            Throughput::Bytes(c.bytes as u64)
        });
        let (mut ex, w) = prepare(&be, c.graph);
        group.bench_function(&c.name, |b| {
            b.iter(|| {
                ex.run(&be, &w).expect("run");
                be.synchronize().expect("sync");
            })
        });
        group.finish();
    }
    crit.final_summary();
}
