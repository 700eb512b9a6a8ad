//! TAESD (diffusers' AutoencoderTiny) on the CPU against diffusers (relative L2 < 1e-4), on the tiny
//! random-weight model of tests/fixtures/generate_taesd.py; and its config errors.

mod common;

use common::{assert_close, fixtures, record, tensor, Scratch};
use lcm_cpu::CpuBackend;
use lcm_models::{Encoded, LoadOptions, Vae, VaeArch, VaeConfig, VaeParts};

const TOL: f64 = 1e-4;

#[test]
fn taesd_decoder_and_encoder_match_diffusers() {
    let rec = record("taesd/vae.safetensors");
    let be = CpuBackend::new();
    let mut vae = Vae::load(&be, &fixtures().join("taesd"), VaeParts::Both, LoadOptions::default()).unwrap();
    assert!(matches!(vae.config.arch, VaeArch::Tiny(_)));
    assert_eq!((vae.config.downscale(), vae.config.scaling_factor, vae.config.force_upcast), (8, 1.0, false));

    let z = tensor(&rec, "decode_input");
    let out = vae.decode(&be, &z).unwrap();
    let want = tensor(&rec, "decode_output");
    assert_eq!(out.shape, want.shape);
    assert_close(&format!("taesd decode {:?}", z.shape), &out.data, &want.data, TOL);

    let x = tensor(&rec, "encode_input");
    let want = tensor(&rec, "encode_output");
    let Encoded::Latents(latents) = vae.encode(&be, &x, None).unwrap() else { panic!("TAESD encodes to latents") };
    assert_eq!(latents.shape, want.shape);
    assert_close(&format!("taesd encode {:?}", x.shape), &latents.data, &want.data, TOL);
}

/// The decoder-only load (txt2img) gains its encoder on demand, from the same folder.
#[test]
fn taesd_encoder_loads_later_from_the_vae_folder() {
    let rec = record("taesd/vae.safetensors");
    let be = CpuBackend::new();
    let dir = fixtures().join("taesd");
    let mut vae = Vae::load(&be, &dir, VaeParts::Decoder, LoadOptions::default()).unwrap();
    assert!(vae.encoder_runner().is_none());
    vae.load_encoder(&be, &dir, Default::default()).unwrap();
    let x = tensor(&rec, "encode_input");
    let got = vae.encode_moments(&be, &x).unwrap();
    assert_close("taesd encode (late load)", &got.data, &tensor(&rec, "encode_output").data, TOL);
}

/// A TAESD config with `edit` applied to its JSON: the error message.
fn config_error(edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let s = Scratch::copy_of("taesd", "taesd-config");
    let path = s.path().join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
    match VaeConfig::from_file(&path) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn taesd_config_errors_name_the_file_and_field() {
    use serde_json::json;
    // (the key set, and named in the error; its value)
    let cases = [
        ("act_fn", json!("gelu")),
        ("upsample_fn", json!("bilinear")),
        ("upsampling_scaling_factor", json!(3)),
        ("num_decoder_blocks", json!([1, 1, 1])),
        ("encoder_block_out_channels", json!([8, 16, 16, 16])),
        ("decoder_block_out_channels", json!([])),
        ("num_encoder_blocks", json!([1, 1, 1, 4096])),
        ("_class_name", json!("ConsistencyDecoderVAE")),
    ];
    for (field, value) in cases {
        let msg = config_error(|c| drop(c.insert(field.into(), value)));
        assert!(msg.contains(field) && msg.contains("config.json"), "{field}: {msg}");
    }
}

/// The released taesd / taesdxl configs (diffusers' defaults: 64 wide, blocks 1,3,3,3 / 3,3,3,1) build.
#[test]
fn default_taesd_config_builds_both_graphs() {
    let text = r#"{"_class_name": "AutoencoderTiny", "act_fn": "relu", "latent_channels": 4,
        "scaling_factor": 1.0, "force_upcast": false, "latent_magnitude": 3, "latent_shift": 0.5}"#;
    let cfg = VaeConfig::from_json(std::path::Path::new("taesd/config.json"), text).unwrap();
    let dec = cfg.decoder_graph(1, 64, 64).unwrap();
    let enc = cfg.encoder_graph(1, 512, 512).unwrap();
    assert_eq!(dec.shape(dec.outputs[0]), [1, 512, 512, 3]);
    assert_eq!(enc.shape(enc.outputs[0]), [1, 64, 64, 4]);
    // diffusers' AutoencoderTiny() has 67 parameter tensors per half: 1,222,531 in the decoder and
    // 1,222,532 in the encoder (counted with torch).
    let params = |g: &lcm_core::Graph| g.weights.iter().map(|w| w.shape.iter().product::<usize>()).sum::<usize>();
    assert_eq!((dec.weights.len(), params(&dec)), (67, 1_222_531));
    assert_eq!((enc.weights.len(), params(&enc)), (67, 1_222_532));
}
