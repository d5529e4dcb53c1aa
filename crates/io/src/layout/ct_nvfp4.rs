//! compressed-tensors' `nvfp4-pack-quantized` (compressed-tensors 0.20 `NVFP4PackedCompressor`):
//! NVIDIA's NVFP4 — FP4 E2M1 weights in groups of 16 input columns, one FP8 E4M3 scale per group
//! and one f32 global scale per tensor — as llm-compressor's `NVFP4A16` (weight-only) and `NVFP4`
//! (W4A4) schemes write it (docs/quantized-layouts.md).
//!
//! Per module:
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `<m>.weight_packed` | U8 | `[out, in / 2]`: byte k of row o = `code[o, 2k] \| code[o, 2k+1] << 4` |
//! | `<m>.weight_scale` | F8_E4M3 | `[out, in / 16]` |
//! | `<m>.weight_global_scale` | F32 | `[1]` |
//! | `<m>.input_global_scale` | F32 | `[1]` (W4A4 only; not needed for the weights) |
//!
//! A code is a nibble: bit 3 the sign, bits 0–2 the index of the magnitude in
//! `0, 0.5, 1, 1.5, 2, 3, 4, 6` (the E2M1 values; ggml's `kvalues_mxfp4` are twice these, same
//! order). compressed-tensors **divides** by the global scale:
//! `w[o, i] = e2m1(code[o, i]) · (e4m3(scale[o, i / 16]) / global)`, the quotient in f32 first —
//! exactly what [`unpack`] computes (its decompressor then casts to bfloat16).
//!
//! Quantization (llm-compressor's memoryless min-max observer, `generate_gparam` and
//! `calculate_qparams`): `global = (1 / amax) · 2688` (f32, as torch evaluates `448 · 6 / amax`; 1 when
//! that is not finite), where llm-compressor
//! fuses q/k/v and gate/up onto one global scale (the smallest of theirs: vLLM runs them as one
//! matrix); per group `scale = e4m3(global · (group_amax / 6))` (0 becomes 0.125, the package's
//! eps); codes = the nearest E2M1 value of `w / (scale / global)`, clamped to ±6, ties to the even
//! mantissa (compressed-tensors' `cast_to_fp4` thresholds); a negative value that rounds to 0 keeps
//! its sign bit (code 8), as the package packs it.

use quantkit_core::{Error, Result};
use quantkit_formats::ggml::mxfp4::KVALUES_MXFP4;
use safetensors::Dtype;

use super::{fp8, Module, Packed};

/// Columns per scale.
pub const GROUP: usize = 16;
/// The largest E2M1 magnitude.
pub const FP4_MAX: f32 = 6.0;

/// The E2M1 value of a nibble (bit 3 the sign).
#[inline]
pub fn e2m1(code: u8) -> f32 {
    KVALUES_MXFP4[(code & 0x0F) as usize] as f32 * 0.5
}

/// `x` to the nearest E2M1 nibble as compressed-tensors rounds (`cast_to_fp4` after clamping to
/// ±6): ties go to the even mantissa (0.25 → 0, 0.75 → 1, 1.25 → 1, 1.75 → 2, 2.5 → 2, 3.5 → 4,
/// 5 → 4); the sign bit is set for every `x < 0` (so −0.1 is code 8, −0). NaN gives 0.
#[inline]
pub fn e2m1_code(x: f32) -> u8 {
    let a = x.abs();
    let m = if a <= 0.25 {
        0
    } else if a < 0.75 {
        1
    } else if a <= 1.25 {
        2
    } else if a < 1.75 {
        3
    } else if a <= 2.5 {
        4
    } else if a < 3.5 {
        5
    } else if a <= 5.0 {
        6
    } else if a.is_nan() {
        0
    } else {
        7
    };
    m | if x < 0.0 { 8 } else { 0 }
}

/// llm-compressor's global scale for a tensor (or a fused group) whose largest magnitude is
/// `amax`: `448 · 6 / max(amax, f32::MIN_POSITIVE)`, 1 when that overflows. Computed as torch does
/// (`generate_gparam`'s `2688.0 / tensor` is `tensor.reciprocal() * 2688.0`): the f32 reciprocal,
/// then the f32 product — one ulp away from the quotient for some values.
pub fn global_scale(amax: f32) -> f32 {
    let g = (1.0 / amax.max(f32::MIN_POSITIVE)) * (fp8::MAX * FP4_MAX);
    if g.is_finite() {
        g
    } else {
        1.0
    }
}

/// One NVFP4 matrix: codes, E4M3 group scales and the global scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Nvfp4Weights {
    pub rows: usize,
    /// A multiple of [`GROUP`].
    pub cols: usize,
    /// Row-major `[rows, cols]` nibbles.
    pub codes: Vec<u8>,
    /// Row-major `[rows, cols / 16]` E4M3 bit patterns.
    pub scales: Vec<u8>,
    pub global: f32,
}

