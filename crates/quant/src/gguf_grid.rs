//! Every GGUF integer type as a GPTQ grid.
//!
//! At the start of each block (32 weights for the legacy types, a 256-weight super-block for the
//! k-quants) the format's own quantizer (importance-weighted when an imatrix is given) chooses the
//! block's scales and mins from the block's values *at that point of GPTQ's column loop*; the
//! block is decoded to `w = s·q + o` per 16 weights (the format's own decoder), and each column is
//! then rounded to its nearest code under those scales, with GPTQ's error feedback in between,
//! and written back into the block's bits with [`set_code`]. The result is an ordinary block of
//! that type: llama.cpp reads it as is.

use quantkit_core::{Error, GgmlType, Result};
use quantkit_formats::decode::IntChunk;
use quantkit_formats::{Codec, GridOps};

/// A GGUF integer type as a grid: its registry row's codec and grid operations.
#[derive(Debug, Clone, Copy)]
pub struct GgufGrid {
    pub ty: GgmlType,
    codec: &'static Codec,
    ops: GridOps,
}

impl GgufGrid {
    /// The grid of `ty`, or an error naming the type when its registry row has no grid (float
    /// types, and any format whose row says it cannot serve as one).
    pub fn new(ty: GgmlType) -> Result<Self> {
        let codec = quantkit_formats::codec(ty)?;
        let ops = codec.grid.ok_or_else(|| {
            Error::Unsupported(format!(
                "GPTQ on the {ty} grid: {ty} has no integer grid (GGUF integer types only)"
            ))
        })?;
        Ok(GgufGrid { ty, codec, ops })
    }

    /// Weights per block.
    pub fn block(&self) -> usize {
        self.ty.block_size()
    }

    pub fn block_bytes(&self) -> usize {
        self.ty.type_size()
    }

    /// Quantize one block's current values with the format's quantizer (`qw`: importance weights)
    /// into `out`, and decode its grid.
    pub fn start_block(&self, x: &[f32], qw: Option<&[f32]>, out: &mut [u8], chunk: &mut IntChunk) {
        self.codec.quantize_row_with(x, qw, out);
        (self.ops.decode)(out, x.len(), chunk);
    }

    /// The nearest code to `x` for weight `j` of a decoded block, and its value.
    #[inline]
    pub fn round(&self, chunk: &IntChunk, j: usize, x: f32) -> (u8, f32) {
        let (s, o) = (chunk.s[j / 16], chunk.o[j / 16]);
        if s == 0.0 {
            let q = chunk.q[j];
            return (q, o);
        }
        let t = (x - o) / s;
        let q = match self.ops.levels {
            // Unevenly spaced levels: the nearest of the 16 codes (the first on ties).
            Some(levels) => {
                let mut best = levels[0];
                for &c in &levels[1..] {
                    if (c as f32 - t).abs() < (best as f32 - t).abs() {
                        best = c;
                    }
                }
                best
            }
            None => t.round().clamp(0.0, self.ops.maxq as f32) as u8,
        };
        (q, s * q as f32 + o)
    }

    /// Write code `q` of weight `j` into a block (the format's `IntBlock::set_code`).
    pub fn set_code(&self, block: &mut [u8], j: usize, q: u8) {
        (self.ops.set_code)(block, j, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_code_inverts_every_decoder() {
        let grids: Vec<GgmlType> =
            quantkit_formats::REGISTRY.iter().filter(|c| c.grid.is_some()).map(|c| c.ty).collect();
        use GgmlType as T;
        for ty in [
            T::Q4_0,
            T::Q4_1,
            T::Q5_0,
            T::Q5_1,
            T::Q8_0,
            T::Q2_K,
            T::Q3_K,
            T::Q4_K,
            T::Q5_K,
            T::Q6_K,
            T::IQ4_NL,
            T::IQ4_XS,
            T::MXFP4,
            T::NVFP4,
        ] {
            assert!(grids.contains(&ty), "{ty} is a grid: {grids:?}");
        }
        for ty in grids {
            let g = GgufGrid::new(ty).expect("grid");
            let n = g.block();
            let x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 257) as f32 / 128.0 - 1.0) * 0.1).collect();
            let mut blk = vec![0u8; g.block_bytes()];
            let mut ch = IntChunk::default();
            g.start_block(&x, None, &mut blk, &mut ch);
            let orig = blk.clone();
            // Writing back the decoded codes reproduces the block.
            for j in 0..n {
                g.set_code(&mut blk, j, ch.q[j]);
            }
            assert_eq!(blk, orig, "{ty}");
            // New codes land where the decoder reads them, and nothing else changes.
            let want: Vec<u8> = (0..n)
                .map(|j| match g.ops.levels {
                    Some(levels) => levels[(j * 7 + 3) % 16],
                    None => ((j * 37 + 11) % (g.ops.maxq as usize + 1)) as u8,
                })
                .collect();
            for (j, &q) in want.iter().enumerate() {
                g.set_code(&mut blk, j, q);
            }
            let mut back = IntChunk::default();
            (g.ops.decode)(&blk, n, &mut back);
            assert_eq!(&back.q[..n], &want[..], "{ty}");
            assert_eq!(back.s, ch.s, "{ty}");
            assert_eq!(back.o, ch.o, "{ty}");
            // And the codec's own dequantization agrees with s·q + o.
            let deq = quantkit_formats::dequantize(ty, &blk, n).expect("dequantize");
            for j in 0..n {
                let v = back.s[j / 16] * back.q[j] as f32 + back.o[j / 16];
                assert!((deq[j] - v).abs() <= 1e-6 * (1.0 + v.abs()), "{ty} {j}: {} vs {v}", deq[j]);
            }
        }
    }

    #[test]
    fn float_types_are_refused_as_grids_with_a_clear_error() {
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            let e = GgufGrid::new(ty).expect_err("float grid").to_string();
            assert!(e.contains(&ty.to_string()) && e.contains("no integer grid"), "{e}");
        }
    }
}
