//! A single-file `--model` without `--config` needs no network: its tokenizer is CLIP's, built into
//! the engine, its configs come from its shapes. Every run here has an empty Hugging Face cache, the
//! hub switched off (`HF_HUB_OFFLINE=1`) and unroutable (`HF_ENDPOINT` at a closed port). And a
//! pickle given as `--model` is refused by name before anything reads it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Map, Value};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A scratch folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("lcm-cli-offline-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `lcm generate` on the CPU, offline; (success, stderr).
fn generate_offline(cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcm"))
        .arg("generate")
        .args(["--device", "cpu", "--prompt", "a photo of a cat", "--steps", "2", "--seed", "1"])
        .args(["--width", "64", "--height", "64"])
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("run lcm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stderr)
}

/// The single-file fixture with CLIP's vocabulary: its text encoder's 1000-row token embedding (the
/// fixture tokenizer's ids: 512 byte symbols, 486 merges, the two specials) grown to CLIP's 49408
/// rows, keeping each row at the id the full vocabulary gives the same token (the byte symbols and
/// merges keep theirs, the specials move to 49406/49407), zeros elsewhere. The rest of the file is
/// copied as it is.
fn with_clip_vocabulary(out: &Path) {
    const KEY: &str = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";
    let bytes = fs::read(fixtures().join("single-file/sd15_tiny.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort_by_key(|k| header[*k]["data_offsets"][0].as_u64().unwrap());
    let (mut new_header, mut new_data) = (Map::new(), Vec::new());
    if let Some(meta) = header.get("__metadata__") {
        new_header.insert("__metadata__".into(), meta.clone());
    }
    for name in names {
        let entry = &header[name];
        let range = |i: usize| entry["data_offsets"][i].as_u64().unwrap() as usize;
        let mut tensor = data[range(0)..range(1)].to_vec();
        let mut shape: Vec<usize> =
            entry["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        if name == KEY {
            assert_eq!(entry["dtype"], "F16");
            let (rows, width) = (shape[0], shape[1]);
            assert_eq!(rows, 1000, "the fixture's vocabulary");
            let row = 2 * width;
            let mut grown = vec![0u8; 49408 * row];
            grown[..(rows - 2) * row].copy_from_slice(&tensor[..(rows - 2) * row]);
            grown[49406 * row..].copy_from_slice(&tensor[(rows - 2) * row..]);
            (tensor, shape) = (grown, vec![49408, width]);
        }
        let start = new_data.len();
        new_data.extend_from_slice(&tensor);
        let entry =
            serde_json::json!({"dtype": entry["dtype"], "shape": shape, "data_offsets": [start, new_data.len()]});
        new_header.insert(name.clone(), entry);
    }
    let mut text = Value::Object(new_header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.extend_from_slice(&new_data);
    fs::write(out, file).unwrap();
}

#[test]
fn single_file_without_config_runs_offline() {
    let s = Scratch::new("run");
    let (model, png) = (s.path("sd15_clip_vocab.safetensors"), s.path("out.png"));
    with_clip_vocabulary(&model);
    let cache = s.path("empty-cache");
    fs::create_dir_all(&cache).unwrap();
    let (ok, stderr) =
        generate_offline(&cache, &["--model", model.to_str().unwrap(), "--output", png.to_str().unwrap()]);
    assert!(ok, "lcm generate without --config failed offline: {stderr}");
    assert!(png.is_file(), "no image written: {stderr}");
    assert!(!stderr.contains("fetching"), "something was fetched: {stderr}");
    assert_eq!(fs::read_dir(&cache).unwrap().count(), 0, "the cache was written to");
}

#[test]
fn pickles_given_as_model_are_refused_by_name() {
    let s = Scratch::new("pickle");
    let cache = s.path("empty-cache");
    fs::create_dir_all(&cache).unwrap();
    // The legacy torch.save format's opening (PROTO 2, LONG1 magic), under a pickle's name; a zip
    // archive (torch.save since 1.6) under a safetensors name.
    let legacy = s.path("model.ckpt");
    fs::write(&legacy, [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8]).unwrap();
    let zip = s.path("disguised.safetensors");
    fs::write(&zip, b"PK\x03\x04 a torch.save archive").unwrap();
    for (file, name) in [(&legacy, "model.ckpt"), (&zip, "disguised.safetensors")] {
        let out = s.path("x.png");
        let (ok, stderr) =
            generate_offline(&cache, &["--model", file.to_str().unwrap(), "--output", out.to_str().unwrap()]);
        assert!(!ok, "{name} was accepted");
        assert!(stderr.contains(name) && stderr.contains("pickle"), "{name}: {stderr}");
        assert!(!stderr.contains("fetching") && !stderr.contains("download"), "{name}: {stderr}");
    }
}
