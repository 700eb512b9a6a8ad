//! Single-file (LDM-layout) checkpoints: the architecture read from the shapes is the one the fixture
//! was made with (tests/fixtures/generate_single_file.py), and files that are not checkpoints lcm runs, or
//! are damaged, are refused with the file, the tensor and what was expected.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{fixtures, Scratch};
use lcm_models::{Checkpoint, ClipConfig, UnetConfig, VaeConfig, VaeFile};
use safetensors::Dtype;

fn checkpoint() -> PathBuf {
    fixtures().join("single-file/sd15_tiny.safetensors")
}

fn config(component: &str) -> PathBuf {
    fixtures().join("single-file/config").join(component).join("config.json")
}

/// Configs compare through their Debug form: every field, f32s included, as parsed.
fn same<T: std::fmt::Debug>(what: &str, inferred: T, from_file: T) {
    let (a, b) = (format!("{inferred:#?}"), format!("{from_file:#?}"));
    assert_eq!(a, b, "{what}: the config read from the shapes differs from the fixture's config.json");
}

#[test]
fn shapes_give_the_fixture_configs() {
    let ck = Checkpoint::open(checkpoint()).unwrap();
    // sample_size (a default image size) is no shape: the file cannot say it.
    let unet = UnetConfig { sample_size: None, ..UnetConfig::from_file(&config("unet")).unwrap() };
    same("unet", ck.infer_unet().unwrap(), unet);
    // The fixture's text encoder is 64 wide with one head: the 64-wide-head rule recovers it.
    // eos_token_id is no shape either (only SDXL's pooled output reads it): CLIP's end of text.
    let te = ClipConfig { eos_token_id: 49407, ..ClipConfig::from_file(&config("text_encoder"), 1).unwrap() };
    same("text encoder", ck.infer_text_encoder(1).unwrap(), te);
    // The VAE's sample_size (its tiling default) is no shape either.
    let vae = VaeConfig { sample_size: None, ..VaeConfig::from_file(&config("vae")).unwrap() };
    same("vae", ck.infer_vae(vae.scaling_factor, vae.shift_factor).unwrap().unwrap(), vae.clone());
    let separate = VaeFile::open(fixtures().join("single-file/vae_ldm.safetensors")).unwrap();
    same("separate vae", separate.infer(vae.scaling_factor, None).unwrap(), vae);
}

#[test]
fn every_key_is_accounted_for() {
    let ck = Checkpoint::open(checkpoint()).unwrap();
    let (unet, clip) = (ck.infer_unet().unwrap(), ck.infer_text_encoder(0).unwrap());
    let vae = ck.infer_vae(0.18215, None).unwrap().unwrap();
    ck.check(&unet, &clip, None, Some(&vae)).unwrap();
    let separate = VaeFile::open(fixtures().join("single-file/vae_ldm.safetensors")).unwrap();
    separate.check(&separate.infer(0.18215, None).unwrap()).unwrap();
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// A copy of the fixture checkpoint with `edit` applied to its tensors.
fn edited(tag: &str, edit: impl FnOnce(&mut Tensors)) -> (Scratch, PathBuf) {
    let s = Scratch::empty(tag);
    let p = s.path().join("model.safetensors");
    fs::copy(checkpoint(), &p).unwrap();
    common::rewrite(s.path(), "model.safetensors", edit);
    (s, p)
}

/// Opens and checks `path` as the pipeline does without --config; the error text.
fn refusal(path: &Path) -> String {
    let result = Checkpoint::open(path).and_then(|ck| {
        let (unet, clip) = (ck.infer_unet()?, ck.infer_text_encoder(0)?);
        let vae = ck.infer_vae(0.18215, None)?;
        ck.check(&unet, &clip, None, vae.as_ref())
    });
    let err = result.expect_err("the file should be refused").to_string();
    println!("{err}");
    err
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error `{err}` should mention `{p}`");
    }
}

#[test]
fn missing_unet_tensor_is_named() {
    let key = "model.diffusion_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight";
    assert!(lcm_core::SafeTensorsFile::open(checkpoint()).unwrap().contains(key));
    let (_s, p) = edited("sf-missing", |t| t.retain(|(n, ..)| n != key));
    assert_mentions(
        &refusal(&p),
        &["model.safetensors", key, "missing", "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"],
    );
}

