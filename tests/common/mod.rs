//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn shared() -> PathBuf {
    std::env::var_os("QUANTKIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("shared"))
}

pub fn stories() -> PathBuf {
    shared().join("models/stories260K")
}

pub fn smol_gguf() -> PathBuf {
    shared().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Skip (return true) when the ../shared fixtures are absent.
pub fn no_fixtures() -> bool {
    if stories().join("model.safetensors").exists() {
        return false;
    }
    eprintln!("skipping: {} not present", stories().display());
    true
}

pub fn quantkit(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantkit"));
    for a in args {
        c.arg(a);
    }
    c.output().expect("run quantkit")
}

/// Run and require success.
pub fn ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let o = quantkit(args);
    assert!(o.status.success(), "quantkit failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Run, require a clean failure: exit code 1, message on stderr containing every `needles`, no panic.
pub fn fails_with(args: &[&dyn AsRef<std::ffi::OsStr>], needles: &[&str]) -> String {
    let o = quantkit(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "expected exit 1, got {:?}; stderr: {err}", o.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "expected {n:?} in error message: {err}");
    }
    err
}

/// Copy the stories260K folder into `dir` (so tests can damage their copy).
pub fn copy_stories(dir: &Path) -> PathBuf {
    let d = dir.join("stories");
    std::fs::create_dir_all(&d).expect("mkdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(stories().join(f), d.join(f)).expect("copy fixture");
    }
    d
}

/// Nothing but `allowed` names in `dir` (no output, no leftover temp files).
pub fn only_files(dir: &Path, allowed: &[&str]) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let name = e.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(allowed.contains(&name.as_str()), "unexpected file left behind: {name}");
    }
}

/// stories260K converted to an f32 GGUF in `dir`, then exported back as a sharded HF folder (one
/// tensor per shard). Returns (gguf path, HF folder).
pub fn sharded_stories(dir: &Path) -> (PathBuf, PathBuf) {
    let g = dir.join("s.gguf");
    ok(&[&"convert", &stories(), &"--type", &"f32", &"-o", &g]);
    let hf = dir.join("hf");
    ok(&[&"export-hf", &g, &"-o", &hf, &"--max-shard-mb", &"0"]);
    (g, hf)
}

/// Every file under `dir` but report.json (which holds times), with its bytes, sorted by path.
pub fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![];
    for e in walk(dir) {
        if e.file_name().map(|n| n != "report.json").unwrap_or(false) {
            v.push((
                e.strip_prefix(dir).expect("inside").display().to_string(),
                std::fs::read(&e).expect("read"),
            ));
        }
    }
    v.sort();
    v
}

/// Every file under `d`, recursively.
pub fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(d).expect("dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
