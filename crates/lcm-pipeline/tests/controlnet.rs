//! ControlNet against diffusers: every case recorded by tests/fixtures/generate_controlnet.py
//! (StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline and
//! StableDiffusionControlNetImg2ImgPipeline with LCMScheduler on the tiny pipelines: SD1.5 + LoRA, two
//! ControlNets with CFG and guidance windows, a full LCM UNet, two images at a non-square size, a control
//! image resized to the output, a single-file ControlNet, SDXL with and without CFG, img2img) must give
//! the same denoised latents (relative L2 < 1e-3) and image (mean absolute difference < 1/255).

mod common;

use common::{against_record, case_loras, fixtures};

use std::collections::HashMap;

use lcm_cpu::CpuBackend;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, Request};
use serde_json::Value;

/// The case's request, its control images read and resized as the CLI does.
fn request(c: &Value) -> lcm_core::Result<Request> {
    let (width, height) = (c["width"].as_u64().unwrap() as usize, c["height"].as_u64().unwrap() as usize);
    let controls = c["controlnets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let (w, h, rgb, _) = read_png(&fixtures().join(u["image"].as_str().unwrap())).unwrap();
            Ok(ControlUnit {
                model: fixtures().join(u["path"].as_str().unwrap()),
                image: ControlUnit::image_at(w, h, &rgb, width, height)?,
                scale: u["scale"].as_f64().unwrap() as f32,
                start: u["start"].as_f64().unwrap(),
                end: u["end"].as_f64().unwrap(),
            })
        })
        .collect::<lcm_core::Result<_>>()?;
    Ok(Request {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: c["guidance_scale"].as_f64().unwrap() as f32,
        seed: c["seed"].as_u64().unwrap(),
        width,
        height,
        num_images: c["num_images"].as_u64().unwrap() as usize,
        init_image: c.get("image").map(|img| {
            let (w, h, rgb, _) = read_png(&fixtures().join(img.as_str().unwrap())).unwrap();
            InitImage::from_rgb8(w, h, &rgb, c["strength"].as_f64().unwrap() as f32).unwrap()
        }),
        controls,
        sampler: None,
        prompt_syntax: Default::default(),
    })
}

#[test]
fn every_recorded_controlnet_case_matches_diffusers() {
    let text = std::fs::read_to_string(fixtures().join("records/controlnet/cases.json")).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(all.len() >= 9, "expected the full case list, found {}", all.len());
    let mut pipes: HashMap<String, Pipeline<CpuBackend>> = HashMap::new();
    let mut failures = Vec::new();
    for c in &all {
        let name = c["name"].as_str().unwrap();
        let loras = case_loras(c);
        let model = c["model"].as_str().unwrap();
        let pipe = pipes.entry(format!("{model}|{loras:?}")).or_insert_with(|| {
            let spec = LoadSpec { model_dir: fixtures().join(model), loras: loras.clone(), ..LoadSpec::default() };
            Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: {e}"))
        });
        match request(c).and_then(|req| pipe.generate(&req, &mut |_| {})) {
            Ok(out) => failures.extend(against_record("controlnet", name, &out)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}