impl Nvfp4Weights {
    /// Round to nearest from row-major `w` (finite values; `cols` a multiple of 16) with the global
    /// scale `global` ([`global_scale`] of the tensor's — or its fused group's — largest magnitude).
    pub fn quantize(w: &[f32], rows: usize, cols: usize, global: f32) -> Nvfp4Weights {
        debug_assert!(cols % GROUP == 0 && w.len() == rows * cols);
        let ng = cols / GROUP;
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0u8; rows * ng];
        for (k, (grp, cs)) in w.chunks_exact(GROUP).zip(codes.chunks_exact_mut(GROUP)).enumerate() {
            let amax = grp.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let mut s = fp8::from_f32(global * (amax / FP4_MAX));
            if fp8::to_f32(s) == 0.0 {
                s = fp8::from_f32(0.125);
            }
            scales[k] = s;
            let eff = fp8::to_f32(s) / global;
            for (c, &x) in cs.iter_mut().zip(grp) {
                *c = e2m1_code((x / eff).clamp(-FP4_MAX, FP4_MAX));
            }
        }
        Nvfp4Weights { rows, cols, codes, scales, global }
    }

    /// The weights it stands for (what [`unpack`] reads back).
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.cols / GROUP;
        (0..self.rows * self.cols)
            .map(|i| {
                let (o, c) = (i / self.cols, i % self.cols);
                e2m1(self.codes[i]) * (fp8::to_f32(self.scales[o * ng + c / GROUP]) / self.global)
            })
            .collect()
    }

    /// `<prefix>.weight_packed`, `.weight_scale`, `.weight_global_scale`.
    pub fn pack(&self, prefix: &str) -> Vec<Packed> {
        let packed = self.codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect();
        vec![
            Packed::new(
                format!("{prefix}.weight_global_scale"),
                Dtype::F32,
                vec![1],
                self.global.to_le_bytes().to_vec(),
            ),
            Packed::new(format!("{prefix}.weight_packed"), Dtype::U8, vec![self.rows, self.cols / 2], packed),
            Packed::new(
                format!("{prefix}.weight_scale"),
                Dtype::F8_E4M3,
                vec![self.rows, self.cols / GROUP],
                self.scales.clone(),
            ),
        ]
    }
}

/// An error about component `part` of `t`, naming the tensor and its file.
fn bad(t: &Module, part: &str, msg: impl Into<String>) -> Error {
    let name = t.name(part);
    Error::bad_tensor(&name, format!("{} (in {})", msg.into(), t.src.file_of(&name).display()))
}

/// Read every NVFP4 module of a safetensors file (`<m>.weight_packed` and its siblings) as
/// [`unpack`] does, skipping modules of more than `max_elems` weights: the fuzz target's entry
/// point. One result per module: its weight count or the error.
pub fn dequantize_file(f: &crate::safetensors::SafetensorsFile, max_elems: usize) -> Vec<Result<usize>> {
    let mut out = vec![];
    for n in f.names() {
        let Some(m) = n.strip_suffix(".weight_packed") else { continue };
        let t = Module { src: f, m };
        let r = t.raw("weight_packed").and_then(|(_, dt, s)| {
            if s.len() != 2 {
                return Err(bad(&t, "weight_packed", format!("shape {s:?} is not 2-D")));
            }
            shape(&t, &s, &dt)
        });
        out.push(match r {
            Err(e) => Err(e),
            Ok((rows, cols)) if rows.saturating_mul(cols) > max_elems => Ok(0),
            Ok((rows, cols)) => unpack(&t, rows, cols).map(|v| v.len()),
        });
    }
    out
}

/// `(out, in)` from `<m>.weight_packed` (U8 `[out, in / 2]`, `in` a multiple of 16).
pub(super) fn shape(t: &Module, s: &[usize], dt: &str) -> Result<(usize, usize)> {
    if dt != "U8" {
        return Err(bad(t, "weight_packed", format!("dtype {dt}, expected U8 (two FP4 codes a byte)")));
    }
    let cols = s[1].checked_mul(2).ok_or_else(|| bad(t, "weight_packed", "too wide"))?;
    if cols % GROUP != 0 {
        return Err(bad(
            t,
            "weight_packed",
            format!("shape {s:?}: {cols} columns are not whole groups of {GROUP}"),
        ));
    }
    Ok((s[0], cols))
}

