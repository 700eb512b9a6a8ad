//! The Open Inference Protocol (KServe's v2 REST, Triton's HTTP API): `/v2`, `/v2/health/live`,
//! `/v2/health/ready`, `/v2/models/lcm`, `/v2/models/lcm/ready` and `POST /v2/models/lcm/infer`, over the
//! tensor contract the Triton backend serves (`lcm_pipeline::infer`: its inputs, output and checks are
//! defined there once; this module only reads JSON tensors into [`infer::Input`]s and writes the output
//! tensor back).
//!
//! An infer call's rows go to the queue as one job when they batch together (`Request::batches_with`),
//! else as one job per group of rows that do; the answer is one `image` tensor `[rows, H, W, 3]` UINT8,
//! rows in the request's order. Every refusal is `{"error": "..."}` (the protocol's shape) naming the
//! input: `input 'steps': 0: expected 1 or more`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lcm_core::Error;
use lcm_pipeline::infer::{self, Data, DataType, Defaults, Input, INPUTS, OUTPUT};
use lcm_pipeline::spec::{Field, Request};
use serde_json::{json, Value};

use super::api::{random_seed, Api, Generation, Limits, MAX_GUIDANCE};
use super::error::ApiError;
use super::http::{admit, guarded, queue_job, read_body, wait_job, App};

/// The model's name in the routes (the Triton model repository's `lcm`, whatever folder is loaded).
pub const MODEL: &str = "lcm";
/// The one version served.
const VERSION: &str = "1";
/// The infer route, as metrics label it.
pub const INFER: &str = "/v2/models/lcm/infer";

