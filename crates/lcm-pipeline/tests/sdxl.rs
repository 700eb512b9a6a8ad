//! SDXL against diffusers: every case recorded by tests/fixtures/generate_sdxl.py
//! (StableDiffusionXLPipeline + LCMScheduler on tiny SDXL-structured pipelines: two text encoders of
//! different widths, the pooled and time-id conditioning, CFG with a negative prompt and with zeros,
//! clip_skip, non-square sizes, two images, an LCM-SDXL UNet, an SSD-1B-style UNet, LoRAs as peft,
//! kohya with diffusers names and kohya with LDM names at 1 and 4 steps, and a single-file
//! checkpoint) must give the same denoised latents (relative L2 < 1e-3) and image (mean absolute
//! difference < 1/255).

mod common;

use common::fixtures;

use lcm_core::{rel_l2, SafeTensorsFile};
use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{LoadSpec, LoraSpec, Request};
use serde_json::Value;

fn recorded(case: &str, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
    let f = SafeTensorsFile::open(fixtures().join(format!("records/sdxl/{case}.safetensors"))).unwrap();
    let v = f.get(name).ok()?;
    Some((v.shape.to_vec(), v.to_f32()))
}

struct Case {
    name: String,
    spec: LoadSpec,
    req: Request,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("records/sdxl/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let path = |s: &Value| s.as_str().map(|s| fixtures().join(s));
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().unwrap().to_string(),
            spec: LoadSpec {
                model_dir: path(&c["model"]).unwrap(),
                config_dir: path(&c["config"]),
                clip_skip: c["clip_skip"].as_u64().unwrap_or(0) as usize,
                loras: c["loras"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| LoraSpec { path: path(&l[0]).unwrap(), scale: l[1].as_f64().unwrap() as f32 })
                    .collect(),
                ..LoadSpec::default()
            },
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
                init_image: None,
            },
        })
        .collect()
}

#[test]
fn every_recorded_sdxl_case_matches_diffusers() {
    let all = cases();
    assert!(all.len() >= 19, "expected the full case list, found {}", all.len());
    let mut loaded: Option<(String, Pipeline<CpuBackend>)> = None;
    let mut failures = Vec::new();
    for case in &all {
        let key = format!("{:?}", case.spec);
        if loaded.as_ref().is_none_or(|(k, _)| *k != key) {
            let p =
                Pipeline::load(CpuBackend::new(), case.spec.clone()).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            loaded = Some((key, p));
        }
        let pipe = &mut loaded.as_mut().unwrap().1;
        assert!(pipe.is_sdxl(), "{}: loaded as SDXL", case.name);
        let out = pipe.generate(&case.req, &mut |_| {}).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (lshape, latents) = recorded(&case.name, "latents").expect("latents recorded");
        assert_eq!(out.latents.shape, lshape, "{}: latent shape", case.name);
        let lat_err = rel_l2(&out.latents.data, &latents);
        let (ushape, u8s) = recorded(&case.name, "image_u8").expect("image_u8 recorded");
        assert_eq!(out.images.shape, ushape, "{}: image shape", case.name);
        let ours: Vec<u8> = (0..case.req.num_images).flat_map(|i| out.rgb8(i)).collect();
        let mad = match recorded(&case.name, "image") {
            Some((_, image)) => out.images.data.iter().zip(&image).map(|(a, b)| (a - b).abs() as f64).sum::<f64>(),
            None => ours.iter().zip(&u8s).map(|(&a, &b)| (a as f64 - b as f64).abs() / 255.0).sum::<f64>(),
        } / u8s.len() as f64;
        println!("{:<26} latents rel L2 {lat_err:.2e}  image MAD {mad:.2e}", case.name);
        if !(lat_err < 1e-3 && mad < 1.0 / 255.0) {
            failures.push(format!("{}: latents rel L2 {lat_err:.2e}, image MAD {mad:.2e}", case.name));
        }
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}
