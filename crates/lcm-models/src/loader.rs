//! Finding a component's weight file in a diffusers folder and loading exactly the tensors a graph
//! names into a backend, one tensor at a time.

use std::path::{Path, PathBuf};

use lcm_core::{Backend, Error, ModelWeights, Result, SafeTensorsFile, WeightFiles, WeightSpec};

/// Which weight file to take when a folder holds both the full-precision and the `.fp16` variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The full-precision file if present, else the fp16 one (what the f32 CPU backend wants).
    #[default]
    PreferFull,
    /// The fp16 file if present, else the full one (half the bytes to read for an f16 backend).
    PreferHalf,
}

/// A hook that may change a weight (in torch layout, f32) before it is uploaded: LoRA merging.
pub type WeightHook<'a> = &'a mut dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()>;

/// Lends the hook out for one `load_weights` call (a VAE loads its decoder and encoder with one hook).
pub fn reborrow<'s>(hook: &'s mut Option<WeightHook<'_>>) -> Option<WeightHook<'s>> {
    hook.as_mut().map(|f| &mut **f as WeightHook<'s>)
}

/// How a diffusers component folder is loaded.
pub struct LoadOptions<'a> {
    /// Which weight file to read when both precisions are there.
    pub variant: Variant,
    /// Sees every weight before upload (LoRA merging); `None`: weights load as stored.
    pub hook: Option<WeightHook<'a>>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { variant: Variant::PreferFull, hook: None }
    }
}

/// Checks that `dir` is a component folder and returns its `config.json` path.
pub fn component_config(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::file(dir, "missing component folder (expected a diffusers folder with text_encoder/, unet/, vae/, tokenizer/, scheduler/)"));
    }
    let cfg = dir.join("config.json");
    if !cfg.is_file() {
        return Err(Error::file(&cfg, "missing config.json"));
    }
    Ok(cfg)
}

/// Opens `<stem>.safetensors`, `<stem>.fp16.safetensors`, or the shards of their `.index.json`.
/// A pickle (`.bin`, `.ckpt`, `.pt`) in their place is refused with a way to convert it.
pub fn find_weights(dir: &Path, stem: &str, variant: Variant) -> Result<WeightFiles> {
    let full = [format!("{stem}.safetensors"), format!("{stem}.safetensors.index.json")];
    let half = [format!("{stem}.fp16.safetensors"), format!("{stem}.fp16.safetensors.index.json")];
    let order: Vec<&String> = match variant {
        Variant::PreferFull => full.iter().chain(&half).collect(),
        Variant::PreferHalf => half.iter().chain(&full).collect(),
    };
    for name in order {
        let p = dir.join(name);
        if p.is_file() {
            return if name.ends_with(".index.json") { open_sharded(&p) } else { WeightFiles::open(&p) };
        }
    }
    let pickles = [format!("{stem}.bin"), format!("{stem}.fp16.bin"), format!("{stem}.ckpt"), format!("{stem}.pt")];
    if let Some(p) = pickles.iter().map(|n| dir.join(n)).find(|p| p.is_file()) {
        return Err(pickle_refusal(&p));
    }
    Err(Error::file(
        dir.join(&full[0]),
        format!("missing weight file (also looked for {} and sharded index files)", half[0]),
    ))
}

/// The error for a PyTorch pickle (`.bin`, `.ckpt`, `.pt`, `.pth`) where safetensors were expected.
pub fn pickle_refusal(path: &Path) -> Error {
    Error::file(
        path,
        "is a PyTorch pickle; lcm never unpickles (loading a pickle can run arbitrary code). Convert it to safetensors, e.g. \
         `python -c \"import torch, safetensors.torch as st; sd = torch.load('IN', weights_only=True); \
         sd = sd.get('state_dict', sd); st.save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, 'OUT.safetensors')\"`, \
         or load it with diffusers and save_pretrained(..., safe_serialization=True)",
    )
}

