//! `GET /metrics`: Prometheus text format (version 0.0.4), every series named `lcm_…`. Counters and
//! gauges are atomics; histograms take a short lock per observation (a handful per request).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Seconds: from a 64x64 step on the CPU (~ms) to a slow 1024² request (tens of seconds).
const SECONDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Images per batch.
const IMAGES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>, // per bound, not cumulative; the last is +Inf
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i];
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// The stages whose latency is recorded (`lcm_stage_seconds{stage=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Waiting in the queue, per request.
    Queue,
    /// Prompt encoding, per batch.
    TextEncoder,
    /// One UNet call and LCM step, per step of a batch.
    UnetStep,
    /// VAE decoding, per batch.
    VaeDecode,
    /// PNG encoding of one request's images.
    Encode,
    /// From the body read to the response, per successful request.
    Request,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::TextEncoder => "text_encoder",
            Stage::UnetStep => "unet_step",
            Stage::VaeDecode => "vae_decode",
            Stage::Encode => "png_encode",
            Stage::Request => "request",
        }
    }
}

/// One worker's device (`lcm serve --devices`): its series carry `device="LABEL"`.
pub struct DeviceStats {
    /// `cuda:1`, `cpu:0`, …
    pub label: String,
    /// Images in the batch it runs now (0 when idle).
    pub generating: AtomicUsize,
    pub batches: AtomicU64,
    pub images: AtomicU64,
    /// Time spent running batches, µs (its utilisation is the rate of this).
    pub busy_micros: AtomicU64,
}

pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    stages: Mutex<BTreeMap<Stage, Histogram>>,
    batch_images: Mutex<Histogram>,
    swap_seconds: Mutex<Histogram>,
    pub queue_depth: AtomicUsize,
    pub queue_capacity: usize,
    /// Requests between their body read and their response.
    pub in_flight: AtomicUsize,
    /// Images being generated now.
    pub generating: AtomicUsize,
    pub images: AtomicU64,
    pub steps: AtomicU64,
    pub swaps: AtomicU64,
    /// Swaps to a LoRA set prepared for an earlier batch (`--lora-cache`).
    pub swaps_cached: AtomicU64,
    pub cancelled_disconnect: AtomicU64,
    pub cancelled_timeout: AtomicU64,
    /// Batches stopped early because every request in them was gone.
    pub batches_stopped: AtomicU64,
    pub panics: AtomicU64,
    pub draining: std::sync::atomic::AtomicBool,
    /// One per worker, in `--devices` order.
    pub devices: Vec<DeviceStats>,
    /// Devices running a batch now, and the most there ever were at once.
    pub busy_devices: AtomicUsize,
    pub busy_devices_peak: AtomicUsize,
}

impl Metrics {
    /// Metrics for a server with a queue of `queue_capacity` and one worker per label of `devices`.
    pub fn new(queue_capacity: usize, devices: &[String]) -> Self {
        Metrics {
            requests: Mutex::default(),
            stages: Mutex::default(),
            batch_images: Mutex::new(Histogram::new(IMAGES)),
            swap_seconds: Mutex::new(Histogram::new(SECONDS)),
            queue_depth: AtomicUsize::new(0),
            queue_capacity,
            in_flight: AtomicUsize::new(0),
            generating: AtomicUsize::new(0),
            images: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
            swaps_cached: AtomicU64::new(0),
            cancelled_disconnect: AtomicU64::new(0),
            cancelled_timeout: AtomicU64::new(0),
            batches_stopped: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            devices: devices
                .iter()
                .map(|label| DeviceStats {
                    label: label.clone(),
                    generating: AtomicUsize::new(0),
                    batches: AtomicU64::new(0),
                    images: AtomicU64::new(0),
                    busy_micros: AtomicU64::new(0),
                })
                .collect(),
            busy_devices: AtomicUsize::new(0),
            busy_devices_peak: AtomicUsize::new(0),
        }
    }

