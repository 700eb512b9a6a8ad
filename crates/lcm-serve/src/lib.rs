//! The HTTP server behind `lcm serve`, as a library: one model (loaded on one or more devices) behind OpenAI's images API and
//! A1111's txt2img/img2img (with the A1111 ControlNet extension's units, ControlNets by name), with a
//! bounded FIFO queue that batches requests of one shape, LoRA set and ControlNet set, per-request
//! timeouts, cancellation on disconnect, LoRA hot-swap by name, health/readiness probes, Prometheus
//! metrics and a graceful drain on SIGTERM (docs/serving.md); beside them the Open Inference Protocol
//! (KServe v2: `/v2/models/lcm/infer`, the Triton backend's tensors), and API keys (`auth`).
//!
//! Threads: tokio (two threads) runs the HTTP side; one worker thread per device owns that device's
//! pipeline and runs one batch at a time (a pipeline generates one batch at a time; its backend
//! parallelises inside); every worker takes its next batch from the one queue when it is idle.

mod api;
mod auth;
pub mod blur;
mod controlnets;
mod error;
mod http;
mod lora_cache;
mod loras;
mod metrics;
pub mod multipart;
pub mod oip;
mod png;
mod queue;

use std::io::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use lcm::{with_pipeline, Engine};
use lcm_core::{Backend, Error, Result};
use lcm_pipeline::embeddings::EmbeddingSet;
use lcm_pipeline::infer::Defaults;
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::LoraSpec;

pub use api::{parse_edits, parse_request, parse_request_with, Api, ControlChoice, Generation, Limits};
pub use auth::ApiKeys;
pub use controlnets::{ControlNetDir, MODULES as CONTROL_MODULES};
pub use error::ApiError;
pub use loras::{LoraChoice, LoraDir};

/// How to serve.
pub struct ServeConfig {
    /// Address to listen on (loopback by default in the CLI).
    pub host: String,
    /// Port; 0 picks a free one (printed on stdout as `listening on http://ADDR`).
    pub port: u16,
    /// Most images one batch runs.
    pub max_batch: usize,
    /// Requests the queue holds; one more is answered 429.
    pub queue: usize,
    /// Per request, from its body read to its answer; past it the work is cancelled and 504 answered.
    pub timeout: Duration,
    pub limits: Limits,
    /// LoRAs requests may name.
    pub loras: LoraDir,
    /// ControlNets requests may name (A1111's `alwayson_scripts.controlnet`).
    pub controlnets: ControlNetDir,
    /// LoRAs every request runs with, before its own (the LCM-LoRA on a plain SD1.5 model).
    pub base_loras: Vec<LoraSpec>,
    /// LoRA sets the worker keeps prepared (`Pipeline::prepare_loras`) for a fast swap back to them.
    pub lora_cache: usize,
    /// The model's name in responses and PNG parameters (not its path).
    pub model_name: String,
    /// Test hooks: `POST /debug/panic` and a worker panic on the prompt `__lcm_test_panic__`.
    pub debug_hooks: bool,
    /// The pipeline's textual-inversion embeddings (`GET /sdapi/v1/embeddings`).
    pub embeddings: EmbeddingSet,
    /// With keys, the API routes want `Authorization: Bearer KEY` (`auth`).
    pub api_keys: Option<ApiKeys>,
    /// The image side an Open Inference Protocol request without width/height gets (the model's).
    pub default_size: usize,
}

/// One worker: a device's label in `/metrics` (`cuda:0`, `cpu:1`) and the engine loaded on it.
pub struct Worker {
    pub device: String,
    pub engine: Engine,
}

/// Serves `workers` (one or more engines of one model, each on its own device) until SIGTERM/SIGINT,
/// then drains and returns. The engines are loaded before this is called, so the port opens only once
/// the model is ready.
pub fn run(workers: Vec<Worker>, cfg: ServeConfig) -> Result<()> {
    if cfg.max_batch == 0 || cfg.queue == 0 || cfg.timeout.is_zero() || workers.is_empty() {
        return Err(Error::invalid("serve", "--max-batch, --queue, --timeout-s and the devices must be at least 1"));
    }
    let labels: Vec<String> = workers.iter().map(|w| w.device.clone()).collect();
    let metrics = Arc::new(metrics::Metrics::new(cfg.queue, &labels));
    let queue = Arc::new(queue::Queue::new(cfg.queue, metrics.clone()));
    let worker_cfg = queue::WorkerConfig {
        max_batch: cfg.max_batch,
        base_loras: cfg.base_loras,
        panic_prompt: cfg.debug_hooks.then(|| "__lcm_test_panic__".to_string()),
        lora_cache: cfg.lora_cache,
        device: 0,
    };
    let mut threads = Vec::with_capacity(workers.len());
    for (k, w) in workers.into_iter().enumerate() {
        let cfg = queue::WorkerConfig { device: k, ..worker_cfg.clone() };
        let spawned = with_pipeline!(w.engine, p => spawn_worker(*p, &w.device, queue.clone(), metrics.clone(), cfg));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                queue.close();
                return Err(e);
            }
        }
    }
    let app = Arc::new(http::App {
        queue: queue.clone(),
        metrics,
        limits: cfg.limits,
        loras: cfg.loras,
        controlnets: cfg.controlnets,
        timeout: cfg.timeout,
        max_batch: cfg.max_batch,
        model_name: cfg.model_name,
        embeddings: cfg.embeddings,
        ids: AtomicU64::new(1),
        oip_defaults: Defaults { width: cfg.default_size, height: cfg.default_size, ..Defaults::default() },
    });
    let keys = cfg.api_keys.map(Arc::new);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid("serve", format!("cannot start the async runtime: {e}")))?;
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|e| Error::invalid("--host/--port", format!("cannot listen on {}:{}: {e}", cfg.host, cfg.port)))?;
        let addr = listener.local_addr().map_err(|e| Error::invalid("--port", e.to_string()))?;
        // One line on stdout that scripts wait for (the port may have been 0).
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
        axum::serve(listener, http::router(app.clone(), cfg.debug_hooks, keys))
            .with_graceful_shutdown(http::drained(app.clone()))
            .await
            .map_err(|e| Error::invalid("serve", format!("the HTTP server failed: {e}")))
    });
    queue.close();
    for t in threads {
        let _ = t.join();
    }
    served
}

fn spawn_worker<B: Backend + 'static>(
    pipe: Pipeline<B>,
    device: &str,
    queue: Arc<queue::Queue>,
    metrics: Arc<metrics::Metrics>,
    cfg: queue::WorkerConfig,
) -> Result<std::thread::JoinHandle<()>>
where
    Pipeline<B>: Send,
{
    std::thread::Builder::new()
        .name(format!("lcm-worker-{device}"))
        .spawn(move || queue::work(pipe, &queue, &metrics, &cfg))
        .map_err(|e| Error::invalid("serve", format!("cannot start the worker thread for {device}: {e}")))
}
