//! Every model call equals diffusers/transformers on the CPU in f32 (relative L2 < 1e-4), on tiny
//! random-weight models with SD1.5's structure recorded by tests/fixtures/generate_models.py.

mod common;

use common::{assert_close, fixtures, record, rewrite, tensor, Scratch};
use lcm_core::Tensor;
use lcm_cpu::CpuBackend;
use lcm_models::{ClipTextModel, LoadOptions, Unet, Vae, VaeParts};

const TOL: f64 = 1e-4;

#[test]
fn clip_text_model_matches_transformers() {
    let rec = record("clip.safetensors");
    let ids: Vec<i32> = tensor(&rec, "input_ids").data.iter().map(|&x| x as i32).collect();
    let be = CpuBackend::new();
    for (skip, name) in [(0, "last_hidden_state"), (1, "last_hidden_state_clip_skip1")] {
        let mut clip =
            ClipTextModel::load(&be, &fixtures().join("tiny-sd/text_encoder"), skip, LoadOptions::default()).unwrap();
        let out = clip.forward(&be, &ids, 2).unwrap();
        let want = tensor(&rec, name);
        assert_eq!(out.shape, want.shape);
        assert_close(name, &out.data, &want.data, TOL);
    }
}

fn check_unet(folder: &str, record_name: &str, cases: &[&str], with_cond: bool) {
    let rec = record(record_name);
    let be = CpuBackend::new();
    let mut unet = Unet::load(&be, &fixtures().join(folder), LoadOptions::default()).unwrap();
    for case in cases {
        let sample = tensor(&rec, &format!("sample_{case}"));
        let ctx = tensor(&rec, &format!("encoder_hidden_states_{case}"));
        let t = tensor(&rec, &format!("timestep_{case}")).data[0];
        let cond = with_cond.then(|| tensor(&rec, &format!("timestep_cond_{case}")));
        let out = unet.forward(&be, &sample, &vec![t; sample.shape[0]], &ctx, cond.as_ref()).unwrap();
        let want = tensor(&rec, &format!("out_{case}"));
        assert_eq!(out.shape, want.shape);
        assert_close(&format!("{folder} case {case} (t={t}, {:?})", sample.shape), &out.data, &want.data, TOL);
    }
}

#[test]
fn unet_matches_diffusers() {
    check_unet("tiny-sd/unet", "unet.safetensors", &["a", "b", "c"], false);
}

#[test]
fn lcm_unet_with_guidance_embedding_matches_diffusers() {
    check_unet("tiny-lcm/unet", "unet_lcm.safetensors", &["a", "b"], true);
}

#[test]
fn vae_decoder_and_encoder_match_diffusers() {
    let rec = record("vae.safetensors");
    let be = CpuBackend::new();
    let mut vae = Vae::load(&be, &fixtures().join("tiny-sd/vae"), VaeParts::Both, LoadOptions::default()).unwrap();
    for case in ["a", "b"] {
        let z = tensor(&rec, &format!("decode_in_{case}"));
        let out = vae.decode(&be, &z).unwrap();
        let want = tensor(&rec, &format!("decode_out_{case}"));
        assert_eq!(out.shape, want.shape);
        assert_close(&format!("vae decode {case} {:?}", z.shape), &out.data, &want.data, TOL);
    }
    let x = tensor(&rec, "encode_in");
    let moments: Tensor = vae.encode_moments(&be, &x).unwrap();
    assert_close("vae encode moments", &moments.data, &tensor(&rec, "encode_moments").data, TOL);
}

/// transformers 5 saves CLIPTextModel without the `text_model.` level; such files load the same.
#[test]
fn clip_weights_without_the_text_model_prefix_load_the_same() {
    let s = Scratch::copy_of("tiny-sd/text_encoder", "no-prefix");
    rewrite(s.path(), "model.fp16.safetensors", |t| {
        for e in t.iter_mut() {
            e.0 = e.0.strip_prefix("text_model.").unwrap_or(&e.0).to_string();
        }
    });
    let rec = record("clip.safetensors");
    let ids: Vec<i32> = tensor(&rec, "input_ids").data.iter().map(|&x| x as i32).collect();
    let be = CpuBackend::new();
    let mut clip = ClipTextModel::load(&be, s.path(), 0, LoadOptions::default()).unwrap();
    let out = clip.forward(&be, &ids, 2).unwrap();
    assert_close("clip, unprefixed weights", &out.data, &tensor(&rec, "last_hidden_state").data, TOL);
}
