//! GGUF (v2/v3, little-endian) reading and writing.
//!
//! Layout (ggml/docs/gguf.md): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! metadata key/values, tensor infos (name, n_dims, dims `ne[0..n]` innermost first, type, offset),
//! padding to `general.alignment` (default 32), then tensor data, each tensor at an aligned offset
//! relative to the start of the data section.
//!
//! The reader treats every header field as hostile: reads are bounds-checked, counts are capped by
//! the bytes left in the file before anything is allocated, nesting depth is limited, and tensor
//! extents are checked for overflow, alignment, overlap and truncation.

mod read;
mod value;
mod write;

pub use read::{GgufFile, TensorInfo};
pub use value::{Value, ValueType};
pub use write::{GgufBuilder, TensorSpec};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;

#[cfg(test)]
mod tests;
