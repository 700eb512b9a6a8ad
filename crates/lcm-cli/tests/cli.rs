//! The `lcm` binary end to end on the tiny fixture model: the PNG it writes holds diffusers' pixels for
//! the same seed, and bad flags fail before any work with a message naming the flag.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_core::SafeTensorsFile;
use lcm_pipeline::output::read_png;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `lcm generate` on the tiny fixture model (tests/fixtures/tiny-sd), on the CPU, with `extra` flags.
fn generate(prompt: &str, extra: &[&str]) -> (bool, String, String) {
    let model = fixtures().join("tiny-sd");
    let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--device", "cpu"];
    args.extend_from_slice(extra);
    lcm(&args)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn recorded_u8(case: &str) -> Vec<u8> {
    let f = SafeTensorsFile::open(fixtures().join(format!("records/pipeline/{case}.safetensors"))).unwrap();
    f.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect()
}

/// Fraction of 8-bit values that differ, and the largest difference.
fn compare(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64;
    (diff, a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0))
}

#[test]
fn generate_reproduces_diffusers_png() {
    let dir = scratch("png");
    let out = dir.join("cat.png");
    let lat = dir.join("cat.safetensors");
    let (ok, stdout, stderr) = generate(
        "a photo of a cat",
        &[
            "--seed",
            "0",
            "--width",
            "64",
            "--height",
            "64",
            "--output",
            out.to_str().unwrap(),
            "--save-latents",
            lat.to_str().unwrap(),
        ],
    );
    assert!(ok, "lcm generate failed: {stderr}");
    assert!(stdout.contains("cat.png") && stderr.contains("text encoder") && stderr.contains("4/4"), "{stderr}");
    let (w, h, rgb, params) = read_png(&out).unwrap();
    assert_eq!((w, h), (64, 64));
    let (frac, max) = compare(&rgb, &recorded_u8("sd_4step"));
    println!("pixels differing from diffusers: {:.3}% (max {max})", 100.0 * frac);
    // The CPU backend's GEMM (the `gemm` crate) picks AVX-512 or AVX2 micro-kernels by machine, and the
    // f32 summation order with them: on AVX2 machines ~0.12% of values sit close enough to a rounding
    // boundary to land one step away (0.01% with AVX-512). More, or any difference above 1, is a bug.
    assert!(frac < 0.005 && max <= 1, "{frac} of pixels differ, by up to {max}");
    let params = params.expect("parameters chunk");
    assert!(
        params.contains("prompt: a photo of a cat") && params.contains("seed: 0") && params.contains("steps: 4"),
        "{params}"
    );
    let latents = SafeTensorsFile::open(&lat).unwrap();
    assert_eq!(latents.names().collect::<Vec<_>>(), ["latents"]);
    assert_eq!(latents.shape("latents"), Some(&[1usize, 4, 8, 8][..]));
}

/// An SDXL folder is recognised by itself and gets its own default size (`sample_size` × 8: 64 for the
/// tiny fixture, 1024 for SDXL), and the PNG is diffusers' (StableDiffusionXLPipeline, same seed).
#[test]
fn sdxl_folder_picks_its_pipeline_and_size() {
    let dir = scratch("sdxl");
    let out = dir.join("xl.png");
    let model = fixtures().join("sdxl/tiny-sdxl");
    let args = [
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a photo of a cat",
        "--seed",
        "0",
        "--device",
        "cpu",
    ];
    let (ok, _, stderr) = lcm(&[&args[..], &["--output", out.to_str().unwrap()]].concat());
    assert!(ok, "lcm generate failed: {stderr}");
    let (w, h, rgb, _) = read_png(&out).unwrap();
    assert_eq!((w, h), (64, 64), "the model's sample_size x 8");
    let f = SafeTensorsFile::open(fixtures().join("records/sdxl/xl_4step.safetensors")).unwrap();
    let want: Vec<u8> = f.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect();
    let (frac, max) = compare(&rgb, &want);
    assert!(frac < 0.005 && max <= 1, "{frac} of pixels differ from diffusers, by up to {max}");
}

