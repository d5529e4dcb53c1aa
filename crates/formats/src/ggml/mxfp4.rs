//! MXFP4 (OCP microscaling FP4, llama.cpp's `block_mxfp4`): 32 weights, one E8M0 scale byte `e`
//! and 4-bit E2M1 codes, `w = 2^(e−128) · kvalues[q]` with `kvalues` = 2 × the E2M1 values
//! (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6 → 0, ±1, ±2, ±3, ±4, ±6, ±8, ±12; index 8 is −0). 4.25
//! bits/weight. Low nibbles hold weights 0..16, high nibbles 16..32.
//!
//! ggml quantizes it with `quantize_row_mxfp4_ref` (an imatrix is ignored: `quantize_mxfp4` takes
//! no weights): `e = floor(log2(amax)) − 2 + 127`, then each weight to its nearest level (first on
//! ties). Decoded chunk form: codes `kvalues[q] + 128` (biased), `s = 2^(e−128)`.

use super::iq4_nl::{biased, index_of};
use crate::decode::{nibbles, set_nibble, Half8, IntChunk};
use crate::{BlockFormat, IntBlock};
use quantkit_core::GgmlType;

/// ggml's `kvalues_mxfp4` (`kvalues_fp4`, ggml-common.h): twice the E2M1 values.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
/// `kvalues + 128`: the decoded code of each 4-bit index.
pub const LEVELS_MXFP4: [u8; 16] = biased(KVALUES_MXFP4);

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockMxfp4>() == 17);

/// `GGML_E8M0_TO_FP32_HALF`: `2^(e−128)` (0.5 × the E8M0 value), denormal for `e < 2`; `e = 0xFF`
/// is NaN (the OCP encoding's; ggml's conversion ignores it, its row validation rejects it), so a
/// corrupt block shows up as non-finite weights that the converter refuses by name.
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = match e {
        0 | 1 => 0x0020_0000u32 << e,
        0xff => 0x7fc0_0000,
        _ => ((e - 1) as u32) << 23,
    };
    f32::from_bits(bits)
}

/// `best_index_mxfp4` (MXFP4 and NVFP4): the first index with the smallest `|kvalues[i]·d − x|`.
#[inline]
pub(crate) fn best_index_fp4(x: f32, d: f32) -> u8 {
    let mut best = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * d - x).abs();
    for i in 1..16 {
        let err = (KVALUES_MXFP4[i] as f32 * d - x).abs();
        if err < best_err {
            best = i as u8;
            best_err = err;
        }
    }
    best
}

impl BlockFormat for BlockMxfp4 {
    const TYPE: GgmlType = GgmlType::MXFP4;
    const QK: usize = 32;

    /// `quantize_row_mxfp4_ref`.
    fn quantize(x: &[f32]) -> Self {
        let mut amax = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        // C converts the float `floorf(log2f(amax)) − 2 + 127` to uint8_t; `as` saturates where C
        // would be undefined (amax below 2⁻¹²⁵ or above 2¹²⁸, never a real weight block).
        let e = if amax > 0.0 { (amax.log2().floor() - 2.0 + 127.0) as u8 } else { 0 };
        let d = e8m0_to_f32_half(e);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            qs[j] = best_index_fp4(x[j], d) | (best_index_fp4(x[j + 16], d) << 4);
        }
        BlockMxfp4 { e, qs }
    }

    /// `dequantize_row_mxfp4`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..16 {
            y[j] = KVALUES_MXFP4[(self.qs[j] & 0xf) as usize] as f32 * d;
            y[j + 16] = KVALUES_MXFP4[(self.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

impl IntBlock for BlockMxfp4 {
    const MAXQ: u8 = 140;
    const LEVELS: Option<&'static [u8; 16]> = Some(&LEVELS_MXFP4);

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        for b in 0..n / 32 {
            let d = e8m0_to_f32_half(src[b * 17]);
            for g in 2 * b..2 * b + 2 {
                out.s[g] = d;
                // −128·2^k is exact, so `o == −bias·s` holds to the bit.
                out.o[g] = -128.0 * d;
            }
            nibbles(&src[b * 17 + 1..], &mut out.q[32 * b..]);
        }
        out.bias = 128;
        C::lut16(&LEVELS_MXFP4, &mut out.q[..n]);
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 1, j, index_of(&LEVELS_MXFP4, q));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_is_two_to_the_e_minus_128() {
        assert!(e8m0_to_f32_half(0xff).is_nan());
        for e in 0..=254u8 {
            assert_eq!(e8m0_to_f32_half(e), 2f64.powi(e as i32 - 128) as f32, "e = {e}");
        }
    }

    #[test]
    fn scale_puts_the_block_maximum_in_the_top_binade() {
        let mut x = [0.0f32; 32];
        x[5] = 3.0; // floor(log2 3) = 1 → e = 126, d = 2^-2, levels up to 12·d = 3.
        x[20] = -0.25;
        let b = BlockMxfp4::quantize(&x);
        assert_eq!(b.e, 126);
        let mut y = [0.0f32; 32];
        b.dequantize(&mut y);
        assert_eq!(y[5], 3.0);
        assert_eq!(y[20], -0.25);
        assert_eq!(y[0], 0.0);
    }
}
