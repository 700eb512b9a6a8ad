//! The HTTP side: routes, the generation handlers (read, parse, queue, wait, encode), probes,
//! metrics, and the drain on SIGTERM. Each handler body runs in its own task, so a panic in it is a
//! 500 for that request alone; dropping the connection drops the task, which cancels its work.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use lcm_pipeline::embeddings::EmbeddingSet;
use lcm_pipeline::infer::Defaults;
use lcm_pipeline::output::parameters_text;
use lcm_pipeline::scheduler::SamplerKind;
use lcm_pipeline::spec::{LoraSpec, Request};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::api::{self, Api, Generation, Limits};
use super::auth::{self, ApiKeys};
use super::controlnets::{ControlNetDir, MODULES};
use super::error::ApiError;
use super::loras::LoraDir;
use super::metrics::{Metrics, Stage};
use super::oip;
use super::queue::{Generated, Job, JobResult, JobState, Queue};

/// What every handler shares.
pub struct App {
    pub queue: Arc<Queue>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub loras: LoraDir,
    pub controlnets: ControlNetDir,
    pub timeout: Duration,
    pub max_batch: usize,
    /// Shown in the PNGs' parameters and in `/v1/models`: the model folder's name, never its path.
    pub model_name: String,
    /// The textual-inversion embeddings every request may use.
    pub embeddings: EmbeddingSet,
    pub ids: AtomicU64,
    /// What an Open Inference Protocol request gets for the inputs it leaves out.
    pub oip_defaults: Defaults,
}

impl Api {
    fn endpoint(self) -> &'static str {
        match self {
            Api::OpenAi => "/v1/images/generations",
            Api::Txt2Img => "/sdapi/v1/txt2img",
            Api::Img2Img => "/sdapi/v1/img2img",
            Api::Edits => "/v1/images/edits",
            Api::Oip => oip::INFER,
        }
    }
}

/// Every route; with `keys`, all but the probes and `/metrics` want `Authorization: Bearer KEY`.
pub fn router(app: Arc<App>, debug_hooks: bool, keys: Option<Arc<ApiKeys>>) -> Router {
    let open = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v2/health/live", get(oip::live))
        .route("/v2/health/ready", get(oip::ready));
    let mut r = Router::new()
        .route("/v2", get(oip::server_metadata))
        .route("/v2/models/lcm", get(oip::model_metadata))
        .route("/v2/models/lcm/ready", get(oip::model_ready))
        .route("/v2/models/lcm/infer", post(oip::infer))
        .route("/v1/images/generations", post(|s, h, b| generation(s, h, b, Api::OpenAi)))
        .route("/v1/images/edits", post(|s, h, b| generation(s, h, b, Api::Edits)))
        .route("/sdapi/v1/txt2img", post(|s, h, b| generation(s, h, b, Api::Txt2Img)))
        .route("/sdapi/v1/img2img", post(|s, h, b| generation(s, h, b, Api::Img2Img)))
        .route("/v1/models", get(models))
        .route("/sdapi/v1/loras", get(loras))
        .route("/sdapi/v1/embeddings", get(embeddings))
        .route("/sdapi/v1/samplers", get(samplers))
        .route("/sdapi/v1/schedulers", get(schedulers))
        .route("/controlnet/model_list", get(controlnet_models))
        .route("/controlnet/module_list", get(controlnet_modules));
    if debug_hooks {
        r = r.route("/debug/panic", post(debug_panic));
    }
    if let Some(keys) = keys {
        r = r.route_layer(axum::middleware::from_fn_with_state((keys, app.metrics.clone()), auth::require_key));
    }
    open.merge(r)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, None, "no such endpoint (see docs/serving.md)") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed on this endpoint")
        })
        .with_state(app)
}

/// Runs `fut` as its own task: a panic in it becomes a 500 here, and dropping this future (the client
/// went away) aborts the task.
pub async fn guarded<F: Future<Output = Response> + Send + 'static>(metrics: &Metrics, fut: F) -> Response {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let task = tokio::spawn(fut);
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(resp) => resp,
        Err(e) if e.is_panic() => {
            metrics.panics.fetch_add(1, Ordering::Relaxed);
            ApiError::internal("the request handler panicked; see the server log").into_response()
        }
        Err(_) => ApiError::internal("the request was aborted").into_response(),
    }
}

async fn generation(State(app): State<Arc<App>>, headers: HeaderMap, body: Body, api: Api) -> Response {
    // The edits route's multipart boundary travels in the Content-Type.
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    let resp = guarded(&app.metrics, generate(app.clone(), content_type, body, api)).await;
    app.metrics.request(api.endpoint(), resp.status().as_u16());
    resp
}

