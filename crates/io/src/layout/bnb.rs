//! bitsandbytes 4-bit NF4 (`load_in_4bit` checkpoints as transformers saves them), quantization and
//! its inverse in one place (docs/quantized-layouts.md, "bitsandbytes NF4").
//!
//! Per linear `<m>`, over the row-major `[out, in]` weight flattened to `n = out·in` values:
//!
//! * blocks of `blocksize` (64) consecutive values — across row boundaries when `in` is not a
//!   multiple — each with `absmax` = its largest magnitude;
//! * code = the NF4 level nearest to `w / absmax` ([`nf4_code`]: the 15 midpoints of bnb's table
//!   computed in f32, a value on a midpoint takes the lower level — `torch.bucketize`, bnb's
//!   CPU/default `quantize_4bit`); two codes a byte, **the first in the high nibble**, stored as
//!   `<m>.weight` U8 `[ceil(n/2), 1]` (an odd count pads the last low nibble with 7, the zero level);
//! * `<m>.weight.absmax` F32 `[n_blocks]`, `<m>.weight.quant_map` F32 `[16]` (the table), and
//!   `<m>.weight.quant_state.bitsandbytes__nf4`, U8 bytes of the JSON `QuantState.as_dict(packed=True)`
//!   writes ([`quant_state_json`]);
//! * with double quantization (`compress_statistics`): `offset` = mean absmax, `absmax − offset`
//!   quantized in blocks of 256 onto bnb's 8-bit dynamic map ([`DYNAMIC_MAP_BITS`], nearest level) —
//!   `<m>.weight.absmax` becomes U8 codes, plus `<m>.weight.nested_absmax` F32
//!   `[ceil(n_blocks/256)]`, `<m>.weight.nested_quant_map` F32 `[256]`, and the JSON gains
//!   `nested_blocksize`, `nested_dtype`, `nested_offset`.
//!
//! Dequantization, all in f32: `absmax_b = map[qa_b]·nested_absmax[b/256] + offset` (double quant),
//! `w_j = NF4[code_j]·absmax_{j/blocksize}` — what bnb's inference GEMM (`gemm_4bit`) multiplies the
//! activations with: it dequantizes in the activations' dtype, the compute dtype (float32 in the
//! configs we write). `dequantize_4bit(A, quant_state)` instead returns the quant state's `dtype`
//! (float16 here): the same values rounded once more.

use std::collections::BTreeMap;

use quantkit_core::{Error, Result};
use safetensors::Dtype;
use serde_json::Value as Json;

use super::{f32_bytes, Module, Packed};
use crate::hf::HfCheckpoint;

/// bnb's NF4 table (`get_4bit_type("nf4")`), as f32.
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bnb's NF4 table's f32 bits (what `quant_map` holds): the test that [`NF4`] spells them.
pub const NF4_BITS: [u32; 16] = [
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
];

