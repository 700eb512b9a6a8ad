//! A recorded pipeline case (`records/<set>/cases.json`, written by tests/fixtures/generate_*.py) as a
//! load spec and a request: init image and mask, control images read and resized as the CLI does,
//! LoRAs, textual-inversion embeddings, the sampler diffusers ran (`scheduler` class, `scheduler_config`
//! overrides, `eta`) and the prompt syntax (`prompt_syntax`, generate_a1111.py's cases; absent: plain).
//! Shared by lcm-pipeline's CPU tests and the root crate's CUDA suites (tests/gpu_util/recorded.rs).

use std::path::Path;

use lcm_pipeline::output::{read_mask_gray8, read_png};
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions, Spacing};
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, LoraSpec, Request};
use serde_json::Value;

/// Case `name` of `<fixtures>/records/<set>/cases.json`.
pub fn case(fixtures: &Path, set: &str, name: &str) -> (LoadSpec, Request) {
    let text = std::fs::read_to_string(fixtures.join(format!("records/{set}/cases.json"))).expect("cases.json");
    let all: Value = serde_json::from_str(&text).expect("JSON");
    let c = all.as_array().expect("a list").iter().find(|c| c["name"] == name).expect("case recorded");
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
    let path = |v: &Value| fixtures.join(v.as_str().expect("a path"));
    let (width, height) = (num("width") as usize, num("height") as usize);
    let controls = c["controlnets"].as_array().map_or(&[][..], |v| v.as_slice()).iter().map(|u| {
        let (w, h, rgb, _) = read_png(&path(&u["image"])).expect("control image");
        ControlUnit {
            model: path(&u["path"]),
            image: ControlUnit::image_at(w, h, &rgb, width, height).expect("control image"),
            scale: u["scale"].as_f64().expect("scale") as f32,
            start: u["start"].as_f64().expect("start"),
            end: u["end"].as_f64().expect("end"),
        }
    });
    let init_image = c.get("image").filter(|v| v.is_string()).map(|p| {
        let (w, h, rgb, _) = read_png(&path(p)).expect("init image");
        let init = InitImage::from_rgb8(w, h, &rgb, num("strength") as f32).expect("init image");
        match c.get("mask").filter(|v| v.is_string()) {
            Some(m) => {
                let (mw, mh, gray, _) = read_mask_gray8(&path(m)).expect("mask");
                init.with_mask_gray8(mw, mh, &gray).expect("mask")
            }
            None => init,
        }
    });
    let loras = c["loras"]
        .as_array()
        .map_or(&[][..], |v| v.as_slice())
        .iter()
        .map(|l| LoraSpec { path: path(&l[0]), scale: l[1].as_f64().expect("scale") as f32 });
    // Textual-inversion embeddings: `[[file, token or null], …]`.
    let embeddings = c["embeddings"]
        .as_array()
        .map_or(&[][..], |v| v.as_slice())
        .iter()
        .map(|e| (path(&e[0]), e[1].as_str().map(str::to_string)));
    let spec = LoadSpec {
        model_dir: path(&c["model"]),
        embeddings: embeddings.collect(),
        config_dir: c["config"].as_str().map(|s| fixtures.join(s)),
        clip_skip: c["clip_skip"].as_u64().unwrap_or(0) as usize,
        loras: loras.collect(),
        ..LoadSpec::default()
    };
    let req = Request {
        prompt: c["prompt"].as_str().expect("prompt").to_string(),
        negative_prompt: c["negative_prompt"].as_str().map(str::to_string),
        steps: num("steps") as usize,
        guidance_scale: num("guidance_scale") as f32,
        seed: num("seed") as u64,
        width,
        height,
        num_images: num("num_images") as usize,
        init_image,
        controls: controls.collect(),
        sampler: sampler(c),
        prompt_syntax: c["prompt_syntax"]
            .as_str()
            .map_or(PromptSyntax::Plain, |s| PromptSyntax::parse(s).expect("a syntax")),
    };
    (spec, req)
}

/// The sampler of a case: its `scheduler` class (absent: LCM, the older records' only one), the
/// `timestep_spacing` it overrides, its `eta` (for the samplers that take one).
fn sampler(c: &Value) -> Option<SamplerOptions> {
    let class = c["scheduler"].as_str()?;
    let kind = SamplerKind::from_class_name(class).unwrap_or_else(|| panic!("sampler {class}"));
    let spacing = c["scheduler_config"]["timestep_spacing"].as_str();
    Some(SamplerOptions {
        kind,
        eta: c["eta"].as_f64().filter(|_| kind.takes_eta()).map(|e| e as f32),
        timestep_spacing: spacing.map(|s| Spacing::parse(s).expect("a spacing")),
    })
}
