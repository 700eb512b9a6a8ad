//! What the CPU benches share: their quick mode (`LCM_BENCH_QUICK=1`: one table instead of criterion,
//! for side-by-side runs of two builds), its timing, and their deterministic inputs.

use std::time::Instant;

/// The quick mode's case filter (empty: every case) when `LCM_BENCH_QUICK=1`, else `None`.
pub fn quick_filter() -> Option<String> {
    // cargo bench passes `--bench`; the filter is the first other argument.
    std::env::var("LCM_BENCH_QUICK")
        .is_ok_and(|v| v == "1")
        .then(|| std::env::args().skip(1).find(|a| !a.starts_with("--")).unwrap_or_default())
}

/// Median seconds of 5 calls of `f` after one warm-up.
pub fn median_s(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

/// `len` values in [-0.5, 0.5), a different pattern per `stride`.
pub fn fill(len: usize, stride: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * stride % 97) as f32 - 48.0) / 96.0).collect()
}
