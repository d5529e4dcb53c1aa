//! The four integer checkpoint layouts, each packed and unpacked in one place
//! (docs/quantized-layouts.md): GPTQ v1 (AutoGPTQ) and v2 (GPTQModel) in `gptq.rs`, AWQ GEMM
//! (AutoAWQ) in `awq.rs`, compressed-tensors `pack-quantized` in `compressed_tensors.rs`, and
//! compressed-tensors' unpacked 8-bit formats (`int-quantized` int8, `float-quantized` /
//! `naive-quantized` FP8 E4M3) in `ct_dense.rs` (the E4M3 codec in [`fp8`]), and compressed-tensors'
//! `nvfp4-pack-quantized` (FP4 E2M1 in groups of 16 with E4M3 scales and a global scale) in
//! [`ct_nvfp4`].
//!
//! * [`Layout`] names a layout and answers what it can hold ([`Layout::packs_bits`],
//!   [`Layout::stores_g_idx`], [`Layout::zero_min`], [`Layout::packs`], [`Layout::file_group`]).
//! * [`QuantLayout`] is what `config.json`'s `quantization_config` says a checkpoint holds: one of
//!   those integer layouts, or bitsandbytes 4-bit NF4 (`bnb.rs`: quantization, packing and
//!   unpacking of bnb's blockwise absmax format, which is not an integer grid).
//! * [`LayoutConfig`] is a layout with its parameters: read from `config.json`'s
//!   `quantization_config` ([`LayoutConfig::from_config`]), it presents every packed module of a
//!   checkpoint as its dequantized `<m>.weight` (f32, `[out, in]`; every shape is checked against the
//!   others before any value is read); built by a writer, it packs plain integer arrays
//!   ([`IntWeights`]) into the layout's tensors ([`LayoutConfig::pack`]).

mod awq;
pub mod bnb;
mod compressed_tensors;
pub mod ct_dense;
pub mod ct_nvfp4;
pub mod fp8;
mod gptq;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::path::Path;
use std::str::FromStr;

use half::f16;
use quantkit_core::{Error, Result};
use safetensors::Dtype;
use serde_json::Value as Json;

use crate::hf::HfCheckpoint;
use crate::safetensors::StTensorSpec;

/// An integer checkpoint layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Layout {
    /// AutoGPTQ (`checkpoint_format: "gptq"`): zeros stored minus one.
    GptqV1,
    /// GPTQModel (`checkpoint_format: "gptq_v2"`): zeros stored as they are.
    GptqV2,
    /// AutoAWQ GEMM (`version: "gemm"`), 4 bits.
    Awq,
    /// compressed-tensors `pack-quantized`.
    CompressedTensors,
    /// compressed-tensors `int-quantized`: int8 per-channel weights, dynamic per-token int8
    /// activations declared (llm-compressor's `W8A8`).
    CtW8A8,
    /// compressed-tensors `int-quantized` with 4-bit values: int4 per-channel weights (held in
    /// int8), dynamic per-token int4 activations declared (QuaRot's W4A4 setting).
    CtW4A4,
    /// compressed-tensors `naive-quantized` FP8 E4M3 per-channel weights, no activation scheme
    /// (FP8 weight-only, "W8A16 float").
    CtFp8,
    /// compressed-tensors `float-quantized`: FP8 E4M3 per-channel weights, dynamic per-token FP8
    /// activations declared (llm-compressor's `FP8_DYNAMIC`).
    CtFp8Dynamic,
    /// compressed-tensors `nvfp4-pack-quantized`: FP4 E2M1 weights, an E4M3 scale per 16 columns
    /// and a global scale (llm-compressor's `NVFP4A16`; its `NVFP4` W4A4 reads the same).
    CtNvfp4,
}

impl Layout {
    pub const ALL: [Layout; 9] = [
        Layout::GptqV1,
        Layout::GptqV2,
        Layout::Awq,
        Layout::CompressedTensors,
        Layout::CtW8A8,
        Layout::CtW4A4,
        Layout::CtFp8,
        Layout::CtFp8Dynamic,
        Layout::CtNvfp4,
    ];

