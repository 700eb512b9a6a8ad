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
//! `limited_rows_match_calls_over_their_keys` checks the attention key limit against its meaning on the
//! CUDA backend alone: a limited row is a call over its own keys.

#[path = "backend_ops/cases.rs"]
mod cases;
mod gpu_util;

use cases::*;
use gpu_util::{fail_case, random_inputs, run_gpu_tests, Diff, Input, Pair, Rng, TOL};
use lcm::cuda::{CudaBackend, Precision};
use lcm_core::{Activation, Elem, MapKind, Op};

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
    AttentionLimited,
    Geglu,
    Silu,
    Gelu,
    QuickGelu,
    Relu,
    TanhClamp,
    Scale,
    Add,
    AddChannel,
    AddScaled,
    Concat,
    Upsample,
    Embed,
    TimestepEmbed,
    Cast,
    LcmStep,
    InpaintBlend,
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
        Op::Attention { key_limit: Some(_), .. } => Kind::AttentionLimited,
        Op::Attention { causal: false, key_limit: None, .. } => Kind::Attention,
        Op::Attention { causal: true, key_limit: None, .. } => Kind::AttentionCausal,
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
        Op::AddScaled { .. } => Kind::AddScaled,
        Op::Concat { .. } => Kind::Concat,
        Op::Upsample { .. } => Kind::Upsample,
        Op::Embed { .. } => Kind::Embed,
        Op::TimestepEmbed { .. } => Kind::TimestepEmbed,
        Op::Cast { .. } => Kind::Cast,
        Op::LcmStep { .. } => Kind::LcmStep,
        Op::InpaintBlend { .. } => Kind::InpaintBlend,
    }
}

/// Whether the f32-activation backend has kernels for `k` (the ops a VAE runs).
fn has_f32(k: Kind) -> bool {
    use Kind::*;
    match k {
        Conv2d | Conv2dResidual | Linear | LinearResidual | GroupNorm | GroupNormSilu | Attention
        | AttentionLimited => true,
        Silu | Gelu | QuickGelu | Relu | TanhClamp | Scale | Add | Upsample | Cast => true,
        LinearGeglu | LayerNorm | AttentionCausal | Geglu | AddChannel | AddScaled | Concat | Embed | TimestepEmbed
        | LcmStep | InpaintBlend => false,
    }
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
        Kind::AttentionLimited => attention_limited_cases(),
        Kind::Geglu | Kind::AddChannel | Kind::AddScaled => eltwise_cases(k),
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
        Kind::InpaintBlend => inpaint_blend_cases(),
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

/// On the CUDA backend, each batch row of a limited attention equals a batch-1 call over its own keys
/// alone (q, and k and v cut to the keys it sees). The keys past a limited row's count are NaN, so a
/// kernel that reads them (a key not masked, or not zero-filled under 0·P) fails.
fn limited_rows_match_calls_over_their_keys(be: CudaBackend) {
    for (i, c) in LIMITED_ATTN.iter().enumerate() {
        let g = limited_attention_graph(c);
        let (batch, n_kv, l, tag) = (c.0, c.2, c.5, c.6);
        let (n_q, ch) = (g.shape(g.inputs[0])[1], c.3 * c.4);
        let mut rng = Rng::new(20_000 + i as u64);
        let [q, mut k, mut v] = [n_q, n_kv, n_kv].map(|t| rng.vec(batch * t * ch, 1.0));
        for b in l.rows() {
            for x in [&mut k, &mut v] {
                x[(b * n_kv + l.keys) * ch..(b + 1) * n_kv * ch].fill(f32::NAN);
            }
        }
        let mut pair = Pair::new(&be, g, &mut rng);
        let inputs: Vec<Input> = [&q, &k, &v].map(|x| Input::F32(x.clone())).into();
        pair.run(&inputs);
        let limited = pair.gpu_output(0);
        for b in 0..batch {
            let keys = if l.rows().contains(&b) { l.keys } else { n_kv };
            let one = graph(|gb| {
                let qi = gb.input(&[1, n_q, ch], Elem::Act);
                let ki = gb.input(&[1, keys, ch], Elem::Act);
                let vi = gb.input(&[1, keys, ch], Elem::Act);
                gb.attention(qi, ki, vi, c.3, false)
            });
            let cut = |x: &[f32], t: usize, m: usize| Input::F32(x[b * t * ch..(b * t + m) * ch].to_vec());
            let mut alone = Pair::new(&be, one, &mut rng);
            alone.run(&[cut(&q, n_q, n_q), cut(&k, n_kv, keys), cut(&v, n_kv, keys)]);
            let row = &limited[b * n_q * ch..(b + 1) * n_q * ch];
            let d = Diff::of(row, &alone.gpu_output(0));
            println!("{tag}: row {b} ({keys} keys) against a call over its keys: {d}");
            if !d.ok() {
                fail_case(format!("{tag}: row {b} ({keys} keys): {d} (limit {TOL:.0e}); kernels: {}", pair.kernels()));
            }
        }
    }
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
            ("limited_rows_match_calls_over_their_keys", limited_rows_match_calls_over_their_keys),
        ],
    )
}
