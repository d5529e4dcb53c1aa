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
    if bits != Some(8) {
        return Err(bad(path, format!("{fmt} weights of {bits:?} bits (only 8)")));
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
    Ok(LayoutConfig { layout, bits: 8, group, sym: true })
}

/// `<prefix>.weight` from `w`'s codes (int: unsigned with zero 128 stored as `code − 128`; FP8:
/// E4M3 bit patterns) and `<prefix>.weight_scale` (f32 `[out, groups]`, so compressed-tensors'
/// dequantization in the scale's dtype is our f32 product exactly).
pub(super) fn pack(layout: Layout, w: &Regrouped, prefix: &str) -> Vec<Packed> {
    let (rows, cols, ng) = (w.rows, w.cols, w.groups());
    let (dtype, bytes) = if layout.is_float() {
        (Dtype::F8_E4M3, w.codes.to_vec())
    } else {
        (Dtype::I8, w.codes.iter().map(|&c| (c as i32 - 128) as i8 as u8).collect())
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

pub(super) fn unpack(
    layout: Layout,
    group: Option<usize>,
    t: &Module,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    if t.raw("weight_zero_point").is_ok() {
        return Err(Error::bad_tensor(
            t.name("weight_zero_point"),
            "is present: only symmetric (zero-point-free) 8-bit weights are supported",
        ));
    }
    let (q, dt, s) = t.raw("weight")?;
    shape(layout, t, &s, &dt)?;
    let (sc, ss) = t.floats_any("weight_scale")?;
    // Columns per scale: per channel (one per row), per group, or one for the whole tensor.
    let (per_row, gs) = match group {
        Some(g) if cols % g == 0 && ss == [rows, cols / g] => (true, g),
        None if ss == [rows, 1] || ss == [rows] => (true, cols),
        None if sc.len() == 1 && ss.iter().all(|&d| d == 1) => (false, cols),
        _ => {
            let want = match group {
                Some(g) => format!("[{rows}, {}] (group {g})", cols / g.max(1)),
                None => format!("[{rows}, 1] or [1]"),
            };
            return Err(Error::bad_tensor(t.name("weight_scale"), format!("shape {ss:?}, expected {want}")));
        }
    };
    if let Some(i) = sc.iter().position(|v| !v.is_finite()) {
        return Err(Error::bad_tensor(
            t.name("weight_scale"),
            format!("value {} at index {i} is not finite", sc[i]),
        ));
    }
    let ng = cols / gs;
    let float = layout.is_float();
    let mut out = Vec::with_capacity(rows * cols);
    for o in 0..rows {
        for i in 0..cols {
            let b = q[o * cols + i];
            let v = if float {
                if fp8::is_nan(b) {
                    return Err(Error::bad_tensor(
                        t.name("weight"),
                        format!("FP8 code {b:#04x} at [{o}, {i}] is NaN"),
                    ));
                }
                fp8::to_f32(b)
            } else {
                b as i8 as f32
            };
            let s = if per_row { sc[o * ng + i / gs] } else { sc[0] };
            out.push(s * v);
        }
    }
    Ok(out)
}
