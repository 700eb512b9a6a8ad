use std::path::{Path, PathBuf};

use serde_json::json;

use super::*;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 32 << 20,
        max_prompt_chars: 4000,
        size: SizeRule::up_to("max_size", 1024).unwrap(),
        max_images: 8,
        max_steps: 50,
        max_loras: 8,
        sampler: SamplerOptions::new(lcm_pipeline::scheduler::SamplerKind::Lcm),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn dir() -> ControlNetDir {
    ControlNetDir::scan(Some(&fixtures().join("controlnet"))).unwrap()
}

fn png(w: usize, h: usize) -> (Vec<u8>, String) {
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 37 + i / 7) % 256) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(super::super::png::encode_rgb8(w, h, &rgb, "").unwrap());
    (rgb, b64)
}

fn parse(body: Value, dir: &ControlNetDir) -> Result<Generation, ApiError> {
    parse_request_with(Api::Txt2Img, body.to_string().as_bytes(), &limits(), &LoraDir::default(), dir)
}

fn field_of(body: Value, dir: &ControlNetDir) -> String {
    let e = parse(body, dir).unwrap_err();
    assert_eq!(e.status, 400, "{}", e.message);
    e.field.unwrap_or_default()
}

#[test]
fn a1111_controlnet_units_become_control_units() {
    let (rgb, b64) = png(64, 64);
    let (_, b64_80) = png(80, 64);
    let d = dir();
    let body = json!({"prompt": "a", "width": 64, "height": 64, "batch_size": 2, "alwayson_scripts": {
    "controlnet": {"args": [
        {"enabled": false, "image": 5, "model": "nope"},
        {"image": format!("data:image/png;base64,{b64}"), "model": "cn-sd15-a", "weight": 0.5,
         "guidance_start": 0.1, "guidance_end": 0.9, "module": "none", "threshold_a": 64,
         "resize_mode": "Crop and Resize", "pixel_perfect": true, "processor_res": 512, "mask": null},
        {"input_image": b64_80, "model": "cn-sd15-b [abcd1234]", "module": "canny", "threshold_a": -1,
         "threshold_b": 150, "lowvram": false, "control_mode": "Balanced"},
    ]}}});
    let g = parse(body, &d).unwrap();
    assert_eq!(g.reqs.len(), 2);
    let c = &g.reqs[1].controls;
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].model, fixtures().join("controlnet/cn-sd15-a"));
    assert_eq!((c[0].scale, c[0].start, c[0].end), (0.5, 0.1, 0.9));
    assert_eq!(c[0].image, ControlUnit::image_from_rgb8(64, 64, &rgb).unwrap());
    assert_eq!(c[1].model, fixtures().join("controlnet/cn-sd15-b"));
    assert_eq!((c[1].scale, c[1].start, c[1].end), (1.0, 0.0, 1.0));
    assert_eq!(c[1].image.shape, [1, 3, 64, 64]);
    assert_eq!(g.controls[0].field, "alwayson_scripts.controlnet.args[1]");
    assert_eq!((g.controls[1].name.as_str(), g.controls[1].image_key), ("cn-sd15-b", "input_image"));
    assert_eq!(g.controls[1].module, "canny:100:150");

    // Canny at the image's own size, then resized to the output's (as the CLI does).
    let (rgb80, b64_80) = png(80, 64);
    let g = parse(
        json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"ControlNet": {"args": [
            {"image": b64_80, "model": "cn-sd15-a", "module": "canny"}]}}}),
        &d,
    )
    .unwrap();
    let edges = ControlPreprocess::CANNY_DEFAULT.apply(&rgb80, 80, 64).unwrap();
    assert_eq!(g.reqs[0].controls[0].image, ControlUnit::image_at(80, 64, &edges, 64, 64).unwrap());

    // No units, or only disabled ones: plain txt2img, on a server without ControlNets too.
    for scripts in
        [json!({}), json!({"controlnet": {"args": []}}), json!({"controlnet": {"args": [{"enabled": false}]}})]
    {
        let g = parse(json!({"prompt": "a", "alwayson_scripts": scripts}), &ControlNetDir::default()).unwrap();
        assert!(g.reqs[0].controls.is_empty() && g.controls.is_empty());
    }
}

