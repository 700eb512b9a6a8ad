//! Bad model folders give errors that name the file or tensor and say what was expected.

mod common;

use std::fs;
use std::path::Path;

use common::{fixtures, rewrite, Scratch};
use lcm_cpu::CpuBackend;
use lcm_models::{LoadOptions, Unet, Vae, VaeParts};

fn unet_error(dir: &Path) -> String {
    match Unet::load(&CpuBackend::new(), dir, LoadOptions::default()) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => {
            println!("{e}");
            e.to_string()
        }
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error `{err}` should mention `{p}`");
    }
}

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

#[test]
fn missing_component_folder() {
    let err = unet_error(&fixtures().join("tiny-sd/no-such-unet"));
    assert_mentions(&err, &["no-such-unet", "missing component folder"]);
}

#[test]
fn missing_weight_file() {
    let s = Scratch::copy_of("tiny-sd/unet", "missing-weights");
    fs::remove_file(s.path().join(WEIGHTS)).unwrap();
    assert_mentions(&unet_error(s.path()), &[WEIGHTS, "missing weight file"]);
}

#[test]
fn pickle_is_refused_not_unpickled() {
    let s = Scratch::copy_of("tiny-sd/unet", "pickle");
    fs::rename(s.path().join(WEIGHTS), s.path().join("diffusion_pytorch_model.bin")).unwrap();
    assert_mentions(&unet_error(s.path()), &["diffusion_pytorch_model.bin", "pickle", "safetensors"]);
}

#[test]
fn truncated_safetensors() {
    let s = Scratch::copy_of("tiny-sd/unet", "truncated");
    let p = s.path().join(WEIGHTS);
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    assert_mentions(&unet_error(s.path()), &[WEIGHTS, "truncated or corrupt"]);
}

#[test]
fn corrupt_header() {
    let s = Scratch::copy_of("tiny-sd/unet", "corrupt");
    let p = s.path().join(WEIGHTS);
    let mut bytes = fs::read(&p).unwrap();
    bytes[8..16].copy_from_slice(b"garbage!");
    fs::write(&p, &bytes).unwrap();
    assert_mentions(&unet_error(s.path()), &[WEIGHTS, "not a valid safetensors file"]);
}

#[test]
fn missing_tensor() {
    let s = Scratch::copy_of("tiny-sd/unet", "missing-tensor");
    rewrite(s.path(), WEIGHTS, |t| t.retain(|(n, ..)| n != "mid_block.resnets.0.conv1.weight"));
    assert_mentions(&unet_error(s.path()), &["mid_block.resnets.0.conv1.weight", "missing"]);
}

#[test]
fn tensor_of_wrong_shape() {
    let s = Scratch::copy_of("tiny-sd/unet", "wrong-shape");
    rewrite(s.path(), WEIGHTS, |t| {
        let e = t.iter_mut().find(|(n, ..)| n == "conv_in.bias").unwrap();
        e.2 = vec![e.2[0] / 2, 2];
    });
    assert_mentions(&unet_error(s.path()), &[WEIGHTS, "conv_in.bias", "shape [16, 2]", "expected [32]"]);
}

#[test]
fn tensor_of_wrong_dtype() {
    let s = Scratch::copy_of("tiny-sd/unet", "wrong-dtype");
    rewrite(s.path(), WEIGHTS, |t| {
        let e = t.iter_mut().find(|(n, ..)| n == "conv_in.bias").unwrap();
        e.1 = safetensors::Dtype::I32;
        e.3 = vec![0; e.2.iter().product::<usize>() * 4];
    });
    assert_mentions(&unet_error(s.path()), &["conv_in.bias", "dtype I32", "F32, F16 or BF16"]);
}

#[test]
fn config_that_is_not_json() {
    let s = Scratch::copy_of("tiny-sd/unet", "not-json");
    fs::write(s.path().join("config.json"), "{ \"block_out_channels\": [32, 32,").unwrap();
    assert_mentions(&unet_error(s.path()), &["config.json", "not valid JSON"]);
}

#[test]
fn config_with_unknown_block_type() {
    let s = Scratch::copy_of("tiny-sd/unet", "unknown-block");
    let p = s.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v["down_block_types"][1] = "SimpleCrossAttnDownBlock2D".into();
    fs::write(&p, v.to_string()).unwrap();
    assert_mentions(&unet_error(s.path()), &["config.json", "down_block_types", "SimpleCrossAttnDownBlock2D"]);
}

#[test]
fn vae_config_with_unknown_block_type() {
    let s = Scratch::copy_of("tiny-sd/vae", "vae-unknown-block");
    let p = s.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    v["up_block_types"][0] = "AttnUpDecoderBlock2D".into();
    fs::write(&p, v.to_string()).unwrap();
    let err = match Vae::load(&CpuBackend::new(), s.path(), VaeParts::Decoder, LoadOptions::default()) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert_mentions(&err, &["config.json", "up_block_types", "AttnUpDecoderBlock2D"]);
}