    /// Device `k` starts a batch of `images`.
    pub fn device_start(&self, k: usize, images: usize) {
        let d = &self.devices[k];
        d.generating.store(images, Ordering::Relaxed);
        d.batches.fetch_add(1, Ordering::Relaxed);
        self.generating.fetch_add(images, Ordering::Relaxed);
        let busy = self.busy_devices.fetch_add(1, Ordering::SeqCst) + 1;
        self.busy_devices_peak.fetch_max(busy, Ordering::SeqCst);
    }

    /// Device `k` ends the batch it started after `took`, having made `made` images.
    pub fn device_end(&self, k: usize, took: Duration, made: usize) {
        let d = &self.devices[k];
        let images = d.generating.swap(0, Ordering::Relaxed);
        self.generating.fetch_sub(images, Ordering::Relaxed);
        d.images.fetch_add(made as u64, Ordering::Relaxed);
        d.busy_micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.busy_devices.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn request(&self, endpoint: &'static str, status: u16) {
        *lock(&self.requests).entry((endpoint, status)).or_default() += 1;
    }

    pub fn stage(&self, stage: Stage, d: Duration) {
        lock(&self.stages).entry(stage).or_insert_with(|| Histogram::new(SECONDS)).observe(d.as_secs_f64());
    }

    pub fn batch(&self, images: usize) {
        lock(&self.batch_images).observe(images as f64);
    }

    pub fn swap(&self, d: Duration, cached: bool) {
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.swaps_cached.fetch_add(cached as u64, Ordering::Relaxed);
        lock(&self.swap_seconds).observe(d.as_secs_f64());
    }

    /// Mean time of a successful request so far (1 s before the first), for `Retry-After`.
    pub fn mean_request_seconds(&self) -> f64 {
        lock(&self.stages).get(&Stage::Request).filter(|h| h.count > 0).map_or(1.0, |h| h.sum / h.count as f64)
    }

    /// Every series in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        o += "# HELP lcm_requests_total HTTP requests answered, by endpoint and status code.\n";
        o += "# TYPE lcm_requests_total counter\n";
        for ((endpoint, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(o, "lcm_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        gauge(
            &mut o,
            "lcm_queue_depth",
            "Requests waiting in the queue.",
            self.queue_depth.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "lcm_queue_capacity",
            "Requests the queue holds before answering 429.",
            self.queue_capacity as f64,
        );
        gauge(
            &mut o,
            "lcm_in_flight_requests",
            "Generation requests received and not yet answered.",
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "lcm_generating_images",
            "Images in the batch running now.",
            self.generating.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "lcm_draining",
            "1 after SIGTERM: new work is refused while in-flight work finishes.",
            self.draining.load(Ordering::Relaxed) as u8 as f64,
        );
        gauge(
            &mut o,
            "lcm_busy_devices",
            "Devices running a batch now.",
            self.busy_devices.load(Ordering::Relaxed) as f64,
        );
        gauge(
            &mut o,
            "lcm_busy_devices_peak",
            "The most devices that ran batches at once since the start.",
            self.busy_devices_peak.load(Ordering::Relaxed) as f64,
        );
        self.render_devices(&mut o);
        counter(&mut o, "lcm_images_total", "Images generated.", get(&self.images));
        counter(&mut o, "lcm_unet_steps_total", "UNet steps run (one per step per batch).", get(&self.steps));
        counter(&mut o, "lcm_lora_swaps_total", "LoRA hot-swaps between batches.", get(&self.swaps));
        counter(
            &mut o,
            "lcm_lora_swaps_cached_total",
            "LoRA hot-swaps to a set prepared for an earlier batch (--lora-cache).",
            get(&self.swaps_cached),
        );
        counter(
            &mut o,
            "lcm_panics_total",
            "Panics caught (each answered 500; the server kept serving).",
            get(&self.panics),
        );
        counter(
            &mut o,
            "lcm_batches_stopped_total",
            "Batches stopped between steps because all their requests were gone.",
            get(&self.batches_stopped),
        );
        o += "# HELP lcm_cancelled_total Requests given up before their answer, by reason.\n";
        o += "# TYPE lcm_cancelled_total counter\n";
        let _ = writeln!(o, "lcm_cancelled_total{{reason=\"disconnect\"}} {}", get(&self.cancelled_disconnect));
        let _ = writeln!(o, "lcm_cancelled_total{{reason=\"timeout\"}} {}", get(&self.cancelled_timeout));
        o += "# HELP lcm_batch_images Images per batch run.\n# TYPE lcm_batch_images histogram\n";
        lock(&self.batch_images).render(&mut o, "lcm_batch_images", "");
        o += "# HELP lcm_lora_swap_seconds Time of each LoRA hot-swap.\n# TYPE lcm_lora_swap_seconds histogram\n";
        lock(&self.swap_seconds).render(&mut o, "lcm_lora_swap_seconds", "");
        o += "# HELP lcm_stage_seconds Latency by stage: queue wait and request per request; text encoder, \
              each UNet step and VAE decode per batch; PNG encoding per request.\n";
        o += "# TYPE lcm_stage_seconds histogram\n";
        for (stage, h) in lock(&self.stages).iter() {
            h.render(&mut o, "lcm_stage_seconds", &format!("stage=\"{}\"", stage.label()));
        }
        o
    }
}

impl Metrics {
    /// The per-device series (`--devices`), one line per worker each.
    fn render_devices(&self, o: &mut String) {
        type Read = fn(&DeviceStats) -> f64;
        let series: [(&str, &str, &str, Read); 4] = [
            ("lcm_device_generating_images", "gauge", "Images in the batch the device runs now.", |d| {
                d.generating.load(Ordering::Relaxed) as f64
            }),
            ("lcm_device_batches_total", "counter", "Batches the device ran.", |d| {
                d.batches.load(Ordering::Relaxed) as f64
            }),
            ("lcm_device_images_total", "counter", "Images the device generated.", |d| {
                d.images.load(Ordering::Relaxed) as f64
            }),
            ("lcm_device_busy_seconds_total", "counter", "Seconds the device spent running batches.", |d| {
                d.busy_micros.load(Ordering::Relaxed) as f64 / 1e6
            }),
        ];
        for (name, kind, help, read) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for d in &self.devices {
                let _ = writeln!(o, "{name}{{device=\"{}\"}} {}", d.label, read(d));
            }
        }
    }
}

/// A poisoned metrics lock (a panic while holding it) still holds valid counts: keep using them.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::new(4, &["cpu:0".to_string(), "cpu:1".to_string()]);
        m.device_start(1, 2);
        m.device_end(1, Duration::from_millis(1500), 2);
        m.stage(Stage::UnetStep, Duration::from_millis(3));
        m.stage(Stage::UnetStep, Duration::from_millis(30));
        m.request("/health", 200);
        let text = m.render();
        assert!(text.contains("lcm_stage_seconds_bucket{stage=\"unet_step\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("lcm_stage_seconds_bucket{stage=\"unet_step\",le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("lcm_stage_seconds_count{stage=\"unet_step\"} 2"), "{text}");
        assert!(text.contains("lcm_requests_total{endpoint=\"/health\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("lcm_queue_capacity 4"), "{text}");
        assert!(text.contains("lcm_device_batches_total{device=\"cpu:0\"} 0"), "{text}");
        assert!(text.contains("lcm_device_batches_total{device=\"cpu:1\"} 1"), "{text}");
        assert!(text.contains("lcm_device_images_total{device=\"cpu:1\"} 2"), "{text}");
        assert!(text.contains("lcm_device_busy_seconds_total{device=\"cpu:1\"} 1.5"), "{text}");
        assert!(text.contains("lcm_busy_devices_peak 1"), "{text}");
    }
}
