//! Sharded weights (`<stem>.safetensors.index.json` + shards), good and hostile: a split UNet loads as
//! the single file does, and a bad index is an error naming it.

mod common;

use std::fs;
use std::path::Path;

use common::{fixtures, Scratch};
use lcm_cpu::CpuBackend;
use lcm_models::{LoadOptions, Unet};
use safetensors::tensor::TensorView;

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
const INDEX: &str = "diffusion_pytorch_model.safetensors.index.json";

/// Replaces the UNet's weight file in `dir` by two shards and an index; returns the tensor names.
fn shard(dir: &Path) -> Vec<String> {
    let bytes = fs::read(dir.join(WEIGHTS)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("diffusion_pytorch_model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            map.insert(n.clone(), file.clone().into());
        }
    }
    fs::remove_file(dir.join(WEIGHTS)).unwrap();
    write_index(dir, serde_json::json!({ "metadata": {}, "weight_map": map }));
    names
}

fn write_index(dir: &Path, v: serde_json::Value) {
    fs::write(dir.join(INDEX), v.to_string()).unwrap();
}

fn load(dir: &Path) -> Result<Unet<CpuBackend>, lcm_core::Error> {
    Unet::load(&CpuBackend::new(), dir, LoadOptions::default())
}

fn err(dir: &Path) -> String {
    let e = load(dir).err().expect("loading should fail").to_string();
    println!("{e}");
    e
}

#[test]
fn a_sharded_unet_loads_like_the_single_file() {
    let s = Scratch::copy_of("tiny-sd/unet", "shards-ok");
    shard(s.path());
    let sharded = load(s.path()).unwrap();
    let single = load(&fixtures().join("tiny-sd/unet")).unwrap();
    assert_eq!(sharded.runner().weights.specs.len(), single.runner().weights.specs.len());
}

#[test]
fn hostile_indexes_are_errors_naming_them() {
    let s = Scratch::copy_of("tiny-sd/unet", "shards-bad");
    let names = shard(s.path());
    let first = "diffusion_pytorch_model-00001-of-00002.safetensors";
    let cases: Vec<(serde_json::Value, &[&str])> = vec![
        (
            serde_json::json!({ "weight_map": { &names[0]: "../../../../etc/passwd" } }),
            &[INDEX, "../../../../etc/passwd", "not a file name"],
        ),
        (serde_json::json!({ "weight_map": { &names[0]: "/dev/zero" } }), &[INDEX, "/dev/zero", "not a file name"]),
        (serde_json::json!({ "weight_map": { &names[0]: ".." } }), &[INDEX, "not a file name"]),
        (
            serde_json::json!({ "weight_map": { &names[0]: "missing.safetensors" } }),
            &["missing.safetensors", "cannot open"],
        ),
        (serde_json::json!({ "weight_map": [] }), &[INDEX, "no `weight_map` object"]),
        (serde_json::json!([1, 2]), &[INDEX, "no `weight_map` object"]),
        // Only the first shard: the second half of the tensors is missing.
        (serde_json::json!({ "weight_map": { &names[0]: first } }), &["missing"]),
    ];
    for (index, parts) in cases {
        write_index(s.path(), index);
        let e = err(s.path());
        for p in parts {
            assert!(e.contains(p), "`{e}` should mention `{p}`");
        }
    }
    fs::write(s.path().join(INDEX), b"{\"weight_map\": {").unwrap();
    let e = err(s.path());
    assert!(e.contains(INDEX) && e.contains("not valid JSON"), "{e}");
}