/// The dequantized `[rows, cols]` weight of `t` (shape from [`shape`]).
pub(super) fn unpack(t: &Module, rows: usize, cols: usize) -> Result<Vec<f32>> {
    for part in ["weight_zero_point", "weight_g_idx"] {
        if t.raw(part).is_ok() {
            return Err(bad(t, part, "is present: NVFP4 weights are symmetric, with contiguous groups"));
        }
    }
    let (q, dt, s) = t.raw("weight_packed")?;
    shape(t, &s, &dt)?;
    let ng = cols / GROUP;
    let (sb, sdt, ss) = t.raw("weight_scale")?;
    if !matches!(sdt.as_str(), "F8_E4M3" | "F16" | "BF16" | "F32") {
        return Err(bad(t, "weight_scale", format!("dtype {sdt} (F8_E4M3, F16, BF16 or F32 expected)")));
    }
    if ss != [rows, ng] {
        return Err(bad(
            t,
            "weight_scale",
            format!("shape {ss:?}, expected [{rows}, {ng}] (groups of {GROUP})"),
        ));
    }
    let scales: Vec<f32> = if sdt == "F8_E4M3" {
        if let Some(i) = sb.iter().position(|&b| fp8::is_nan(b)) {
            return Err(bad(t, "weight_scale", format!("FP8 code {:#04x} at index {i} is NaN", sb[i])));
        }
        sb.iter().map(|&b| fp8::to_f32(b)).collect()
    } else {
        let (v, _) = t.floats_any("weight_scale")?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(t, "weight_scale", format!("value {} at index {i} is not finite", v[i])));
        }
        v
    };
    let (g, gs) = t.floats_any("weight_global_scale").map_err(|e| match e {
        Error::BadTensor { msg, .. } => bad(t, "weight_global_scale", msg),
        e => e,
    })?;
    if g.len() != 1 || gs.iter().product::<usize>() != 1 {
        return Err(bad(t, "weight_global_scale", format!("shape {gs:?}, expected [1]")));
    }
    let g = g[0];
    if !(g.is_finite() && g > 0.0) {
        return Err(bad(
            t,
            "weight_global_scale",
            format!("value {g}: the global scale divides every group scale, it must be finite and positive"),
        ));
    }
    let half = cols / 2;
    if q.len() != rows * half || scales.len() != rows * ng {
        return Err(bad(t, "weight_packed", "byte count does not match the shapes"));
    }
    let mut out = Vec::with_capacity(rows * cols);
    for o in 0..rows {
        for (k, &b) in q[o * half..(o + 1) * half].iter().enumerate() {
            let eff = scales[o * ng + (2 * k) / GROUP] / g;
            out.push(e2m1(b & 0x0F) * eff);
            out.push(e2m1(b >> 4) * eff);
        }
    }
    Ok(out)
}

/// The quantization arguments of the weights (`config_groups.*.weights`) compressed-tensors'
/// `NVFP4A16` / `NVFP4` presets serialize to.
pub fn weights_args() -> serde_json::Value {
    serde_json::json!({
        "dynamic": false,
        "group_size": GROUP,
        "num_bits": 4,
        "scale_dtype": "torch.float8_e4m3fn",
        "strategy": "tensor_group",
        "symmetric": true,
        "type": "float",
    })
}

/// `quantization_config` of an `nvfp4-pack-quantized` checkpoint (`w` the weights'
/// `QuantizationArgs`): FP4 (`type: "float"`, 4 bits), symmetric, groups of 16, strategy
/// `tensor_group` (or `group`; the decompressor does not look at it).
pub(super) fn from_config(w: &serde_json::Value, path: &std::path::Path) -> Result<super::LayoutConfig> {
    use serde_json::Value as Json;
    let ty = w.get("type").and_then(Json::as_str).unwrap_or("int");
    let bits = w.get("num_bits").and_then(Json::as_u64);
    if ty != "float" || bits != Some(4) {
        return Err(Error::Unsupported(format!(
            "nvfp4-pack-quantized with {bits:?}-bit {ty:?} weights in {} (FP4: 4-bit float)",
            path.display()
        )));
    }
    if !w.get("symmetric").and_then(Json::as_bool).unwrap_or(true) {
        return Err(Error::Unsupported(format!(
            "asymmetric NVFP4 weights in {} (only symmetric)",
            path.display()
        )));
    }
    let strategy = w.get("strategy").and_then(Json::as_str).unwrap_or("");
    if !matches!(strategy, "tensor_group" | "group") {
        return Err(Error::Unsupported(format!(
            "NVFP4 weight strategy {strategy:?} in {} (tensor_group)",
            path.display()
        )));
    }
    match w.get("group_size").and_then(Json::as_i64) {
        Some(16) => {}
        g => return Err(super::bad(path, format!("NVFP4 weights with group_size {g:?} (only 16)"))),
    }
    Ok(super::LayoutConfig { layout: super::Layout::CtNvfp4, bits: 4, group: Some(GROUP), sym: true })
}
