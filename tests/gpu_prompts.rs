//! Prompts on the CUDA backend against the CPU reference: A1111's syntax (tests/fixtures/generate_a1111.py's
//! cases: weighted chunks joined to 77·k context tokens, a prompt and a negative prompt of different chunk
//! counts — each half's cross attention limited to its own keys by the attention kernels — and SDXL's
//! two encoders with a zeroed negative) and textual-inversion embeddings (generate_embeddings.py's cases:
//! the grown token tables). Latents < 1e-2 relative L2, image mean absolute difference < 2/255.

mod gpu_util;

use gpu_util::recorded::compare_with_cpu;
use gpu_util::run_gpu_tests;
use lcm::cuda::CudaBackend;

fn reduced() -> bool {
    std::env::var("LCM_GPU_TESTS_REDUCED").is_ok_and(|v| v != "0")
}

/// The reduced run keeps the first of each set: SD1.5 with 3 + 1 chunks (two halves of different
/// lengths), and the A1111-format 2-vector embedding.
const A1111: &[&str] = &["sd_long_weighted_cfg", "xl_long_cfg_zero_negative", "sd_long_both_cfg_x2"];
const EMBEDDINGS: &[&str] = &["ti_sd_a1111_2vec", "ti_xl_cfg_negative"];

fn a1111_prompts_match_cpu(be: CudaBackend) {
    compare_with_cpu(be, "a1111", if reduced() { &A1111[..1] } else { A1111 });
}

fn embeddings_match_cpu(be: CudaBackend) {
    compare_with_cpu(be, "embeddings", if reduced() { &EMBEDDINGS[..1] } else { EMBEDDINGS });
}

fn main() -> std::process::ExitCode {
    run_gpu_tests(
        "gpu_prompts",
        &[("a1111_prompts_match_cpu", a1111_prompts_match_cpu), ("embeddings_match_cpu", embeddings_match_cpu)],
    )
}
