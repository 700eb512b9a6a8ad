//! Every op on every backend (ggml's test-backend-ops): each `Op` variant — each fused form and each
//! `MapKind` apart — at the shapes the models run and at awkward ones (odd sizes, vector tails, batch 2),
//! run on the CPU reference and on the CUDA backend (a GPU, or the kernel emulator where there is none)
//! with the same random inputs and weights, the GPU arena poisoned with NaN first. A case passes when
//! every output's relative L2 is below 1e-2, the GPU output has no NaN, and the CPU's is finite and not
//! all zeros (a case that computes nothing proves nothing).
//!
//! Complete by construction: [`kind_of`] gives every op its [`Kind`] with an exhaustive match (no `_`
//! arm), so a new `Op`, `MapKind` or `Activation` does not compile until it has a kind; [`cases`]
//! matches every kind, so a kind does not compile until it has cases; and each case must hold an op of
//! its kind after fusion (checked before it runs). `every_op_matches_cpu_f32` runs the kinds that have
//! f32-activation kernels (a `force_upcast` VAE's) on that backend too.
//!
//! The CI set keeps the model shapes but shrinks their spatial and token sizes on the emulator to a small
//! budget (`gpu_util::fit`; channels, heads and kernel sizes stay); `LCM_BACKEND_OPS_FULL=1` adds the
//! rest of the model shapes and uses the GPU suites' larger budget. On a GPU nothing shrinks.
//! `LCM_BACKEND_OPS_KIND=Silu` runs only the kinds whose name contains it.

mod gpu_util;

use gpu_util::{fail_case, fit, random_inputs, run_gpu_tests, Diff, Input, Pair, Rng, TOL};
use lcm::cuda::{CudaBackend, Precision};
use lcm_core::lcm::{Prediction, StepRow, STEP_ROW};
use lcm_core::{Activation, Elem, Graph, GraphBuilder, MapKind, Op, TensorId, WeightKind};

macro_rules! kinds {
    ($($k:ident),* $(,)?) => {
        /// What a case tests: one op variant, fused form or map function.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Kind { $($k),* }
        const KINDS: &[Kind] = &[$(Kind::$k),*];
    };
}

kinds!(
    Conv2d,
    Conv2dResidual,
    Linear,
    LinearResidual,
    LinearGeglu,
    GroupNorm,
    GroupNormSilu,
    LayerNorm,
    Attention,
    AttentionCausal,
    Geglu,
    Silu,
    Gelu,
    QuickGelu,
    Relu,
    TanhClamp,
    Scale,
    Add,
    AddChannel,
    Concat,
    Upsample,
    Embed,
    TimestepEmbed,
    Cast,
    LcmStep,
);

/// The kind of `op`. Exhaustive on purpose (no `_` arm): a new op does not compile without one.
fn kind_of(op: &Op) -> Kind {
    match *op {
        Op::Conv2d { residual: None, .. } => Kind::Conv2d,
        Op::Conv2d { residual: Some(_), .. } => Kind::Conv2dResidual,
        Op::Linear { geglu: true, .. } => Kind::LinearGeglu,
        Op::Linear { residual: None, geglu: false, .. } => Kind::Linear,
        Op::Linear { residual: Some(_), geglu: false, .. } => Kind::LinearResidual,
        Op::GroupNorm { silu: false, .. } => Kind::GroupNorm,
        Op::GroupNorm { silu: true, .. } => Kind::GroupNormSilu,
        Op::LayerNorm { .. } => Kind::LayerNorm,
        Op::Attention { causal: false, .. } => Kind::Attention,
        Op::Attention { causal: true, .. } => Kind::AttentionCausal,
        Op::Geglu { .. } => Kind::Geglu,
        Op::Map { kind, .. } => match kind {
            MapKind::Act(Activation::Silu) => Kind::Silu,
            MapKind::Act(Activation::Gelu) => Kind::Gelu,
            MapKind::Act(Activation::QuickGelu) => Kind::QuickGelu,
            MapKind::Act(Activation::Relu) => Kind::Relu,
            MapKind::Act(Activation::TanhClamp) => Kind::TanhClamp,
            MapKind::Scale { .. } => Kind::Scale,
            MapKind::Add => Kind::Add,
        },
        Op::AddChannel { .. } => Kind::AddChannel,
        Op::Concat { .. } => Kind::Concat,
        Op::Upsample { .. } => Kind::Upsample,
        Op::Embed { .. } => Kind::Embed,
        Op::TimestepEmbed { .. } => Kind::TimestepEmbed,
        Op::Cast { .. } => Kind::Cast,
        Op::LcmStep { .. } => Kind::LcmStep,
    }
}

