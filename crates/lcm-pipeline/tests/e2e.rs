//! The whole pipeline against diffusers: for every case recorded by tests/fixtures/generate_pipeline.py
//! (StableDiffusionPipeline + LCMScheduler, LatentConsistencyModelPipeline, their img2img variants, CFG,
//! LoRAs in each format, non-square sizes, several images), the same prompt and seed must give the same denoised latents
//! (relative L2 < 1e-3) and the same image (mean absolute difference < 1/255). The same for
//! tests/fixtures/generate_taesd.py's cases: the tiny LCM pipeline with TAESD as its VAE.

mod common;

use common::fixtures;

use std::collections::HashMap;
use std::path::PathBuf;

use lcm_core::{rel_l2, SafeTensorsFile};
use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, LoraSpec, Request};
use serde_json::Value;

/// Tensor `name` of case `case` in the records folder `dir` (under tests/fixtures/records/).
fn recorded(dir: &str, case: &str, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let p = fixtures().join(format!("records/{dir}/{case}.safetensors"));
    let f = SafeTensorsFile::open(&p).unwrap();
    let v = f.get(name).ok()?;
    Some((v.shape.to_vec(), v.to_f32()))
}

struct Case {
    name: String,
    model: String,
    loras: Vec<LoraSpec>,
    /// A VAE folder given apart from the model (`vae` in cases.json, a fixture path).
    vae: Option<PathBuf>,
    req: Request,
}

fn cases(dir: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join(format!("records/{dir}/cases.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            model: c["model"].as_str().unwrap().to_string(),
            loras: c["loras"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| LoraSpec {
                    path: fixtures().join(l[0].as_str().unwrap()),
                    scale: l[1].as_f64().unwrap() as f32,
                })
                .collect(),
            vae: c.get("vae").map(|v| fixtures().join(v.as_str().unwrap())),
            req: Request {
                prompt: c["prompt"].as_str().unwrap().to_string(),
                negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
                steps: c["steps"].as_u64().unwrap() as usize,
                guidance_scale: c["guidance_scale"].as_f64().unwrap() as f32,
                seed: c["seed"].as_u64().unwrap(),
                width: c["width"].as_u64().unwrap() as usize,
                height: c["height"].as_u64().unwrap() as usize,
                num_images: c["num_images"].as_u64().unwrap() as usize,
                sampler: None,
                prompt_syntax: Default::default(),
                controls: Vec::new(),
                init_image: c.get("image").map(|img| {
                    let (w, h, rgb, _) = read_png(&fixtures().join(img.as_str().unwrap())).unwrap();
                    InitImage::from_rgb8(w, h, &rgb, c["strength"].as_f64().unwrap() as f32).unwrap()
                }),
            },
        })
        .collect()
}

#[test]
fn every_recorded_case_matches_diffusers() {
    run_cases("pipeline", 19);
}

/// TAESD as the VAE (`--vae DIR`): txt2img, and img2img, where the encoder gives latents and only the
/// noise is drawn from the generator.
#[test]
fn taesd_cases_match_diffusers() {
    run_cases("taesd", 2);
}

/// Runs every case of records/`dir`/cases.json (at least `min` of them) against its record.
fn run_cases(dir: &str, min: usize) {
    let all = cases(dir);
    assert!(all.len() >= min, "expected the full case list, found {}", all.len());
    let mut pipes: HashMap<String, Pipeline<CpuBackend>> = HashMap::new();
    let mut failures = Vec::new();
    for case in &all {
        let key = format!("{}|{:?}|{:?}", case.model, case.loras, case.vae);
        let pipe = pipes.entry(key).or_insert_with(|| {
            let spec = LoadSpec {
                model_dir: fixtures().join(&case.model),
                loras: case.loras.clone(),
                vae: case.vae.clone(),
                ..LoadSpec::default()
            };
            Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{}: {e}", case.name))
        });
        let out = pipe.generate(&case.req, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", case.name));

        let (lshape, latents) = recorded(dir, &case.name, "latents").expect("latents recorded");
        assert_eq!(out.latents.shape, lshape, "{}: latent shape", case.name);
        let lat_err = rel_l2(&out.latents.data, &latents);

        let (ushape, u8s) = recorded(dir, &case.name, "image_u8").expect("image_u8 recorded");
        assert_eq!(out.images.shape, ushape, "{}: image shape", case.name);
        let ours: Vec<u8> = (0..case.req.num_images).flat_map(|i| out.rgb8(i)).collect();
        // The float image where recorded (one-image cases), else the 8-bit one.
        let mad = match recorded(dir, &case.name, "image") {
            Some((_, image)) => out.images.data.iter().zip(&image).map(|(a, b)| (a - b).abs() as f64).sum::<f64>(),
            None => ours.iter().zip(&u8s).map(|(&a, &b)| (a as f64 - b as f64).abs() / 255.0).sum::<f64>(),
        } / u8s.len() as f64;
        let same = ours.iter().zip(&u8s).filter(|(a, b)| **a as f32 == **b).count() as f64 / u8s.len() as f64;
        println!(
            "{:<22} latents rel L2 {lat_err:.2e}  image MAD {:.2e}  identical 8-bit pixels {:.2}%",
            case.name,
            mad,
            100.0 * same
        );
        if !(lat_err < 1e-3 && mad < 1.0 / 255.0) {
            failures.push(format!("{}: latents rel L2 {lat_err:.2e}, image MAD {mad:.2e}", case.name));
        }
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}