/// bnb's signed 8-bit dynamic map (`create_dynamic_map()`, the nested quant map), f32 bits, sorted.
pub const DYNAMIC_MAP_BITS: [u32; 256] = [
    0xbf7e3333, 0xbf7a999a, 0xbf770000, 0xbf736666, 0xbf6fcccd, 0xbf6c3333, 0xbf68999a, 0xbf650000,
    0xbf616666, 0xbf5dcccd, 0xbf5a3333, 0xbf56999a, 0xbf530000, 0xbf4f6666, 0xbf4bcccd, 0xbf483333,
    0xbf44999a, 0xbf410000, 0xbf3d6666, 0xbf39cccd, 0xbf363334, 0xbf32999a, 0xbf2f0000, 0xbf2b6666,
    0xbf27cccd, 0xbf243334, 0xbf20999a, 0xbf1d0000, 0xbf196666, 0xbf15cccd, 0xbf123334, 0xbf0e999a,
    0xbf0b0000, 0xbf076666, 0xbf03cccc, 0xbf003333, 0xbef93332, 0xbef20000, 0xbeeacccc, 0xbee3999a,
    0xbedc6666, 0xbed53333, 0xbece0000, 0xbec6cccc, 0xbebf999a, 0xbeb86666, 0xbeb13333, 0xbeaa0000,
    0xbea2cccc, 0xbe9b999a, 0xbe946666, 0xbe8d3334, 0xbe860000, 0xbe7d9999, 0xbe6f3333, 0xbe60cccd,
    0xbe526666, 0xbe440000, 0xbe35999a, 0xbe273333, 0xbe18cccd, 0xbe0a6666, 0xbdf80000, 0xbddb3334,
    0xbdc9eb85, 0xbdc428f7, 0xbdbe6667, 0xbdb8a3d7, 0xbdb2e148, 0xbdad1eb8, 0xbda75c2a, 0xbda1999a,
    0xbd9bd70a, 0xbd96147b, 0xbd9051eb, 0xbd8a8f5d, 0xbd84cccd, 0xbd7e147b, 0xbd728f5d, 0xbd670a3d,
    0xbd5b851f, 0xbd500000, 0xbd447ae1, 0xbd38f5c3, 0xbd2d70a3, 0xbd21eb85, 0xbd166667, 0xbd0ae148,
    0xbcfeb852, 0xbce7ae15, 0xbcd0a3d7, 0xbcb9999a, 0xbca28f5d, 0xbc8b851f, 0xbc68f5c3, 0xbc3ae148,
    0xbc1f3b64, 0xbc160418, 0xbc0ccccd, 0xbc039581, 0xbbf4bc6a, 0xbbe24dd3, 0xbbcfdf3b, 0xbbbd70a4,
    0xbbab020d, 0xbb989374, 0xbb8624dd, 0xbb676c8a, 0xbb428f5c, 0xbb1db22d, 0xbaf1a9fc, 0xbaa7ef9d,
    0xba7765ff, 0xba59e83e, 0xba3c6a80, 0xba1eecc1, 0xba016f01, 0xb9c7e283, 0xb98ce705, 0xb923d70b,
    0xb8ba1f4b, 0xb88aefb3, 0xb8378034, 0xb7b24206, 0xb70205ff, 0xb65a1a94, 0xb513a3b7, 0x00000000,
    0x3513a3b7, 0x365a1a94, 0x370205ff, 0x37b24206, 0x38378034, 0x388aefb3, 0x38ba1f4b, 0x3923d70b,
    0x398ce705, 0x39c7e283, 0x3a016f01, 0x3a1eecc1, 0x3a3c6a80, 0x3a59e83e, 0x3a7765ff, 0x3aa7ef9d,
    0x3af1a9fc, 0x3b1db22d, 0x3b428f5c, 0x3b676c8a, 0x3b8624dd, 0x3b989374, 0x3bab020d, 0x3bbd70a4,
    0x3bcfdf3b, 0x3be24dd3, 0x3bf4bc6a, 0x3c039581, 0x3c0ccccd, 0x3c160418, 0x3c1f3b64, 0x3c3ae148,
    0x3c68f5c3, 0x3c8b851f, 0x3ca28f5d, 0x3cb9999a, 0x3cd0a3d7, 0x3ce7ae15, 0x3cfeb852, 0x3d0ae148,
    0x3d166667, 0x3d21eb85, 0x3d2d70a3, 0x3d38f5c3, 0x3d447ae1, 0x3d500000, 0x3d5b851f, 0x3d670a3d,
    0x3d728f5d, 0x3d7e147b, 0x3d84cccd, 0x3d8a8f5d, 0x3d9051eb, 0x3d96147b, 0x3d9bd70a, 0x3da1999a,
    0x3da75c2a, 0x3dad1eb8, 0x3db2e148, 0x3db8a3d7, 0x3dbe6667, 0x3dc428f7, 0x3dc9eb85, 0x3ddb3334,
    0x3df80000, 0x3e0a6666, 0x3e18cccd, 0x3e273333, 0x3e35999a, 0x3e440000, 0x3e526666, 0x3e60cccd,
    0x3e6f3333, 0x3e7d9999, 0x3e860000, 0x3e8d3334, 0x3e946666, 0x3e9b999a, 0x3ea2cccc, 0x3eaa0000,
    0x3eb13333, 0x3eb86666, 0x3ebf999a, 0x3ec6cccc, 0x3ece0000, 0x3ed53333, 0x3edc6666, 0x3ee3999a,
    0x3eeacccc, 0x3ef20000, 0x3ef93332, 0x3f003333, 0x3f03cccc, 0x3f076666, 0x3f0b0000, 0x3f0e999a,
    0x3f123334, 0x3f15cccd, 0x3f196666, 0x3f1d0000, 0x3f20999a, 0x3f243334, 0x3f27cccd, 0x3f2b6666,
    0x3f2f0000, 0x3f32999a, 0x3f363334, 0x3f39cccd, 0x3f3d6666, 0x3f410000, 0x3f44999a, 0x3f483333,
    0x3f4bcccd, 0x3f4f6666, 0x3f530000, 0x3f56999a, 0x3f5a3333, 0x3f5dcccd, 0x3f616666, 0x3f650000,
    0x3f68999a, 0x3f6c3333, 0x3f6fcccd, 0x3f736666, 0x3f770000, 0x3f7a999a, 0x3f7e3333, 0x3f800000,
];

/// Weights per absmax block (transformers' `bnb_4bit` default, bnb's `quantize_4bit` default).
pub const BLOCK: usize = 64;
/// Absmax values per nested block with double quantization (bnb's `compress_statistics`).
pub const NESTED_BLOCK: usize = 256;
/// The block sizes bnb's `dequantize_4bit` accepts.
const BLOCK_SIZES: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// The dynamic map as f32.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// Midpoints of a sorted table, computed in f32 as bnb does (`(code[i] + code[i+1]) / 2`).
fn midpoints<const N: usize>(t: &[f32; N]) -> Vec<f32> {
    t.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect()
}

/// The index of the level nearest to `x` in a sorted table given its midpoints: the number of
/// midpoints below `x` (`torch.bucketize(x, mids, right=False)`: on a midpoint, the lower level).
fn bucket(mids: &[f32], x: f32) -> u8 {
    mids.partition_point(|&m| m < x) as u8
}

/// The NF4 decision boundaries (f32 midpoints of [`NF4`]).
static NF4_MIDS: std::sync::LazyLock<Vec<f32>> = std::sync::LazyLock::new(|| midpoints(&NF4));

/// The NF4 code of a normalized value (`w / absmax`, in [−1, 1]).
pub fn nf4_code(x: f32) -> u8 {
    bucket(&NF4_MIDS, x)
}

/// The smallest divisor bnb's CPU path uses for a zero block (`absmax.clamp(min=1e-38)`).
const TINY: f32 = 1e-38;

