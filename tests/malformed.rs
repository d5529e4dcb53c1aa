//! The malformed-input corpus: hundreds of damaged variants generated from the real fixtures
//! (stories260K's HF folder and a GGUF converted from it) — truncation at every section boundary of
//! both formats, sizes that overflow, offsets past the end, misalignment, duplicate names, wrong
//! dtypes, NaN/Inf weights, missing tensors, inconsistent and unsupported configs, bad tokenizer
//! and text files. Every variant must give exit code 1, no panic, an error that names the problem
//! and the file (and the tensor or key where there is one), and leave no output file behind.
//!
//! A variant is one damaged input run through one command; the suite prints how many it ran and
//! fails listing every variant that did not meet all of the above.

mod common;

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

// ---------------------------------------------------------------------------------------------
// An independent walk over a GGUF file's sections (not quantkit's reader: the test must know where
// every field is to damage it).

struct Kv {
    start: usize,
    key: String,
    ty_pos: usize,
    value_pos: usize,
    ty: u32,
}

struct Ti {
    start: usize,
    name: String,
    name_pos: usize,
    dims_pos: usize,
    n_dims: usize,
    ty_pos: usize,
    off_pos: usize,
    offset: u64,
    ty: u32,
}

struct Layout {
    kvs: Vec<Kv>,
    tis: Vec<Ti>,
    data_start: usize,
}

fn u32_at(b: &[u8], p: usize) -> u32 {
    u32::from_le_bytes(b[p..p + 4].try_into().expect("4"))
}
fn u64_at(b: &[u8], p: usize) -> u64 {
    u64::from_le_bytes(b[p..p + 8].try_into().expect("8"))
}

fn skip_value(b: &[u8], p: &mut usize, ty: u32) {
    match ty {
        0 | 1 | 7 => *p += 1,
        2 | 3 => *p += 2,
        4..=6 => *p += 4,
        10..=12 => *p += 8,
        8 => *p += 8 + u64_at(b, *p) as usize,
        9 => {
            let ety = u32_at(b, *p);
            let n = u64_at(b, *p + 4);
            *p += 12;
            for _ in 0..n {
                skip_value(b, p, ety);
            }
        }
        other => panic!("fixture has value type {other}"),
    }
}

fn layout(b: &[u8]) -> Layout {
    let n_t = u64_at(b, 8) as usize;
    let n_kv = u64_at(b, 16) as usize;
    let mut p = 24;
    let mut kvs = vec![];
    for _ in 0..n_kv {
        let start = p;
        let len = u64_at(b, p) as usize;
        let key = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).expect("key");
        p += 8 + len;
        let ty = u32_at(b, p);
        let ty_pos = p;
        p += 4;
        let value_pos = p;
        skip_value(b, &mut p, ty);
        kvs.push(Kv { start, key, ty_pos, value_pos, ty });
    }
    let mut tis = vec![];
    for _ in 0..n_t {
        let start = p;
        let len = u64_at(b, p) as usize;
        let name = String::from_utf8(b[p + 8..p + 8 + len].to_vec()).expect("name");
        let name_pos = p + 8;
        p += 8 + len;
        let n_dims = u32_at(b, p) as usize;
        let dims_pos = p + 4;
        p += 4 + 8 * n_dims;
        let ty_pos = p;
        let ty = u32_at(b, p);
        let off_pos = p + 4;
        let offset = u64_at(b, p + 4);
        p += 12;
        tis.push(Ti { start, name, name_pos, dims_pos, n_dims, ty_pos, off_pos, offset, ty });
    }
    let data_start = p.div_ceil(32) * 32;
    Layout { kvs, tis, data_start }
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
    gguf_variants(&mut s, &good);
    safetensors_variants(&mut s);
    config_variants(&mut s);
    tokenizer_and_text_variants(&mut s, &g);
    s.finish();
}

