//! compressed-tensors' unpacked 8-bit formats (compressed-tensors 0.20 `NaiveQuantizationCompressor`
//! and its aliases): `int-quantized` (int8 weights, written by llm-compressor when activations are
//! quantized too: W8A8), `float-quantized` (FP8 E4M3 weights with quantized activations:
//! FP8_DYNAMIC) and `naive-quantized` (the same tensors for weight-only float schemes: FP8 W8A16).
//!
//! Per module: `<m>.weight` (`I8` or `F8_E4M3`, `[out, in]`, the quantized value itself) and
//! `<m>.weight_scale` (float, `[out, 1]` per channel, `[out, in / G]` per group, `[1]` per tensor);
//! `w = scale · q`. Symmetric only (an asymmetric `weight_zero_point` is refused). Activation
//! schemes (`input_activations`) and their static `input_scale`s do not change the weights: the
//! reader ignores them (docs/quantized-layouts.md).

use quantkit_core::{Error, Result};
use safetensors::Dtype;
use serde_json::Value as Json;

use super::{bad, f32_bytes, fp8, Layout, LayoutConfig, Module, Packed, Regrouped};

/// The safetensors dtype of `<m>.weight`.
pub(super) fn weight_dtype(layout: Layout) -> &'static str {
    if layout.is_float() {
        "F8_E4M3"
    } else {
        "I8"
    }
}

/// `quantization_config` of an `int-quantized` / `float-quantized` / `naive-quantized` checkpoint
/// (`format` is one of those; `w` is the weights' `QuantizationArgs`).
pub(super) fn from_config(fmt: &str, w: &Json, acts: bool, path: &std::path::Path) -> Result<LayoutConfig> {
    let ty = w.get("type").and_then(Json::as_str).unwrap_or("int");
    let bits = w.get("num_bits").and_then(Json::as_u64);
    let layout = match (fmt, ty) {
        ("int-quantized" | "naive-quantized", "int") if bits == Some(4) => Layout::CtW4A4,
        ("int-quantized" | "naive-quantized", "int") => Layout::CtW8A8,
        ("float-quantized" | "naive-quantized", "float") if acts => Layout::CtFp8Dynamic,
        ("float-quantized" | "naive-quantized", "float") => Layout::CtFp8,
        _ => {
            return Err(Error::Unsupported(format!(
                "compressed-tensors format {fmt:?} with {ty:?} weights in {} (int-quantized holds int, \
                 float-quantized float weights)",
                path.display()
            )))
        }
    };
    let want = if layout == Layout::CtW4A4 { 4 } else { 8 };
    if bits != Some(want) {
        return Err(bad(path, format!("{fmt} {ty} weights of {bits:?} bits (int: 4 or 8; float: 8)")));
    }
    if !w.get("symmetric").and_then(Json::as_bool).unwrap_or(true) {
        return Err(Error::Unsupported(format!(
            "asymmetric {fmt} weights in {} (only symmetric)",
            path.display()
        )));
    }
    let strategy = w.get("strategy").and_then(Json::as_str).unwrap_or("tensor");
    let group = match strategy {
        "channel" | "tensor" => None,
        "group" => match w.get("group_size").and_then(Json::as_i64) {
            Some(g) if g > 0 => Some(g as usize),
            g => return Err(bad(path, format!("strategy \"group\" with group_size {g:?}"))),
        },
        s => {
            return Err(Error::Unsupported(format!(
                "compressed-tensors weight strategy {s:?} in {} (channel, group or tensor)",
                path.display()
            )))
        }
    };
    Ok(LayoutConfig { layout, bits: want as u32, group, sym: true })
}

/// `<prefix>.weight` from `w`'s codes (int: unsigned `bits`-bit codes with zero `2^(bits−1)`
/// stored as `code − 2^(bits−1)`; FP8: E4M3 bit patterns) and `<prefix>.weight_scale` (f32 `[out, groups]`, so compressed-tensors'
/// dequantization in the scale's dtype is our f32 product exactly).
pub(super) fn pack(layout: Layout, bits: u32, w: &Regrouped, prefix: &str) -> Vec<Packed> {
    let (rows, cols, ng) = (w.rows, w.cols, w.groups());
    let (dtype, bytes) = if layout.is_float() {
        (Dtype::F8_E4M3, w.codes.to_vec())
    } else {
        let zero = 1i32 << (bits - 1);
        (Dtype::I8, w.codes.iter().map(|&c| (c as i32 - zero) as i8 as u8).collect())
    };
    vec![
        Packed::new(format!("{prefix}.weight"), dtype, vec![rows, cols], bytes),
        Packed::new(
            format!("{prefix}.weight_scale"),
            Dtype::F32,
            vec![rows, ng],
            f32_bytes(w.scales.iter().copied()),
        ),
    ]
}

/// `(out, in)` from `<m>.weight`.
pub(super) fn shape(layout: Layout, t: &Module, s: &[usize], dt: &str) -> Result<(usize, usize)> {
    let want = weight_dtype(layout);
    if dt != want {
        return Err(Error::bad_tensor(
            t.name("weight"),
            format!("dtype {dt}, expected {want} ({} checkpoint)", layout.title()),
        ));
    }
    Ok((s[0], s[1]))
}

/// A dense 8-bit module as stored: row-major codes (int8 two's complement, or E4M3 bit patterns)
/// and `rows × cols/group` f32 scales (a per-tensor scale repeated per row), `w = scale · value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense8 {
    pub rows: usize,
    pub cols: usize,
    /// Columns per scale (`cols`: per channel).
    pub group: usize,
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    /// E4M3 codes (else int8).
    pub float: bool,
}