/// NF4 codes (one per weight, unpacked) and per-block absmax of `w` (bnb's `quantize_4bit`, the
/// torch path its CPU backend runs): full blocks scale by the f32 reciprocal of their absmax
/// (`A * (1.0 / absmax.clamp(min=1e-38))`), a ragged last block divides by its absmax (clamped,
/// and stored clamped, as bnb does); scaled values are clamped to [−1, 1].
pub fn quantize_nf4(w: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let mids: &[f32] = &NF4_MIDS;
    let mut codes = Vec::with_capacity(w.len());
    let mut absmax = Vec::with_capacity(w.len().div_ceil(blocksize));
    for b in w.chunks(blocksize) {
        let am = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        if b.len() == blocksize {
            let inv = 1.0 / am.max(TINY);
            codes.extend(b.iter().map(|&v| bucket(mids, (v * inv).clamp(-1.0, 1.0))));
            absmax.push(am);
        } else {
            let am = am.max(TINY);
            codes.extend(b.iter().map(|&v| bucket(mids, (v / am).clamp(-1.0, 1.0))));
            absmax.push(am);
        }
    }
    (codes, absmax)
}

/// Absmax values quantized onto the 8-bit dynamic map (double quantization).
#[derive(Debug, Clone, PartialEq)]
pub struct Nested {
    /// One code per absmax value (index into [`DYNAMIC_MAP_BITS`]).
    pub codes: Vec<u8>,
    /// Largest magnitude of `absmax − offset` per block of [`NESTED_BLOCK`].
    pub absmax: Vec<f32>,
    /// The mean absmax, subtracted before quantizing.
    pub offset: f32,
}

/// bnb's `compress_statistics`: `offset = mean(absmax)` (summed in f64 in order, rounded to f32 —
/// torch's f32 reduction may differ in the last bit; the file stores the offset either way), then
/// `absmax − offset` (f32) blockwise onto the dynamic map: per block of 256 its largest magnitude,
/// each value times its f32 reciprocal, clamped, to the nearest level (ties to the lower). A block
/// of zeros gets code 0, as bnb's CPU kernel writes.
pub fn double_quant(absmax: &[f32]) -> Nested {
    let offset = (absmax.iter().map(|&v| v as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let centered: Vec<f32> = absmax.iter().map(|&v| v - offset).collect();
    let map = dynamic_map();
    let mids = midpoints(&map);
    let mut codes = Vec::with_capacity(centered.len());
    let mut nested = Vec::with_capacity(centered.len().div_ceil(NESTED_BLOCK));
    for b in centered.chunks(NESTED_BLOCK) {
        let am = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        nested.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, b.len()));
            continue;
        }
        let inv = 1.0 / am;
        codes.extend(b.iter().map(|&v| bucket(&mids, (v * inv).clamp(-1.0, 1.0))));
    }
    Nested { codes, absmax: nested, offset }
}

/// The decision boundaries of the dynamic map (f32 midpoints of [`DYNAMIC_MAP_BITS`]).
static DYNAMIC_MIDS: std::sync::LazyLock<Vec<f32>> = std::sync::LazyLock::new(|| midpoints(&dynamic_map()));

impl Nested {
    /// Round one more absmax value `a` of block `b` onto this state's grid (the nearest of
    /// `map[q]·absmax[b / 256] + offset`, as [`double_quant`] rounds): its code and the value the
    /// loader will compute from it ([`nested_absmax`]'s f32 arithmetic). GPTQ-into-NF4 fixes the
    /// nested state first and rounds each block's absmax as it decides it. A nested block of
    /// zeros holds only `offset` (code 0, as [`double_quant`] writes).
    pub fn round(&self, b: usize, a: f32) -> (u8, f32) {
        let map = dynamic_map();
        let am = self.absmax[b / NESTED_BLOCK];
        if am == 0.0 {
            return (0, map[0] * am + self.offset);
        }
        let q = bucket(&DYNAMIC_MIDS, ((a - self.offset) * (1.0 / am)).clamp(-1.0, 1.0));
        (q, map[q as usize] * am + self.offset)
    }
}

/// The absmax values a nested state stands for (bnb's `dequantize_blockwise` + offset, in f32).
pub fn nested_absmax(
    codes: &[u8],
    absmax: &[f32],
    map: &[f32],
    nested_block: usize,
    offset: f32,
) -> Vec<f32> {
    codes.iter().enumerate().map(|(i, &q)| map[q as usize] * absmax[i / nested_block] + offset).collect()
}

/// The dtype bnb returns dequantized weights in (the quant state's `dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDtype {
    F16,
    Bf16,
    F32,
}

impl StateDtype {
    pub fn name(self) -> &'static str {
        match self {
            StateDtype::F16 => "float16",
            StateDtype::Bf16 => "bfloat16",
            StateDtype::F32 => "float32",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [StateDtype::F16, StateDtype::Bf16, StateDtype::F32].into_iter().find(|d| d.name() == s)
    }

    /// `v` rounded to this dtype (round to nearest even, as torch's `.to(dtype)`).
    pub fn round(self, v: f32) -> f32 {
        match self {
            StateDtype::F16 => half::f16::from_f32(v).to_f32(),
            StateDtype::Bf16 => half::bf16::from_f32(v).to_f32(),
            StateDtype::F32 => v,
        }
    }
}

/// `w_j = NF4[code_j] · absmax[j / blocksize]` (f32).
pub fn dequantize_nf4(codes: &[u8], absmax: &[f32], blocksize: usize) -> Vec<f32> {
    codes.iter().enumerate().map(|(j, &c)| NF4[c as usize] * absmax[j / blocksize]).collect()
}

