//! ControlNet on the CUDA backend against the CPU reference (tests/fixtures/generate_controlnet.py's
//! fixtures): one ControlNet call of each family (relative L2 < 1e-2 per residual, the diffusers record
//! printed beside), recorded pipeline cases where the ControlNets run inside the denoising graph
//! (latents < 1e-2, image mean absolute difference < 2/255), and a change of conditioning scale between
//! generations that neither re-records nor allocates (the scales are a run-time input of the graph).

mod gpu_util;

use std::path::{Path, PathBuf};

use gpu_util::{fail_case, run_gpu_tests, TOL};
use lcm::cuda::CudaBackend;
use lcm_core::{rel_l2, Backend, SafeTensorsFile, Tensor};
use lcm_cpu::CpuBackend;
use lcm_models::{AddedCond, ControlNet, Variant};
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, LoraSpec, Request};
use serde_json::Value;

/// `$LCM_FIXTURES`, else `tests/fixtures` (see gpu_pipeline.rs).
fn fixtures() -> PathBuf {
    std::env::var_os("LCM_FIXTURES").map_or_else(|| Path::new("tests/fixtures").to_path_buf(), PathBuf::from)
}

fn reduced() -> bool {
    std::env::var("LCM_GPU_TESTS_REDUCED").is_ok_and(|v| v != "0")
}

fn tensor(file: &SafeTensorsFile, name: &str) -> Tensor {
    let v = file.get(name).unwrap_or_else(|e| panic!("{e}"));
    Tensor::new(v.shape.to_vec(), v.to_f32())
}

/// The recorded call of `prefix` (`sd15`, `sdxl`) with the ControlNet at `folder` on `be`.
fn controlnet_call<B: Backend>(be: &B, folder: &str, prefix: &str) -> (Vec<Tensor>, Tensor) {
    let rec = SafeTensorsFile::open(fixtures().join("records/controlnet/models.safetensors")).expect("record");
    let t = |n: &str| tensor(&rec, &format!("{prefix}.{n}"));
    let mut net = ControlNet::load_folder(be, &fixtures().join(folder), Variant::PreferHalf).expect("load");
    // SDXL's ControlNet takes the pooled text embeds and time ids, as its UNet does.
    let sdxl = rec.get(&format!("{prefix}.text_embeds")).is_ok();
    let (text_embeds, time_ids) = if sdxl { (t("text_embeds"), t("time_ids")) } else { (t("scale"), t("scale")) };
    let added = sdxl.then_some(AddedCond { text_embeds: &text_embeds, time_ids: &time_ids });
    let scale = t("scale").data[0];
    net.forward(be, &t("sample"), &t("timestep").data, &t("context"), &t("cond"), scale, added).expect("forward")
}

fn controlnet_calls_match_cpu(be: CudaBackend) {
    let rec = SafeTensorsFile::open(fixtures().join("records/controlnet/models.safetensors")).expect("record");
    for (folder, prefix) in [("controlnet/cn-sd15-a", "sd15"), ("controlnet/cn-sdxl", "sdxl")] {
        let (gd, gm) = controlnet_call(&be, folder, prefix);
        let (cd, cm) = controlnet_call(&CpuBackend::new(), folder, prefix);
        for (i, (g, c)) in gd.iter().chain([&gm]).zip(cd.iter().chain([&cm])).enumerate() {
            let name = if i < gd.len() { format!("down.{i}") } else { "mid".into() };
            let torch = tensor(&rec, &format!("{prefix}.{name}"));
            let (d, t) = (rel_l2(&g.data, &c.data), rel_l2(&g.data, &torch.data));
            println!("{prefix} {name}: CUDA vs CPU rel L2 {d:.2e} (vs diffusers {t:.2e})");
            if d.is_nan() || d >= TOL {
                fail_case(format!("{prefix} controlnet {name}: rel L2 {d:.3e}"));
            }
        }
    }
}

