//! Every GGUF integer type as a GPTQ grid.
//!
//! At the start of each block (32 weights for the legacy types, a 256-weight super-block for the
//! k-quants) the format's own quantizer (importance-weighted when an imatrix is given) chooses the
//! block's scales and mins from the block's values *at that point of GPTQ's column loop*; the
//! block is decoded to `w = s·q + o` per 16 weights (the kernels' decoders), and each column is
//! then rounded to its nearest code under those scales, with GPTQ's error feedback in between,
//! and written back into the block's bits with [`set_code`]. The result is an ordinary block of
//! that type: llama.cpp reads it as is.

use quantkit_core::{Error, GgmlType, Result};
use quantkit_kernels::decode::{self, IntChunk, IntDecode, SoftHalf};

/// A GGUF integer type as a grid.
#[derive(Debug, Clone, Copy)]
pub struct GgufGrid {
    pub ty: GgmlType,
    codec: &'static quantkit_formats::Codec,
    decode: DecodeFn,
    maxq: u8,
}

/// A format's chunk decoder.
type DecodeFn = fn(&[u8], usize, &mut IntChunk);

fn dec<D: IntDecode>(src: &[u8], n: usize, out: &mut IntChunk) {
    D::decode::<SoftHalf>(src, n, out)
}

impl GgufGrid {
    /// The grid of `ty`, or an error for float types and types without a decoder.
    pub fn new(ty: GgmlType) -> Result<Self> {
        use GgmlType as T;
        let (decode, maxq): (DecodeFn, u8) = match ty {
            T::Q4_0 => (dec::<decode::Q4_0>, 15),
            T::Q4_1 => (dec::<decode::Q4_1>, 15),
            T::Q5_0 => (dec::<decode::Q5_0>, 31),
            T::Q5_1 => (dec::<decode::Q5_1>, 31),
            T::Q8_0 => (dec::<decode::Q8_0>, 255),
            T::Q2_K => (dec::<decode::Q2K>, 3),
            T::Q3_K => (dec::<decode::Q3K>, 7),
            T::Q4_K => (dec::<decode::Q4K>, 15),
            T::Q5_K => (dec::<decode::Q5K>, 31),
            T::Q6_K => (dec::<decode::Q6K>, 63),
            _ => return Err(Error::Unsupported(format!("GPTQ on the {ty} grid (integer GGUF types only)"))),
        };
        Ok(GgufGrid { ty, codec: quantkit_formats::codec(ty)?, decode, maxq })
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
        (self.decode)(out, x.len(), chunk);
    }

    /// The nearest code to `x` for weight `j` of a decoded block, and its value.
    #[inline]
    pub fn round(&self, chunk: &IntChunk, j: usize, x: f32) -> (u8, f32) {
        let (s, o) = (chunk.s[j / 16], chunk.o[j / 16]);
        if s == 0.0 {
            let q = chunk.q[j];
            return (q, o);
        }
        let q = ((x - o) / s).round().clamp(0.0, self.maxq as f32) as u8;
        (q, s * q as f32 + o)
    }

    /// Write code `q` of weight `j` into a block.
    pub fn set_code(&self, block: &mut [u8], j: usize, q: u8) {
        set_code(self.ty, block, j, q)
    }
}

fn put(b: &mut u8, shift: u32, bits: u32, v: u8) {
    let mask = (((1u32 << bits) - 1) << shift) as u8;
    *b = (*b & !mask) | ((v << shift) & mask);
}

/// Write the (biased, unsigned, as the kernels' decoders produce them) code `q` of weight `j` into
/// one block of `ty`: the inverse of the decoders' bit unpacking.
pub fn set_code(ty: GgmlType, b: &mut [u8], j: usize, q: u8) {
    use GgmlType as T;
    let nib = |b: &mut [u8], qs: usize, j: usize, q: u8| {
        if j < 16 {
            put(&mut b[qs + j], 0, 4, q);
        } else {
            put(&mut b[qs + j - 16], 4, 4, q);
        }
    };
    let fifth = |b: &mut [u8], qh: usize, j: usize, q: u8| put(&mut b[qh + j / 8], (j % 8) as u32, 1, q >> 4);
    match ty {
        T::Q4_0 => nib(b, 2, j, q),
        T::Q4_1 => nib(b, 4, j, q),
        T::Q5_0 => {
            nib(b, 6, j, q & 15);
            fifth(b, 2, j, q);
        }
        T::Q5_1 => {
            nib(b, 8, j, q & 15);
            fifth(b, 4, j, q);
        }
        T::Q8_0 => b[2 + j] = q ^ 0x80,
        T::Q2_K | T::Q3_K => {
            let (n, k, l) = (j / 128, (j % 128) / 32, j % 32);
            let qs = if ty == T::Q2_K { 16 } else { 32 };
            put(&mut b[qs + 32 * n + l], 2 * k as u32, 2, q & 3);
            if ty == T::Q3_K {
                put(&mut b[l], (4 * n + k) as u32, 1, q >> 2);
            }
        }
        T::Q4_K | T::Q5_K => {
            let (c, l) = (j / 64, j % 64);
            let qs = if ty == T::Q4_K { 16 } else { 48 };
            put(&mut b[qs + 32 * c + l % 32], if l < 32 { 0 } else { 4 }, 4, q & 15);
            if ty == T::Q5_K {
                put(&mut b[16 + l % 32], (2 * c + (l >= 32) as usize) as u32, 1, q >> 4);
            }
        }
        T::Q6_K => {
            let (n, m) = (j / 128, j % 128);
            let (quarter, l) = (m / 32, m % 32);
            let ql = 64 * n + l + if quarter % 2 == 1 { 32 } else { 0 };
            put(&mut b[ql], if quarter >= 2 { 4 } else { 0 }, 4, q & 15);
            put(&mut b[128 + 32 * n + l], 2 * quarter as u32, 2, q >> 4);
        }
        _ => unreachable!("set_code: {ty} has no integer grid (GgufGrid::new refuses it)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_code_inverts_every_decoder() {
        use GgmlType as T;
        for ty in [T::Q4_0, T::Q4_1, T::Q5_0, T::Q5_1, T::Q8_0, T::Q2_K, T::Q3_K, T::Q4_K, T::Q5_K, T::Q6_K] {
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
            let want: Vec<u8> = (0..n).map(|j| ((j * 37 + 11) % (g.maxq as usize + 1)) as u8).collect();
            for (j, &q) in want.iter().enumerate() {
                g.set_code(&mut blk, j, q);
            }
            let mut back = IntChunk::default();
            (g.decode)(&blk, n, &mut back);
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
}
