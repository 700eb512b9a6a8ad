//! SD2.x against diffusers: the LCM cases recorded by tests/fixtures/generate_sd2.py
//! (StableDiffusionPipeline + `LCMScheduler.from_config` of SD2.1's DDIM config, so v-prediction, on a
//! tiny SD2-structured pipeline: linear projections, per-level head counts, a gelu text encoder whose
//! tokenizer pads with "!"): plain, CFG with a negative prompt, the LDM single file (OpenCLIP names, the
//! extra last layer) with the folder as its config, and LoRAs as peft, kohya and kohya with LDM names.
//! Same denoised latents (relative L2 < 1e-3) and 8-bit image (within 1/255 on average). The cases
//! recorded for other samplers (Euler, Euler ancestral, DDIM) run in tests/samplers.rs.

mod common;
#[path = "common/recorded_case.rs"]
mod recorded_case;

use common::{against_record, fixtures};

use lcm_core::lcm::Prediction;
use lcm_core::SafeTensorsFile;
use lcm_cpu::CpuBackend;
use lcm_pipeline::load;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::scheduler::{LcmConfig, SamplerKind, SamplerOptions, Scheduler};
use lcm_pipeline::spec::{LoadSpec, Request};
use lcm_pipeline::tokenizer::ClipTokenizer;
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("records/sd2/cases.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap().as_array().unwrap().clone()
}

