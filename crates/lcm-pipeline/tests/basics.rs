//! The RNG, the LCM scheduler and the CLIP tokenizer against what torch, diffusers and transformers
//! computed (records written by tests/fixtures/generate_basics.py).

mod common;

use common::fixtures;

use std::path::PathBuf;

use lcm_core::SafeTensorsFile;
use lcm_pipeline::rng::TorchRng;
use lcm_pipeline::scheduler::{guidance_embedding, LcmScheduler};
use lcm_pipeline::tokenizer::{ClipTokenizer, CLIP_MAX_LEN};
use serde_json::Value;

fn records() -> PathBuf {
    fixtures().join("records")
}

fn read_json(name: &str) -> Value {
    let path = records().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn open_record(name: &str) -> SafeTensorsFile {
    SafeTensorsFile::open(records().join(name)).unwrap()
}

fn tensor(file: &SafeTensorsFile, name: &str) -> Vec<f32> {
    file.get(name).unwrap_or_else(|e| panic!("{name}: {e}")).to_f32()
}

/// A scratch folder under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("lcm-basics-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Largest |a − b| / max(|b|, floor) over the pair; NaN anywhere counts as infinitely far.
fn max_rel_diff(got: &[f32], want: &[f32], floor: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "length");
    got.iter()
        .zip(want)
        .map(|(&a, &b)| if a.is_nan() || b.is_nan() { f32::INFINITY } else { (a - b).abs() / b.abs().max(floor) })
        .fold(0.0, f32::max)
}

#[test]
fn rng_draws_match_torch_bit_for_bit() {
    let file = open_record("rng.safetensors");
    let mut seeds: Vec<u64> =
        file.names().filter_map(|n| n.strip_prefix("seed")?.split('/').next()?.parse().ok()).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert!(seeds.len() >= 4 && seeds.contains(&((1u64 << 32) + 5)), "{seeds:?}");

    let (mut values, mut differing, mut worst) = (0usize, 0usize, 0f32);
    for &seed in &seeds {
        let mut rng = TorchRng::new(seed);
        let mut draw = 0;
        while file.contains(&format!("seed{seed}/draw{draw}")) {
            let want = tensor(&file, &format!("seed{seed}/draw{draw}"));
            let got = rng.randn(want.len());
            values += want.len();
            differing += got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            worst = worst.max(max_rel_diff(&got, &want, 1.0));
            draw += 1;
        }
        assert!(draw >= 10, "seed {seed}: only {draw} draws recorded");
    }
    // Bit-exact on the x86 build of torch the records come from; report the deviation either way.
    eprintln!("rng: {values} values, {differing} differ from torch, max |diff|/max(1,|x|) = {worst:e}");
    assert!(worst <= 1e-6, "max deviation {worst:e}");
    assert_eq!(differing, 0, "{differing} of {values} draws are not bit-identical to torch");
}

/// An LCMScheduler from one of the record's configs (plus overrides), read back from a JSON file
/// as a checkpoint's `scheduler_config.json` would be.
fn scheduler_from_record(configs: &Value, key: &str, overrides: Option<&Value>, scratch: &Scratch) -> LcmScheduler {
    let mut config = configs[key].clone();
    if let Some(Value::Object(extra)) = overrides {
        for (k, v) in extra {
            config[k] = v.clone();
        }
    }
    let path = scratch.0.join(format!("{key}.json"));
    std::fs::write(&path, config.to_string()).unwrap();
    LcmScheduler::from_config_json(&path).unwrap_or_else(|e| panic!("{key}: {e}"))
}