/// Python's `repr` of a float (what `json.dumps` writes): the shortest digits that round-trip,
/// positional for decimal exponents −4 < e ≤ 16 (with `.0` when integral), else `d.ddde±XX`.
pub fn py_float_repr(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let s = format!("{:e}", x.abs()); // shortest round-trip digits: "3.286139965057373e-1"
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let decpt = exp.parse::<i32>().unwrap_or(0) + 1; // x = 0.DIGITS × 10^decpt
    let n = digits.len() as i32;
    let body = if decpt <= -4 || decpt > 16 {
        let e = decpt - 1;
        let m = if n == 1 { digits.clone() } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat((-decpt) as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        format!("{}.{}", &digits[..decpt as usize], &digits[decpt as usize..])
    };
    if x < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// The packed quant state's JSON, byte for byte as bnb writes it (`json.dumps` of the non-tensor
/// items of `QuantState.as_dict(packed=True)`, in that dict's order).
pub fn quant_state_json(
    blocksize: usize,
    dtype: StateDtype,
    shape: (usize, usize),
    nested: Option<(usize, f32)>,
) -> String {
    let mut s = format!(
        "{{\"quant_type\": \"nf4\", \"blocksize\": {blocksize}, \"dtype\": \"{}\", \"shape\": [{}, {}]",
        dtype.name(),
        shape.0,
        shape.1
    );
    if let Some((nb, offset)) = nested {
        s += &format!(
            ", \"nested_blocksize\": {nb}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            py_float_repr(offset as f64)
        );
    }
    s.push('}');
    s
}

/// One quantized linear, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Weights {
    pub rows: usize,
    pub cols: usize,
    pub blocksize: usize,
    /// One code per weight, row-major `[rows, cols]`.
    pub codes: Vec<u8>,
    /// Per block (used directly without double quantization).
    pub absmax: Vec<f32>,
    pub nested: Option<Nested>,
    /// The dtype the weights were quantized from and are dequantized to.
    pub dtype: StateDtype,
}

impl Nf4Weights {
    /// Quantize a row-major `[rows, cols]` matrix (bnb's `quantize_4bit` with `blocksize`,
    /// `compress_statistics = double_quant`); values are taken as given (round them to `dtype`
    /// first to match bnb quantizing a `dtype` model).
    pub fn quantize(
        w: &[f32],
        rows: usize,
        cols: usize,
        blocksize: usize,
        double: bool,
        dtype: StateDtype,
    ) -> Self {
        let (codes, absmax) = quantize_nf4(w, blocksize);
        let nested = double.then(|| double_quant(&absmax));
        Nf4Weights { rows, cols, blocksize, codes, absmax, nested, dtype }
    }

    /// The absmax values the loader will use (double-quantized ones reconstructed).
    pub fn effective_absmax(&self) -> Vec<f32> {
        match &self.nested {
            Some(n) => nested_absmax(&n.codes, &n.absmax, &dynamic_map(), NESTED_BLOCK, n.offset),
            None => self.absmax.clone(),
        }
    }

    /// The weights bnb computes with (f32), row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_nf4(&self.codes, &self.effective_absmax(), self.blocksize)
    }

    /// The stored tensors of module `prefix` (`model.layers.0.mlp.up_proj`), sorted by name.
    pub fn pack(&self, prefix: &str) -> Vec<Packed> {
        let n = self.codes.len();
        let code = |j: usize| if j < n { self.codes[j] } else { 7 };
        let packed: Vec<u8> = (0..n.div_ceil(2)).map(|k| (code(2 * k) << 4) | code(2 * k + 1)).collect();
        let w = format!("{prefix}.weight");
        let mut v = vec![Packed::new(w.clone(), Dtype::U8, vec![packed.len(), 1], packed)];
        let nested = self.nested.as_ref().map(|nq| (NESTED_BLOCK, nq.offset));
        match &self.nested {
            Some(nq) => {
                v.push(Packed::new(format!("{w}.absmax"), Dtype::U8, vec![nq.codes.len()], nq.codes.clone()));
                v.push(Packed::new(
                    format!("{w}.nested_absmax"),
                    Dtype::F32,
                    vec![nq.absmax.len()],
                    f32_bytes(nq.absmax.iter().copied()),
                ));
                v.push(Packed::new(
                    format!("{w}.nested_quant_map"),
                    Dtype::F32,
                    vec![256],
                    DYNAMIC_MAP_BITS.iter().flat_map(|b| b.to_le_bytes()).collect(),
                ));
            }
            None => v.push(Packed::new(
                format!("{w}.absmax"),
                Dtype::F32,
                vec![self.absmax.len()],
                f32_bytes(self.absmax.iter().copied()),
            )),
        }
        v.push(Packed::new(
            format!("{w}.quant_map"),
            Dtype::F32,
            vec![16],
            NF4_BITS.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ));
        let js = quant_state_json(self.blocksize, self.dtype, (self.rows, self.cols), nested);
        v.push(Packed::new(
            format!("{w}.quant_state.bitsandbytes__nf4"),
            Dtype::U8,
            vec![js.len()],
            js.into_bytes(),
        ));
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }
}

/// `config.json`'s `quantization_config` for a bitsandbytes 4-bit checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnbConfig {
    /// `bnb_4bit_use_double_quant` (informational: each module's quant state says whether it is).
    pub double_quant: bool,
}

