//! The default model when `--model` is not given: Stable Diffusion 1.5 plus the LCM-LoRA, looked up in
//! the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) and
//! fetched into it when missing and the network allows. Nothing else downloads: a single-file `--model`
//! gets CLIP's tokenizer built into the engine (`ClipTokenizer::builtin`), its configs from its shapes.

use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};

pub const SD15_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
pub const LCM_LORA_REPO: &str = "latent-consistency/lcm-lora-sdv1-5";
pub const LCM_LORA_FILE: &str = "pytorch_lora_weights.safetensors";

/// The files of SD1.5 lcm reads (the fp16 weights: half the download, exact enough for either backend).
pub const SD15_FILES: &[&str] = &[
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
];

pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// The snapshot folder of `repo` at the revision `refs/main` names, if every file in `files` is there.
pub fn cached_snapshot(cache: &Path, repo: &str, files: &[&str]) -> Option<PathBuf> {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let rev = std::fs::read_to_string(root.join("refs/main")).ok()?;
    let snap = root.join("snapshots").join(rev.trim());
    files.iter().all(|f| snap.join(f).is_file()).then_some(snap)
}

pub struct DefaultModel {
    pub model_dir: PathBuf,
    pub lora: PathBuf,
}

/// SD1.5 + LCM-LoRA from the cache, downloading what is missing.
pub fn default_model(log: &mut dyn FnMut(&str)) -> Result<DefaultModel> {
    let cache = cache_dir();
    let lookup = || {
        Some(DefaultModel {
            model_dir: cached_snapshot(&cache, SD15_REPO, SD15_FILES)?,
            lora: cached_snapshot(&cache, LCM_LORA_REPO, &[LCM_LORA_FILE])?.join(LCM_LORA_FILE),
        })
    };
    if let Some(found) = lookup() {
        return Ok(found);
    }
    let download_error = download(&cache, &[(SD15_REPO, SD15_FILES), (LCM_LORA_REPO, &[LCM_LORA_FILE])], log).err();
    if let Some(found) = lookup() {
        return Ok(found);
    }
    let why = download_error.unwrap_or_else(|| "the files are still incomplete after downloading".into());
    Err(Error::invalid(
        "--model",
        format!(
            "not given, and Stable Diffusion 1.5 + the LCM-LoRA are not in the Hugging Face cache at {} ({why}).\n\
             Either pass --model DIR (a diffusers folder) [--lora FILE], or download them into that cache:\n  \
             huggingface-cli download {SD15_REPO} {}\n  \
             huggingface-cli download {LCM_LORA_REPO} {LCM_LORA_FILE}\n\
             (set HF_HOME or HF_HUB_CACHE to use another cache folder)",
            cache.display(),
            SD15_FILES.join(" ")
        ),
    ))
}

fn download(cache: &Path, wanted: &[(&str, &[&str])], log: &mut dyn FnMut(&str)) -> std::result::Result<(), String> {
    use hf_hub::api::sync::ApiBuilder;
    let mut builder =
        ApiBuilder::from_cache(hf_hub::Cache::new(cache.to_path_buf())).with_progress(true).with_retries(1);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint); // a mirror, as huggingface_hub honours it
    }
    let api = builder.build().map_err(|e| format!("cannot start the Hub client: {e}"))?;
    for &(repo, files) in wanted {
        let r = api.model(repo.to_string());
        for f in files {
            log(&format!("fetching {repo}/{f}"));
            r.get(f).map_err(|e| format!("download of {repo}/{f} failed: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_complete_snapshot_only() {
        let cache = std::env::temp_dir().join(format!("lcm-hub-{}", std::process::id()));
        let root = cache.join("models--org--name");
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), "abc123\n").unwrap();
        let snap = root.join("snapshots/abc123");
        std::fs::create_dir_all(snap.join("unet")).unwrap();
        std::fs::write(snap.join("a.json"), "{}").unwrap();
        assert_eq!(cached_snapshot(&cache, "org/name", &["a.json"]), Some(snap.clone()));
        assert_eq!(cached_snapshot(&cache, "org/name", &["a.json", "unet/w.safetensors"]), None);
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
