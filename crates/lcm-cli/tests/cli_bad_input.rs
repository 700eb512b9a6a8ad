//! The bad-input matrix of docs/robustness.md through the `lcm` binary: each hostile input fails with
//! exit status 1 and a message naming it (or is converted, where the matrix says so), and nothing
//! panics (a panic exits with 101 and prints "panicked"). The pipeline API's side is
//! crates/lcm-pipeline/tests/bad_input.rs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("lcm-cli-bad-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    /// A copy of the tiny SD1.5 folder inside.
    fn model(tag: &str) -> Scratch {
        let s = Scratch::new(tag);
        copy_dir(&fixtures().join("tiny-sd"), &s.0);
        s
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    fn arg(&self, rel: &str) -> String {
        self.path(rel).to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
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

/// `lcm generate` on `model` (CPU, 64x64, one step) with `extra`: (exit code, stderr).
fn generate(model: &Path, prompt: &str, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        "generate".to_string(),
        "--model".into(),
        model.to_str().unwrap().into(),
        "--prompt".into(),
        prompt.into(),
        "--device".into(),
        "cpu".into(),
        "--steps".into(),
        // img2img at the default strength 0.8 runs int(steps·0.8) steps: at least 2.
        if extra.contains(&"--image") { "2" } else { "1" }.into(),
        "--width".into(),
        "64".into(),
        "--height".into(),
        "64".into(),
        "--output".into(),
        out.to_str().unwrap().into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_lcm")).args(&args).output().expect("run lcm");
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!stderr.contains("panicked"), "lcm panicked on {extra:?}: {stderr}");
    (o.status.code().expect("exited, not killed by a signal"), stderr)
}

fn assert_fails(code: i32, stderr: &str, parts: &[&str]) {
    assert_eq!(code, 1, "expected exit 1: {stderr}");
    for p in parts {
        assert!(stderr.contains(p), "stderr should mention `{p}`: {stderr}");
    }
}

#[test]
fn hostile_weight_files_and_configs_fail_cleanly() {
    let out = Scratch::new("out");
    let png = out.path("x.png");
    type Edit = fn(&Scratch);
    let cases: &[(&str, Edit, &[&str])] = &[
        (
            "zero-length",
            |m| fs::write(m.path("unet/diffusion_pytorch_model.safetensors"), b"").unwrap(),
            &["diffusion_pytorch_model.safetensors", "not a valid safetensors file"],
        ),
        (
            "truncated",
            |m| {
                let p = m.path("vae/diffusion_pytorch_model.safetensors");
                let b = fs::read(&p).unwrap();
                fs::write(&p, &b[..b.len() - 100]).unwrap();
            },
            &["vae", "truncated or corrupt"],
        ),
        (
            "header-past-end",
            |m| {
                let p = m.path("text_encoder/model.fp16.safetensors");
                let mut b = fs::read(&p).unwrap();
                b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
                fs::write(&p, &b).unwrap();
            },
            &["model.fp16.safetensors", "not a valid safetensors file"],
        ),
        ("no-vae", |m| fs::remove_dir_all(m.path("vae")).unwrap(), &["vae", "missing component folder"]),
        (
            "absurd-config",
            |m| {
                let p = m.path("unet/config.json");
                let t = fs::read_to_string(&p).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
                v["layers_per_block"] = serde_json::json!(4_000_000_000u64);
                fs::write(&p, v.to_string()).unwrap();
            },
            &["unet/config.json", "layers_per_block", "too large"],
        ),
        (
            "zero-groups",
            |m| {
                let p = m.path("vae/config.json");
                let t = fs::read_to_string(&p).unwrap();
                let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
                v["norm_num_groups"] = serde_json::json!(0);
                fs::write(&p, v.to_string()).unwrap();
            },
            &["vae/config.json", "norm_num_groups", "at least 1"],
        ),
        (
            "config-not-json",
            |m| fs::write(m.path("text_encoder/config.json"), b"{\"hidden_size\": ").unwrap(),
            &["text_encoder/config.json", "not valid JSON"],
        ),
    ];
    for (tag, edit, parts) in cases {
        let m = Scratch::model(tag);
        edit(&m);
        let (code, stderr) = generate(&m.0, "x", &png, &[]);
        println!("{tag}: {stderr}");
        assert_fails(code, &stderr, parts);
        assert!(!png.exists(), "{tag}: no image may be written");
    }
}

#[test]
fn hostile_loras_fail_cleanly() {
    let out = Scratch::new("lora");
    let model = fixtures().join("tiny-sd");
    // A weight file of the model given as a LoRA: none of its keys is in a LoRA format.
    let unet = fixtures().join("tiny-sd/unet/diffusion_pytorch_model.safetensors");
    let (code, stderr) = generate(&model, "x", &out.path("x.png"), &["--lora", unet.to_str().unwrap()]);
    assert_fails(code, &stderr, &["diffusion_pytorch_model.safetensors", "none of the known LoRA formats"]);
    // An empty file.
    fs::write(out.path("empty.safetensors"), b"").unwrap();
    let (code, stderr) = generate(&model, "x", &out.path("x.png"), &["--lora", &out.arg("empty.safetensors")]);
    assert_fails(code, &stderr, &["empty.safetensors", "not a valid safetensors file"]);
}

#[test]
fn png_kinds_are_converted_or_refused() {
    let out = Scratch::new("png");
    let model = fixtures().join("tiny-sd");
    let kinds = fixtures().join("images/kinds");
    for name in ["rgb16.png", "gray8.png", "gray_alpha8.png", "rgba8.png", "palette4.png", "interlaced_rgb8.png"] {
        let img = kinds.join(name);
        let (code, stderr) = generate(&model, "x", &out.path(name), &["--image", img.to_str().unwrap()]);
        assert_eq!(code, 0, "{name} is converted: {stderr}");
        assert!(out.path(name).exists());
    }
    for (name, parts) in [
        ("truncated.png", &["truncated.png", "PNG"][..]),
        ("huge_header.png", &["huge_header.png", "100000x100000", "at most 2048"][..]),
        ("ragged_palette.png", &["ragged_palette.png", "PLTE"][..]),
    ] {
        let img = kinds.join(name);
        let (code, stderr) = generate(&model, "x", &out.path(name), &["--image", img.to_str().unwrap()]);
        println!("{name}: {stderr}");
        assert_fails(code, &stderr, parts);
    }
}

#[test]
fn long_and_control_character_prompts_and_limits() {
    let out = Scratch::new("prompt");
    let model = fixtures().join("tiny-sd");
    let long: String = "a cat on a mat ".chars().cycle().take(100_000).collect();
    let controls: String = (1u8..32).map(char::from).chain("\u{7f}\u{202e}\u{feff}x".chars()).collect();
    for (i, prompt) in [long.as_str(), controls.as_str()].iter().enumerate() {
        let png = out.path(&format!("p{i}.png"));
        let (code, stderr) = generate(&model, prompt, &png, &[]);
        assert_eq!(code, 0, "prompt {i}: {stderr}");
        // The prompt is kept in the PNG's parameters (iTXt when it is not Latin-1).
        let (_, _, _, params) = lcm_pipeline::output::read_png(&png).unwrap();
        assert!(params.unwrap().contains(&prompt[..prompt.len().min(20)]), "prompt {i}");
    }
    for (extra, flag) in [
        (&["--num-images", "65"][..], "--num-images"),
        (&["--num-images", "18446744073709551615"][..], "--num-images"),
        (&["--num-images", "18446744073709551616"][..], "--num-images"),
    ] {
        // (Sizes and steps past their limits: cli.rs `bad_flags_fail_before_any_work`.)
        let (code, stderr) = generate(&model, "x", &out.path("l.png"), extra);
        println!("{extra:?}: {stderr}");
        assert!(code == 1 || code == 2, "{extra:?}: exit {code}: {stderr}");
        assert!(stderr.contains(flag), "{extra:?}: {stderr}");
    }
}

/// `lcm bench --plan`: an unknown GPU or a bad size is an error naming the flag; a plan needs no device
/// and prints one JSON object with every launch.
#[test]
fn plan_names_a_bad_gpu_or_size_and_needs_no_device() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!stderr.contains("panicked"), "lcm panicked on {args:?}: {stderr}");
        (o.status.code().expect("exited"), String::from_utf8_lossy(&o.stdout).to_string(), stderr)
    };
    let (code, _, err) = run(&["bench", "--plan", "h300"]);
    assert_fails(code, &err, &["--plan", "h300", "h100, h200, a100, l40s"]);
    let (code, _, err) = run(&["bench", "--plan", "h100", "--width", "500"]);
    assert_fails(code, &err, &["--width", "500"]);
    let (code, out, err) = run(&["bench", "--plan", "a100", "--steps", "2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert_eq!((v["gpu"].as_str(), v["steps"].as_u64()), (Some("a100"), Some(2)));
    assert_eq!(v["launches"].as_array().map(|l| l.len() as u64), v["generation"]["launches"].as_u64());
}