/// The stored codes and scales of module `t`, checked: no zero point, a known scale shape,
/// finite scales, no NaN FP8 code.
pub(super) fn stored(
    layout: Layout,
    group: Option<usize>,
    t: &Module,
    rows: usize,
    cols: usize,
) -> Result<Dense8> {
    if t.raw("weight_zero_point").is_ok() {
        return Err(Error::bad_tensor(
            t.name("weight_zero_point"),
            "is present: only symmetric (zero-point-free) 8-bit weights are supported",
        ));
    }
    let (q, dt, s) = t.raw("weight")?;
    shape(layout, t, &s, &dt)?;
    if q.len() != rows * cols {
        return Err(Error::bad_tensor(t.name("weight"), format!("{} bytes for [{rows}, {cols}]", q.len())));
    }
    let (sc, ss) = t.floats_any("weight_scale")?;
    // Columns per scale: per channel (one per row), per group, or one for the whole tensor.
    let (scales, gs) = match group {
        Some(g) if cols % g == 0 && ss == [rows, cols / g] => (sc, g),
        None if ss == [rows, 1] || ss == [rows] => (sc, cols),
        None if sc.len() == 1 && ss.iter().all(|&d| d == 1) => (vec![sc[0]; rows], cols),
        _ => {
            let want = match group {
                Some(g) => format!("[{rows}, {}] (group {g})", cols / g.max(1)),
                None => format!("[{rows}, 1] or [1]"),
            };
            return Err(Error::bad_tensor(t.name("weight_scale"), format!("shape {ss:?}, expected {want}")));
        }
    };
    if let Some(i) = scales.iter().position(|v| !v.is_finite()) {
        return Err(Error::bad_tensor(
            t.name("weight_scale"),
            format!("value {} at index {i} is not finite", scales[i]),
        ));
    }
    if layout == Layout::CtW4A4 {
        if let Some(i) = q.iter().position(|&b| !(-8..=7).contains(&(b as i8))) {
            return Err(Error::bad_tensor(
                t.name("weight"),
                format!(
                    "value {} at [{}, {}] is outside the 4-bit range [-8, 7] of a num_bits 4 checkpoint",
                    q[i] as i8,
                    i / cols.max(1),
                    i % cols.max(1)
                ),
            ));
        }
    }
    let float = layout.is_float();
    if float {
        if let Some(i) = q.iter().position(|&b| fp8::is_nan(b)) {
            return Err(Error::bad_tensor(
                t.name("weight"),
                format!("FP8 code {:#04x} at [{}, {}] is NaN", q[i], i / cols.max(1), i % cols.max(1)),
            ));
        }
    }
    Ok(Dense8 { rows, cols, group: gs, codes: q.to_vec(), scales, float })
}

pub(super) fn unpack(
    layout: Layout,
    group: Option<usize>,
    t: &Module,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    let d = stored(layout, group, t, rows, cols)?;
    let ng = cols / d.group;
    let mut out = Vec::with_capacity(rows * cols);
    for (o, row) in d.codes.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (i, &b) in row.iter().enumerate() {
            let v = if d.float { fp8::to_f32(b) } else { b as i8 as f32 };
            out.push(d.scales[o * ng + i / d.group] * v);
        }
    }
    Ok(out)
}

/// What a dense 8-bit checkpoint does to activations (`config_groups.*.input_activations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActs {
    /// Weight-only (none declared).
    None,
    /// Dynamic per-token symmetric int8 (`W8A8`).
    Int8Token,
    /// Dynamic per-token symmetric int4 (`W4A4`; codes in ±7).
    Int4Token,
    /// Dynamic per-token FP8 E4M3 (`FP8_DYNAMIC`).
    Fp8Token,
}

/// The activation scheme of a compressed-tensors checkpoint's single config group. Only dynamic
/// per-token symmetric 8-bit schemes are supported; any other is an error naming it.
pub fn activations(raw_config: &Json, path: &std::path::Path) -> Result<DenseActs> {
    let a = raw_config
        .get("quantization_config")
        .and_then(|q| q.get("config_groups"))
        .and_then(Json::as_object)
        .and_then(|g| g.values().next())
        .and_then(|s| s.get("input_activations"));
    let Some(a) = a.filter(|a| !a.is_null()) else { return Ok(DenseActs::None) };
    let ty = a.get("type").and_then(Json::as_str).unwrap_or("int");
    let bits = a.get("num_bits").and_then(Json::as_u64);
    let strategy = a.get("strategy").and_then(Json::as_str).unwrap_or("tensor");
    let dynamic = a.get("dynamic").and_then(Json::as_bool).unwrap_or(false);
    let sym = a.get("symmetric").and_then(Json::as_bool).unwrap_or(true);
    match (ty, bits, strategy, dynamic, sym) {
        ("int", Some(8), "token", true, true) => Ok(DenseActs::Int8Token),
        ("int", Some(4), "token", true, true) => Ok(DenseActs::Int4Token),
        ("float", Some(8), "token", true, true) => Ok(DenseActs::Fp8Token),
        _ => Err(Error::Unsupported(format!(
            "activation scheme {ty} {bits:?}-bit, strategy {strategy:?}, dynamic {dynamic}, symmetric {sym} in {} \
             (the engine runs dynamic per-token symmetric int8/int4 or FP8 activations; --dequantize runs the weights alone)",
            path.display()
        ))),
    }
}
