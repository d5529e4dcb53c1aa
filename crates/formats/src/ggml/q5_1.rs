//! Q5_1: 32 weights, fp16 scale `d` and minimum `m`, 5-bit codes split like Q5_0, `w = d·q + m`.
//! 6 bits/weight.

use crate::decode::{fifth_bits, legacy_scales, nibbles, set_fifth, set_nibble, Half8, IntChunk};
use crate::ggml::imatrix::{legacy_blocks, q5_high_bits};
use crate::ggml::k::search::make_qkx3_quants;
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = 32;

    /// `quantize_row_q5_1_ref`.
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = super::min_max(x);
        let d = (max - min) / 31.0;
        let id = super::inv(d);
        let mut qs = [0u8; 16];
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + 16] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(31) as u8;
            let q1 = ((x1 + 0.5) as i8).min(31) as u8;
            qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        BlockQ5_1 { d: f16_bits(d), m: f16_bits(min), qh: qh.to_le_bytes(), qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let m = f16_value(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            y[j] = ((self.qs[j] & 0x0f) as u32 | h0) as f32 * d + m;
            y[j + 16] = ((self.qs[j] >> 4) as u32 | h1) as f32 * d + m;
        }
    }
}

impl IntBlock for BlockQ5_1 {
    const MAXQ: u8 = 31;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 24, Some(2), 0.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 24..b * 24 + 24];
            let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
            let q = &mut out.q[32 * b..32 * b + 32];
            nibbles(&blk[8..24], q);
            fifth_bits(qh, q);
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 8, j, q & 15);
        set_fifth(b, 4, j, q);
    }
}

/// `quantize_row_q5_1_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0u8; 32];
        let (d, the_min) = make_qkx3_quants(xb, weight, 31, &mut l, -0.9, 0.05, 36, false);
        (y.d, y.m) = (f16_bits(d), f16_bits(-the_min));
        (y.qs, y.qh) = q5_high_bits(&l);
    });
}
