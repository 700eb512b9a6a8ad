//! A bounded load test of `lcm serve` on loopback (tiny fixture, CPU): 200 requests from 8 client
//! threads, every 5th one malformed (a rotating set of broken bodies). Checked: the server never
//! dies, every request gets exactly one answer, every valid one a 200 with its own seed's image,
//! every malformed one a 4xx naming a field, request ids never repeat, and /metrics counts all 200.
//! Run once with `--max-batch 1` and once with the default; latency percentiles, throughput and the
//! mean latency per image are printed (docs/BENCH_LOG.md records them; they are not asserted).
//! `LCM_LOAD_BATCHES=1,2,4,8` measures other settings.

mod serve_util;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use serve_util::*;

const REQUESTS: usize = 200;
const CONCURRENCY: usize = 8;

/// Request `i`: malformed when i % 5 == 4 (20%), else a valid 64x64 txt2img with seed 1000 + i.
fn body(i: usize) -> (&'static str, String, bool) {
    let gen = "/v1/images/generations";
    if i % 5 != 4 {
        let prompt = ["a red house", "a cat", "a boat at sea", "a tree"][i % 4];
        return match i % 3 {
            0 => (
                "/sdapi/v1/txt2img",
                json!({"prompt": prompt, "seed": 1000 + i, "width": 64, "height": 64}).to_string(),
                true,
            ),
            _ => (gen, json!({"prompt": prompt, "seed": 1000 + i, "size": "64x64"}).to_string(), true),
        };
    }
    let bad = match (i / 5) % 8 {
        0 => "{\"prompt\": \"cut short".to_string(),
        1 => json!({"prompt": 42, "size": "64x64"}).to_string(),
        2 => json!({"prompt": "a", "size": "64x64", "steps": 1_000_000}).to_string(),
        3 => json!({"prompt": "a", "size": "-64x64"}).to_string(),
        4 => json!({"prompt": "a", "size": "64x64", "n": -1}).to_string(),
        5 => json!({"prompt": "a", "size": "64x64", "loras": [{"name": "../secret"}]}).to_string(),
        6 => json!({"prompt": "a", "size": "64x64", "style": "vivid"}).to_string(),
        _ => return ("/sdapi/v1/img2img", json!({"prompt": "a", "init_images": ["%%%"]}).to_string(), false),
    };
    (gen, bad, false)
}

struct Outcome {
    i: usize,
    status: u16,
    latency: Duration,
    id: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn run(max_batch: usize) {
    let s = Server::start(&format!("load-{max_batch}"), &["--max-batch", &max_batch.to_string(), "--queue", "64"]);
    // Warm-up: the first request of a shape builds and plans its graph.
    for b in 1..=max_batch.min(8) {
        let r = s.post("/v1/images/generations", &json!({"prompt": "w", "size": "64x64", "n": b}).to_string());
        assert_eq!(r.status, 200);
    }
    let before = s.metric("lcm_images_total");
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::with_capacity(REQUESTS));
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENCY {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= REQUESTS {
                    break;
                }
                let (path, b, valid) = body(i);
                let t = Instant::now();
                let r = s.post(path, &b);
                let latency = t.elapsed();
                if valid {
                    assert_eq!(r.status, 200, "request {i}: {}", r.body_text());
                    let j = r.json();
                    let img = j.get("data").map_or(&j["images"][0], |d| &d[0]["b64_json"]);
                    let (w, h, _, params) = png_rgb(img.as_str().unwrap());
                    assert_eq!((w, h), (64, 64));
                    // The image is this request's: its seed is in the PNG's parameters.
                    assert!(params.contains(&format!("seed: {},", 1000 + i)), "request {i} got {params}");
                } else {
                    assert!((400..500).contains(&r.status), "malformed request {i}: {} {}", r.status, r.body_text());
                    r.error_field();
                }
                outcomes.lock().unwrap().push(Outcome {
                    i,
                    status: r.status,
                    latency,
                    id: r.header("x-lcm-request-id").map(String::from),
                });
            });
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let outcomes = outcomes.into_inner().unwrap();

    // One answer per request, none lost, none twice; the server is alive and counted them all.
    assert_eq!(outcomes.len(), REQUESTS);
    let seen: HashSet<usize> = outcomes.iter().map(|o| o.i).collect();
    assert_eq!(seen.len(), REQUESTS);
    let ids: Vec<&String> = outcomes.iter().filter_map(|o| o.id.as_ref()).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "a request id was answered twice");
    let valid = outcomes.iter().filter(|o| o.status == 200).count();
    assert_eq!(valid, (0..REQUESTS).filter(|i| i % 5 != 4).count());
    assert_eq!(ids.len(), valid);
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.metric("lcm_images_total") - before, valid as f64);
    assert_eq!(s.metric("lcm_panics_total"), 0.0);
    let mut lat: Vec<f64> =
        outcomes.iter().filter(|o| o.status == 200).map(|o| o.latency.as_secs_f64() * 1e3).collect();
    lat.sort_by(f64::total_cmp);
    let bad_ms: f64 = outcomes.iter().filter(|o| o.status != 200).map(|o| o.latency.as_secs_f64() * 1e3).sum::<f64>()
        / (REQUESTS - valid) as f64;
    let batches = s.metric("lcm_batch_images_count") - max_batch.min(8) as f64;
    println!(
        "max-batch {max_batch}: {REQUESTS} requests ({valid} valid, 64x64, 4 steps) at concurrency {CONCURRENCY} in \
         {wall:.2} s: {:.1} images/s; valid latency p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, mean {:.0} ms; \
         mean wall time per image {:.1} ms; {:.2} images per batch; malformed answered in {bad_ms:.1} ms mean",
        valid as f64 / wall,
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat.iter().sum::<f64>() / lat.len() as f64,
        wall * 1e3 / valid as f64,
        valid as f64 / batches.max(1.0),
    );
    s.terminate();
}

#[test]
fn load_200_requests_at_concurrency_8_with_20_percent_malformed() {
    let batches: Vec<usize> = match std::env::var("LCM_LOAD_BATCHES") {
        Ok(v) => v.split(',').map(|b| b.trim().parse().expect("LCM_LOAD_BATCHES: numbers")).collect(),
        Err(_) => vec![1, 4],
    };
    for b in batches {
        run(b);
    }
}
