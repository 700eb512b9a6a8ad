//! `lcm generate` and `lcm frames` with ControlNets on the tiny fixtures (CPU): the flags reproduce
//! diffusers' recorded PNGs (two ControlNets with their scales and windows, CFG), the output takes the
//! control image's size by default, `--control-preprocess canny` equals passing the Canny map, each
//! frame of `lcm frames --control-frames` is `lcm generate` with that frame's control image, and bad
//! flags fail naming the flag.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_pipeline::control_image::canny_rgb8;
use lcm_pipeline::output::{read_png, write_png};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fx(rel: &str) -> String {
    fixtures().join(rel).display().to_string()
}

fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-cn-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `lcm generate` on tiny-sd with `extra`, writing `out`; its PNG's size and pixels.
fn generate(out: &Path, extra: &[&str]) -> (usize, usize, Vec<u8>) {
    let (m, o) = (fx("tiny-sd"), out.display().to_string());
    let base = ["generate", "--model", &m, "--device", "cpu", "--output", &o, "--prompt", "a photo of a cat"];
    let (ok, _, stderr) = lcm(&[&base[..], extra].concat());
    assert!(ok, "lcm generate {extra:?} failed: {stderr}");
    let (w, h, rgb, _) = read_png(out).unwrap();
    (w, h, rgb)
}

fn recorded_u8(case: &str) -> Vec<u8> {
    let f = lcm_core::SafeTensorsFile::open(fixtures().join(format!("records/controlnet/{case}.safetensors"))).unwrap();
    f.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect()
}

fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0)
}

