//! A pass's checkpoint folder: one file per finished block — its quantized tensors, report lines,
//! imatrix sums and changed norms — written when the block is done. The quantized bytes then leave
//! memory (the pass holds the current block's only) and are read back when the output is written;
//! a killed run resumes after the last block saved (`quantkit quantize --resume`).
//!
//! `layer-NNNN.bin`: magic `QKLAYER1`, the JSON header's length (u64 LE), the JSON header
//! ([`Header`]), then the tensors' bytes at the header's offsets (counted from the end of the
//! header). Everything is stored exactly (f32/f64 in JSON round-trip), so a resumed run writes
//! the same bytes as an uninterrupted one.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use quantkit_core::AtomicFile;
use quantkit_core::{Error, GgmlType, Result};
use serde::{Deserialize, Serialize};

use super::{LayerReport, PassResult};
use crate::grid::{IntGrid, IntMatrix, IntParams, Quantized};
use crate::nf4_grid::Nf4Matrix;
use quantkit_io::layout::bnb;

const MAGIC: &[u8; 8] = b"QKLAYER1";

/// One block's file.
pub fn layer_path(dir: &Path, layer: usize) -> PathBuf {
    dir.join(format!("layer-{layer:04}.bin"))
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    layer: usize,
    reports: Vec<LayerReport>,
    imatrix: BTreeMap<String, (Vec<f64>, u64)>,
    norms: BTreeMap<String, Vec<f32>>,
    tensors: Vec<TensorEntry>,
}

/// Where a tensor's bytes are, and what they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorEntry {
    name: String,
    rows: usize,
    cols: usize,
    /// Offset of the tensor's bytes after the header, and their length.
    offset: u64,
    len: u64,
    kind: Kind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Kind {
    /// GGUF bytes of this ggml type id.
    Gguf { ty: u32 },
    /// An integer matrix: codes (u8), then scales (f32), zeros (u8), g_idx (u32).
    Int { bits: u32, sym: bool, group: Option<usize>, zero_min: u8, groups: usize, g_idx: usize },
    /// A bitsandbytes NF4 matrix (HF row order): codes (u8 each), absmax (f32 per block); with
    /// double quantization also the absmax codes (u8 per block) and the nested absmax (f32 each).
    /// `offset`: the f32's bits.
    Nf4 { blocksize: usize, heads: Option<usize>, nested: Option<(usize, u32)> },
}

/// A quantized tensor saved in a block file; [`StoredTensor::load`] reads it back.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    path: PathBuf,
    /// Absolute offset in the file.
    start: u64,
    entry: TensorEntry,
}

impl StoredTensor {
    /// The GGUF type and the file range of a GGUF tensor (`None` for an integer matrix).
    pub fn gguf_range(&self) -> Option<(GgmlType, &Path, u64, u64)> {
        match self.entry.kind {
            Kind::Gguf { ty } => {
                GgmlType::from_id(ty).map(|t| (t, self.path.as_path(), self.start, self.entry.len))
            }
            Kind::Int { .. } | Kind::Nf4 { .. } => None,
        }
    }

