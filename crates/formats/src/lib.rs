//! quantkit-formats: every tensor storage format, one file each, behind one registry.
//!
//! Each block format is a `#[repr(C)]` struct of byte arrays (alignment 1, so any byte slice can be
//! viewed as blocks) with a compile-time size assert, a scalar reference `quantize` that is
//! **bit-exact with ggml's `quantize_row_*_ref`**, and a `dequantize`. The [`REGISTRY`] table is
//! llama.cpp's `type_traits` idea: adding a format is one file plus one line there.
//!
//! The reference code here is the ground truth that optimised kernels are tested against; it is
//! written for clarity, not speed (conversion parallelises over rows instead).

pub mod float;
pub mod ggml;

use quantkit_core::{Error, GgmlType, Result};

/// A fixed-size block of `QK` weights.
pub trait BlockFormat: bytemuck::Pod + bytemuck::Zeroable {
    /// The ggml type id this block is stored as.
    const TYPE: GgmlType;
    /// Weights per block.
    const QK: usize;
    /// Reference quantization of exactly `QK` values.
    fn quantize(x: &[f32]) -> Self;
    /// Dequantize into exactly `QK` values.
    fn dequantize(&self, y: &mut [f32]);
}

/// `(row, importance weights, out)`: one row quantized with ggml's `quant_weights` path.
pub type WeightedRowFn = fn(&[f32], &[f32], &mut [u8]);

/// Row-level entry points of one registered format.
#[derive(Debug, Clone, Copy)]

pub struct Codec {
    pub ty: GgmlType,
    /// Quantize `x` (a whole number of blocks) into `out` (exactly `row_bytes(x.len())` bytes).
    pub quantize_row: fn(&[f32], &mut [u8]),
    /// Dequantize `src` (whole blocks) into `out` (`blocks * block_size` values).
    pub dequantize_row: fn(&[u8], &mut [f32]),
    /// Importance-weighted quantization of one whole row (`x`, one weight per column in `qw`),
    /// ggml's `quant_weights` path; `None` where ggml ignores an imatrix (floats, Q8_0).
    pub quantize_row_weighted: Option<WeightedRowFn>,
}

impl Codec {
    /// The codec of a block format, built from its block functions.
    pub const fn of<B: BlockFormat>() -> Codec {
        Codec {
            ty: B::TYPE,
            quantize_row: quantize_blocks::<B>,
            dequantize_row: dequantize_blocks::<B>,
            quantize_row_weighted: None,
        }
    }

    /// The same codec with an importance-weighted row quantizer.
    pub const fn with_imatrix(self, f: WeightedRowFn) -> Codec {
        Codec { quantize_row_weighted: Some(f), ..self }
    }

    /// Quantize one row, with importance weights when given and the format has a weighted path.
    pub fn quantize_row_with(&self, x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
        match (qw, self.quantize_row_weighted) {
            (Some(w), Some(f)) => f(x, w, out),
            _ => (self.quantize_row)(x, out),
        }
    }
}

fn quantize_blocks<B: BlockFormat>(x: &[f32], out: &mut [u8]) {
    let blocks: &mut [B] = bytemuck::cast_slice_mut(out);
    debug_assert_eq!(blocks.len() * B::QK, x.len());
    for (xb, b) in x.chunks_exact(B::QK).zip(blocks.iter_mut()) {
        *b = B::quantize(xb);
    }
}

fn dequantize_blocks<B: BlockFormat>(src: &[u8], out: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(src);
    debug_assert_eq!(blocks.len() * B::QK, out.len());
    for (b, yb) in blocks.iter().zip(out.chunks_exact_mut(B::QK)) {
        b.dequantize(yb);
    }
}

/// Every format quantkit can encode and decode. One line per format.
pub static REGISTRY: &[Codec] = &[
    float::F32,
    float::F16,
    float::BF16,
    Codec::of::<ggml::q4_0::BlockQ4_0>().with_imatrix(ggml::imatrix::q4_0),
    Codec::of::<ggml::q4_1::BlockQ4_1>().with_imatrix(ggml::imatrix::q4_1),
    Codec::of::<ggml::q5_0::BlockQ5_0>().with_imatrix(ggml::imatrix::q5_0),
    Codec::of::<ggml::q5_1::BlockQ5_1>().with_imatrix(ggml::imatrix::q5_1),
    Codec::of::<ggml::q8_0::BlockQ8_0>(),
    Codec::of::<ggml::k::q2_k::BlockQ2K>().with_imatrix(ggml::imatrix::q2_k),
    Codec::of::<ggml::k::q3_k::BlockQ3K>().with_imatrix(ggml::imatrix::q3_k),
    Codec::of::<ggml::k::q4_k::BlockQ4K>().with_imatrix(ggml::imatrix::q4_k),
    Codec::of::<ggml::k::q5_k::BlockQ5K>().with_imatrix(ggml::imatrix::q5_k),
    Codec::of::<ggml::k::q6_k::BlockQ6K>().with_imatrix(ggml::imatrix::q6_k),
];

/// The codec for `ty`, or an error naming the unsupported type.
pub fn codec(ty: GgmlType) -> Result<&'static Codec> {
    REGISTRY
        .iter()
        .find(|c| c.ty == ty)
        .ok_or_else(|| Error::Unsupported(format!("tensor type {ty} (not yet implemented in quantkit)")))
}

/// Quantize a whole row-major tensor whose rows have `row_len` elements.
pub fn quantize(ty: GgmlType, x: &[f32], row_len: usize) -> Result<Vec<u8>> {
    let c = codec(ty)?;
    let row_bytes = row_bytes(ty, row_len)?;
    if row_len == 0 || x.len() % row_len != 0 {
        return Err(Error::Invalid(format!("{} values do not form rows of {row_len}", x.len())));
    }
    let mut out = vec![0u8; x.len() / row_len * row_bytes];
    for (xr, or) in x.chunks_exact(row_len).zip(out.chunks_exact_mut(row_bytes)) {
        (c.quantize_row)(xr, or);
    }
    Ok(out)
}

/// Dequantize `src` (rows of `row_len` elements stored as `ty`) into a new f32 vector.
pub fn dequantize(ty: GgmlType, src: &[u8], row_len: usize) -> Result<Vec<f32>> {
    let c = codec(ty)?;
    let row_bytes = row_bytes(ty, row_len)?;
    if row_bytes == 0 {
        return if src.is_empty() { Ok(vec![]) } else { Err(Error::Invalid("rows of length 0".into())) };
    }
    if src.len() % row_bytes != 0 {
        return Err(Error::Invalid(format!("{} bytes are not whole {ty} rows of {row_len}", src.len())));
    }
    let mut out = vec![0f32; src.len() / row_bytes * row_len];
    for (sr, or) in src.chunks_exact(row_bytes).zip(out.chunks_exact_mut(row_len)) {
        (c.dequantize_row)(sr, or);
    }
    Ok(out)
}

/// Bytes of one row of `row_len` elements, or an error when the row is not whole blocks.
pub fn row_bytes(ty: GgmlType, row_len: usize) -> Result<usize> {
    ty.row_bytes(row_len as u64).map(|b| b as usize).ok_or_else(|| {
        Error::Invalid(format!(
            "row length {row_len} is not a multiple of {ty}'s block size {}",
            ty.block_size()
        ))
    })
}

/// ggml's fp32→fp16 conversion (round to nearest even), as `GGML_FP32_TO_FP16`.
#[inline]
pub fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// fp16 bytes → f32.
#[inline]
pub fn f16_value(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

#[cfg(test)]
mod tests;
