//! llama.cpp importance-matrix files: the GGUF imatrix (`<tensor>.in_sum2` + `<tensor>.counts`
//! per weight, `imatrix.*` metadata) and the legacy `.dat` (count-prefixed entries of name, call
//! count, values; an optional trailer with the chunk count and dataset name).
//!
//! [`Imatrix::values`] gives what llama-quantize feeds the quantizers: per column, the mean of
//! x² over the calibration tokens (`in_sum2 / count`, or `values / ncall` for `.dat`; a matrix
//! that saw no input gets 1s, as llama.cpp does). Both readers treat the file as hostile: every
//! length is checked against the bytes left before anything is allocated, and non-finite values
//! are refused (llama-quantize refuses them too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{AtomicFile, Error, GgmlType, Result};

use crate::gguf::{GgufBuilder, GgufFile, TensorSpec, Value};

/// One weight's statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Σx² per column, `n_mat` matrices of `row_len` (legacy files: already scaled by `ncall`).
    pub sums: Vec<f32>,
    /// Tokens seen per matrix (legacy files: the call count, one value).
    pub counts: Vec<f32>,
}

/// An importance matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Imatrix {
    pub path: PathBuf,
    pub entries: BTreeMap<String, Entry>,
    pub datasets: Vec<String>,
    pub chunk_count: u32,
    pub chunk_size: u32,
    pub legacy: bool,
}

/// Refuse absurd files before allocating: llama.cpp names are short, and the largest real rows
/// (×experts) are far below this many values.
const MAX_NAME: usize = 4096;

