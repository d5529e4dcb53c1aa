//! NVFP4 (llama.cpp's `block_nvfp4`, GGML type 40): 64 weights in four sub-blocks of 16, each with
//! an unsigned E4M3 scale byte (`d[4]`), then 32 bytes of 4-bit E2M1 codes: `w = ue4m3(d[s])/2 ·
//! kvalues[q]` with `kvalues` = 2 × the E2M1 values (as MXFP4). 4.5 bits/weight. Sub-block `s`'s 16
//! weights sit in `qs[8s..8s+8]`: weight j (0..8) in the low nibble of byte j, weight j+8 in the high
//! nibble. There is no per-tensor global scale in the GGUF type (compressed-tensors' NVFP4 has one).
//!
//! ggml quantizes it with `quantize_row_nvfp4_ref` (an imatrix is ignored): per sub-block
//! `scale = ue4m3(amax/6)` (ggml's own fp32 → UE4M3 rounding, [`fp32_to_ue4m3`]), then each
//! weight to the nearest level (first on ties). llama-quantize has no NVFP4 file type; a
//! `--tensor-type` override asks for it, and quantkit's own NVFP4 mix puts it everywhere but the
//! output.

use super::iq4_nl::index_of;
use super::mxfp4::{best_index_fp4, KVALUES_MXFP4, LEVELS_MXFP4};
use crate::decode::{put_bits, Half8, IntChunk};
use crate::{BlockFormat, IntBlock};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockNvfp4 {
    pub d: [u8; 4],
    pub qs: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockNvfp4>() == 36);

/// `ggml_ue4m3_to_fp32`: unsigned E4M3 (bias 7) × 0.5 (the doubled-kvalues convention); 0 and
/// 0x7F decode to 0.
#[inline(always)]
pub fn ue4m3_to_f32_half(x: u8) -> f32 {
    if x == 0 || x == 0x7f {
        return 0.0;
    }
    // ggml masks the exponent to 4 bits: a byte with the (meaningless) top bit set decodes as
    // its low 7 bits.
    let (exp, man) = (((x >> 3) & 0xf) as i32, (x & 7) as f32);
    let raw = if exp == 0 {
        man * (1.0 / 512.0)
    } else {
        (1.0 + man / 8.0) * f32::from_bits(((exp - 7 + 127) as u32) << 23)
    };
    raw * 0.5
}

/// `ggml_fp32_to_ue4m3`: saturating at 448, mantissa rounded up on its first dropped bit.
pub fn fp32_to_ue4m3(x: f32) -> u8 {
    // Zero, negatives and NaN all give 0 (C's `!(x > 0.0f)`).
    if x.is_nan() || x <= 0.0 {
        return 0;
    }
    let x = if x > 448.0 { 448.0 } else { x };
    let bits = x.to_bits();
    let fp32_exp = ((bits >> 23) & 0xff) as i32 - 127;
    let fp32_man = ((bits >> 20) & 7) as i32;
    let mut exp = fp32_exp + 7;
    if exp <= 0 {
        let man = ((x * 512.0 + 0.5) as i32).min(7);
        return if man < 1 { 0 } else { man as u8 };
    }
    if exp >= 15 {
        return 0x7e;
    }
    let mut man = fp32_man + ((bits >> 19) & 1) as i32;
    if man > 7 {
        man = 0;
        exp += 1;
        if exp >= 15 {
            return 0x7e;
        }
    }
    ((exp << 3) | man) as u8
}

impl BlockFormat for BlockNvfp4 {
    const TYPE: GgmlType = GgmlType::NVFP4;
    const QK: usize = 64;

    /// `quantize_row_nvfp4_ref`.
    fn quantize(x: &[f32]) -> Self {
        let mut b = BlockNvfp4 { d: [0; 4], qs: [0; 32] };
        for s in 0..4 {
            let xb = &x[16 * s..16 * s + 16];
            let mut amax = 0.0f32;
            for &v in xb {
                if amax < v.abs() {
                    amax = v.abs();
                }
            }
            let ue = fp32_to_ue4m3(amax / 6.0);
            b.d[s] = ue;
            let d = ue4m3_to_f32_half(ue);
            for j in 0..8 {
                b.qs[8 * s + j] = best_index_fp4(xb[j], d) | (best_index_fp4(xb[j + 8], d) << 4);
            }
        }
        b
    }

    /// `dequantize_row_nvfp4`.
    fn dequantize(&self, y: &mut [f32]) {
        for s in 0..4 {
            let d = ue4m3_to_f32_half(self.d[s]);
            for j in 0..8 {
                let q = self.qs[8 * s + j];
                y[16 * s + j] = KVALUES_MXFP4[(q & 0xf) as usize] as f32 * d;
                y[16 * s + j + 8] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
            }
        }
    }
}

impl IntBlock for BlockNvfp4 {
    const MAXQ: u8 = 140;
    const LEVELS: Option<&'static [u8; 16]> = Some(&LEVELS_MXFP4);

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        for b in 0..n / 64 {
            let blk = &src[b * 36..b * 36 + 36];
            for s in 0..4 {
                let d = ue4m3_to_f32_half(blk[s]);
                let g = 4 * b + s;
                out.s[g] = d;
                // d is m·2^k with a 4-bit m: −128·d is exact, so `o == −bias·s` to the bit.
                out.o[g] = -128.0 * d;
                let q = &mut out.q[16 * g..16 * g + 16];
                for j in 0..8 {
                    let v = blk[4 + 8 * s + j];
                    q[j] = v & 0xf;
                    q[j + 8] = v >> 4;
                }
            }
        }
        out.bias = 128;
        C::lut16(&LEVELS_MXFP4, &mut out.q[..n]);
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (s, k) = (j / 16, j % 16);
        put_bits(&mut b[4 + 8 * s + k % 8], if k < 8 { 0 } else { 4 }, 4, index_of(&LEVELS_MXFP4, q));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ue4m3_roundtrips_every_code_and_rounds_like_ggml() {
        // Every code below the top binade decodes to a value that encodes back to it; ggml's
        // encoder sends everything from 256 up to 448 (0x7E), never 0x78..0x7D.
        for c in 1..0x7fu8 {
            let v = ue4m3_to_f32_half(c) * 2.0;
            let want = if c >= 0x78 { 0x7e } else { c };
            assert_eq!(fp32_to_ue4m3(v), want, "code {c:#x} = {v}");
        }
        assert_eq!(ue4m3_to_f32_half(0x7e) * 2.0, 448.0);
        assert_eq!(fp32_to_ue4m3(1e9), 0x7e);
        assert_eq!(fp32_to_ue4m3(-1.0), 0);
        assert_eq!(fp32_to_ue4m3(f32::NAN), 0);
        // 1.0625 lies halfway between 1.0 (0x38) and 1.125 (0x39): ggml rounds up.
        assert_eq!(fp32_to_ue4m3(1.0625), 0x39);
    }

    #[test]
    fn a_sub_block_maximum_maps_to_the_top_level() {
        let mut x = [0.0f32; 64];
        x[17] = -3.0; // sub-block 1: scale ue4m3(0.5) = 0x30, d = 0.25, −12·d = −3
        x[40] = 0.75;
        let b = BlockNvfp4::quantize(&x);
        assert_eq!(b.d, [0, 0x30, 0x20, 0]);
        let mut y = [0.0f32; 64];
        b.dequantize(&mut y);
        assert_eq!(y[17], -3.0);
        assert_eq!(y[40], 0.75);
    }
}
