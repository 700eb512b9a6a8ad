//! One error type for the whole engine. Every variant that can come from user input names the file,
//! tensor or flag at fault and says what was expected.

use std::path::{Path, PathBuf};

/// An engine error, naming what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder is missing, unreadable, or not in the expected format.
    #[error("{}: {msg}", path.display())]
    File {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A tensor inside a weight file is missing or does not fit the model.
    #[error("{}: tensor `{name}`: {msg}", path.display())]
    Tensor {
        /// The weight file, or the folder of a sharded set.
        path: PathBuf,
        /// The tensor's checkpoint name.
        name: String,
        /// What is wrong with it.
        msg: String,
    },

    /// A `config.json` is not JSON, or describes something this engine does not build.
    #[error("{}: {msg}", path.display())]
    Config {
        /// The config file (or the single-file checkpoint the settings came from).
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },

    /// A user-supplied value (flag, API argument) is out of range, or a model graph, its weights or its
    /// inputs do not fit together.
    #[error("{what}: {msg}")]
    Invalid {
        /// What is at fault: a flag, an argument, an input, a model graph.
        what: String,
        /// What was given and what was expected.
        msg: String,
    },

    /// The compute backend failed (driver error, kernel missing, out of memory).
    #[error("backend: {0}")]
    Backend(String),

    /// A stage's result holds NaN or infinity (an f16 overflow, a broken model): reported instead of
    /// passing on a black or garbage image.
    #[error("{stage}: {msg}")]
    NonFinite {
        /// The stage whose output is not finite ("vae decode", "denoising loop").
        stage: String,
        /// How many values, and what may cause it.
        msg: String,
    },

    /// The caller asked for the work to stop (a cancellation flag was set).
    #[error("cancelled")]
    Cancelled,
}

/// `Result` with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// [`Error::File`].
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    /// [`Error::Tensor`].
    pub fn tensor(path: impl AsRef<Path>, name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().to_path_buf(), name: name.into(), msg: msg.into() }
    }

    /// [`Error::Config`].
    pub fn config(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }

    /// [`Error::Invalid`].
    pub fn invalid(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid { what: what.into(), msg: msg.into() }
    }

    /// [`Error::NonFinite`].
    pub fn non_finite(stage: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::NonFinite { stage: stage.into(), msg: msg.into() }
    }

    /// [`Error::Backend`].
    pub fn backend(msg: impl Into<String>) -> Self {
        Error::Backend(msg.into())
    }
}
