//! The model's `config.pbtxt`: written from the tensor contract ([`lcm_pipeline::infer`]) by
//! [`config_pbtxt`], and its `parameters` read back (from the JSON Triton hands the backend) into what
//! to load by [`Settings::from_config_json`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result};
use lcm_pipeline::infer::{TensorSpec, INPUTS, OUTPUT};
use lcm_pipeline::spec::{LoadSpec, LoraMode, LoraSpec};
use serde_json::Value;

/// The model's name in the repository (the folder `lcm/` and the client's model name).
pub const MODEL_NAME: &str = "lcm";

/// The parameters `config.pbtxt` may set, with what each means (docs/triton.md lists the same).
pub const PARAMETERS: [(&str, &str); 6] = [
    ("model", "a diffusers folder or a single-file checkpoint; relative paths are from the model's folder"),
    ("config", "with a single-file model: a diffusers folder whose configs are used (as lcm's --config)"),
    ("loras", "LoRAs, comma-separated FILE[:SCALE] (as lcm's --lora)"),
    ("lora_mode", "merged (default) or runtime (as lcm's --lora-mode)"),
    ("vae", "a separate VAE (as lcm's --vae)"),
    ("precision", "auto: f16 weights on a GPU, f32 on the CPU (the engine's choice; the only value today)"),
];

/// Where an instance runs (the `instance_group` kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceKind {
    /// KIND_CPU: the f32 CPU backend.
    Cpu,
    /// KIND_GPU: the CUDA backend on each listed GPU.
    Gpu,
    /// No kind: Triton's KIND_AUTO (a GPU when Triton sees one, else the CPU).
    Auto,
}

/// What `scripts/triton.sh repo` writes into `config.pbtxt`.
#[derive(Clone, Debug)]
pub struct RepoOptions {
    /// The `model` parameter.
    pub model: PathBuf,
    /// The `loras` parameter.
    pub loras: Vec<LoraSpec>,
    /// Instances per device (`instance_group.count`).
    pub instances: usize,
    /// Their kind.
    pub kind: InstanceKind,
    /// `max_batch_size`: the most rows one `execute` gets.
    pub max_batch_size: usize,
    /// The dynamic batcher's wait for more requests, in microseconds.
    pub max_queue_delay_us: u64,
}

/// The model's `config.pbtxt`: backend `lcm`, batched, the dynamic batcher, the inputs and output of
/// [`INPUTS`] and [`OUTPUT`] (dims without the batch dimension), the instances, the parameters.
pub fn config_pbtxt(o: &RepoOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Written by scripts/triton.sh repo (crates/lcm-triton, config.rs); docs/triton.md.");
    let _ = writeln!(s, "name: \"{MODEL_NAME}\"\nbackend: \"lcm\"\nmax_batch_size: {}", o.max_batch_size);
    let _ = writeln!(s, "dynamic_batching {{\n  max_queue_delay_microseconds: {}\n}}", o.max_queue_delay_us);
    let tensors = |s: &mut String, key: &str, specs: &[TensorSpec]| {
        let items: Vec<String> = specs.iter().map(tensor).collect();
        let _ = writeln!(s, "{key} [\n{}\n]", items.join(",\n"));
    };
    tensors(&mut s, "input", &INPUTS);
    tensors(&mut s, "output", &[OUTPUT]);
    let kind = match o.kind {
        InstanceKind::Cpu => "\n    kind: KIND_CPU",
        InstanceKind::Gpu => "\n    kind: KIND_GPU",
        InstanceKind::Auto => "",
    };
    let _ = writeln!(s, "instance_group [\n  {{\n    count: {}{kind}\n  }}\n]", o.instances);
    let mut params = vec![("model", o.model.display().to_string())];
    if !o.loras.is_empty() {
        let loras: Vec<String> = o.loras.iter().map(|l| format!("{}:{}", l.path.display(), l.scale)).collect();
        params.push(("loras", loras.join(",")));
    }
    for (key, value) in params {
        let _ = writeln!(s, "parameters {{\n  key: \"{key}\"\n  value: {{ string_value: {} }}\n}}", quote(&value));
    }
    s
}

fn tensor(t: &TensorSpec) -> String {
    let dims: Vec<String> = t.dims.iter().map(i64::to_string).collect();
    let optional = if t.required { "" } else { "\n    optional: true" };
    format!(
        "  {{\n    name: \"{}\"\n    data_type: {}\n    dims: [ {} ]{optional}\n  }}",
        t.name,
        t.dtype.config_name(),
        dims.join(", ")
    )
}

/// A protobuf text-format string literal.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// What one model loads, from its `parameters`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The load spec every instance loads (on its own device).
    pub spec: LoadSpec,
}

impl Settings {
    /// From the model configuration Triton passes the backend (its JSON form), relative paths taken
    /// from `model_dir` (the model's folder in the repository). Errors name the parameter.
    pub fn from_config_json(json: &str, model_dir: &Path) -> Result<Settings> {
        let config: Value =
            serde_json::from_str(json).map_err(|e| Error::invalid("model configuration", format!("not JSON: {e}")))?;
        let params = config.get("parameters").and_then(Value::as_object);
        let get = |key: &str| -> Result<Option<String>> {
            let Some(p) = params.and_then(|m| m.get(key)) else { return Ok(None) };
            match p.get("string_value").and_then(Value::as_str) {
                Some(v) => Ok(Some(v.trim().to_string())),
                None => Err(param(key, "expected { string_value: \"...\" }")),
            }
        };
        if let Some(m) = params {
            if let Some(k) = m.keys().find(|k| !PARAMETERS.iter().any(|(p, _)| p == k)) {
                let known: Vec<_> = PARAMETERS.iter().map(|(p, _)| *p).collect();
                return Err(param(k, format!("unknown parameter; the backend reads {}", known.join(", "))));
            }
        }
        let path = |v: String| if Path::new(&v).is_absolute() { PathBuf::from(v) } else { model_dir.join(v) };
        let model = get("model")?.filter(|m| !m.is_empty()).map(path).ok_or_else(|| {
            param("model", "missing: name the model folder or file (parameters { key: \"model\" ... })")
        })?;
        let mut loras = Vec::new();
        for item in get("loras")?.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let lora = LoraSpec::parse(item).map_err(|e| param("loras", format!("`{item}`: {e}")))?;
            loras.push(LoraSpec { path: path(lora.path.display().to_string()), ..lora });
        }
        let lora_mode = match get("lora_mode")?.as_deref() {
            None | Some("merged") => LoraMode::Merged,
            Some("runtime") => LoraMode::Runtime,
            Some(other) => return Err(param("lora_mode", format!("`{other}`: expected merged or runtime"))),
        };
        match get("precision")?.as_deref() {
            None | Some("auto") => {}
            Some(other) => return Err(param("precision", format!("`{other}`: expected auto"))),
        }
        let spec = LoadSpec {
            model_dir: model,
            config_dir: get("config")?.map(path),
            vae: get("vae")?.map(path),
            loras,
            lora_mode,
            ..LoadSpec::default()
        };
        Ok(Settings { spec })
    }
}

fn param(key: &str, msg: impl Into<String>) -> Error {
    Error::invalid(format!("config.pbtxt parameter '{key}'"), msg)
}

#[cfg(test)]
mod tests;