    /// The name on the command line (`--format`) and of the output folder.
    pub fn name(self) -> &'static str {
        match self {
            Layout::GptqV1 => "gptq",
            Layout::GptqV2 => "gptq-v2",
            Layout::Awq => "awq",
            Layout::CompressedTensors => "compressed-tensors",
            Layout::CtW8A8 => "ct-w8a8",
            Layout::CtW4A4 => "ct-w4a4",
            Layout::CtFp8 => "ct-fp8",
            Layout::CtFp8Dynamic => "ct-fp8-dynamic",
            Layout::CtNvfp4 => "ct-nvfp4",
        }
    }

    /// The output folder's name (= [`Layout::name`]).
    pub fn dir_name(self) -> &'static str {
        self.name()
    }

    /// The layout named `s` ([`Layout::name`]); the error lists the valid names.
    pub fn parse(s: &str) -> Result<Layout> {
        Layout::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Layout::ALL.iter().map(|l| l.name()).collect();
            Error::Invalid(format!("unknown checkpoint layout {s:?} ({})", names.join(", ")))
        })
    }

    /// A name for messages.
    pub fn title(self) -> &'static str {
        match self {
            Layout::GptqV1 => "GPTQ v1",
            Layout::GptqV2 => "GPTQ v2",
            Layout::Awq => "AWQ GEMM",
            Layout::CompressedTensors => "compressed-tensors",
            Layout::CtW8A8 => "compressed-tensors int8 W8A8",
            Layout::CtW4A4 => "compressed-tensors int4 W4A4",
            Layout::CtFp8 => "compressed-tensors FP8",
            Layout::CtFp8Dynamic => "compressed-tensors FP8_DYNAMIC",
            Layout::CtNvfp4 => "compressed-tensors NVFP4",
        }
    }

    /// Whether its weights are FP8 E4M3 (not on an integer grid: quantized by `quantkit_quant::fp8`).
    pub fn is_float(self) -> bool {
        matches!(self, Layout::CtFp8 | Layout::CtFp8Dynamic)
    }

    /// Whether its weights are NVFP4 (FP4 E2M1 with E4M3 group scales and a global scale:
    /// quantized by `quantkit_io::layout::ct_nvfp4`, round to nearest).
    pub fn is_nvfp4(self) -> bool {
        self == Layout::CtNvfp4
    }

    /// Whether it stores each weight unpacked as an 8-bit `<m>.weight` beside `<m>.weight_scale`
    /// (compressed-tensors' naive/int/float-quantized formats).
    fn dense(self) -> bool {
        matches!(self, Layout::CtW8A8 | Layout::CtW4A4 | Layout::CtFp8 | Layout::CtFp8Dynamic)
    }

    /// `Ok` when it holds weights on the grid `bits`, `group`, `sym`: [`Layout::check_bits`], and the
    /// 8-bit compressed-tensors layouts take only symmetric per-channel weights (llm-compressor's
    /// W8A8 / FP8_DYNAMIC schemes; vLLM's int8 kernels take no groups).
    pub fn check_grid(self, bits: u32, group: Option<usize>, sym: bool) -> Result<()> {
        self.check_bits(bits)?;
        if self.is_nvfp4() && (group != Some(ct_nvfp4::GROUP) || !sym) {
            return Err(Error::Unsupported(format!(
                "{} checkpoints hold symmetric FP4 weights in groups of {}",
                self.title(),
                ct_nvfp4::GROUP
            )));
        }
        if self.dense() && (group.is_some() || !sym) {
            return Err(Error::Unsupported(format!(
                "{} checkpoints hold symmetric per-channel weights (--sym --group -1), not {}{}",
                self.title(),
                group.map(|g| format!("groups of {g}")).unwrap_or_else(|| "per-channel".into()),
                if sym { "" } else { " asymmetric" }
            )));
        }
        Ok(())
    }

    /// The bit widths it packs.
    pub fn bits(self) -> RangeInclusive<u32> {
        match self {
            Layout::Awq | Layout::CtNvfp4 | Layout::CtW4A4 => 4..=4,
            Layout::CtW8A8 | Layout::CtFp8 | Layout::CtFp8Dynamic => 8..=8,
            _ => 2..=8,
        }
    }

    /// Whether it packs `bits`-bit codes.
    pub fn packs_bits(self, bits: u32) -> bool {
        self.bits().contains(&bits)
    }

    /// `Ok` when it packs `bits`-bit codes, else an error saying which it packs.
    pub fn check_bits(self, bits: u32) -> Result<()> {
        if self.packs_bits(bits) {
            return Ok(());
        }
        let (lo, hi) = (*self.bits().start(), *self.bits().end());
        let holds = if lo == hi { format!("{lo}-bit") } else { format!("{lo}- to {hi}-bit") };
        Err(Error::Unsupported(format!("{} checkpoints hold {holds} weights, not {bits}", self.title())))
    }

    /// Whether it stores each input column's group (`g_idx`), so that groups need not be
    /// contiguous (act-order without static groups).
    pub fn stores_g_idx(self) -> bool {
        matches!(self, Layout::GptqV1 | Layout::GptqV2)
    }

    /// Whether the last group of a row may be shorter; otherwise the file has one group size that
    /// divides every width ([`Layout::file_group`]).
    pub fn ragged_groups(self) -> bool {
        matches!(self, Layout::GptqV1 | Layout::GptqV2)
    }

    /// The smallest zero point it stores: GPTQ v1 stores `zero − 1` and cannot hold 0, so
    /// asymmetric grids written as v1 keep zeros ≥ 1.
    pub fn zero_min(self, sym: bool) -> u8 {
        u8::from(self == Layout::GptqV1 && !sym)
    }

    /// Whether it can hold a `rows × cols` (`out × in`) matrix of `bits`-bit codes, as the loaders
    /// read it.
    pub fn packs(self, bits: u32, rows: usize, cols: usize) -> bool {
        self.packs_bits(bits)
            && match self {
                // The loaders size buffers with floor divisions by 32.
                Layout::GptqV1 | Layout::GptqV2 => cols % 32 == 0 && rows % 32 == 0,
                Layout::Awq => rows % 8 == 0,
                Layout::CompressedTensors
                | Layout::CtW8A8
                | Layout::CtW4A4
                | Layout::CtFp8
                | Layout::CtFp8Dynamic => true,
                // compressed-tensors needs whole groups of 16 (`_process_group`).
                Layout::CtNvfp4 => cols % ct_nvfp4::GROUP == 0,
            }
    }

    /// The group size stored in the file for matrices quantized with `group` whose widths are
    /// `widths`: the quantization's where ragged groups are native, else `gcd(group, widths)` (each
    /// original group's parameters repeated — the same weights).
    pub fn file_group(self, group: Option<usize>, widths: impl IntoIterator<Item = usize>) -> Option<usize> {
        if self.ragged_groups() {
            return group;
        }
        group.map(|g| widths.into_iter().fold(g, gcd))
    }

    /// The component that marks a packed module, and all components.
    fn components(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Layout::GptqV1 | Layout::GptqV2 => ("qweight", &["qweight", "qzeros", "scales", "g_idx"]),
            Layout::Awq => ("qweight", &["qweight", "qzeros", "scales"]),
            Layout::CompressedTensors => (
                "weight_packed",
                &["weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"],
            ),
            Layout::CtNvfp4 => (
                "weight_packed",
                &[
                    "weight_packed",
                    "weight_scale",
                    "weight_global_scale",
                    "input_global_scale",
                    "weight_zero_point",
                    "weight_g_idx",
                ],
            ),
            // `weight` is a component only beside a `weight_scale` (see `visible_names`).
            Layout::CtW8A8 | Layout::CtW4A4 | Layout::CtFp8 | Layout::CtFp8Dynamic => (
                "weight_scale",
                &["weight", "weight_scale", "weight_zero_point", "input_scale", "input_zero_point"],
            ),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Layout> {
        Layout::parse(s)
    }
}

