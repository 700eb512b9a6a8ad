//! `lcm generate --image … --mask …` on the tiny fixtures (CPU): the flags reproduce diffusers' recorded
//! inpainting PNGs (a 9-channel inpainting UNet with a LoRA; an ordinary UNet blended at strength 0.6;
//! a mask from an alpha channel), and bad masks fail naming `--mask` and what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_pipeline::output::{read_png, write_png};

fn fx(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel).display().to_string()
}

fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-inpaint-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn recorded_u8(case: &str) -> Vec<u8> {
    let p = Path::new(&fx(&format!("records/inpaint/{case}.safetensors"))).to_path_buf();
    let f = lcm_core::SafeTensorsFile::open(p).unwrap();
    f.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect()
}

/// Runs `generate` with `flags`, writing into `dir`; the PNG's pixels.
fn generate(dir: &Path, flags: &[&str]) -> Vec<u8> {
    let out = dir.join("out.png").display().to_string();
    let (ok, _, stderr) = lcm(&[&["generate", "--device", "cpu", "--output", &out][..], flags].concat());
    assert!(ok, "lcm generate {flags:?}: {stderr}");
    read_png(Path::new(&out)).unwrap().2
}

#[test]
fn masks_reproduce_diffusers_pngs() {
    let dir = scratch("parity");
    let p1 = "A photograph of an astronaut riding a horse on Mars, highly detailed, 8k";
    let (init, mask) = (fx("inpaint/images/init_64x64.png"), fx("inpaint/images/mask_l_64x64.png"));
    let (model, lora) = (fx("inpaint/tiny-sd-inpaint"), fx("loras/lora_peft.safetensors"));
    let tiny = fx("tiny-sd");
    let cases: [(&str, Vec<&str>); 3] = [
        ("inp9_lora", vec!["--model", &model, "--lora", &lora, "--prompt", p1, "--seed", "90", "--strength", "1"]),
        ("inp4_sd", vec!["--model", &tiny, "--prompt", "a photo of a cat", "--seed", "93", "--strength", "0.6"]),
        ("inp_alpha_mask", vec!["--model", &model, "--prompt", "a photo of a cat", "--seed", "96", "--strength", "1"]),
    ];
    for (case, flags) in cases {
        let m = if case == "inp_alpha_mask" { fx("inpaint/images/mask_rgba_64x64.png") } else { mask.clone() };
        let all = [&flags[..], &["--image", &init, "--mask", &m, "--steps", "4"]].concat();
        let got = generate(&dir, &all);
        let d = got.iter().zip(recorded_u8(case)).map(|(a, b)| a.abs_diff(b)).max().unwrap();
        assert!(d <= 1, "{case} through the CLI: max 8-bit difference {d}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_masks_fail_naming_the_mask() {
    let dir = scratch("bad");
    let empty = dir.join("empty.png");
    write_png(&empty, 64, 64, &vec![0u8; 64 * 64 * 3], "").unwrap();
    let small = dir.join("small.png");
    write_png(&small, 32, 32, &vec![255u8; 32 * 32 * 3], "").unwrap();
    let (init, mask) = (fx("inpaint/images/init_64x64.png"), fx("inpaint/images/mask_l_64x64.png"));
    let out = dir.join("x.png").display().to_string();
    let base = ["generate", "--device", "cpu", "--output", &out, "--prompt", "x", "--steps", "1"];
    let (e, s) = (empty.display().to_string(), small.display().to_string());
    let inpaint_unet = fx("inpaint/tiny-sd-inpaint");
    let tiny = fx("tiny-sd");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--model", &tiny, "--image", &init, "--mask", &e], vec!["--mask", "marks no pixel to repaint"]),
        (vec!["--model", &tiny, "--image", &init, "--mask", &s], vec!["--mask", "32x32", "the image's size"]),
        (vec!["--model", &tiny, "--mask", &mask], vec!["--image"]),
        (vec!["--model", &inpaint_unet], vec!["--mask", "inpainting UNet", "9 input channels"]),
        (vec!["--model", &inpaint_unet, "--image", &init], vec!["--mask", "inpainting UNet"]),
    ];
    for (extra, want) in cases {
        let (ok, _, stderr) = lcm(&[&base[..], &extra].concat());
        assert!(!ok, "{extra:?} succeeded");
        for w in want {
            assert!(stderr.contains(w), "{extra:?}: expected `{w}` in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{extra:?} panicked: {stderr}");
    }
    let (ok, stdout, _) = lcm(&["generate", "--help"]);
    assert!(ok && stdout.contains("--mask") && stdout.contains("alpha"), "generate --help lacks --mask");
    assert!(lcm(&["frames", "--help"]).1.contains("--mask"), "frames --help lacks --mask");
    std::fs::remove_dir_all(&dir).ok();
}

/// `lcm frames --mask FILE` inpaints every frame with that mask: each output is `lcm generate --image
/// frame --mask FILE` with the same flags.
#[test]
fn frames_with_a_mask_are_generate_with_it() {
    let dir = scratch("frames");
    let (input, output) = (dir.join("in"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    let (_, _, init, _) = read_png(Path::new(&fx("inpaint/images/init_64x64.png"))).unwrap();
    for (k, name) in ["a.png", "b.png"].iter().enumerate() {
        let shifted: Vec<u8> = init.iter().map(|&v| v.wrapping_add(40 * k as u8)).collect();
        write_png(&input.join(name), 64, 64, &shifted, "").unwrap();
    }
    let (model, mask) = (fx("inpaint/tiny-sd-inpaint"), fx("inpaint/images/mask_l_64x64.png"));
    let flags = ["--prompt", "a cat", "--strength", "1", "--steps", "2", "--seed", "4", "--device", "cpu"];
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let (ok, _, stderr) =
        lcm(&[&["frames", "--model", &model, "--input", i, "--output", o, "--mask", &mask][..], &flags].concat());
    assert!(ok, "lcm frames --mask: {stderr}");
    for name in ["a.png", "b.png"] {
        let (frame, out) = (input.join(name).display().to_string(), dir.join(format!("gen-{name}")));
        let gen =
            ["generate", "--model", &model, "--image", &frame, "--mask", &mask, "--output", out.to_str().unwrap()];
        let (ok, _, stderr) = lcm(&[&gen[..], &flags].concat());
        assert!(ok, "generate {name}: {stderr}");
        assert_eq!(
            read_png(&output.join(name)).unwrap().2,
            read_png(&out).unwrap().2,
            "{name}: frames and generate differ"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