fn gguf_variants(s: &mut Suite, good: &[u8]) {
    let l = layout(good);
    let trunc = ["truncated", "not a GGUF", "cannot fit", "runs past"];

    // Truncation at every section boundary: header fields, each metadata entry, each tensor info,
    // the data section, each tensor's data, and one byte short of the end.
    let mut cuts: Vec<(String, usize)> = vec![
        ("empty".into(), 0),
        ("in magic".into(), 2),
        ("after magic".into(), 4),
        ("after version".into(), 8),
    ];
    cuts.push(("after tensor count".into(), 16));
    cuts.push(("after metadata count".into(), 24));
    for kv in &l.kvs {
        cuts.push((format!("at metadata '{}'", kv.key), kv.start));
        cuts.push((format!("inside the value of '{}'", kv.key), kv.value_pos + 1));
    }
    for t in &l.tis {
        cuts.push((format!("at tensor info '{}'", t.name), t.start));
    }
    cuts.push(("at the data section".into(), l.data_start));
    for t in &l.tis {
        cuts.push((format!("inside the data of '{}'", t.name), l.data_start + t.offset as usize + 1));
    }
    cuts.push(("one byte short".into(), good.len() - 1));
    for (label, cut) in cuts {
        s.gguf_variant("gguf-truncate", &label, &good[..cut], all(&["malformed GGUF"]).or(&trunc));
    }

    // Header fields.
    s.gguf_variant("gguf-header", "bad magic", &with(good, |b| b[0] = b'X'), all(&["not a GGUF file"]));
    s.gguf_variant("gguf-header", "version 1", &with(good, |b| b[4] = 1), all(&["GGUF v1 is not supported"]));
    s.gguf_variant(
        "gguf-header",
        "big-endian",
        &with(good, |b| b[4..8].copy_from_slice(&3u32.to_be_bytes())),
        all(&["big-endian"]),
    );
    s.gguf_variant(
        "gguf-header",
        "version 99",
        &with(good, |b| b[4] = 99),
        all(&["unknown GGUF version 99"]),
    );
    for (label, pos, v) in [
        ("tensor count u64::MAX", 8, u64::MAX),
        ("tensor count 2^40", 8, 1u64 << 40),
        ("metadata count 2^50", 16, 1u64 << 50),
        ("metadata count u64::MAX", 16, u64::MAX),
    ] {
        s.gguf_variant(
            "gguf-header",
            label,
            &with(good, |b| b[pos..pos + 8].copy_from_slice(&v.to_le_bytes())),
            all(&["cannot fit"]),
        );
    }

    // Every metadata entry: an unknown value type, a key length that asks for petabytes.
    for kv in &l.kvs {
        s.gguf_variant(
            "gguf-metadata",
            &format!("'{}' has value type 99", kv.key),
            &with(good, |b| b[kv.ty_pos..kv.ty_pos + 4].copy_from_slice(&99u32.to_le_bytes())),
            all(&[&kv.key, "unknown value type 99"]),
        );
        s.gguf_variant(
            "gguf-metadata",
            &format!("'{}' key length 2^60", kv.key),
            &with(good, |b| b[kv.start..kv.start + 8].copy_from_slice(&(1u64 << 60).to_le_bytes())),
            all(&["too large"]),
        );
    }
    // Strings and arrays whose lengths overflow.
    for kv in l.kvs.iter().filter(|k| k.ty == 8 || k.ty == 9).take(6) {
        let (pos, what) = if kv.ty == 8 { (kv.value_pos, "string") } else { (kv.value_pos + 4, "array") };
        s.gguf_variant(
            "gguf-metadata",
            &format!("'{}' {what} length u64::MAX", kv.key),
            &with(good, |b| b[pos..pos + 8].copy_from_slice(&u64::MAX.to_le_bytes())),
            all(&[&kv.key]).or(&["too large", "cannot fit"]),
        );
    }
    // A metadata key given twice (rename one key to another of the same length).
    if let Some((a, b2)) = same_len_pair(l.kvs.iter().map(|k| (k.start + 8, k.key.as_str()))) {
        s.gguf_variant(
            "gguf-metadata",
            &format!("duplicate key '{}'", b2.1),
            &with(good, |b| b[a.0..a.0 + a.1.len()].copy_from_slice(b2.1.as_bytes())),
            all(&["duplicate metadata key", b2.1]),
        );
    }
    // Semantic damage: unsupported architecture, impossible hyperparameters.
    let arch = l.kvs.iter().find(|k| k.key == "general.architecture").expect("arch");
    s.gguf_variant(
        "gguf-metadata",
        "architecture gpt2x",
        &with(good, |b| b[arch.value_pos + 8..arch.value_pos + 13].copy_from_slice(b"gpt2x")),
        all(&["unsupported", "gpt2x"]),
    );
    for (key, v, needle) in [
        ("llama.attention.head_count", 7u32, "heads"),
        ("llama.attention.head_count_kv", 3, "heads"),
        ("llama.block_count", 9, "blk.5."),
        ("llama.embedding_length", 0, "embedding_length"),
        ("llama.context_length", 0, "context_length"),
    ] {
        let Some(kv) = l.kvs.iter().find(|k| k.key == key && k.ty == 4) else {
            panic!("fixture lacks u32 {key}")
        };
        s.gguf_variant(
            "gguf-metadata",
            &format!("{key} = {v}"),
            &with(good, |b| b[kv.value_pos..kv.value_pos + 4].copy_from_slice(&v.to_le_bytes())),
            all(&[needle]),
        );
    }

    // Every tensor: dimensions that overflow, an unknown type, an offset past the end or misaligned,
    // a type changed to another real one (so its size no longer fits), a dimension of zero.
    for (i, t) in l.tis.iter().enumerate() {
        let name = t.name.as_str();
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{name}' dims overflow"),
            &with(good, |b| {
                for d in 0..t.n_dims {
                    b[t.dims_pos + 8 * d..t.dims_pos + 8 * d + 8]
                        .copy_from_slice(&(1u64 << 40).to_le_bytes());
                }
                b[t.dims_pos..t.dims_pos + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
            }),
            all(&[name]).or(&["overflow", "not a multiple"]),
        );
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{name}' type 77"),
            &with(good, |b| b[t.ty_pos..t.ty_pos + 4].copy_from_slice(&77u32.to_le_bytes())),
            all(&[name, "unknown ggml type id 77"]),
        );
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{name}' offset past the end"),
            &with(good, |b| {
                b[t.off_pos..t.off_pos + 8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes())
            }),
            all(&[name]).or(&["past the end", "starts at offset"]),
        );
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{name}' misaligned"),
            &with(good, |b| b[t.off_pos..t.off_pos + 8].copy_from_slice(&(t.offset + 4).to_le_bytes())),
            all(&[name, "not aligned"]),
        );
        // Q8_0 ⇄ F16/F32: the size changes, so it overruns the next tensor or the file.
        let other: u32 = if t.ty == 0 { 1 } else { 0 };
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{name}' type {} -> {other}", t.ty),
            &with(good, |b| b[t.ty_pos..t.ty_pos + 4].copy_from_slice(&other.to_le_bytes())),
            all(&[name]).or(&["a wrong type or shape?", "runs past the end"]),
        );
        if i % 4 == 0 {
            s.gguf_variant(
                "gguf-tensor",
                &format!("'{name}' a dimension of 0"),
                &with(good, |b| b[t.dims_pos..t.dims_pos + 8].copy_from_slice(&0u64.to_le_bytes())),
                all(&[]).or(&[name, "is missing"]),
            );
        }
    }
    // Two tensors with one name, and a tensor renamed away (so the model misses it).
    if let Some((a, b2)) = same_len_pair(l.tis.iter().map(|t| (t.name_pos, t.name.as_str()))) {
        s.gguf_variant(
            "gguf-tensor",
            &format!("duplicate tensor '{}'", b2.1),
            &with(good, |b| b[a.0..a.0 + a.1.len()].copy_from_slice(b2.1.as_bytes())),
            all(&["duplicate tensor name", b2.1]),
        );
    }
    for t in l.tis.iter().filter(|t| t.name.starts_with("blk.3.")) {
        let renamed = t.name.replacen("blk.3.", "blk.x.", 1);
        s.gguf_variant(
            "gguf-tensor",
            &format!("'{}' missing", t.name),
            &with(good, |b| b[t.name_pos..t.name_pos + t.name.len()].copy_from_slice(renamed.as_bytes())),
            all(&[]).or(&[&t.name, &renamed]),
        );
    }
    // NaN and Inf weights: an f32 norm, and the f16 scale of a Q8_0 block.
    for (t, fmt) in l
        .tis
        .iter()
        .filter(|t| t.ty == 0)
        .take(3)
        .map(|t| (t, "f32"))
        .chain(l.tis.iter().filter(|t| t.ty == 8).step_by(7).map(|t| (t, "q8_0")))
    {
        let at = l.data_start + t.offset as usize + if fmt == "f32" { 8 } else { 34 };
        for (what, f32bits, f16bits) in [("NaN", 0x7fc0_0000u32, 0x7e00u16), ("+inf", 0x7f80_0000, 0x7c00)] {
            s.gguf_variant(
                "gguf-values",
                &format!("{what} in {fmt} tensor '{}'", t.name),
                &with(good, |b| {
                    if fmt == "f32" {
                        b[at..at + 4].copy_from_slice(&f32bits.to_le_bytes())
                    } else {
                        b[at..at + 2].copy_from_slice(&f16bits.to_le_bytes())
                    }
                }),
                all(&[&t.name]).or(&["NaN", "inf"]),
            );
        }
    }
}