fn as_i64s(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

#[test]
fn scheduler_alphas_cumprod_match_diffusers_exactly() {
    let rec = read_json("scheduler.json");
    let file = open_record("scheduler.safetensors");
    let scratch = Scratch::new("alphas");
    let configs = rec["configs"].as_object().unwrap();
    assert!(configs.contains_key("sd15_pndm") && configs.contains_key("lcm"));
    for key in configs.keys() {
        let s = scheduler_from_record(&rec["configs"], key, None, &scratch);
        let want = tensor(&file, &format!("alphas_cumprod/{key}"));
        assert_eq!(s.alphas_cumprod(), want.as_slice(), "{key}: alphas_cumprod");
        let final_alpha = rec["final_alpha_cumprod"][key].as_f64().unwrap() as f32;
        assert_eq!(s.final_alpha_cumprod(), final_alpha, "{key}: final_alpha_cumprod");
    }
}

#[test]
fn scheduler_timesteps_match_diffusers() {
    let rec = read_json("scheduler.json");
    let scratch = Scratch::new("timesteps");
    let fresh = || scheduler_from_record(&rec["configs"], "lcm", None, &scratch);
    for case in rec["schedules"].as_array().unwrap() {
        let mut s = fresh();
        if let Some(original) = case["original_steps"].as_u64() {
            s.set_original_inference_steps(original as usize);
        }
        let (n, strength) = (case["steps"].as_u64().unwrap() as usize, case["strength"].as_f64().unwrap());
        let got = s.set_timesteps(n, strength).unwrap_or_else(|e| panic!("{case}: {e}")).to_vec();
        assert_eq!(got, as_i64s(&case["timesteps"]), "{case}");
    }
    for case in rec["custom_schedules"].as_array().unwrap() {
        let mut s = fresh();
        let got = s.set_custom_timesteps(&as_i64s(&case["timesteps_in"]), case["strength"].as_f64().unwrap());
        assert_eq!(got.unwrap(), as_i64s(&case["timesteps"]).as_slice(), "{case}");
    }
    for case in rec["bad_schedules"].as_array().unwrap() {
        let mut s = fresh();
        if let Some(original) = case["original_steps"].as_u64() {
            s.set_original_inference_steps(original as usize);
        }
        let got = s.set_timesteps(case["steps"].as_u64().unwrap() as usize, case["strength"].as_f64().unwrap());
        assert!(got.is_err(), "{case}: diffusers raises, got {got:?}");
    }
}

#[test]
fn scheduler_scalings_and_add_noise_match_diffusers() {
    let rec = read_json("scheduler.json");
    let file = open_record("scheduler.safetensors");
    let scratch = Scratch::new("scalings");
    let s = scheduler_from_record(&rec["configs"], "lcm", None, &scratch);
    let ts = as_i64s(&rec["scalings_t"]);
    let (c_skip, c_out): (Vec<f32>, Vec<f32>) = ts.iter().map(|&t| s.scalings(t)).unzip();
    assert_eq!(c_skip, tensor(&file, "scalings/c_skip"), "c_skip at {ts:?}");
    assert_eq!(c_out, tensor(&file, "scalings/c_out"), "c_out at {ts:?}");

    let mut x = tensor(&file, "add_noise/x0");
    s.add_noise(&mut x, &tensor(&file, "add_noise/noise"), 499).unwrap();
    assert_eq!(x, tensor(&file, "add_noise/t499"));
}

#[test]
fn scheduler_steps_match_diffusers() {
    let rec = read_json("scheduler.json");
    let file = open_record("scheduler.safetensors");
    let scratch = Scratch::new("steps");
    let cases = rec["step_cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let mut not_bit_exact = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut s = scheduler_from_record(
            &rec["configs"],
            case["config"].as_str().unwrap(),
            Some(&case["overrides"]),
            &scratch,
        );
        let timesteps = s.set_timesteps(4, 1.0).unwrap().to_vec();
        assert_eq!(timesteps, as_i64s(&case["timesteps"]), "{name}");
        // The step noise comes from the generator diffusers' step drew it from.
        let mut rng = TorchRng::new(case["noise_seed"].as_u64().unwrap());
        let mut sample = tensor(&file, &format!("step/{name}/sample0"));
        let mut denoised = vec![0.0; sample.len()];
        for i in 0..timesteps.len() {
            let model_output = tensor(&file, &format!("step/{name}/model_output{i}"));
            let noise = s.noise_needed(i).then(|| rng.randn(sample.len()));
            let noise_name = format!("step/{name}/noise{i}");
            assert_eq!(noise.is_some(), file.contains(&noise_name), "{name} step {i}: noise drawn?");
            if let Some(z) = &noise {
                assert_eq!(z, &tensor(&file, &noise_name), "{name} step {i}: noise");
            }
            s.step_into(i, &model_output, &mut sample, &mut denoised, noise.as_deref()).unwrap();
            let want_denoised = tensor(&file, &format!("step/{name}/denoised{i}"));
            let want_prev = tensor(&file, &format!("step/{name}/prev{i}"));
            let d_err = max_rel_diff(&denoised, &want_denoised, 1e-3);
            let p_err = max_rel_diff(&sample, &want_prev, 1e-3);
            assert!(d_err < 1e-6 && p_err < 1e-6, "{name} step {i}: rel diff denoised {d_err:e}, prev {p_err:e}");
            let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            not_bit_exact += bits(&denoised, &want_denoised) + bits(&sample, &want_prev);
        }
    }
    // diffusers' op order in f32 makes the steps reproducible to the bit; the tolerance above is
    // the contract.
    eprintln!("scheduler steps: {not_bit_exact} values not bit-identical to diffusers");
}

