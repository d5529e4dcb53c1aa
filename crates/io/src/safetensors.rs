//! safetensors reading (memory-mapped, header validated by the `safetensors` crate) and a
//! streaming writer.
//!
//! Format: u64 little-endian header length N, N bytes of JSON
//! (`{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}`,
//! offsets relative to the end of the header, contiguous), then the data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{AtomicFile, Error, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

/// A memory-mapped, validated safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: crate::Bytes,
    data_start: usize,
    meta: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile").field("path", &self.path).finish()
    }
}

impl SafetensorsFile {
    /// Open and validate a safetensors file (memory-mapped; data is read when asked for).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(crate::Bytes::map(path)?, path)
    }

    /// Validate a safetensors image held in memory (`name` is used in error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl AsRef<Path>) -> Result<Self> {
        Self::parse(crate::Bytes::Owned(bytes), name.as_ref())
    }

    fn parse(mmap: crate::Bytes, path: &Path) -> Result<Self> {
        let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| describe(path, &mmap, e))?;
        // The crate keeps the last of two entries with one name; a file that names a tensor twice
        // is ambiguous, so refuse it.
        if let Some(dup) = duplicate_key(&mmap[8..8 + n]) {
            return Err(Error::malformed(
                path,
                "safetensors",
                "header",
                format!("tensor '{dup}' is listed twice"),
            ));
        }
        Ok(Self { path: path.to_path_buf(), mmap, data_start: 8 + n, meta })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names in file (offset) order.
    pub fn names(&self) -> Vec<String> {
        self.meta.offset_keys()
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.meta.info(name)
    }

    /// The `__metadata__` string map, if any.
    pub fn user_metadata(&self) -> Option<&std::collections::HashMap<String, String>> {
        self.meta.metadata().as_ref()
    }

    /// Raw bytes of a tensor.
    pub fn data(&self, name: &str) -> Result<&[u8]> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            hint: String::new(),
        })?;
        let (s, e) = info.data_offsets;
        Ok(&self.mmap[self.data_start + s..self.data_start + e])
    }

    /// Read a float tensor as f32, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let n = self.info(name).map(|i| i.shape.iter().product::<usize>()).unwrap_or(0);
        self.read_f32_range(name, 0, n)
    }

    /// Elements `[start, end)` of a float tensor (flat, row-major) as f32.
    pub fn read_f32_range(&self, name: &str, start: usize, end: usize) -> Result<Vec<f32>> {
        let dtype = self.info(name).map(|i| i.dtype);
        let all = self.data(name)?;
        let elem = dtype.map(|d| d.bitsize() / 8).unwrap_or(1).max(1);
        let bytes = all.get(start * elem..end * elem).ok_or_else(|| {
            Error::bad_tensor(name, format!("element range {start}..{end} is outside the tensor"))
        })?;
        match dtype {
            Some(Dtype::F32) => {
                Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Some(Dtype::F16) => quantkit_formats::dequantize(quantkit_core::GgmlType::F16, bytes, 1),
            Some(Dtype::BF16) => quantkit_formats::dequantize(quantkit_core::GgmlType::BF16, bytes, 1),
            Some(other) => Err(Error::Unsupported(format!(
                "tensor '{name}' in {} has dtype {other:?}; quantkit reads F32, F16 and BF16 weights",
                self.path.display()
            ))),
            None => unreachable!("data() checked the name"),
        }
    }

    /// Drop the mapped pages of a tensor from this process (bounded RSS while streaming).
    pub fn release(&self, name: &str) {
        if let Some(info) = self.info(name) {
            let (s, e) = info.data_offsets;
            self.mmap.release(self.data_start + s, e - s);
        }
    }

    /// Drop the mapped pages of elements `[start, end)` of a tensor.
    pub fn release_range(&self, name: &str, start: usize, end: usize) {
        if let Some(info) = self.info(name) {
            let elem = (info.dtype.bitsize() / 8).max(1);
            let base = self.data_start + info.data_offsets.0;
            self.mmap.release(base + start * elem, (end - start) * elem);
        }
    }
}

/// Turn a `safetensors` crate error into one that says what and where.
fn describe(path: &Path, buf: &[u8], e: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    let header_len = buf.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let msg = match &e {
        E::HeaderTooSmall => format!("file is {} bytes, too short for the 8-byte header length", buf.len()),
        E::HeaderTooLarge => format!("declared header length {header_len:?} exceeds the 100 MB limit"),
        E::InvalidHeaderLength => format!(
            "declared header length {} runs past the end of the {}-byte file: truncated?",
            header_len.unwrap_or(0),
            buf.len()
        ),
        E::MetadataIncompleteBuffer => {
            format!("tensor data does not exactly fill the file ({} bytes): truncated or padded", buf.len())
        }
        E::InvalidOffset(_)
        | E::TensorInvalidInfo
        | E::ValidationOverflow
        | E::InvalidHeaderDeserialization(_)
        | E::InvalidHeader(_) => {
            match header_len.and_then(|n| buf.get(8..8usize.checked_add(usize::try_from(n).ok()?)?)) {
                Some(h) => diagnose(h, buf.len()).unwrap_or_else(|| e.to_string()),
                None => e.to_string(),
            }
        }
        other => other.to_string(),
    };
    Error::malformed(path, "safetensors", "header", msg)
}

