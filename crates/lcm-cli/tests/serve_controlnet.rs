//! `lcm serve --controlnet-dir` over real HTTP on the tiny fixture (CPU): A1111's
//! `alwayson_scripts.controlnet` units give the pipeline's images for the same ControlNet units (as
//! given, Canny-preprocessed and resized, on img2img) and `lcm generate --controlnet`'s (when the binary
//! has those flags), batch only with the same ControlNets and windows, are listed by
//! `/controlnet/model_list`, and bad units get a 400 naming their JSON path.

mod serve_util;

use lcm::cpu::CpuBackend;
use lcm_pipeline::control_image::ControlPreprocess;
use lcm_pipeline::output::read_png;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{ControlUnit, InitImage, LoadSpec, Request};
use serde_json::{json, Value};
use serve_util::*;

fn cn_dir() -> std::path::PathBuf {
    fixtures().join("controlnet")
}

/// A fixture control image: its PNG as base64, and its pixels.
fn control_image(name: &str) -> (String, (usize, usize, Vec<u8>)) {
    let path = cn_dir().join("images").join(name);
    let (w, h, rgb, _) = read_png(&path).unwrap();
    (b64(&std::fs::read(&path).unwrap()), (w, h, rgb))
}

/// The pipeline's images for `req` on the tiny fixture (CPU, as the server runs it).
fn pipeline_images(req: &Request) -> Vec<Vec<u8>> {
    let spec = LoadSpec { model_dir: fixtures().join("tiny-sd"), ..LoadSpec::default() };
    let mut pipe = Pipeline::load(CpuBackend::new(), spec).unwrap();
    let out = pipe.generate(req, &mut |_| {}).unwrap();
    (0..req.num_images).map(|i| out.rgb8(i)).collect()
}

/// `lcm generate`'s image for `args` when the binary has the ControlNet flags (`--controlnet`,
/// `--control-image`, …); None (with a note) before they are in.
fn lcm_generate_controlled(name: &str, args: &[&str]) -> Option<Vec<u8>> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lcm")).args(["generate", "--help"]).output().unwrap();
    if !String::from_utf8_lossy(&help.stdout).contains("--control-image") {
        println!("NOTE: this lcm has no `generate --controlnet`: compared with the pipeline only");
        return None;
    }
    Some(lcm_generate(name, args, 1).remove(0))
}

/// An A1111 body with the ControlNet `units`.
fn with_units(mut body: Value, units: Value) -> String {
    body["alwayson_scripts"] = json!({"controlnet": {"args": units}});
    body.to_string()
}

/// The pixels of each image of a 200 answer.
fn images(r: &Resp) -> Vec<Vec<u8>> {
    assert_eq!(r.status, 200, "{}", r.body_text());
    r.json()["images"].as_array().unwrap().iter().map(|i| png_rgb(i.as_str().unwrap()).2).collect()
}

