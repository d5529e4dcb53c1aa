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
            Kind::Gguf { ty } => GgmlType::from_id(ty).map(|t| (t, self.path.as_path(), self.start, self.entry.len)),
            Kind::Int { .. } => None,
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
            Kind::Int { bits, sym, group, zero_min, groups, g_idx } => {
                let n = e.rows * e.cols;
                let np = e.rows * groups;
                if bytes.len() != n + np * 5 + g_idx * 4 {
                    return Err(bad(format!("{} bytes for a {}×{} matrix", bytes.len(), e.rows, e.cols)));
                }
                let (codes, rest) = bytes.split_at(n);
                let (scales, rest) = rest.split_at(np * 4);
                let (zeros, gi) = rest.split_at(np);
                let params = scales
                    .chunks_exact(4)
                    .zip(zeros)
                    .map(|(s, &zero)| IntParams { scale: f32::from_le_bytes([s[0], s[1], s[2], s[3]]), zero })
                    .collect();
                let g_idx = gi.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
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
    };
    TensorEntry { name: name.to_string(), rows, cols, offset: offset + start as u64, len: (out.len() - start) as u64, kind }
}

/// Save block `layer`'s part of `r` (its quantized tensors are in `r.quantized`; its report lines
/// are `r.layers[reports_from..]`): the tensors move to the file and become [`StoredTensor`]s.
pub fn save_layer(
    dir: &Path,
    layer: usize,
    r: &mut PassResult,
    reports_from: usize,
) -> Result<()> {
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
        r.stored.insert(e.name.clone(), StoredTensor { path: path.clone(), start: start + e.offset, entry: e });
    }
    Ok(())
}

/// Take back block `layer`'s saved part into `r` (tensors as [`StoredTensor`]s).
pub fn restore_layer(dir: &Path, layer: usize, r: &mut PassResult) -> Result<()> {
    let path = layer_path(dir, layer);
    let bad = |m: String| Error::malformed(&path, "calibration checkpoint", "header", m);
    let mut f = std::fs::File::open(&path).map_err(|e| {
        Error::Invalid(format!("cannot resume: block {layer}'s checkpoint {} is missing ({e})", path.display()))
    })?;
    let size = f.metadata().map_err(|e| Error::io(&path, e))?.len();
    let mut head = [0u8; 16];
    f.read_exact(&mut head).map_err(|_| bad("shorter than its header".into()))?;
    if &head[..8] != MAGIC {
        return Err(bad("not a quantkit block checkpoint (magic QKLAYER1)".into()));
    }
    let jlen = u64::from_le_bytes([head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15]]);
    if jlen > size - 16 {
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
        if e.offset.checked_add(e.len).is_none_or(|end| end > size - start) {
            return Err(bad(format!("{} lies outside the file", e.name)));
        }
        r.stored.insert(e.name.clone(), StoredTensor { path: path.clone(), start: start + e.offset, entry: e });
    }
    r.layers.extend(h.reports);
    r.imatrix.extend(h.imatrix);
    r.norms.extend(h.norms);
    Ok(())
}