#[test]
fn bad_units_are_refused_naming_their_json_path() {
    let (_, b64) = png(64, 64);
    let (_, b64_80) = png(80, 64);
    let d = dir();
    let unit = |extra: Value| {
        let mut u = json!({"image": b64, "model": "cn-sd15-a"});
        u.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"prompt": "a", "width": 64, "height": 64,
               "alwayson_scripts": {"controlnet": {"args": [{"enabled": false}, u]}}})
    };
    let at = "alwayson_scripts.controlnet.args[1]";
    let cases: Vec<(Value, String)> = vec![
        (unit(json!({"model": "nope"})), format!("{at}.model")),
        (unit(json!({"model": "../cn-sd15-a"})), format!("{at}.model")),
        (unit(json!({"model": 3})), format!("{at}.model")),
        (unit(json!({"model": null})), format!("{at}.model")),
        (unit(json!({"image": null})), format!("{at}.image")),
        (unit(json!({"image": "!!!"})), format!("{at}.image")),
        (unit(json!({"image": "aGVsbG8="})), format!("{at}.image")),
        (unit(json!({"image": [1]})), format!("{at}.image")),
        (unit(json!({"input_image": b64})), format!("{at}.input_image")),
        (unit(json!({"weight": "x"})), format!("{at}.weight")),
        (unit(json!({"weight": 1e6})), format!("{at}.weight")),
        (unit(json!({"guidance_start": 1.0})), format!("{at}.guidance_start")),
        (unit(json!({"guidance_start": -0.1})), format!("{at}.guidance_start")),
        (unit(json!({"guidance_start": 0.5, "guidance_end": 0.5})), format!("{at}.guidance_end")),
        (unit(json!({"guidance_end": 2})), format!("{at}.guidance_end")),
        (unit(json!({"module": "depth_midas"})), format!("{at}.module")),
        (unit(json!({"module": "canny", "threshold_a": 300})), format!("{at}.threshold_a")),
        (unit(json!({"module": "canny", "threshold_b": -5})), format!("{at}.threshold_b")),
        (unit(json!({"module": "canny", "threshold_b": "x"})), format!("{at}.threshold_b")),
        (unit(json!({"enabled": "yes"})), format!("{at}.enabled")),
        (unit(json!({"control_mode": "ControlNet is more important"})), format!("{at}.control_mode")),
        (unit(json!({"control_mode": 2})), format!("{at}.control_mode")),
        (unit(json!({"resize_mode": "Stretch"})), format!("{at}.resize_mode")),
        (unit(json!({"image": b64_80, "resize_mode": 1})), format!("{at}.resize_mode")),
        (unit(json!({"image": b64_80, "module": "canny", "pixel_perfect": true})), format!("{at}.pixel_perfect")),
        (unit(json!({"module": "canny", "processor_res": 512})), format!("{at}.processor_res")),
        (unit(json!({"guessmode": true})), format!("{at}.guessmode")),
        (unit(json!({"save_detected_map": true})), format!("{at}.save_detected_map")),
        (unit(json!({"mask": "x"})), format!("{at}.mask")),
        (json!({"prompt": "a", "alwayson_scripts": []}), "alwayson_scripts".into()),
        (json!({"prompt": "a", "alwayson_scripts": {"adetailer": {"args": []}}}), "alwayson_scripts.adetailer".into()),
        (
            json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": {}}}}),
            "alwayson_scripts.controlnet.args".into(),
        ),
        (
            json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": [], "x": 1}}}),
            "alwayson_scripts.controlnet.x".into(),
        ),
        (
            json!({"prompt": "a", "alwayson_scripts": {"controlnet": {"args": [[]]}}}),
            "alwayson_scripts.controlnet.args[0]".into(),
        ),
        (
            json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args":
                vec![json!({"image": b64, "model": "cn-sd15-a"}); 9]}}}),
            "alwayson_scripts.controlnet.args".into(),
        ),
    ];
    for (body, field) in cases {
        let shown: String = body.to_string().chars().take(200).collect();
        assert_eq!(field_of(body.clone(), &d), field, "{shown}: {}", parse(body, &d).unwrap_err().message);
    }
    // The messages say what is accepted.
    let e = parse(unit(json!({"model": "nope"})), &d).unwrap_err();
    assert!(e.message.contains("cn-sd15-a, cn-sd15-b, cn-sdxl, cn_sd15_a"), "{}", e.message);
    let e = parse(unit(json!({"module": "canny", "threshold_a": 300})), &d).unwrap_err();
    assert!(e.message.contains("0..=255"), "{}", e.message);
    // Without --controlnet-dir, an enabled unit is refused clearly.
    let e = parse(unit(json!({})), &ControlNetDir::default()).unwrap_err();
    assert_eq!(e.field.as_deref(), Some(at));
    assert!(e.message.contains("--controlnet-dir"), "{}", e.message);
    // img2img takes units too (its size the init image's).
    let body = json!({"prompt": "a", "init_images": [b64], "alwayson_scripts": {"controlnet": {"args": [
        {"image": b64_80, "model": "cn-sd15-a"}]}}});
    let g = parse_request_with(Api::Img2Img, body.to_string().as_bytes(), &limits(), &LoraDir::default(), &d).unwrap();
    assert_eq!(g.reqs[0].controls[0].image.shape, [1, 3, 64, 64]);
}

