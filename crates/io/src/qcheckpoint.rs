//! Reading GPTQ (v1/v2), AWQ-GEMM and compressed-tensors `pack-quantized` checkpoints: every packed
//! module is presented as its dequantized `<m>.weight` (f32, `[out, in]`), so the engine, the
//! converter and `export-hf` take these folders like any HF checkpoint. Layouts:
//! docs/quantized-layouts.md. Every shape is checked against the others before any value is read.

use std::collections::BTreeMap;
use std::path::Path;

use half::f16;
use quantkit_core::{Error, Result};
use serde_json::Value as Json;

use crate::hf::HfCheckpoint;

/// How a checkpoint's packed modules read.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantLayout {
    /// `v1`: zeros stored minus one (AutoGPTQ); otherwise GPTQModel's v2.
    Gptq {
        bits: u32,
        group: Option<usize>,
        v1: bool,
    },
    Awq {
        bits: u32,
    },
    CompressedTensors {
        bits: u32,
        sym: bool,
        group: Option<usize>,
    },
}

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::malformed(path, "config.json", "quantization_config", what.into())
}

impl QuantLayout {
    /// From `config.json`'s `quantization_config` (`None` when absent).
    pub fn from_config(cfg: &Json, path: &Path) -> Result<Option<Self>> {
        let Some(q) = cfg.get("quantization_config") else { return Ok(None) };
        let method = q.get("quant_method").and_then(Json::as_str).unwrap_or("");
        let bits = |v: Option<&Json>| -> Result<u32> {
            match v.and_then(Json::as_u64) {
                Some(b @ 2..=8) => Ok(b as u32),
                other => Err(bad(path, format!("bits {other:?} (2..8 supported)"))),
            }
        };
        let group = |v: Option<&Json>| v.and_then(Json::as_i64).filter(|&g| g > 0).map(|g| g as usize);
        Ok(Some(match method {
            "gptq" => {
                let fmt = q.get("checkpoint_format").and_then(Json::as_str).unwrap_or("gptq");
                QuantLayout::Gptq {
                    bits: bits(q.get("bits"))?,
                    group: group(q.get("group_size")),
                    v1: fmt != "gptq_v2",
                }
            }
            "awq" => {
                let version = q.get("version").and_then(Json::as_str).unwrap_or("gemm").to_lowercase();
                if version != "gemm" {
                    return Err(Error::Unsupported(format!(
                        "AWQ version {version:?} in {} (only GEMM)",
                        path.display()
                    )));
                }
                QuantLayout::Awq { bits: bits(q.get("bits").or(q.get("w_bit")))? }
            }
            "compressed-tensors" => {
                let fmt = q.get("format").and_then(Json::as_str).unwrap_or("");
                if fmt != "pack-quantized" {
                    return Err(Error::Unsupported(format!(
                        "compressed-tensors format {fmt:?} in {} (only pack-quantized)",
                        path.display()
                    )));
                }
                let groups = q
                    .get("config_groups")
                    .and_then(Json::as_object)
                    .ok_or_else(|| bad(path, "no config_groups"))?;
                if groups.len() != 1 {
                    return Err(Error::Unsupported(format!(
                        "compressed-tensors with several config groups in {}",
                        path.display()
                    )));
                }
                let w = groups
                    .values()
                    .next()
                    .and_then(|g| g.get("weights"))
                    .ok_or_else(|| bad(path, "no weights scheme"))?;
                QuantLayout::CompressedTensors {
                    bits: bits(w.get("num_bits"))?,
                    sym: w.get("symmetric").and_then(Json::as_bool).unwrap_or(true),
                    group: group(w.get("group_size")),
                }
            }
            other => {
                return Err(Error::Unsupported(format!(
                    "quantization method {other:?} in {}",
                    path.display()
                )))
            }
        }))
    }

