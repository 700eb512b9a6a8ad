//! The compute-bound CUDA kernels against the CPU reference: one-op (or two-op, for fusions) graphs at
//! every SD1.5 shape the kernel serves and at awkward ones (non-square, batch 2, sizes off the tile,
//! channel counts like 3 and 4), plus LoRA, the f32 path and the kernels' edge cases. Every op at a few
//! shapes each, the element-wise family and LayerNorm included, is tests/backend_ops.rs. Fresh random inputs, the GPU arena poisoned with NaN before each run, relative L2 below
//! 1e-2. On the emulator (no GPU) the spatial and token sizes of the largest cases shrink to fit a
//! budget (`gpu_util::fit`); channels, heads, kernel sizes and strides stay.

mod gpu_util;

use gpu_util::{check, fail_case, fit, run_gpu_tests, Input, Pair, Rng, EMULATED_ELEMENTS, EMULATED_MACS};
use lcm::cuda::{CudaBackend, Precision};
use lcm_core::{Activation, Elem, Graph, GraphBuilder, WeightKind};

fn graph(f: impl FnOnce(&mut GraphBuilder) -> usize) -> Graph {
    let mut b = GraphBuilder::new();
    let out = f(&mut b);
    b.output(out);
    b.finish().expect("test graph")
}

/// (batch, h, w, ci, co, k, stride, pad [t, l, b, r], residual, tag)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, [usize; 4], bool, &'static str);

const CONV_CASES: &[ConvCase] = &[
    // UNet at 512x512 (64x64 latents)
    (1, 64, 64, 4, 320, 3, 1, [1; 4], false, "unet conv_in (4 channels: scalar path)"),
    (1, 64, 64, 320, 320, 3, 1, [1; 4], true, "unet down 0 resnet conv2 + skip"),
    (1, 64, 64, 320, 320, 3, 2, [1; 4], false, "unet downsampler 0"),
    (1, 32, 32, 320, 640, 3, 1, [1; 4], false, "unet down 1 conv1"),
    (1, 32, 32, 320, 640, 1, 1, [0; 4], true, "unet down 1 shortcut"),
    (1, 32, 32, 640, 640, 3, 1, [1; 4], true, "unet down 1 conv2"),
    (1, 32, 32, 640, 640, 3, 2, [1; 4], false, "unet downsampler 1"),
    (1, 16, 16, 640, 1280, 3, 1, [1; 4], false, "unet down 2 conv1"),
    (1, 16, 16, 1280, 1280, 3, 1, [1; 4], true, "unet down 2 conv2"),
    (1, 16, 16, 1280, 1280, 3, 2, [1; 4], false, "unet downsampler 2"),
    (1, 8, 8, 1280, 1280, 3, 1, [1; 4], true, "unet down 3 / mid"),
    (1, 8, 8, 2560, 1280, 3, 1, [1; 4], false, "unet up 0 conv1"),
    (1, 8, 8, 2560, 1280, 1, 1, [0; 4], true, "unet up 0 shortcut"),
    (1, 16, 16, 1280, 1280, 3, 1, [1; 4], false, "unet up 0 upsampler conv"),
    (1, 16, 16, 1920, 1280, 3, 1, [1; 4], false, "unet up 1 conv1 (1920)"),
    (1, 16, 16, 1920, 1280, 1, 1, [0; 4], true, "unet up 1 shortcut"),
    (1, 32, 32, 1920, 640, 3, 1, [1; 4], false, "unet up 2 conv1"),
    (1, 32, 32, 1280, 640, 3, 1, [1; 4], false, "unet up 2 conv1 (1280)"),
    (1, 32, 32, 960, 640, 1, 1, [0; 4], true, "unet up 2 shortcut (960)"),
    (1, 64, 64, 960, 320, 3, 1, [1; 4], false, "unet up 3 conv1 (960)"),
    (1, 64, 64, 640, 320, 1, 1, [0; 4], true, "unet up 3 shortcut (640)"),
    (1, 64, 64, 320, 4, 3, 1, [1; 4], false, "unet conv_out (4 outputs)"),
    (2, 64, 64, 320, 320, 3, 1, [1; 4], true, "unet batch 2 (CFG)"),
    // VAE decoder at 512x512
    (1, 64, 64, 4, 512, 3, 1, [1; 4], false, "vae conv_in"),
    (1, 64, 64, 512, 512, 3, 1, [1; 4], true, "vae mid resnet"),
    (1, 128, 128, 512, 512, 3, 1, [1; 4], false, "vae up 1"),
    (1, 256, 256, 512, 256, 3, 1, [1; 4], false, "vae up 2 conv1"),
    (1, 256, 256, 512, 256, 1, 1, [0; 4], true, "vae up 2 shortcut"),
    (1, 256, 256, 256, 256, 3, 1, [1; 4], true, "vae up 2 conv2"),
    (1, 512, 512, 256, 128, 3, 1, [1; 4], false, "vae up 3 conv1"),
    (1, 512, 512, 128, 128, 3, 1, [1; 4], true, "vae up 3 conv2"),
    (1, 512, 512, 128, 3, 3, 1, [1; 4], false, "vae conv_out (3 outputs)"),
    // VAE encoder (img2img)
    (1, 512, 512, 3, 128, 3, 1, [1; 4], false, "vae encoder conv_in (RGB)"),
    (1, 512, 512, 128, 128, 3, 2, [0, 0, 1, 1], false, "vae encoder downsampler (pad 0,0,1,1)"),
    // awkward
    (2, 9, 7, 16, 24, 3, 1, [1; 4], true, "non-square, batch 2, off-tile"),
    (1, 13, 11, 24, 40, 3, 2, [0, 0, 1, 1], false, "odd size, stride 2, asymmetric pad"),
    (2, 5, 6, 3, 5, 3, 1, [1; 4], false, "3 in, 5 out"),
    (1, 7, 9, 12, 136, 1, 1, [0; 4], true, "12 channels (scalar), 136 out"),
    (1, 6, 6, 8, 8, 3, 1, [2, 0, 1, 2], false, "uneven padding"),
];