/// Case `name` of records/controlnet/cases.json: its load spec and request.
fn case(name: &str) -> (LoadSpec, Request) {
    let text = std::fs::read_to_string(fixtures().join("records/controlnet/cases.json")).expect("cases.json");
    let all: Value = serde_json::from_str(&text).expect("JSON");
    let c = all.as_array().expect("a list").iter().find(|c| c["name"] == name).expect("case recorded");
    let num = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
    let (width, height) = (num("width") as usize, num("height") as usize);
    let png = |p: &Value| read_png(&fixtures().join(p.as_str().expect("path"))).expect("png");
    let controls = c["controlnets"]
        .as_array()
        .expect("controlnets")
        .iter()
        .map(|u| {
            let (w, h, rgb, _) = png(&u["image"]);
            ControlUnit {
                model: fixtures().join(u["path"].as_str().expect("path")),
                image: ControlUnit::image_at(w, h, &rgb, width, height).expect("control image"),
                scale: u["scale"].as_f64().expect("scale") as f32,
                start: u["start"].as_f64().expect("start"),
                end: u["end"].as_f64().expect("end"),
            }
        })
        .collect();
    let loras = c["loras"]
        .as_array()
        .expect("loras")
        .iter()
        .map(|l| LoraSpec {
            path: fixtures().join(l[0].as_str().expect("path")),
            scale: l[1].as_f64().expect("scale") as f32,
        })
        .collect();
    let spec =
        LoadSpec { model_dir: fixtures().join(c["model"].as_str().expect("model")), loras, ..LoadSpec::default() };
    let init_image = c.get("image").map(|p| {
        let (w, h, rgb, _) = png(p);
        InitImage::from_rgb8(w, h, &rgb, num("strength") as f32).expect("init image")
    });
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
        controls,
    };
    (spec, req)
}

/// Two ControlNets with CFG and windows (each active at different steps), the LCM UNet's w-embedding,
/// SDXL's added conditioning reaching the ControlNet, img2img. The reduced run keeps the first.
const CASES: &[&str] = &["cn_two_cfg", "cn_lcm", "cn_sdxl_cfg", "cn_img2img"];

fn controlnet_pipelines_match_cpu(be: CudaBackend) {
    let names = if reduced() { &CASES[..1] } else { CASES };
    let mut gpu = Some(be);
    for &name in names {
        let (spec, req) = case(name);
        let be = gpu.take().unwrap_or_else(gpu_util::backend);
        let mut g = Pipeline::load(be, spec.clone()).unwrap_or_else(|e| panic!("{name}: load on CUDA: {e}"));
        let mut p = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: load on CPU: {e}"));
        let go = g.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: CUDA: {e}"));
        let co = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: CPU: {e}"));
        let lat = rel_l2(&go.latents.data, &co.latents.data);
        let mad = go.images.data.iter().zip(&co.images.data).map(|(a, b)| (a - b).abs() as f64).sum::<f64>()
            / go.images.numel() as f64;
        println!("controlnet {name}: latents CUDA vs CPU rel L2 {lat:.2e}, image MAD {:.3}/255", mad * 255.0);
        if lat.is_nan() || lat >= TOL {
            fail_case(format!("controlnet {name}: latents rel L2 {lat:.3e} (limit {TOL:.0e})"));
        }
        if mad.is_nan() || mad >= 2.0 / 255.0 {
            fail_case(format!("controlnet {name}: image MAD {:.3}/255 (limit 2/255)", mad * 255.0));
        }
    }
}

/// A new conditioning scale (and control image) is a run-time input: the second generation neither
/// records nor allocates, and it gives what the CPU gives with that scale.
fn new_scale_reuses_the_recorded_graph(be: CudaBackend) {
    let (spec, req) = case("cn_lora");
    let mut g = Pipeline::load(be.share(), spec.clone()).expect("load");
    g.generate(&req, &mut |_| {}).expect("first generation");
    let (allocs, recs) = (be.device_allocations(), be.recordings());
    let mut again = req.clone();
    again.controls[0].scale = 0.35;
    let go = g.generate(&again, &mut |_| {}).expect("second generation");
    assert_eq!(be.device_allocations(), allocs, "a new scale allocated on the device");
    assert_eq!(be.recordings(), recs, "a new scale re-recorded the graph");
    let co = Pipeline::load(CpuBackend::new(), spec).expect("CPU").generate(&again, &mut |_| {}).expect("CPU");
    let lat = rel_l2(&go.latents.data, &co.latents.data);
    println!("scale 0.35 after 1.0: latents CUDA vs CPU rel L2 {lat:.2e}");
    if lat.is_nan() || lat >= TOL {
        fail_case(format!("scale change: latents rel L2 {lat:.3e}"));
    }
}

fn main() -> std::process::ExitCode {
    run_gpu_tests(
        "gpu_controlnet",
        &[
            ("controlnet_calls_match_cpu", controlnet_calls_match_cpu),
            ("controlnet_pipelines_match_cpu", controlnet_pipelines_match_cpu),
            ("new_scale_reuses_the_recorded_graph", new_scale_reuses_the_recorded_graph),
        ],
    )
}
