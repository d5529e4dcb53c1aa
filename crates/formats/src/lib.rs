//! quantkit-formats: every tensor storage format, one file each, behind one registry.
//!
//! A format's file owns everything about its bytes: the `#[repr(C)]` block struct (byte arrays,
//! alignment 1, so any byte slice can be viewed as blocks) with a compile-time size assert; the
//! scalar reference `quantize` (**bit-exact with ggml's `quantize_row_*_ref`**) and its
//! importance-weighted variant; `dequantize`; and for integer formats the chunk decoder the
//! kernels and GPTQ's GGUF grids use ([`IntBlock::decode`], into the shared [`decode::IntChunk`]
//! form), its inverse ([`IntBlock::set_code`]) and its largest code. [`for_each_format!`] is the
//! registry — one line per format — from which [`REGISTRY`] (the row-level [`Codec`]s) and, in
//! quantkit-kernels, every kernel table are generated: adding a format is its file plus its line
//! (docs/adding-a-format.md).
//!
//! Modules: [`float`] (F32, F16, BF16), [`ggml`] (the legacy and k-quant block formats, their
//! shared searches and importance-weighted helpers), [`decode`] (the decoded chunk form and the
//! decoders' shared helpers).
//!
//! The reference code here is the ground truth that optimised kernels are tested against; it is
//! written for clarity, not speed (conversion parallelises over rows instead).

pub mod decode;
pub mod float;
pub mod ggml;

use decode::{Half8, IntChunk, SoftHalf, CHUNK};
use quantkit_core::{Error, GgmlType, Result};

/// `(row, importance weights, out)`: one row quantized with ggml's `quant_weights` path.
pub type WeightedRowFn = fn(&[f32], &[f32], &mut [u8]);

/// A fixed-size block of `QK` weights.
pub trait BlockFormat: bytemuck::Pod + bytemuck::Zeroable {
    /// The ggml type id this block is stored as.
    const TYPE: GgmlType;
    /// Weights per block.
    const QK: usize;
    /// Bytes per block.
    const BYTES: usize = std::mem::size_of::<Self>();
    /// Importance-weighted quantization of one whole row (one weight per column), ggml's
    /// `quant_weights` path; `None` where ggml ignores an imatrix (Q8_0).
    const WEIGHTED: Option<WeightedRowFn> = None;
    /// Reference quantization of exactly `QK` values.
    fn quantize(x: &[f32]) -> Self;
    /// Dequantize into exactly `QK` values.
    fn dequantize(&self, y: &mut [f32]);
}

/// An integer block format: its bytes decode to the shared chunk form
/// `w[i] = s[i/16]·q[i] + o[i/16]` with unsigned (biased) codes `q ∈ 0..=MAXQ`.
pub trait IntBlock: BlockFormat {
    /// The largest code.
    const MAXQ: u8;
    /// For formats whose 4-bit indices select unevenly spaced levels (IQ4_NL, IQ4_XS, MXFP4): the
    /// decoded code of each index. GPTQ's grid then rounds to the nearest of these codes instead
    /// of any code in `0..=MAXQ`; `None`: every code in `0..=MAXQ` is a level.
    const LEVELS: Option<&'static [u8; 16]> = None;
    /// `n` weights (a multiple of `QK`, at most [`CHUNK`]) from `src` into `out`.
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk);
    /// Write code `q` (as [`IntBlock::decode`] produces it) of weight `j` into one block's bytes:
    /// the inverse of the decoder's bit unpacking (GPTQ's GGUF grids).
    fn set_code(block: &mut [u8], j: usize, q: u8);
}

/// A float format: one value per element.
pub trait FloatFormat {
    const TYPE: GgmlType;
    /// Bytes per value.
    const BYTES: usize;
    fn quantize_row(x: &[f32], out: &mut [u8]);
    fn dequantize_row(src: &[u8], out: &mut [f32]);
    /// `n` values (at most [`CHUNK`]) from `src`, written so that it vectorises inside the kernels.
    fn decode(src: &[u8], n: usize, out: &mut [f32; CHUNK]);
}

/// An integer format's grid for GPTQ (the rows that have one).
#[derive(Debug, Clone, Copy)]
pub struct GridOps {
    /// [`IntBlock::decode`] with the portable f16 conversion.
    pub decode: fn(&[u8], usize, &mut IntChunk),
    /// [`IntBlock::set_code`].
    pub set_code: fn(&mut [u8], usize, u8),
    /// [`IntBlock::MAXQ`].
    pub maxq: u8,
    /// [`IntBlock::LEVELS`].
    pub levels: Option<&'static [u8; 16]>,
}

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
    /// The format as a GPTQ grid; `None`: it cannot serve as one (floats, and `int_nogrid` rows:
    /// integer formats whose levels are not evenly spaced, [`Codec::without_grid`]).
    pub grid: Option<GridOps>,
}

