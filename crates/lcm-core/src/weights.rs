//! Weight files: safetensors read through one memory map per file.
//!
//! Nothing here copies a file into memory. A tensor is handed out as a borrowed view of the mapped bytes;
//! the backend widens or narrows it into its own storage one tensor at a time, so peak memory is the
//! backend's copy of the weights plus one tensor, never two copies of the file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::dtype::{widen_to_f32, DType};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Entry {
    /// `None` for element types a weight never has (I64 position ids, say): an error only if requested.
    dtype: Option<DType>,
    dtype_name: String,
    shape: Vec<usize>,
    /// Byte range inside the mapped file.
    start: usize,
    end: usize,
}

/// One mapped `.safetensors` file.
pub struct SafeTensorsFile {
    path: PathBuf,
    map: Mmap,
    entries: BTreeMap<String, Entry>,
}

/// A tensor as it lies in the file: element type, shape, and the little-endian bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    /// Element type in the file.
    pub dtype: DType,
    /// Shape as stored (torch layout).
    pub shape: &'a [usize],
    /// The data, little-endian, borrowed from the map.
    pub bytes: &'a [u8],
}

impl TensorView<'_> {
    /// Element count.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The tensor widened to f32 (into `out`, reused across calls by the loaders).
    pub fn to_f32_into(&self, out: &mut Vec<f32>) {
        widen_to_f32(self.dtype, self.bytes, out);
    }

    /// The tensor widened to f32, in a new vector.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut v = Vec::with_capacity(self.numel());
        self.to_f32_into(&mut v);
        v
    }
}

impl SafeTensorsFile {
    /// Maps `path` and validates its header (offsets cover the file exactly, shapes match byte counts).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::file(&path, format!("cannot open: {e}")))?;
        // SAFETY: the map is read-only. A weight file changed by another process while mapped would give
        // wrong numbers (as with any reader), not unsoundness in this process's own data structures:
        // every byte range is bounds-checked against the map length below.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::file(&path, format!("cannot memory-map: {e}")))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::file(&path, format!("not a valid safetensors file ({e}); is it truncated or corrupt?"))
        })?;
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (a, b) = info.data_offsets;
            let dtype_name = format!("{:?}", info.dtype);
            let entry = Entry {
                dtype: DType::from_safetensors(&dtype_name),
                dtype_name,
                shape: info.shape.clone(),
                start: data_start + a,
                end: data_start + b,
            };
            if entry.end > map.len() || entry.start > entry.end {
                return Err(Error::tensor(&path, name, "data offsets point outside the file"));
            }
            entries.insert(name, entry);
        }
        Ok(SafeTensorsFile { path, map, entries })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the tensors in the file, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Whether the file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Shape of tensor `name` as stored; `None` when absent.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// The tensor `name`, or an error naming the file and tensor when it is absent or not a float type.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        let e = self.entries.get(name).ok_or_else(|| Error::tensor(&self.path, name, "missing from this file"))?;
        let dtype = e.dtype.ok_or_else(|| {
            Error::tensor(&self.path, name, format!("has dtype {}, expected F32, F16 or BF16", e.dtype_name))
        })?;
        Ok(TensorView { dtype, shape: &e.shape, bytes: &self.map[e.start..e.end] })
    }
}

/// The weights of one model component: one file, or the shards an `*.index.json` lists.
pub struct WeightFiles {
    files: Vec<SafeTensorsFile>,
    /// tensor name -> index into `files`
    owner: BTreeMap<String, usize>,
}

impl WeightFiles {
    /// The tensors of all `files`; a name in several files is read from the last of them.
    pub fn from_files(files: Vec<SafeTensorsFile>) -> Self {
        let mut owner = BTreeMap::new();
        for (i, f) in files.iter().enumerate() {
            for n in f.names() {
                owner.insert(n.to_string(), i);
            }
        }
        WeightFiles { files, owner }
    }

    /// One `.safetensors` file (see [`SafeTensorsFile::open`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::from_files(vec![SafeTensorsFile::open(path)?]))
    }

    /// A description of where the weights come from, for error messages.
    pub fn location(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.path().to_path_buf(),
            many => many.first().and_then(|f| f.path().parent()).map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// Names of the tensors over all files, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.owner.keys().map(String::as_str)
    }

    /// Whether any file holds tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.owner.contains_key(name)
    }

    /// The file holding tensor `name`.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.owner.get(name).map(|&i| self.files[i].path())
    }

    /// The tensor `name` from the file that holds it; an error names the tensor and file, or the
    /// weights' [`location`](WeightFiles::location) when no file holds it.
    pub fn get(&self, name: &str) -> Result<TensorView<'_>> {
        match self.owner.get(name) {
            Some(&i) => self.files[i].get(name),
            None => Err(Error::tensor(self.location(), name, "missing from the weight file")),
        }
    }

    /// `get` plus a check that the shape is `expected`.
    pub fn get_shaped(&self, name: &str, expected: &[usize]) -> Result<TensorView<'_>> {
        let v = self.get(name)?;
        if v.shape != expected {
            let at = self.file_of(name).map(Path::to_path_buf).unwrap_or_default();
            return Err(Error::tensor(at, name, format!("has shape {:?}, expected {:?}", v.shape, expected)));
        }
        Ok(v)
    }
}
