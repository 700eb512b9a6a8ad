//! Textual-inversion embeddings: the files A1111 and diffusers users train and share, read into
//! vectors that [`crate::text::TextEncoders::add_embeddings`] appends to the text encoders' token tables.
//!
//! Formats (safetensors only; a pickle — `.pt`, `.bin` — is refused with a way to convert it):
//! - A1111 / civitai: one tensor `emb_params` `[n, C]`, or `string_to_param.*` (A1111's pickle,
//!   flattened; a `string_to_token.*` beside it is ignored). The trigger word is the file's stem.
//! - diffusers (`learned_embeds.safetensors`): one tensor named by its token, `[C]` or `[n, C]`. The
//!   trigger word is that token.
//! - SDXL: `clip_l` `[n, 768]` for the first text encoder and `clip_g` `[n, 1280]` for the second. The
//!   trigger word is the file's stem.
//!
//! A token given by the user replaces the trigger word in every format (diffusers' `token=`). Tensors
//! may be F32, F16 or BF16; they are widened to f32.
//!
//! An embeddings folder is read as A1111 reads its `embeddings/`: every `*.safetensors` file under it,
//! subfolders included, each named by its stem. What A1111 would load but lcm cannot (pickles, image
//! embeddings) and files that fail to read are skipped with the reason, not fatal: a folder shared
//! with A1111 keeps working. Other files (previews, notes) are ignored.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use lcm_core::{Error, Result, SafeTensorsFile};
use lcm_models::checkpoint::pickle::is_pickle;

pub use crate::prompt::TriggerWord;

/// One tensor of an embedding file: `count` vectors of `width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Vectors {
    /// Its name in the file (`emb_params`, `clip_l`, the diffusers token, …), for errors.
    pub tensor: String,
    /// Each vector's width: the text encoder's hidden size it was trained for.
    pub width: usize,
    /// Row-major `[count, width]`, f32.
    pub data: Vec<f32>,
}

impl Vectors {
    /// How many vectors (rows).
    pub fn count(&self) -> usize {
        self.data.len() / self.width
    }
}

/// A textual-inversion embedding read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// The word that calls it in a prompt (diffusers' token; A1111's file stem).
    pub trigger: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// The first text encoder's vectors (`text_encoder`: CLIP-L; SDXL's `clip_l`).
    pub first: Vectors,
    /// The second text encoder's (SDXL's `clip_g`); `None` for SD1.5 / SD2 embeddings.
    pub second: Option<Vectors>,
}

impl Embedding {
    /// How many vectors the embedding has (both encoders have as many).
    pub fn vectors(&self) -> usize {
        self.first.count()
    }

    /// The tokens diffusers adds for it: the trigger word, then `trigger_1`, `trigger_2`, … for a
    /// multi-vector embedding.
    pub fn token_names(&self) -> Vec<String> {
        let t = &self.trigger;
        std::iter::once(t.clone()).chain((1..self.vectors()).map(|i| format!("{t}_{i}"))).collect()
    }
}

/// An embedding a pipeline loaded: what A1111's `/sdapi/v1/embeddings` lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingInfo {
    /// The trigger word.
    pub trigger: String,
    /// The file.
    pub path: PathBuf,
    /// Its vector count.
    pub vectors: usize,
    /// The width of its vectors for each text encoder (SDXL: 768 and 1280; A1111's `shape` is their
    /// sum).
    pub widths: Vec<usize>,
    /// The tokens added to each tokenizer (diffusers' names: `trigger`, `trigger_1`, …).
    pub tokens: Vec<String>,
    /// The new ids in each text encoder's table (the first's are [`TriggerWord::vectors`]).
    pub ids: Vec<Vec<u32>>,
}

/// A file of an embeddings folder that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEmbedding {
    /// The file.
    pub path: PathBuf,
    /// Why: a pickle, an embedding for another model family, a name already taken, a bad file.
    pub reason: String,
}

/// The embeddings of a pipeline's text encoders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddingSet {
    /// Every embedding added, in order.
    pub loaded: Vec<EmbeddingInfo>,
    /// Their trigger words for A1111's syntax, per text encoder (the BPE ids of each encoder's
    /// tokenizer, its new ids), each in the same order.
    pub triggers: [Vec<TriggerWord>; 2],
    /// Files of the embeddings folder that were not loaded.
    pub skipped: Vec<SkippedEmbedding>,
}

/// What an embeddings folder holds: the embeddings read, and the files skipped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbeddingDir {
    /// Every `*.safetensors` embedding read, in path order.
    pub embeddings: Vec<Embedding>,
    /// Files that A1111 would try but lcm does not load, with the reason.
    pub skipped: Vec<SkippedEmbedding>,
}

/// The A1111 key names of a single-tensor embedding, whose trigger word is the file's stem.
fn is_a1111_name(name: &str) -> bool {
    name == "emb_params" || name.starts_with("string_to_param.")
}

/// The refusal of a pickled embedding, with a conversion that keeps its vectors.
fn pickle_refusal(path: &Path) -> Error {
    Error::file(
        path,
        "is a PyTorch pickle; lcm never unpickles (loading a pickle can run arbitrary code). Convert the embedding \
         to safetensors, e.g. `python -c \"import torch, safetensors.torch as st; d = torch.load('IN.pt', \
         weights_only=True); p = d.get('string_to_param', d); st.save_file({'emb_params': \
         next(iter(p.values())).float().contiguous()}, 'OUT.safetensors')\"` (the output's stem is then the trigger \
         word)",
    )
}

