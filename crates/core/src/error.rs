use std::path::{Path, PathBuf};

/// quantkit's error type. Messages name the problem and the place (file, tensor, offset).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a named path.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file is malformed: truncated, inconsistent or hostile. `at` says where inside the file.
    #[error("{path}: malformed {kind} file: {msg} (at {at})")]
    Malformed { path: PathBuf, kind: &'static str, at: String, msg: String },

    /// A tensor the model needs is absent.
    #[error("{path}: tensor '{tensor}' is missing{hint}")]
    MissingTensor { path: PathBuf, tensor: String, hint: String },

    /// A tensor's contents or shape are unusable (NaN/Inf, wrong shape, wrong dtype).
    #[error("tensor '{tensor}': {msg}")]
    BadTensor { tensor: String, msg: String },

    /// Well-formed input that quantkit does not support (an architecture, a dtype, a tensor type).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// Invalid configuration or arguments.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn malformed(
        path: impl AsRef<Path>,
        kind: &'static str,
        at: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Malformed { path: path.as_ref().to_path_buf(), kind, at: at.into(), msg: msg.into() }
    }

    pub fn bad_tensor(tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::BadTensor { tensor: tensor.into(), msg: msg.into() }
    }
}
