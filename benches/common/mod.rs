//! Shared by the benchmarks: where the fixtures are.

use std::path::{Path, PathBuf};

/// `../shared` (or `$QUANTKIT_SHARED`).
pub fn shared() -> PathBuf {
    std::env::var_os("QUANTKIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// The SmolLM2-135M GGUF fixture, or `None` (with a note on stderr) when it is absent.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let gguf = shared().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.exists() {
        Some(gguf)
    } else {
        eprintln!("skipping: {} not found", gguf.display());
        None
    }
}