#[test]
fn unknown_tensor_is_named() {
    let key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn3.to_q.weight";
    let (_s, p) = edited("sf-unknown", |t| t.push((key.into(), Dtype::F16, vec![2], vec![0; 4])));
    assert_mentions(&refusal(&p), &[key, "not a weight", "known extra"]);
    // Known extras are not errors: the fixture already holds model_ema.*, position_ids and the DDPM
    // buffers; more EMA keys are fine too.
    let (_s2, p2) =
        edited("sf-ema", |t| t.push(("model_ema.diffusion_modelout2weight".into(), Dtype::F16, vec![2], vec![0; 4])));
    let ck = Checkpoint::open(&p2).unwrap();
    let vae = ck.infer_vae(0.18215, None).unwrap();
    ck.check(&ck.infer_unet().unwrap(), &ck.infer_text_encoder(0).unwrap(), None, vae.as_ref()).unwrap();
}

#[test]
fn misshapen_tensor_is_named_with_both_shapes() {
    let key = "model.diffusion_model.middle_block.0.emb_layers.1.bias";
    let (_s, p) = edited("sf-shape", |t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).unwrap();
        e.2 = vec![e.2[0] / 2];
        e.3.truncate(e.3.len() / 2);
    });
    assert_mentions(&refusal(&p), &[key, "has shape [32]", "expected [64]", "mid_block.resnets.0.time_emb_proj.bias"]);
}

#[test]
fn truncated_file_is_refused() {
    let s = Scratch::empty("sf-truncated");
    let p = s.path().join("cut.safetensors");
    let bytes = fs::read(checkpoint()).unwrap();
    fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&refusal(&p), &["cut.safetensors", "truncated or corrupt"]);
}

#[test]
fn pickles_are_refused_by_name_and_by_content() {
    let s = Scratch::empty("sf-pickle");
    let named = s.path().join("model.ckpt");
    fs::write(&named, b"anything").unwrap();
    assert_mentions(&refusal(&named), &["model.ckpt", "pickle", "safetensors"]);
    // torch.save's zip archive under a .safetensors name.
    let disguised = s.path().join("model.safetensors");
    fs::write(&disguised, b"PK\x03\x04archive").unwrap();
    assert_mentions(&refusal(&disguised), &["model.safetensors", "pickle"]);
}

#[test]
fn neither_sd15_nor_sdxl_is_refused_with_what_it_looks_like() {
    // A diffusers UNet file is no checkpoint.
    let err = refusal(&fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors"));
    assert_mentions(&err, &["not an SD1.5-family, SD2 or SDXL checkpoint", "model.diffusion_model.", "diffusers UNet"]);
    // Nor is a LoRA or a VAE alone.
    assert_mentions(&refusal(&fixtures().join("loras/lora_kohya.safetensors")), &["looks like a LoRA", "--lora"]);
    assert_mentions(&refusal(&fixtures().join("single-file/vae_ldm.safetensors")), &["looks like a VAE", "--vae"]);
}

#[test]
fn sdxl_and_sd2_variants_are_refused_by_name_sd2_and_inpainting_are_read() {
    // SD2 text-to-image files are read (tests/sd2.rs); its variants for other pipelines are refused.
    let sd2 = Checkpoint::open(fixtures().join("sd2/tiny_sd2.safetensors")).unwrap();
    assert_eq!(sd2.family(), lcm_models::checkpoint::single_file::Family::Sd2);
    let (_s, p) =
        edited("sf-sd2-upscaler", |t| t.push(("low_scale_model.betas".into(), Dtype::F32, vec![1], vec![0; 4])));
    assert_mentions(&refusal(&p), &["x4 upscaler", "low_scale_model.", "StableDiffusionUpscalePipeline"]);
    let (_s, p) = edited("sf-sdxl", |t| {
        t.push(("conditioner.embedders.0.transformer.text_model.x".into(), Dtype::F16, vec![1], vec![0; 2]))
    });
    assert_mentions(&refusal(&p), &["SDXL", "conditioner.embedders."]);
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let (_s, p) = edited("sf-inpaint", |t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).unwrap();
        let (co, k) = (e.2[0], e.2[2] * e.2[3]);
        e.2[1] = 9;
        e.3 = vec![0; co * 9 * k * 2];
    });
    // An inpainting UNet: 9 channels in (latents, mask, masked image latents), 4 out.
    let unet = Checkpoint::open(&p).and_then(|ck| ck.infer_unet()).unwrap();
    assert_eq!((unet.in_channels, unet.out_channels), (9, 4));
}