impl Imatrix {
    /// Read a GGUF or legacy imatrix file (by its magic).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut head = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
            if n < 4 {
                return Err(Error::malformed(path, "imatrix", "start", "file is shorter than 4 bytes"));
            }
        }
        if &head == b"GGUF" {
            Self::from_gguf(&GgufFile::open(path)?)
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Self::from_legacy_bytes(&bytes, path)
        }
    }

    /// Parse a legacy `.dat` imatrix.
    pub fn from_legacy_bytes(b: &[u8], path: &Path) -> Result<Self> {
        let bad =
            |at: usize, msg: String| Error::malformed(path, "imatrix (.dat)", format!("byte {at}"), msg);
        let mut pos = 0usize;
        let i32_at = |pos: &mut usize, what: &str| -> Result<i32> {
            let s = b.get(*pos..*pos + 4).ok_or_else(|| bad(*pos, format!("truncated before {what}")))?;
            *pos += 4;
            Ok(i32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        };
        let n_entries = i32_at(&mut pos, "the entry count")?;
        if n_entries < 1 {
            return Err(bad(0, format!("entry count {n_entries} (expected at least 1)")));
        }
        // Each entry takes at least 16 bytes: a count larger than that is a lie.
        if n_entries as usize > b.len() / 16 {
            return Err(bad(0, format!("entry count {n_entries} does not fit in {} bytes", b.len())));
        }
        let mut entries = BTreeMap::new();
        for e in 0..n_entries {
            let len = i32_at(&mut pos, "a name length")?;
            if len < 0 || len as usize > MAX_NAME || pos + len as usize > b.len() {
                return Err(bad(pos - 4, format!("entry {e}: name length {len} is invalid or past the end")));
            }
            let name = std::str::from_utf8(&b[pos..pos + len as usize])
                .map_err(|_| bad(pos, format!("entry {e}: name is not UTF-8")))?
                .trim_end_matches('\0')
                .to_string();
            pos += len as usize;
            let ncall = i32_at(&mut pos, "a call count")?;
            let nval = i32_at(&mut pos, "a value count")?;
            if nval < 1 || (nval as usize).saturating_mul(4) > b.len() - pos {
                return Err(bad(
                    pos - 4,
                    format!("entry {name:?}: value count {nval} is invalid or past the end"),
                ));
            }
            let sums: Vec<f32> = b[pos..pos + 4 * nval as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            pos += 4 * nval as usize;
            if entries.insert(name.clone(), Entry { sums, counts: vec![ncall as f32] }).is_some() {
                return Err(bad(pos, format!("entry {name:?} appears twice")));
            }
        }
        let (mut chunk_count, mut datasets) = (0u32, vec![]);
        if pos < b.len() {
            chunk_count = i32_at(&mut pos, "the chunk count")?.max(0) as u32;
            if let Ok(len) = i32_at(&mut pos, "the dataset name") {
                if len > 0 && pos + len as usize <= b.len() {
                    datasets.push(String::from_utf8_lossy(&b[pos..pos + len as usize]).into_owned());
                }
            }
        }
        let m =
            Imatrix { path: path.to_path_buf(), entries, datasets, chunk_count, chunk_size: 0, legacy: true };
        m.check_finite()?;
        Ok(m)
    }

    /// Read a GGUF imatrix.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let path = g.path().to_path_buf();
        let bad = |at: &str, msg: String| Error::malformed(&path, "imatrix (GGUF)", at.to_string(), msg);
        let mut sums: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        let mut counts: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for t in &g.tensors {
            let (map, base) = if let Some(b) = t.name.strip_suffix(".in_sum2") {
                (&mut sums, b)
            } else if let Some(b) = t.name.strip_suffix(".counts") {
                (&mut counts, b)
            } else {
                continue; // `.in_sum` (activation means) and anything else: not needed to quantize
            };
            if t.ty != GgmlType::F32 {
                return Err(bad(&t.name, format!("is {} (imatrix tensors must be F32)", t.ty)));
            }
            map.insert(base.to_string(), g.read_f32(t)?);
        }
        let mut entries = BTreeMap::new();
        for (name, s) in sums {
            let c = counts.remove(&name).ok_or_else(|| bad(&name, "has .in_sum2 but no .counts".into()))?;
            if c.is_empty() || s.len() % c.len() != 0 {
                return Err(bad(&name, format!("{} sums do not split into {} matrices", s.len(), c.len())));
            }
            entries.insert(name, Entry { sums: s, counts: c });
        }
        if let Some(name) = counts.keys().next() {
            return Err(bad(name, "has .counts but no .in_sum2".into()));
        }
        if entries.is_empty() {
            return Err(bad("tensors", "no <name>.in_sum2 / <name>.counts pairs".into()));
        }
        let datasets = match g.get("imatrix.datasets").and_then(|v| v.as_array()) {
            Some(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            None => vec![],
        };
        let u32_of = |k: &str| g.get(k).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let m = Imatrix {
            path,
            entries,
            datasets,
            chunk_count: u32_of("imatrix.chunk_count"),
            chunk_size: u32_of("imatrix.chunk_size"),
            legacy: false,
        };
        m.check_finite()?;
        Ok(m)
    }

    fn check_finite(&self) -> Result<()> {
        for (name, e) in &self.entries {
            if let Some(i) = e.sums.iter().chain(&e.counts).position(|v| !v.is_finite()) {
                return Err(Error::malformed(
                    &self.path,
                    "imatrix",
                    name.clone(),
                    format!("value {i} is not finite (llama-quantize refuses such files too)"),
                ));
            }
        }
        Ok(())
    }

    /// The importance weights llama-quantize uses for tensor `name` (one per column, per matrix).
    pub fn values(&self, name: &str) -> Option<Vec<f32>> {
        let e = self.entries.get(name)?;
        if self.legacy {
            let ncall = e.counts.first().copied().unwrap_or(0.0);
            return Some(if ncall > 0.0 {
                e.sums.iter().map(|s| s / ncall).collect()
            } else {
                e.sums.clone()
            });
        }
        let ne0 = e.sums.len() / e.counts.len();
        let mut v = Vec::with_capacity(e.sums.len());
        for (j, &count) in e.counts.iter().enumerate() {
            let row = &e.sums[j * ne0..(j + 1) * ne0];
            if count > 0.0 {
                v.extend(row.iter().map(|s| s / count));
            } else {
                v.extend(std::iter::repeat_n(1.0f32, ne0));
            }
        }
        Some(v)
    }

    /// Write as a GGUF imatrix (llama.cpp's current format), atomically.
    pub fn write_gguf(&self, dest: &Path) -> Result<()> {
        let mut b = GgufBuilder::new();
        b.set("general.type", Value::String("imatrix".into()));
        b.set("imatrix.datasets", Value::strings(self.datasets.clone()));
        b.set("imatrix.chunk_count", Value::U32(self.chunk_count));
        b.set("imatrix.chunk_size", Value::U32(self.chunk_size));
        let mut data: Vec<&[f32]> = vec![];
        for (name, e) in &self.entries {
            let n_mat = e.counts.len().max(1) as u64;
            let ne0 = e.sums.len() as u64 / n_mat;
            b.add_tensor(TensorSpec {
                name: format!("{name}.in_sum2"),
                dims: vec![ne0, n_mat],
                ty: GgmlType::F32,
            });
            b.add_tensor(TensorSpec {
                name: format!("{name}.counts"),
                dims: vec![1, n_mat],
                ty: GgmlType::F32,
            });
            data.push(&e.sums);
            data.push(&e.counts);
        }
        let mut out = AtomicFile::create(dest)?;
        b.write(&mut out, |i, sink| sink(bytemuck::cast_slice(data[i])), |e| Error::io(dest, e))?;
        out.commit()
    }

    /// Write as a legacy `.dat` imatrix, atomically. Entries must have a single matrix.
    pub fn write_legacy(&self, dest: &Path) -> Result<()> {
        let mut b: Vec<u8> = vec![];
        b.extend_from_slice(&(self.entries.len() as i32).to_le_bytes());
        for (name, e) in &self.entries {
            if e.counts.len() != 1 {
                return Err(Error::Invalid(format!("{name}: the .dat format holds one matrix per entry")));
            }
            b.extend_from_slice(&(name.len() as i32).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&(e.counts[0] as i32).to_le_bytes());
            b.extend_from_slice(&(e.sums.len() as i32).to_le_bytes());
            b.extend_from_slice(bytemuck::cast_slice(&e.sums));
        }
        b.extend_from_slice(&(self.chunk_count as i32).to_le_bytes());
        let ds = self.datasets.first().map(String::as_str).unwrap_or("");
        b.extend_from_slice(&(ds.len() as i32).to_le_bytes());
        b.extend_from_slice(ds.as_bytes());
        let mut out = AtomicFile::create(dest)?;
        std::io::Write::write_all(&mut out, &b).map_err(|e| Error::io(dest, e))?;
        out.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut entries = BTreeMap::new();
        entries.insert(
            "blk.0.attn_q.weight".to_string(),
            Entry { sums: vec![2.0, 4.0, 6.0, 8.0], counts: vec![2.0] },
        );
        entries
            .insert("blk.0.ffn_down.weight".to_string(), Entry { sums: vec![3.0, 0.5], counts: vec![0.0] });
        Imatrix {
            path: PathBuf::new(),
            entries,
            datasets: vec!["tiny.txt".into()],
            chunk_count: 7,
            chunk_size: 512,
            legacy: false,
        }
    }

    #[test]
    fn gguf_and_legacy_roundtrip_and_average() {
        let dir = tempfile::tempdir().expect("ok");
        let m = sample();
        let g = dir.path().join("imatrix.gguf");
        m.write_gguf(&g).expect("ok");
        let r = Imatrix::open(&g).expect("ok");
        assert_eq!(r.entries, m.entries);
        assert_eq!((r.chunk_count, r.chunk_size, r.datasets.clone()), (7, 512, vec!["tiny.txt".to_string()]));
        assert_eq!(r.values("blk.0.attn_q.weight").expect("ok"), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(r.values("blk.0.ffn_down.weight").expect("ok"), vec![1.0, 1.0], "no input → 1s");
        assert!(r.values("blk.1.attn_q.weight").is_none());

        let d = dir.path().join("imatrix.dat");
        m.write_legacy(&d).expect("ok");
        let r = Imatrix::open(&d).expect("ok");
        assert!(r.legacy);
        assert_eq!(r.values("blk.0.attn_q.weight").expect("ok"), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(r.values("blk.0.ffn_down.weight").expect("ok"), vec![3.0, 0.5], "ncall 0 → raw values");
        assert_eq!((r.chunk_count, r.datasets.clone()), (7, vec!["tiny.txt".to_string()]));
    }

    #[test]
    fn hostile_legacy_files_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("ok");
        let d = dir.path().join("imatrix.dat");
        sample().write_legacy(&d).expect("ok");
        let good = std::fs::read(&d).expect("ok");
        let p = Path::new("x.dat");
        let err = |b: &[u8]| Imatrix::from_legacy_bytes(b, p).expect_err("must fail").to_string();
        // Truncation anywhere inside the entries.
        for cut in [0, 3, 4, 10, 30, 40, 60] {
            let e = err(&good[..cut]);
            assert!(e.contains("x.dat"), "cut {cut}: {e}");
        }
        let mut b = good.clone();
        b[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(err(&b).contains("does not fit"), "{}", err(&b));
        let mut b = good.clone();
        b[4..8].copy_from_slice(&(-5i32).to_le_bytes());
        assert!(err(&b).contains("name length"));
        // A value count far past the end.
        let name_len = "blk.0.attn_q.weight".len();
        let at = 8 + name_len + 4;
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&(1i32 << 30).to_le_bytes());
        assert!(err(&b).contains("value count"), "{}", err(&b));
        // A NaN value.
        let mut b = good.clone();
        b[at + 4..at + 8].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(err(&b).contains("not finite"), "{}", err(&b));
    }
}