/// Whether the f32-activation backend has kernels for `k` (the ops a VAE runs).
fn has_f32(k: Kind) -> bool {
    use Kind::*;
    match k {
        Conv2d | Conv2dResidual | Linear | LinearResidual | GroupNorm | GroupNormSilu | Attention => true,
        Silu | Gelu | QuickGelu | Relu | TanhClamp | Scale | Add | Upsample | Cast => true,
        LinearGeglu | LayerNorm | AttentionCausal | Geglu | AddChannel | Concat | Embed | TimestepEmbed | LcmStep => {
            false
        }
    }
}

/// One graph to run on both backends, with its inputs when random normal ones will not do.
struct Case {
    name: String,
    graph: Graph,
    inputs: Option<Vec<Input>>,
}

fn full() -> bool {
    std::env::var("LCM_BACKEND_OPS_FULL").is_ok_and(|v| v == "1")
}

/// The emulator's budget per case (multiply-accumulates, elements): small for the CI set.
fn budget() -> (u64, u64) {
    if full() {
        (gpu_util::EMULATED_MACS, gpu_util::EMULATED_ELEMENTS)
    } else {
        (20_000_000, 400_000)
    }
}

/// Spatial sizes `[h, w]` of an NHWC tensor with `per_pixel` elements (or MACs) a pixel, fitted.
fn fit_hw([h, w]: [usize; 2], min: usize, per_pixel: usize, limit: u64) -> [usize; 2] {
    fit([h, w], [min, min], limit, |[h, w]| (h * w * per_pixel) as u64)
}

fn graph(f: impl FnOnce(&mut GraphBuilder) -> TensorId) -> Graph {
    let mut b = GraphBuilder::new();
    let out = f(&mut b);
    b.output(out);
    b.finish().expect("test graph")
}

fn case(name: impl Into<String>, graph: Graph) -> Case {
    Case { name: name.into(), graph, inputs: None }
}

/// Model shapes of the CI set, then (`LCM_BACKEND_OPS_FULL=1`) the rest.
fn shapes<T: Copy>(ci: &[T], more: &[T]) -> Vec<T> {
    let mut v = ci.to_vec();
    if full() {
        v.extend_from_slice(more);
    }
    v
}