impl BnbConfig {
    /// From a `quantization_config` whose `quant_method` is `bitsandbytes`: 4-bit NF4 with uint8
    /// storage only.
    pub fn from_config(q: &Json, path: &std::path::Path) -> Result<Self> {
        let flag = |k: &str| q.get(k).and_then(Json::as_bool).unwrap_or(false);
        let unsupported = |what: String| {
            Error::Unsupported(format!("{what} in {} (only bitsandbytes 4-bit NF4 is read)", path.display()))
        };
        if flag("load_in_8bit") || flag("_load_in_8bit") {
            return Err(unsupported("bitsandbytes 8-bit (LLM.int8) quantization".into()));
        }
        if !(flag("load_in_4bit") || flag("_load_in_4bit")) {
            return Err(super::bad(path, "bitsandbytes config with neither load_in_4bit nor load_in_8bit"));
        }
        // BitsAndBytesConfig's default quant type is fp4.
        let qt = q.get("bnb_4bit_quant_type").and_then(Json::as_str).unwrap_or("fp4");
        if qt != "nf4" {
            return Err(unsupported(format!("bnb_4bit_quant_type {qt:?}")));
        }
        let storage = q.get("bnb_4bit_quant_storage").and_then(Json::as_str).unwrap_or("uint8");
        if storage != "uint8" {
            return Err(unsupported(format!("bnb_4bit_quant_storage {storage:?}")));
        }
        Ok(BnbConfig { double_quant: flag("bnb_4bit_use_double_quant") })
    }

    /// The JSON transformers writes for `BitsAndBytesConfig(load_in_4bit=True,
    /// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=…)`, with `lm_head` skipped.
    pub fn to_json(self) -> Json {
        serde_json::json!({
            "_load_in_4bit": true,
            "_load_in_8bit": false,
            "bnb_4bit_compute_dtype": "float32",
            "bnb_4bit_quant_storage": "uint8",
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": self.double_quant,
            "llm_int8_enable_fp32_cpu_offload": false,
            "llm_int8_has_fp16_weight": false,
            "llm_int8_skip_modules": ["lm_head"],
            "llm_int8_threshold": 6.0,
            "load_in_4bit": true,
            "load_in_8bit": false,
            "quant_method": "bitsandbytes",
        })
    }
}

/// The stored components of a packed module besides `<m>.weight` (suffixes of `<m>.weight.`).
pub(super) const PARTS: [&str; 4] = ["absmax", "quant_map", "nested_absmax", "nested_quant_map"];
/// The quant state blob's suffix (after `<m>.weight.`), with the quant type after it.
pub(super) const STATE: &str = "quant_state.bitsandbytes__";

/// A module's parsed quant state.
#[derive(Debug, Clone, PartialEq)]
struct State {
    blocksize: usize,
    rows: usize,
    cols: usize,
    /// `(nested_blocksize, nested_offset)` (`nested_dtype` is checked and otherwise unused: the GEMM
    /// dequantizes absmax values in f32 whatever it says).
    nested: Option<(usize, f32)>,
}

fn parse_state(t: &Module, name: &str, qtype: &str) -> Result<State> {
    let err = |msg: String| bad(t, name, msg);
    if qtype != "nf4" {
        return Err(Error::Unsupported(format!(
            "{name} in {}: bitsandbytes quant type {qtype:?} (only nf4 is read)",
            t.src.file_of(name).display()
        )));
    }
    let (b, dt, s) = t.src.raw(name)?;
    if dt != "U8" || s.len() != 1 {
        return Err(err(format!("is {dt} {s:?}, expected a 1-D U8 tensor of JSON bytes")));
    }
    let j: Json = serde_json::from_slice(b).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let o = j.as_object().ok_or_else(|| err("quant state is not a JSON object".into()))?;
    const KEYS: [&str; 7] =
        ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"];
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(err(format!("unknown quant state key {k:?}")));
    }
    let qt = o.get("quant_type").and_then(Json::as_str);
    if qt != Some(qtype) {
        return Err(err(format!("quant_type {qt:?} does not match the tensor name's {qtype:?}")));
    }
    let blocksize = o
        .get("blocksize")
        .and_then(Json::as_u64)
        .filter(|b| BLOCK_SIZES.contains(&(*b as usize)))
        .ok_or_else(|| err(format!("blocksize {:?} (one of {BLOCK_SIZES:?})", o.get("blocksize"))))?
        as usize;
    let dtype = |k: &str| -> Result<StateDtype> {
        o.get(k)
            .and_then(Json::as_str)
            .and_then(StateDtype::parse)
            .ok_or_else(|| err(format!("{k} {:?} (float16, bfloat16 or float32)", o.get(k))))
    };
    let shape: Vec<u64> = o
        .get("shape")
        .and_then(Json::as_array)
        .and_then(|a| a.iter().map(Json::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| err(format!("shape {:?} is not a list of sizes", o.get("shape"))))?;
    let (rows, cols) = match shape.as_slice() {
        [r, c] if *r > 0 && *c > 0 && r.checked_mul(*c).is_some_and(|n| n <= 1 << 40) => {
            (*r as usize, *c as usize)
        }
        _ => return Err(err(format!("shape {shape:?} is not a 2-D weight shape"))),
    };
    let nested_keys = ["nested_blocksize", "nested_dtype", "nested_offset"];
    let has = nested_keys.iter().filter(|k| o.contains_key(**k)).count();
    let nested = match has {
        0 => None,
        3 => {
            let nb = o
                .get("nested_blocksize")
                .and_then(Json::as_u64)
                .filter(|&b| (1..=1 << 20).contains(&b))
                .ok_or_else(|| err(format!("nested_blocksize {:?}", o.get("nested_blocksize"))))?;
            let off = o
                .get("nested_offset")
                .and_then(Json::as_f64)
                .map(|v| v as f32)
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    err(format!("nested_offset {:?} is not a finite number", o.get("nested_offset")))
                })?;
            dtype("nested_dtype")?;
            Some((nb as usize, off))
        }
        _ => return Err(err("nested_blocksize, nested_dtype and nested_offset must come together".into())),
    };
    // Checked, otherwise unused: the GEMM dequantizes in the compute dtype (module docs).
    dtype("dtype")?;
    Ok(State { blocksize, rows, cols, nested })
}

