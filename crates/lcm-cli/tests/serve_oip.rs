//! `lcm serve`'s Open Inference Protocol routes (KServe v2 REST) on the tiny fixture (CPU): the probes
//! and metadata, infer rows giving `lcm generate`'s pixels for the same settings (rows of different
//! settings in one call too), refusals as `{"error": …}` naming the input, and the server serving on
//! after them.

mod serve_util;

use serde_json::{json, Value};
use serve_util::*;

fn infer(s: &Server, body: &Value) -> Resp {
    s.post("/v2/models/lcm/infer", &body.to_string())
}

/// The rows of an answer's `image` tensor: (shape, one RGB per row).
fn rows(r: &Resp) -> (Vec<u64>, Vec<Vec<u8>>) {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = r.json();
    let out = &j["outputs"][0];
    assert_eq!((out["name"].as_str(), out["datatype"].as_str()), (Some("image"), Some("UINT8")), "{out}");
    let shape: Vec<u64> = out["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
    let data: Vec<u8> = out["data"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect();
    let per_row = (shape[1] * shape[2] * shape[3]) as usize;
    assert_eq!(data.len(), shape[0] as usize * per_row);
    (shape, data.chunks(per_row).map(<[u8]>::to_vec).collect())
}

fn ints(name: &str, dtype: &str, v: &[i64]) -> Value {
    json!({"name": name, "shape": [v.len(), 1], "datatype": dtype, "data": v})
}

#[test]
fn oip_probes_metadata_and_infer_give_lcm_generates_pixels() {
    let s = Server::start("oip", &[]);
    assert_eq!(s.get("/v2/health/live").json(), json!({"live": true}));
    assert_eq!(s.get("/v2/health/ready").json(), json!({"ready": true}));
    assert_eq!(s.get("/v2/models/lcm/ready").json(), json!({"ready": true, "name": "lcm"}));
    assert_eq!(s.get("/v2").json()["name"], "lcm");
    let meta = s.get("/v2/models/lcm").json();
    assert_eq!(meta["inputs"][0], json!({"name": "prompt", "datatype": "BYTES", "shape": [-1, 1]}));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, -1, -1, 3]));

    // Two rows, each its own prompt and seed: one job, one [2, 64, 64, 3] tensor.
    let r = infer(
        &s,
        &json!({"id": "two", "inputs": [
            {"name": "prompt", "shape": [2, 1], "datatype": "BYTES", "data": ["a red house", "a boat"]},
            ints("seed", "INT64", &[7, 11]),
            ints("steps", "INT32", &[3, 3]),
            ints("width", "INT32", &[64, 64]),
            ints("height", "INT32", &[64, 64]),
        ]}),
    );
    assert_eq!(r.json()["id"], "two");
    let (shape, got) = rows(&r);
    assert_eq!(shape, [2, 64, 64, 3]);
    let size = ["--width", "64", "--height", "64"];
    let want0 =
        lcm_generate("oip-ref0", &[&["--prompt", "a red house", "--seed", "7", "--steps", "3"][..], &size].concat(), 1);
    let want1 =
        lcm_generate("oip-ref1", &[&["--prompt", "a boat", "--seed", "11", "--steps", "3"][..], &size].concat(), 1);
    assert!(got[0] == want0[0], "row 0: pixels differ from lcm generate");
    assert!(got[1] == want1[0], "row 1: pixels differ from lcm generate");
    assert!(want0[0] != want1[0], "the two rows are the same image: the comparison proves little");
    assert_eq!(s.metric("lcm_batch_images_count"), 1.0, "two rows that batch are one batch");

    // Rows with different steps cannot share a graph: two jobs, answered in row order. Nested `data`
    // (row-major) as the protocol allows.
    let r = infer(
        &s,
        &json!({"inputs": [
            {"name": "prompt", "shape": [2, 1], "datatype": "BYTES", "data": [["a boat"], ["a red house"]]},
            {"name": "seed", "shape": [2, 1], "datatype": "INT64", "data": [[11], [7]]},
            {"name": "steps", "shape": [2, 1], "datatype": "INT32", "data": [[2], [3]]},
            {"name": "width", "shape": [2, 1], "datatype": "INT32", "data": [[64], [64]]},
            {"name": "height", "shape": [2, 1], "datatype": "INT32", "data": [[64], [64]]},
        ]}),
    );
    let (_, got) = rows(&r);
    let want_2steps =
        lcm_generate("oip-ref2", &[&["--prompt", "a boat", "--seed", "11", "--steps", "2"][..], &size].concat(), 1);
    assert!(got[0] == want_2steps[0], "row 0 (2 steps): pixels differ from lcm generate");
    assert!(got[1] == want0[0], "row 1 (3 steps): pixels differ from lcm generate");
    assert_eq!(s.metric("lcm_batch_images_count"), 3.0, "rows of different steps run as two batches");
    assert_eq!(s.metric("lcm_requests_total{endpoint=\"/v2/models/lcm/infer\",status=\"200\"}"), 2.0);
}

#[test]
fn oip_refusals_are_400s_naming_the_input_and_the_server_serves_on() {
    let s = Server::start("oip-bad", &["--max-images", "4"]);
    let p = json!({"name": "prompt", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]});
    let cases = [
        (json!({"inputs": []}), "input 'prompt': missing"),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}),
            "input 'prompt': datatype FP32",
        ),
        (
            json!({"inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}),
            "input 'prompt': shape [1]",
        ),
        (json!({"inputs": [p, ints("width", "INT32", &[100])]}), "input 'width': 100"),
        (json!({"inputs": [p, ints("steps", "INT32", &[-2])]}), "input 'steps': -2"),
        (
            json!({"inputs": [{"name": "prompt", "shape": [9, 1], "datatype": "BYTES", "data": vec!["x"; 9]}]}),
            "input 'prompt': batch of 9 rows",
        ),
        (json!({"inputs": [p, ints("seed", "INT32", &[1])]}), "input 'seed': datatype INT32: expected INT64"),
        (json!({"inputs": "prompt"}), "inputs: expected an array"),
    ];
    for (body, want) in &cases {
        let r = infer(&s, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body_text());
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.starts_with(want), "{body}\n got: {msg}\nwant: {want}…");
    }
    let r = s.post("/v2/models/lcm/infer", "{not json");
    assert_eq!(r.status, 400, "{}", r.body_text());
    assert!(r.json()["error"].is_string(), "{}", r.body_text());
    assert_eq!(s.get("/v2/models/other").status, 404);

    let r = infer(
        &s,
        &json!({"inputs": [p, ints("width", "INT32", &[64]), ints("height", "INT32", &[64]), ints("steps", "INT32", &[1])]}),
    );
    assert_eq!(rows(&r).0, [1, 64, 64, 3]);
    assert_eq!(
        s.metric("lcm_requests_total{endpoint=\"/v2/models/lcm/infer\",status=\"400\"}"),
        (cases.len() + 1) as f64
    );
}