/// How a quantized checkpoint's packed modules read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantLayout {
    /// GPTQ v1/v2, AWQ GEMM, compressed-tensors.
    Int(LayoutConfig),
    /// bitsandbytes 4-bit (`quant_method: "bitsandbytes"`, `load_in_4bit`), NF4.
    Bnb(bnb::BnbConfig),
}

impl QuantLayout {
    /// From `config.json`'s `quantization_config` (`None` when absent).
    pub fn from_config(cfg: &Json, path: &Path) -> Result<Option<Self>> {
        if let Some(q) = cfg.get("quantization_config") {
            if q.get("quant_method").and_then(Json::as_str) == Some("bitsandbytes") {
                return bnb::BnbConfig::from_config(q, path).map(|c| Some(QuantLayout::Bnb(c)));
            }
        }
        Ok(LayoutConfig::from_config(cfg, path)?.map(QuantLayout::Int))
    }

    /// Presented names: stored ones minus packed components, plus `<m>.weight` (with `[out, in]`).
    pub fn visible_names(&self, h: &HfCheckpoint) -> Result<BTreeMap<String, Option<(usize, usize)>>> {
        match self {
            QuantLayout::Int(c) => c.visible_names(h),
            QuantLayout::Bnb(_) => bnb::visible_names(h),
        }
    }