/// Counts a request in flight from its body read to its answer.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A queued request whose answer has not come: dropped before `done` (the client disconnected), it
/// cancels the work.
struct Pending {
    state: Arc<JobState>,
    metrics: Arc<Metrics>,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.state.cancel();
            self.metrics.cancelled_disconnect.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn generate(app: Arc<App>, content_type: Option<String>, body: Body, api: Api) -> Response {
    match generate_inner(&app, content_type, body, api).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn generate_inner(
    app: &Arc<App>,
    content_type: Option<String>,
    body: Body,
    api: Api,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let m = &app.metrics;
    let _in_flight = admit(app)?;
    let bytes = read_body(app, body).await?;
    let gen = {
        let app = app.clone();
        // img2img and ControlNet units decode base64 and PNGs (and resize): off the async threads.
        tokio::task::spawn_blocking(move || match api {
            Api::Edits => api::parse_edits(content_type.as_deref(), &bytes, &app.limits, &app.loras),
            _ => api::parse_request_with(api, &bytes, &app.limits, &app.loras, &app.controlnets),
        })
        .await
        .map_err(|_| ApiError::internal("request parsing panicked; see the server log"))??
    };
    let ticket = queue_job(app, api, &gen)?;
    let generated = wait_job(app, ticket, t0).await?;

    let id = app.ids.fetch_add(1, Ordering::Relaxed);
    let batch_images = generated.batch_images;
    let resp = {
        let app = app.clone();
        tokio::task::spawn_blocking(move || respond(&app, api, &gen, generated))
            .await
            .map_err(|_| ApiError::internal("encoding the response panicked; see the server log"))??
    };
    m.stage(Stage::Request, t0.elapsed());
    let mut resp = resp.into_response();
    let h = resp.headers_mut();
    h.insert("x-lcm-request-id", HeaderValue::from(id));
    h.insert("x-lcm-batch-images", HeaderValue::from(batch_images as u64));
    Ok(resp)
}

impl App {
    fn limits_queue(&self) -> usize {
        self.metrics.queue_capacity
    }

    pub fn is_draining(&self) -> bool {
        self.metrics.draining.load(Ordering::SeqCst)
    }
}

/// Lets a generation request in, or refuses it: 503 while draining, 429 when the bodies in flight
/// (each up to --max-body-mb) pass their bound, not only the queue. Held until the answer.
pub fn admit(app: &Arc<App>) -> Result<InFlight, ApiError> {
    let m = &app.metrics;
    if app.is_draining() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "draining: this server is shutting down")
            .retry_after(1));
    }
    let in_flight = m.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let guard = InFlight(m.clone());
    if in_flight > 2 * app.limits_queue() + app.max_batch {
        return Err(busy(app));
    }
    Ok(guard)
}

/// The request body, up to --max-body-mb.
pub async fn read_body(app: &App, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = app.limits.max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, Some("body"), format!("larger than {limit} bytes (--max-body-mb)"))
    })
}

/// A queued job's answer to come: dropped before it comes (the client went away), it cancels the work.
pub struct Ticket {
    rx: oneshot::Receiver<JobResult>,
    pending: Pending,
}

/// Queues `gen`'s requests as one job (429 when the queue is full).
pub fn queue_job(app: &Arc<App>, api: Api, gen: &Generation) -> Result<Ticket, ApiError> {
    let (tx, rx) = oneshot::channel();
    let state = Arc::new(JobState::default());
    let job = Job {
        api,
        reqs: gen.reqs.clone(),
        loras: gen.loras.clone(),
        controls: gen.controls.clone(),
        enqueued: Instant::now(),
        state: state.clone(),
        reply: tx,
    };
    if app.queue.push(job).is_err() {
        return Err(busy(app));
    }
    Ok(Ticket { rx, pending: Pending { state, metrics: app.metrics.clone(), done: false } })
}

/// Waits for a queued job's images until --timeout-s after `t0` (then cancels it: 504).
pub async fn wait_job(app: &App, ticket: Ticket, t0: Instant) -> Result<Generated, ApiError> {
    let Ticket { rx, mut pending } = ticket;
    let waited = tokio::time::timeout(app.timeout.saturating_sub(t0.elapsed()), rx).await;
    pending.done = true;
    match waited {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(ApiError::internal("the worker dropped the request")),
        Err(_) => {
            pending.state.cancel();
            app.metrics.cancelled_timeout.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                None,
                format!("not finished within {} s (--timeout-s); cancelled", app.timeout.as_secs_f64()),
            ))
        }
    }
}