/// An error as the protocol answers it: `{"error": "..."}` with the status (and `Retry-After`).
pub fn error_response(e: ApiError) -> Response {
    let text = match &e.field {
        Some(f) => format!("{f}: {}", e.message),
        None => e.message.clone(),
    };
    let mut resp = (e.status, Json(json!({ "error": text }))).into_response();
    if let Some(s) = e.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// An engine error as a 400 naming the input (`input 'steps': …`), or a 500 (`super::api::engine_error`
/// for this API).
pub fn engine_refusal(e: &Error) -> ApiError {
    let Error::Invalid { what, msg } = e else {
        return ApiError::internal(format!("generation failed: {e}"));
    };
    let input = match Field::of(e) {
        Some(Field::Width) => "width",
        Some(Field::Height) => "height",
        Some(Field::Steps) => "steps",
        Some(Field::GuidanceScale) => "guidance_scale",
        Some(Field::Strength) => "strength",
        Some(Field::InitImage) => "image",
        Some(Field::Prompt) => "prompt",
        Some(Field::NegativePrompt) => "negative_prompt",
        // `infer::requests` already names its inputs (`input 'seed'`).
        _ => return ApiError::bad(what, msg.clone()),
    };
    ApiError::bad(format!("input '{input}'"), msg.clone())
}

fn bad_input(name: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad(format!("input '{name}'"), msg)
}

/// `GET /v2`: the server's metadata.
pub async fn server_metadata() -> Response {
    Json(json!({"name": "lcm", "version": env!("CARGO_PKG_VERSION"), "extensions": []})).into_response()
}

/// The protocol's health answer: 200 when true, a 4xx when false.
fn health(key: &str, ok: bool, extra: Option<(&str, &str)>) -> Response {
    let mut body = json!({ key: ok });
    if let Some((k, v)) = extra {
        body[k] = json!(v);
    }
    let status = if ok { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    (status, Json(body)).into_response()
}

/// `GET /v2/health/live`: the process answers.
pub async fn live() -> Response {
    health("live", true, None)
}

/// `GET /v2/health/ready`: the model is loaded (before the port opens) and the server is not draining.
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    health("ready", !app.is_draining(), None)
}

/// `GET /v2/models/lcm/ready`.
pub async fn model_ready(State(app): State<Arc<App>>) -> Response {
    let mut r = health("ready", !app.is_draining(), Some(("name", MODEL)));
    if app.is_draining() {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
    }
    r
}

/// `GET /v2/models/lcm`: the model's metadata, written from the contract's tensors (batch dimension
/// first, -1 where any size goes).
pub async fn model_metadata() -> Response {
    Json(metadata()).into_response()
}

/// The metadata body (what `GET /v2/models/lcm` answers).
pub fn metadata() -> Value {
    let tensor = |t: &infer::TensorSpec| {
        let shape: Vec<i64> = std::iter::once(-1).chain(t.dims.iter().copied()).collect();
        json!({"name": t.name, "datatype": t.dtype.name(), "shape": shape})
    };
    json!({
        "name": MODEL,
        "versions": [VERSION],
        "platform": "lcm",
        "inputs": INPUTS.iter().map(tensor).collect::<Vec<_>>(),
        "outputs": [tensor(&OUTPUT)],
    })
}

/// `POST /v2/models/lcm/infer`.
pub async fn infer(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let resp = guarded(&app.metrics, run_infer(app.clone(), headers, body)).await;
    app.metrics.request(INFER, resp.status().as_u16());
    resp
}

async fn run_infer(app: Arc<App>, headers: HeaderMap, body: Body) -> Response {
    match infer_inner(&app, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

async fn infer_inner(app: &Arc<App>, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    if headers.contains_key("inference-header-content-length") {
        return Err(ApiError::bad(
            "Inference-Header-Content-Length",
            "the binary tensor extension is not supported: send the tensors as JSON `data`",
        ));
    }
    let _in_flight = admit(app)?;
    let bytes = read_body(app, body).await?;
    let (limits, defaults) = (app.limits.clone(), app.oip_defaults);
    let (id, reqs) = tokio::task::spawn_blocking(move || parse_infer(&bytes, &limits, &defaults))
        .await
        .map_err(|_| ApiError::internal("request parsing panicked; see the server log"))??;

    // Rows that batch together are one job; queue every job before waiting for any.
    let mut groups: Vec<(Vec<usize>, Vec<Request>)> = Vec::new();
    for (row, req) in reqs.into_iter().enumerate() {
        match groups.iter_mut().find(|g| g.1[0].batches_with(&req)) {
            Some(g) => {
                g.0.push(row);
                g.1.push(req);
            }
            None => groups.push((vec![row], vec![req])),
        }
    }
    let rows = groups.iter().map(|g| g.0.len()).sum::<usize>();
    let mut tickets = Vec::with_capacity(groups.len());
    for (_, reqs) in &groups {
        let gen = Generation { reqs: reqs.clone(), loras: Vec::new(), controls: Vec::new() };
        tickets.push(queue_job(app, Api::Oip, &gen)?);
    }
    let mut images: Vec<Vec<u8>> = vec![Vec::new(); rows];
    let (mut width, mut height) = (0, 0);
    for ((rows_of, _), ticket) in groups.iter().zip(tickets) {
        let out = wait_job(app, ticket, t0).await?;
        (width, height) = (out.width, out.height);
        for (&row, rgb) in rows_of.iter().zip(out.images) {
            images[row] = rgb;
        }
    }
    let body = tokio::task::spawn_blocking(move || answer(id, &images, width, height))
        .await
        .map_err(|_| ApiError::internal("encoding the response panicked; see the server log"))?;
    app.metrics.stage(super::metrics::Stage::Request, t0.elapsed());
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The response body, written directly: an image is ~10^6 numbers, too many for a `Value` each.
fn answer(id: Option<String>, images: &[Vec<u8>], width: usize, height: usize) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(images.iter().map(|i| i.len() * 4).sum::<usize>() + 256);
    s.push_str("{\"model_name\":\"lcm\",\"model_version\":\"1\",");
    if let Some(id) = id {
        let _ = write!(s, "\"id\":{},", Value::String(id));
    }
    let _ = write!(
        s,
        "\"outputs\":[{{\"name\":\"{}\",\"datatype\":\"{}\",\"shape\":[{},{height},{width},3],\"data\":[",
        OUTPUT.name,
        OUTPUT.dtype.name(),
        images.len()
    );
    let mut first = true;
    for b in images.iter().flatten() {
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(s, "{b}");
    }
    s.push_str("]}]}");
    s
}

/// An infer body: its `id` and one pipeline request per row, checked against `limits` (size, steps,
/// rows, prompt length, guidance) as the other routes check theirs, before anything is queued.
pub fn parse_infer(
    body: &[u8],
    limits: &Limits,
    defaults: &Defaults,
) -> Result<(Option<String>, Vec<Request>), ApiError> {
    let obj = super::api::parse_object(body)?;
    for key in obj.keys() {
        if !["id", "parameters", "inputs", "outputs"].contains(&key.as_str()) {
            return Err(ApiError::bad(key, "unknown field; an infer request has id, parameters, inputs, outputs"));
        }
    }
    let id = match obj.get("id") {
        None => None,
        Some(Value::String(s)) if s.len() <= 256 => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("id", "expected a string of at most 256 bytes")),
    };
    if let Some(outputs) = obj.get("outputs") {
        requested_outputs(outputs)?;
    }
    let Some(Value::Array(list)) = obj.get("inputs") else {
        return Err(ApiError::bad("inputs", "expected an array of tensors {name, shape, datatype, data}"));
    };
    let inputs = list.iter().enumerate().map(|(k, t)| tensor(k, t)).collect::<Result<Vec<_>, _>>()?;
    if let Some(rows) = inputs.first().and_then(|i| i.shape.first()) {
        if *rows as usize > limits.max_images {
            return Err(bad_input(
                &inputs[0].name,
                format!("batch of {rows} rows: at most {} (--max-images)", limits.max_images),
            ));
        }
    }
    let reqs = infer::requests(&inputs, defaults, &mut random_seed).map_err(|e| engine_refusal(&e))?;
    for req in &reqs {
        check_limits(req, limits, inputs.iter().any(|i| i.name == "image"))?;
    }
    if let Some(r) = reqs.iter().find(|r| (r.width, r.height) != (reqs[0].width, reqs[0].height)) {
        return Err(bad_input(
            "width",
            format!(
                "rows ask for {}x{} and {}x{}: one infer call answers one [batch, H, W, 3] tensor; send each size in its own call",
                reqs[0].width, reqs[0].height, r.width, r.height
            ),
        ));
    }
    Ok((id, reqs))
}

/// The server's bounds on one row (`--max-size`, the sampler's most steps, prompt length, guidance).
fn check_limits(req: &Request, limits: &Limits, img2img: bool) -> Result<(), ApiError> {
    let size_input = |name: &'static str| if img2img { "image" } else { name };
    for (name, side) in [("width", req.width), ("height", req.height)] {
        limits.size.check(&format!("input '{}'", size_input(name)), side).map_err(|e| engine_refusal(&e))?;
    }
    if req.steps > limits.max_steps {
        return Err(bad_input(
            "steps",
            format!("{}: expected 1..={} (the server's sampler)", req.steps, limits.max_steps),
        ));
    }
    if !(req.guidance_scale.is_finite() && (0.0..=MAX_GUIDANCE).contains(&req.guidance_scale)) {
        return Err(bad_input("guidance_scale", format!("{}: expected 0..={MAX_GUIDANCE}", req.guidance_scale)));
    }
    for (name, text) in [("prompt", Some(&req.prompt)), ("negative_prompt", req.negative_prompt.as_ref())] {
        if text.is_some_and(|t| t.chars().count() > limits.max_prompt_chars) {
            return Err(bad_input(name, format!("longer than {} characters", limits.max_prompt_chars)));
        }
    }
    req.validate(limits.max_steps).map_err(|e| engine_refusal(&e))
}

/// `outputs`: only `image` exists, and only as JSON.
fn requested_outputs(outputs: &Value) -> Result<(), ApiError> {
    let Value::Array(list) = outputs else {
        return Err(ApiError::bad("outputs", "expected an array of {name}"));
    };
    for (k, o) in list.iter().enumerate() {
        let field = format!("outputs[{k}]");
        match o.get("name").and_then(Value::as_str) {
            Some(n) if n == OUTPUT.name => {}
            other => {
                return Err(ApiError::bad(
                    field,
                    format!("name {other:?}: the model's only output is '{}'", OUTPUT.name),
                ))
            }
        }
        if o.pointer("/parameters/binary_data").and_then(Value::as_bool) == Some(true) {
            return Err(ApiError::bad(field, "binary_data: the binary tensor extension is not supported"));
        }
    }
    Ok(())
}

/// The `k`th tensor of `inputs`: its elements flattened (the protocol allows nested arrays in
/// row-major order) and typed by its `datatype`.
fn tensor(k: usize, t: &Value) -> Result<Input, ApiError> {
    let Some(obj) = t.as_object() else {
        return Err(ApiError::bad(format!("inputs[{k}]"), "expected a tensor {name, shape, datatype, data}"));
    };
    let Some(name) = obj.get("name").and_then(Value::as_str) else {
        return Err(ApiError::bad(format!("inputs[{k}].name"), "expected the input's name (a string)"));
    };
    let spec = INPUTS.iter().find(|s| s.name == name);
    let shape = match obj.get("shape").and_then(Value::as_array) {
        Some(dims) => {
            dims.iter().map(|d| d.as_i64().filter(|&d| d >= 0)).collect::<Option<Vec<i64>>>().ok_or_else(|| {
                bad_input(name, format!("shape {}: expected non-negative integers", Value::Array(dims.clone())))
            })?
        }
        None => return Err(bad_input(name, "missing shape (an array of dimensions, batch first)")),
    };
    let dtype_name = obj.get("datatype").and_then(Value::as_str).unwrap_or("");
    let Some(dtype) = DataType::parse(dtype_name) else {
        let expected = spec.map_or_else(
            || DataType::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", "),
            |s| s.dtype.name().to_string(),
        );
        return Err(bad_input(name, format!("datatype {dtype_name:?}: expected {expected}")));
    };
    if obj.get("parameters").and_then(|p| p.get("binary_data_size")).is_some() {
        return Err(bad_input(name, "binary_data_size: the binary tensor extension is not supported"));
    }
    let mut flat = Vec::new();
    match obj.get("data") {
        Some(d) => flatten(d, &mut flat),
        None => return Err(bad_input(name, "missing data (the elements, row-major)")),
    }
    let data = elements(name, dtype, &flat)?;
    if let Some(unknown) =
        obj.keys().find(|k| !["name", "shape", "datatype", "parameters", "data"].contains(&k.as_str()))
    {
        return Err(bad_input(name, format!("unknown field '{unknown}'")));
    }
    Ok(Input { name: name.to_string(), shape, data })
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn elements(name: &str, dtype: DataType, flat: &[&Value]) -> Result<Data, ApiError> {
    let bad = |i: usize, what: &str| bad_input(name, format!("data[{i}] is {}: expected {what}", kind(flat[i])));
    let ints = |lo: i64, hi: i64, what: &str| {
        flat.iter()
            .enumerate()
            .map(|(i, v)| v.as_i64().filter(|x| (lo..=hi).contains(x)).ok_or_else(|| bad(i, what)))
            .collect::<Result<Vec<i64>, _>>()
    };
    Ok(match dtype {
        DataType::Bytes => Data::Bytes(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_str().map(|s| s.as_bytes().to_vec()).ok_or_else(|| bad(i, "a string")))
                .collect::<Result<_, _>>()?,
        ),
        DataType::Uint8 => Data::Uint8(ints(0, 255, "an integer in 0..=255")?.into_iter().map(|x| x as u8).collect()),
        DataType::Int32 => Data::Int32(
            ints(i32::MIN as i64, i32::MAX as i64, "a 32-bit integer")?.into_iter().map(|x| x as i32).collect(),
        ),
        DataType::Int64 => Data::Int64(ints(i64::MIN, i64::MAX, "a 64-bit integer")?),
        DataType::Fp32 => Data::Fp32(
            flat.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64().map(|x| x as f32).filter(|x| x.is_finite()).ok_or_else(|| bad(i, "a finite number"))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn kind(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() > 40 => "a string".into(),
        other => {
            let t = other.to_string();
            if t.len() > 40 {
                "a value".into()
            } else {
                t
            }
        }
    }
}

#[cfg(test)]
mod tests;
