//! Inpainting against diffusers: every case recorded by tests/fixtures/generate_inpaint.py
//! (StableDiffusionInpaintPipeline and StableDiffusionXLInpaintPipeline with LCMScheduler on the tiny
//! pipelines: 9-channel inpainting UNets with a LoRA, CFG with two images at a non-square size, strength
//! below 1; ordinary 4-channel UNets whose kept region is blended back each step, the LCM UNet's
//! w-embedding; a soft mask binarised, a mask from an alpha channel, a single-file inpainting checkpoint,
//! SDXL of both kinds) must give the same denoised latents (relative L2 < 1e-3) and image (mean absolute
//! difference < 1/255).

mod common;

use common::{against_record, case_loras, fixtures};

use std::collections::HashMap;

use lcm_cpu::CpuBackend;
use lcm_pipeline::output::{read_mask_gray8, read_png};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, Request};
use serde_json::Value;

/// The case's request: its init image with the mask read as the CLI reads `--mask`.
fn request(c: &Value) -> lcm_core::Result<Request> {
    let (width, height) = (c["width"].as_u64().unwrap() as usize, c["height"].as_u64().unwrap() as usize);
    let (w, h, rgb, _) = read_png(&fixtures().join(c["image"].as_str().unwrap()))?;
    let (mw, mh, gray, from_alpha) = read_mask_gray8(&fixtures().join(c["mask"].as_str().unwrap()))?;
    assert_eq!(from_alpha, c["mask_from_alpha"].as_bool().unwrap_or(false), "mask_from_alpha");
    let init =
        InitImage::from_rgb8(w, h, &rgb, c["strength"].as_f64().unwrap() as f32)?.with_mask_gray8(mw, mh, &gray)?;
    Ok(Request {
        prompt: c["prompt"].as_str().unwrap().to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        steps: c["steps"].as_u64().unwrap() as usize,
        guidance_scale: c["guidance_scale"].as_f64().unwrap() as f32,
        seed: c["seed"].as_u64().unwrap(),
        width,
        height,
        num_images: c["num_images"].as_u64().unwrap() as usize,
        init_image: Some(init),
        controls: Vec::new(),
        ..Request::default()
    })
}

#[test]
fn every_recorded_inpainting_case_matches_diffusers() {
    let text = std::fs::read_to_string(fixtures().join("records/inpaint/cases.json")).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(all.len() >= 10, "expected the full case list, found {}", all.len());
    let mut pipes: HashMap<String, Pipeline<CpuBackend>> = HashMap::new();
    let mut failures = Vec::new();
    for c in &all {
        let name = c["name"].as_str().unwrap();
        let loras = case_loras(c);
        let model = c["model"].as_str().unwrap();
        let config = c["config"].as_str().map(|p| fixtures().join(p));
        let pipe = pipes.entry(format!("{model}|{loras:?}|{config:?}")).or_insert_with(|| {
            let spec = LoadSpec {
                model_dir: fixtures().join(model),
                loras: loras.clone(),
                config_dir: config.clone(),
                ..LoadSpec::default()
            };
            Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: {e}"))
        });
        match request(c).and_then(|req| pipe.generate(&req, &mut |_| {})) {
            Ok(out) => failures.extend(against_record("inpaint", name, &out)),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}