/// 429 with a `Retry-After` from the queue's length and the mean request time so far.
fn busy(app: &App) -> ApiError {
    let waiting = app.queue.len();
    let secs = (app.metrics.mean_request_seconds() * (waiting / app.max_batch.max(1) + 1) as f64).ceil();
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        None,
        format!("the queue is full ({waiting} waiting, --queue {}); retry later", app.metrics.queue_capacity),
    )
    .retry_after((secs as u64).clamp(1, 60))
}

/// PNGs (parameters chunk as `lcm generate` writes it, with the model's and LoRAs' names instead of
/// paths) and the API's response body.
fn respond(app: &App, api: Api, gen: &Generation, out: Generated) -> Result<Json<Value>, ApiError> {
    let t = Instant::now();
    let loras: Vec<LoraSpec> =
        gen.loras.iter().map(|l| LoraSpec { path: l.name.clone().into(), scale: l.scale }).collect();
    let mut b64 = Vec::with_capacity(out.images.len());
    let mut images = out.images.iter();
    for req in &gen.reqs {
        let params = parameters_text(&named_controls(req, gen), &app.model_name, &loras);
        for _ in 0..req.num_images {
            let rgb = images.next().expect("one image per requested image");
            let png = super::png::encode_rgb8(out.width, out.height, rgb, &params).map_err(ApiError::internal)?;
            b64.push(base64::engine::general_purpose::STANDARD.encode(png));
        }
    }
    app.metrics.stage(Stage::Encode, t.elapsed());
    let r0: &Request = &gen.reqs[0];
    let body = match api {
        Api::OpenAi | Api::Edits => json!({
            "created": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            "data": b64.into_iter().map(|b| json!({"b64_json": b})).collect::<Vec<_>>(),
            "seed": r0.seed,
        }),
        Api::Oip => return Err(ApiError::internal("the infer route answers tensors (oip::infer)")),
        Api::Txt2Img | Api::Img2Img => {
            let seeds: Vec<u64> = gen.reqs.iter().map(|r| r.seed).collect();
            let mut params = json!({
                "prompt": r0.prompt,
                "negative_prompt": r0.negative_prompt.clone().unwrap_or_default(),
                "seed": r0.seed,
                "steps": r0.steps,
                "cfg_scale": r0.guidance_scale,
                "width": r0.width,
                "height": r0.height,
                "batch_size": gen.reqs.len(),
            });
            sampler_fields(&mut params, r0);
            if let Some(init) = &r0.init_image {
                params["denoising_strength"] = json!(init.strength);
            }
            if !gen.controls.is_empty() {
                let units: Vec<Value> = gen
                    .controls
                    .iter()
                    .map(|c| {
                        json!({"model": c.name, "module": c.module, "weight": c.weight,
                               "guidance_start": c.start, "guidance_end": c.end})
                    })
                    .collect();
                params["alwayson_scripts"] = json!({"controlnet": {"args": units}});
            }
            let mut info = params.clone();
            info["all_seeds"] = json!(seeds);
            info["queue_seconds"] = json!(out.queued.as_secs_f64());
            json!({"images": b64, "parameters": params, "info": info.to_string()})
        }
    };
    Ok(Json(body))
}

/// A1111's `sampler_name`, `scheduler` and (when set) `eta` of the sampler `req` ran.
fn sampler_fields(params: &mut Value, req: &Request) {
    let Some(sampler) = req.sampler else { return };
    params["sampler_name"] = json!(sampler.kind.a1111_name());
    let schedule = api::A1111_SCHEDULERS.iter().find(|s| s.2 == sampler.timestep_spacing);
    params["scheduler"] = match (schedule, sampler.timestep_spacing) {
        (Some(s), _) => json!(s.1),
        // A spacing set by `lcm serve --timestep-spacing` without an A1111 schedule type.
        (None, Some(spacing)) => json!(spacing.name()),
        (None, None) => Value::Null,
    };
    if let Some(eta) = sampler.eta {
        params["eta"] = json!(eta);
    }
}

/// `req` with its ControlNets' paths replaced by their names (for the PNGs' parameters: answers never
/// show the server's paths).
fn named_controls(req: &Request, gen: &Generation) -> Request {
    let mut named = req.clone();
    for (u, c) in named.controls.iter_mut().zip(&gen.controls) {
        u.model = c.name.clone().into();
    }
    named
}

async fn health(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/health", 200);
    Json(json!({"status": "ok"})).into_response()
}

