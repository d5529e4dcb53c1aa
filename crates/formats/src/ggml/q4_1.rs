//! Q4_1: 32 weights, fp16 scale `d` and minimum `m`, 4-bit codes, `w = d·q + m`. 5 bits/weight.

use crate::decode::{legacy_scales, nibbles, set_nibble, Half8, IntChunk};
use crate::ggml::imatrix::legacy_blocks;
use crate::ggml::k::search::make_qkx3_quants;
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = 32;

    /// `quantize_row_q4_1_ref`.
    fn quantize(x: &[f32]) -> Self {
        let (min, max) = super::min_max(x);
        let d = (max - min) / 15.0;
        let id = super::inv(d);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[j + 16] - min) * id;
            let q0 = ((x0 + 0.5) as i8).min(15) as u8;
            let q1 = ((x1 + 0.5) as i8).min(15) as u8;
            qs[j] = q0 | (q1 << 4);
        }
        BlockQ4_1 { d: f16_bits(d), m: f16_bits(min), qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let m = f16_value(self.m);
        for j in 0..16 {
            y[j] = (self.qs[j] & 0x0f) as f32 * d + m;
            y[j + 16] = (self.qs[j] >> 4) as f32 * d + m;
        }
    }
}

impl IntBlock for BlockQ4_1 {
    const MAXQ: u8 = 15;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 20, Some(2), 0.0, out);
        for b in 0..n / 32 {
            nibbles(&src[b * 20 + 4..], &mut out.q[32 * b..]);
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 4, j, q);
    }
}

/// `quantize_row_q4_1_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4_1] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0u8; 32];
        let (d, the_min) = make_qkx3_quants(xb, weight, 15, &mut l, -0.9, 0.05, 36, false);
        (y.d, y.m) = (f16_bits(d), f16_bits(-the_min));
        for j in 0..16 {
            y.qs[j] = l[j] | (l[j + 16] << 4);
        }
    });
}