    /// The tensor, read back.
    pub fn load(&self) -> Result<Quantized> {
        let e = &self.entry;
        let bad = |m: String| Error::malformed(&self.path, "calibration checkpoint", e.name.clone(), m);
        let mut f = std::fs::File::open(&self.path).map_err(|er| Error::io(&self.path, er))?;
        f.seek(SeekFrom::Start(self.start)).map_err(|er| Error::io(&self.path, er))?;
        let mut bytes = vec![0u8; usize::try_from(e.len).map_err(|_| bad("too large".into()))?];
        f.read_exact(&mut bytes).map_err(|_| bad("the file ends inside the tensor".into()))?;
        match e.kind {
            Kind::Gguf { ty } => {
                let ty = GgmlType::from_id(ty).ok_or_else(|| bad(format!("ggml type {ty}")))?;
                Ok(Quantized::Gguf { ty, rows: e.rows, cols: e.cols, bytes })
            }
            Kind::Nf4 { blocksize, heads, nested } => {
                let n = e.rows.checked_mul(e.cols).ok_or_else(|| bad("too large".into()))?;
                if !(1..=4096).contains(&blocksize) || heads.is_some_and(|h| h == 0 || e.rows % (2 * h) != 0)
                {
                    return Err(bad(format!("blocksize {blocksize}, heads {heads:?}")));
                }
                let nb = n.div_ceil(blocksize);
                let nn = nested.map_or(0, |(k, _)| k);
                let want = n + nb * 4 + nested.map_or(0, |_| nb + nn * 4);
                if bytes.len() != want || nested.is_some_and(|(k, _)| k != nb.div_ceil(bnb::NESTED_BLOCK)) {
                    return Err(bad(format!("{} bytes for a {}×{} NF4 matrix", bytes.len(), e.rows, e.cols)));
                }
                let f32s = |b: &[u8]| -> Vec<f32> {
                    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                };
                let (codes, rest) = bytes.split_at(n);
                if codes.iter().any(|&c| c > 15) {
                    return Err(bad("an NF4 code above 15".into()));
                }
                let (absmax, rest) = rest.split_at(nb * 4);
                let nested = nested.map(|(_, off)| {
                    let (q, am) = rest.split_at(nb);
                    bnb::Nested { codes: q.to_vec(), absmax: f32s(am), offset: f32::from_bits(off) }
                });
                let w = bnb::Nf4Weights {
                    rows: e.rows,
                    cols: e.cols,
                    blocksize,
                    codes: codes.to_vec(),
                    absmax: f32s(absmax),
                    nested,
                    dtype: bnb::StateDtype::F16,
                };
                Ok(Quantized::Nf4(Nf4Matrix { w, heads }))
            }
            Kind::Int { bits, sym, group, zero_min, groups, g_idx } => {
                let sizes = e.rows.checked_mul(e.cols).zip(e.rows.checked_mul(groups));
                let want = sizes.and_then(|(n, np)| {
                    n.checked_add(np.checked_mul(5)?)?.checked_add(g_idx.checked_mul(4)?)
                });
                let (Some((n, np)), Some(want)) = (sizes, want) else {
                    return Err(bad(format!(
                        "a {}×{} matrix of {groups} groups is too large",
                        e.rows, e.cols
                    )));
                };
                if bytes.len() != want || (g_idx != 0 && g_idx != e.cols) || !(1..=8).contains(&bits) {
                    return Err(bad(format!(
                        "{} bytes for a {}×{} int{bits} matrix with {g_idx} g_idx entries",
                        bytes.len(),
                        e.rows,
                        e.cols
                    )));
                }
                let want_groups = match group {
                    Some(g) if g > 0 => e.cols.div_ceil(g),
                    Some(_) => return Err(bad("a group of 0 columns".into())),
                    None => 1,
                };
                if groups != want_groups {
                    return Err(bad(format!("{groups} groups, {want_groups} expected")));
                }
                let (codes, rest) = bytes.split_at(n);
                let (scales, rest) = rest.split_at(np * 4);
                let (zeros, gi) = rest.split_at(np);
                let params = scales
                    .chunks_exact(4)
                    .zip(zeros)
                    .map(|(s, &zero)| IntParams { scale: f32::from_le_bytes([s[0], s[1], s[2], s[3]]), zero })
                    .collect();
                let g_idx: Vec<u32> =
                    gi.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                if g_idx.iter().any(|&g| g as usize >= groups)
                    || codes.iter().any(|&c| u32::from(c) >> bits != 0)
                {
                    return Err(bad("a g_idx entry or a code outside the grid".into()));
                }
                Ok(Quantized::Int(IntMatrix {
                    grid: IntGrid { bits, sym, group, zero_min },
                    rows: e.rows,
                    cols: e.cols,
                    codes: codes.to_vec(),
                    params,
                    g_idx,
                }))
            }
        }
    }
}

fn encode(name: &str, q: &Quantized, offset: u64, out: &mut Vec<u8>) -> TensorEntry {
    let start = out.len();
    let (rows, cols, kind) = match q {
        Quantized::Gguf { ty, rows, cols, bytes } => {
            out.extend_from_slice(bytes);
            (*rows, *cols, Kind::Gguf { ty: ty.id() })
        }
        Quantized::Int(m) => {
            out.extend_from_slice(&m.codes);
            out.extend(m.params.iter().flat_map(|p| p.scale.to_le_bytes()));
            out.extend(m.params.iter().map(|p| p.zero));
            out.extend(m.g_idx.iter().flat_map(|g| g.to_le_bytes()));
            let g = &m.grid;
            let kind = Kind::Int {
                bits: g.bits,
                sym: g.sym,
                group: g.group,
                zero_min: g.zero_min,
                groups: m.groups(),
                g_idx: m.g_idx.len(),
            };
            (m.rows, m.cols, kind)
        }
        Quantized::Nf4(m) => {
            let w = &m.w;
            out.extend_from_slice(&w.codes);
            out.extend(w.absmax.iter().flat_map(|v| v.to_le_bytes()));
            if let Some(nq) = &w.nested {
                out.extend_from_slice(&nq.codes);
                out.extend(nq.absmax.iter().flat_map(|v| v.to_le_bytes()));
            }
            let nested = w.nested.as_ref().map(|nq| (nq.absmax.len(), nq.offset.to_bits()));
            (w.rows, w.cols, Kind::Nf4 { blocksize: w.blocksize, heads: m.heads, nested })
        }
    };
    TensorEntry {
        name: name.to_string(),
        rows,
        cols,
        offset: offset + start as u64,
        len: (out.len() - start) as u64,
        kind,
    }
}