#[test]
fn two_controlnets_with_windows_reproduce_diffusers_png() {
    let dir = scratch("two");
    let (a, b) = (format!("{}:0.7", fx("controlnet/cn-sd15-a")), format!("{}:1.3", fx("controlnet/cn-sd15-b")));
    let (ia, ib) = (fx("controlnet/images/canny_64x64.png"), fx("controlnet/images/smooth_64x64.png"));
    let flags = [
        "--controlnet",
        &a,
        "--control-image",
        &ia,
        "--control-start",
        "0",
        "--control-end",
        "0.5",
        "--controlnet",
        &b,
        "--control-image",
        &ib,
        "--control-start",
        "0.25",
        "--control-end",
        "1",
        "--guidance-scale",
        "2",
        "--negative-prompt",
        "blurry, low quality, watermark",
        "--seed",
        "71",
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
    ];
    let (_, _, rgb) = generate(&dir.join("two.png"), &flags);
    let d = max_diff(&rgb, &recorded_u8("cn_two_cfg"));
    assert!(d <= 1, "cn_two_cfg through the CLI: max 8-bit difference {d}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn output_takes_the_control_images_size_and_canny_equals_its_map() {
    let dir = scratch("size");
    let cn = fx("controlnet/cn-sd15-a");
    // No --width/--height: the control image's 80x64.
    let img = fx("controlnet/images/canny_80x64.png");
    let (w, h, _) = generate(&dir.join("size.png"), &["--controlnet", &cn, "--control-image", &img, "--steps", "1"]);
    assert_eq!((w, h), (80, 64));

    // --control-preprocess canny on a photo = the Canny map passed as the control image.
    let photo = fixtures().join("images/init_64x64.png");
    let (pw, ph, rgb, _) = read_png(&photo).unwrap();
    let edges: Vec<u8> = canny_rgb8(&rgb, pw, ph, 100.0, 200.0).unwrap().iter().flat_map(|&v| [v, v, v]).collect();
    let map = dir.join("map.png");
    write_png(&map, pw, ph, &edges, "").unwrap();
    let common = ["--controlnet", &cn, "--steps", "2", "--seed", "3"];
    let p = photo.display().to_string();
    let (_, _, pre) = generate(
        &dir.join("pre.png"),
        &[&common[..], &["--control-image", &p, "--control-preprocess", "canny"]].concat(),
    );
    let (_, _, given) =
        generate(&dir.join("given.png"), &[&common[..], &["--control-image", map.to_str().unwrap()]].concat());
    assert_eq!(pre, given, "--control-preprocess canny differs from passing the Canny map");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn each_frame_is_generate_with_its_control_image() {
    let dir = scratch("frames");
    let (input, controls, output) = (dir.join("in"), dir.join("pose"), dir.join("out"));
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&controls).unwrap();
    let (_, _, init, _) = read_png(&fixtures().join("images/init_64x64.png")).unwrap();
    let names = ["f1.png", "f2.png", "f10.png"];
    for (k, name) in names.iter().enumerate() {
        // The same input frame, a control image that moves: the outputs differ only by the ControlNet.
        write_png(&input.join(name), 64, 64, &init, "").unwrap();
        let mut c = vec![0u8; 64 * 64 * 3];
        for y in 8 * k..8 * k + 24 {
            for x in 10..50 {
                c[(y * 64 + x) * 3..][..3].copy_from_slice(&[255, 255, 255]);
            }
        }
        write_png(&controls.join(name), 64, 64, &c, "").unwrap();
    }
    let (m, cn) = (fx("tiny-sd"), fx("controlnet/cn-sd15-a"));
    let sampling = ["--prompt", "a red car", "--strength", "0.6", "--steps", "4", "--seed", "5", "--device", "cpu"];
    let (i, p, o) = (input.to_str().unwrap(), controls.to_str().unwrap(), output.to_str().unwrap());
    let run = ["frames", "--model", &m, "--input", i, "--output", o, "--controlnet", &cn, "--control-frames", p];
    let (ok, _, stderr) = lcm(&[&run[..], &sampling].concat());
    assert!(ok, "lcm frames with a ControlNet failed: {stderr}");
    let mut outs = Vec::new();
    for name in names {
        let (f, c) = (input.join(name).display().to_string(), controls.join(name).display().to_string());
        let gen = [
            "--image",
            &f,
            "--controlnet",
            &cn,
            "--control-image",
            &c,
            "--strength",
            "0.6",
            "--steps",
            "4",
            "--seed",
            "5",
        ];
        let out = dir.join(format!("gen-{name}"));
        let (ok, _, stderr) = lcm(&[
            &["generate", "--model", &m, "--device", "cpu", "--prompt", "a red car", "--output", out.to_str().unwrap()]
                [..],
            &gen,
        ]
        .concat());
        assert!(ok, "generate {name}: {stderr}");
        let (from_frames, from_generate) = (read_png(&output.join(name)).unwrap().2, read_png(&out).unwrap().2);
        assert_eq!(from_frames, from_generate, "{name}: frames and generate differ");
        outs.push(from_frames);
    }
    assert_ne!(outs[0], outs[1], "the control frames did not steer the outputs");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_control_flags_fail_naming_the_flag() {
    let dir = scratch("bad");
    let (m, cn, img) = (fx("tiny-sd"), fx("controlnet/cn-sd15-a"), fx("controlnet/images/canny_64x64.png"));
    let xl = fx("controlnet/cn-sdxl");
    let o = dir.join("x.png").display().to_string();
    let base = ["generate", "--model", &m, "--device", "cpu", "--output", &o, "--prompt", "x", "--steps", "1"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--controlnet", &cn], "--control-image: 0 given for 1 --controlnet"),
        (vec!["--control-image", &img], "--control-image: given without --controlnet"),
        (
            vec!["--controlnet", &cn, "--control-image", &img, "--control-start", "0.5", "--control-end", "0.5"],
            "--control-end: ControlNet 1 (",
        ),
        (vec!["--controlnet", &cn, "--control-image", &img, "--control-start", "1"], "--control-start: ControlNet 1 ("),
        (
            vec![
                "--controlnet",
                &cn,
                "--control-image",
                &img,
                "--control-end",
                "0.3",
                "--control-end",
                "0.4",
                "--control-end",
                "1",
            ],
            "--control-end: given 3 times for 1 --controlnet",
        ),
        (vec!["--controlnet", "/no/such/controlnet", "--control-image", &img], "--controlnet: not found"),
        (vec!["--controlnet", &cn, "--control-image", &img, "--control-preprocess", "sobel"], "control_preprocess"),
        (vec!["--controlnet", &xl, "--control-image", &img], "does not fit this model"),
    ];
    for (extra, want) in cases {
        let (ok, _, stderr) = lcm(&[&base[..], &extra].concat());
        assert!(!ok, "{extra:?} succeeded");
        assert!(stderr.contains(want), "{extra:?}: expected `{want}` in: {stderr}");
        assert!(!want.contains("ControlNet 1") || stderr.contains("expected a value in"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?} panicked: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_explains_the_control_flags() {
    for cmd in ["generate", "frames"] {
        let (ok, stdout, _) = lcm(&[cmd, "--help"]);
        assert!(ok);
        for flag in ["--controlnet", "--control-start", "--control-end", "--control-preprocess", "Lanczos"] {
            assert!(stdout.contains(flag), "{cmd} --help lacks {flag}");
        }
    }
    assert!(lcm(&["frames", "--help"]).1.contains("--control-frames"));
    assert!(lcm(&["bench", "--help"]).1.contains("--controlnet"));
}