/// Two entries whose names have the same length (position, name) × 2.
fn same_len_pair<'a>(
    items: impl Iterator<Item = (usize, &'a str)>,
) -> Option<((usize, &'a str), (usize, &'a str))> {
    let v: Vec<_> = items.collect();
    for (i, a) in v.iter().enumerate() {
        if let Some(b) = v[i + 1..].iter().find(|b| b.1.len() == a.1.len() && b.1 != a.1) {
            return Some((*a, *b));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------

/// Split a safetensors file into (header JSON, data).
fn st_split(b: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().expect("8")) as usize;
    (serde_json::from_slice(&b[8..8 + n]).expect("header"), b[8 + n..].to_vec())
}

fn st_join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn safetensors_variants(s: &mut Suite) {
    let good = std::fs::read(stories().join("model.safetensors")).expect("fixture");
    let (header, data) = st_split(&good);
    let n = u64::from_le_bytes(good[..8].try_into().expect("8")) as usize;
    let names: Vec<String> = {
        let mut v: Vec<(u64, String)> = header
            .as_object()
            .expect("obj")
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (v["data_offsets"][0].as_u64().expect("off"), k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    };
    let run = |s: &mut Suite, group: &'static str, label: &str, bytes: Vec<u8>, expect: Expect| {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("model.safetensors"), bytes).expect("write");
        let mut e = expect;
        e.all.push(if group == "st-model" || group == "st-values" { "stories" } else { "model.safetensors" });
        s.check(
            group,
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    };
    let trunc = &["truncated", "too short", "past the end", "exactly fill"];
    // Truncation: inside the length, inside the header, at the data, at every tensor's data.
    let mut cuts =
        vec![("empty".to_string(), 0usize), ("inside the length".into(), 5), ("after the length".into(), 8)];
    cuts.push(("inside the header".into(), 8 + n / 2));
    cuts.push(("at the data".into(), 8 + n));
    for name in &names {
        let off = header[name]["data_offsets"][0].as_u64().expect("off") as usize;
        cuts.push((format!("at the data of '{name}'"), 8 + n + off + 4));
    }
    for (label, cut) in cuts {
        run(s, "st-truncate", &label, good[..cut].to_vec(), all(&["malformed safetensors"]).or(trunc));
    }
    run(
        s,
        "st-header",
        "header length 2^40",
        with(&good, |b| b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes())),
        all(&["header length"]),
    );
    run(
        s,
        "st-header",
        "header length 0",
        with(&good, |b| b[..8].copy_from_slice(&0u64.to_le_bytes())),
        all(&["malformed safetensors"]),
    );
    run(s, "st-header", "header not JSON", with(&good, |b| b[8] = b'['), all(&["malformed safetensors"]));
    run(
        s,
        "st-header",
        "header not UTF-8",
        with(&good, |b| b[10] = 0xff),
        all(&["malformed safetensors"]).or(&["UTF-8", "utf-8"]),
    );
    let text = String::from_utf8(good[8..8 + n].to_vec()).expect("utf8 header");
    // Duplicate tensor name: the first entry's JSON repeated under its own name.
    let first = &names[0];
    let entry = serde_json::to_string(&header[first]).expect("ser");
    let dup =
        text.trim_end().strip_suffix('}').expect("object").to_string() + &format!(",\"{first}\":{entry}}}");
    run(
        s,
        "st-header",
        "duplicate tensor name",
        st_join(dup.as_bytes(), &data),
        all(&[first, "listed twice"]),
    );

    // Per tensor (a spread of them): dtype changed, shapes that overflow or do not match, offsets
    // past the end or shifted, NaN/Inf data.
    for (i, name) in names.iter().enumerate() {
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut h = header.clone();
            f(&mut h[name.as_str()]);
            st_join(&serde_json::to_vec(&h).expect("ser"), &data)
        };
        run(
            s,
            "st-tensor",
            &format!("'{name}' dtype F16"),
            edit(&|t| t["dtype"] = "F16".into()),
            all(&[name]),
        );
        run(
            s,
            "st-tensor",
            &format!("'{name}' dtype Q9"),
            edit(&|t| t["dtype"] = "Q9".into()),
            all(&["malformed safetensors"]),
        );
        run(
            s,
            "st-tensor",
            &format!("'{name}' shape overflows"),
            edit(&|t| t["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40, 1u64 << 40])),
            all(&[name, "overflow"]),
        );
        if i % 3 == 0 {
            let end = data.len() as u64 + 64;
            run(
                s,
                "st-tensor",
                &format!("'{name}' offsets past the end"),
                edit(&|t| t["data_offsets"] = serde_json::json!([end - 4, end])),
                all(&[]).or(&[name, "exactly fill", "past the end"]),
            );
            run(
                s,
                "st-tensor",
                &format!("'{name}' dtype I32"),
                edit(&|t| t["dtype"] = "I32".into()),
                all(&[name, "I32"]),
            );
        }
    }
    // Shapes that fit the bytes but not the model, a missing tensor, NaN/Inf values.
    for name in names.iter().filter(|n| n.contains("layers.1.")) {
        let shape: Vec<u64> =
            header[name]["shape"].as_array().expect("s").iter().filter_map(|d| d.as_u64()).collect();
        if shape.len() == 2 && shape[0] != shape[1] {
            let mut h = header.clone();
            h[name.as_str()]["shape"] = serde_json::json!([shape[1], shape[0]]);
            run(
                s,
                "st-model",
                &format!("'{name}' transposed"),
                st_join(&serde_json::to_vec(&h).expect("s"), &data),
                all(&[name, "shape"]),
            );
        } else if shape.len() == 2 {
            let mut h = header.clone();
            h[name.as_str()]["shape"] = serde_json::json!([shape[0] / 2, shape[1] * 2]);
            run(
                s,
                "st-model",
                &format!("'{name}' reshaped"),
                st_join(&serde_json::to_vec(&h).expect("s"), &data),
                all(&[name, "shape"]),
            );
        }
    }
    for (i, name) in names.iter().enumerate().filter(|(i, _)| i % 5 == 2) {
        let off = header[name]["data_offsets"][0].as_u64().expect("o") as usize;
        for (what, bits) in [("NaN", f32::NAN), ("-inf", f32::NEG_INFINITY)] {
            let mut d = data.clone();
            d[off + 4 * i.min(3)..off + 4 * i.min(3) + 4].copy_from_slice(&bits.to_le_bytes());
            let gguf_name = quantkit_io::names::hf_to_gguf(name).unwrap_or_default();
            run(
                s,
                "st-values",
                &format!("{what} in '{name}'"),
                st_join(&good[8..8 + n], &d),
                all(&[what]).or(&[name, &gguf_name]),
            );
        }
    }
    for name in names.iter().filter(|n| n.contains("layers.2.") || n.contains("norm.weight")).take(6) {
        let mut h = header.clone();
        let (b0, b1) = (
            h[name.as_str()]["data_offsets"][0].as_u64().expect("o"),
            h[name.as_str()]["data_offsets"][1].as_u64().expect("o"),
        );
        h.as_object_mut().expect("o").remove(name.as_str());
        // Remove its bytes and shift later tensors down.
        for (_, v) in h.as_object_mut().expect("o").iter_mut() {
            if let Some(o) = v.get_mut("data_offsets") {
                let (a, b) = (o[0].as_u64().expect("a"), o[1].as_u64().expect("b"));
                if a >= b1 {
                    *o = serde_json::json!([a - (b1 - b0), b - (b1 - b0)]);
                }
            }
        }
        let mut d = data[..b0 as usize].to_vec();
        d.extend_from_slice(&data[b1 as usize..]);
        run(
            s,
            "st-model",
            &format!("'{name}' missing"),
            st_join(&serde_json::to_vec(&h).expect("s"), &d),
            all(&[name, "is missing"]),
        );
    }
}

// ---------------------------------------------------------------------------------------------

fn config_variants(s: &mut Suite) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stories().join("config.json")).expect("cfg")).expect("json");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let set = |k: &'static str, v: serde_json::Value| -> Edit { Box::new(move |c| c[k] = v.clone()) };
    let del = |k: &'static str| -> Edit {
        Box::new(move |c| {
            c.as_object_mut().expect("obj").remove(k);
        })
    };
    let cases: Vec<(&str, Edit, Expect)> = vec![
        (
            "architecture GPT2",
            set("architectures", serde_json::json!(["GPT2LMHeadModel"])),
            all(&["unsupported", "GPT2LMHeadModel"]),
        ),
        ("architectures empty", set("architectures", serde_json::json!([])), all(&["architectures"])),
        ("architectures a number", set("architectures", serde_json::json!(5)), all(&["architectures"])),
        ("no architectures", del("architectures"), all(&["architectures"])),
        ("heads 7", set("num_attention_heads", serde_json::json!(7)), all(&["heads"])),
        ("heads 0", set("num_attention_heads", serde_json::json!(0)), all(&["num_attention_heads"])),
        ("kv heads 3", set("num_key_value_heads", serde_json::json!(3)), all(&["3 KV heads do not divide"])),
        (
            "kv heads > heads",
            set("num_key_value_heads", serde_json::json!(16)),
            all(&["num_key_value_heads"]).or(&["heads"]),
        ),
        ("hidden_size 0", set("hidden_size", serde_json::json!(0)), all(&["hidden_size"])),
        ("hidden_size negative", set("hidden_size", serde_json::json!(-64)), all(&["hidden_size"])),
        ("hidden_size a string", set("hidden_size", serde_json::json!("64")), all(&["hidden_size"])),
        (
            "hidden_size 2^62",
            set("hidden_size", serde_json::json!(1u64 << 62)),
            all(&["hidden_size"]).or(&["too large", "heads", "shape"]),
        ),
        ("no hidden_size", del("hidden_size"), all(&["hidden_size"])),
        ("layers 6", set("num_hidden_layers", serde_json::json!(6)), all(&["model.layers.5.", "is missing"])),
        (
            "layers 0",
            set("num_hidden_layers", serde_json::json!(0)),
            all(&["num_hidden_layers"]).or(&["no place"]),
        ),
        (
            "layers 2^40",
            set("num_hidden_layers", serde_json::json!(1u64 << 40)),
            all(&["num_hidden_layers"]).or(&["is missing"]),
        ),
        (
            "vocab 2^40",
            set("vocab_size", serde_json::json!(1u64 << 40)),
            all(&[]).or(&["vocab_size", "embed_tokens", "token_embd"]),
        ),
        ("vocab 0", set("vocab_size", serde_json::json!(0)), all(&["vocab_size"]).or(&["shape"])),
        (
            "intermediate 7",
            set("intermediate_size", serde_json::json!(7)),
            all(&["shape"]).or(&["mlp", "ffn"]),
        ),
        ("rms eps negative", set("rms_norm_eps", serde_json::json!(-1.0)), all(&["rms_norm_eps"])),
        ("rope theta 0", set("rope_theta", serde_json::json!(0.0)), all(&["rope_theta"])),
        (
            "rope scaling unknown",
            set("rope_scaling", serde_json::json!({"rope_type": "warp", "factor": 2.0})),
            all(&["warp"]),
        ),
        (
            "rope scaling factor 0",
            set("rope_scaling", serde_json::json!({"rope_type": "linear", "factor": 0.0})),
            all(&["factor"]),
        ),
        (
            "max positions 0",
            set("max_position_embeddings", serde_json::json!(0)),
            all(&["max_position_embeddings"]),
        ),
        (
            "quantization method unknown",
            set("quantization_config", serde_json::json!({"quant_method": "exl9"})),
            all(&["exl9"]),
        ),
        (
            "quantization bits 13",
            set("quantization_config", serde_json::json!({"quant_method": "gptq", "bits": 13})),
            all(&["bits"]),
        ),
    ];
    for (label, edit, expect) in cases {
        let d = s.case_dir();
        let m = copy_stories(&d);
        let mut c = cfg.clone();
        edit(&mut c);
        std::fs::write(m.join("config.json"), serde_json::to_vec_pretty(&c).expect("ser")).expect("w");
        let mut e = expect;
        e.any.extend(["config.json", "model.safetensors", "stories"]);
        s.check(
            "config",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    }
    for (label, bytes) in [
        ("config empty", b"".to_vec()),
        ("config not JSON", b"{\"architectures\": [".to_vec()),
        ("config not UTF-8", b"{\"architectures\": [\"\xff\xfe\"]}".to_vec()),
        ("config a list", b"[1, 2]".to_vec()),
        ("config nested 100000 deep", [b"[".repeat(100_000), b"]".repeat(100_000)].concat()),
    ] {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("config.json"), bytes).expect("w");
        s.check(
            "config",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&["config.json"]),
        );
    }
    // Sharded checkpoints: a broken index.
    let shards = tempfile::tempdir().expect("tmp");
    let (_, hf) = sharded_stories(shards.path());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("model.safetensors.index.json")).expect("r"))
            .expect("j");
    let idx_cases: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
        ("index without weight_map", serde_json::json!({"metadata": {}}), vec!["weight_map"]),
        ("index weight_map a list", serde_json::json!({"weight_map": []}), vec!["weight_map"]),
        (
            "shard name a number",
            serde_json::json!({"weight_map": {"model.norm.weight": 3}}),
            vec!["model.norm.weight", "not a string"],
        ),
        (
            "shard path escapes",
            serde_json::json!({"weight_map": {"model.norm.weight": "../x.safetensors"}}),
            vec!["plain file name"],
        ),
        (
            "shard name empty",
            serde_json::json!({"weight_map": {"model.norm.weight": ""}}),
            vec!["plain file name"],
        ),
        (
            "shard missing",
            {
                let mut i = index.clone();
                i["weight_map"]["model.norm.weight"] = "nope.safetensors".into();
                i
            },
            vec!["nope.safetensors"],
        ),
    ];
    for (label, idx, needles) in idx_cases {
        let d = s.case_dir();
        let m = d.join("hf");
        std::fs::create_dir(&m).expect("mkdir");
        for e in std::fs::read_dir(&hf).expect("r").flatten() {
            std::fs::copy(e.path(), m.join(e.file_name())).expect("cp");
        }
        std::fs::write(m.join("model.safetensors.index.json"), serde_json::to_vec(&idx).expect("s"))
            .expect("w");
        s.check(
            "index",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&needles),
        );
    }
}