#[test]
fn several_images_are_numbered_and_loras_apply() {
    let dir = scratch("multi");
    let lora = fixtures().join("loras/lora_kohya_ldm.safetensors");
    let out = dir.join("img.png");
    let (ok, _, stderr) = generate(
        "a photo of a cat",
        &[
            "--seed",
            "0",
            "--width",
            "64",
            "--height",
            "64",
            "--lora",
            &format!("{}:1.0", lora.display()),
            "--num-images",
            "2",
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(!out.exists() && dir.join("img-0.png").is_file() && dir.join("img-1.png").is_file());
    let (_, _, first, params) = read_png(&dir.join("img-0.png")).unwrap();
    assert!(params.unwrap().contains("lora_kohya_ldm.safetensors:1"));
    // A LoRA changes the image: compare with the recorded one-image LoRA case (same prompt and seed,
    // but N=2 draws different latents, so only check it differs from the no-LoRA image).
    let (frac, _) = compare(&first, &recorded_u8("sd_4step"));
    assert!(frac > 0.1, "the LoRA did not change the image");
}

#[test]
fn img2img_reproduces_diffusers_png() {
    let dir = scratch("img2img");
    let image = fixtures().join("images/init_64x64.png");
    let out = dir.join("i2i.png");
    let (ok, _, stderr) = generate(
        "a photo of a cat",
        &["--seed", "20", "--image", image.to_str().unwrap(), "--strength", "0.5", "--output", out.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("2/2"), "strength 0.5 of 4 steps runs 2: {stderr}");
    let (w, h, rgb, _) = read_png(&out).unwrap();
    assert_eq!((w, h), (64, 64));
    let (frac, max) = compare(&rgb, &recorded_u8("sd_img2img"));
    // The CPU backend's GEMM (the `gemm` crate) picks AVX-512 or AVX2 micro-kernels by machine, and the
    // f32 summation order with them: on AVX2 machines ~0.12% of values sit close enough to a rounding
    // boundary to land one step away (0.01% with AVX-512). More, or any difference above 1, is a bug.
    assert!(frac < 0.005 && max <= 1, "{frac} of pixels differ, by up to {max}");
}

#[test]
fn bad_flags_fail_before_any_work() {
    let model = fixtures().join("tiny-sd");
    let m = model.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--width", "100"], "--width"),
        (&["--height", "4096"], "--height"),
        (&["--steps", "0"], "--steps"),
        (&["--steps", "51"], "--steps"),
        (&["--num-images", "0"], "--num-images"),
        (&["--lora", "/no/such/lora.safetensors"], "/no/such/lora.safetensors"),
        (&["--guidance-scale", "NaN"], "--guidance-scale"),
        (&["--image", "/no/such/image.png"], "/no/such/image.png"),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["generate", "--model", m, "--prompt", "x", "--device", "cpu"];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = lcm(&args);
        assert!(!ok, "{extra:?} should fail");
        assert!(stderr.contains(needle) && !stderr.contains("loading"), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let image = fixtures().join("images/init_64x64.png");
    for (extra, needle) in [
        (vec!["--strength", "0"], "--strength"),
        (vec!["--strength", "1.5"], "--strength"),
        (vec!["--width", "96"], "--width"),
    ] {
        let mut args =
            vec!["generate", "--model", m, "--prompt", "x", "--device", "cpu", "--image", image.to_str().unwrap()];
        args.extend(extra.iter());
        let (ok, _, stderr) = lcm(&args);
        assert!(!ok && stderr.contains(needle) && !stderr.contains("loading"), "{extra:?}: {stderr}");
    }
    let (ok, _, stderr) = lcm(&["generate", "--model", "/no/such/model", "--prompt", "x"]);
    assert!(!ok && stderr.contains("/no/such/model") && stderr.contains("model folder not found"), "{stderr}");
}

#[test]
fn help_explains_every_flag() {
    let (ok, stdout, _) = lcm(&["generate", "--help"]);
    assert!(ok);
    for flag in [
        "--model",
        "--prompt",
        "--negative-prompt",
        "--lora",
        "--steps",
        "--guidance-scale",
        "--seed",
        "--width",
        "--height",
        "--num-images",
        "--device",
        "--output",
        "--save-latents",
        "--vae-tiling",
        "--vae-tile-size",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn without_model_or_network_the_error_says_what_to_download() {
    let cache = scratch("empty-hf-cache");
    let out = Command::new(env!("CARGO_BIN_EXE_lcm"))
        .args(["generate", "--prompt", "x", "--device", "cpu"])
        .env("HF_HUB_CACHE", &cache)
        // Nothing listens on the discard port: the download fails at once instead of timing out.
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for needle in [
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "latent-consistency/lcm-lora-sdv1-5",
        "pytorch_lora_weights.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "--model",
        cache.to_str().unwrap(),
    ] {
        assert!(stderr.contains(needle), "message lacks `{needle}`: {stderr}");
    }
}

#[test]
fn bench_lora_rank_is_cuda_only_and_says_so() {
    for (args, needle) in [
        (&["bench", "--device", "cpu", "--lora-rank", "8"][..], "CUDA backend only"),
        (&["bench", "--device", "cpu", "--lora-rank", "0"][..], "at least 1"),
    ] {
        let (ok, _, stderr) = lcm(args);
        assert!(!ok, "{args:?} should fail");
        assert!(stderr.contains("--lora-rank") && stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("warm-up"), "{args:?} failed only after loading: {stderr}");
    }
}

/// `lcm bench --vae-tiling` decodes in tiles and reports the decoder's arena, smaller than untiled.
#[test]
fn bench_reports_the_vae_arena_tiled_and_not() {
    let model = fixtures().join("tiny-sd");
    let arena = |extra: &[&str]| {
        let base = ["bench", "--device", "cpu", "--model", model.to_str().unwrap(), "--json", "--warmup", "0"];
        let size = ["--repeat", "1", "--steps", "1", "--width", "128", "--height", "128"];
        let (ok, stdout, stderr) = lcm(&[&base[..], &size, extra].concat());
        assert!(ok, "{extra:?}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        (v["vae_arena_bytes"].as_u64().expect("vae_arena_bytes"), v["vae_tile"].as_u64())
    };
    let (untiled, tile) = arena(&[]);
    assert_eq!(tile, None);
    let (tiled, tile) = arena(&["--vae-tiling", "--vae-tile-size", "32"]);
    assert_eq!(tile, Some(32));
    assert!(tiled > 0 && tiled < untiled / 4, "tiled arena {tiled} B vs untiled {untiled} B");
}

/// `--device emulated`: the CUDA backend with its kernels run by the emulator gives the CPU's image
/// (latents within the f16 tolerance of 1e-2 relative L2), and says which device ran.
#[test]
fn generate_on_the_emulated_device_gives_the_cpu_image() {
    if !lcm::cuda::emulator_built() {
        println!("SKIPPED: this build has no kernel emulator (no CUDA headers at build time)");
        return;
    }
    let dir = scratch("emulated");
    let run = |device: &str| {
        let (png, lat) = (dir.join(format!("{device}.png")), dir.join(format!("{device}.safetensors")));
        let model = fixtures().join("tiny-sd");
        let (ok, _, stderr) = lcm(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "a red house by a lake",
            "--device",
            device,
            "--seed",
            "5",
            "--steps",
            "2",
            "--width",
            "96",
            "--height",
            "64",
            "--output",
            png.to_str().unwrap(),
            "--save-latents",
            lat.to_str().unwrap(),
        ]);
        assert!(ok, "--device {device}: {stderr}");
        let named = if device == "cpu" { "on cpu" } else { "on cuda (emulated)" };
        assert!(stderr.contains(named), "--device {device} does not say where it ran: {stderr}");
        let latents = SafeTensorsFile::open(&lat).unwrap().get("latents").unwrap().to_f32();
        (latents, read_png(&png).unwrap().2)
    };
    let (gpu, gpu_rgb) = run("emulated");
    let (cpu, cpu_rgb) = run("cpu");
    let e = lcm_core::rel_l2(&gpu, &cpu);
    let mad = gpu_rgb.iter().zip(&cpu_rgb).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>() / cpu_rgb.len() as f64;
    println!("emulated vs CPU: latents rel L2 {e:.2e}, pixel MAD {mad:.2}/255");
    assert!(e < 1e-2, "latents rel L2 {e:.3e}");
    assert!(mad < 2.0, "pixel mean absolute difference {mad:.2}/255");
}

/// `--vae-tiling --vae-tile-size 32` gives diffusers' `enable_vae_tiling()` image (records/vae_tiling, from
/// tests/fixtures/generate_tiling.py); a tile size off the latent grid is refused naming the flag.
#[test]
fn vae_tiling_reproduces_diffusers_png() {
    let dir = scratch("tiling");
    let out = dir.join("tiled.png");
    let model = fixtures().join("tiny-lcm");
    let base = ["generate", "--model", model.to_str().unwrap(), "--prompt", "a photo of a cat", "--device", "cpu"];
    let sampling = ["--seed", "7", "--steps", "2", "--guidance-scale", "8", "--width", "128", "--height", "64"];
    let tiling = ["--vae-tiling", "--vae-tile-size", "32", "--output", out.to_str().unwrap()];
    let (ok, _, stderr) = lcm(&[&base[..], &sampling, &tiling].concat());
    assert!(ok, "{stderr}");
    let (w, h, rgb, _) = read_png(&out).unwrap();
    assert_eq!((w, h), (128, 64));
    let f = SafeTensorsFile::open(fixtures().join("records/vae_tiling.safetensors")).unwrap();
    let want: Vec<u8> = f.get("pipeline_image").unwrap().to_f32().iter().map(|&v| (v * 255.0).round() as u8).collect();
    let (frac, max) = compare(&rgb, &want);
    assert!(frac < 0.005 && max <= 1, "{frac} of pixels differ, by up to {max}");

    let (ok, _, stderr) = lcm(&[&base[..], &sampling, &["--vae-tiling", "--vae-tile-size", "48"]].concat());
    assert!(!ok && stderr.contains("--vae-tile-size") && stderr.contains("multiple of 32"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = lcm(&[&base[..], &["--vae-tile-size", "64"]].concat());
    assert!(!ok && stderr.contains("--vae-tiling"), "--vae-tile-size alone: {stderr}");
}
