//! IQ4_XS: super-blocks of 256 weights, an fp16 scale `d` and eight 6-bit sub-block scales
//! `ls` (low 4 bits in `scales_l`, two per byte; high 2 bits in `scales_h`, bits `2i..2i+2`), 4-bit
//! indices into IQ4_NL's 16 levels: `w = d·(ls − 32)·kvalues[q]`. 4.25 bits/weight. Within each
//! 32-weight sub-block, low nibbles hold weights 0..16 and high nibbles 16..32.
//!
//! Quantized by ggml's `quantize_row_iq4_nl_impl` over the whole super-block (shared with IQ4_NL,
//! [`super::iq4_nl::quantize_nl_impl`]), `ntry = 7`, as llama-quantize's `quantize_iq4_xs` calls
//! it with or without an imatrix.

use super::iq4_nl::{index_of, quantize_nl_impl, weighted_row, NlBlock, KVALUES_IQ4NL, LEVELS_IQ4NL};
use crate::decode::{f16_at, nibbles, put_bits, Half8, IntChunk};
use crate::{f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq4Xs {
    pub d: [u8; 2],
    pub scales_h: [u8; 2],
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Xs>() == 136);

fn from_impl(b: NlBlock) -> BlockIq4Xs {
    BlockIq4Xs {
        d: b.d,
        scales_h: b.scales_h.to_le_bytes(),
        scales_l: b.scales_l,
        qs: b.qs.try_into().expect("128 bytes"),
    }
}

/// Sub-block `ib`'s 6-bit scale (`ls`, stored biased by 32).
#[inline(always)]
fn sub_scale(scales_h: u16, scales_l: &[u8], ib: usize) -> i32 {
    (((scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32) | ((((scales_h >> (2 * ib)) & 3) as i32) << 4)
}

impl BlockFormat for BlockIq4Xs {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const QK: usize = 256;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);

    /// `quantize_iq4_xs` without an imatrix (`quantize_row_iq4_xs_ref`).
    fn quantize(x: &[f32]) -> Self {
        from_impl(quantize_nl_impl(x, None, 7))
    }

    /// `dequantize_row_iq4_xs`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let sh = u16::from_le_bytes(self.scales_h);
        for ib in 0..8 {
            let dl = d * (sub_scale(sh, &self.scales_l, ib) - 32) as f32;
            let (qs, y) = (&self.qs[16 * ib..16 * ib + 16], &mut y[32 * ib..32 * ib + 32]);
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

impl IntBlock for BlockIq4Xs {
    const MAXQ: u8 = LEVELS_IQ4NL[15];
    const LEVELS: Option<&'static [u8; 16]> = Some(&LEVELS_IQ4NL);

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let d = f16_at(src, 0);
        let sh = u16::from_le_bytes([src[2], src[3]]);
        for ib in 0..8 {
            let dl = d * (sub_scale(sh, &src[4..8], ib) - 32) as f32;
            out.s[2 * ib] = dl;
            out.s[2 * ib + 1] = dl;
            out.o[2 * ib] = -128.0 * dl;
            out.o[2 * ib + 1] = -128.0 * dl;
            nibbles(&src[8 + 16 * ib..], &mut out.q[32 * ib..]);
        }
        out.bias = 128;
        C::lut16(&LEVELS_IQ4NL, &mut out.q[..256]);
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (ib, k) = (j / 32, j % 32);
        let at = 8 + 16 * ib + k % 16;
        put_bits(&mut b[at], if k < 16 { 0 } else { 4 }, 4, index_of(&LEVELS_IQ4NL, q));
    }
}

/// `quantize_iq4_xs` with an imatrix.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    weighted_row(x, qw, out, from_impl)
}