impl Codec {
    /// The codec of an integer block format, built from its block functions.
    pub const fn int<B: IntBlock>() -> Codec {
        Codec {
            ty: B::TYPE,
            quantize_row: quantize_blocks::<B>,
            dequantize_row: dequantize_blocks::<B>,
            quantize_row_weighted: B::WEIGHTED,
            grid: Some(GridOps {
                decode: decode_soft::<B>,
                set_code: B::set_code,
                maxq: B::MAXQ,
                levels: B::LEVELS,
            }),
        }
    }

    /// The codec of a float format.
    pub const fn float<F: FloatFormat>() -> Codec {
        Codec {
            ty: F::TYPE,
            quantize_row: F::quantize_row,
            dequantize_row: F::dequantize_row,
            quantize_row_weighted: None,
            grid: None,
        }
    }

    /// The same codec, refused as a GPTQ grid.
    pub const fn without_grid(self) -> Codec {
        Codec { grid: None, ..self }
    }

    /// Quantize one row, with importance weights when given and the format has a weighted path.
    pub fn quantize_row_with(&self, x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
        match (qw, self.quantize_row_weighted) {
            (Some(w), Some(f)) => f(x, w, out),
            _ => (self.quantize_row)(x, out),
        }
    }
}

fn decode_soft<B: IntBlock>(src: &[u8], n: usize, out: &mut IntChunk) {
    B::decode::<SoftHalf>(src, n, out)
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

/// The registry: one line per format, `KIND TYPE TYPE_IMPL, KERNEL;` — `KIND` is `float`
/// ([`FloatFormat`]), `int` ([`IntBlock`], also a GPTQ grid) or `int_nogrid` (an [`IntBlock`]
/// whose codes are not evenly spaced levels, so GPTQ's rounding cannot target them; asking for
/// GPTQ on it is a clear error); `KERNEL` is `fused` when quantkit-kernels has a
/// fused SIMD GEMV for the format (its own file under `kernels/src/cpu/fused/`, an `impl Fused`
/// for the block type), else `generic`. Invoked with a callback macro's name, it hands the rows
/// to it: [`REGISTRY`] below and the kernel tables are generated this way, so no other code lists
/// the formats.
#[macro_export]
macro_rules! for_each_format {
    ($callback:ident) => {
        $callback! {
            float F32 $crate::float::F32, generic;
            float F16 $crate::float::F16, generic;
            float BF16 $crate::float::BF16, generic;
            int Q4_0 $crate::ggml::q4_0::BlockQ4_0, fused;
            int Q4_1 $crate::ggml::q4_1::BlockQ4_1, fused;
            int Q5_0 $crate::ggml::q5_0::BlockQ5_0, fused;
            int Q5_1 $crate::ggml::q5_1::BlockQ5_1, fused;
            int Q8_0 $crate::ggml::q8_0::BlockQ8_0, fused;
            int Q2_K $crate::ggml::k::q2_k::BlockQ2K, fused;
            int Q3_K $crate::ggml::k::q3_k::BlockQ3K, generic;
            int Q4_K $crate::ggml::k::q4_k::BlockQ4K, fused;
            int Q5_K $crate::ggml::k::q5_k::BlockQ5K, fused;
            int Q6_K $crate::ggml::k::q6_k::BlockQ6K, fused;
            int TQ2_0 $crate::ggml::tq2_0::BlockTq2_0, generic;
            int IQ4_NL $crate::ggml::iq4_nl::BlockIq4Nl, generic;
            int IQ4_XS $crate::ggml::iq4_xs::BlockIq4Xs, generic;
            int MXFP4 $crate::ggml::mxfp4::BlockMxfp4, generic;
            int NVFP4 $crate::ggml::nvfp4::BlockNvfp4, generic;
        }
    };
}

macro_rules! codecs {
    ($($kind:ident $ty:ident $imp:path, $kernel:ident;)*) => {
        /// Every format quantkit can encode and decode, in [`for_each_format!`]'s order.
        pub static REGISTRY: &[Codec] = &[$(codecs!(@row $kind $imp)),*];
    };
    (@row float $imp:path) => { Codec::float::<$imp>() };
    (@row int $imp:path) => { Codec::int::<$imp>() };
    (@row int_nogrid $imp:path) => { Codec::int::<$imp>().without_grid() };
}
for_each_format!(codecs);

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
