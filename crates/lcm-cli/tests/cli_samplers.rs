//! `lcm generate --scheduler …` on the tiny fixtures (CPU): the flags reproduce diffusers' recorded PNGs
//! for SD-Turbo (the folder's own Euler, `auto`, 1 step, guidance 0), TCD with a LoRA and eta, and
//! SDXL-Lightning's Euler with trailing timesteps; the PNG names the sampler; bad sampler flags fail
//! naming the flag and what it accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcm_pipeline::output::read_png;
use serde_json::Value;

fn fx(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel).display().to_string()
}

fn lcm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm")).args(args).output().expect("run lcm");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcm-samplers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A recorded case's entry in `records/<set>/cases.json` and its 8-bit image.
fn recorded(set: &str, name: &str) -> (Value, Vec<u8>) {
    let text = std::fs::read_to_string(fx(&format!("records/{set}/cases.json"))).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let case = all.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
    let f = lcm_core::SafeTensorsFile::open(fx(&format!("records/{set}/{name}.safetensors"))).unwrap();
    (case, f.get("image_u8").unwrap().to_f32().iter().map(|&v| v as u8).collect())
}

#[test]
fn sampler_flags_reproduce_diffusers_pngs() {
    let dir = scratch("parity");
    let lora = fx("loras/lora_peft.safetensors");
    let cases: [(&str, &str, Vec<&str>); 3] = [
        ("sd2", "turbo_euler_1step", vec!["--scheduler", "auto"]),
        ("samplers", "tcd_sd_lora_4step", vec!["--scheduler", "tcd", "--eta", "0.3", "--lora", &lora]),
        ("samplers", "euler_xl_trailing_4step", vec!["--scheduler", "euler", "--timestep-spacing", "trailing"]),
    ];
    for (set, name, flags) in cases {
        let (c, want) = recorded(set, name);
        let num = |k: &str| c[k].as_f64().unwrap().to_string();
        let (model, out) = (fx(c["model"].as_str().unwrap()), dir.join(format!("{name}.png")).display().to_string());
        let (steps, guidance, seed, w, h) =
            (num("steps"), num("guidance_scale"), num("seed"), num("width"), num("height"));
        let base = ["generate", "--device", "cpu", "--output", &out, "--model", &model, "--steps", &steps];
        let more = ["--guidance-scale", &guidance, "--seed", &seed, "--width", &w, "--height", &h];
        let prompt = ["--prompt", c["prompt"].as_str().unwrap()];
        let (ok, _, stderr) = lcm(&[&base[..], &more, &prompt, &flags].concat());
        assert!(ok, "{name}: {stderr}");
        let (_, _, got, params) = read_png(Path::new(&out)).unwrap();
        let params = params.unwrap_or_default();
        let d = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(d <= 1, "{name} through the CLI: max 8-bit difference {d}");
        let sampler = match name {
            "turbo_euler_1step" | "euler_xl_trailing_4step" => "sampler: Euler",
            _ => "sampler: TCD, eta: 0.3",
        };
        assert!(params.contains(sampler), "{name}: the PNG's parameters lack `{sampler}`: {params}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_sampler_flags_fail_naming_the_flag() {
    let dir = scratch("bad");
    let out = dir.join("x.png").display().to_string();
    let base = ["generate", "--device", "cpu", "--output", &out, "--prompt", "x", "--steps", "1"];
    let (tiny, turbo) = (fx("tiny-sd"), fx("sd2/tiny-sd-turbo"));
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--model", &tiny, "--scheduler", "dpm++"], vec!["--scheduler", "dpm++", "euler-a", "auto"]),
        (vec!["--model", &tiny, "--scheduler", "tcd", "--eta", "1.5"], vec!["--eta", "1.5", "[0, 1]"]),
        (vec!["--model", &tiny, "--scheduler", "euler", "--eta", "0.3"], vec!["--eta", "takes no eta"]),
        (vec!["--model", &tiny, "--timestep-spacing", "trailing"], vec!["--timestep-spacing", "lcm"]),
        (vec!["--model", &tiny, "--timestep-spacing", "even"], vec!["--timestep-spacing", "leading, trailing"]),
        (vec!["--model", &tiny, "--scheduler", "auto"], vec!["--scheduler", "PNDMScheduler"]),
        (vec!["--model", &turbo, "--prediction-type", "v_prediction"], vec!["--prediction-type", "epsilon"]),
    ];
    for (extra, want) in cases {
        let (ok, _, stderr) = lcm(&[&base[..], &extra].concat());
        assert!(!ok, "{extra:?} succeeded");
        for w in want {
            assert!(stderr.contains(w), "{extra:?}: expected `{w}` in: {stderr}");
        }
        assert!(!stderr.contains("panicked"), "{extra:?} panicked: {stderr}");
    }
    // Euler takes up to the loop's 64 steps (one graph), LCM its 50-step grid.
    for (sampler, steps, want) in [("euler", "65", "1..=64"), ("lcm", "51", "1..=50")] {
        let args = ["generate", "--device", "cpu", "--output", &out, "--prompt", "x", "--model", &tiny];
        let (ok, _, stderr) = lcm(&[&args[..], &["--scheduler", sampler, "--steps", steps]].concat());
        assert!(!ok && stderr.contains("--steps") && stderr.contains(want), "{sampler} {steps}: {stderr}");
    }
    let (ok, stdout, _) = lcm(&["generate", "--help"]);
    for flag in ["--scheduler", "--eta", "--timestep-spacing", "--prediction-type"] {
        assert!(ok && stdout.contains(flag), "generate --help lacks {flag}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
