//! `lcm generate --model FILE.safetensors` on the single-file fixture (tests/fixtures/single-file) with
//! `--config`, and with a separate `--vae`, with an empty Hugging Face cache and no reachable hub; each
//! PNG holds diffusers' `from_single_file` pixels. (Without `--config`: tests/cli_single_file_offline.rs;
//! the pipeline-level test of the shapes path with the fixture's tokenizer is
//! crates/lcm-pipeline/tests/single_file.rs.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_core::{rel_l2, SafeTensorsFile};
use lcm_pipeline::output::read_png;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    // Tests run in parallel in one process: a counter keeps their folders apart.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("lcm-cli-sf-{}-{n}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `lcm generate` on the CPU with an HF cache of `cache` and no reachable hub.
fn generate(cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm"))
        .arg("generate")
        .args(["--device", "cpu"])
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into())
}

/// The recorded case's prompt/seed/size flags.
fn case_flags(case: &str) -> Vec<String> {
    let text = fs::read_to_string(fixtures().join("records/single_file/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let c = v.as_array().unwrap().iter().find(|c| c["name"] == case).unwrap();
    let mut flags: Vec<String> = ["--prompt", c["prompt"].as_str().unwrap()].map(String::from).to_vec();
    for key in ["seed", "steps", "width", "height"] {
        flags.extend([format!("--{key}"), c[key].to_string()]);
    }
    flags.extend(["--guidance-scale".into(), c["guidance_scale"].to_string()]);
    flags
}

/// The PNG and latents `lcm` wrote against the case's record: (fraction of differing 8-bit values,
/// largest difference, latents relative L2).
fn compare(case: &str, png: &Path, latents: &Path) -> (f64, u8, f64) {
    let rec = SafeTensorsFile::open(fixtures().join(format!("records/single_file/{case}.safetensors"))).unwrap();
    let want: Vec<u8> = rec.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect();
    let (_, _, rgb, _) = read_png(png).unwrap();
    assert_eq!(rgb.len(), want.len());
    let diff = rgb.iter().zip(&want).filter(|(a, b)| a != b).count() as f64 / want.len() as f64;
    let max = rgb.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
    let ours = SafeTensorsFile::open(latents).unwrap().get("latents").unwrap().to_f32();
    (diff, max, rel_l2(&ours, &rec.get("latents").unwrap().to_f32()))
}

fn run_case(case: &str, cache: &Path, extra: &[&str]) {
    let dir = scratch(case);
    let (png, lat) = (dir.join("out.png"), dir.join("out.safetensors"));
    let model = fixtures().join("single-file/sd15_tiny.safetensors");
    let mut args: Vec<String> = case_flags(case);
    args.extend(["--model", path(&model), "--output", path(&png), "--save-latents", path(&lat)].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    let (ok, stderr) = generate(cache, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "lcm generate {args:?} failed: {stderr}");
    let (frac, max, lat_err) = compare(case, &png, &lat);
    println!("{case} {extra:?}: {:.3}% of 8-bit values differ (max {max}), latents rel L2 {lat_err:.2e}", 100.0 * frac);
    // As in tests/cli.rs: the GEMM's summation order may put a few values one step away, no more.
    assert!(frac < 0.005 && max <= 1 && lat_err < 1e-3, "{case}: {frac} differ by up to {max}; latents {lat_err:.2e}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn single_file_with_config_reproduces_diffusers() {
    let config = fixtures().join("single-file/config");
    run_case("sf_4step", &scratch("no-cache"), &["--config", path(&config)]);
    let vae = fixtures().join("single-file/vae_ldm.safetensors");
    run_case("sf_vae_ldm", &scratch("no-cache-vae"), &["--config", path(&config), "--vae", path(&vae)]);
}

#[test]
fn single_file_errors_name_the_flag_or_file() {
    let empty = scratch("empty-cache");
    let model = fixtures().join("single-file/sd15_tiny.safetensors");
    let config = fixtures().join("single-file/config");
    let (folder, lora) = (fixtures().join("tiny-sd"), fixtures().join("single-file/lora_sf.safetensors"));
    let sd2 = fixtures().join("sd2/tiny_sd2.safetensors");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // No --config: CLIP's built-in tokenizer, whose ids the fixture's 1000-token text encoder cannot
        // take (tests/cli_single_file_offline.rs runs a file with CLIP's vocabulary).
        (vec!["--model", path(&model)], vec!["sd15_tiny.safetensors", "1000 token embeddings", "config_dir"]),
        // --config belongs to a single file.
        (vec!["--model", path(&folder), "--config", path(&config)], vec!["--config", "single-file"]),
        (
            vec!["--model", "/nonexistent/model.safetensors", "--config", path(&config)],
            vec!["/nonexistent/model.safetensors", "not found"],
        ),
        (
            vec!["--model", path(&model), "--config", path(&config), "--vae", "/nonexistent/vae.safetensors"],
            vec!["/nonexistent/vae.safetensors", "VAE not found"],
        ),
        // A LoRA given as the model.
        (vec!["--model", path(&lora), "--config", path(&config)], vec!["lora_sf.safetensors", "looks like a LoRA"]),
        // An SD2 file without --config (its tokenizer is built in) whose heads the shapes cannot say.
        (vec!["--model", path(&sd2)], vec!["tiny_sd2.safetensors", "64-wide heads", "--config"]),
    ];
    let out = empty.join("x.png");
    for (args, needles) in cases {
        let mut all = vec!["--prompt", "x", "--width", "64", "--height", "64", "--output", path(&out)];
        all.extend(args.iter());
        let (ok, stderr) = generate(&empty, &all);
        assert!(!ok, "{args:?} should fail");
        for n in needles {
            assert!(stderr.contains(n), "{args:?}: message lacks `{n}`: {stderr}");
        }
    }
    let _ = fs::remove_dir_all(empty);
}
