//! `lcm generate --model FILE.safetensors` on the single-file fixture (tests/fixtures/single-file): with
//! `--config`, without it (architecture from the shapes, SD1.5's tokenizer from the Hugging Face cache,
//! SD1.5's scheduler), and with a separate `--vae`; each PNG holds diffusers' `from_single_file` pixels.

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

/// An HF cache whose SD1.5 snapshot holds the fixture's tokenizer, as vocab.json + merges.txt (what the
/// SD1.5 repository ships) taken out of its tokenizer.json.
fn cache_with_fixture_tokenizer() -> PathBuf {
    let cache = scratch("hf-cache");
    let repo = cache.join("models--stable-diffusion-v1-5--stable-diffusion-v1-5");
    fs::create_dir_all(repo.join("refs")).unwrap();
    fs::write(repo.join("refs/main"), "fixture\n").unwrap();
    let tok = repo.join("snapshots/fixture/tokenizer");
    fs::create_dir_all(&tok).unwrap();
    let src = fixtures().join("single-file/config/tokenizer");
    let json: Value = serde_json::from_str(&fs::read_to_string(src.join("tokenizer.json")).unwrap()).unwrap();
    fs::write(tok.join("vocab.json"), json["model"]["vocab"].to_string()).unwrap();
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!("{} {}", pair[0].as_str().unwrap(), pair[1].as_str().unwrap()),
            other => panic!("merge {other}"),
        })
        .collect();
    fs::write(tok.join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n"))).unwrap();
    fs::copy(src.join("tokenizer_config.json"), tok.join("tokenizer_config.json")).unwrap();
    fs::write(tok.join("special_tokens_map.json"), r#"{"pad_token": "<|endoftext|>"}"#).unwrap();
    cache
}

#[test]
fn single_file_without_config_reads_the_architecture_from_the_shapes() {
    // The fixture is shaped so that everything is inferable: 8 UNet heads (SD1.5's rule), a 64-wide
    // text encoder (one 64-wide head), 32 groups. Scheduler: SD1.5's default, as the record's.
    let cache = cache_with_fixture_tokenizer();
    run_case("sf_4step", &cache, &[]);
    run_case("sf_cfg", &cache, &["--negative-prompt", "blurry"]);
    let _ = fs::remove_dir_all(cache);
}

#[test]
fn single_file_errors_name_the_flag_or_file() {
    let empty = scratch("empty-cache");
    let model = fixtures().join("single-file/sd15_tiny.safetensors");
    let config = fixtures().join("single-file/config");
    let (folder, lora) = (fixtures().join("tiny-sd"), fixtures().join("single-file/lora_sf.safetensors"));
    let sd2 = fixtures().join("sd2/tiny_sd2.safetensors");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // No --config and no tokenizer in the cache (and no hub): what to download, or --config.
        (
            vec!["--model", path(&model)],
            vec!["--config", "stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer/vocab.json"],
        ),
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
        // An SD2 file without --config: SD1.5's tokenizer would pad it wrongly.
        (vec!["--model", path(&sd2)], vec!["--config", "tiny_sd2.safetensors", "SD2", "pads with \"!\""]),
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
