//! GGUF variants: truncation at every section boundary, counts and sizes that overflow, bad value
//! and tensor types, duplicate and missing names, offsets past the end and misalignment.

use crate::{all, with, Suite};

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

pub(crate) fn gguf_variants(s: &mut Suite, good: &[u8]) {
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

/// A corrupt scale in the first block of some tensors of type `ty` (a file whose quantized tensors
/// are IQ4_NL or MXFP4): IQ4_NL's fp16 `d` NaN or +inf; MXFP4's E8M0 `e` = 0xFF (NaN in the OCP
/// encoding, rejected by llama.cpp's row validation).
pub(crate) fn scale_variants(s: &mut Suite, good: &[u8], ty: u32) {
    let l = layout(good);
    let edits: &[(&str, &[u8])] = match ty {
        39 => &[("E8M0 0xFF", &[0xff])],
        _ => &[("NaN", &[0x00, 0x7e]), ("+inf", &[0x00, 0x7c])],
    };
    let picked: Vec<_> = l.tis.iter().filter(|t| t.ty == ty).step_by(9).collect();
    assert!(!picked.is_empty(), "no tensor of type {ty}");
    for t in picked {
        let at = l.data_start + t.offset as usize;
        for (what, bytes) in edits {
            s.gguf_variant(
                "gguf-values",
                &format!("{what} scale in type-{ty} tensor '{}'", t.name),
                &with(good, |b| b[at..at + bytes.len()].copy_from_slice(bytes)),
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
