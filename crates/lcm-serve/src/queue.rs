//! The bounded FIFO queue and the worker threads (one per device, each owning its pipeline) that take
//! batches from it.
//!
//! The worker takes the oldest request, then every later one of the same shape (size, steps,
//! guidance scale), sampler, LoRA set and ControlNets (the same models with the same guidance windows; control
//! images and weights are each request's own) while the batch holds at most `--max-batch` images, and
//! runs them as one `Pipeline::generate_batch`. The head of the queue is always served first, so no request waits
//! behind more than the requests that arrived before it. Batching waits for nothing: under load the
//! queue fills while a batch runs, at low load a request runs alone at once.
//!
//! Cancellation: a request whose client is gone (disconnect or timeout) is marked; queued, it is
//! dropped unrun; running, its batch stops between steps once every request in it is gone (the
//! others' images are still made).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lcm_core::{Backend, Error};
use lcm_pipeline::pipeline::Pipeline;
use lcm_pipeline::spec::{LoraSpec, Request};
use tokio::sync::oneshot;

use super::api::{engine_error, Api, ControlChoice};
use super::error::ApiError;
use super::lora_cache::{LoraCache, Swapped};
use super::loras::LoraChoice;
use super::metrics::{Metrics, Stage};

/// What a request gets back from the worker.
pub type JobResult = Result<Generated, ApiError>;

/// One request's images, 8-bit RGB `[h, w, 3]` each, in order.
pub struct Generated {
    pub images: Vec<Vec<u8>>,
    pub width: usize,
    pub height: usize,
    /// Queue wait of this request, and the stage times of the batch it ran in.
    pub queued: Duration,
    pub batch_images: usize,
}

/// A request's shared state: set `cancelled` from the HTTP side, read by the worker.
#[derive(Default)]
pub struct JobState {
    cancelled: AtomicBool,
    batch: Mutex<Option<Arc<BatchCtl>>>,
}

/// The cancel flag of one running batch and the requests in it.
struct BatchCtl {
    stop: AtomicBool,
    members: Vec<Arc<JobState>>,
}

