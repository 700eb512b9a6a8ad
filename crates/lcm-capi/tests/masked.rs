//! `lcm_generate_masked` (called through the C ABI's Rust symbols) inpaints as the pipeline does for the
//! same request and mask, on the tiny inpainting fixture (CPU); bad masks name `request.mask`.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use lcm::cpu::CpuBackend;
use lcm_capi::*;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{InitImage, LoadSpec, Request};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(rel)
}

fn last_error() -> String {
    // SAFETY: lcm_last_error's pointer is valid until this thread's next lcm call.
    unsafe { CStr::from_ptr(lcm_last_error()) }.to_string_lossy().into_owned()
}

#[test]
fn masked_generation_is_the_pipelines() {
    let model = fixture("inpaint/tiny-sd-inpaint");
    let (w, h, rgb) = lcm_pipeline::output::read_image_rgb8(&fixture("inpaint/images/init_64x64.png")).unwrap();
    let (_, _, mask, _) = lcm_pipeline::output::read_mask_gray8(&fixture("inpaint/images/mask_l_64x64.png")).unwrap();
    let prompt = CString::new("a photo of a cat").unwrap();

    let init = InitImage::from_rgb8(w, h, &rgb, 0.8).unwrap().with_mask_gray8(w, h, &mask).unwrap();
    let req = Request {
        prompt: "a photo of a cat".into(),
        seed: 7,
        width: w,
        height: h,
        init_image: Some(init),
        ..Request::default()
    };
    let spec = LoadSpec { model_dir: model.clone(), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let want = pipe.generate(&req, &mut |_| {}).unwrap().rgb8(0);

    let model_c = CString::new(model.to_str().unwrap()).unwrap();
    let mut opts = lcm_load_options_default();
    opts.model = model_c.as_ptr();
    opts.device = LCM_DEVICE_CPU;
    let mut p = std::ptr::null_mut();
    // SAFETY: valid options and out pointer.
    assert_eq!(unsafe { lcm_pipeline_load(&opts, &mut p) }, LCM_OK, "{}", last_error());
    let mut r = lcm_request_default();
    r.prompt = prompt.as_ptr();
    r.seed = 7;
    (r.width, r.height) = (w as u32, h as u32);
    r.init_rgb = rgb.as_ptr();
    r.strength = 0.8;
    let mut out = std::ptr::null_mut();
    // SAFETY: a live pipeline, a valid request with w·h·3 init bytes and w·h mask bytes.
    assert_eq!(unsafe { lcm_generate_masked(p, &r, mask.as_ptr(), &mut out) }, LCM_OK, "{}", last_error());
    // SAFETY: lcm_generate_masked succeeded: `out` holds count·h·w·3 bytes.
    let got = unsafe { std::slice::from_raw_parts((*out).rgb, (*out).len) }.to_vec();
    unsafe { lcm_free_images(out) };
    assert!(got == want, "lcm_generate_masked's image differs from the pipeline's");

    // Refusals name request.mask / request.init_rgb.
    let none = vec![0u8; w * h];
    for (mask_ptr, init_ptr, field) in [
        (none.as_ptr(), rgb.as_ptr(), "request.mask: "),
        (std::ptr::null(), rgb.as_ptr(), "request.mask: "),
        (mask.as_ptr(), std::ptr::null(), "request.init_rgb: "),
    ] {
        r.init_rgb = init_ptr;
        let mut out = std::ptr::null_mut();
        // SAFETY: as above (NULLs are refused).
        let status = unsafe { lcm_generate_masked(p, &r, mask_ptr, &mut out) };
        assert_eq!(status, LCM_ERR_INVALID_ARGUMENT, "{field}");
        assert!(out.is_null() && last_error().starts_with(field), "{field}: {}", last_error());
    }
    // SAFETY: p came from lcm_pipeline_load.
    unsafe { lcm_free_pipeline(p) };
}
