//! Reading weights out of one memory-mapped safetensors file whose names are not the graph's: each
//! weight has a [`FileKey`] (the tensor's key, and which part of it the weight is), and is checked for
//! presence and shape against what the graph declares as it is read.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use lcm_core::{Backend, Error, ModelWeights, Result, SafeTensorsFile, WeightSpec};

use super::ldm::vae_ldm_is_conv;
use super::pickle::{is_pickle, pickle_refusal};
use super::weights::{upload_weights, WeightHook};

/// Which part of a file tensor a weight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// All of it, as stored.
    All,
    /// Rows `[i·n/3, (i+1)·n/3)` of a tensor of three stacked weights (`in_proj_weight`'s q, k, v).
    Third(usize),
    /// The transpose of a 2-D tensor.
    Transposed,
}

/// Where a weight is in a file: the key and the part taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileKey {
    /// The tensor's name in the file.
    pub key: String,
    /// What is taken of it.
    pub take: Take,
}

impl FileKey {
    /// The whole tensor `key`.
    pub fn whole(key: String) -> FileKey {
        FileKey { key, take: Take::All }
    }

    /// The shape the file tensor must have for a weight of shape `weight`.
    pub fn file_shape<'a>(&self, weight: &'a [usize]) -> Cow<'a, [usize]> {
        match (self.take, weight) {
            (Take::Third(_), [rows, rest @ ..]) => Cow::Owned([&[3 * rows][..], rest].concat()),
            (Take::Transposed, &[a, b]) => Cow::Owned(vec![b, a]),
            _ => Cow::Borrowed(weight),
        }
    }

    /// Cuts the weight out of the file tensor's values `buf` (`file_shape` checked): in place.
    pub fn extract(&self, buf: &mut Vec<f32>, file_shape: &[usize]) {
        match self.take {
            Take::All => {}
            Take::Third(i) => {
                let n = buf.len() / 3;
                buf.copy_within(i * n..(i + 1) * n, 0);
                buf.truncate(n);
            }
            Take::Transposed => {
                let (rows, cols) = (file_shape[0], file_shape[1]);
                let t: Vec<f32> = (0..cols * rows).map(|k| buf[(k % rows) * cols + k / rows]).collect();
                *buf = t;
            }
        }
    }
}

/// Opens a `.safetensors` file given by the user: a missing file or a pickle is refused by name.
pub(crate) fn open_safetensors(path: &Path) -> Result<SafeTensorsFile> {
    if !path.is_file() {
        return Err(Error::file(path, "not found (expected a .safetensors file)"));
    }
    if is_pickle(path) {
        return Err(pickle_refusal(path));
    }
    SafeTensorsFile::open(path)
}

/// Reads `spec` from `file` as `key`: present, a float type, and shaped as the graph needs (an LDM
/// VAE attention projection may be the 1x1 conv it is in the file).
fn fetch(file: &SafeTensorsFile, key: &FileKey, spec: &WeightSpec, what: &str, buf: &mut Vec<f32>) -> Result<()> {
    check_tensor(file, key, spec, what)?;
    let t = file.get(&key.key)?;
    t.to_f32_into(buf);
    key.extract(buf, t.shape);
    Ok(())
}

/// Checks that `key` is in `file` with the shape `spec` needs (see [`fetch`]).
pub(crate) fn check_tensor(file: &SafeTensorsFile, key: &FileKey, spec: &WeightSpec, what: &str) -> Result<()> {
    let k = key.key.as_str();
    let Some(shape) = file.shape(k) else {
        let msg = format!("missing ({what}'s `{}`, shape {:?})", spec.name, spec.shape);
        return Err(Error::tensor(file.path(), k, msg));
    };
    let want = key.file_shape(&spec.shape);
    let conv_1x1 = vae_ldm_is_conv(k) && shape.len() == 4 && shape[..2] == spec.shape[..] && shape[2..] == [1, 1];
    if shape != want.as_ref() && !conv_1x1 {
        let part = match key.take {
            Take::All => String::new(),
            Take::Third(i) => format!(", whose rows stack q, k and v: part {i} of 3"),
            Take::Transposed => ", stored transposed".to_string(),
        };
        let msg = format!("has shape {shape:?}, expected {want:?} ({what}'s `{}` {:?}{part})", spec.name, spec.shape);
        return Err(Error::tensor(file.path(), k, msg));
    }
    Ok(())
}

/// Uploads every weight of `specs`, each read from `file` under the key `key` maps its name to, then
/// through `hook`; `what` names the model in errors.
pub(crate) fn upload_mapped<B: Backend>(
    backend: &B,
    file: &SafeTensorsFile,
    specs: &[WeightSpec],
    key: &dyn Fn(&str) -> Option<FileKey>,
    what: &str,
    hook: Option<WeightHook>,
) -> Result<ModelWeights<B>> {
    let mut source = |spec: &WeightSpec, buf: &mut Vec<f32>| {
        let k = key(&spec.name).ok_or_else(|| {
            Error::tensor(file.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
        })?;
        fetch(file, &k, spec, what, buf)
    };
    upload_weights(backend, specs, file.path(), &mut source, hook)
}

/// Reads weights from a mapped file again (a LoRA swap's pristine values), names mapped by `key`.
pub(crate) fn mapped_source(
    file: Arc<SafeTensorsFile>,
    key: impl Fn(&str) -> Option<FileKey> + Send + 'static,
    what: &'static str,
) -> lcm_core::WeightSource {
    Box::new(move |spec: &WeightSpec, buf: &mut Vec<f32>| {
        let k = key(&spec.name).ok_or_else(|| {
            Error::tensor(file.path(), &spec.name, format!("{what} weight has no name in this file's layout"))
        })?;
        fetch(&file, &k, spec, what, buf)
    })
}
