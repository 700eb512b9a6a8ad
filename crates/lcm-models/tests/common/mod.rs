//! Shared by the integration tests: where the fixtures are and how to read recorded tensors.
#![allow(dead_code)]

use std::fs;
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

/// A scratch copy of a fixture component, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn copy_of(component: &str, tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lcm-bad-input-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(fixtures().join(component)).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        Scratch(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Rewrites `file` in `dir` with `edit` applied to the (name, dtype, shape, bytes) list.
pub fn rewrite(dir: &Path, file: &str, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) {
    let p = dir.join(file);
    let bytes = fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}

impl Scratch {
    /// An empty scratch folder, removed on drop.
    pub fn empty(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lcm-bad-input-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

/// Converts every F16 tensor of a `rewrite` list to `dtype` (F32 or BF16), asserting no value changes.
pub fn convert(tensors: &mut [(String, safetensors::Dtype, Vec<usize>, Vec<u8>)], dtype: safetensors::Dtype) {
    use half::{bf16, f16};
    for (name, d, _, bytes) in tensors.iter_mut().filter(|t| t.1 == safetensors::Dtype::F16) {
        let values: Vec<f32> =
            bytes.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect();
        *bytes = match dtype {
            safetensors::Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            safetensors::Dtype::BF16 => values
                .iter()
                .flat_map(|&v| {
                    let b = bf16::from_f32(v);
                    assert_eq!(b.to_f32(), v, "{name}: {v} is not exact in bf16");
                    b.to_bits().to_le_bytes()
                })
                .collect(),
            other => panic!("no conversion to {other:?}"),
        };
        *d = dtype;
    }
}