/// Reads one embedding file (see the module's formats). `token` replaces the trigger word the file
/// implies (its stem, or a diffusers file's token).
pub fn load_embedding(path: impl AsRef<Path>, token: Option<&str>) -> Result<Embedding> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(Error::file(path, "embedding file not found"));
    }
    if is_pickle(path) {
        return Err(pickle_refusal(path));
    }
    let file = SafeTensorsFile::open(path)?;
    let names: Vec<&str> = file.names().collect();
    let stem = || path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let (implied, first, second) = if names.contains(&"clip_l") || names.contains(&"clip_g") {
        let (l, g) = (vectors(&file, "clip_l")?, vectors(&file, "clip_g")?);
        if l.count() != g.count() {
            return Err(Error::tensor(
                path,
                "clip_g",
                format!(
                    "has {} vectors but clip_l has {}: an SDXL embedding has as many for each",
                    g.count(),
                    l.count()
                ),
            ));
        }
        (stem(), l, Some(g))
    } else {
        let params: Vec<&str> = names.iter().copied().filter(|n| n.starts_with("string_to_param.")).collect();
        let name = match (names.as_slice(), params.as_slice()) {
            ([one], _) => *one,
            (_, [one]) => *one,
            _ => {
                return Err(Error::file(
                    path,
                    format!(
                        "holds {} tensors ({}): expected one embedding tensor (A1111's `emb_params` or \
                         `string_to_param.*`, or diffusers' `{{token: tensor}}`), or SDXL's `clip_l` + `clip_g`",
                        names.len(),
                        list(&names)
                    ),
                ))
            }
        };
        let implied = if is_a1111_name(name) { stem() } else { name.to_string() };
        (implied, vectors(&file, name)?, None)
    };
    let trigger = token.map_or(implied, str::to_string);
    if trigger.trim().is_empty() {
        return Err(Error::file(path, "gives an empty trigger word: name the token (FILE:TOKEN)"));
    }
    Ok(Embedding { trigger, path: path.to_path_buf(), first, second })
}

/// Up to eight names, then how many more.
fn list(names: &[&str]) -> String {
    let mut s = names.iter().take(8).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > 8 {
        s.push_str(&format!(", … {} more", names.len() - 8));
    }
    s
}

/// Tensor `name` as vectors: `[C]` is one vector, `[n, C]` n of them; finite values.
fn vectors(file: &SafeTensorsFile, name: &str) -> Result<Vectors> {
    let view = file.get(name)?;
    let (count, width) = match *view.shape {
        [c] => (1, c),
        [n, c] => (n, c),
        _ => {
            return Err(Error::tensor(
                file.path(),
                name,
                format!("has shape {:?}: expected [width] or [vectors, width]", view.shape),
            ))
        }
    };
    if count == 0 || width == 0 {
        return Err(Error::tensor(file.path(), name, format!("has shape {:?}: no vector in it", view.shape)));
    }
    let data = view.to_f32();
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(file.path(), name, format!("element {i} is {} (must be finite)", data[i])));
    }
    Ok(Vectors { tensor: name.to_string(), width, data })
}

/// The embeddings of every `*.safetensors` file under `dir` (see [`scan_embeddings_dir`]), each
/// triggered by its stem; what cannot be read is left out.
pub fn load_embeddings_dir(dir: impl AsRef<Path>) -> Result<Vec<Embedding>> {
    Ok(scan_embeddings_dir(dir)?.embeddings)
}

/// Reads an embeddings folder as A1111 does: every file under it, subfolders included (symlinks
/// followed), in path order; empty files and files that are not embeddings (`*.preview.png`, notes)
/// ignored. Each `*.safetensors` embedding is triggered by its stem. Pickles (`.pt`, `.bin`), image
/// embeddings (`.png`, `.webp`, …) and files that fail to read are skipped with the reason. An error
/// only when `dir` is not a readable folder.
pub fn scan_embeddings_dir(dir: impl AsRef<Path>) -> Result<EmbeddingDir> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(Error::file(dir, "embeddings folder not found"));
    }
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    walk(dir, &mut files, &mut seen)?;
    files.sort();
    let mut out = EmbeddingDir::default();
    for path in files {
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        let empty = std::fs::metadata(&path).map(|m| m.len() == 0).unwrap_or(true);
        let skip = |reason: String| SkippedEmbedding { path: path.clone(), reason };
        match ext {
            _ if empty => {}
            "safetensors" => {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                match load_embedding(&path, Some(&stem)) {
                    Ok(e) => out.embeddings.push(e),
                    Err(e) => out.skipped.push(skip(e.to_string())),
                }
            }
            "pt" | "bin" => out.skipped.push(skip(pickle_refusal(&path).to_string())),
            "png" | "webp" | "jxl" | "avif" if !name.contains(".preview") => out.skipped.push(skip(
                "may be an A1111 image embedding (vectors hidden in a picture): lcm reads .safetensors embeddings only"
                    .to_string(),
            )),
            _ => {}
        }
    }
    Ok(out)
}

/// Every file under `dir`; `seen` holds the folders visited (canonical), so a symlink loop ends.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, seen: &mut BTreeSet<PathBuf>) -> Result<()> {
    let canonical = dir.canonicalize().map_err(|e| Error::file(dir, format!("cannot read: {e}")))?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::file(dir, format!("cannot read: {e}")))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::file(dir, format!("cannot read: {e}")))?.path();
        if path.is_dir() {
            walk(&path, files, seen)?;
        } else if path.is_file() {
            files.push(path);
        }
    }
    Ok(())
}
