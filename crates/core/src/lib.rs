//! quantkit-core: the small shared vocabulary every other quantkit crate speaks — tensor type ids,
//! one error type, atomic output files.
//!
//! * `dtype` — [`GgmlType`], the ggml tensor type ids (the id space GGUF files use), with the block
//!   geometry of each type. Geometry is known for *every* ggml type so that `inspect` can size
//!   tensors of types we cannot decode; which types we can quantize/dequantize is decided by the
//!   registry in `quantkit-formats`.
//! * `error` — [`Error`], one documented error enum. Every variant says *what* went wrong and
//!   *where* (file, tensor, byte offset), because users feed this tool large files from strangers.
//! * `atomic` — [`AtomicFile`] / [`AtomicDir`]: outputs are written to a temp file in the
//!   destination directory, fsynced and renamed, so a failed or killed run never leaves a partial
//!   file behind.
//!
//! Plus [`checked_numel`], overflow-checked tensor sizes for dimensions from untrusted headers.

mod atomic;
mod dtype;
mod error;

pub use atomic::{remove_stale, replace_path, AtomicDir, AtomicFile};
pub use dtype::GgmlType;
pub use error::{Error, Result};

/// Multiply tensor dimensions, failing instead of overflowing (dims come from untrusted headers).
pub fn checked_numel(dims: &[u64]) -> Option<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}
