//! The GGUF reader. Parses from a byte slice (a memory map for files) so that the same code runs
//! under the fuzzer and in tests on in-memory bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quantkit_core::{checked_numel, Error, GgmlType, Result};

use super::{Value, ValueType, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::Bytes;

/// Longest string accepted in a header (chat templates are the largest real ones, ~100 KiB).
const MAX_STRING: u64 = 16 << 20;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: usize = 4;
/// Most metadata values (array elements included) accepted in one header: ~60x the largest real
/// vocabularies, and a cap on memory a hostile header can make us allocate.
const MAX_VALUES: u64 = 1 << 25;

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (innermost).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (`ne[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Shape in row-major (PyTorch/safetensors) order: outermost first.
    pub fn shape_rowmajor(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }
}

/// A parsed GGUF file with its tensor data mapped.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    pub version: u32,
    pub alignment: u64,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("tensors", &self.tensors.len())
            .field("metadata", &self.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Open and validate a GGUF file (memory-mapped; tensor data is not read until asked for).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(Bytes::map(path)?, path)
    }

    /// Parse a GGUF image held in memory (`name` is used in error messages).
    pub fn from_bytes(bytes: Vec<u8>, name: impl AsRef<Path>) -> Result<Self> {
        Self::parse(Bytes::Owned(bytes), name.as_ref())
    }

    fn parse(bytes: Bytes, path: &Path) -> Result<Self> {
        let buf: &[u8] = &bytes;
        let mut r = Reader { buf, pos: 0, path, values: 0 };
        let magic = r.take(4, "magic")?;
        if magic != MAGIC {
            return Err(
                r.err("magic", format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")"))
            );
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(r.err("version", "GGUF v1 is not supported (re-save it with a current llama.cpp)"))
            }
            v if v.swap_bytes() <= 3 => {
                return Err(r.err("version", "big-endian GGUF is not supported".to_string()));
            }
            v => return Err(r.err("version", format!("unknown GGUF version {v}"))),
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry takes at least 13 bytes, each tensor info at least 28.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 28, "tensor count")?;

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata #{i} key"))?;
            let ty_id = r.u32(&format!("type of '{key}'"))?;
            let ty = ValueType::from_id(ty_id)
                .ok_or_else(|| r.err(&format!("'{key}'"), format!("unknown value type {ty_id}")))?;
            let value = r.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(r.err(&format!("'{key}'"), "duplicate metadata key"));
            }
            metadata.push((key, value));
        }

        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
            Some(v) => {
                return Err(r.err("general.alignment", format!("must be a power-of-two u32, got {v:?}")));
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor #{i} name"))?;
            let where_ = format!("tensor '{name}'");
            let n_dims = r.u32(&where_)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.err(&where_, format!("{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&where_)?);
            }
            let ty_id = r.u32(&where_)?;
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| r.err(&where_, format!("unknown ggml type id {ty_id}")))?;
            let offset = r.u64(&where_)?;
            let numel = checked_numel(&dims)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| r.err(&where_, format!("dimensions {dims:?} overflow")))?;
            if dims[0] % ty.block_size() as u64 != 0 {
                return Err(r.err(
                    &where_,
                    format!(
                        "row length {} is not a multiple of {ty}'s block size {}",
                        dims[0],
                        ty.block_size()
                    ),
                ));
            }
            let size = (numel / ty.block_size() as u64)
                .checked_mul(ty.type_size() as u64)
                .ok_or_else(|| r.err(&where_, "byte size overflows"))?;
            if offset % alignment != 0 {
                return Err(r.err(&where_, format!("data offset {offset} is not aligned to {alignment}")));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(r.err(&where_, "duplicate tensor name"));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }

        let data_offset =
            align_up(r.pos as u64, alignment).ok_or_else(|| r.err("data section", "offset overflows"))?;
        let data_len = (buf.len() as u64).saturating_sub(data_offset);
        // Extents: as llama.cpp requires, tensors follow each other in info order, each starting at
        // the previous one's end rounded up to the alignment, and all inside the file. (This also
        // catches a tensor whose type or shape was changed: its size no longer meets the next one.)
        let mut expected = 0u64;
        let mut prev: Option<&TensorInfo> = None;
        for t in &tensors {
            let end = t.offset.checked_add(t.size).ok_or_else(|| r.err(&t.name, "extent overflows"))?;
            if t.offset != expected {
                let why = match prev {
                    Some(p) => format!(
                        "data starts at offset {}, but the previous tensor '{}' ({} {:?}, {} bytes) ends at {expected} \
                         (aligned to {alignment}); a wrong type or shape?",
                        t.offset, p.name, p.ty, p.dims, p.size
                    ),
                    None => format!("data starts at offset {}, expected 0 for the first tensor", t.offset),
                };
                return Err(Error::malformed(path, "GGUF", format!("tensor '{}'", t.name), why));
            }
            if end > data_len {
                return Err(Error::malformed(
                    path,
                    "GGUF",
                    format!("tensor '{}'", t.name),
                    format!(
                        "data [{}, {end}) runs past the end of the file (data section holds {data_len} bytes): truncated?",
                        t.offset
                    ),
                ));
            }
            expected = align_up(end, alignment).ok_or_else(|| r.err(&t.name, "extent overflows"))?;
            prev = Some(t);
        }
        // Bytes past the last tensor's (aligned) end: no writer leaves them, a tensor whose type or
        // shape was changed to a smaller one does.
        if let Some(last) = prev {
            if data_len > expected {
                return Err(Error::malformed(
                    path,
                    "GGUF",
                    format!("tensor '{}'", last.name),
                    format!(
                        "{} bytes follow the last tensor ({} {:?}, {} bytes, ends at {expected}); a wrong type or shape?",
                        data_len - expected,
                        last.ty,
                        last.dims,
                        last.size
                    ),
                ));
            }
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            bytes,
            version,
            alignment,
            metadata,
            index,
            tensors,
            tensor_index,
            data_offset,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// A required integer metadata value, with an error naming the key.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key, "an integer"))
    }

    /// A required float metadata value.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| self.missing(key, "a number"))
    }

    /// A required string metadata value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key, "a string"))
    }

    fn missing(&self, key: &str, what: &str) -> Error {
        Error::malformed(&self.path, "GGUF", format!("metadata '{key}'"), format!("missing or not {what}"))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor (validated to lie inside the file when the file was opened).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let buf: &[u8] = &self.bytes;
        let start = (self.data_offset + t.offset) as usize;
        &buf[start..start + t.size as usize]
    }

    /// Byte offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Tell the kernel the mapped pages of `t` are no longer needed (keeps RSS bounded while
    /// streaming through a large file). A no-op for in-memory images.
    pub fn release(&self, t: &TensorInfo) {
        self.bytes.release((self.data_offset + t.offset) as usize, t.size as usize);
    }

    /// Dequantize a tensor to f32 (row-major; rows of `dims[0]`).
    pub fn read_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        self.read_rows(t, 0, t.numel().checked_div(t.row_len()).unwrap_or(0) as usize)
    }

    fn row_bytes(&self, t: &TensorInfo) -> usize {
        t.ty.row_bytes(t.row_len()).unwrap_or(0) as usize
    }

    /// Dequantize rows `[r0, r1)` of a tensor.
    pub fn read_rows(&self, t: &TensorInfo, r0: usize, r1: usize) -> Result<Vec<f32>> {
        let rb = self.row_bytes(t);
        let data = self
            .tensor_data(t)
            .get(r0 * rb..r1 * rb)
            .ok_or_else(|| Error::bad_tensor(&t.name, format!("rows {r0}..{r1} are outside the tensor")))?;
        quantkit_formats::dequantize(t.ty, data, t.row_len() as usize)
            .map_err(|e| Error::bad_tensor(&t.name, format!("{e} ({})", self.path.display())))
    }

    /// Drop the mapped pages of rows `[r0, r1)` of a tensor.
    pub fn release_rows(&self, t: &TensorInfo, r0: usize, r1: usize) {
        let rb = self.row_bytes(t);
        self.bytes.release((self.data_offset + t.offset) as usize + r0 * rb, (r1 - r0) * rb);
    }
}

pub(super) fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? / a * a)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    values: u64,
}

impl<'a> Reader<'a> {
    fn err(&self, at: &str, msg: impl Into<String>) -> Error {
        Error::malformed(self.path, "GGUF", format!("{at}, byte {}", self.pos), msg)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(
                what,
                format!("file ends after {} bytes (needed {n} more): truncated", self.buf.len()),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Reject a count that could not possibly fit in the bytes left (before allocating for it).
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<()> {
        if count > self.remaining() / min_size {
            return Err(self.err(
                what,
                format!(
                    "{count} entries cannot fit in the {} bytes left: corrupt or hostile header",
                    self.remaining()
                ),
            ));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        if len > MAX_STRING {
            return Err(self.err(what, format!("string length {len} is too large (limit {MAX_STRING})")));
        }
        if len > self.remaining() {
            return Err(self.err(
                what,
                format!(
                    "string of {len} bytes runs past the end of the file ({} bytes left): truncated",
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err(what, format!("string is not UTF-8: {e}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        let what = &format!("value of '{key}'");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.arr::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.arr::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            ValueType::Bool => match self.arr::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(what, format!("bool byte {b} is neither 0 nor 1"))),
            },
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(what, format!("arrays nested deeper than {MAX_DEPTH}")));
                }
                let ety_id = self.u32(what)?;
                let ety = ValueType::from_id(ety_id)
                    .ok_or_else(|| self.err(what, format!("unknown array element type {ety_id}")))?;
                let n = self.u64(what)?;
                self.check_count(n, ety.min_size(), what)?;
                self.values += n;
                if self.values > MAX_VALUES {
                    return Err(self.err(what, format!("more than {MAX_VALUES} metadata values in all")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}
