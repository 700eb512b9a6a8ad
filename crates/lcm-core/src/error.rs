//! One error type for the whole engine. Every variant that can come from user input names the file,
//! tensor or flag at fault and says what was expected.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder is missing, unreadable, or not in the expected format.
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },

    /// A tensor inside a weight file is missing or does not fit the model.
    #[error("{}: tensor `{name}`: {msg}", path.display())]
    Tensor { path: PathBuf, name: String, msg: String },

    /// A `config.json` is not JSON, or describes something this engine does not build.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// A user-supplied value (flag, API argument) is out of range.
    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },

    /// The compute backend failed (driver error, kernel missing, out of memory).
    #[error("backend: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    pub fn tensor(path: impl AsRef<Path>, name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().to_path_buf(), name: name.into(), msg: msg.into() }
    }

    pub fn config(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), msg: msg.into() }
    }

    pub fn backend(msg: impl Into<String>) -> Self {
        Error::Backend(msg.into())
    }
}
