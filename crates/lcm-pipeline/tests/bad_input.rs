//! The bad-input matrix of docs/robustness.md through the pipeline API: every hostile file or request
//! gives an `Err` naming the input and what was expected (or is converted, where the matrix says so),
//! never a panic. The CLI's side of the same matrix is tests/cli_bad_input.rs.

mod common;

use common::fixtures;

use std::fs;
use std::path::{Path, PathBuf};

use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_image_rgb8;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{Field, InitImage, LoadSpec, LoraSpec, Request, SizeRule};
use serde_json::{json, Map, Value};

const UNET: &str = "unet/diffusion_pytorch_model.safetensors";
const VAE: &str = "vae/diffusion_pytorch_model.safetensors";
const TEXT: &str = "text_encoder/model.fp16.safetensors";

/// A scratch copy of the tiny SD1.5 folder, removed on drop.
struct Model(PathBuf);

impl Model {
    fn copy(tag: &str) -> Model {
        let dir = std::env::temp_dir().join(format!("lcm-bad-pipeline-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        copy_dir(&fixtures().join("tiny-sd"), &dir);
        Model(dir)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn load(&self) -> Result<Pipeline<CpuBackend>, lcm_core::Error> {
        Pipeline::load(CpuBackend::new(), LoadSpec { model_dir: self.0.clone(), ..Default::default() })
    }
    fn load_err(&self) -> String {
        match self.load() {
            Ok(_) => panic!("loading {} should have failed", self.0.display()),
            Err(e) => {
                println!("{e}");
                e.to_string()
            }
        }
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error `{err}` should mention `{p}`");
    }
}

/// Rewrites the safetensors header of `path` with `edit`, keeping the data section byte for byte.
fn edit_header(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    fs::write(path, out).unwrap();
}

/// Byte range of tensor `name` in the data section of `path`.
fn offsets(path: &Path, name: &str) -> (usize, usize) {
    let bytes = fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let o = &header[name]["data_offsets"];
    (o[0].as_u64().unwrap() as usize + 8 + n, o[1].as_u64().unwrap() as usize + 8 + n)
}

fn edit_config(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let mut v: Map<String, Value> = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

// ---- weight files ----------------------------------------------------------------------------------

#[test]
fn zero_length_weight_file() {
    let m = Model::copy("zero-length");
    fs::write(m.path(UNET), b"").unwrap();
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file"]);
}

#[test]
fn truncated_weight_file() {
    let m = Model::copy("truncated");
    let bytes = fs::read(m.path(TEXT)).unwrap();
    fs::write(m.path(TEXT), &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(&m.load_err(), &[TEXT, "truncated or corrupt"]);
}

#[test]
fn header_length_past_the_end_of_the_file() {
    let m = Model::copy("header-past-end");
    let mut bytes = fs::read(m.path(VAE)).unwrap();
    let past = bytes.len() as u64 + 1000;
    bytes[..8].copy_from_slice(&past.to_le_bytes());
    fs::write(m.path(VAE), &bytes).unwrap();
    assert_mentions(&m.load_err(), &[VAE, "not a valid safetensors file"]);
    // A header length near u64::MAX must not overflow the arithmetic either.
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    fs::write(m.path(VAE), &bytes).unwrap();
    assert_mentions(&m.load_err(), &[VAE, "not a valid safetensors file"]);
}

#[test]
fn overlapping_offsets() {
    let m = Model::copy("overlap");
    edit_header(&m.path(UNET), |h| {
        let first = h["conv_in.bias"]["data_offsets"].clone();
        h.get_mut("conv_out.bias").unwrap()["data_offsets"] = first;
    });
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file", "offset"]);
}

#[test]
fn reversed_offsets() {
    let m = Model::copy("reversed");
    edit_header(&m.path(UNET), |h| {
        let o = h["conv_in.bias"]["data_offsets"].as_array().unwrap().clone();
        h.get_mut("conv_in.bias").unwrap()["data_offsets"] = json!([o[1], o[0]]);
    });
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file"]);
}

#[test]
fn offsets_past_the_end_of_the_data() {
    let m = Model::copy("offset-past-end");
    edit_header(&m.path(UNET), |h| {
        h.get_mut("conv_in.bias").unwrap()["data_offsets"] = json!([0, 1u64 << 40]);
    });
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file"]);
}

#[test]
fn dtype_that_is_not_a_float() {
    let m = Model::copy("dtype-int");
    // The fixture stores F16: I16 has the same size, so only the element type is wrong.
    edit_header(&m.path(UNET), |h| h.get_mut("conv_in.bias").unwrap()["dtype"] = json!("I16"));
    assert_mentions(&m.load_err(), &[UNET, "conv_in.bias", "has dtype I16, expected F32, F16 or BF16"]);
}

#[test]
fn dtype_whose_size_does_not_match_the_bytes() {
    let m = Model::copy("dtype-size");
    edit_header(&m.path(UNET), |h| h.get_mut("conv_in.bias").unwrap()["dtype"] = json!("F32"));
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file"]);
}

#[test]
fn shape_that_does_not_match_the_bytes() {
    let m = Model::copy("shape-bytes");
    edit_header(&m.path(UNET), |h| h.get_mut("conv_in.bias").unwrap()["shape"] = json!([3u64, 1u64 << 40]));
    assert_mentions(&m.load_err(), &[UNET, "not a valid safetensors file"]);
}

#[test]
fn nan_and_inf_weights() {
    // The fixture's UNet is F16: NaN is 0x7e00, +inf 0x7c00.
    for (tag, bits, word) in [("nan", 0x7e00u16, "NaN"), ("inf", 0x7c00, "inf")] {
        let m = Model::copy(tag);
        let (start, _) = offsets(&m.path(UNET), "conv_in.bias");
        let mut bytes = fs::read(m.path(UNET)).unwrap();
        bytes[start + 2..start + 4].copy_from_slice(&bits.to_le_bytes());
        fs::write(m.path(UNET), &bytes).unwrap();
        assert_mentions(&m.load_err(), &["conv_in.bias", &format!("element 1 is {word} (weights must be finite)")]);
    }
}

// ---- components ------------------------------------------------------------------------------------

#[test]
fn missing_component() {
    let m = Model::copy("no-vae");
    fs::remove_dir_all(m.path("vae")).unwrap();
    assert_mentions(&m.load_err(), &["vae", "missing component folder"]);
}

#[test]
fn extra_components_and_tensors_are_ignored() {
    // diffusers folders often carry safety_checker/ and feature_extractor/, and checkpoints extra
    // tensors (EMA copies, position ids): what the graph does not name is never read.
    let m = Model::copy("extra");
    copy_dir(&m.path("vae"), &m.path("safety_checker"));
    fs::write(m.path("safety_checker/config.json"), b"not json at all").unwrap();
    let end = fs::metadata(m.path(UNET)).unwrap().len();
    let mut data_len = 0;
    edit_header(&m.path(UNET), |h| {
        data_len = h.values().filter_map(|t| t.get("data_offsets")?[1].as_u64()).max().unwrap();
        let t = json!({"dtype": "F32", "shape": [1], "data_offsets": [data_len, data_len + 4]});
        h.insert("model_ema.extra.weight".into(), t);
    });
    let mut bytes = fs::read(m.path(UNET)).unwrap();
    bytes.extend_from_slice(&1.0f32.to_le_bytes());
    fs::write(m.path(UNET), bytes).unwrap();
    assert!(fs::metadata(m.path(UNET)).unwrap().len() > end && data_len > 0);
    m.load().expect("extra components and tensors are ignored");
}

// ---- config.json -----------------------------------------------------------------------------------

#[test]
fn config_with_negative_sizes() {
    let m = Model::copy("negative");
    edit_config(&m.path("unet/config.json"), |c| {
        c["block_out_channels"] = json!([-32, 64]);
    });
    assert_mentions(&m.load_err(), &["unet/config.json", "block_out_channels", "expected a list of integers"]);
    let m = Model::copy("negative-te");
    edit_config(&m.path("text_encoder/config.json"), |c| c["hidden_size"] = json!(-64));
    assert_mentions(&m.load_err(), &["text_encoder/config.json", "hidden_size", "non-negative integer"]);
}

#[test]
fn config_with_absurd_sizes() {
    for (file, key, value) in [
        ("unet/config.json", "block_out_channels", json!([1u64 << 40, 64])),
        ("unet/config.json", "layers_per_block", json!(1_000_000_000)),
        ("text_encoder/config.json", "num_hidden_layers", json!(1u64 << 62)),
        ("text_encoder/config.json", "hidden_size", json!(u64::MAX)),
        ("vae/config.json", "latent_channels", json!(1u64 << 33)),
    ] {
        let m = Model::copy("absurd");
        edit_config(&m.path(file), |c| c[key] = value);
        assert_mentions(&m.load_err(), &[file, key, "too large"]);
    }
}

#[test]
fn config_with_zero_sizes() {
    for (file, key, value, says) in [
        ("unet/config.json", "norm_num_groups", json!(0), "norm_num_groups"),
        ("vae/config.json", "norm_num_groups", json!(0), "norm_num_groups"),
        ("unet/config.json", "block_out_channels", json!([]), "block_out_channels"),
        ("vae/config.json", "block_out_channels", json!([]), "block_out_channels"),
        ("text_encoder/config.json", "num_attention_heads", json!(0), "num_attention_heads"),
    ] {
        let m = Model::copy("zero");
        edit_config(&m.path(file), |c| {
            c[key] = value;
            if key == "block_out_channels" {
                for k in ["down_block_types", "up_block_types"] {
                    c[k] = json!([]);
                }
            }
        });
        assert_mentions(&m.load_err(), &[file, says]);
    }
}

#[test]
fn config_with_unknown_block_type() {
    let m = Model::copy("unknown-block");
    edit_config(&m.path("unet/config.json"), |c| c["mid_block_type"] = json!("UNetMidBlock2DSimpleCrossAttn"));
    assert_mentions(&m.load_err(), &["unet/config.json", "mid_block_type", "unknown block type"]);
}

// ---- LoRAs -----------------------------------------------------------------------------------------

#[test]
fn lora_that_matches_nothing() {
    let dir = Model::copy("lora-nothing");
    let path = dir.path("nothing.safetensors");
    let mut t = Map::new();
    t.insert(
        "lora_unet_no_such_block_proj.lora_down.weight".into(),
        json!({"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}),
    );
    t.insert(
        "lora_unet_no_such_block_proj.lora_up.weight".into(),
        json!({"dtype": "F32", "shape": [4, 2], "data_offsets": [32, 64]}),
    );
    let mut text = serde_json::to_vec(&t).unwrap();
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    bytes.extend(std::iter::repeat_n(0u8, 64));
    fs::write(&path, bytes).unwrap();
    let spec = LoadSpec {
        model_dir: dir.0.clone(),
        loras: vec![LoraSpec { path: path.clone(), scale: 1.0 }],
        ..Default::default()
    };
    let err = Pipeline::load(CpuBackend::new(), spec).err().expect("a LoRA matching nothing is refused").to_string();
    println!("{err}");
    assert_mentions(&err, &["nothing.safetensors", "lora_unet_no_such_block_proj"]);
}

#[test]
fn lora_whose_rank_or_shape_does_not_fit() {
    let dir = Model::copy("lora-rank");
    let src = fixtures().join("loras/lora_kohya.safetensors");
    let path = dir.path("rank.safetensors");
    fs::copy(&src, &path).unwrap();
    let key = "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight";
    edit_header(&path, |h| {
        let shape = h[key]["shape"].as_array().unwrap().clone();
        let (out, rank) = (shape[0].as_u64().unwrap(), shape[1].as_u64().unwrap());
        // Same byte count, other split: [out·rank/2, 2] instead of [out, rank].
        h.get_mut(key).unwrap()["shape"] = json!([out * rank / 2, 2, 1, 1]);
    });
    let spec = LoadSpec { model_dir: dir.0.clone(), loras: vec![LoraSpec { path, scale: 1.0 }], ..Default::default() };
    let err = Pipeline::load(CpuBackend::new(), spec).err().expect("a misshapen LoRA is refused").to_string();
    println!("{err}");
    assert_mentions(&err, &["rank.safetensors", "lora_unet_down_blocks_0_resnets_0_conv1", "same rank"]);
}

// ---- PNGs for img2img ------------------------------------------------------------------------------

fn kind(name: &str) -> PathBuf {
    fixtures().join("images/kinds").join(name)
}

#[test]
fn png_kinds_are_converted_to_rgb8() {
    let (_, _, reference) = read_image_rgb8(&kind("rgb8.png")).unwrap();
    for name in
        ["rgb16.png", "gray8.png", "gray16.png", "gray_alpha8.png", "rgba8.png", "palette4.png", "interlaced_rgb8.png"]
    {
        let (w, h, rgb) = read_image_rgb8(&kind(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((w, h, rgb.len()), (64, 64, 64 * 64 * 3), "{name}");
        match name {
            // 16-bit keeps the high byte; alpha is dropped (PIL's convert("RGB"), as diffusers does).
            "rgb16.png" | "rgba8.png" | "interlaced_rgb8.png" => assert_eq!(rgb, reference, "{name}"),
            "gray8.png" | "gray16.png" | "gray_alpha8.png" => {
                assert!(rgb.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]), "{name}: grey replicated")
            }
            _ => {}
        }
        InitImage::from_rgb8(w, h, &rgb, 0.5).unwrap();
    }
}

#[test]
fn png_truncated_huge_or_ragged_is_refused() {
    let err = read_image_rgb8(&kind("truncated.png")).err().unwrap().to_string();
    println!("{err}");
    assert_mentions(&err, &["truncated.png", "PNG"]);
    let err = read_image_rgb8(&kind("huge_header.png")).err().unwrap().to_string();
    println!("{err}");
    assert_mentions(&err, &["huge_header.png", "100000x100000", &format!("at most {}", SizeRule::DEFAULT_MAX)]);
    let err = read_image_rgb8(&kind("ragged_palette.png")).err().unwrap().to_string();
    println!("{err}");
    assert_mentions(&err, &["ragged_palette.png", "PLTE", "49 bytes"]);
    let err = read_image_rgb8(&fixtures().join("tiny-sd/unet/config.json")).err().unwrap().to_string();
    println!("{err}");
    assert_mentions(&err, &["config.json", "not a PNG image"]);
}

// ---- requests --------------------------------------------------------------------------------------

fn tiny() -> Pipeline<CpuBackend> {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..Default::default() };
    Pipeline::load(CpuBackend::new(), spec).unwrap()
}

fn small(prompt: &str) -> Request {
    Request { prompt: prompt.into(), steps: 1, width: 64, height: 64, ..Default::default() }
}

#[test]
fn prompts_of_100k_characters_and_of_control_characters() {
    let mut p = tiny();
    let long: String = "a cat on a mat ".chars().cycle().take(100_000).collect();
    let controls: String = (0u8..32).map(char::from).chain("\u{7f}\u{80}\u{202e}\u{feff}x\0y".chars()).collect();
    for prompt in [long.as_str(), controls.as_str(), "", "\u{1F600}\u{1F600}"] {
        let out = p.generate(&small(prompt), &mut |_| {}).unwrap();
        assert!(out.images.data.iter().all(|v| v.is_finite()));
    }
    // A 100k-character negative prompt with CFG (two text-encoder rows).
    let req = Request { negative_prompt: Some(long.clone()), guidance_scale: 2.0, ..small("x") };
    p.generate(&req, &mut |_| {}).unwrap();
}

/// `e` is an `Error::Invalid` naming `field` (the spec's name for it, which front ends map onto their
/// own: the CLI's `--width`) and mentioning `parts`.
fn assert_names_field(e: &lcm_core::Error, field: Field, parts: &[&str]) {
    assert_eq!(Field::of(e), Some(field), "{e}");
    let text = e.to_string();
    assert!(text.starts_with(&format!("{}: ", field.name())), "{text}");
    assert_mentions(&text, parts);
}

#[test]
fn sizes_at_and_past_the_limits() {
    let ok = |w, h, n| Request { width: w, height: h, num_images: n, ..small("x") }.validate(50);
    for (w, h) in [(64, 64), (SizeRule::DEFAULT_MAX, SizeRule::DEFAULT_MAX), (64, SizeRule::DEFAULT_MAX)] {
        ok(w, h, 1).unwrap();
    }
    let past = SizeRule::DEFAULT_MAX + 8;
    for (w, h, field) in
        [(56, 64, Field::Width), (64, past, Field::Height), (100, 64, Field::Width), (0, 0, Field::Width)]
    {
        assert_names_field(&ok(w, h, 1).err().unwrap(), field, &["multiple of 8"]);
    }
    for (n, steps) in [(0, 1), (usize::MAX, 1), (1_000_000, 1)] {
        let e = Request { num_images: n, steps, ..small("x") }.validate(50).err().unwrap();
        println!("{e}");
        assert_names_field(&e, Field::NumImages, &[]);
    }
    for steps in [0, 51, usize::MAX] {
        let e = Request { steps, ..small("x") }.validate(50).err().unwrap();
        assert_names_field(&e, Field::Steps, &[]);
    }
    for g in [f32::NAN, f32::INFINITY, -1.0] {
        let e = Request { guidance_scale: g, ..small("x") }.validate(50).err().unwrap();
        assert_names_field(&e, Field::GuidanceScale, &[]);
    }
    // The pipeline refuses the same requests before any work, and stays usable.
    let mut p = tiny();
    assert!(p.generate(&Request { num_images: usize::MAX, ..small("x") }, &mut |_| {}).is_err());
    assert!(p.generate(&Request { width: 4096, ..small("x") }, &mut |_| {}).is_err());
    p.generate(&small("x"), &mut |_| {}).unwrap();
}

#[test]
fn init_image_of_the_wrong_size_or_strength() {
    let (w, h, rgb) = read_image_rgb8(&kind("rgb8.png")).unwrap();
    assert!(InitImage::from_rgb8(w + 1, h, &rgb, 0.5).is_err());
    let mut p = tiny();
    for (strength, width, field) in
        [(0.0, 64, Field::Strength), (f32::NAN, 64, Field::Strength), (0.5, 72, Field::InitImage)]
    {
        let init = InitImage::from_rgb8(w, h, &rgb, strength).unwrap();
        let req = Request { init_image: Some(init), width, ..small("x") };
        assert_names_field(&p.generate(&req, &mut |_| {}).err().unwrap(), field, &[]);
    }
}
