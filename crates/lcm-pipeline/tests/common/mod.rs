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

/// One generation against diffusers' record `records/<dir>/<name>.safetensors`: the denoised latents
/// (relative L2) and the 8-bit image (mean absolute difference), printed; a failure line when past
/// the end-to-end bar (1e-3, 1/255).
pub fn against_record(dir: &str, name: &str, out: &lcm_pipeline::pipeline::Output) -> Option<String> {
    let rec = lcm_core::SafeTensorsFile::open(fixtures().join(format!("records/{dir}/{name}.safetensors"))).unwrap();
    let latents = rec.get("latents").expect("latents recorded");
    assert_eq!(out.latents.shape, latents.shape, "{name}: latent shape");
    let lat_err = lcm_core::rel_l2(&out.latents.data, &latents.to_f32());
    let u8s = rec.get("image_u8").expect("image_u8 recorded").to_f32();
    let ours: Vec<u8> = (0..out.images.shape[0]).flat_map(|i| out.rgb8(i)).collect();
    let mad = ours.iter().zip(&u8s).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum::<f64>() / u8s.len() as f64;
    println!("{name:<16} latents rel L2 {lat_err:.2e}  image MAD {mad:.3}/255");
    (!(lat_err < 1e-3 && mad < 1.0)).then(|| format!("{name}: latents rel L2 {lat_err:.2e}, image MAD {mad:.3}/255"))
}

/// A case's LoRAs from its `cases.json` entry (`[[path, scale], …]`, fixture-relative).
pub fn case_loras(c: &serde_json::Value) -> Vec<lcm_pipeline::spec::LoraSpec> {
    let loras = c["loras"].as_array().map_or(&[][..], |v| v.as_slice());
    loras
        .iter()
        .map(|l| lcm_pipeline::spec::LoraSpec {
            path: fixtures().join(l[0].as_str().unwrap()),
            scale: l[1].as_f64().unwrap() as f32,
        })
        .collect()
}