    /// The component that marks a packed module, and all components.
    fn components(&self) -> (&'static str, &'static [&'static str]) {
        match self {
            QuantLayout::Gptq { .. } => ("qweight", &["qweight", "qzeros", "scales", "g_idx"]),
            QuantLayout::Awq { .. } => ("qweight", &["qweight", "qzeros", "scales"]),
            QuantLayout::CompressedTensors { .. } => (
                "weight_packed",
                &["weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"],
            ),
        }
    }

    /// Presented names: stored ones minus packed components, plus `<m>.weight` (with `[out, in]`).
    pub fn visible_names(&self, h: &HfCheckpoint) -> Result<BTreeMap<String, Option<(usize, usize)>>> {
        let (marker, parts) = self.components();
        let mut out = BTreeMap::new();
        for n in h.stored_names() {
            let (prefix, last) = n.rsplit_once('.').unwrap_or(("", n));
            if parts.contains(&last) {
                if last == marker {
                    let shape = self.shape(h, prefix)?;
                    out.insert(format!("{prefix}.weight"), Some(shape));
                }
            } else {
                out.insert(n.to_string(), None);
            }
        }
        Ok(out)
    }

    /// `(out, in)` of a packed module.
    fn shape(&self, h: &HfCheckpoint, m: &str) -> Result<(usize, usize)> {
        let (_, _, qs) = h.raw(&format!("{m}.{}", self.components().0))?;
        let err = |msg: String| Error::bad_tensor(format!("{m}.{}", self.components().0), msg);
        if qs.len() != 2 {
            return Err(err(format!("shape {qs:?} is not 2-D")));
        }
        Ok(match self {
            QuantLayout::Gptq { bits, .. } => (qs[1], qs[0] * 32 / *bits as usize),
            QuantLayout::Awq { bits } => (qs[1] * 32 / *bits as usize, qs[0]),
            QuantLayout::CompressedTensors { .. } => {
                let (b, dt, s) = h.raw(&format!("{m}.weight_shape"))?;
                if dt != "I64" || s != [2] {
                    return Err(err(format!("weight_shape is {dt} {s:?}, expected I64 [2]")));
                }
                let v: Vec<i64> =
                    b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                if v[0] <= 0 || v[1] <= 0 || v[0] as usize != qs[0] {
                    return Err(err(format!("weight_shape {v:?} does not match weight_packed {qs:?}")));
                }
                (v[0] as usize, v[1] as usize)
            }
        })
    }

    /// The dequantized weight of module `m`, row-major `[out, in]`, in f32.
    pub fn dequantize(&self, h: &HfCheckpoint, m: &str) -> Result<Vec<f32>> {
        let (rows, cols) = self.shape(h, m)?;
        let name = |p: &str| format!("{m}.{p}");
        let ints = |p: &str, want: &[usize]| -> Result<Vec<u32>> {
            let (b, dt, s) = h.raw(&name(p))?;
            if dt != "I32" || s != want {
                return Err(Error::bad_tensor(name(p), format!("is {dt} {s:?}, expected I32 {want:?}")));
            }
            Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
        };
        let floats = |p: &str, want: &[usize]| -> Result<Vec<f32>> {
            let (b, dt, s) = h.raw(&name(p))?;
            if s != want {
                return Err(Error::bad_tensor(name(p), format!("shape {s:?}, expected {want:?}")));
            }
            match dt.as_str() {
                "F16" => Ok(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
                "BF16" => Ok(b
                    .chunks_exact(2)
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect()),
                "F32" => Ok(b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect()),
                _ => Err(Error::bad_tensor(name(p), format!("dtype {dt} (F16, BF16 or F32 expected)"))),
            }
        };
        // Bits `bits` wide at bit `i·bits` of a little-endian word stream (`word(k)`).
        let field = |word: &dyn Fn(usize) -> u32, i: usize, bits: u32| -> u32 {
            let bit = i * bits as usize;
            let (w, s) = (bit / 32, bit % 32);
            let mut v = word(w) >> s;
            if s + bits as usize > 32 {
                v |= word(w + 1) << (32 - s);
            }
            v & ((1u32 << bits) - 1)
        };
        let mut out = vec![0f32; rows * cols];
        match self {
            QuantLayout::Gptq { bits, group, v1 } => {
                let b = *bits as usize;
                if cols * b % 32 != 0 || rows * b % 32 != 0 {
                    return Err(Error::bad_tensor(
                        name("qweight"),
                        format!("{rows}×{cols} cannot be packed at {bits} bits"),
                    ));
                }
                let qw = ints("qweight", &[cols * b / 32, rows])?;
                let g_idx: Vec<usize> = match h.raw(&name("g_idx")) {
                    Ok(_) => ints("g_idx", &[cols])?.into_iter().map(|g| g as usize).collect(),
                    Err(_) => (0..cols).map(|i| i / group.unwrap_or(cols)).collect(),
                };
                let ng = g_idx.iter().max().map(|g| g + 1).unwrap_or(1);
                let (_, _, zs) = h.raw(&name("qzeros"))?;
                if zs.first().copied().unwrap_or(0) < ng {
                    return Err(Error::bad_tensor(
                        name("g_idx"),
                        format!("refers to group {} of {:?}", ng - 1, zs),
                    ));
                }
                let ng = zs[0];
                let qz = ints("qzeros", &[ng, rows * b / 32])?;
                let sc = floats("scales", &[ng, rows])?;
                let zw = rows * b / 32;
                for o in 0..rows {
                    for i in 0..cols {
                        let g = g_idx[i];
                        let q = field(&|k| qw[k * rows + o], i, *bits);
                        let z = field(&|k| qz[g * zw + k], o, *bits) + *v1 as u32;
                        out[o * cols + i] = sc[g * rows + o] * (q as f32 - z as f32);
                    }
                }
            }
            QuantLayout::Awq { bits } => {
                if *bits != 4 || rows % 8 != 0 {
                    return Err(Error::bad_tensor(
                        name("qweight"),
                        format!("AWQ GEMM {bits}-bit {rows}×{cols}"),
                    ));
                }
                // Output 8c + k sits in nibble REVERSE[k] of word c (packing order [0,2,4,6,1,3,5,7]).
                const REVERSE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];
                let qw = ints("qweight", &[cols, rows / 8])?;
                let (_, _, zs) = h.raw(&name("qzeros"))?;
                let ng = zs.first().copied().unwrap_or(0);
                if ng == 0 || cols % ng != 0 {
                    return Err(Error::bad_tensor(name("qzeros"), format!("{ng} groups for {cols} inputs")));
                }
                let gs = cols / ng;
                let qz = ints("qzeros", &[ng, rows / 8])?;
                let sc = floats("scales", &[ng, rows])?;
                let get = |words: &[u32], base: usize, o: usize| -> u32 {
                    (words[base + o / 8] >> (4 * REVERSE[o % 8])) & 15
                };
                for o in 0..rows {
                    for i in 0..cols {
                        let g = i / gs;
                        let q = get(&qw, i * rows / 8, o);
                        let z = get(&qz, g * rows / 8, o);
                        out[o * cols + i] = sc[g * rows + o] * (q as f32 - z as f32);
                    }
                }
            }
            QuantLayout::CompressedTensors { bits, sym, group } => {
                let b = *bits as usize;
                let nw = (cols * b).div_ceil(32);
                let gs = group.unwrap_or(cols);
                if cols % gs != 0 {
                    return Err(Error::bad_tensor(
                        name("weight_packed"),
                        format!("{cols} inputs are not whole groups of {gs}"),
                    ));
                }
                let ng = cols / gs;
                let qw = ints("weight_packed", &[rows, nw])?;
                let sc = floats("weight_scale", &[rows, ng])?;
                let zp: Option<Vec<u32>> = if *sym {
                    None
                } else {
                    Some(ints("weight_zero_point", &[(rows * b).div_ceil(32), ng])?)
                };
                let mid = 1u32 << (bits - 1);
                for o in 0..rows {
                    for i in 0..cols {
                        let g = i / gs;
                        let q = field(&|k| qw[o * nw + k], i, *bits);
                        let z = match &zp {
                            Some(z) => field(&|k| z[k * ng + g], o, *bits),
                            None => mid,
                        };
                        out[o * cols + i] = sc[o * ng + g] * (q as f32 - z as f32);
                    }
                }
            }
        }
        Ok(out)
    }
}