    /// The stored codes and scales of module `m` when this is a dense 8-bit compressed-tensors
    /// layout (int8 / FP8) and `m` is quantized (has a `weight_scale`); `None` otherwise.
    pub fn dense8(&self, h: &HfCheckpoint, m: &str) -> Result<Option<ct_dense::Dense8>> {
        let QuantLayout::Int(c) = self else { return Ok(None) };
        let scale = format!("{m}.weight_scale");
        if !c.layout.dense() || !h.stored_names().any(|n| n == scale) {
            return Ok(None);
        }
        let t = Module { src: h, m };
        let (rows, cols) = c.shape(&t)?;
        ct_dense::stored(c.layout, c.group, &t, rows, cols).map(Some)
    }

    /// The codes and absmax values of module `m` when this is a bitsandbytes checkpoint and `m` is
    /// stored as NF4; `None` otherwise.
    pub fn nf4(&self, h: &HfCheckpoint, m: &str) -> Result<Option<bnb::Nf4Stored>> {
        match self {
            QuantLayout::Bnb(_) if bnb::is_nf4(h, m) => bnb::stored(&Module { src: h, m }).map(Some),
            _ => Ok(None),
        }
    }

    /// The dequantized weight of module `m`, row-major `[out, in]`, in f32.
    pub fn dequantize(&self, h: &HfCheckpoint, m: &str) -> Result<Vec<f32>> {
        match self {
            QuantLayout::Int(c) => c.dequantize(h, m),
            QuantLayout::Bnb(_) => bnb::unpack(&Module { src: h, m }),
        }
    }
}

/// A layout and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutConfig {
    pub layout: Layout,
    pub bits: u32,
    /// Columns per group as stored (`None`: one group per row). GPTQ reads it only when a module has
    /// no `g_idx`; AWQ reads the group count from `qzeros`.
    pub group: Option<usize>,
    /// Zero points fixed at `2^(bits−1)`: compressed-tensors then stores none (GPTQ and AWQ always
    /// store theirs).
    pub sym: bool,
}

fn bad(path: &Path, what: impl Into<String>) -> Error {
    Error::malformed(path, "config.json", "quantization_config", what.into())
}