/// Whether `path` is a pickle by its name or its first bytes: a zip archive (`torch.save` since 1.6)
/// or the legacy format's opening (PROTO 2, then the LONG1 magic number). A safetensors file starts
/// with its header length, which would have to be ~176 MB to begin with those legacy bytes.
pub fn is_pickle(path: &Path) -> bool {
    let by_name = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl"));
    let mut head = [0u8; 4];
    let by_magic = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head == *b"PK\x03\x04" || head == [0x80, 0x02, 0x8a, 0x0a]);
    by_name || by_magic
}

fn open_sharded(index: &Path) -> Result<WeightFiles> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::file(index, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::file(index, format!("not valid JSON: {e}")))?;
    let map =
        v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::file(index, "no `weight_map` object"))?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_string)).collect();
    shards.sort();
    shards.dedup();
    // A shard is a file beside the index: a name with a directory in it (`../x`, `/dev/zero`) would
    // let a downloaded index open any file on the machine.
    if let Some(bad) = shards.iter().find(|s| Path::new(s).file_name() != Some(std::ffi::OsStr::new(s.as_str()))) {
        return Err(Error::file(index, format!("shard `{bad}` is not a file name beside the index")));
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let files = shards.iter().map(|s| SafeTensorsFile::open(dir.join(s))).collect::<Result<Vec<_>>>()?;
    Ok(WeightFiles::from_files(files))
}

/// Produces one weight's values (f32, torch layout) into the buffer: from a file, or synthetic.
pub type WeightSource<'a> = &'a mut dyn FnMut(&WeightSpec, &mut Vec<f32>) -> Result<()>;

/// Loads every tensor `specs` names from `files` into `backend`, checking shapes; the hook (LoRA) sees
/// each tensor in f32 torch layout first. Peak extra memory is one tensor in f32.
pub fn load_weights<B: Backend>(
    backend: &B,
    specs: &[WeightSpec],
    files: &WeightFiles,
    hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut from_file = |spec: &WeightSpec, buf: &mut Vec<f32>| {
        files.get_shaped(file_name_of(files, &spec.name), &spec.shape)?.to_f32_into(buf);
        Ok(())
    };
    upload_weights(backend, specs, &files.location(), &mut from_file, hook)
}

/// A source that reads weights from `files` again, pristine (kept by a model whose weights a LoRA swap
/// re-merges).
pub fn file_source(files: WeightFiles) -> lcm_core::WeightSource {
    Box::new(move |spec: &WeightSpec, buf: &mut Vec<f32>| {
        files.get_shaped(file_name_of(&files, &spec.name), &spec.shape)?.to_f32_into(buf);
        Ok(())
    })
}

/// Uploads every weight of `specs`, taking values from `source` (then `hook`); `origin` names where
/// they come from in errors. A non-finite value is an error naming the weight and the element.
pub fn upload_weights<B: Backend>(
    backend: &B,
    specs: &[WeightSpec],
    origin: &Path,
    source: WeightSource,
    mut hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut weights = Vec::with_capacity(specs.len());
    let mut buf = Vec::new();
    for spec in specs {
        source(spec, &mut buf)?;
        if let Some(h) = hook.as_mut() {
            h(spec, &mut buf)?;
        }
        if let Some(i) = buf.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                origin,
                &spec.name,
                format!("element {i} is {} (weights must be finite)", buf[i]),
            ));
        }
        weights.push(backend.upload_weight(spec, &buf)?);
    }
    Ok(ModelWeights::new(specs.to_vec(), weights))
}

/// The name a weight has in the file: transformers 5 saves CLIPTextModel without the `text_model.`
/// level that SD checkpoints (and the graph) use, so both spellings are accepted.
fn file_name_of<'a>(files: &WeightFiles, name: &'a str) -> &'a str {
    match name.strip_prefix("text_model.") {
        Some(rest) if !files.contains(name) && files.contains(rest) => rest,
        _ => name,
    }
}