/// Save block `layer`'s part of `r` (its quantized tensors are in `r.quantized`; its report lines
/// are `r.layers[reports_from..]`): the tensors move to the file and become [`StoredTensor`]s.
pub fn save_layer(dir: &Path, layer: usize, r: &mut PassResult, reports_from: usize) -> Result<()> {
    let prefix = format!("blk.{layer}.");
    let mine = |k: &String| k.starts_with(&prefix);
    let mut data = Vec::new();
    let tensors: Vec<TensorEntry> = r.quantized.iter().map(|(k, q)| encode(k, q, 0, &mut data)).collect();
    let header = Header {
        layer,
        reports: r.layers[reports_from..].to_vec(),
        imatrix: r.imatrix.iter().filter(|(k, _)| mine(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        norms: r.norms.iter().filter(|(k, _)| mine(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
        tensors,
    };
    let json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(format!("checkpoint header: {e}")))?;
    let path = layer_path(dir, layer);
    let mut f = AtomicFile::create(&path)?;
    f.write_all(MAGIC)?;
    f.write_all(&(json.len() as u64).to_le_bytes())?;
    f.write_all(&json)?;
    f.write_all(&data)?;
    f.commit()?;
    let start = (MAGIC.len() + 8 + json.len()) as u64;
    for e in header.tensors {
        r.quantized.remove(&e.name);
        r.stored
            .insert(e.name.clone(), StoredTensor { path: path.clone(), start: start + e.offset, entry: e });
    }
    Ok(())
}

/// Take back block `layer`'s saved part into `r` (tensors as [`StoredTensor`]s).
pub fn restore_layer(dir: &Path, layer: usize, r: &mut PassResult) -> Result<()> {
    let path = layer_path(dir, layer);
    let bad = |m: String| Error::malformed(&path, "calibration checkpoint", "header", m);
    let mut f = std::fs::File::open(&path).map_err(|e| {
        Error::Invalid(format!(
            "cannot resume: block {layer}'s checkpoint {} is missing ({e})",
            path.display()
        ))
    })?;
    let size = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    let mut head = [0u8; 16];
    f.read_exact(&mut head).map_err(|_| bad("shorter than its header".into()))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a quantkit block checkpoint (magic QKLAYER1)".into()));
    }
    let jlen =
        u64::from_le_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]);
    if jlen > size.saturating_sub(16) {
        return Err(bad(format!("a header of {jlen} bytes in a file of {size}")));
    }
    let mut json = vec![0u8; jlen as usize];
    f.read_exact(&mut json).map_err(|e| Error::io(&path, e))?;
    let h: Header = serde_json::from_slice(&json).map_err(|e| bad(e.to_string()))?;
    if h.layer != layer {
        return Err(bad(format!("holds block {}, not {layer}", h.layer)));
    }
    let start = 16 + jlen;
    for e in h.tensors {
        if e.offset.checked_add(e.len).is_none_or(|end| end > size.saturating_sub(start)) {
            return Err(bad(format!("{} lies outside the file", e.name)));
        }
        r.stored
            .insert(e.name.clone(), StoredTensor { path: path.clone(), start: start + e.offset, entry: e });
    }
    r.layers.extend(h.reports);
    r.imatrix.extend(h.imatrix);
    r.norms.extend(h.norms);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PassResult {
        let mut r = PassResult::default();
        let g = IntGrid { bits: 4, sym: false, group: Some(2), zero_min: 0 };
        let m = IntMatrix {
            grid: g,
            rows: 2,
            cols: 4,
            codes: vec![1, 2, 3, 15, 0, 7, 8, 9],
            params: (0..4).map(|i| IntParams { scale: 0.1 + i as f32, zero: i as u8 }).collect(),
            g_idx: vec![0, 1, 0, 1],
        };
        r.quantized.insert("blk.3.attn_q.weight".into(), Quantized::Int(m));
        let bytes: Vec<u8> = (0..34).map(|i| i as u8 * 7).collect();
        r.quantized.insert(
            "blk.3.attn_k.weight".into(),
            Quantized::Gguf { ty: GgmlType::Q8_0, rows: 1, cols: 32, bytes },
        );
        for (name, dq) in [("blk.3.ffn_up.weight", false), ("blk.3.ffn_down.weight", true)] {
            let w: Vec<f32> = (0..4 * 100).map(|i| ((i * 37 % 101) as f32 - 50.0) / 70.0).collect();
            let q = bnb::Nf4Weights::quantize(&w, 4, 100, bnb::BLOCK, dq, bnb::StateDtype::F16);
            r.quantized.insert(name.into(), Quantized::Nf4(Nf4Matrix { w: q, heads: dq.then_some(2) }));
        }
        r.imatrix.insert("blk.3.attn_q.weight".into(), (vec![0.1, 1e-300, 3.5], 9));
        r.norms.insert("blk.3.attn_norm.weight".into(), vec![1.5, -0.1]);
        r.norms.insert("blk.2.attn_norm.weight".into(), vec![9.0]);
        r
    }

    fn same(a: &Quantized, b: &Quantized) -> bool {
        match (a, b) {
            (Quantized::Int(x), Quantized::Int(y)) => {
                x.codes == y.codes
                    && x.g_idx == y.g_idx
                    && x.params.iter().zip(&y.params).all(|(p, q)| p.scale == q.scale && p.zero == q.zero)
                    && (x.rows, x.cols, x.grid.bits, x.grid.group)
                        == (y.rows, y.cols, y.grid.bits, y.grid.group)
            }
            (Quantized::Gguf { ty, bytes, .. }, Quantized::Gguf { ty: t2, bytes: b2, .. }) => {
                ty == t2 && bytes == b2
            }
            (Quantized::Nf4(x), Quantized::Nf4(y)) => x == y,
            _ => false,
        }
    }

    #[test]
    fn a_saved_block_restores_exactly() {
        let d = tempfile::tempdir().expect("tmp");
        let mut r = sample();
        let before: BTreeMap<String, Quantized> = std::mem::take(&mut r.quantized);
        r.quantized = before.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        save_layer(d.path(), 3, &mut r, 0).expect("save");
        assert!(r.quantized.is_empty() && r.stored.len() == 4, "the tensors left memory");
        let mut back = PassResult::default();
        restore_layer(d.path(), 3, &mut back).expect("restore");
        for (k, v) in &before {
            assert!(same(v, &back.stored[k].load().expect("load")), "{k}");
        }
        assert_eq!(back.imatrix, r.imatrix);
        assert_eq!(back.norms.len(), 1, "only block 3's norms are saved with block 3");
        assert_eq!(back.norms["blk.3.attn_norm.weight"], vec![1.5, -0.1]);
        assert!(restore_layer(d.path(), 4, &mut back).is_err(), "no file for block 4");
    }

    #[test]
    fn damaged_block_files_are_clear_errors() {
        let d = tempfile::tempdir().expect("tmp");
        let mut r = sample();
        save_layer(d.path(), 0, &mut r, 0).expect("save");
        let path = layer_path(d.path(), 0);
        let good = std::fs::read(&path).expect("read");
        let jlen = u64::from_le_bytes(good[8..16].try_into().expect("8")) as usize;
        let json = String::from_utf8(good[16..16 + jlen].to_vec()).expect("utf8");
        let with_json = |j: &str| {
            let mut v = b"QKLAYER1".to_vec();
            v.extend((j.len() as u64).to_le_bytes());
            v.extend(j.as_bytes());
            v.extend(&good[16 + jlen..]);
            v
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("bad magic", [b"QKLAYER9".as_slice(), &good[8..]].concat()),
            ("truncated header", good[..20].to_vec()),
            ("truncated data", good[..good.len() - 3].to_vec()),
            ("header length past the end", [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat()),
            ("not JSON", with_json(&json.replace('{', "["))),
            ("other block", with_json(&json.replacen("\"layer\":0", "\"layer\":5", 1))),
            ("huge matrix", with_json(&json.replace("\"rows\":2", "\"rows\":18446744073709551615"))),
            ("offset past the end", with_json(&json.replacen("\"offset\":0", "\"offset\":999999", 1))),
            ("zero group", with_json(&json.replace("\"group\":2", "\"group\":0"))),
            ("unknown type", with_json(&json.replace("\"ty\":8", "\"ty\":9999"))),
        ];
        for (label, bytes) in cases {
            std::fs::write(&path, &bytes).expect("write");
            let mut back = PassResult::default();
            let r = restore_layer(d.path(), 0, &mut back)
                .and_then(|_| back.stored.values().try_for_each(|t| t.load().map(|_| ())));
            let e = r.expect_err(label).to_string();
            assert!(e.contains("layer-0000.bin"), "{label}: {e}");
        }
    }
}