fn conv_graph(c: &ConvCase) -> Graph {
    let &(batch, h, w, ci, co, k, stride, pad, residual, _) = c;
    let macs = |[h, w]: [usize; 2]| (batch * (h / stride) * (w / stride) * co * ci * k * k) as u64;
    let [h, w] = fit([h, w], [2 * k, 2 * k], EMULATED_MACS, macs);
    graph(|b| {
        let x = b.input(&[batch, h, w, ci], Elem::Act);
        let y = b.conv2d("conv", x, co, k, stride, pad, true);
        if residual {
            let r = b.input(b.shape(y).to_vec().as_slice(), Elem::Act);
            b.add(y, r)
        } else {
            y
        }
    })
}

fn conv2d_matches_cpu(be: CudaBackend) {
    for (i, c) in CONV_CASES.iter().enumerate() {
        check(&be, conv_graph(c), 100 + i as u64, c.9);
    }
}

/// (rows as [batch, tokens], k, n, bias, residual, geglu, tag)
type LinearCase = ([usize; 2], usize, usize, bool, bool, bool, &'static str);

const LINEAR_CASES: &[LinearCase] = &[
    ([1, 4096], 320, 320, false, false, false, "unet to_q/k/v 64x64"),
    ([1, 4096], 320, 320, true, true, false, "unet to_out + residual"),
    ([1, 4096], 320, 2560, true, false, true, "unet ff.net.0 GEGLU (fused)"),
    ([1, 4096], 1280, 320, true, true, false, "unet ff.net.2 + residual"),
    ([1, 1024], 640, 640, true, false, false, "unet proj_in 32x32"),
    ([1, 256], 1280, 1280, true, true, false, "unet proj_out 16x16"),
    ([1, 256], 1280, 10240, true, false, true, "unet ff.net.0 GEGLU 16x16"),
    ([1, 77], 768, 320, false, false, false, "unet cross-attn to_k"),
    ([2, 77], 768, 1280, false, false, false, "unet cross-attn to_v batch 2"),
    ([1, 1], 320, 1280, true, false, false, "time_embedding.linear_1"),
    ([2, 1], 1280, 1280, true, false, false, "time_emb_proj batch 2"),
    ([1, 77], 768, 2304, true, false, false, "clip qkv-width"),
    ([1, 77], 768, 3072, true, false, false, "clip fc1"),
    ([1, 77], 3072, 768, true, true, false, "clip fc2 + residual"),
    ([1, 4096], 512, 512, true, false, false, "vae attention projections"),
    ([2, 37], 24, 12, true, true, false, "awkward: off-tile everything"),
    ([1, 50], 20, 33, true, false, false, "awkward: K=20 (scalar A), odd N"),
    ([1, 9], 8, 3, true, true, false, "awkward: 3 outputs"),
    ([3, 5], 16, 6, true, false, true, "awkward GEGLU"),
];

fn linear_graph(c: &LinearCase) -> Graph {
    let &([batch, t], k, n, bias, residual, geglu, _) = c;
    let [t] = fit([t], [1], EMULATED_MACS, |[t]| (batch * t * k * n) as u64);
    graph(|b| {
        let x = b.input(&[batch, t, k], Elem::Act);
        let y = b.linear("fc", x, n, bias);
        if geglu {
            b.geglu(y) // fused into the GEMM's epilogue by lcm_core::fuse
        } else if residual {
            let r = b.input(&[batch, t, n], Elem::Act);
            b.add(y, r)
        } else {
            y
        }
    })
}

fn linear_matches_cpu(be: CudaBackend) {
    for (i, c) in LINEAR_CASES.iter().enumerate() {
        check(&be, linear_graph(c), 200 + i as u64, c.6);
    }
}

/// (batch, n_q, n_kv, heads, head_dim, causal, tag)
type AttnCase = (usize, usize, usize, usize, usize, bool, &'static str);

const ATTN_CASES: &[AttnCase] = &[
    (1, 4096, 4096, 8, 40, false, "unet self 64x64 (hd40)"),
    (1, 4096, 77, 8, 40, false, "unet cross 64x64"),
    (1, 1024, 1024, 8, 80, false, "unet self 32x32 (hd80)"),
    (2, 1024, 77, 8, 80, false, "unet cross 32x32 batch 2"),
    (1, 256, 256, 8, 160, false, "unet self 16x16 (hd160)"),
    (1, 256, 77, 8, 160, false, "unet cross 16x16"),
    (1, 64, 64, 8, 160, false, "unet mid block 8x8"),
    (1, 77, 77, 12, 64, true, "clip causal (hd64)"),
    (2, 77, 77, 12, 64, true, "clip causal batch 2"),
    (1, 4096, 4096, 1, 512, false, "vae mid block (hd512)"),
    (1, 1024, 1024, 1, 512, false, "vae mid block at 256x256"),
    (2, 100, 33, 2, 8, false, "tiny: hd8"),
    (1, 50, 50, 4, 16, true, "tiny causal hd16"),
    (1, 70, 130, 3, 12, false, "hd12: unaligned, scalar loads"),
    (1, 65, 65, 2, 20, true, "causal hd20, one past the tile"),
    (1, 33, 47, 2, 200, false, "hd200 through the wide kernel"),
    (2, 129, 129, 2, 96, false, "hd96 padded to 128"),
];

fn attention_graph(c: &AttnCase) -> Graph {
    let &(batch, n_q, n_kv, heads, d, causal, _) = c;
    // Self-attention shrinks queries and keys together; cross-attention keeps its 77 keys.
    let self_attn = n_q == n_kv;
    let macs = |[q]: [usize; 1]| (2 * batch * heads * d * q * if self_attn { q } else { n_kv }) as u64;
    let [n_q] = fit([n_q], [1], EMULATED_MACS, macs);
    let n_kv = if self_attn { n_q } else { n_kv };
    graph(|b| {
        let q = b.input(&[batch, n_q, heads * d], Elem::Act);
        let k = b.input(&[batch, n_kv, heads * d], Elem::Act);
        let v = b.input(&[batch, n_kv, heads * d], Elem::Act);
        b.attention(q, k, v, heads, causal)
    })
}

fn attention_matches_cpu(be: CudaBackend) {
    for (i, c) in ATTN_CASES.iter().enumerate() {
        check(&be, attention_graph(c), 300 + i as u64, c.6);
    }
}

/// (shape, groups, silu, tag)
type GroupNormCase = ([usize; 4], usize, bool, &'static str);

const GROUP_NORM_CASES: &[GroupNormCase] = &[
    ([1, 64, 64, 320], 32, true, "unet 64x64"),
    ([1, 32, 32, 640], 32, true, "unet 32x32"),
    ([1, 16, 16, 1280], 32, false, "unet 16x16 (transformer norm)"),
    ([1, 8, 8, 2560], 32, true, "unet up 0 (2560)"),
    ([1, 16, 16, 1920], 32, true, "unet up 1 (1920)"),
    ([1, 64, 64, 960], 32, true, "unet up 3 (960)"),
    ([2, 64, 64, 320], 32, true, "batch 2"),
    ([1, 128, 128, 512], 32, true, "vae 128x128"),
    ([1, 256, 256, 256], 32, true, "vae 256x256"),
    ([1, 512, 512, 128], 32, true, "vae 512x512 (4 channels a group)"),
    ([2, 5, 7, 12], 4, true, "awkward: 12 channels (scalar path)"),
    ([1, 1, 1, 64], 32, false, "one pixel"),
    ([1, 3, 1, 40], 8, true, "5 channels a group straddling vectors"),
];

fn group_norm_matches_cpu(be: CudaBackend) {
    group_norm_cases(&be, GROUP_NORM_CASES.iter());
}

fn group_norm_cases<'a>(be: &CudaBackend, cases: impl Iterator<Item = &'a GroupNormCase>) {
    for (i, &(shape, groups, silu, tag)) in cases.enumerate() {
        let [b, h, w, c] = shape;
        let [h, w] = fit([h, w], [1, 1], EMULATED_ELEMENTS, |[h, w]| (b * h * w * c) as u64);
        let shape = [b, h, w, c];
        let g = graph(|b| {
            let x = b.input(&shape, Elem::Act);
            b.group_norm("gn", x, groups, 1e-5, silu)
        });
        check(be, g, 400 + i as u64, tag);
    }
}

fn group_norm_handles_a_large_mean(be: CudaBackend) {
    // |mean| ≫ std: the shifted sums must not cancel (x = 50 + N(0, 1)).
    let g = graph(|b| {
        let x = b.input(&[1, 32, 32, 320], Elem::Act);
        b.group_norm("gn", x, 32, 1e-6, false)
    });
    let mut rng = Rng::new(450);
    // Rounded to f16 for both backends: f16 spacing at 50 is 1/32, which alone would be ~1% of the
    // std; this test is about the kernel's statistics, not the input's storage.
    let x: Vec<f32> = (0..32 * 32 * 320).map(|_| half::f16::from_f32(50.0 + rng.normal()).to_f32()).collect();
    let mut pair = Pair::new(&be, g, &mut rng);
    let d = pair.run(&[gpu_util::Input::F32(x)])[0];
    println!("group norm, mean 50: {d}");
    assert!(d.ok(), "group norm, mean 50: {d}; kernels: {}", pair.kernels());
}

fn timesteps_at_full_range_match_cpu(be: CudaBackend) {
    // The sinusoid of t = 999 is where a fast-math sin would go wrong: check the real timesteps.
    let g = graph(|b| {
        let t = b.input(&[4], Elem::Act);
        b.timestep_embed(t, 320, true, 0.0)
    });
    let mut rng = Rng::new(700);
    let mut pair = Pair::new(&be, g, &mut rng);
    let d = pair.run(&[gpu_util::Input::F32(vec![999.0, 759.0, 499.0, 259.0])])[0];
    println!("timesteps 999..259: {d}");
    assert!(d.rel_l2 < 1e-3 && d.nans == 0, "{d} (limit 1e-3)");
}

fn bad_token_id_is_an_error_not_a_crash(be: CudaBackend) {
    let g = graph(|b| {
        let ids = b.input(&[1, 4], Elem::I32);
        let table = b.weight("table", &[10, 8], WeightKind::Plain);
        let pos = b.weight("pos", &[4, 8], WeightKind::Plain);
        b.embed(ids, table, pos)
    });
    let mut rng = Rng::new(800);
    let mut pair = Pair::new(&be, g, &mut rng);
    pair.ge.set_input(&be, 0, lcm_core::HostData::I32(&[1, 2, 10, 3])).unwrap();
    pair.ge.run(&be, &pair.gw).unwrap();
    let err = pair.ge.output(&be, 0).expect_err("id 10 of 10 must be reported");
    assert!(err.to_string().contains("10"), "{err}");
    // The flag is cleared: a good run afterwards reads fine.
    pair.ge.set_input(&be, 0, lcm_core::HostData::I32(&[1, 2, 9, 3])).unwrap();
    pair.ge.run(&be, &pair.gw).unwrap();
    pair.ge.output(&be, 0).expect("valid ids");
}

/// LoRA factors and the weight they merge into, as torch holds them.
fn lora_factors(rng: &mut Rng, out: usize, inner: usize, rank: usize) -> (Vec<f32>, Vec<f32>) {
    (rng.vec(rank * inner, 1.0 / (inner as f32).sqrt()), rng.vec(out * rank, 0.5 / (rank as f32).sqrt()))
}

fn merged(w: &[f32], down: &[f32], up: &[f32], out: usize, inner: usize, rank: usize, scale: f32) -> Vec<f32> {
    let mut m = w.to_vec();
    for o in 0..out {
        for i in 0..inner {
            m[o * inner + i] += scale * (0..rank).map(|j| up[o * rank + j] * down[j * inner + i]).sum::<f32>();
        }
    }
    m
}

fn lora_case(be: &CudaBackend, g: Graph, out: usize, inner: usize, rank: usize, seed: u64, tag: &str) {
    if gpu_util::too_big_for_reduced_run(&g, tag) {
        return;
    }
    let mut rng = Rng::new(seed);
    let data: Vec<Vec<f32>> = g.weights.iter().map(|s| gpu_util::random_weight(s, &mut rng)).collect();
    let inputs = gpu_util::random_inputs(&g, &mut rng, 1);
    let (down, up) = lora_factors(&mut rng, out, inner, rank);
    // weights[0] is the target (`conv2d`/`linear` declare the weight before the bias).
    let with_delta = |scale: f32| {
        let mut d = data.clone();
        d[0] = merged(&data[0], &down, &up, out, inner, rank, scale);
        d
    };

    // Unmerged: the GPU runs [x | x·Aᵀ]·[W | s·B]ᵀ, the CPU the merged weight.
    let mut pair = Pair::with_weights(be, g.clone(), &data);
    let slot = be.lora_slot(&g.weights[0], rank + 5).unwrap();
    be.set_lora(&slot, &down, &up, rank, 0.75).unwrap();
    pair.gw.weights[0].attach_lora(&slot).unwrap();
    pair.cw = gpu_util::upload(&pair.cpu, &g.weights, &with_delta(0.75));
    let d = pair.run(&inputs)[0];
    println!("{tag} unmerged: {d}");
    assert!(d.ok(), "{tag} unmerged: {d}; kernels: {}", pair.kernels());

    // Swaps are copies into the same buffers: the recorded run (CUDA graph) replays them, and nothing
    // is allocated.
    let before = be.device_allocations();
    be.clear_lora(&slot).unwrap();
    pair.cw = gpu_util::upload(&pair.cpu, &g.weights, &data);
    let d = pair.run(&inputs)[0];
    assert!(d.ok(), "{tag} after clear_lora: {d}");
    be.set_lora(&slot, &down, &up, rank, -0.5).unwrap();
    pair.cw = gpu_util::upload(&pair.cpu, &g.weights, &with_delta(-0.5));
    let d = pair.run(&inputs)[0];
    assert!(d.ok(), "{tag} after a swap: {d}");
    assert_eq!(be.device_allocations(), before, "{tag}: a LoRA swap allocated on the device");

    // Merged: the GPU merge kernel against the host merge.
    let mut mpair = Pair::with_weights(be, g.clone(), &data);
    be.merge_lora(&mpair.gw.weights[0], &down, &up, rank, 0.75).unwrap();
    mpair.cw = gpu_util::upload(&mpair.cpu, &g.weights, &with_delta(0.75));
    let d = mpair.run(&inputs)[0];
    println!("{tag} merged: {d}");
    assert!(d.ok(), "{tag} merged: {d}; kernels: {}", mpair.kernels());
}

fn lora_linear_unmerged_and_merged_match_cpu(be: CudaBackend) {
    let g = graph(|b| {
        let x = b.input(&[1, 1024, 640], Elem::Act);
        b.linear("to_q", x, 640, false)
    });
    lora_case(&be, g, 640, 640, 64, 900, "linear rank 64");
    let g = graph(|b| {
        let x = b.input(&[2, 37, 24], Elem::Act);
        b.linear("fc", x, 20, true)
    });
    lora_case(&be, g, 20, 24, 3, 901, "awkward linear rank 3");
}

fn lora_conv_unmerged_and_merged_match_cpu(be: CudaBackend) {
    let [h, w] = fit([32, 32], [6, 6], EMULATED_MACS, |[h, w]| (h * w * 640 * 320 * 9) as u64);
    let g = graph(|b| {
        let x = b.input(&[1, h, w, 320], Elem::Act);
        b.conv2d("conv1", x, 640, 3, 1, [1; 4], true)
    });
    lora_case(&be, g, 640, 320 * 9, 16, 910, "conv 3x3 rank 16");
    let g = graph(|b| {
        let x = b.input(&[1, 9, 9, 40], Elem::Act);
        b.conv2d("down", x, 40, 3, 2, [0, 0, 1, 1], true)
    });
    lora_case(&be, g, 40, 40 * 9, 4, 911, "conv stride 2 rank 4");
}

/// The f32-activation kernels (a `force_upcast` VAE, decoded in f32 as diffusers' SDXL pipelines do)
/// against the CPU at the VAE's shapes and the awkward ones: conv and linear on tf32 tensor cores, the
/// wide attention, GroupNorm, and the element-wise ops a VAE runs. `check` fails any case that launches
/// an f16 kernel on this backend.
fn f32_activations_match_cpu(be: CudaBackend) {
    let be = be.with_precision(Precision::F32);
    let not_unet = |tag: &str| !tag.starts_with("unet") && !tag.starts_with("clip");
    for (i, c) in CONV_CASES.iter().enumerate().filter(|(_, c)| not_unet(c.9)) {
        check(&be, conv_graph(c), 700 + i as u64, &format!("f32 conv: {}", c.9));
    }
    for (i, c) in LINEAR_CASES.iter().enumerate().filter(|(_, c)| not_unet(c.6) && !c.5) {
        check(&be, linear_graph(c), 750 + i as u64, &format!("f32 linear: {}", c.6));
    }
    for (i, c) in ATTN_CASES.iter().enumerate().filter(|(_, c)| not_unet(c.6) && !c.5) {
        check(&be, attention_graph(c), 780 + i as u64, &format!("f32 attention: {}", c.6));
    }
    group_norm_cases(&be, GROUP_NORM_CASES.iter().filter(|c| not_unet(c.3)));
    for (shape, tag) in [([1, 128, 128, 128], "vae"), ([2, 3, 5, 7], "awkward")] {
        let [n, h, w, c] = shape;
        let [h, w] = fit([h, w], [1, 1], EMULATED_ELEMENTS, |[h, w]| (n * h * w * c) as u64);
        let g = graph(|b| {
            let x = b.input(&[n, h, w, c], Elem::F32);
            let x = b.cast(x, Elem::Act, 1, 0.13025, 0.1);
            let y = b.activation(x, Activation::Silu);
            let y = b.add(x, y);
            let y = b.scale(y, 0.5, 0.25);
            let y = b.activation(y, Activation::TanhClamp);
            b.upsample(y, 2 * h + 1, 2 * w)
        });
        check(&be, g, 799, &format!("f32 cast, SiLU, add, scale, tanh clamp, upsample: {tag}"));
    }
}

/// Why the f32 path exists: activations past f16's range (65504), as SDXL's VAE produces, are inf in
/// f16 and a GroupNorm turns them into NaN; with f32 activations the same graph matches the CPU.
fn f32_activations_hold_values_past_f16_range(be: CudaBackend) {
    let g = graph(|b| {
        let x = b.input(&[1, 8, 8, 64], Elem::F32);
        let x = b.cast(x, Elem::Act, 1, 1.0, 0.0);
        let x = b.conv2d("conv", x, 64, 3, 1, [1; 4], true);
        let x = b.scale(x, 1.0e5, 0.0); // the conv's O(1) outputs to ~1e5
        let x = b.group_norm("gn", x, 32, 1e-6, true);
        b.conv2d("conv_out", x, 3, 3, 1, [1; 4], true)
    });
    let x = Input::F32(Rng::new(801).vec(8 * 8 * 64, 1.0));
    let d16 = Pair::new(&be, g.clone(), &mut Rng::new(802)).run(std::slice::from_ref(&x))[0];
    println!("past f16 range, f16 activations: {d16}");
    if d16.ok() {
        fail_case(format!("past f16 range: f16 activations gave {d16}: this case no longer overflows f16"));
    }
    let full = be.with_precision(Precision::F32);
    let mut pair = Pair::new(&full, g, &mut Rng::new(802));
    let d32 = pair.run(&[x])[0];
    println!("past f16 range, f32 activations: {d32}");
    if !d32.ok() {
        fail_case(format!("past f16 range: f32 activations: {d32}; kernels: {}", pair.kernels()));
    }
}

/// One small launch of every kernel family against the CPU (the start-up self-check's graphs, here with
/// every failing case listed): the first thing a device check runs, a minute at most.
fn smoke_every_family(be: CudaBackend) {
    let families = lcm::cuda::self_check::families().expect("the self-check graphs build");
    for (i, f) in families.into_iter().enumerate() {
        check(&be.with_precision(f.precision), f.graph, 50 + i as u64, f.name);
    }
    let g = graph(|b| {
        let x = b.input(&[1, 20, 24], Elem::Act);
        b.linear("fc", x, 16, true)
    });
    lora_case(&be, g, 16, 24, 4, 60, "LoRA merge and unmerged segment");
}

fn main() -> std::process::ExitCode {
    run_gpu_tests(
        "gpu_kernels",
        &[
            ("smoke_every_family", smoke_every_family),
            ("conv2d_matches_cpu", conv2d_matches_cpu),
            ("linear_matches_cpu", linear_matches_cpu),
            ("attention_matches_cpu", attention_matches_cpu),
            ("group_norm_matches_cpu", group_norm_matches_cpu),
            ("group_norm_handles_a_large_mean", group_norm_handles_a_large_mean),
            ("timesteps_at_full_range_match_cpu", timesteps_at_full_range_match_cpu),
            ("bad_token_id_is_an_error_not_a_crash", bad_token_id_is_an_error_not_a_crash),
            ("lora_linear_unmerged_and_merged_match_cpu", lora_linear_unmerged_and_merged_match_cpu),
            ("lora_conv_unmerged_and_merged_match_cpu", lora_conv_unmerged_and_merged_match_cpu),
            ("f32_activations_match_cpu", f32_activations_match_cpu),
            ("f32_activations_hold_values_past_f16_range", f32_activations_hold_values_past_f16_range),
        ],
    )
}