/// Ready: the model is loaded (it is before the port opens) and the server is not draining.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let resp = if app.metrics.draining.load(Ordering::SeqCst) {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, "draining: this server is shutting down").into_response()
    } else {
        Json(json!({"status": "ready", "model": app.model_name})).into_response()
    };
    app.metrics.request("/ready", resp.status().as_u16());
    resp
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/metrics", 200);
    let mut resp = app.metrics.render().into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

/// OpenAI's model list: the one model this server holds.
async fn models(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/v1/models", 200);
    Json(json!({"object": "list", "data": [{"id": app.model_name, "object": "model", "owned_by": "lcm"}]}))
        .into_response()
}

/// A1111's LoRA list: the names `loras[].name` and `<lora:NAME:SCALE>` accept.
async fn loras(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/sdapi/v1/loras", 200);
    Json(app.loras.files.keys().map(|n| json!({"name": n, "alias": n})).collect::<Vec<_>>()).into_response()
}

/// A1111's embedding list: `{"loaded": {TRIGGER: {"step", "sd_checkpoint", "sd_checkpoint_name",
/// "shape", "vectors"}}, "skipped": {NAME: …}}` — the trigger words prompts may use (`shape` is the
/// first encoder's width, as A1111 reports it).
async fn embeddings(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/sdapi/v1/embeddings", 200);
    let entry = |shape: Option<usize>, vectors: Option<usize>| json!({"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null, "shape": shape, "vectors": vectors});
    let e = &app.embeddings;
    let loaded: serde_json::Map<String, Value> =
        e.loaded.iter().map(|l| (l.trigger.clone(), entry(l.widths.first().copied(), Some(l.vectors)))).collect();
    let stem = |p: &std::path::Path| p.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let skipped: serde_json::Map<String, Value> =
        e.skipped.iter().map(|s| (stem(&s.path), entry(None, None))).collect();
    Json(json!({"loaded": loaded, "skipped": skipped})).into_response()
}

/// A1111's sampler list: the samplers `sampler_name` accepts (A1111's names; its aliases and lcm's
/// own names are accepted too).
async fn samplers(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/sdapi/v1/samplers", 200);
    let list: Vec<Value> = SamplerKind::ALL
        .iter()
        .map(|&k| {
            let mut aliases = vec![k.name()];
            aliases.extend(api::a1111_aliases(k));
            json!({"name": k.a1111_name(), "aliases": aliases, "options": {}})
        })
        .collect();
    Json(list).into_response()
}

/// A1111's schedule type list (1.9+): the `scheduler`s lcm runs.
async fn schedulers(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/sdapi/v1/schedulers", 200);
    let list: Vec<Value> = api::A1111_SCHEDULERS
        .iter()
        .map(|(name, label, _)| {
            json!({"name": name, "label": label, "aliases": null, "default_rho": -1, "need_inner_model": false})
        })
        .collect();
    Json(list).into_response()
}

/// The A1111 ControlNet extension's model list: the names `alwayson_scripts.controlnet.args[].model`
/// accepts (`--controlnet-dir`).
async fn controlnet_models(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/controlnet/model_list", 200);
    Json(json!({"model_list": app.controlnets.models.keys().collect::<Vec<_>>()})).into_response()
}

/// The A1111 ControlNet extension's preprocessor list: the `module`s lcm runs.
async fn controlnet_modules(State(app): State<Arc<App>>) -> Response {
    app.metrics.request("/controlnet/module_list", 200);
    Json(json!({"module_list": MODULES})).into_response()
}

/// Test hook (`--debug-hooks`): panics inside a handler, to show it is one request's 500.
async fn debug_panic(State(app): State<Arc<App>>) -> Response {
    let resp = guarded(&app.metrics, async {
        if std::hint::black_box(true) {
            panic!("test hook: a panic inside a request handler");
        }
        StatusCode::OK.into_response()
    })
    .await;
    app.metrics.request("/debug/panic", resp.status().as_u16());
    resp
}

/// Resolves on SIGTERM or SIGINT once the drain is done: from the signal on, `/ready` and new
/// generation requests answer 503; the requests already received finish (each within its timeout);
/// then the server stops accepting and exits.
pub async fn drained(app: Arc<App>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    app.metrics.draining.store(true, Ordering::SeqCst);
    eprintln!(
        "draining: {} requests in flight, {} queued; refusing new work",
        app.metrics.in_flight.load(Ordering::SeqCst),
        app.queue.len()
    );
    while app.metrics.in_flight.load(Ordering::SeqCst) > 0 || app.queue.len() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("drained; exiting");
}
