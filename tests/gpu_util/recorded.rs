//! Recorded pipeline cases (`records/<set>/cases.json`, written by tests/fixtures/generate_*.py) as a
//! load spec and a request, and their run on the CUDA backend against the CPU: what the ControlNet
//! and inpainting suites share.

use std::path::{Path, PathBuf};

use lcm::cuda::CudaBackend;
use lcm_core::rel_l2;
use lcm_cpu::CpuBackend;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{LoadSpec, Request};

use super::{fail_case, TOL};

#[path = "../../crates/lcm-pipeline/tests/common/recorded_case.rs"]
mod recorded_case;

/// `$LCM_FIXTURES`, else `tests/fixtures` under the working directory (cargo runs tests from the
/// package root; the device scripts export the variable).
pub fn fixtures() -> PathBuf {
    std::env::var_os("LCM_FIXTURES").map_or_else(|| Path::new("tests/fixtures").to_path_buf(), PathBuf::from)
}

/// Case `name` of `records/<set>/cases.json`: its load spec and request (shared with lcm-pipeline's
/// CPU tests).
pub fn case(set: &str, name: &str) -> (LoadSpec, Request) {
    recorded_case::case(&fixtures(), set, name)
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