impl LayoutConfig {
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
        let flag = |v: Option<&Json>, default: bool| v.and_then(Json::as_bool).unwrap_or(default);
        Ok(Some(match method {
            "gptq" => {
                let fmt = q.get("checkpoint_format").and_then(Json::as_str).unwrap_or("gptq");
                LayoutConfig {
                    layout: if fmt == "gptq_v2" { Layout::GptqV2 } else { Layout::GptqV1 },
                    bits: bits(q.get("bits"))?,
                    group: group(q.get("group_size")),
                    sym: flag(q.get("sym"), true),
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
                LayoutConfig {
                    layout: Layout::Awq,
                    bits: bits(q.get("bits").or(q.get("w_bit")))?,
                    group: group(q.get("group_size")),
                    sym: !flag(q.get("zero_point"), true),
                }
            }
            "compressed-tensors" => {
                let fmt = q.get("format").and_then(Json::as_str).unwrap_or("");
                if !matches!(
                    fmt,
                    "pack-quantized"
                        | "int-quantized"
                        | "float-quantized"
                        | "naive-quantized"
                        | "nvfp4-pack-quantized"
                ) {
                    return Err(Error::Unsupported(format!(
                        "compressed-tensors format {fmt:?} in {} (pack-quantized, int-quantized, \
                         float-quantized, naive-quantized or nvfp4-pack-quantized)",
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
                let scheme = groups.values().next().ok_or_else(|| bad(path, "no weights scheme"))?;
                let w = scheme.get("weights").ok_or_else(|| bad(path, "no weights scheme"))?;
                if fmt == "nvfp4-pack-quantized" {
                    return ct_nvfp4::from_config(w, path).map(Some);
                }
                if fmt != "pack-quantized" {
                    let acts = scheme.get("input_activations").is_some_and(|a| !a.is_null());
                    return ct_dense::from_config(fmt, w, acts, path).map(Some);
                }
                LayoutConfig {
                    layout: Layout::CompressedTensors,
                    bits: bits(w.get("num_bits"))?,
                    group: group(w.get("group_size")),
                    sym: flag(w.get("symmetric"), true),
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

    /// One matrix in this layout, under the HF module prefix `prefix` (`model.layers.0.mlp.up_proj`),
    /// tensors in the layout's order. The caller has checked [`Layout::packs`] and, where the layout
    /// has no g_idx, that groups are contiguous. NVFP4 weights are not integer codes with a scale
    /// each (they carry a global scale): they are packed by [`ct_nvfp4::Nvfp4Weights::pack`], and
    /// asking for them here is an error.
    pub fn pack(&self, w: &IntWeights, prefix: &str) -> Result<Vec<Packed>> {
        Ok(match self.layout {
            Layout::GptqV1 | Layout::GptqV2 => {
                gptq::pack(self.layout == Layout::GptqV1, self.bits, w, prefix)
            }
            Layout::Awq => awq::pack(&w.regrouped(self.group.unwrap_or(w.cols)), prefix),
            Layout::CompressedTensors => compressed_tensors::pack(
                self.bits,
                self.sym,
                &w.regrouped(self.group.unwrap_or(w.cols)),
                prefix,
            ),
            Layout::CtW8A8 | Layout::CtW4A4 | Layout::CtFp8 | Layout::CtFp8Dynamic => {
                ct_dense::pack(self.layout, self.bits, &w.regrouped(self.group.unwrap_or(w.cols)), prefix)
            }
            Layout::CtNvfp4 => {
                return Err(Error::Unsupported(format!(
                    "{prefix}: NVFP4 weights are packed from ct_nvfp4::Nvfp4Weights, not integer codes"
                )))
            }
        })
    }

    /// Presented names: stored ones minus packed components, plus `<m>.weight` (with `[out, in]`).
    pub fn visible_names(&self, h: &HfCheckpoint) -> Result<BTreeMap<String, Option<(usize, usize)>>> {
        let (marker, parts) = self.layout.components();
        let stored: std::collections::BTreeSet<&str> = h.stored_names().collect();
        let mut out = BTreeMap::new();
        for &n in &stored {
            let (prefix, last) = n.rsplit_once('.').unwrap_or(("", n));
            // A plain `<m>.weight` is a component only of a module that has the marker (the
            // 8-bit compressed-tensors layouts store their quantized weight under that name).
            let part = parts.contains(&last)
                && (last != "weight" || stored.contains(format!("{prefix}.{marker}").as_str()));
            if part {
                if last == marker {
                    let shape = self.shape(&Module { src: h, m: prefix })?;
                    out.insert(format!("{prefix}.weight"), Some(shape));
                }
            } else {
                out.entry(n.to_string()).or_insert(None);
            }
        }
        Ok(out)
    }

    /// `(out, in)` of a packed module.
    fn shape(&self, t: &Module) -> Result<(usize, usize)> {
        let marker = if self.layout.dense() { "weight" } else { self.layout.components().0 };
        let (_, _, qs) = t.raw(marker)?;
        if qs.len() != 2 {
            return Err(Error::bad_tensor(t.name(marker), format!("shape {qs:?} is not 2-D")));
        }
        match self.layout {
            Layout::GptqV1 | Layout::GptqV2 => Ok(gptq::shape(self.bits, &qs)),
            Layout::Awq => Ok(awq::shape(self.bits, &qs)),
            Layout::CompressedTensors => compressed_tensors::shape(t, &qs),
            Layout::CtW8A8 | Layout::CtW4A4 | Layout::CtFp8 | Layout::CtFp8Dynamic => {
                let (_, dt, _) = t.raw(marker)?;
                ct_dense::shape(self.layout, t, &qs, &dt)
            }
            Layout::CtNvfp4 => {
                let (_, dt, _) = t.raw(marker)?;
                ct_nvfp4::shape(t, &qs, &dt)
            }
        }
    }

    /// The dequantized weight of module `m`, row-major `[out, in]`, in f32.
    pub fn dequantize(&self, h: &HfCheckpoint, m: &str) -> Result<Vec<f32>> {
        self.unpack(&Module { src: h, m })
    }

    fn unpack(&self, t: &Module) -> Result<Vec<f32>> {
        let (rows, cols) = self.shape(t)?;
        match self.layout {
            Layout::GptqV1 | Layout::GptqV2 => {
                gptq::unpack(self.layout == Layout::GptqV1, self.bits, self.group, t, rows, cols)
            }
            Layout::Awq => awq::unpack(self.bits, t, rows, cols),
            Layout::CompressedTensors => {
                compressed_tensors::unpack(self.bits, self.sym, self.group, t, rows, cols)
            }
            Layout::CtW8A8 | Layout::CtW4A4 | Layout::CtFp8 | Layout::CtFp8Dynamic => {
                ct_dense::unpack(self.layout, self.group, t, rows, cols)
            }
            Layout::CtNvfp4 => ct_nvfp4::unpack(t, rows, cols),
        }
    }
}

/// One quantized matrix as plain arrays (what [`LayoutConfig::pack`] packs):
/// `w[o, i] = scales[o, g] · (codes[o, i] − zeros[o, g])`, `g = g_idx[i]`, codes and zeros unsigned
/// `bits`-bit values.
#[derive(Debug, Clone, Copy)]
pub struct IntWeights<'a> {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Columns per group of the quantization (the last one may be shorter).
    pub group: usize,
    /// Row-major `[rows, cols]`.
    pub codes: &'a [u8],
    /// Row-major `[rows, groups]` (fp16 values held as f32).
    pub scales: &'a [f32],
    /// Row-major `[rows, groups]`.
    pub zeros: &'a [u8],
    /// `[cols]`: each input column's group.
    pub g_idx: &'a [u32],
}

impl<'a> IntWeights<'a> {
    fn groups(&self) -> usize {
        self.scales.len() / self.rows.max(1)
    }

    /// Re-expressed with groups of `g` (a divisor of the group size): same weights.
    fn regrouped(&self, g: usize) -> Regrouped<'a> {
        let (gs, ng_old, ng) = (self.group, self.groups(), self.cols.div_ceil(g));
        let pick = |k: usize| (k * g) / gs;
        let mut scales = Vec::with_capacity(self.rows * ng);
        let mut zeros = Vec::with_capacity(self.rows * ng);
        for r in 0..self.rows {
            for k in 0..ng {
                scales.push(self.scales[r * ng_old + pick(k)]);
                zeros.push(self.zeros[r * ng_old + pick(k)]);
            }
        }
        Regrouped { rows: self.rows, cols: self.cols, codes: self.codes, scales, zeros }
    }
}

/// [`IntWeights`] with contiguous groups of one size (`cols / groups`, the last may be shorter).
struct Regrouped<'a> {
    rows: usize,
    cols: usize,
    codes: &'a [u8],
    scales: Vec<f32>,
    zeros: Vec<u8>,
}

impl Regrouped<'_> {
    fn groups(&self) -> usize {
        self.scales.len() / self.rows.max(1)
    }
}

/// One stored tensor.
#[derive(Debug, Clone)]
pub struct Packed {
    pub spec: StTensorSpec,
    pub bytes: Vec<u8>,
}

impl Packed {
    pub fn new(name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Packed {
        Packed { spec: StTensorSpec { name, dtype, shape }, bytes }
    }
}

/// `<prefix>.scales`: fp16 `[groups, out]`, group-major (GPTQ and AWQ).
fn scales_by_group(scales: &[f32], rows: usize, prefix: &str) -> Packed {
    let ng = scales.len() / rows.max(1);
    let v = (0..ng).flat_map(|g| (0..rows).map(move |o| scales[o * ng + g]));
    Packed::new(format!("{prefix}.scales"), Dtype::F16, vec![ng, rows], f16_bytes(v))
}

/// `bits` wide values into little-endian u32 words at bit `i·bits` (straddling words).
fn bitstream(vals: impl Iterator<Item = u32>, n: usize, bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; (n * bits as usize).div_ceil(32)];
    for (i, v) in vals.enumerate() {
        let bit = i * bits as usize;
        let (w, s) = (bit / 32, bit % 32);
        out[w] |= v << s;
        if s + bits as usize > 32 {
            out[w + 1] |= v >> (32 - s);
        }
    }
    out
}

/// The inverse of [`bitstream`]: bits `bits` wide at bit `i·bits` of the words `word(k)`.
fn field(word: impl Fn(usize) -> u32, i: usize, bits: u32) -> u32 {
    let bit = i * bits as usize;
    let (w, s) = (bit / 32, bit % 32);
    let mut v = word(w) >> s;
    if s + bits as usize > 32 {
        v |= word(w + 1) << (32 - s);
    }
    v & ((1u32 << bits) - 1)
}

fn i32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// f32 values as fp16 bytes.
pub fn f16_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| f16::from_f32(x).to_le_bytes()).collect()
}

fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Stored tensors by name: raw bytes, dtype (`"I32"`, `"F16"`, …) and shape.
trait RawTensors {
    fn raw(&self, name: &str) -> Result<(&[u8], String, Vec<usize>)>;
    /// The file that holds a stored tensor (for error messages).
    fn file_of(&self, name: &str) -> std::path::PathBuf;
}

impl RawTensors for HfCheckpoint {
    fn raw(&self, name: &str) -> Result<(&[u8], String, Vec<usize>)> {
        HfCheckpoint::raw(self, name)
    }

    fn file_of(&self, name: &str) -> std::path::PathBuf {
        HfCheckpoint::file_of(self, name)
    }
}

impl RawTensors for crate::safetensors::SafetensorsFile {
    fn raw(&self, name: &str) -> Result<(&[u8], String, Vec<usize>)> {
        let info = self.info(name).ok_or_else(|| Error::MissingTensor {
            path: self.path().to_path_buf(),
            tensor: name.into(),
            hint: String::new(),
        })?;
        let (dtype, shape) = (format!("{:?}", info.dtype), info.shape.clone());
        Ok((self.data(name)?, dtype, shape))
    }

    fn file_of(&self, _name: &str) -> std::path::PathBuf {
        self.path().to_path_buf()
    }
}

/// A packed module's stored components (`<m>.<part>`), dtypes and shapes checked on read.
struct Module<'a> {
    src: &'a dyn RawTensors,
    m: &'a str,
}

impl Module<'_> {
    fn name(&self, part: &str) -> String {
        format!("{}.{part}", self.m)
    }

    fn raw(&self, part: &str) -> Result<(&[u8], String, Vec<usize>)> {
        self.src.raw(&self.name(part))
    }

    fn ints(&self, part: &str, want: &[usize]) -> Result<Vec<u32>> {
        let (b, dt, s) = self.raw(part)?;
        if dt != "I32" || s != want {
            return Err(Error::bad_tensor(self.name(part), format!("is {dt} {s:?}, expected I32 {want:?}")));
        }
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }

    fn floats(&self, part: &str, want: &[usize]) -> Result<Vec<f32>> {
        let (v, s) = self.floats_any(part)?;
        if s != want {
            return Err(Error::bad_tensor(self.name(part), format!("shape {s:?}, expected {want:?}")));
        }
        Ok(v)
    }

    /// A float component of any shape, with its shape.
    fn floats_any(&self, part: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let (b, dt, s) = self.raw(part)?;
        let v = match dt.as_str() {
            "F16" => Ok(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            "BF16" => Ok(b
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                .collect()),
            "F32" => {
                Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
            }
            _ => Err(Error::bad_tensor(self.name(part), format!("dtype {dt} (F16, BF16 or F32 expected)"))),
        }?;
        Ok((v, s))
    }
}

#[cfg(test)]
mod tests;
