//! `lcm frames` on a synthetic sequence (a square moving over a gradient, 64x64) through the tiny
//! fixture model on the CPU: each frame's PNG is `lcm generate --image frame`'s, batching changes
//! nothing beyond f32 rounding, runs repeat exactly, similar frames are skipped, and bad input fails
//! before any model loads with a message naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_pipeline::output::{read_png, write_png};

const SIDE: usize = 64;

fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd").display().to_string()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-frames-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Frame `i`: a gradient with a 16x16 red square at x = 8·i.
fn frame(i: usize) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(SIDE * SIDE * 3);
    for y in 0..SIDE {
        for x in 0..SIDE {
            let inside = (8 * i..8 * i + 16).contains(&x) && (24..40).contains(&y);
            rgb.extend(if inside { [220, 40, 40] } else { [(x * 3) as u8, (y * 3) as u8, 128] });
        }
    }
    rgb
}

/// A folder `dir/in` holding `names[k]` = frame(k).
fn sequence(dir: &Path, names: &[&str]) -> PathBuf {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (k, name) in names.iter().enumerate() {
        write_png(&input.join(name), SIDE, SIDE, &frame(k), "").unwrap();
    }
    input
}

const SETTINGS: [&str; 8] = ["--prompt", "a red car", "--strength", "0.5", "--steps", "4", "--device", "cpu"];

fn frames(input: &Path, output: &Path, extra: &[&str]) -> (bool, String, String) {
    let (i, o, m) = (input.to_str().unwrap(), output.to_str().unwrap(), model());
    lcm(&[&["frames", "--model", &m, "--input", i, "--output", o][..], &SETTINGS, extra].concat())
}

fn generate(image: &Path, output: &Path, seed: &str) -> Vec<u8> {
    let (i, o, m) = (image.to_str().unwrap(), output.to_str().unwrap(), model());
    let (ok, _, stderr) =
        lcm(&[&["generate", "--model", &m, "--image", i, "--output", o, "--seed", seed][..], &SETTINGS].concat());
    assert!(ok, "lcm generate: {stderr}");
    read_png(output).unwrap().2
}