/// A bad component `name` of module `t`, naming the file that holds it.
fn bad(t: &Module, name: &str, msg: impl Into<String>) -> Error {
    Error::bad_tensor(name, format!("{} (in {})", msg.into(), t.src.file_of(name).display()))
}

/// The quant state tensor of module `m`.
fn state_name(m: &str) -> String {
    format!("{m}.weight.{STATE}nf4")
}

/// Presented names of a bitsandbytes checkpoint: each module with a quant state shows as its
/// `<m>.weight` (shape from the quant state, every state parsed here so that a bad one fails at
/// open); its components are hidden. A component without a quant state, or a quant state without
/// its packed weight, is an error.
pub(super) fn visible_names(h: &HfCheckpoint) -> Result<BTreeMap<String, Option<(usize, usize)>>> {
    let names: Vec<&str> = h.stored_names().collect();
    let mut modules: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for n in &names {
        if let Some((m, qtype)) = n.split_once(&format!(".weight.{STATE}")) {
            let t = Module { src: h, m };
            let s = parse_state(&t, n, qtype)?;
            if modules.insert(m, (s.rows, s.cols)).is_some() {
                return Err(bad(&t, &format!("{m}.weight"), "several bitsandbytes quant states"));
            }
        }
    }
    let mut out = BTreeMap::new();
    for n in &names {
        if let Some(&shape) = n.strip_suffix(".weight").and_then(|m| modules.get(m)) {
            out.insert(n.to_string(), Some(shape));
            continue;
        }
        if let Some((m, part)) = n.split_once(".weight.") {
            if PARTS.contains(&part) || part.starts_with(STATE) {
                if !modules.contains_key(m) {
                    let t = Module { src: h, m };
                    return Err(bad(
                        &t,
                        n,
                        format!("a bitsandbytes component, but {m}.weight has no quant state"),
                    ));
                }
                continue;
            }
        }
        out.insert(n.to_string(), None);
    }
    for m in modules.keys() {
        let w = format!("{m}.weight");
        if !out.contains_key(&w) {
            let path = h.file_of(&format!("{w}.{STATE}nf4"));
            return Err(Error::MissingTensor {
                path,
                tensor: w,
                hint: " (it has a bitsandbytes quant state)".into(),
            });
        }
    }
    Ok(out)
}

/// A stored float tensor of exactly `want` elements (1-D), every value finite.
fn f32s(t: &Module, part: &str, want: usize) -> Result<Vec<f32>> {
    let name = t.name(part);
    let (b, dt, s) = t.raw(part)?;
    if dt != "F32" || s != [want] {
        return Err(bad(t, &name, format!("is {dt} {s:?}, expected F32 [{want}]")));
    }
    let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad(t, &name, format!("value {} at index {i} is not finite", v[i])));
    }
    Ok(v)
}

fn u8s<'a>(t: &'a Module, part: &str, want: usize) -> Result<&'a [u8]> {
    let (b, dt, s) = t.raw(part)?;
    let numel: usize = s.iter().product();
    if dt != "U8" || numel != want || s.iter().filter(|&&d| d != 1).count() > 1 {
        return Err(bad(
            t,
            &t.name(part),
            format!("is {dt} {s:?}, expected U8 with {want} elements ([{want}] or [{want}, 1])"),
        ));
    }
    Ok(b)
}

/// An NF4 module as stored: one code (0..16) per weight of the flattened `[out, in]` weight and one
/// f32 absmax per `blocksize` consecutive weights (double quantization already undone).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Stored {
    pub rows: usize,
    pub cols: usize,
    pub blocksize: usize,
    pub codes: Vec<u8>,
    pub absmax: Vec<f32>,
}

/// The dequantized weight of module `t` (`t.m` is `model.layers.0.mlp.up_proj`), `[out, in]`.
pub(super) fn unpack(t: &Module) -> Result<Vec<f32>> {
    let s = stored(t)?;
    Ok(dequantize_nf4(&s.codes, &s.absmax, s.blocksize))
}

