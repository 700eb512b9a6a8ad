//! Shared by the integration tests: where the fixtures are and how to read recorded tensors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lcm_core::{SafeTensorsFile, Tensor};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn record(name: &str) -> SafeTensorsFile {
    let p = fixtures().join("records").join(name);
    SafeTensorsFile::open(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn tensor(file: &SafeTensorsFile, name: &str) -> Tensor {
    let v = file.get(name).unwrap_or_else(|e| panic!("{e}"));
    Tensor::new(v.shape.to_vec(), v.to_f32())
}

/// Asserts ‖got − want‖/‖want‖ < tol, printing the measure either way so logs show the margin.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    let r = lcm_core::rel_l2(got, want);
    println!("{what}: relative L2 {r:.3e} (tolerance {tol:.0e})");
    assert!(r < tol, "{what}: relative L2 {r:.3e} exceeds {tol:.0e}");
}
