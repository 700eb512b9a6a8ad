//! SD2.x's models against transformers/diffusers on the CPU in f32 (relative L2 < 1e-4), on the tiny
//! SD2-structured fixtures of tests/fixtures/generate_sd2.py: the gelu text encoder as
//! StableDiffusionPipeline reads it (`last_hidden_state`, and with clip_skip 1), prompts padded with "!";
//! the UNet with linear projections and a head count per level (from the folder, from SD-Turbo's
//! config, and from the LDM single file). The single file: OpenCLIP names with the extra last layer
//! diffusers drops, read as the folder's models; SD2's variants for other pipelines refused by name.

mod common;

use std::fs;
use std::path::PathBuf;

use common::{assert_close, fixtures, record, tensor, Scratch};
use lcm_cpu::CpuBackend;
use lcm_models::checkpoint::single_file::Family;
use lcm_models::{Checkpoint, ClipConfig, ClipTextModel, LoadOptions, Unet, UnetConfig, VaeConfig};
use safetensors::Dtype;

const TOL: f64 = 1e-4;

fn folder(component: &str) -> PathBuf {
    fixtures().join("sd2/tiny-sd2").join(component)
}

fn single_file() -> PathBuf {
    fixtures().join("sd2/tiny_sd2.safetensors")
}

fn ids() -> Vec<i32> {
    tensor(&record("sd2/models.safetensors"), "input_ids").data.iter().map(|&x| x as i32).collect()
}

#[test]
fn text_encoder_matches_transformers_with_bang_padding() {
    let rec = record("sd2/models.safetensors");
    let ids = ids();
    assert_eq!(ids[76], 0, "SD2's tokenizer pads with \"!\" (id 0)");
    let be = CpuBackend::new();
    for (skip, name) in [(0, "last_hidden_state"), (1, "last_hidden_state_clip_skip1")] {
        let mut te = ClipTextModel::load(&be, &folder("text_encoder"), skip, LoadOptions::default()).unwrap();
        let out = te.forward(&be, &ids, 3).unwrap();
        let want = tensor(&rec, name);
        assert_eq!(out.shape, want.shape);
        assert_close(&format!("SD2 text encoder {name}"), &out.data, &want.data, TOL);
    }
}

/// The UNet `unet` on the recorded cases.
fn check_unet(what: &str, unet: &mut Unet<CpuBackend>) {
    let rec = record("sd2/models.safetensors");
    let be = CpuBackend::new();
    for case in ["a", "b"] {
        let sample = tensor(&rec, &format!("sample_{case}"));
        let ctx = tensor(&rec, &format!("encoder_hidden_states_{case}"));
        let t = tensor(&rec, &format!("timestep_{case}")).data[0];
        let out = unet.forward(&be, &sample, &vec![t; sample.shape[0]], &ctx, None).unwrap();
        let want = tensor(&rec, &format!("out_{case}"));
        assert_eq!(out.shape, want.shape);
        assert_close(&format!("{what} case {case} (t={t}, {:?})", sample.shape), &out.data, &want.data, TOL);
    }
}

#[test]
fn unet_matches_diffusers_from_sd2_and_sd_turbo_configs() {
    let be = CpuBackend::new();
    let mut unet = Unet::load(&be, &folder("unet"), LoadOptions::default()).unwrap();
    assert_eq!(unet.config.heads, [1, 2, 4, 4], "attention_head_dim read as head counts per level");
    assert!(unet.config.use_linear_projection);
    check_unet("tiny-sd2 UNet", &mut unet);
    // SD-Turbo's config says upcast_attention false over the same weights: the same numbers in f32.
    let turbo = fixtures().join("sd2/tiny-sd-turbo/unet");
    check_unet("tiny-sd-turbo UNet", &mut Unet::load(&be, &turbo, LoadOptions::default()).unwrap());
}

fn folder_configs() -> (UnetConfig, ClipConfig, VaeConfig) {
    let unet = UnetConfig::from_file(&folder("unet/config.json")).unwrap();
    let te = ClipConfig::from_file(&folder("text_encoder/config.json"), 0).unwrap();
    let vae = VaeConfig::from_file(&folder("vae/config.json")).unwrap();
    (unet, te, vae)
}

#[test]
fn single_file_holds_the_folders_models() {
    let ck = Checkpoint::open(single_file()).unwrap();
    assert_eq!(ck.family(), Family::Sd2);
    assert!(!ck.is_sdxl());
    let (unet, te, vae) = folder_configs();
    // Every key is accounted for: the folder's weights, the OpenCLIP layer past the config's 3, the
    // unused text_projection and logit_scale.
    ck.check(&unet, &te, None, Some(&vae)).unwrap();
    // The text encoder's sizes come from the shapes, one layer fewer than the file holds.
    let inferred = ck.infer_text_encoder(0).expect_err("32 wide: no 64-wide heads").to_string();
    assert!(inferred.contains("text_encoder/config.json") && inferred.contains("token_embedding"), "{inferred}");

    let be = CpuBackend::new();
    let mut te_model = ck.load_text_encoder(&be, te, None).unwrap();
    let out = te_model.forward(&be, &ids(), 3).unwrap();
    let want = tensor(&record("sd2/models.safetensors"), "last_hidden_state");
    assert_close("SD2 text encoder from OpenCLIP names", &out.data, &want.data, TOL);
    check_unet("tiny_sd2.safetensors UNet", &mut ck.load_unet(&be, unet, None).unwrap());
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// A copy of the SD2 single file with `edit` applied to its tensors.
fn edited(tag: &str, edit: impl FnOnce(&mut Tensors)) -> (Scratch, PathBuf) {
    let s = Scratch::empty(tag);
    let p = s.path().join("model.safetensors");
    fs::copy(single_file(), &p).unwrap();
    common::rewrite(s.path(), "model.safetensors", edit);
    (s, p)
}

fn refusal(path: &std::path::Path) -> String {
    let (unet, te, vae) = folder_configs();
    let err = Checkpoint::open(path).and_then(|ck| ck.check(&unet, &te, None, Some(&vae))).unwrap_err().to_string();
    println!("{err}");
    err
}

#[test]
fn sd2_variants_for_other_pipelines_are_refused_by_name() {
    let extra = |key: &'static str| move |t: &mut Tensors| t.push((key.into(), Dtype::F16, vec![1], vec![0; 2]));
    for (tag, key, names) in [
        ("sd2-upscaler", "low_scale_model.betas", ["x4 upscaler", "StableDiffusionUpscalePipeline"]),
        (
            "sd2-depth",
            "depth_model.model.pretrained.layer1.0.weight",
            ["depth-to-image", "StableDiffusionDepth2ImgPipeline"],
        ),
        ("sd2-unclip", "embedder.model.visual.proj", ["unCLIP", "StableUnCLIPImg2ImgPipeline"]),
    ] {
        let (_s, p) = edited(tag, extra(key));
        let err = refusal(&p);
        for part in names.iter().chain(&["model.safetensors", "lcm runs"]) {
            assert!(err.contains(part), "{tag}: `{err}` should mention `{part}`");
        }
    }
}

#[test]
fn a_second_unused_openclip_layer_is_an_unknown_key() {
    // Only the one layer past the config's is LDM's unused last layer; another is named.
    let key = "cond_stage_model.model.transformer.resblocks.4.ln_1.weight";
    let (_s, p) = edited("sd2-extra-layer", |t| t.push((key.into(), Dtype::F16, vec![32], vec![0; 64])));
    let err = refusal(&p);
    assert!(err.contains(key) && err.contains("cond_stage_model.model."), "{err}");
}