fn pixels(path: &Path) -> Vec<u8> {
    read_png(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).2
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn each_frame_is_lcm_generate_of_it_and_runs_repeat() {
    let dir = scratch("equal");
    let names = ["frame_1.png", "frame_2.png", "frame_3.png", "frame_10.png"];
    let input = sequence(&dir, &names);
    std::fs::write(input.join("notes.txt"), "not a frame").unwrap();
    let out = dir.join("out");
    let (ok, stdout, stderr) = frames(&input, &out, &["--seed", "3"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("4/4") && stderr.contains("frames/s"), "progress: {stderr}");
    assert!(stderr.contains("notes.txt"), "the skipped non-frame is named: {stderr}");
    assert_eq!(stdout.lines().count(), 4, "one written path per frame: {stdout}");
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listing(&out), want, "outputs keep the inputs' names, nothing else is written");
    for name in names {
        let single = generate(&input.join(name), &dir.join(format!("single-{name}")), "3");
        assert!(pixels(&out.join(name)) == single, "{name}: differs from lcm generate --image {name}");
        assert_eq!(read_png(&out.join(name)).unwrap().3, read_png(&dir.join(format!("single-{name}"))).unwrap().3);
    }
    let again = dir.join("again");
    let (ok, _, stderr) = frames(&input, &again, &["--seed", "3"]);
    assert!(ok, "{stderr}");
    for name in names {
        let (a, b) = (std::fs::read(out.join(name)).unwrap(), std::fs::read(again.join(name)).unwrap());
        assert!(a == b, "{name}: a second run wrote other bytes");
    }
}

/// With --seed-per-frame frame k (in natural order) gets seed + k: frame_10 is third, after frame_2.
#[test]
fn seed_per_frame_follows_the_natural_order() {
    let dir = scratch("order");
    let names = ["frame_1.png", "frame_2.png", "frame_10.png"];
    let input = sequence(&dir, &names);
    let out = dir.join("out");
    let (ok, _, stderr) = frames(&input, &out, &["--seed", "3", "--seed-per-frame"]);
    assert!(ok, "{stderr}");
    let got = pixels(&out.join("frame_10.png"));
    let image = input.join("frame_10.png");
    assert!(got == generate(&image, &dir.join("s5.png"), "5"), "frame_10.png is frame 2: seed 3 + 2");
    assert!(got != generate(&image, &dir.join("s3.png"), "3"), "the seed changes the frame");
}

/// A batched frame against its unbatched one: equal but for f32 rounding (the CPU GEMM blocks by the
/// batch size): ±1 in under 0.5% of the 8-bit values, tests/cli.rs's and tests/serve.rs's bound.
#[test]
fn batch_2_gives_the_batch_1_frames() {
    let dir = scratch("batch");
    let names = ["a.png", "b.png", "c.png", "d.png", "e.png"];
    let input = sequence(&dir, &names);
    let (one, two) = (dir.join("one"), dir.join("two"));
    let (ok, _, stderr) = frames(&input, &one, &["--seed", "9"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = frames(&input, &two, &["--seed", "9", "--batch", "2"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("3 batches of up to 2"), "5 frames in batches of 2: {stderr}");
    for name in names {
        let (a, b) = (pixels(&two.join(name)), pixels(&one.join(name)));
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let max = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        println!("{name}: {differ} of {} values differ, by up to {max}", a.len());
        assert!(max <= 1 && differ * 200 < a.len(), "{name}: {differ} values differ by up to {max}");
    }
    assert!(pixels(&one.join("a.png")) != pixels(&one.join("b.png")), "frames differ");
}

#[test]
fn similar_frames_reuse_the_last_output() {
    let dir = scratch("skip");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    // f2 is f1 again, f3 moves the square, f4 is f3 with one value off by 1.
    let mut nudged = frame(2);
    nudged[0] ^= 1;
    for (name, rgb) in [("f1.png", frame(0)), ("f2.png", frame(0)), ("f3.png", frame(2)), ("f4.png", nudged)] {
        write_png(&input.join(name), SIDE, SIDE, &rgb, "").unwrap();
    }
    let out = dir.join("out");
    let (ok, _, stderr) = frames(&input, &out, &["--seed", "1", "--batch", "2", "--skip-similar", "0.001"]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("f2.png: skipped, reuses f1.png's output"), "{stderr}");
    assert!(stderr.contains("f4.png: skipped, reuses f3.png's output"), "{stderr}");
    assert!(stderr.contains("4 frames (2 skipped"), "{stderr}");
    assert!(pixels(&out.join("f2.png")) == pixels(&out.join("f1.png")));
    assert!(pixels(&out.join("f4.png")) == pixels(&out.join("f3.png")));
    assert!(pixels(&out.join("f3.png")) != pixels(&out.join("f1.png")), "f3 ran");
    // Without the flag every frame runs.
    let all = dir.join("all");
    let (ok, _, stderr) = frames(&input, &all, &["--seed", "1"]);
    assert!(ok && !stderr.contains("reuses") && stderr.contains("(0 skipped"), "{stderr}");
}

#[test]
fn bad_input_fails_before_loading_and_names_the_problem() {
    let dir = scratch("bad");
    let input = sequence(&dir, &["f1.png", "f2.png"]);
    let fails = |input: &Path, output: &Path, extra: &[&str], needles: &[&str]| {
        let (ok, _, stderr) = frames(input, output, extra);
        assert!(!ok, "{extra:?} should fail: {stderr}");
        for n in needles {
            assert!(stderr.contains(n), "{extra:?}: lacks `{n}`: {stderr}");
        }
        assert!(!stderr.contains("panicked") && !stderr.contains("loading"), "{stderr}");
    };
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "x").unwrap();
    fails(&empty, &dir.join("o1"), &[], &["empty", "no .png frames"]);
    fails(&dir.join("missing"), &dir.join("o1"), &[], &["missing", "not a folder"]);
    fails(&input, &input, &[], &["--output is the --input folder"]);
    fails(&input, &dir.join("o1"), &["--batch", "0"], &["--batch"]);
    fails(&input, &dir.join("o1"), &["--skip-similar", "2"], &["--skip-similar"]);
    fails(&input, &dir.join("o1"), &["--steps", "0"], &["--steps"]);

    let odd = dir.join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    write_png(&odd.join("f1.png"), SIDE, SIDE, &frame(0), "").unwrap();
    write_png(&odd.join("f2.png"), 72, SIDE, &vec![7; 72 * SIDE * 3], "").unwrap();
    fails(&odd, &dir.join("o2"), &[], &["f2.png", "72x64", "f1.png", "64x64"]);
    std::fs::write(odd.join("f2.png"), "not a png").unwrap();
    fails(&odd, &dir.join("o2"), &[], &["f2.png", "not a PNG"]);
    write_png(&odd.join("f2.png"), 60, 60, &vec![7; 60 * 60 * 3], "").unwrap();
    std::fs::remove_file(odd.join("f1.png")).unwrap();
    fails(&odd, &dir.join("o2"), &[], &["f2.png", "60x60", "multiples of 8"]);

    let out = dir.join("o3");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("f2.png"), "an earlier result").unwrap();
    fails(&input, &out, &[], &["f2.png", "already exists", "--overwrite"]);
    assert_eq!(std::fs::read(out.join("f2.png")).unwrap(), b"an earlier result", "nothing was replaced");
    let (ok, _, stderr) = frames(&input, &out, &["--overwrite", "--seed", "0"]);
    assert!(ok, "{stderr}");
    assert_eq!(pixels(&out.join("f2.png")).len(), SIDE * SIDE * 3);
}

#[test]
fn help_explains_every_flag() {
    let (ok, stdout, _) = lcm(&["frames", "--help"]);
    assert!(ok);
    for flag in [
        "--model",
        "--input",
        "--output",
        "--strength",
        "--steps",
        "--prompt",
        "--seed",
        "--seed-per-frame",
        "--batch",
        "--skip-similar",
        "--overwrite",
        "--lora",
        "--vae",
        "--device",
        "Example",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}");
    }
}

/// `lcm bench --strength` (img2img frames per second) checks its value before building any model.
#[test]
fn bench_strength_is_checked_first() {
    for bad in ["0", "1.5", "NaN"] {
        let (ok, _, stderr) = lcm(&["bench", "--device", "cpu", "--strength", bad]);
        assert!(!ok && stderr.contains("--strength") && !stderr.contains("warm-up"), "{bad}: {stderr}");
    }
}
