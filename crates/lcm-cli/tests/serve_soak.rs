//! Soak for `lcm serve` (issue 14): many requests to one server on the tiny fixture (CPU) with mixed
//! sizes, steps, image counts, seeds, LoRA sets (more sets than `--lora-cache` holds, so prepared sets
//! are evicted and made again) and A1111 img2img, sampling the server process's resident set size
//! (/proc/PID/statm) after each answer. The first half is warm-up: every shape's plan, LoRA set and
//! HTTP path has been seen, and the allocator's free lists settle (slowly: over the first few hundred
//! requests the RSS creeps up by ever smaller amounts, ~2% in all, then holds; a leak would keep going).
//! Flat means the peak of the last quarter is within 1% of the peak of the third quarter.
//!
//! CI runs `LCM_SERVE_SOAK_REQUESTS` (default 240) requests; the full run of docs/robustness.md is
//! `LCM_SERVE_SOAK_REQUESTS=1000 cargo test --release --test serve_soak -- --nocapture`.

mod serve_util;

use serde_json::json;
use serve_util::{b64, fixtures, Server};

/// Resident pages of process `pid`.
fn rss_pages(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("the server's statm");
    statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm's resident field")
}

const PAGE_MB: f64 = 4096.0 / (1 << 20) as f64;

/// Request `i` of the mix: (path, body). Periods: LoRA set 4 (each held two requests), size 3,
/// steps 3, images 2, img2img 6; the whole mix repeats every 24 requests.
fn mix(i: usize, init_png: &str) -> (&'static str, String) {
    let loras = match (i / 2) % 4 {
        0 => json!([]),
        1 => json!([{"name": "lora_kohya", "scale": 1.0}]),
        2 => json!([{"name": "lora_peft", "scale": 0.7}, {"name": "lora2_peft", "scale": 0.5}]),
        _ => json!([{"name": "lora_kohya_ldm", "scale": 0.3}]),
    };
    let size = ["64x64", "64x80", "96x64"][i % 3];
    if i % 6 == 5 {
        let body = json!({"prompt": format!("soak {}", i % 5), "init_images": [init_png], "steps": 2,
                          "denoising_strength": 0.6, "seed": i * 7919});
        return ("/sdapi/v1/img2img", body.to_string());
    }
    let body = json!({"prompt": format!("soak {}", i % 5), "size": size, "steps": 1 + i % 3, "n": 1 + i % 2,
                      "seed": i * 7919, "loras": loras});
    ("/v1/images/generations", body.to_string())
}

#[test]
fn server_rss_is_flat_over_many_mixed_requests() {
    let n: usize = std::env::var("LCM_SERVE_SOAK_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(240);
    assert!(n >= 8, "LCM_SERVE_SOAK_REQUESTS={n}: at least 8");
    let s = Server::start("soak", &["--lora-cache", "2"]);
    let pid = s.child.id();
    let init = b64(&std::fs::read(fixtures().join("images/init_64x64.png")).unwrap());
    let start = std::time::Instant::now();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (path, body) = mix(i, &init);
        let r = s.post(path, &body);
        assert_eq!(r.status, 200, "request {i} ({path}): {}", r.body_text());
        samples.push(rss_pages(pid));
    }
    let (half, three_q) = (n / 2, 3 * n / 4);
    let base = *samples[half..three_q].iter().max().unwrap();
    let max = *samples[three_q..].iter().max().unwrap();
    let growth = (max as f64 - base as f64) / base as f64;
    println!(
        "serve soak: {n} requests in {:.1} s; RSS first {:.1} MB, at {half} {:.1} MB, peak of the third quarter \
         {:.1} MB, of the last {:.1} MB, last {:.1} MB; growth {:.3}%",
        start.elapsed().as_secs_f64(),
        samples[0] as f64 * PAGE_MB,
        samples[half] as f64 * PAGE_MB,
        base as f64 * PAGE_MB,
        max as f64 * PAGE_MB,
        *samples.last().unwrap() as f64 * PAGE_MB,
        100.0 * growth
    );
    let step = (n / 10).max(1);
    let curve: Vec<String> =
        samples.iter().enumerate().step_by(step).map(|(i, s)| format!("{i}:{:.1}", *s as f64 * PAGE_MB)).collect();
    println!("serve soak: RSS curve (request:MB) {}", curve.join(" "));
    // Every answered request counted, and the LoRA sets swapped (with evictions from the cache of 2).
    let images = s.metric("lcm_images_total");
    let want: usize = (0..n).map(|i| if i % 6 == 5 { 1 } else { 1 + i % 2 }).sum();
    assert_eq!(images, want as f64, "lcm_images_total");
    assert!(s.metric("lcm_lora_swaps_total") > 0.0 && s.metric("lcm_panics_total") == 0.0);
    assert!(growth < 0.01, "server RSS grew {:.3}% in the last quarter (from {base} to {max} pages)", 100.0 * growth);
}
