//! quantkit-io: reading and writing model files, and presenting any of them as one model in GGUF
//! naming.
//!
//! * [`gguf`] — GGUF v3 reader (hostile-input hardened) and streaming writer.
//! * [`safetensors`] — memory-mapped safetensors reader and streaming writer.
//! * [`hf`] — Hugging Face checkpoint folders (sharded or not).
//! * [`layout`] — the integer checkpoint layouts (GPTQ v1/v2, AWQ GEMM, compressed-tensors):
//!   packing for the writers, dequantizing for the reader.
//! * [`config`] — the architecture-neutral model description (HF `config.json` ⇄ GGUF metadata).
//! * [`names`] — HF ⇄ GGUF tensor names (the one table, [`names::Proj`]) and llama.cpp's q/k
//!   permutation.
//! * [`vocab`] — tokenizer metadata (HF tokenizer files ⇄ GGUF `tokenizer.*` keys).
//! * [`source`] — one view of a model (HF or GGUF) in GGUF naming, which the converter consumes.
//! * [`export`] — GGUF → HF folder.
//! * [`imatrix`] — llama.cpp importance-matrix files.

pub mod config;
pub mod export;
pub mod gguf;
pub mod hf;
pub mod imatrix;
pub mod layout;
pub mod names;
pub mod rotate;
pub mod safetensors;
pub mod source;
pub mod vocab;

/// A file's bytes: memory-mapped from disk, or owned (parsers' in-memory entry points, used by the
/// fuzz targets and tests).
pub(crate) enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

impl Bytes {
    /// Map `path` read-only.
    pub(crate) fn map(path: &std::path::Path) -> quantkit_core::Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| quantkit_core::Error::io(path, e))?;
        // SAFETY: the map is read-only; we never hand out references that outlive the owner. A file
        // truncated by another process while mapped is outside what any reader can defend against.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| quantkit_core::Error::io(path, e))?;
        Ok(Bytes::Mapped(mmap))
    }

    /// Drop our pages of `[start, start + len)` (mapped files only; see [`release_range`]).
    pub(crate) fn release(&self, start: usize, len: usize) {
        if let Bytes::Mapped(m) = self {
            release_range(m, start, len);
        }
    }
}

/// Advise the kernel that a mapped byte range is no longer needed by this process, so streaming
/// through a file larger than RAM keeps resident memory bounded. Page cache is unaffected.
pub(crate) fn release_range(map: &memmap2::Mmap, start: usize, len: usize) {
    let page = 4096;
    let begin = start.div_ceil(page) * page;
    let end = (start + len) / page * page;
    if end > begin {
        // SAFETY: DontNeed on a read-only, file-backed shared mapping only drops our page-table
        // entries; later reads fault the data back in from the file. The range lies inside `map`.
        unsafe {
            let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, begin, end - begin);
        }
    }
}
