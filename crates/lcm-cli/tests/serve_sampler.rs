//! `lcm serve`'s samplers on the tiny SD-Turbo fixture (CPU): A1111's `sampler_name`, `scheduler` and
//! `eta` and the OpenAI routes' `sampler` give `lcm generate --scheduler/--eta/--timestep-spacing`'s
//! pixels, the answer and PNG name the sampler run, `/sdapi/v1/samplers` lists what runs, and
//! sampler fields lcm cannot honour get a 400 naming the field; `lcm serve --scheduler` sets the
//! default.

mod serve_util;

use serde_json::{json, Value};
use serve_util::*;

fn turbo() -> std::path::PathBuf {
    fixtures().join("sd2/tiny-sd-turbo")
}

/// The one image of a 200 answer: its RGB and PNG parameters.
fn image(r: &Resp) -> (Vec<u8>, String) {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = r.json();
    let b = j.get("data").map(|d| &d[0]["b64_json"]).unwrap_or(&j["images"][0]).as_str().unwrap().to_string();
    let (_, _, rgb, params) = png_rgb(&b);
    (rgb, params)
}

fn txt2img(extra: Value) -> String {
    let mut body = json!({"prompt": "a red house", "seed": 5, "steps": 2, "cfg_scale": 1, "width": 64, "height": 64});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

fn generate(name: &str, extra: &[&str]) -> Vec<u8> {
    let mut args = vec!["--prompt", "a red house", "--seed", "5", "--steps", "2", "--width", "64", "--height", "64"];
    args.extend_from_slice(extra);
    lcm_generate_model(name, &turbo(), &args, 1).remove(0)
}

#[test]
fn a1111_and_openai_samplers_give_lcm_generates_pixels() {
    let s = Server::start_model("sampler", &turbo(), &[]);

    // "Euler a" (any case): `lcm generate --scheduler euler-a`.
    let r = s.post("/sdapi/v1/txt2img", &txt2img(json!({"sampler_name": "Euler a", "scheduler": "Automatic"})));
    let (got, params) = image(&r);
    let want = generate("sampler-euler-a", &["--scheduler", "euler-a"]);
    assert!(got == want, "A1111 \"Euler a\": pixels differ from lcm generate --scheduler euler-a");
    assert!(params.contains("sampler: Euler a"), "{params}");
    assert_eq!(r.json()["parameters"]["sampler_name"], "Euler a");
    let info: Value = serde_json::from_str(r.json()["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sampler_name"], "Euler a");
    let r = s.post("/sdapi/v1/txt2img", &txt2img(json!({"sampler_name": "Euler A", "eta": 1})));
    assert!(image(&r).0 == want, "\"Euler A\": pixels differ");
    let r = s.post(
        "/v1/images/generations",
        &json!({"prompt": "a red house", "seed": 5, "steps": 2, "size": "64x64", "sampler": "euler-a"}).to_string(),
    );
    assert!(image(&r).0 == want, "OpenAI sampler euler-a: pixels differ");

    // DDIM with eta and A1111's "SGM Uniform" (diffusers' trailing spacing).
    let r =
        s.post("/sdapi/v1/txt2img", &txt2img(json!({"sampler_name": "DDIM", "eta": 0.5, "scheduler": "SGM Uniform"})));
    let (got, params) = image(&r);
    let want_ddim =
        generate("sampler-ddim", &["--scheduler", "ddim", "--eta", "0.5", "--timestep-spacing", "trailing"]);
    assert!(got == want_ddim, "A1111 DDIM eta 0.5 SGM Uniform: pixels differ from lcm generate");
    assert!(want_ddim != want, "DDIM and Euler a gave one image: the comparisons prove nothing");
    assert!(params.contains("sampler: DDIM, eta: 0.5, timestep spacing: trailing"), "{params}");
    assert_eq!(r.json()["parameters"]["scheduler"], "SGM Uniform");

    // No sampler named: the server's (LCM by default), named in the answer.
    let r = s.post("/sdapi/v1/txt2img", &txt2img(json!({})));
    assert!(image(&r).0 == generate("sampler-lcm", &[]), "the default sampler: pixels differ");
    assert_eq!(r.json()["parameters"]["sampler_name"], "LCM");

    let names: Vec<String> = s
        .get("/sdapi/v1/samplers")
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().into())
        .collect();
    assert_eq!(names, ["LCM", "TCD", "Euler", "Euler a", "DDIM"]);
    let r = s.get("/sdapi/v1/schedulers");
    assert_eq!(r.json()[1]["label"], "SGM Uniform", "{}", r.body_text());

    let t2i = "/sdapi/v1/txt2img";
    let cases = [
        (t2i, txt2img(json!({"sampler_name": "DPM++ 2M"})), "sampler_name"),
        (t2i, txt2img(json!({"sampler_name": 3})), "sampler_name"),
        (t2i, txt2img(json!({"sampler_index": "Heun"})), "sampler_index"),
        (t2i, txt2img(json!({"sampler_name": "DDIM", "eta": 1.5})), "eta"),
        (t2i, txt2img(json!({"sampler_name": "TCD", "eta": -0.1})), "eta"),
        (t2i, txt2img(json!({"sampler_name": "Euler a", "eta": 0.5})), "eta"),
        (t2i, txt2img(json!({"sampler_name": "Euler", "scheduler": "Karras"})), "scheduler"),
        (t2i, txt2img(json!({"sampler_name": "LCM", "scheduler": "SGM Uniform"})), "scheduler"),
        (t2i, txt2img(json!({"sampler_name": "Euler", "s_noise": 0.5})), "s_noise"),
        (t2i, txt2img(json!({"sampler_name": "LCM", "steps": 60})), "steps"),
        ("/v1/images/generations", json!({"prompt": "a", "sampler": "dpm"}).to_string(), "sampler"),
    ];
    for (path, body, field) in &cases {
        let r = s.post(path, body);
        assert_eq!((r.status, r.error_field().as_str()), (400, *field), "{body}: {}", r.body_text());
    }
    let r = s.post(t2i, &cases[0].1);
    assert!(r.body_text().contains("Euler a"), "the refusal lists the samplers: {}", r.body_text());
    // k-diffusion's fields at their no-op values are accepted.
    let r = s.post(t2i, &txt2img(json!({"sampler_name": "Euler", "s_churn": 0, "s_noise": 1, "s_tmin": 0})));
    assert_eq!(r.status, 200, "{}", r.body_text());
}

#[test]
fn serve_scheduler_sets_the_default() {
    let s = Server::start_model("sampler-default", &turbo(), &["--scheduler", "auto"]);
    let r = s.post("/sdapi/v1/txt2img", &txt2img(json!({})));
    let (got, params) = image(&r);
    assert!(got == generate("sampler-auto", &["--scheduler", "auto"]), "--scheduler auto: pixels differ");
    assert!(params.contains("sampler: Euler"), "{params}");
    assert_eq!(r.json()["parameters"]["sampler_name"], "Euler");

    let mut bad = std::process::Command::new(env!("CARGO_BIN_EXE_lcm"));
    let model = turbo();
    bad.args(["serve", "--model", model.to_str().unwrap(), "--device", "cpu", "--port", "0"]);
    let o = bad.args(["--scheduler", "euler", "--eta", "0.5"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("eta"), "{err}");
}
