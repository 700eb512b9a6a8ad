use lcm_pipeline::scheduler::{SamplerKind, SamplerOptions};
use lcm_pipeline::spec::SizeRule;
use serde_json::json;

use super::*;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 32 << 20,
        max_prompt_chars: 100,
        size: SizeRule::up_to("max_size", 512).unwrap(),
        max_images: 4,
        max_steps: 8,
        max_loras: 8,
        sampler: SamplerOptions::new(SamplerKind::Lcm),
    }
}

fn defaults() -> Defaults {
    Defaults { width: 64, height: 64, ..Defaults::default() }
}

fn parse(body: Value) -> Result<(Option<String>, Vec<Request>), ApiError> {
    parse_infer(body.to_string().as_bytes(), &limits(), &defaults())
}

/// The error text a client sees.
fn error(body: Value) -> String {
    let e = parse(body).expect_err("refused");
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    match e.field {
        Some(f) => format!("{f}: {}", e.message),
        None => e.message,
    }
}

fn prompt(rows: &[&str]) -> Value {
    json!({"name": "prompt", "shape": [rows.len(), 1], "datatype": "BYTES", "data": rows})
}

#[test]
fn rows_become_requests_with_their_settings() {
    let (id, reqs) = parse(json!({"id": "r1", "inputs": [
        prompt(&["a cat", "a dog"]),
        {"name": "seed", "shape": [2, 1], "datatype": "INT64", "data": [[7], [8]]},
        {"name": "steps", "shape": [2, 1], "datatype": "INT32", "data": [2, 3]},
        {"name": "guidance_scale", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 1.5]},
        {"name": "width", "shape": [2, 1], "datatype": "INT32", "data": [128, 128]},
    ], "outputs": [{"name": "image"}]}))
    .unwrap();
    assert_eq!(id.as_deref(), Some("r1"));
    assert_eq!(reqs.len(), 2);
    assert_eq!((reqs[0].prompt.as_str(), reqs[0].seed, reqs[0].steps), ("a cat", 7, 2));
    assert_eq!((reqs[1].prompt.as_str(), reqs[1].seed, reqs[1].steps, reqs[1].guidance_scale), ("a dog", 8, 3, 1.5));
    assert_eq!((reqs[1].width, reqs[1].height), (128, 64), "height from the defaults");
}

#[test]
fn refusals_name_the_input_and_what_it_takes() {
    let cases = [
        (json!({"inputs": []}), "input 'prompt': missing"),
        (json!({"inputs": [prompt(&["x"])], "extra": 1}), "extra: unknown field"),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}),
            "input 'prompt': datatype INT32: expected BYTES",
        ),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "FP64", "data": [1]}]}),
            "input 'prompt': datatype \"FP64\": expected BYTES",
        ),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}]}),
            "input 'prompt': shape [1, 2]",
        ),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": [3]}]}),
            "input 'prompt': data[0] is 3: expected a string",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [0]}]}),
            "input 'steps': 0: expected 1 or more",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [9]}]}),
            "input 'steps': 9: expected 1..=8",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "width", "shape": [1, 1], "datatype": "INT32", "data": [100]}]}),
            "input 'width': 100: expected",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "height", "shape": [1, 1], "datatype": "INT32", "data": [1024]}]}),
            "input 'height': 1024: expected",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "seed", "shape": [1, 1], "datatype": "INT64", "data": [-5]}]}),
            "input 'seed': -5",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "steps", "shape": [1, 1], "datatype": "INT32", "data": [1.5]}]}),
            "input 'steps': data[0] is 1.5: expected a 32-bit integer",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "guidance_scale", "shape": [1, 1], "datatype": "FP32", "data": [99]}]}),
            "input 'guidance_scale': 99: expected 0..=50",
        ),
        (
            json!({"inputs": [prompt(&["a", "b", "c", "d", "e"])]}),
            "input 'prompt': batch of 5 rows: at most 4 (--max-images)",
        ),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "strength", "shape": [1, 1], "datatype": "FP32", "data": [0.5]}]}),
            "input 'strength': given without an image",
        ),
        (
            json!({"inputs": [prompt(&["x", "y"]), {"name": "width", "shape": [2, 1], "datatype": "INT32", "data": [64, 128]}]}),
            "input 'width': rows ask for 64x64 and 128x64",
        ),
        (json!({"inputs": [prompt(&["x"])], "outputs": [{"name": "latents"}]}), "outputs[0]: name Some(\"latents\")"),
        (
            json!({"inputs": [prompt(&["x"])], "outputs": [{"name": "image", "parameters": {"binary_data": true}}]}),
            "outputs[0]: binary_data",
        ),
        (json!({"inputs": [prompt(&[&"x".repeat(101)])]}), "input 'prompt': longer than 100 characters"),
        (
            json!({"inputs": [prompt(&["x"]), {"name": "colour", "shape": [1, 1], "datatype": "BYTES", "data": ["red"]}]}),
            "input 'colour': unknown input",
        ),
    ];
    for (body, want) in cases {
        let got = error(body.clone());
        assert!(got.starts_with(want), "{body}\n got: {got}\nwant: {want}…");
    }
}

#[test]
fn img2img_rows_take_their_size_from_the_image() {
    let px: Vec<u8> = (0..64 * 64 * 3).map(|i| (i % 251) as u8).collect();
    let (_, reqs) = parse(json!({"inputs": [
        prompt(&["x"]),
        {"name": "image", "shape": [1, 64, 64, 3], "datatype": "UINT8", "data": px},
        {"name": "strength", "shape": [1, 1], "datatype": "FP32", "data": [0.5]},
    ]}))
    .unwrap();
    assert_eq!((reqs[0].width, reqs[0].height), (64, 64));
    assert_eq!(reqs[0].init_image.as_ref().map(|i| i.strength), Some(0.5));
    let got = error(json!({"inputs": [prompt(&["x"]),
        {"name": "image", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [1, 2, 300]}]}));
    assert!(got.starts_with("input 'image': data[2] is 300: expected an integer in 0..=255"), "{got}");
}

#[test]
fn metadata_lists_the_contract_tensors_batch_first() {
    let m = metadata();
    assert_eq!(m["name"], "lcm");
    assert_eq!(m["inputs"].as_array().unwrap().len(), INPUTS.len());
    assert_eq!(m["inputs"][0], json!({"name": "prompt", "datatype": "BYTES", "shape": [-1, 1]}));
    assert_eq!(m["outputs"][0], json!({"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}));
}

#[test]
fn the_answer_is_one_uint8_tensor_in_row_order() {
    let body = answer(Some("q\"1".into()), &[vec![1, 2, 3], vec![4, 5, 6]], 1, 1);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "q\"1");
    assert_eq!(v["model_name"], "lcm");
    assert_eq!(
        v["outputs"][0],
        json!({"name": "image", "datatype": "UINT8", "shape": [2, 1, 1, 3], "data": [1, 2, 3, 4, 5, 6]})
    );
}