/// The codes and absmax values of module `t`, checked (see [`unpack`]).
pub(super) fn stored(t: &Module) -> Result<Nf4Stored> {
    let state = state_name(t.m);
    let state = state.as_str();
    let s = parse_state(t, state, "nf4")?;
    let n = s.rows * s.cols;
    let nb = n.div_ceil(s.blocksize);
    let packed = u8s(t, "weight", n.div_ceil(2))?;
    let qmap = f32s(t, "weight.quant_map", 16)?;
    if qmap != NF4 {
        return Err(bad(t, &t.name("weight.quant_map"), "is not bitsandbytes' NF4 table"));
    }
    let absmax = match s.nested {
        None => {
            if t.src.raw(&t.name("weight.nested_absmax")).is_ok() {
                return Err(bad(
                    t,
                    &t.name("weight.nested_absmax"),
                    format!("present, but {state} has no nested_* entries"),
                ));
            }
            f32s(t, "weight.absmax", nb)?
        }
        Some((nbs, offset)) => {
            let codes = u8s(t, "weight.absmax", nb)?;
            let nested = f32s(t, "weight.nested_absmax", nb.div_ceil(nbs))?;
            let map = f32s(t, "weight.nested_quant_map", 256)?;
            nested_absmax(codes, &nested, &map, nbs, offset)
        }
    };
    if let Some(i) = absmax.iter().position(|v| !v.is_finite()) {
        return Err(bad(
            t,
            &t.name("weight.absmax"),
            format!("block {i}'s absmax {} is not finite", absmax[i]),
        ));
    }
    let codes: Vec<u8> = packed.iter().flat_map(|&b| [b >> 4, b & 15]).take(n).collect();
    Ok(Nf4Stored { rows: s.rows, cols: s.cols, blocksize: s.blocksize, codes, absmax })
}

/// Whether module `m` of `h` is stored as NF4 (has a bitsandbytes quant state).
pub(super) fn is_nf4(h: &crate::hf::HfCheckpoint, m: &str) -> bool {
    let st = state_name(m);
    h.stored_names().any(|n| n == st)
}