impl JobState {
    /// Marks the request gone; stops its batch if every request in it is gone. The batch link is
    /// read under the same lock the worker sets it under, so a cancel racing the batch's start is
    /// seen by one side or the other.
    pub fn cancel(&self) {
        let batch = lock(&self.batch);
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(b) = batch.as_ref() {
            b.stop_if_all_gone();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

impl BatchCtl {
    fn stop_if_all_gone(&self) {
        if self.members.iter().all(|m| m.cancelled.load(Ordering::SeqCst)) {
            self.stop.store(true, Ordering::SeqCst);
        }
    }
}

/// One queued request: the API it came by, its pipeline requests (several for A1111's batch_size),
/// LoRAs, ControlNet units (for its errors), and where its answer goes.
pub struct Job {
    pub api: Api,
    pub reqs: Vec<Request>,
    pub loras: Vec<LoraChoice>,
    pub controls: Vec<ControlChoice>,
    pub enqueued: Instant,
    pub state: Arc<JobState>,
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    fn images(&self) -> usize {
        self.reqs.iter().map(|r| r.num_images).sum()
    }

    /// Jobs batch together when the pipeline can run them as one graph with one LoRA set
    /// (`Request::batches_with`: the same schedule, sampler, prompt reading and ControlNet windows) and
    /// both are txt2img.
    fn batches_with(&self, other: &Job) -> bool {
        let (a, b) = (&self.reqs[0], &other.reqs[0]);
        a.init_image.is_none() && b.init_image.is_none() && a.batches_with(b) && self.loras == other.loras
    }
}

/// Bounded FIFO of jobs, shared by the HTTP side (push) and the worker (next_batch).
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    capacity: usize,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Self {
        Queue { jobs: Mutex::default(), ready: Condvar::new(), capacity, closed: AtomicBool::new(false), metrics }
    }

    /// Queues `job`, or gives it back when the queue is full (requests already gone are dropped
    /// first: they do not hold places).
    pub fn push(&self, job: Job) -> Result<(), Job> {
        let mut jobs = lock(&self.jobs);
        if jobs.len() >= self.capacity {
            jobs.retain(|j| !j.state.is_cancelled());
        }
        if jobs.len() >= self.capacity || self.closed.load(Ordering::SeqCst) {
            return Err(job);
        }
        jobs.push_back(job);
        self.metrics.queue_depth.store(jobs.len(), Ordering::Relaxed);
        self.ready.notify_one();
        Ok(())
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    /// No more jobs: the worker returns once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _guard = lock(&self.jobs);
        self.ready.notify_all();
    }

    /// The oldest live job and the later ones that batch with it, up to `max_images` images (a job
    /// larger than that runs alone). Blocks until there is one; `None` once closed and empty.
    fn next_batch(&self, max_images: usize) -> Option<Vec<Job>> {
        let mut jobs = lock(&self.jobs);
        loop {
            jobs.retain(|j| !j.state.is_cancelled());
            if let Some(head) = jobs.pop_front() {
                let mut images = head.images();
                let mut batch = vec![head];
                let mut i = 0;
                while i < jobs.len() && images < max_images {
                    if jobs[i].batches_with(&batch[0]) && images + jobs[i].images() <= max_images {
                        images += jobs[i].images();
                        batch.push(jobs.remove(i).expect("index in range"));
                    } else {
                        i += 1;
                    }
                }
                self.metrics.queue_depth.store(jobs.len(), Ordering::Relaxed);
                return Some(batch);
            }
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Worker settings (each worker has its own copy).
#[derive(Clone)]
pub struct WorkerConfig {
    pub max_batch: usize,
    /// LoRAs every request runs with (`--lora`, e.g. the LCM-LoRA), before its own.
    pub base_loras: Vec<LoraSpec>,
    /// Test hook: a prompt of exactly this text panics inside the worker.
    pub panic_prompt: Option<String>,
    /// LoRA sets kept prepared for a fast swap back (`--lora-cache`; see `lora_cache`).
    pub lora_cache: usize,
    /// This worker's index in `Metrics::devices`.
    pub device: usize,
}

/// Runs batches until the queue is closed and empty. Several workers (one per device) may take
/// batches from one queue: each takes the next batch when it is idle. A panic inside a generation is caught and
/// answered 500 to that batch's requests; the worker goes on with the next batch.
pub fn work<B: Backend>(mut pipe: Pipeline<B>, queue: &Queue, metrics: &Metrics, cfg: &WorkerConfig) {
    // The LoRAs applied now (the pipeline was loaded with the base set only).
    let mut current: Option<Vec<LoraChoice>> = Some(Vec::new());
    let mut cache = LoraCache::new(cfg.lora_cache);
    while let Some(batch) = queue.next_batch(cfg.max_batch) {
        run_batch(&mut pipe, batch, metrics, cfg, &mut current, &mut cache);
    }
}

fn run_batch<B: Backend>(
    pipe: &mut Pipeline<B>,
    batch: Vec<Job>,
    metrics: &Metrics,
    cfg: &WorkerConfig,
    current: &mut Option<Vec<LoraChoice>>,
    cache: &mut LoraCache<B>,
) {
    let now = Instant::now();
    let want = batch[0].loras.clone();
    if current.as_ref() != Some(&want) {
        let specs: Vec<LoraSpec> = cfg
            .base_loras
            .iter()
            .cloned()
            .chain(want.iter().map(|l| LoraSpec { path: l.path.clone(), scale: l.scale }))
            .collect();
        let t = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| cache.swap(pipe, &want, &specs))) {
            Ok(Ok(how)) => {
                metrics.swap(t.elapsed(), how == Swapped::Cached);
                *current = Some(want);
            }
            Ok(Err(e)) => {
                // Refused before any weight changed (set_loras checks everything first); an I/O error
                // halfway may leave a mix, so the next batch sets its LoRAs again whatever they are.
                *current = None;
                let names: Vec<&str> = want.iter().map(|l| l.name.as_str()).collect();
                let err = ApiError::bad("loras", format!("LoRAs [{}] do not fit this model: {e}", names.join(", ")));
                return reply_all(batch, err);
            }
            Err(_) => {
                *current = None;
                metrics.panics.fetch_add(1, Ordering::Relaxed);
                return reply_all(batch, ApiError::internal("the LoRA swap panicked; see the server log"));
            }
        }
    }

    // Link every request to this batch's stop flag (see JobState::cancel).
    let ctl =
        Arc::new(BatchCtl { stop: AtomicBool::new(false), members: batch.iter().map(|j| j.state.clone()).collect() });
    for j in &batch {
        *lock(&j.state.batch) = Some(ctl.clone());
    }
    ctl.stop_if_all_gone();

    let reqs: Vec<Request> = batch.iter().flat_map(|j| j.reqs.iter().cloned()).collect();
    let images: usize = batch.iter().map(Job::images).sum();
    metrics.batch(images);
    metrics.device_start(cfg.device, images);
    let started = Instant::now();
    let hook = cfg.panic_prompt.as_deref();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if hook.is_some_and(|p| reqs.iter().any(|r| r.prompt == p)) {
            panic!("test hook: a panic inside the worker");
        }
        pipe.generate_batch(
            &reqs,
            &mut |_| {
                metrics.steps.fetch_add(1, Ordering::Relaxed);
            },
            Some(&ctl.stop),
        )
    }));
    let made = match &result {
        Ok(Ok(_)) => images,
        _ => 0,
    };
    metrics.device_end(cfg.device, started.elapsed(), made);
    let outs = match result {
        Ok(Ok(outs)) => outs,
        Ok(Err(Error::Cancelled)) => {
            metrics.batches_stopped.fetch_add(1, Ordering::Relaxed);
            return reply_all(batch, ApiError::internal("cancelled"));
        }
        // Refusals (a ControlNet that does not fit the model, …) name each request's own field.
        Ok(Err(e)) => {
            for job in batch {
                let err = engine_error(job.api, &job.controls, &e);
                let _ = job.reply.send(Err(err));
            }
            return;
        }
        Err(_) => {
            metrics.panics.fetch_add(1, Ordering::Relaxed);
            return reply_all(batch, ApiError::internal("generation panicked; see the server log"));
        }
    };
    let times = &outs[0].times;
    metrics.stage(Stage::TextEncoder, times.text_encoder);
    for s in &times.unet_steps {
        metrics.stage(Stage::UnetStep, *s);
    }
    metrics.stage(Stage::VaeDecode, times.vae_decode);
    metrics.images.fetch_add(images as u64, Ordering::Relaxed);

    let mut outs = outs.into_iter();
    for job in batch {
        let mut rgb = Vec::with_capacity(job.images());
        for _ in &job.reqs {
            let out = outs.next().expect("one output per request");
            rgb.extend((0..out.images.shape[0]).map(|i| out.rgb8(i)));
        }
        let r = &job.reqs[0];
        let queued = now.saturating_duration_since(job.enqueued);
        metrics.stage(Stage::Queue, queued);
        let _ = job.reply.send(Ok(Generated {
            images: rgb,
            width: r.width,
            height: r.height,
            queued,
            batch_images: images,
        }));
    }
}

fn reply_all(batch: Vec<Job>, err: ApiError) {
    for job in batch {
        let _ = job.reply.send(Err(err.clone()));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
