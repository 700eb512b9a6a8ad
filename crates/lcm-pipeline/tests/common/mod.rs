//! Shared by lcm-pipeline's integration tests: where the fixtures are, and safetensors files read and
//! rewritten whole (to build broken or re-keyed copies of fixtures).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use safetensors::Dtype;

/// tests/fixtures of the workspace.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A safetensors file's tensors in file order: name, dtype, shape, raw bytes.
pub type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

pub fn read_tensors(path: &Path) -> Tensors {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect()
}

pub fn write_tensors(path: &Path, tensors: &Tensors) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}