#[test]
fn guidance_embedding_matches_diffusers() {
    let rec = read_json("scheduler.json");
    let file = open_record("scheduler.safetensors");
    let w: Vec<f32> = rec["guidance_w"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    for dim in rec["guidance_dims"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize) {
        let got = guidance_embedding(&w, dim);
        let want = tensor(&file, &format!("guidance/dim{dim}"));
        // torch's vectorised f32 exp can be an ulp off the correctly rounded frequency, and the
        // argument 1000·w·f carries that ulp times 1000·w into sin/cos: allow two such ulps.
        let mut worst = 0f32;
        for (row, (g, t)) in got.chunks(dim).zip(want.chunks(dim)).enumerate() {
            let tol = 1e-6 + 1000.0 * w[row].abs() * 2f32.powi(-23);
            for (j, (&a, &b)) in g.iter().zip(t).enumerate() {
                assert!((a - b).abs() <= tol, "dim {dim}, w {}, element {j}: {a} vs {b}", w[row]);
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("guidance dim {dim}: max abs diff {worst:e}");
    }
}

fn check_tokenizer(tok: &ClipTokenizer, cases: &[Value], source: &str) {
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let unpadded: Vec<u32> =
            case["unpadded"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(want.len(), CLIP_MAX_LEN);
        assert_eq!(tok.encode_unpadded(prompt).unwrap(), unpadded, "{source}: unpadded ids of {prompt:?}");
        assert_eq!(tok.encode(prompt).unwrap().to_vec(), want, "{source}: ids of {prompt:?}");
    }
}

#[test]
fn tokenizer_matches_transformers() {
    let rec = read_json("tokenizer_prompts.json");
    let cases = rec["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let dir = fixtures().join(rec["tokenizer"].as_str().unwrap());
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (49406, 49407, 49407));
    check_tokenizer(&tok, cases, "vocab.json + merges.txt");

    // The same pipeline saved as a tokenizer.json (the layout recent transformers writes) loads
    // back through the other path and gives the same ids.
    let scratch = Scratch::new("tokenizer-json");
    tok.inner().save(scratch.0.join("tokenizer.json"), false).unwrap();
    let from_json = ClipTokenizer::from_dir(&scratch.0).unwrap();
    check_tokenizer(&from_json, cases, "tokenizer.json");
}

#[test]
fn an_init_image_of_the_wrong_size_is_an_error_not_a_panic() {
    use lcm_pipeline::spec::InitImage;
    let err = InitImage::from_rgb8(4, 4, &[0u8; 3 * 15], 0.5).unwrap_err();
    assert!(err.to_string().contains("4x4") && err.to_string().contains("45 bytes"), "{err}");
    assert!(InitImage::from_rgb8(4, 4, &[0u8; 48], 0.5).is_ok());
}
