//! The GGUF writer: the header is laid out up front from tensor specs, then tensor data is
//! streamed in order (each tensor padded to the alignment), so memory holds one tensor at a time.

use std::io::Write;

use quantkit_core::{checked_numel, Error, GgmlType, Result};

use super::read::align_up;
use super::{Value, DEFAULT_ALIGNMENT, MAGIC};

/// A tensor to be written: name, ggml-order dims and storage type.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Bytes of data, or an error if the shape does not fit the type.
    pub fn size(&self) -> Result<u64> {
        let numel = checked_numel(&self.dims)
            .ok_or_else(|| Error::bad_tensor(&self.name, format!("dims {:?} overflow", self.dims)))?;
        let row = self.dims.first().copied().unwrap_or(1);
        let row_bytes = self.ty.row_bytes(row).ok_or_else(|| {
            Error::bad_tensor(
                &self.name,
                format!(
                    "row length {row} is not a multiple of {}'s block size {}",
                    self.ty,
                    self.ty.block_size()
                ),
            )
        })?;
        if row == 0 {
            return Ok(0);
        }
        Ok(numel / row * row_bytes)
    }
}

/// Collects metadata and tensor specs, then writes a GGUF v3 file.
#[derive(Debug, Default, Clone)]
pub struct GgufBuilder {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set a metadata key (replacing an earlier value, keeping its position).
    pub fn set(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some(self.metadata.remove(i).1)
    }

    pub fn add_tensor(&mut self, spec: TensorSpec) {
        self.tensors.push(spec);
    }

    fn alignment(&self) -> u64 {
        match self.get("general.alignment") {
            Some(Value::U32(a)) if *a > 0 && a.is_power_of_two() => *a as u64,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Serialize the header (including padding up to the data section) and return it with each
    /// tensor's data size.
    pub fn header(&self) -> Result<(Vec<u8>, Vec<u64>)> {
        let align = self.alignment();
        let mut seen = std::collections::HashSet::new();
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(Error::bad_tensor(&t.name, "duplicate tensor name"));
            }
            sizes.push(t.size()?);
        }
        let mut h = Vec::new();
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            write_str(&mut h, k);
            h.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            write_value(&mut h, v);
        }
        let mut offset = 0u64;
        for (t, &size) in self.tensors.iter().zip(&sizes) {
            write_str(&mut h, &t.name);
            h.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                h.extend_from_slice(&d.to_le_bytes());
            }
            h.extend_from_slice(&t.ty.id().to_le_bytes());
            h.extend_from_slice(&offset.to_le_bytes());
            offset = align_up(offset + size, align).ok_or_else(|| Error::Invalid("file too large".into()))?;
        }
        let padded = align_up(h.len() as u64, align).unwrap_or(h.len() as u64) as usize;
        h.resize(padded, 0);
        Ok((h, sizes))
    }

    /// Write the whole file to `out`. `data(i, sink)` pushes tensor `i`'s bytes through `sink`, in
    /// as many pieces as it likes (so a tensor never needs to be in memory whole); the total length
    /// is checked against the spec.
    pub fn write<W: Write>(
        &self,
        out: &mut W,
        mut data: impl FnMut(usize, &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()>,
        io_err: impl Fn(std::io::Error) -> Error,
    ) -> Result<u64> {
        let align = self.alignment() as usize;
        let (header, sizes) = self.header()?;
        out.write_all(&header).map_err(&io_err)?;
        let mut written = header.len() as u64;
        let zeros = vec![0u8; align];
        for (i, &size) in sizes.iter().enumerate() {
            let mut n = 0u64;
            data(i, &mut |b: &[u8]| {
                n += b.len() as u64;
                out.write_all(b).map_err(&io_err)
            })?;
            if n != size {
                return Err(Error::bad_tensor(
                    &self.tensors[i].name,
                    format!("produced {n} bytes, header promised {size}"),
                ));
            }
            let pad = (align - (n as usize) % align) % align;
            out.write_all(&zeros[..pad]).map_err(&io_err)?;
            written += n + pad as u64;
        }
        Ok(written)
    }
}

fn write_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn write_value(h: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => h.push(*x),
        Value::I8(x) => h.push(*x as u8),
        Value::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => h.push(*x as u8),
        Value::String(s) => write_str(h, s),
        Value::Array(ety, items) => {
            h.extend_from_slice(&(*ety as u32).to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                write_value(h, it);
            }
        }
    }
}