/// (batch, h, w, ci, co, k, stride, pad, tag)
type ConvShape = (usize, usize, usize, usize, usize, usize, usize, [usize; 4], &'static str);

fn conv_cases(residual: bool) -> Vec<Case> {
    let ci: &[ConvShape] = &[
        (1, 64, 64, 320, 320, 3, 1, [1; 4], "unet 64x64"),
        (1, 64, 64, 4, 320, 3, 1, [1; 4], "unet conv_in (4 channels: scalar path)"),
        (1, 32, 32, 320, 640, 1, 1, [0; 4], "unet shortcut 1x1"),
        (1, 64, 64, 320, 320, 3, 2, [1; 4], "unet downsampler"),
        (1, 64, 64, 128, 128, 3, 2, [0, 0, 1, 1], "vae encoder downsampler (pad 0,0,1,1)"),
        (2, 9, 7, 16, 24, 3, 1, [1; 4], "awkward: non-square, batch 2, off-tile"),
        (2, 5, 6, 3, 5, 3, 1, [1; 4], "awkward: 3 in, 5 out"),
        (1, 7, 9, 12, 136, 1, 1, [0; 4], "awkward: 12 channels (scalar), 136 out"),
        (1, 6, 6, 8, 8, 3, 1, [2, 0, 1, 2], "awkward: uneven padding"),
    ];
    let more: &[ConvShape] = &[
        (1, 16, 16, 1920, 1280, 3, 1, [1; 4], "unet up 1 conv1 (1920)"),
        (1, 8, 8, 2560, 1280, 3, 1, [1; 4], "unet up 0 conv1"),
        (1, 128, 128, 512, 512, 3, 1, [1; 4], "vae 128x128"),
        (1, 512, 512, 128, 3, 3, 1, [1; 4], "vae conv_out (3 outputs)"),
    ];
    let (macs, _) = budget();
    let cases = shapes(ci, more).into_iter().map(|(batch, h, w, ci, co, k, stride, pad, tag)| {
        let per_pixel = batch * co * ci * k * k / (stride * stride);
        let [h, w] = fit_hw([h, w], 2 * k, per_pixel, macs);
        let g = graph(|b| {
            let x = b.input(&[batch, h, w, ci], Elem::Act);
            let y = b.conv2d("conv", x, co, k, stride, pad, true);
            if residual {
                let r = b.input(b.shape(y).to_vec().as_slice(), Elem::Act);
                b.add(y, r) // fused into the GEMM's epilogue by lcm_core::fuse
            } else {
                y
            }
        });
        case(format!("{tag} {batch}x{h}x{w}x{ci}->{co} k{k}/{stride}"), g)
    });
    cases.collect()
}

/// ([batch, tokens], k, n, tag)
type LinearShape = ([usize; 2], usize, usize, &'static str);

fn linear_cases(epilogue: Kind) -> Vec<Case> {
    let ci: &[LinearShape] = &[
        ([1, 4096], 320, 320, "unet to_q 64x64"),
        ([1, 4096], 320, 2560, "unet ff.net.0 64x64"),
        ([2, 77], 768, 320, "unet cross-attn to_k, batch 2"),
        ([2, 1], 1280, 1280, "time_emb_proj batch 2"),
        ([2, 37], 24, 12, "awkward: off-tile everything"),
        ([1, 50], 20, 33, "awkward: K=20 (scalar A), odd N"),
        ([3, 5], 16, 6, "awkward: 6 outputs"),
    ];
    let more: &[LinearShape] = &[
        ([1, 4096], 1280, 320, "unet ff.net.2"),
        ([1, 256], 1280, 10240, "unet ff.net.0 16x16"),
        ([1, 77], 768, 3072, "clip fc1"),
    ];
    let (macs, _) = budget();
    // GEGLU halves N: its cases keep the even widths.
    let fits = |s: &LinearShape| epilogue != Kind::LinearGeglu || s.2 % 2 == 0;
    let cases = shapes(ci, more).into_iter().filter(fits).map(|([batch, t], k, n, tag)| {
        let [t] = fit([t], [1], macs, |[t]| (batch * t * k * n) as u64);
        let g = graph(|b| {
            let x = b.input(&[batch, t, k], Elem::Act);
            let y = b.linear("fc", x, n, true);
            match epilogue {
                Kind::LinearGeglu => b.geglu(y), // fused: the GEMM's epilogue computes hidden·gelu(gate)
                Kind::LinearResidual => {
                    let r = b.input(&[batch, t, n], Elem::Act);
                    b.add(y, r)
                }
                _ => y,
            }
        });
        case(format!("{tag} [{batch}, {t}, {k}] -> {n}"), g)
    });
    cases.collect()
}

fn group_norm_cases(silu: bool) -> Vec<Case> {
    let ci: &[([usize; 4], usize, &str)] = &[
        ([1, 64, 64, 320], 32, "unet 64x64"),
        ([1, 8, 8, 2560], 32, "unet up 0 (2560)"),
        ([2, 16, 16, 1280], 32, "batch 2"),
        ([1, 64, 64, 128], 32, "vae (4 channels a group)"),
        ([2, 5, 7, 12], 4, "awkward: 12 channels (scalar path)"),
        ([1, 1, 1, 64], 32, "one pixel"),
        ([1, 3, 1, 40], 8, "5 channels a group straddling vectors"),
    ];
    let more: &[([usize; 4], usize, &str)] =
        &[([1, 16, 16, 1920], 32, "unet up 1 (1920)"), ([1, 256, 256, 256], 32, "vae 256x256")];
    let (_, elems) = budget();
    let cases = shapes(ci, more).into_iter().map(|([n, h, w, c], groups, tag)| {
        let [h, w] = fit_hw([h, w], 1, n * c, elems);
        let g = graph(|b| {
            let x = b.input(&[n, h, w, c], Elem::Act);
            let y = b.group_norm("gn", x, groups, 1e-5, false);
            if silu {
                b.activation(y, Activation::Silu) // fused into the norm by lcm_core::fuse
            } else {
                y
            }
        });
        case(format!("{tag} [{n}, {h}, {w}, {c}] / {groups}"), g)
    });
    cases.collect()
}

fn layer_norm_cases() -> Vec<Case> {
    let all = [
        ([1, 4096, 320], "unet 64x64"),
        ([2, 77, 768], "clip batch 2"),
        ([1, 256, 1280], "unet 16x16"),
        ([3, 5, 12], "awkward"),
    ];
    let cases = all.into_iter().map(|(shape, tag)| {
        case(
            format!("{tag} {shape:?}"),
            graph(|b| {
                let x = b.input(&shape, Elem::Act);
                b.layer_norm("ln", x, 1e-5)
            }),
        )
    });
    cases.collect()
}

/// (batch, n_q, n_kv, heads, head_dim, tag)
type AttnShape = (usize, usize, usize, usize, usize, &'static str);

fn attention_cases(causal: bool) -> Vec<Case> {
    let ci: &[AttnShape] = if causal {
        &[
            (2, 77, 77, 12, 64, "clip (hd64), batch 2"),
            (1, 50, 50, 4, 16, "tiny hd16"),
            (1, 65, 65, 2, 20, "hd20, one past the tile"),
        ]
    } else {
        &[
            (1, 4096, 4096, 8, 40, "unet self 64x64 (hd40)"),
            (2, 1024, 77, 8, 80, "unet cross 32x32 batch 2 (hd80)"),
            (1, 256, 256, 8, 160, "unet self 16x16 (hd160)"),
            (1, 4096, 4096, 1, 512, "vae mid block (hd512)"),
            (2, 100, 33, 2, 8, "awkward: hd8"),
            (1, 70, 130, 3, 12, "awkward: hd12, scalar loads"),
            (1, 33, 47, 2, 200, "awkward: hd200 through the wide kernel"),
        ]
    };
    let more: &[AttnShape] = if causal {
        &[(1, 77, 77, 20, 64, "clip-g (20 heads)")]
    } else {
        &[(2, 129, 129, 2, 96, "hd96 padded to 128")]
    };
    let (macs, _) = budget();
    let cases = shapes(ci, more).into_iter().map(|(batch, n_q, n_kv, heads, d, tag)| {
        // Self-attention shrinks queries and keys together; cross-attention keeps its keys.
        let self_attn = n_q == n_kv;
        let cost = |[q]: [usize; 1]| (2 * batch * heads * d * q * if self_attn { q } else { n_kv }) as u64;
        let [n_q] = fit([n_q], [1], macs, cost);
        let n_kv = if self_attn { n_q } else { n_kv };
        let g = graph(|b| {
            let q = b.input(&[batch, n_q, heads * d], Elem::Act);
            let k = b.input(&[batch, n_kv, heads * d], Elem::Act);
            let v = b.input(&[batch, n_kv, heads * d], Elem::Act);
            b.attention(q, k, v, heads, causal)
        });
        case(format!("{tag}: {batch}x{n_q}x{n_kv}, {heads} heads of {d}"), g)
    });
    cases.collect()
}

/// The element-wise shapes: a UNet activation and an awkward one (odd sizes, no vector fits). Full size
/// even on the emulator (memory-bound ops are cheap there), as are the concat and upsample cases.
fn eltwise_shapes() -> [([usize; 4], &'static str); 2] {
    [([1, 64, 64, 320], "sd"), ([2, 3, 5, 7], "awkward")]
}

fn map_cases(kind: MapKind) -> Vec<Case> {
    let cases = eltwise_shapes().into_iter().map(|(shape, tag)| {
        let g = graph(|b| {
            let x = b.input(&shape, Elem::Act);
            match kind {
                // Spread to ±6 so saturation (TanhClamp's, the sigmoids') is exercised, not only the middle.
                MapKind::Act(act) => {
                    let x = b.scale(x, 6.0, 0.0);
                    b.activation(x, act)
                }
                MapKind::Scale { .. } | MapKind::Add => {
                    let y = (kind.arity() == 2).then(|| b.input(&shape, Elem::Act));
                    b.map(kind, x, y)
                }
            }
        });
        case(format!("{} {tag} {shape:?}", kind.name()), g)
    });
    cases.collect()
}

fn act_cases(act: Activation) -> Vec<Case> {
    let mut v = map_cases(MapKind::Act(act));
    v.iter_mut().for_each(|c| c.name = format!("{act:?} {}", c.name));
    v
}

fn eltwise_cases(k: Kind) -> Vec<Case> {
    let mut v = Vec::new();
    for (s, tag) in eltwise_shapes() {
        let [n, h, w, c] = s;
        match k {
            Kind::AddChannel => v.push(case(
                format!("add_channel {tag} {s:?}"),
                graph(|b| {
                    let x = b.input(&s, Elem::Act);
                    let t = b.input(&[n, c], Elem::Act);
                    b.add_channel(x, t)
                }),
            )),
            Kind::Geglu => v.push(case(
                format!("geglu (unfused) {tag} {s:?}"),
                graph(|b| {
                    let x = b.input(&[n, h * w, 2 * c], Elem::Act);
                    b.geglu(x)
                }),
            )),
            _ => unreachable!("eltwise_cases serves AddChannel and Geglu"),
        }
    }
    v
}

fn concat_cases() -> Vec<Case> {
    let all = [
        ([1, 64, 64, 320], 320, "unet skip concat"),
        ([2, 8, 8, 1280], 1280, "batch 2"),
        ([1, 3, 5, 4], 3, "awkward 4+3"),
    ];
    let cases = all.into_iter().map(|(sa, cb, tag)| {
        let g = graph(|b| {
            let a = b.input(&sa, Elem::Act);
            let c = b.input(&[sa[0], sa[1], sa[2], cb], Elem::Act);
            b.concat(a, c)
        });
        case(format!("concat {tag} {sa:?} + {cb}"), g)
    });
    cases.collect()
}

fn upsample_cases() -> Vec<Case> {
    let all = [
        ([1, 32, 32, 640], 64, 64, "2x"),
        ([2, 8, 8, 1280], 16, 16, "2x batch 2"),
        ([1, 5, 7, 8], 11, 13, "arbitrary"),
        ([1, 6, 4, 3], 9, 10, "arbitrary, 3 channels"),
        ([1, 9, 9, 16], 4, 5, "downscale"),
    ];
    let cases = all.into_iter().map(|(s, ho, wo, tag)| {
        case(
            format!("upsample {tag} {s:?} -> {ho}x{wo}"),
            graph(|b| {
                let x = b.input(&s, Elem::Act);
                b.upsample(x, ho, wo)
            }),
        )
    });
    cases.collect()
}

fn embed_cases() -> Vec<Case> {
    let all = [(2, 77, 768, 1000, "clip-like"), (1, 5, 12, 30, "awkward")];
    let cases = all.into_iter().map(|(batch, tokens, c, vocab, tag)| {
        let g = graph(|b| {
            let ids = b.input(&[batch, tokens], Elem::I32);
            let table = b.weight("table", &[vocab, c], WeightKind::Plain);
            let pos = b.weight("pos", &[tokens + 3, c], WeightKind::Plain);
            b.embed(ids, table, pos)
        });
        case(format!("embed {tag}: {batch}x{tokens} of {c}, vocabulary {vocab}"), g)
    });
    cases.collect()
}

fn timestep_cases() -> Vec<Case> {
    let all = [
        (2, 320, true, 0.0, "unet timestep"),
        (1, 256, false, 1.0, "guidance embedding"),
        (3, 7, true, 0.0, "odd width"),
    ];
    let mut v: Vec<Case> = all
        .into_iter()
        .map(|(batch, dim, flip, shift, tag)| {
            let g = graph(|b| {
                let t = b.input(&[batch], Elem::Act);
                b.timestep_embed(t, dim, flip, shift)
            });
            case(format!("timestep {tag}: {batch} of {dim}"), g)
        })
        .collect();
    // Row 1 of a loop's [steps, B] timesteps, at the schedule's real values.
    let g = graph(|b| {
        let t = b.input(&[2, 2], Elem::Act);
        b.timestep_embed_row(t, 1, 320, true, 0.0)
    });
    let inputs = vec![Input::F32(vec![999.0, 999.0, 759.0, 759.0])];
    v.push(Case { name: "timestep row 1 of [2, 2], t = 759".into(), graph: g, inputs: Some(inputs) });
    v
}

fn cast_cases() -> Vec<Case> {
    let (_, elems) = budget();
    let [h, w] = fit_hw([64, 64], 1, 4, elems);
    let all = [
        ([1, h, w, 4], Elem::F32, Elem::Act, 2, 1.0, 0.0, "latents into a guided UNet batch"),
        ([1, h, w, 4], Elem::Act, Elem::F32, 1, 0.18215, 0.0, "denoised latents / scaling factor"),
        ([1, 3, 5, 3], Elem::F32, Elem::Act, 1, 0.13025, 0.1, "awkward, scale and shift"),
        ([2, 3, 5, 3], Elem::F32, Elem::F32, 3, 2.0, -1.0, "f32 to f32, repeated"),
    ];
    let cases = all.into_iter().map(|(s, from, to, copies, div, add, tag)| {
        let g = graph(|b| {
            let x = b.input(&s, from);
            b.cast(x, to, copies, div, add)
        });
        case(format!("cast {tag}: {s:?} {from:?} -> {to:?} x{copies}"), g)
    });
    cases.collect()
}

/// Schedule rows as a real run has them (SD1.5's at t = 999 and t = 259, guidance 1.5 and 8).
fn schedule() -> Vec<f32> {
    let first = StepRow {
        timestep: 999.0,
        sqrt_alpha_t: 0.0683,
        sqrt_beta_t: 0.9977,
        sqrt_alpha_prev: 0.23,
        sqrt_beta_prev: 0.97,
        c_skip: 0.0,
        c_out: 1.0,
        guidance: 1.5,
    };
    let last = StepRow {
        timestep: 259.0,
        sqrt_alpha_t: 0.7374,
        sqrt_beta_t: 0.6755,
        sqrt_alpha_prev: 0.9991,
        sqrt_beta_prev: 0.0413,
        c_skip: 0.0013,
        c_out: 0.9987,
        guidance: 8.0,
    };
    [first.as_slice(), last.as_slice()].concat()
}

fn lcm_step_cases() -> Vec<Case> {
    let (_, elems) = budget();
    let [h, w] = fit_hw([64, 64], 1, 4, elems);
    let all = [
        ([1, h, w, 4], 0, true, Prediction::Epsilon, None, "sd 512 guided, noise re-injected"),
        ([2, h, w, 4], 1, false, Prediction::VPrediction, Some(1.0), "batch 2, v-prediction, clipped, last step"),
        ([1, 3, 5, 3], 0, true, Prediction::Sample, None, "awkward, sample prediction"),
    ];
    let mut rng = Rng::new(1700);
    let cases = all.into_iter().map(|(s, step, guided, prediction, clip, tag)| {
        let n: usize = s.iter().product();
        let g = graph(|b| {
            let x = b.input(&s, Elem::F32);
            let eps = b.input(&[s[0] * if guided { 2 } else { 1 }, s[1], s[2], s[3]], Elem::Act);
            let sched = b.input(&[2, STEP_ROW], Elem::F32);
            let noise = (step == 0).then(|| b.input(&[1, s[0], s[1], s[2], s[3]], Elem::F32));
            b.lcm_step(x, eps, noise, sched, step, guided, prediction, clip)
        });
        let mut inputs = vec![
            Input::F32(rng.vec(n, 1.0)),
            Input::F32(rng.vec(n * if guided { 2 } else { 1 }, 1.0)),
            Input::F32(schedule()),
        ];
        if step == 0 {
            inputs.push(Input::F32(rng.vec(n, 1.0)));
        }
        Case { name: format!("lcm_step {tag} {s:?}"), graph: g, inputs: Some(inputs) }
    });
    cases.collect()
}

/// The cases of each kind. Exhaustive on purpose (no `_` arm): a new kind does not compile without them.
fn cases(k: Kind) -> Vec<Case> {
    match k {
        Kind::Conv2d => conv_cases(false),
        Kind::Conv2dResidual => conv_cases(true),
        Kind::Linear | Kind::LinearResidual | Kind::LinearGeglu => linear_cases(k),
        Kind::GroupNorm => group_norm_cases(false),
        Kind::GroupNormSilu => group_norm_cases(true),
        Kind::LayerNorm => layer_norm_cases(),
        Kind::Attention => attention_cases(false),
        Kind::AttentionCausal => attention_cases(true),
        Kind::Geglu | Kind::AddChannel => eltwise_cases(k),
        Kind::Silu => act_cases(Activation::Silu),
        Kind::Gelu => act_cases(Activation::Gelu),
        Kind::QuickGelu => act_cases(Activation::QuickGelu),
        Kind::Relu => act_cases(Activation::Relu),
        Kind::TanhClamp => act_cases(Activation::TanhClamp),
        Kind::Scale => map_cases(MapKind::Scale { mul: 1.0 / 0.18215, add: 0.5 }),
        Kind::Add => map_cases(MapKind::Add),
        Kind::Concat => concat_cases(),
        Kind::Upsample => upsample_cases(),
        Kind::Embed => embed_cases(),
        Kind::TimestepEmbed => timestep_cases(),
        Kind::Cast => cast_cases(),
        Kind::LcmStep => lcm_step_cases(),
    }
}

/// Runs one case on both backends; a failure is recorded with its shapes and kernels, and the test goes on.
fn run_case(be: &CudaBackend, kind: Kind, c: Case, seed: u64) {
    let what = format!("{kind:?}: {}", c.name);
    let fused = lcm_core::fuse::fuse(c.graph.clone());
    if !fused.ops.iter().any(|op| kind_of(op) == kind) {
        let held: Vec<Kind> = fused.ops.iter().map(kind_of).collect();
        return fail_case(format!("{what}: the case holds no {kind:?} op after fusion (it holds {held:?})"));
    }
    if gpu_util::too_big_for_reduced_run(&c.graph, &what) {
        return;
    }
    let mut rng = Rng::new(seed);
    let vocab = c.graph.ops.iter().find_map(|op| match *op {
        Op::Embed { table, .. } => Some(c.graph.shape(table)[0]),
        _ => None,
    });
    let inputs = c.inputs.unwrap_or_else(|| random_inputs(&c.graph, &mut rng, vocab.unwrap_or(1)));
    let shapes = gpu_util::input_shapes(&c.graph);
    let mut pair = Pair::new(be, c.graph, &mut rng);
    let diffs = pair.run(&inputs);
    if be.precision() == Precision::F32 && pair.kernels().contains("f16") {
        fail_case(format!("{what}: an f16 kernel ran on f32 activations: {}", pair.kernels()));
    }
    for (i, d) in diffs.into_iter().enumerate() {
        let cpu = pair.ce.output(&pair.cpu, i).expect("CPU output");
        let degenerate = cpu.iter().any(|v| !v.is_finite()) || cpu.iter().all(|&v| v == 0.0);
        println!("{what}: output {i}: {d}");
        if !d.ok() || degenerate {
            let why = if degenerate { "the CPU output is all zeros or not finite" } else { "" };
            fail_case(format!(
                "{what}: inputs {shapes}: output {i}: {d} (limit {TOL:.0e}) {why}; kernels: {}",
                pair.kernels()
            ));
        }
    }
}

/// The kinds to run: all, or those whose name contains `$LCM_BACKEND_OPS_KIND` (the quick loop for one op).
fn run_kinds(be: &CudaBackend, kinds: impl Iterator<Item = Kind>) {
    let only = std::env::var("LCM_BACKEND_OPS_KIND").unwrap_or_default();
    for (k, kind) in kinds.enumerate().filter(|(_, k)| format!("{k:?}").contains(only.as_str())) {
        for (i, c) in cases(kind).into_iter().enumerate() {
            run_case(be, kind, c, 10_000 + 100 * k as u64 + i as u64);
        }
    }
}

fn every_op_matches_cpu(be: CudaBackend) {
    run_kinds(&be, KINDS.iter().copied());
}

fn every_op_matches_cpu_f32(be: CudaBackend) {
    run_kinds(&be.with_precision(Precision::F32), KINDS.iter().copied().filter(|&k| has_f32(k)));
}

/// Diff's verdict is the one every case uses: NaN never passes, and the limit is strict.
fn the_verdict_refuses_nan_and_the_limit(_be: CudaBackend) {
    let reference = [1.0, -2.0, 3.0, 0.5];
    assert!(Diff::of(&reference, &reference).ok());
    assert!(!Diff::of(&[1.0, -2.0, f32::NAN, 0.5], &reference).ok(), "a NaN passed");
    assert!(!Diff::of(&[1.0, -2.0, 3.1, 0.5], &reference).ok(), "a 3% error passed");
}

fn main() -> std::process::ExitCode {
    run_gpu_tests(
        "backend_ops",
        &[
            ("the_verdict_refuses_nan_and_the_limit", the_verdict_refuses_nan_and_the_limit),
            ("every_op_matches_cpu", every_op_matches_cpu),
            ("every_op_matches_cpu_f32", every_op_matches_cpu_f32),
        ],
    )
}