/// The first key that a JSON object at the top level of `header` holds twice.
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Dups;
    impl<'de> Visitor<'de> for Dups {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(k.clone()) {
                    return Ok(Some(k));
                }
            }
            Ok(None)
        }
    }
    serde_json::Deserializer::from_slice(header).deserialize_map(Dups).ok().flatten()
}

/// Say which tensor entry of a header the `safetensors` crate refused, and why.
fn diagnose(header: &[u8], file_len: usize) -> Option<String> {
    let text = match std::str::from_utf8(header) {
        Ok(t) => t,
        Err(e) => return Some(format!("header is not UTF-8 (byte {} of the header)", e.valid_up_to())),
    };
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => {
            return Some(format!("header is not valid JSON (line {}, column {}): {e}", e.line(), e.column()))
        }
    };
    let obj = json.as_object()?;
    let data_len = file_len.saturating_sub(8 + header.len()) as u64;
    for (name, info) in obj.iter().filter(|(k, _)| *k != "__metadata__") {
        let dtype = info.get("dtype").and_then(|d| d.as_str());
        let bits: Option<u64> = match dtype {
            Some("F64" | "I64" | "U64") => Some(64),
            Some("F32" | "I32" | "U32") => Some(32),
            Some("F16" | "BF16" | "I16" | "U16") => Some(16),
            Some("F8_E4M3" | "F8_E5M2" | "F8_E8M0" | "I8" | "U8" | "BOOL") => Some(8),
            Some("F4" | "F6_E2M3" | "F6_E3M2") => None,
            Some(other) => return Some(format!("tensor '{name}' has unknown dtype {other:?}")),
            None => return Some(format!("tensor '{name}' has no \"dtype\" string")),
        };
        let Some(shape) = info.get("shape").and_then(|s| s.as_array()) else {
            return Some(format!("tensor '{name}' has no \"shape\" array"));
        };
        let dims: Option<Vec<u64>> = shape.iter().map(|d| d.as_u64()).collect();
        let Some(dims) = dims else {
            return Some(format!(
                "tensor '{name}' has a shape that is not a list of sizes: {}",
                info["shape"]
            ));
        };
        let offs: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect());
        let Some([begin, end]) = offs.as_deref().and_then(|o| <[u64; 2]>::try_from(o).ok()) else {
            return Some(format!("tensor '{name}' has no [begin, end] \"data_offsets\""));
        };
        let bytes =
            quantkit_core::checked_numel(&dims).zip(bits).and_then(|(n, b)| n.checked_mul(b)).map(|x| x / 8);
        match bytes {
            None => return Some(format!("tensor '{name}': shape {dims:?} overflows")),
            Some(b) if end < begin || end - begin != b => {
                return Some(format!(
                    "tensor '{name}': data_offsets [{begin}, {end}] hold {} bytes, but shape {dims:?} of {} needs {b}",
                    end.wrapping_sub(begin) as i64,
                    dtype.unwrap_or("?")
                ))
            }
            _ => {}
        }
        if end > data_len {
            return Some(format!(
                "tensor '{name}': data_offsets end {end} is past the {data_len} data bytes"
            ));
        }
    }
    // Each tensor's data must start where the previous one's ends.
    let mut spans: Vec<(u64, u64, &str)> = obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, v)| {
            Some((v["data_offsets"][0].as_u64()?, v["data_offsets"][1].as_u64()?, k.as_str()))
        })
        .collect();
    spans.sort();
    let mut prev: (u64, &str) = (0, "");
    for (begin, end, name) in spans {
        if begin != prev.0 {
            return Some(if prev.1.is_empty() {
                format!("tensor '{name}': data starts at byte {begin}, but the first tensor must start at 0")
            } else {
                format!(
                    "tensor '{name}': data starts at byte {begin}, but the previous tensor '{}' ends at {}",
                    prev.1, prev.0
                )
            });
        }
        prev = (end, name);
    }
    None
}

/// One tensor to write.
#[derive(Debug, Clone)]
pub struct StTensorSpec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl StTensorSpec {
    pub fn size(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

/// Write a safetensors file atomically, streaming tensor data in order: `data(i, sink)` pushes
/// tensor `i`'s bytes through `sink` in as many pieces as it likes; the total is checked.
pub fn write_safetensors(
    dest: &Path,
    tensors: &[StTensorSpec],
    metadata: &BTreeMap<String, String>,
    mut data: impl FnMut(usize, &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).map_err(|e| Error::Invalid(e.to_string()))?,
        );
    }
    let mut offset = 0usize;
    for t in tensors {
        let size = t.size();
        let mut entry = serde_json::Map::new();
        entry.insert("dtype".into(), serde_json::Value::String(format!("{:?}", t.dtype)));
        entry.insert("shape".into(), serde_json::json!(t.shape));
        entry.insert("data_offsets".into(), serde_json::json!([offset, offset + size]));
        if header.insert(t.name.clone(), serde_json::Value::Object(entry)).is_some() {
            return Err(Error::bad_tensor(&t.name, "duplicate tensor name"));
        }
        offset += size;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::Invalid(e.to_string()))?;
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let mut out = AtomicFile::create(dest)?;
    out.write_all(&(json.len() as u64).to_le_bytes())?;
    out.write_all(&json)?;
    for (i, t) in tensors.iter().enumerate() {
        let mut n = 0usize;
        data(i, &mut |b: &[u8]| {
            n += b.len();
            out.write_all(b)
        })?;
        if n != t.size() {
            return Err(Error::bad_tensor(&t.name, format!("produced {n} bytes, expected {}", t.size())));
        }
    }
    out.commit()
}
