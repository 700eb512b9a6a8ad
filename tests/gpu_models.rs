//! Whole blocks on the CUDA backend: a ResNet block and a transformer block wired like the UNet's, run
//! against the CPU reference, and the steady-state facts — a second run allocates nothing on the device,
//! a CUDA graph replay with new inputs is still right, replay and plain launches agree bit for bit, and
//! runs are deterministic. (Whole models on the fixtures: tests/gpu_pipeline.rs.)

mod gpu_util;

use gpu_util::{random_inputs, random_weight, run_gpu_tests, Input, Pair, Rng};
use lcm::cuda::CudaBackend;
use lcm_core::{Activation, Elem, Graph, GraphBuilder};

/// ResNet block with time embedding, a cross-attention transformer block, and a 2x upsampler, at toy
/// widths (64 channels, 4 heads of 16, 7 context tokens) on a non-square 12x10 image, batch 2.
fn unet_block() -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input(&[2, 12, 10, 64], Elem::Act);
    let temb = b.input(&[2, 128], Elem::Act);
    let ctx = b.input(&[2, 7, 32], Elem::Act);

    let h = b.group_norm("res.norm1", x, 32, 1e-5, false);
    let h = b.activation(h, Activation::Silu);
    let h = b.conv2d("res.conv1", h, 64, 3, 1, [1; 4], true);
    let t = b.activation(temb, Activation::Silu);
    let t = b.linear("res.time_emb_proj", t, 64, true);
    let h = b.add_channel(h, t);
    let h = b.group_norm("res.norm2", h, 32, 1e-5, true);
    let h = b.conv2d("res.conv2", h, 64, 3, 1, [1; 4], true);
    let h = b.add(h, x);

    let n = b.group_norm("tf.norm", h, 32, 1e-6, false);
    let n = b.linear("tf.proj_in", n, 64, true);
    let a = b.layer_norm("tf.norm1", n, 1e-5);
    let (q, k, v) = (
        b.linear("tf.attn1.to_q", a, 64, false),
        b.linear("tf.attn1.to_k", a, 64, false),
        b.linear("tf.attn1.to_v", a, 64, false),
    );
    let a = b.attention(q, k, v, 4, false);
    let a = b.linear("tf.attn1.to_out", a, 64, true);
    let n = b.add(a, n);
    let a = b.layer_norm("tf.norm2", n, 1e-5);
    let q = b.linear("tf.attn2.to_q", a, 64, false);
    let (k, v) = (b.linear("tf.attn2.to_k", ctx, 64, false), b.linear("tf.attn2.to_v", ctx, 64, false));
    let a = b.attention(q, k, v, 4, false);
    let a = b.linear("tf.attn2.to_out", a, 64, true);
    let n = b.add(a, n);
    let f = b.layer_norm("tf.norm3", n, 1e-5);
    let f = b.linear("tf.ff.proj", f, 512, true);
    let f = b.geglu(f);
    let f = b.linear("tf.ff.out", f, 64, true);
    let n = b.add(f, n);
    let n = b.linear("tf.proj_out", n, 64, true);
    let h = b.add(n, h);

    let u = b.upsample(h, 24, 20);
    let u = b.conv2d("up.conv", u, 32, 3, 1, [1; 4], true);
    let skip = b.input(&[2, 24, 20, 16], Elem::Act);
    let u = b.concat(u, skip);
    b.output(u);
    b.finish().expect("block graph")
}

fn unet_block_matches_cpu_and_second_run_allocates_nothing(be: CudaBackend) {
    let g = unet_block();
    let mut rng = Rng::new(1);
    let mut pair = Pair::new(&be, g.clone(), &mut rng);
    let first = random_inputs(&g, &mut rng, 1);
    let d = pair.run(&first)[0];
    println!("unet block, first run: {d}");
    assert!(d.ok(), "first run: {d}; kernels: {}", pair.kernels());

    // The first run recorded and captured; from here on a run is a graph replay.
    let allocations = be.device_allocations();
    let second = random_inputs(&g, &mut rng, 1);
    let d = pair.run(&second)[0];
    println!("unet block, replay with new inputs: {d}");
    assert!(d.ok(), "replay with new inputs: {d}");
    assert_eq!(be.device_allocations(), allocations, "a second run allocated on the device");
    assert!(pair.ge.arena().recorded_launches() > 0);
}

fn run_once(be: &CudaBackend, g: &Graph, data: &[Vec<f32>], inputs: &[Input]) -> Vec<f32> {
    let mut pair = Pair::with_weights(be, g.clone(), data);
    pair.run(inputs);
    pair.gpu_output(0)
}

fn graph_replay_and_plain_launches_agree_bit_for_bit(be: CudaBackend) {
    let mut plain = gpu_util::backend();
    plain.set_cuda_graphs(false);
    let g = unet_block();
    let mut rng = Rng::new(2);
    let data: Vec<Vec<f32>> = g.weights.iter().map(|s| random_weight(s, &mut rng)).collect();
    let inputs = random_inputs(&g, &mut rng, 1);
    let a = run_once(&be, &g, &data, &inputs);
    let b = run_once(&plain, &g, &data, &inputs);
    assert!(a.iter().all(|v| v.is_finite()));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "graph replay differs from plain launches");

    // Deterministic: the same inputs twice through one executor give the same bits (no atomics in
    // any reduction).
    let mut pair = Pair::with_weights(&be, g.clone(), &data);
    pair.run(&inputs);
    let first = pair.gpu_output(0);
    pair.run(&inputs);
    assert!(first.iter().zip(&pair.gpu_output(0)).all(|(x, y)| x.to_bits() == y.to_bits()), "two runs differ");
}

/// `lcm bench --plan` makes no launch list of its own: `cuda::plan_launches` runs the backend's recorder
/// without a device. On the tiny SD UNet (and the block above) its launches are the ones the backend
/// records, kernel for kernel, grid for grid.
fn the_launch_plan_is_what_the_backend_records(be: CudaBackend) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd/unet");
    let json = std::fs::read_to_string(dir.join("config.json")).expect("tiny-sd unet config");
    let unet = lcm_models::UnetConfig::from_json(&dir, &json).expect("tiny-sd unet config");
    for (name, g) in [("tiny-sd unet", unet.graph(1, 8, 8, 77).expect("unet graph")), ("unet block", unet_block())] {
        let mut rng = Rng::new(3);
        let mut pair = Pair::new(&be, g.clone(), &mut rng);
        pair.run(&random_inputs(&g, &mut rng, 1));
        let recorded = pair.ge.arena().recorded_kernels();
        let program = lcm_core::Program::new(g, be.precision().bytes()).expect("program");
        let planned: Vec<String> = lcm::cuda::plan_launches(&program, be.limits(), be.precision())
            .expect("plan")
            .iter()
            .map(|(_, l)| l.describe())
            .collect();
        println!("{name}: {} launches recorded, {} planned", recorded.len(), planned.len());
        assert!(!planned.is_empty());
        assert_eq!(planned, recorded, "{name}: the plan differs from the recorded run");
    }
}

fn main() -> std::process::ExitCode {
    run_gpu_tests(
        "gpu_models",
        &[
            (
                "unet_block_matches_cpu_and_second_run_allocates_nothing",
                unet_block_matches_cpu_and_second_run_allocates_nothing,
            ),
            ("graph_replay_and_plain_launches_agree_bit_for_bit", graph_replay_and_plain_launches_agree_bit_for_bit),
            ("the_launch_plan_is_what_the_backend_records", the_launch_plan_is_what_the_backend_records),
        ],
    )
}