#[test]
fn every_dtype_loads_the_same_numbers() {
    // The fixture's weights are exact in f16 and bf16 alike (the generator rounds them so): the F32 and
    // BF16 copies must hold the same values as the F16 original, tensor for tensor.
    let ck16 = lcm_core::SafeTensorsFile::open(checkpoint()).unwrap();
    for (tag, dtype) in [("sf-f32", Dtype::F32), ("sf-bf16", Dtype::BF16)] {
        let (_s, p) = edited(tag, |t| common::convert(t, dtype));
        let other = lcm_core::SafeTensorsFile::open(&p).unwrap();
        let mut compared = 0;
        for name in ck16
            .names()
            .filter(|n| n.starts_with("model.") || n.starts_with("first_stage") || n.starts_with("cond_stage"))
        {
            if name.ends_with("position_ids") {
                continue;
            }
            assert_eq!(other.get(name).unwrap().dtype.name(), dtype_name(dtype), "{name}");
            assert_eq!(ck16.get(name).unwrap().to_f32(), other.get(name).unwrap().to_f32(), "{name} in {tag}");
            compared += 1;
        }
        assert!(compared > 600, "{compared}");
        refusal_free(&p);
    }
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::BF16 => "bf16",
        _ => "f16",
    }
}

fn refusal_free(p: &Path) {
    let ck = Checkpoint::open(p).unwrap();
    let vae = ck.infer_vae(0.18215, None).unwrap();
    ck.check(&ck.infer_unet().unwrap(), &ck.infer_text_encoder(0).unwrap(), None, vae.as_ref()).unwrap();
}

#[test]
fn a_tensor_of_another_dtype_is_named() {
    let key = "model.diffusion_model.out.2.bias";
    let (_s, p) = edited("sf-f64", |t| {
        let e = t.iter_mut().find(|(n, ..)| n == key).unwrap();
        e.1 = Dtype::F64;
        e.3 = vec![0; e.3.len() * 4];
    });
    let ck = Checkpoint::open(&p).unwrap();
    let unet = ck.infer_unet().unwrap();
    let err = match ck.load_unet(&lcm_cpu::CpuBackend::new(), unet, None) {
        Ok(_) => panic!("an F64 tensor should be refused"),
        Err(e) => e.to_string(),
    };
    assert_mentions(&err, &[key, "F64", "expected F32, F16 or BF16"]);
}

#[test]
fn a_separate_vae_with_an_unknown_key_is_refused() {
    let s = Scratch::empty("sf-vae-unknown");
    let p = s.path().join("vae.safetensors");
    fs::copy(fixtures().join("single-file/vae_ldm.safetensors"), &p).unwrap();
    common::rewrite(s.path(), "vae.safetensors", |t| {
        t.push(("decoder.up.0.extra.weight".into(), Dtype::F16, vec![1], vec![0; 2]))
    });
    let f = VaeFile::open(&p).unwrap();
    let err = f.check(&f.infer(0.18215, None).unwrap()).unwrap_err().to_string();
    assert_mentions(&err, &["vae.safetensors", "decoder.up.0.extra.weight", "not a weight of this VAE"]);
    let err = VaeFile::open(checkpoint()).map(|_| ()).err();
    assert!(err.is_none(), "a full checkpoint's VAE is readable as a VAE: {err:?}");
    let err = VaeFile::open(fixtures().join("loras/lora_peft.safetensors")).err().unwrap().to_string();
    assert_mentions(&err, &["lora_peft.safetensors", "is not a VAE"]);
}