fn tokenizer_and_text_variants(s: &mut Suite, gguf: &Path) {
    for (label, bytes, needle) in [
        ("tokenizer.json empty", b"".to_vec(), "tokenizer.json"),
        ("tokenizer.json not JSON", b"{\"model\": ".to_vec(), "tokenizer.json"),
        ("tokenizer.json not UTF-8", b"{\"model\": \"\xff\"}".to_vec(), "tokenizer.json"),
        ("tokenizer.json without model", b"{\"version\": \"1.0\"}".to_vec(), "tokenizer.json"),
        (
            "tokenizer.json Unigram",
            b"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}".to_vec(),
            "Unigram",
        ),
    ] {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("tokenizer.json"), bytes).expect("w");
        s.check(
            "tokenizer",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&[needle]),
        );
    }
    // Evaluation and calibration text: empty, blank, not UTF-8, missing, a folder without text.
    let texts: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("empty", Some(vec![]), "empty"),
        ("blank", Some(b"  \n\n \t\n".to_vec()), "empty"),
        ("not UTF-8", Some(b"Once upon a time \xff\xfe there".to_vec()), "not valid UTF-8"),
        ("missing", None, "No such file"),
    ];
    for (label, bytes, needle) in &texts {
        for cmd in ["ppl", "calib"] {
            let d = s.case_dir();
            let t = d.join("t.txt");
            if let Some(b) = bytes {
                std::fs::write(&t, b).expect("w");
            }
            let a = if cmd == "ppl" {
                args(&["ppl", gguf.to_str().expect("u"), "--text", t.to_str().expect("u")])
            } else {
                let o = d.join("qout");
                args(&[
                    "quantize",
                    stories().to_str().expect("u"),
                    "--method",
                    "gptq",
                    "--calib",
                    t.to_str().expect("u"),
                    "--format",
                    "gptq",
                    "-o",
                    o.to_str().expect("u"),
                ])
            };
            s.check("text", &format!("{cmd} text {label}"), &d, &a, all(&["t.txt", needle]));
        }
    }
    let d = s.case_dir();
    let empty = d.join("corpus");
    std::fs::create_dir(&empty).expect("mkdir");
    let a = args(&[
        "quantize",
        stories().to_str().expect("u"),
        "--calib",
        empty.to_str().expect("u"),
        "--format",
        "gptq",
        "-o",
        d.join("q").to_str().expect("u"),
    ]);
    s.check("text", "calibration folder without text", &d, &a, all(&["corpus"]));
    // A base-logits file that is not one.
    let d = s.case_dir();
    let b = d.join("base.logits");
    std::fs::write(&b, b"not logits at all").expect("w");
    s.check(
        "text",
        "kld base file junk",
        &d,
        &args(&["kld", gguf.to_str().expect("u"), "--base", b.to_str().expect("u")]),
        all(&["base.logits"]),
    );
}