#[test]
fn a1111_controlnet_units_give_the_pipelines_pixels() {
    let s = Server::start("cn", &["--controlnet-dir", cn_dir().to_str().unwrap()]);
    let list = s.get("/controlnet/model_list").json();
    assert_eq!(list, json!({"model_list": ["cn-sd15-a", "cn-sd15-b", "cn-sdxl", "cn_sd15_a"]}));
    assert_eq!(s.get("/controlnet/module_list").json(), json!({"module_list": ["none", "canny"]}));

    let (png64, (w, h, rgb64)) = control_image("canny_64x64.png");
    let unit = |image: &(usize, usize, Vec<u8>), pre: ControlPreprocess, scale: f32, start: f64, end: f64| {
        let (w, h, rgb) = image;
        ControlUnit {
            model: cn_dir().join("cn-sd15-a"),
            image: ControlUnit::image_at(*w, *h, &pre.apply(rgb, *w, *h).unwrap(), 64, 64).unwrap(),
            scale,
            start,
            end,
        }
    };
    let base = json!({"prompt": "a red house", "seed": 7, "steps": 3, "width": 64, "height": 64});
    let req = Request {
        prompt: "a red house".into(),
        seed: 7,
        steps: 3,
        width: 64,
        height: 64,
        controls: vec![unit(&(w, h, rgb64.clone()), ControlPreprocess::None, 1.0, 0.0, 1.0)],
        ..Request::default()
    };

    // One unit, the image as given (a data: URL), defaults elsewhere; a disabled unit beside it.
    let r = s.post(
        "/sdapi/v1/txt2img",
        &with_units(
            base.clone(),
            json!([{"enabled": false, "model": "None", "image": null},
                   {"image": format!("data:image/png;base64,{png64}"), "model": "cn-sd15-a", "module": "none"}]),
        ),
    );
    let got = images(&r);
    let want = pipeline_images(&req);
    assert!(got[0] == want[0], "one ControlNet unit: pixels differ from the pipeline's");
    let (cn_a, image64) = (cn_dir().join("cn-sd15-a"), cn_dir().join("images/canny_64x64.png"));
    let common = ["--prompt", "a red house", "--seed", "7", "--steps", "3", "--width", "64", "--height", "64"];
    let cli = [&common[..], &["--controlnet", cn_a.to_str().unwrap(), "--control-image", image64.to_str().unwrap()]];
    if let Some(cli) = lcm_generate_controlled("cn-cli-1", &cli.concat()) {
        assert!(got[0] == cli, "one ControlNet unit: pixels differ from lcm generate --controlnet");
    }
    let plain = pipeline_images(&Request { controls: Vec::new(), ..req.clone() });
    assert!(plain[0] != want[0], "the ControlNet changed nothing: the comparison proves nothing");
    let params = &r.json()["parameters"]["alwayson_scripts"]["controlnet"]["args"][0];
    assert_eq!((params["model"].as_str(), params["module"].as_str()), (Some("cn-sd15-a"), Some("none")), "{params}");
    assert!(!r.body_text().contains(cn_dir().to_str().unwrap()), "the answer shows the server's path");

    // The single-file copy of cn-sd15-a, named by its file stem: the same image.
    let r = s.post("/sdapi/v1/txt2img", &with_units(base.clone(), json!([{"image": png64, "model": "cn_sd15_a"}])));
    assert!(images(&r)[0] == want[0], "the single-file ControlNet: pixels differ from its folder's");

    // Canny (A1111's default thresholds) on an 80x72 image under its old key, resized to the output;
    // a weight and a guidance window.
    let (png80, image80) = control_image("canny_80x72.png");
    let r = s.post(
        "/sdapi/v1/txt2img",
        &with_units(
            base.clone(),
            json!([{"input_image": png80, "model": "cn-sd15-a", "module": "canny", "threshold_a": -1,
                    "threshold_b": -1, "weight": 0.6, "guidance_start": 0.25, "guidance_end": 0.75,
                    "resize_mode": "Just Resize", "control_mode": 0, "pixel_perfect": false, "lowvram": false}]),
        ),
    );
    let canny =
        Request { controls: vec![unit(&image80, ControlPreprocess::CANNY_DEFAULT, 0.6, 0.25, 0.75)], ..req.clone() };
    let got = images(&r);
    assert!(got[0] == pipeline_images(&canny)[0], "canny, resized, weighted: pixels differ");
    let (cn_scaled, image80) = (format!("{}:0.6", cn_a.display()), cn_dir().join("images/canny_80x72.png"));
    let flags = ["--controlnet", &cn_scaled, "--control-image", image80.to_str().unwrap(), "--control-preprocess"];
    let window = ["canny", "--control-start", "0.25", "--control-end", "0.75"];
    if let Some(cli) = lcm_generate_controlled("cn-cli-2", &[&common[..], &flags, &window].concat()) {
        assert!(got[0] == cli, "canny, resized, weighted: pixels differ from lcm generate --controlnet");
    }

    // img2img with a ControlNet (weight 1 by default, as A1111).
    let init_path = fixtures().join("images/init_64x64.png");
    let (iw, ih, init_rgb, _) = read_png(&init_path).unwrap();
    let r = s.post(
        "/sdapi/v1/img2img",
        &with_units(
            json!({"prompt": "a painting", "seed": 5, "steps": 4, "denoising_strength": 0.5,
                   "init_images": [b64(&std::fs::read(&init_path).unwrap())]}),
            json!([{"image": png64, "model": "cn-sd15-a"}]),
        ),
    );
    let i2i = Request {
        prompt: "a painting".into(),
        seed: 5,
        steps: 4,
        init_image: Some(InitImage::from_rgb8(iw, ih, &init_rgb, 0.5).unwrap()),
        ..req.clone()
    };
    assert!(images(&r)[0] == pipeline_images(&i2i)[0], "img2img with a ControlNet: pixels differ");
}

#[test]
fn queued_controlnet_requests_batch_only_with_the_same_controlnets_and_windows() {
    let s = Server::start("cn-batch", &["--controlnet-dir", cn_dir().to_str().unwrap(), "--max-batch", "4"]);
    let (png64, _) = control_image("canny_64x64.png");
    let (png_smooth, _) = control_image("smooth_64x64.png");
    // A slow request holds the worker while four queue behind it: two with cn-sd15-a over all steps
    // (their own images and weights), one with another window, one with cn-sd15-b.
    let blocker = send(
        &s.addr,
        "POST",
        "/v1/images/generations",
        json!({"prompt": "slow", "size": "256x256", "steps": 50}).to_string().as_bytes(),
    );
    s.wait_metric("lcm_generating_images", 30.0, |v| v == 1.0);
    let body = |seed: u64, unit: Value| {
        with_units(json!({"prompt": "a tree", "seed": seed, "width": 64, "height": 64}), json!([unit]))
    };
    let bodies = [
        body(1, json!({"image": png64, "model": "cn-sd15-a"})),
        body(2, json!({"image": png_smooth, "model": "cn-sd15-a", "weight": 0.5})),
        body(3, json!({"image": png64, "model": "cn-sd15-a", "guidance_end": 0.5})),
        body(4, json!({"image": png64, "model": "cn-sd15-b"})),
    ];
    let clients: Vec<_> = bodies.iter().map(|b| send(&s.addr, "POST", "/sdapi/v1/txt2img", b.as_bytes())).collect();
    s.wait_metric("lcm_queue_depth", 30.0, |v| v == 4.0);
    drop(blocker);
    let batches: Vec<String> = clients
        .into_iter()
        .map(|c| {
            let r = read_response(c);
            assert_eq!(r.status, 200, "{}", r.body_text());
            r.header("x-lcm-batch-images").unwrap().to_string()
        })
        .collect();
    assert_eq!(batches, ["2", "2", "1", "1"]);
}

