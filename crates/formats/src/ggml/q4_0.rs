//! Q4_0: 32 weights, one fp16 scale, 4-bit codes `q ∈ [0,15]`, `w = d·(q − 8)`. 4.5 bits/weight.
//! Low nibbles hold weights 0..16, high nibbles 16..32.

use crate::decode::{legacy_scales, nibbles, set_nibble, Half8, IntChunk};
use crate::ggml::imatrix::legacy_blocks;
use crate::ggml::k::search::make_qx_quants;
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = 32;

    /// `quantize_row_q4_0_ref`.
    fn quantize(x: &[f32]) -> Self {
        let max = super::signed_absmax(x);
        let d = max / -8.0;
        let id = super::inv(d);
        let mut qs = [0u8; 16];
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[j + 16] * id;
            let q0 = ((x0 + 8.5) as i8).min(15) as u8;
            let q1 = ((x1 + 8.5) as i8).min(15) as u8;
            qs[j] = q0 | (q1 << 4);
        }
        BlockQ4_0 { d: f16_bits(d), qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        for j in 0..16 {
            y[j] = ((self.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            y[j + 16] = ((self.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl IntBlock for BlockQ4_0 {
    const MAXQ: u8 = 15;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 18, None, -8.0, out);
        for b in 0..n / 32 {
            nibbles(&src[b * 18 + 2..], &mut out.q[32 * b..]);
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 2, j, q);
    }
}

/// `quantize_row_q4_0_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0i8; 32];
        y.d = f16_bits(make_qx_quants(xb, 8, &mut l, 1, Some(weight)));
        for j in 0..16 {
            y.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    });
}
