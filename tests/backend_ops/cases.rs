//! The cases of tests/backend_ops.rs, per op: model shapes (a CI set, and the rest with
//! `LCM_BACKEND_OPS_FULL=1`) and awkward ones, shrunk on the emulator to a budget (`gpu_util::fit`).

use crate::gpu_util::{self, fit, Input, Rng};
use crate::Kind;
use lcm_core::lcm::{Prediction, Sampling, StepRow, StepRule, STEP_ROW};
use lcm_core::{Activation, Elem, Graph, GraphBuilder, KeyLimit, MapKind, TensorId, WeightKind};

/// One graph to run on both backends, with its inputs when random normal ones will not do.
pub struct Case {
    pub name: String,
    pub graph: Graph,
    pub inputs: Option<Vec<Input>>,
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

pub fn graph(f: impl FnOnce(&mut GraphBuilder) -> TensorId) -> Graph {
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

pub fn conv_cases(residual: bool) -> Vec<Case> {
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

pub fn linear_cases(epilogue: Kind) -> Vec<Case> {
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
    let fits = |s: &LinearShape| epilogue != Kind::LinearGeglu || s.2.is_multiple_of(2);
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

pub fn group_norm_cases(silu: bool) -> Vec<Case> {
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

pub fn layer_norm_cases() -> Vec<Case> {
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

pub fn attention_cases(causal: bool) -> Vec<Case> {
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
            // A1111 prompts of k chunks: 77·k keys, and odd counts, through each kernel.
            (2, 64, 154, 8, 40, "77·2 keys (hd40)"),
            (1, 64, 231, 8, 80, "77·3 keys (hd80)"),
            (1, 64, 308, 8, 160, "77·4 keys (hd160, key tiles of 32)"),
            (1, 40, 1, 2, 16, "one key"),
            (1, 40, 65, 2, 64, "65 keys: one past the tile"),
            (1, 33, 231, 1, 512, "77·3 keys through the wide kernel"),
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

/// (batch, n_q, n_kv, heads, head_dim, limit, tag): limited rows at the start and at the end of the
/// batch, A1111's 77·k key counts and odd ones, through each kernel.
pub type LimitedAttn = (usize, usize, usize, usize, usize, KeyLimit, &'static str);

const fn limit(rows_begin: usize, rows_end: usize, keys: usize) -> KeyLimit {
    KeyLimit { rows_begin, rows_end, keys }
}

pub const LIMITED_ATTN: &[LimitedAttn] = &[
    (2, 1024, 154, 8, 80, limit(0, 1, 77), "unet cross 32x32, uncond 77 of 154 (hd80)"),
    (2, 256, 154, 8, 160, limit(1, 2, 77), "unet cross 16x16, cond 77 of 154 (hd160)"),
    (3, 64, 231, 8, 40, limit(2, 3, 154), "154 of 231, last row (hd40)"),
    (4, 64, 231, 8, 40, limit(0, 2, 154), "154 of 231, first two rows (hd40)"),
    (2, 100, 65, 2, 8, limit(0, 1, 1), "1 of 65 (hd8)"),
    (2, 70, 100, 3, 12, limit(1, 2, 77), "77 of 100, scalar loads (hd12)"),
    (2, 33, 154, 1, 512, limit(0, 1, 77), "77 of 154 through the wide kernel"),
];

/// Limited attention's graph, its queries shrunk to the emulator's budget.
pub fn limited_attention_graph(&(batch, n_q, n_kv, heads, d, l, _): &LimitedAttn) -> Graph {
    let (macs, _) = budget();
    let [n_q] = fit([n_q], [1], macs, |[q]| (2 * batch * heads * d * q * n_kv) as u64);
    graph(|b| {
        let q = b.input(&[batch, n_q, heads * d], Elem::Act);
        let k = b.input(&[batch, n_kv, heads * d], Elem::Act);
        let v = b.input(&[batch, n_kv, heads * d], Elem::Act);
        b.attention_limited(q, k, v, heads, Some(l))
    })
}

pub fn attention_limited_cases() -> Vec<Case> {
    let cases = LIMITED_ATTN.iter().map(|c| {
        let (batch, _, n_kv, heads, d, l, tag) = *c;
        let name =
            format!("{tag}: batch {batch}, {n_kv} keys, rows {:?} see {}, {heads} heads of {d}", l.rows(), l.keys);
        case(name, limited_attention_graph(c))
    });
    cases.collect()
}

/// The element-wise shapes: a UNet activation and an awkward one (odd sizes, no vector fits). Full size
/// even on the emulator (memory-bound ops are cheap there), as are the concat and upsample cases.
fn eltwise_shapes() -> [([usize; 4], &'static str); 2] {
    [([1, 64, 64, 320], "sd"), ([2, 3, 5, 7], "awkward")]
}

pub fn map_cases(kind: MapKind) -> Vec<Case> {
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

pub fn act_cases(act: Activation) -> Vec<Case> {
    let mut v = map_cases(MapKind::Act(act));
    v.iter_mut().for_each(|c| c.name = format!("{act:?} {}", c.name));
    v
}

pub fn eltwise_cases(k: Kind) -> Vec<Case> {
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
            // Two rows of weights, the second read: the op must take its row, per image.
            Kind::AddScaled => v.push(case(
                format!("add_scaled {tag} {s:?}"),
                graph(|b| {
                    let x = b.input(&s, Elem::Act);
                    let y = b.input(&s, Elem::Act);
                    let w = b.input(&[2, n], Elem::F32);
                    b.add_scaled(x, y, w, 1)
                }),
            )),
            Kind::Geglu => v.push(case(
                format!("geglu (unfused) {tag} {s:?}"),
                graph(|b| {
                    let x = b.input(&[n, h * w, 2 * c], Elem::Act);
                    b.geglu(x)
                }),
            )),
            _ => unreachable!("eltwise_cases serves AddChannel, AddScaled and Geglu"),
        }
    }
    v
}

pub fn concat_cases() -> Vec<Case> {
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

pub fn upsample_cases() -> Vec<Case> {
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

pub fn embed_cases() -> Vec<Case> {
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

pub fn timestep_cases() -> Vec<Case> {
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

pub fn cast_cases() -> Vec<Case> {
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
    // The sampler's scale_model_input: a cast dividing by a schedule row's input_div.
    let scaled = [([1, h, w, 4], 2, 0), ([1, 3, 5, 3], 1, 1)].into_iter().map(|(s, copies, step)| {
        let n: usize = s.iter().product();
        let g = graph(|b| {
            let x = b.input(&s, Elem::F32);
            let sched = b.input(&[2, STEP_ROW], Elem::F32);
            b.scale_model_input(x, copies, sched, step)
        });
        let inputs = vec![Input::F32(Rng::new(1750).vec(n, 3.0)), Input::F32(schedule())];
        Case { name: format!("scale_model_input row {step} {s:?} x{copies}"), graph: g, inputs: Some(inputs) }
    });
    cases.chain(scaled).collect()
}

/// Schedule rows as a real run has them (SD1.5's at t = 999 and t = 259, guidance 1.5 and 8), with
/// every rule's coefficients filled (LCM's, DDIM's, Euler's).
fn schedule() -> Vec<f32> {
    let first = StepRow {
        timestep: 999.0,
        guidance: 1.5,
        sqrt_alpha_t: 0.0683,
        sqrt_beta_t: 0.9977,
        sigma: 14.61,
        sigma_sq1: 214.45,
        input_div: 14.644,
        x0_coef: 1.0,
        skip_coef: 0.0,
        eps_coef: 0.97,
        dt: -6.3,
        renoise: 0.23,
        noise: 0.97,
        keep_image: 0.23,
        keep_noise: 0.97,
        pad: 0.0,
    };
    let last = StepRow {
        timestep: 259.0,
        guidance: 8.0,
        sqrt_alpha_t: 0.7374,
        sqrt_beta_t: 0.6755,
        sigma: 0.916,
        sigma_sq1: 1.839,
        input_div: 1.356,
        x0_coef: 0.9987,
        skip_coef: 0.0013,
        eps_coef: 0.0413,
        dt: -0.916,
        renoise: 0.9991,
        noise: 0.0413,
        keep_image: 0.9991,
        keep_noise: 0.0413,
        pad: 0.0,
    };
    [first.as_slice(), last.as_slice()].concat()
}

pub fn lcm_step_cases() -> Vec<Case> {
    let (_, elems) = budget();
    let [h, w] = fit_hw([64, 64], 1, 4, elems);
    let (lcm, ddim, euler) = (StepRule::Consistency, StepRule::Ddim, StepRule::Euler);
    let (eps, v, x0) = (Prediction::Epsilon, Prediction::VPrediction, Prediction::Sample);
    let all = [
        ([1, h, w, 4], 0, true, lcm, eps, None, "lcm sd 512 guided, noise re-injected"),
        ([2, h, w, 4], 1, false, lcm, v, Some(1.0), "lcm batch 2, v-prediction, clipped, last step"),
        ([1, 3, 5, 3], 0, true, lcm, x0, None, "lcm awkward, sample prediction"),
        ([1, h, w, 4], 0, true, ddim, v, None, "ddim/tcd v-prediction guided, noise"),
        ([2, 3, 5, 3], 1, false, ddim, x0, Some(1.0), "ddim sample prediction, clipped, last step"),
        ([1, h, w, 4], 0, false, ddim, eps, None, "ddim/tcd epsilon, noise"),
        ([1, h, w, 4], 0, true, euler, eps, None, "euler-ancestral epsilon guided, noise"),
        ([2, 3, 5, 3], 1, false, euler, v, None, "euler v-prediction, last step"),
    ];
    let mut rng = Rng::new(1700);
    let cases = all.into_iter().map(|(s, step, guided, rule, prediction, clip, tag)| {
        let n: usize = s.iter().product();
        let sampling = Sampling { rule, prediction, clip };
        let g = graph(|b| {
            let x = b.input(&s, Elem::F32);
            let eps = b.input(&[s[0] * if guided { 2 } else { 1 }, s[1], s[2], s[3]], Elem::Act);
            let sched = b.input(&[2, STEP_ROW], Elem::F32);
            let noise = (step == 0).then(|| (b.input(&[1, s[0], s[1], s[2], s[3]], Elem::F32), 0));
            b.lcm_step(x, eps, noise, sched, step, guided, sampling)
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

/// Inpainting's blend: a mid-loop step (re-noised image) and the last (the image itself), with a 0/1
/// mask as the pipeline binarises it.
pub fn inpaint_blend_cases() -> Vec<Case> {
    let mut rng = Rng::new(1800);
    [([1, 8, 8, 4], 0, false, "mid-loop"), ([2, 3, 5, 4], 1, true, "awkward, batch 2, last step")]
        .into_iter()
        .map(|(s, step, last, tag)| {
            let n: usize = s.iter().product();
            let pixels = n / s[3];
            let g = graph(|b| {
                let [x, image, noise] = [0; 3].map(|_| b.input(&s, Elem::F32));
                let mask = b.input(&[s[0], s[1], s[2], 1], Elem::F32);
                let sched = b.input(&[2, STEP_ROW], Elem::F32);
                b.inpaint_blend(x, image, noise, mask, sched, step, last)
            });
            let mask = (0..pixels).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect();
            let mut inputs: Vec<Input> = (0..3).map(|_| Input::F32(rng.vec(n, 1.0))).collect();
            inputs.extend([Input::F32(mask), Input::F32(schedule())]);
            Case { name: format!("inpaint_blend {tag} {s:?}"), graph: g, inputs: Some(inputs) }
        })
        .collect()
}
