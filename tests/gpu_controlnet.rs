//! ControlNet on the CUDA backend against the CPU reference (tests/fixtures/generate_controlnet.py's
//! fixtures): one ControlNet call of each family (relative L2 < 1e-2 per residual, the diffusers record
//! printed beside), recorded pipeline cases where the ControlNets run inside the denoising graph
//! (latents < 1e-2, image mean absolute difference < 2/255), and a change of conditioning scale between
//! generations that neither re-records nor allocates (the scales are a run-time input of the graph).

mod gpu_util;

use gpu_util::recorded::{case, compare_with_cpu, fixtures};
use gpu_util::{fail_case, run_gpu_tests, TOL};
use lcm::cuda::CudaBackend;
use lcm_core::{rel_l2, Backend, SafeTensorsFile, Tensor};
use lcm_cpu::CpuBackend;
use lcm_models::{AddedCond, ControlNet, Variant};
use lcm_pipeline::pipeline::Pipeline;

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

/// Two ControlNets with CFG and windows (each active at different steps), the LCM UNet's w-embedding,
/// SDXL's added conditioning reaching the ControlNet, img2img. The reduced run keeps the first.
const CASES: &[&str] = &["cn_two_cfg", "cn_lcm", "cn_sdxl_cfg", "cn_img2img"];

fn controlnet_pipelines_match_cpu(be: CudaBackend) {
    compare_with_cpu(be, "controlnet", if reduced() { &CASES[..1] } else { CASES });
}

/// A new conditioning scale (and control image) is a run-time input: the second generation neither
/// records nor allocates, and it gives what the CPU gives with that scale.
fn new_scale_reuses_the_recorded_graph(be: CudaBackend) {
    let (spec, req) = case("controlnet", "cn_lora");
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
