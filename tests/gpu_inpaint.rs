//! Inpainting on the CUDA backend against the CPU reference (tests/fixtures/generate_inpaint.py's
//! cases): a 9-channel inpainting UNet (mask and masked-image latents concatenated in the graph; CFG,
//! two images, non-square), an ordinary UNet (the kept region re-noised and blended by the
//! `inpaint_blend` kernel after each step), the LCM UNet's w-embedding, SDXL. Latents < 1e-2 relative
//! L2, image mean absolute difference < 2/255.

mod gpu_util;

use gpu_util::recorded::compare_with_cpu;
use gpu_util::run_gpu_tests;
use lcm::cuda::CudaBackend;

fn reduced() -> bool {
    std::env::var("LCM_GPU_TESTS_REDUCED").is_ok_and(|v| v != "0")
}

/// The reduced run keeps the first two: one of each UNet kind.
const CASES: &[&str] = &["inp9_cfg_x2", "inp4_sd", "inp4_lcm", "inp_sdxl"];

fn inpainting_pipelines_match_cpu(be: CudaBackend) {
    compare_with_cpu(be, "inpaint", if reduced() { &CASES[..2] } else { CASES });
}

fn main() -> std::process::ExitCode {
    run_gpu_tests("gpu_inpaint", &[("inpainting_pipelines_match_cpu", inpainting_pipelines_match_cpu)])
}