#[test]
fn engine_refusals_name_the_units_key_and_hide_paths() {
    let (_, b64) = png(64, 64);
    let d = dir();
    let body = json!({"prompt": "a", "width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args": [
        {"image": b64, "model": "cn-sd15-a"}, {"enabled": false}, {"input_image": b64, "model": "cn-sdxl"}]}}});
    let g = parse(body, &d).unwrap();
    let sdxl = fixtures().join("controlnet/cn-sdxl");
    let e = Field::ControlNet.invalid(format!("{} does not fit this model: why", sdxl.display()));
    let a = engine_error(Api::Txt2Img, &g.controls, &e);
    assert_eq!(a.field.as_deref(), Some("alwayson_scripts.controlnet.args[2].model"));
    assert_eq!(a.message, "cn-sdxl does not fit this model: why");
    let e = Field::ControlImage.invalid(format!("ControlNet 2 ({}): bad", sdxl.display()));
    let a = engine_error(Api::Txt2Img, &g.controls, &e);
    assert_eq!(a.field.as_deref(), Some("alwayson_scripts.controlnet.args[2].input_image"));
    assert_eq!(a.message, "ControlNet 2 (cn-sdxl): bad");
    let e = Field::ControlEnd.invalid("ControlNet 1 (x): bad");
    assert_eq!(
        engine_error(Api::Txt2Img, &g.controls, &e).field.as_deref(),
        Some("alwayson_scripts.controlnet.args[0].guidance_end")
    );
    assert_eq!(engine_error(Api::OpenAi, &[], &Field::NumImages.invalid("x")).field.as_deref(), Some("n"));
    assert_eq!(engine_error(Api::Txt2Img, &[], &Field::GuidanceScale.invalid("x")).field.as_deref(), Some("cfg_scale"));
    assert_eq!(engine_error(Api::Txt2Img, &[], &Error::invalid("batch", "x")).field.as_deref(), Some("request"));
    assert_eq!(engine_error(Api::Txt2Img, &[], &Error::Backend("x".into())).status, 500);
}