#[test]
fn every_recorded_sd2_lcm_case_matches_diffusers() {
    let lcm: Vec<Value> = cases().into_iter().filter(|c| c["scheduler"] == "LCMScheduler").collect();
    assert!(lcm.len() >= 6, "expected the LCM cases (a)-(d), found {}", lcm.len());
    let mut failures = Vec::new();
    for c in &lcm {
        let name = c["name"].as_str().unwrap();
        let (spec, req) = recorded_case::case(&fixtures(), "sd2", name);
        let timesteps: Vec<f64> = c["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        let config = load::scheduler(&spec).unwrap();
        let mut scheduler = Scheduler::new(&config, &SamplerOptions::new(SamplerKind::Lcm)).unwrap();
        assert_eq!(scheduler.set_timesteps(req.steps, 1.0).unwrap(), timesteps, "{name}: timesteps");
        let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!pipe.is_sdxl(), "{name}: one text encoder");
        let out = pipe.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        failures.extend(against_record("sd2", name, &out));
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}

#[test]
fn the_sd2_tokenizer_pads_with_the_exclamation_mark() {
    // stable-diffusion-2-1's special_tokens_map.json says "!", its tokenizer_config.json
    // "<|endoftext|>": transformers takes the first, and so must lcm.
    let tok = ClipTokenizer::from_dir(fixtures().join("sd2/tiny-sd2/tokenizer")).unwrap();
    assert_eq!(tok.pad_id(), 0);
    let rec = SafeTensorsFile::open(fixtures().join("records/sd2/models.safetensors")).unwrap();
    let ids = rec.get("input_ids").unwrap().to_f32();
    let prompts = ["a photo of a cat", "A photograph of an astronaut riding a horse on Mars, highly detailed, 8k", ""];
    for (row, prompt) in ids.chunks(77).zip(prompts) {
        let ours: Vec<f32> = tok.encode(prompt).unwrap().iter().map(|&i| i as f32).collect();
        assert_eq!(ours, row, "{prompt:?}");
    }
}

#[test]
fn sd2_schedulers_carry_their_prediction_type() {
    let folder = |dir: &str| LoadSpec { model_dir: fixtures().join(dir), ..LoadSpec::default() };
    // SD2.1's DDIM config says v_prediction; SD-Turbo's Euler config epsilon.
    let v = load::scheduler(&folder("sd2/tiny-sd2")).unwrap();
    assert_eq!(v.prediction_type(), Some(Prediction::VPrediction));
    let eps = load::scheduler(&folder("sd2/tiny-sd-turbo")).unwrap();
    assert_eq!(eps.prediction_type(), Some(Prediction::Epsilon));
    // A bare SD2 single file says nothing: diffusers' from_single_file takes stable-diffusion-2-1's
    // config (v_prediction); an SD1.5 file stays epsilon.
    let bare = |file: &str| LoadSpec { model_dir: fixtures().join(file), config_dir: None, ..LoadSpec::default() };
    let sd2 = load::scheduler(&bare("sd2/tiny_sd2.safetensors")).unwrap();
    assert_eq!(sd2.prediction_type(), Some(Prediction::VPrediction));
    let lcm = LcmConfig::from_config(&sd2).unwrap();
    assert!(!lcm.set_alpha_to_one);
    let sd15 = load::scheduler(&bare("single-file/sd15_tiny.safetensors")).unwrap();
    assert_eq!(sd15.prediction_type(), None, "SD1.5's config leaves it to the sampler's default, epsilon");
    // The config folder's says otherwise when given (SD2-base is epsilon).
    let with_cfg =
        LoadSpec { config_dir: Some(fixtures().join("sd2/tiny-sd-turbo")), ..bare("sd2/tiny_sd2.safetensors") };
    assert_eq!(load::scheduler(&with_cfg).unwrap().prediction_type(), Some(Prediction::Epsilon));
    // The flag fills in what a bare file leaves unsaid, and is refused where the config says otherwise.
    let flagged = LoadSpec { prediction_type: Some(Prediction::Epsilon), ..bare("sd2/tiny_sd2.safetensors") };
    assert_eq!(load::scheduler(&flagged).unwrap().prediction_type(), Some(Prediction::Epsilon));
    let contrary = LoadSpec { prediction_type: Some(Prediction::VPrediction), ..folder("sd2/tiny-sd-turbo") };
    let err = load::scheduler(&contrary).unwrap_err().to_string();
    assert!(err.contains("prediction_type") && err.contains("v_prediction") && err.contains("epsilon"), "{err}");
}

#[test]
fn sd_turbo_loads_as_an_sd2_pipeline() {
    // The same weights as tiny-sd2 under SD-Turbo's configs (Euler scheduler config: LCM reads its
    // betas; upcast_attention false): one LCM step runs.
    let mut pipe = Pipeline::load(
        CpuBackend::new(),
        LoadSpec { model_dir: fixtures().join("sd2/tiny-sd-turbo"), ..LoadSpec::default() },
    )
    .unwrap();
    let out = pipe.generate(&Request { steps: 1, width: 64, height: 64, ..Request::default() }, &mut |_| {}).unwrap();
    assert!(out.latents.data.iter().all(|v| v.is_finite()));
}

#[test]
fn sd2_pipelines_for_other_tasks_are_refused_by_class() {
    let src = fixtures().join("sd2/tiny-sd2");
    let index: Value = serde_json::from_str(&std::fs::read_to_string(src.join("model_index.json")).unwrap()).unwrap();
    for (class, what) in [
        ("StableDiffusionUpscalePipeline", "x4 upscaler"),
        ("StableDiffusionDepth2ImgPipeline", "depth-to-image"),
        ("StableUnCLIPImg2ImgPipeline", "unCLIP"),
    ] {
        let dir = std::env::temp_dir().join(format!("lcm-sd2-{}-{class}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for comp in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
            std::os::unix::fs::symlink(src.join(comp).canonicalize().unwrap(), dir.join(comp)).unwrap();
        }
        let mut index = index.clone();
        index["_class_name"] = Value::from(class);
        std::fs::write(dir.join("model_index.json"), index.to_string()).unwrap();
        let err = Pipeline::load(CpuBackend::new(), LoadSpec { model_dir: dir.clone(), ..LoadSpec::default() })
            .err()
            .expect("refused")
            .to_string();
        for part in [class, what, "model_index.json", "not supported"] {
            assert!(err.contains(part), "`{err}` should mention `{part}`");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
