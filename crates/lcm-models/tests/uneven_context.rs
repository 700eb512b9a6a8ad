//! A guided denoising loop whose uncond and cond texts have different token counts (A1111 prompts of
//! different chunk counts, `DenoiseShape::uncond_ctx_len`) equals running each half alone, as A1111's
//! separate UNet calls do: the shorter half's padded tokens are invisible to it.

mod common;

use common::{assert_close, fixtures};
use lcm_core::lcm::{Prediction, Sampling, StepRow, StepRule, STEP_ROW};
use lcm_core::HostData;
use lcm_cpu::CpuBackend;
use lcm_models::denoise::{input, DenoiseConfig, DenoiseShape, NoiseSteps};
use lcm_models::{LoadOptions, Unet};

const H: usize = 8;
const W: usize = 8;

/// Values in [-1, 1) from a fixed sequence (no zeros: a test on zeros proves nothing).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One step whose output is the (guided) model output itself: x0 = the model output (`sample`
/// prediction), y = 1·x0 + 0·x, no noise. With guidance g = 0 the guided output is the uncond half's,
/// with g = 1 the cond half's (up to c's rounding in u + (c − u)).
fn shape(ctx_len: usize, uncond_ctx_len: Option<usize>, guided: bool) -> DenoiseShape {
    let sampling = Sampling { rule: StepRule::Consistency, prediction: Prediction::Sample, clip: None };
    DenoiseShape {
        images: 1,
        h: H,
        w: W,
        ctx_len,
        uncond_ctx_len,
        steps: 1,
        sampling,
        noise: NoiseSteps::None,
        guided,
        inpaint: None,
    }
}

/// Runs a one-step loop of `d` on `latents` with context `ctx` (`[B, tokens, D]`) at guidance `g`.
fn run(
    unet: &mut Unet<CpuBackend>,
    be: &CpuBackend,
    d: &DenoiseShape,
    latents: &[f32],
    ctx: &[f32],
    g: f32,
) -> Vec<f32> {
    let cfg = DenoiseConfig { vae_scale: 1.0, vae_shift: 0.0, context_split: None };
    let row = StepRow { timestep: 499.0, guidance: g, input_div: 1.0, x0_coef: 1.0, ..StepRow::default() };
    let (ex, weights) = unet.denoiser(be, d, &cfg, &[], &[]).expect("denoising graph");
    let batch = d.batch();
    let c = latents.len() / (H * W);
    assert_eq!(row.as_slice().len(), STEP_ROW);
    ex.set_input(be, input::LATENTS, HostData::F32(latents)).unwrap();
    ex.set_input(be, input::CONTEXT, HostData::F32(ctx)).unwrap();
    ex.set_input(be, input::TIMESTEPS, HostData::F32(&vec![499.0; batch])).unwrap();
    ex.set_input(be, input::SCHEDULE, HostData::F32(row.as_slice())).unwrap();
    ex.set_input(be, input::NOISE, HostData::F32(&vec![0.0; H * W * c])).unwrap();
    ex.run(be, weights).unwrap();
    ex.output(be, 0).unwrap()
}

/// Each orientation: the uncond text shorter (77 of 154) and the cond text shorter (154 of 231).
#[test]
fn a_guided_loop_with_texts_of_different_lengths_equals_each_half_alone() {
    let be = CpuBackend::new();
    let mut unet = Unet::load(&be, &fixtures().join("tiny-sd/unet"), LoadOptions::default()).unwrap();
    let (c, dim) = (unet.config.out_channels, unet.config.cross_attention_dim);
    let latents = values(H * W * c, 1);
    for (uncond_len, cond_len) in [(77, 154), (231, 154)] {
        let tokens = uncond_len.max(cond_len);
        let uncond = values(uncond_len * dim, 2);
        let cond = values(cond_len * dim, 3);
        // Each half's tokens, zeros after them up to the longer text.
        let mut ctx = vec![0.0; 2 * tokens * dim];
        ctx[..uncond.len()].copy_from_slice(&uncond);
        ctx[tokens * dim..tokens * dim + cond.len()].copy_from_slice(&cond);

        let guided = shape(cond_len, Some(uncond_len), true);
        assert_eq!(guided.context_tokens(), tokens);
        let u_alone = run(&mut unet, &be, &shape(uncond_len, None, false), &latents, &uncond, 0.0);
        let c_alone = run(&mut unet, &be, &shape(cond_len, None, false), &latents, &cond, 0.0);
        let u = run(&mut unet, &be, &guided, &latents, &ctx, 0.0);
        let c = run(&mut unet, &be, &guided, &latents, &ctx, 1.0);
        let what = format!("uncond {uncond_len} tokens, cond {cond_len}");
        assert_close(&format!("{what}: uncond half"), &u, &u_alone, 1e-5);
        assert_close(&format!("{what}: cond half"), &c, &c_alone, 1e-5);
        // Without the limit the padding is seen: the shorter half then differs from itself alone. (This
        // shape differs from `guided` only by `uncond_ctx_len`, so it also checks the executor key.)
        let (g, alone) = if uncond_len < cond_len { (0.0, &u_alone) } else { (1.0, &c_alone) };
        let unlimited = run(&mut unet, &be, &shape(tokens, None, true), &latents, &ctx, g);
        let r = lcm_core::rel_l2(&unlimited, alone);
        assert!(r > 1e-3, "{what}: the padded half without a limit is within {r:.1e} of itself alone");
    }
}

/// `uncond_ctx_len` only for a guided loop, and only when it differs from `ctx_len`: an error naming it.
#[test]
fn an_uncond_ctx_len_that_makes_no_sense_is_refused_by_name() {
    let be = CpuBackend::new();
    let unet = Unet::load(&be, &fixtures().join("tiny-sd/unet"), LoadOptions::default()).unwrap();
    let cfg = DenoiseConfig { vae_scale: 1.0, vae_shift: 0.0, context_split: None };
    for d in [shape(154, Some(77), false), shape(77, Some(77), true), shape(77, Some(0), true)] {
        let e = unet.config.denoise_graph(&d, &cfg, &[]).unwrap_err().to_string();
        assert!(e.contains("uncond_ctx_len"), "{d:?}: {e}");
    }
}