#[test]
fn bad_controlnet_units_get_a_4xx_naming_their_json_path() {
    let s = Server::start("cn-bad", &["--controlnet-dir", cn_dir().to_str().unwrap()]);
    let (png64, _) = control_image("canny_64x64.png");
    let t2i = "/sdapi/v1/txt2img";
    let base = json!({"prompt": "a", "width": 64, "height": 64, "steps": 2});
    let unit = |extra: Value| {
        let mut u = json!({"image": png64, "model": "cn-sd15-a"});
        u.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        with_units(base.clone(), json!([{"image": png64, "model": "cn-sd15-a"}, u]))
    };
    let at = "alwayson_scripts.controlnet.args[1]";
    let cases: Vec<(String, String)> = vec![
        (unit(json!({"model": "canny-xl"})), format!("{at}.model")),
        (unit(json!({"model": cn_dir().join("cn-sd15-a").to_str().unwrap()})), format!("{at}.model")),
        (unit(json!({"image": null})), format!("{at}.image")),
        (unit(json!({"image": "%%%"})), format!("{at}.image")),
        (unit(json!({"image": b64(b"not a png")})), format!("{at}.image")),
        (unit(json!({"module": "canny", "threshold_a": 256})), format!("{at}.threshold_a")),
        (unit(json!({"module": "openpose"})), format!("{at}.module")),
        (unit(json!({"weight": "1"})), format!("{at}.weight")),
        (unit(json!({"guidance_start": 0.8, "guidance_end": 0.2})), format!("{at}.guidance_end")),
        (unit(json!({"control_mode": "My prompt is more important"})), format!("{at}.control_mode")),
        (unit(json!({"mask": "x"})), format!("{at}.mask")),
        (with_units(base.clone(), json!("x")), "alwayson_scripts.controlnet.args".into()),
        (
            json!({"prompt": "a", "alwayson_scripts": {"regional_prompter": {"args": []}}}).to_string(),
            "alwayson_scripts.regional_prompter".into(),
        ),
    ];
    for (body, field) in &cases {
        let r = s.post(t2i, body);
        let shown: String = body.chars().take(120).collect();
        assert_eq!(r.status, 400, "{shown}: {}", r.body_text());
        assert_eq!(r.error_field(), *field, "{shown}: {}", r.body_text());
    }
    let r = s.post(t2i, &unit(json!({"model": "canny-xl"})));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("there are: cn-sd15-a, cn-sd15-b, cn-sdxl, cn_sd15_a"), "{msg}");
    assert_eq!(s.metric("lcm_images_total"), 0.0, "a refused request reached the worker");

    // An SDXL ControlNet on the SD1.5 model: refused when the request runs, naming the unit's model by
    // its name, never its path; the server goes on.
    let r = s.post(t2i, &unit(json!({"model": "cn-sdxl"})));
    assert_eq!((r.status, r.error_field()), (400, format!("{at}.model")), "{}", r.body_text());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("cn-sdxl") && !msg.contains(cn_dir().to_str().unwrap()), "{msg}");
    let r = s.post(t2i, &unit(json!({})));
    assert_eq!(r.status, 200, "{}", r.body_text());

    // A server without --controlnet-dir refuses units clearly (and serves without them).
    let plain = Server::start("cn-none", &[]);
    let r = plain.post(t2i, &with_units(base.clone(), json!([{"image": png64, "model": "cn-sd15-a"}])));
    assert_eq!((r.status, r.error_field().as_str()), (400, "alwayson_scripts.controlnet.args[0]"), "{}", r.body_text());
    assert!(r.body_text().contains("--controlnet-dir"), "{}", r.body_text());
    assert!(plain.get("/controlnet/model_list").json()["model_list"].as_array().unwrap().is_empty());
    let r = plain.post(t2i, &with_units(base.clone(), json!([{"enabled": false, "image": png64}])));
    assert_eq!(r.status, 200, "{}", r.body_text());
}
