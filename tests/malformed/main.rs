//! The malformed-input corpus: hundreds of damaged variants generated from the real fixtures
//! (stories260K's HF folder and a GGUF converted from it) — truncation at every section boundary of
//! both formats, sizes that overflow, offsets past the end, misalignment, duplicate names, wrong
//! dtypes, NaN/Inf weights, missing tensors, inconsistent and unsupported configs, bad tokenizer
//! and text files. Every variant must give exit code 1, no panic, an error that names the problem
//! and the file (and the tensor or key where there is one), and leave no output file behind.
//!
//! A variant is one damaged input run through one command; the suite prints how many it ran and
//! fails listing every variant that did not meet all of the above.
//!
//! One generator per input format, each in its own module: [`gguf`] (every section of a GGUF file,
//! walked independently of quantkit's reader), [`safetensors`] (header and data), [`config`]
//! (config.json values), [`ct8`] (compressed-tensors 8-bit checkpoints: weight and scale
//! tensors, their config), [`text`] (tokenizer.json, the text and corpus inputs of ppl and calib, a
//! KLD base-logits file), [`bnb`] (bitsandbytes NF4 checkpoints) and [`ct_nvfp4`] (compressed-tensors
//! NVFP4 checkpoints).

mod bnb;
#[path = "../common/mod.rs"]
mod common;
mod config;
mod ct8;
mod ct_nvfp4;
mod gguf;
mod safetensors;
mod text;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::*;

/// Runs variants and collects what went wrong with each.
struct Suite {
    tmp: tempfile::TempDir,
    ran: usize,
    failures: Vec<String>,
    by_group: std::collections::BTreeMap<&'static str, usize>,
}

/// What a variant's error message must contain: every one of `all`, and one of `any` (if given).
struct Expect<'a> {
    all: Vec<&'a str>,
    any: Vec<&'a str>,
}

fn all<'a>(v: &[&'a str]) -> Expect<'a> {
    Expect { all: v.to_vec(), any: vec![] }
}

impl<'a> Expect<'a> {
    fn or(mut self, any: &[&'a str]) -> Self {
        self.any = any.to_vec();
        self
    }
}

impl Suite {
    fn new() -> Self {
        Suite {
            tmp: tempfile::tempdir().expect("tmp"),
            ran: 0,
            failures: vec![],
            by_group: Default::default(),
        }
    }

    /// A fresh, empty case folder.
    fn case_dir(&self) -> PathBuf {
        let d = self.tmp.path().join("case");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).expect("mkdir");
        d
    }

    /// Run `args` (with `{out}` standing for an output path inside `dir`) and check the outcome.
    fn check(&mut self, group: &'static str, label: &str, dir: &Path, args: &[OsString], expect: Expect) {
        let before = listing(dir);
        let out = dir.join("out.gguf");
        let args: Vec<OsString> = args
            .iter()
            .map(|a| if a == "{out}" { out.clone().into_os_string() } else { a.clone() })
            .collect();
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        let o = quantkit(&refs);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let mut bad = vec![];
        if o.status.code() != Some(1) {
            bad.push(format!("exit {:?}", o.status.code()));
        }
        if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
            bad.push("panicked".into());
        }
        for n in &expect.all {
            if !err.contains(n) {
                bad.push(format!("message lacks {n:?}"));
            }
        }
        if !expect.any.is_empty() && !expect.any.iter().any(|n| err.contains(n)) {
            bad.push(format!("message lacks any of {:?}", expect.any));
        }
        let after = listing(dir);
        if after != before {
            bad.push(format!("files changed: {before:?} -> {after:?}"));
        }
        if !bad.is_empty() {
            self.failures.push(format!("[{group}] {label}: {}\n    stderr: {}", bad.join("; "), err.trim()));
        }
        self.ran += 1;
        *self.by_group.entry(group).or_default() += 1;
    }

    /// Write `bytes` as `name` in a fresh case folder and run `convert` on it.
    fn gguf_variant(&mut self, group: &'static str, label: &str, bytes: &[u8], expect: Expect) {
        let d = self.case_dir();
        let p = d.join("m.gguf");
        std::fs::write(&p, bytes).expect("write variant");
        let mut e = expect;
        e.all.push("m.gguf");
        self.check(
            group,
            label,
            &d,
            &args(&["convert", p.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    }

    fn finish(self) {
        eprintln!("malformed-input variants: {} run, {} clean", self.ran, self.ran - self.failures.len());
        for (g, n) in &self.by_group {
            eprintln!("  {g:<14} {n}");
        }
        assert!(self.ran >= 100, "only {} variants", self.ran);
        assert!(
            self.failures.is_empty(),
            "{} variants failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn args(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        walk(dir).iter().map(|p| p.strip_prefix(dir).expect("in").display().to_string()).collect();
    v.sort();
    v
}

fn with(b: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = b.to_vec();
    edit(&mut v);
    v
}

#[test]
fn malformed_input_corpus() {
    if no_fixtures() {
        return;
    }
    let mut s = Suite::new();
    let src = tempfile::tempdir().expect("tmp");
    let g = src.path().join("good.gguf");
    ok(&[&"convert", &stories(), &"--type", &"q8_0", &"-o", &g]);
    let good = std::fs::read(&g).expect("read");
    gguf::gguf_variants(&mut s, &good);
    for (ty, id) in [("iq4_nl", 20), ("mxfp4", 39)] {
        let q = src.path().join(format!("{ty}.gguf"));
        ok(&[&"convert", &stories(), &"--type", &ty, &"-o", &q]);
        gguf::scale_variants(&mut s, &std::fs::read(&q).expect("read"), id);
    }
    let ct = src.path().join("ct8");
    ok(&[
        &"quantize",
        &stories(),
        &"--method",
        &"rtn",
        &"--bits",
        &"8",
        &"--group",
        &"-1",
        &"--format",
        &"ct-w8a8",
        &"--format",
        &"ct-fp8",
        &"-o",
        &ct,
    ]);
    ct8::ct8_variants(&mut s, &ct.join("ct-w8a8"), &ct.join("ct-fp8"));
    let nv = src.path().join("nvfp4");
    ok(&[&"quantize", &stories(), &"--method", &"rtn", &"--format", &"ct-nvfp4", &"-o", &nv]);
    ct_nvfp4::nvfp4_variants(&mut s, &nv.join("ct-nvfp4"));
    safetensors::safetensors_variants(&mut s);
    config::config_variants(&mut s);
    text::tokenizer_and_text_variants(&mut s, &g);
    bnb::bnb_variants(&mut s);
    s.finish();
}