/// Every module with a quant state in one safetensors file, dequantized: the fuzz harness's entry
/// (`quantkit_cli::fuzzing::bnb_nf4`). Modules of more than `max_elems` weights are only parsed.
/// Returns each module's result (the number of weights).
pub fn dequantize_file(f: &crate::safetensors::SafetensorsFile, max_elems: usize) -> Vec<Result<usize>> {
    let names = f.names();
    let mut out = vec![];
    for n in &names {
        let Some((m, qtype)) = n.split_once(&format!(".weight.{STATE}")) else { continue };
        let t = Module { src: f, m };
        out.push(match parse_state(&t, n, qtype) {
            Err(e) => Err(e),
            Ok(s) if s.rows * s.cols > max_elems => Ok(0),
            Ok(_) => unpack(&t).map(|v| v.len()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator (xorshift) for test data.
    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // roughly normal: sum of uniforms
                let u = |k: u64| ((s >> (k * 16)) & 0xffff) as f32 / 65536.0;
                (u(0) + u(1) + u(2) + u(3) - 2.0) * 0.05
            })
            .collect()
    }

    #[test]
    fn tables_are_bnbs() {
        assert_eq!(NF4.map(f32::to_bits), NF4_BITS);
        let m = dynamic_map();
        assert!(m.windows(2).all(|p| p[0] <= p[1]), "sorted");
        assert_eq!(m[127], 0.0);
        assert_eq!(m[255], 1.0);
        // create_dynamic_map(): 127 negative levels, 0, 127 positive ones and 1.0.
        assert_eq!(m.iter().filter(|v| **v < 0.0).count(), 127);
        assert_eq!(
            (m[0].to_bits(), m[128].to_bits(), m[254].to_bits()),
            (0xbf7e3333, 0x3513a3b7, 0x3f7e3333)
        );
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the printed f32 values, compared exactly
    fn nf4_code_is_the_nearest_level_with_bnbs_boundaries() {
        // The f32 midpoints bnb's CPU path computes (printed by bitsandbytes 0.50.2).
        let mids = midpoints(&NF4);
        assert_eq!(mids[0], -0.848_096_37);
        assert_eq!(mids[7], 0.039_790_15);
        assert_eq!(mids[14], 0.861_478_45);
        for k in 0..16u8 {
            assert_eq!(nf4_code(NF4[k as usize]), k);
        }
        for (i, &m) in mids.iter().enumerate() {
            // On the midpoint: the lower level; just above it: the upper one.
            assert_eq!(nf4_code(m), i as u8);
            assert_eq!(
                nf4_code(f32::from_bits(m.to_bits().wrapping_add(if m > 0.0 { 1 } else { u32::MAX }))),
                i as u8 + 1
            );
        }
        // Nearest level, by brute force, everywhere else.
        for i in 0..=20_000 {
            let x = -1.0 + i as f32 / 10_000.0;
            let best =
                (0..16).min_by(|&a, &b| (NF4[a] - x).abs().total_cmp(&(NF4[b] - x).abs())).unwrap_or(0);
            let c = nf4_code(x) as usize;
            assert!((NF4[c] - x).abs() <= (NF4[best] - x).abs(), "{x}: {c} vs {best}");
        }
    }

    #[test]
    fn quantize_round_trips_within_half_a_level() {
        for (n, seed) in [(64 * 12, 1u64), (64 * 7 + 13, 2), (1, 3), (63, 4)] {
            let w = rand_vec(n, seed);
            let (codes, absmax) = quantize_nf4(&w, BLOCK);
            assert_eq!(codes.len(), n);
            assert_eq!(absmax.len(), n.div_ceil(BLOCK));
            let dq = dequantize_nf4(&codes, &absmax, BLOCK);
            let widest = NF4.windows(2).map(|p| p[1] - p[0]).fold(0f32, f32::max);
            for (b, blk) in w.chunks(BLOCK).enumerate() {
                let am = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(absmax[b], am, "absmax of block {b}");
                // The largest magnitude of a block is exactly representable (±1 · absmax).
                let i = blk.iter().position(|v| v.abs() == am).expect("max");
                assert_eq!(dq[b * BLOCK + i], blk[i]);
                for (k, &v) in blk.iter().enumerate() {
                    let e = (dq[b * BLOCK + k] - v).abs();
                    assert!(
                        e <= widest / 2.0 * am * 1.0001,
                        "block {b} value {k}: {v} → {}",
                        dq[b * BLOCK + k]
                    );
                    // And no other level is closer.
                    let x = v / am;
                    let c = codes[b * BLOCK + k] as usize;
                    assert!(NF4.iter().all(|l| (l - x).abs() >= (NF4[c] - x).abs() - 1e-6));
                }
            }
        }
    }

    #[test]
    fn zero_blocks_and_ragged_tails_follow_bnb() {
        let mut w = vec![0f32; 64];
        w.extend([0.5f32, -0.25, 0.0]);
        let (codes, absmax) = quantize_nf4(&w, 64);
        assert!(codes[..64].iter().all(|&c| c == 7), "a zero block takes the zero level");
        assert_eq!(absmax[0], 0.0);
        assert_eq!(absmax[1], 0.5);
        assert_eq!(&codes[64..], &[15, nf4_code(-0.5), 7]);
        // A zero tail stores the clamped absmax, as bnb's torch path does.
        let (_, a) = quantize_nf4(&[1.0, 0.0, 0.0], 2);
        assert_eq!(a, vec![1.0, TINY]);
    }

    #[test]
    fn double_quant_reconstructs_absmax_closely() {
        let w = rand_vec(64 * 600, 7);
        let (_, absmax) = quantize_nf4(&w, 64);
        let nq = double_quant(&absmax);
        assert_eq!(nq.codes.len(), 600);
        assert_eq!(nq.absmax.len(), 3);
        let mean = absmax.iter().map(|&v| v as f64).sum::<f64>() / 600.0;
        assert_eq!(nq.offset, mean as f32);
        let map = dynamic_map();
        let rec = nested_absmax(&nq.codes, &nq.absmax, &map, NESTED_BLOCK, nq.offset);
        for (i, (&a, &r)) in absmax.iter().zip(&rec).enumerate() {
            // Nearest level: no other code reconstructs closer.
            let am = nq.absmax[i / NESTED_BLOCK];
            let x = (a - nq.offset) / am;
            let c = nq.codes[i] as usize;
            assert!(map.iter().all(|l| (l - x).abs() >= (map[c] - x).abs() - 1e-6), "{i}");
            // The dynamic map's steps near ±1 are 1/37 wide (relative to the block's spread).
            assert!((a - r).abs() <= am * 0.015, "{i}: {a} vs {r}");
        }
        // A constant absmax: every centered value 0, code 0 (bnb's zero block), exact reconstruction.
        let nq = double_quant(&[0.5; 10]);
        assert_eq!(nq.codes, vec![0; 10]);
        assert_eq!(nested_absmax(&nq.codes, &nq.absmax, &map, NESTED_BLOCK, nq.offset), vec![0.5; 10]);
    }

    #[test]
    fn python_float_repr() {
        for (x, s) in [
            (0.328_613_996_505_737_3, "0.3286139965057373"),
            (2.922_145_366_668_701, "2.922145366668701"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123.0, "123.0"),
            (0.0, "0.0"),
            (-0.5, "-0.5"),
            (0.1, "0.1"),
            (f32::MAX as f64, "3.4028234663852886e+38"),
        ] {
            assert_eq!(py_float_repr(x), s);
        }
    }

    #[test]
    fn quant_state_json_is_bnbs() {
        // Written by transformers 5.25 + bitsandbytes 0.50.2 for stories260K's down_proj.
        assert_eq!(
            quant_state_json(64, StateDtype::F16, (64, 172), Some((256, 0.328_614_f32))),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float16\", \"shape\": [64, 172], \
             \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": 0.3286139965057373}"
        );
        assert_eq!(
            quant_state_json(64, StateDtype::F32, (4, 128), None),
            "{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"float32\", \"shape\": [4, 128]}"
        );
    }

    #[test]
    fn pack_puts_the_first_code_in_the_high_nibble() {
        let w: Vec<f32> = vec![1.0, -1.0, 0.0, 1.0, -1.0];
        let q = Nf4Weights::quantize(&w, 1, 5, 64, false, StateDtype::F32);
        let p = q.pack("m");
        let weight = p.iter().find(|t| t.spec.name == "m.weight").expect("weight");
        assert_eq!(weight.spec.shape, vec![3, 1]);
        assert_eq!(weight.bytes, vec![0xf0, 0x7f, 0x07]);
        let names: Vec<&str> = p.iter().map(|t| t.spec.name.as_str()).collect();
        assert_eq!(
            names,
            ["m.weight", "m.weight.absmax", "m.weight.quant_map", "m.weight.quant_state.bitsandbytes__nf4"]
        );
        let q = Nf4Weights::quantize(&w, 1, 5, 64, true, StateDtype::F32);
        let names: Vec<String> = q.pack("m").into_iter().map(|t| t.spec.name).collect();
        assert_eq!(names.len(), 6);
        assert!(names.contains(&"m.weight.nested_quant_map".to_string()));
    }
}
