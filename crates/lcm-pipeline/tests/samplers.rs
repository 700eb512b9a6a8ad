//! The few-step samplers end to end against diffusers: every case tests/fixtures/generate_samplers.py
//! recorded (TCD with a LoRA, CFG and img2img; Euler leading/trailing/linspace incl. SDXL-Lightning's
//! trailing recipe, img2img and 4-channel inpainting; Euler ancestral; DDIM trailing and with eta) and
//! generate_sd2.py's non-LCM ones (SD-Turbo Euler 1 step and Euler ancestral 4 steps, SD2.1's
//! v-prediction DDIM with CFG and with eta). Same seed, same latents (relative L2 < 1e-3) and 8-bit image
//! (within 1/255 on average), stochastic samplers included: their noise comes from the same generator
//! stream as diffusers'.

mod common;
#[path = "common/recorded_case.rs"]
mod recorded_case;

use common::{against_record, fixtures};
use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use serde_json::Value;

fn names(set: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fixtures().join(format!("records/{set}/cases.json"))).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let cases = all.as_array().unwrap().iter().filter(|c| c["scheduler"] != "LCMScheduler");
    cases.map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

fn run_set(set: &str, at_least: usize) {
    let names = names(set);
    assert!(names.len() >= at_least, "{set}: {} sampler cases", names.len());
    let mut failures = Vec::new();
    for name in &names {
        let (spec, req) = recorded_case::case(&fixtures(), set, name);
        let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = pipe.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
        failures.extend(against_record(set, name, &out));
    }
    assert!(failures.is_empty(), "cases off diffusers:\n{}", failures.join("\n"));
}

#[test]
fn tcd_euler_euler_ancestral_and_ddim_match_diffusers() {
    run_set("samplers", 15);
}

#[test]
fn sd_turbo_and_sd2_v_prediction_samplers_match_diffusers() {
    run_set("sd2", 4);
}
