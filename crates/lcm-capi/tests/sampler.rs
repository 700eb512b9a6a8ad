//! The request's sampler fields (called through the C ABI's Rust symbols) on the tiny SD-Turbo fixture
//! (CPU): "euler-a" gives the pipeline's image for the same request and sampler, "auto" the model's own
//! sampler, eta the DDIM image; bad names and values come back naming the field. And its
//! `prompt_syntax` on tiny SD1.5: "a1111" gives the pipeline's A1111-syntax image, NULL the plain one.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use lcm::cpu::CpuBackend;
use lcm_capi::*;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::prompt::PromptSyntax;
use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions};
use lcm_pipeline::spec::{LoadSpec, Request};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sd2/tiny-sd-turbo")
}

fn tiny_sd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-sd")
}

fn last_error() -> String {
    // SAFETY: lcm_last_error's pointer is valid until this thread's next lcm call.
    unsafe { CStr::from_ptr(lcm_last_error()) }.to_string_lossy().into_owned()
}

/// `r` through `lcm_generate`: its pixels, or the status and last error.
fn generate(p: *mut LcmPipeline, r: &LcmRequest) -> Result<Vec<u8>, (LcmStatus, String)> {
    let mut out = std::ptr::null_mut();
    // SAFETY: a live pipeline, a valid request.
    let status = unsafe { lcm_generate(p, r, &mut out) };
    if status != LCM_OK {
        assert!(out.is_null());
        return Err((status, last_error()));
    }
    // SAFETY: lcm_generate succeeded: `out` holds `len` bytes.
    let got = unsafe { std::slice::from_raw_parts((*out).rgb, (*out).len) }.to_vec();
    // SAFETY: from lcm_generate.
    unsafe { lcm_free_images(out) };
    Ok(got)
}

#[test]
fn request_samplers_are_the_pipelines() {
    let base = Request { prompt: "a red house".into(), seed: 5, steps: 2, width: 64, height: 64, ..Request::default() };
    let spec = LoadSpec { model_dir: model(), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let mut run = |sampler: SamplerOptions| {
        let req = Request { sampler: Some(sampler), ..base.clone() };
        pipe.generate(&req, &mut |_| {}).unwrap().rgb8(0)
    };
    let euler_a = run(SamplerOptions::new(SamplerKind::EulerAncestral));
    let euler = run(SamplerOptions::new(SamplerKind::Euler));
    let ddim = run(SamplerOptions { eta: Some(0.5), ..SamplerOptions::new(SamplerKind::Ddim) });
    assert!(euler_a != euler && euler != ddim, "the samplers gave one image: the comparisons prove nothing");

    let model_c = CString::new(model().to_str().unwrap()).unwrap();
    let mut opts = lcm_load_options_default();
    opts.model = model_c.as_ptr();
    opts.device = LCM_DEVICE_CPU;
    let mut p = std::ptr::null_mut();
    // SAFETY: valid options and out pointer.
    assert_eq!(unsafe { lcm_pipeline_load(&opts, &mut p) }, LCM_OK, "{}", last_error());
    let prompt = CString::new("a red house").unwrap();
    let mut r = lcm_request_default();
    r.prompt = prompt.as_ptr();
    (r.seed, r.steps, r.width, r.height) = (5, 2, 64, 64);
    let name = |s: &str| CString::new(s).unwrap();
    let (ea, auto, dd) = (name("euler-a"), name("auto"), name("ddim"));

    r.scheduler = ea.as_ptr();
    assert!(generate(p, &r).unwrap() == euler_a, "euler-a: the C ABI's image differs from the pipeline's");
    r.scheduler = auto.as_ptr();
    assert!(generate(p, &r).unwrap() == euler, "auto (the model's Euler): images differ");
    (r.scheduler, r.eta) = (dd.as_ptr(), 0.5);
    assert!(generate(p, &r).unwrap() == ddim, "ddim eta 0.5: images differ");

    let (bad, lead, bogus) = (name("dpm++"), name("leading"), name("sideways"));
    let cases = [
        (bad.as_ptr(), f32::NAN, std::ptr::null(), "request.scheduler: "),
        (ea.as_ptr(), 0.5, std::ptr::null(), "request.eta: "),
        (dd.as_ptr(), 1.5, std::ptr::null(), "request.eta: "),
        (dd.as_ptr(), f32::NAN, bogus.as_ptr(), "request.timestep_spacing: "),
        (std::ptr::null(), f32::NAN, lead.as_ptr(), "request.timestep_spacing: "),
    ];
    for (scheduler, eta, spacing, field) in cases {
        (r.scheduler, r.eta, r.timestep_spacing) = (scheduler, eta, spacing);
        let (status, msg) = generate(p, &r).unwrap_err();
        assert_eq!(status, LCM_ERR_INVALID_ARGUMENT, "{field} {msg}");
        assert!(msg.starts_with(field), "{field}: {msg}");
    }
    // SAFETY: p came from lcm_pipeline_load.
    unsafe { lcm_free_pipeline(p) };

    // A prediction type the folder contradicts, or not one, is refused at load naming the option.
    for value in ["v_prediction", "x0"] {
        let pt = name(value);
        opts.prediction_type = pt.as_ptr();
        let mut p = std::ptr::null_mut();
        // SAFETY: valid options and out pointer.
        assert_ne!(unsafe { lcm_pipeline_load(&opts, &mut p) }, LCM_OK);
        assert!(p.is_null() && last_error().contains("prediction_type"), "{value}: {}", last_error());
    }
}

#[test]
fn request_prompt_syntax_is_the_pipelines() {
    let text = "a ((red)) house BREAK [dark] sky";
    let base = Request { prompt: text.into(), seed: 5, steps: 2, width: 64, height: 64, ..Request::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), LoadSpec { model_dir: tiny_sd(), ..LoadSpec::default() }).unwrap();
    let mut run =
        |syntax| pipe.generate(&Request { prompt_syntax: syntax, ..base.clone() }, &mut |_| {}).unwrap().rgb8(0);
    let (plain, a1111) = (run(PromptSyntax::Plain), run(PromptSyntax::A1111));
    assert!(plain != a1111, "the syntaxes gave one image: the comparisons prove nothing");

    let model_c = CString::new(tiny_sd().to_str().unwrap()).unwrap();
    let mut opts = lcm_load_options_default();
    opts.model = model_c.as_ptr();
    opts.device = LCM_DEVICE_CPU;
    let mut p = std::ptr::null_mut();
    // SAFETY: valid options and out pointer.
    assert_eq!(unsafe { lcm_pipeline_load(&opts, &mut p) }, LCM_OK, "{}", last_error());
    let prompt = CString::new(text).unwrap();
    let mut r = lcm_request_default();
    r.prompt = prompt.as_ptr();
    (r.seed, r.steps, r.width, r.height) = (5, 2, 64, 64);
    assert!(generate(p, &r).unwrap() == plain, "NULL: the plain image");
    let (a, bogus) = (CString::new("a1111").unwrap(), CString::new("comfy").unwrap());
    r.prompt_syntax = a.as_ptr();
    assert!(generate(p, &r).unwrap() == a1111, "a1111: the C ABI's image differs from the pipeline's");
    r.prompt_syntax = bogus.as_ptr();
    let (status, msg) = generate(p, &r).unwrap_err();
    assert_eq!(status, LCM_ERR_INVALID_ARGUMENT, "{msg}");
    assert!(msg.starts_with("request.prompt_syntax: "), "{msg}");
    // SAFETY: p came from lcm_pipeline_load.
    unsafe { lcm_free_pipeline(p) };
}
