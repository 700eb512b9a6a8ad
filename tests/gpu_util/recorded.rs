//! Recorded pipeline cases (`records/<set>/cases.json`, written by tests/fixtures/generate_*.py) as a
//! load spec and a request, and their run on the CUDA backend against the CPU: what the ControlNet
//! and inpainting suites share.

use std::path::{Path, PathBuf};

use lcm::cuda::CudaBackend;
use lcm_core::rel_l2;
use lcm_cpu::CpuBackend;
use lcm_pipeline::output::{read_mask_gray8, read_png};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, LoraSpec, Request};
use serde_json::Value;

use super::{fail_case, TOL};

/// `$LCM_FIXTURES`, else `tests/fixtures` under the working directory (cargo runs tests from the
/// package root; the device scripts export the variable).
pub fn fixtures() -> PathBuf {
    std::env::var_os("LCM_FIXTURES").map_or_else(|| Path::new("tests/fixtures").to_path_buf(), PathBuf::from)
}

/// Case `name` of `records/<set>/cases.json`: its load spec and request (init image and mask, control
/// images read and resized as the CLI does).
pub fn case(set: &str, name: &str) -> (LoadSpec, Request) {
    let text = std::fs::read_to_string(fixtures().join(format!("records/{set}/cases.json"))).expect("cases.json");
    let all: Value = serde_json::from_str(&text).expect("JSON");
    let c = all.as_array().expect("a list").iter().find(|c| c["name"] == name).expect("case recorded");
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
    let path = |v: &Value| fixtures().join(v.as_str().expect("a path"));
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
    let spec = LoadSpec {
        model_dir: path(&c["model"]),
        config_dir: c["config"].as_str().map(|s| fixtures().join(s)),
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
    };
    (spec, req)
}

/// Each case of `records/<set>` in `names` on the CUDA backend and on the CPU: latents within
/// [`TOL`], the image's mean absolute difference under 2/255. The first case takes `be`.
pub fn compare_with_cpu(be: CudaBackend, set: &str, names: &[&str]) {
    let mut gpu = Some(be);
    for &name in names {
        let (spec, req) = case(set, name);
        let be = gpu.take().unwrap_or_else(super::backend);
        let mut g = Pipeline::load(be, spec.clone()).unwrap_or_else(|e| panic!("{name}: load on CUDA: {e}"));
        let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: load on CPU: {e}"));
        let go = g.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: CUDA: {e}"));
        let co = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: CPU: {e}"));
        let lat = rel_l2(&go.latents.data, &co.latents.data);
        let mad = go.images.data.iter().zip(&co.images.data).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
            / go.images.numel() as f64;
        println!("{set} {name}: latents CUDA vs CPU rel L2 {lat:.2e}, image MAD {:.3}/255", mad * 255.0);
        if lat.is_nan() || lat >= TOL {
            fail_case(format!("{set} {name}: latents rel L2 {lat:.3e} (limit {TOL:.0e})"));
        }
        if mad.is_nan() || mad >= 2.0 / 255.0 {
            fail_case(format!("{set} {name}: image MAD {:.3}/255 (limit 2/255)", mad * 255.0));
        }
    }
}
