//! Q8_0: 32 weights, fp16 scale, int8 codes, `w = d·q`. 8.5 bits/weight.

use crate::decode::{legacy_scales, Half8, IntChunk};
use crate::{f16_bits, f16_value, BlockFormat, IntBlock};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const QK: usize = 32;

    /// `quantize_row_q8_0_ref`: `roundf` (half away from zero) of `x / d`, `d = amax / 127`.
    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = super::inv(d);
        let mut qs = [0i8; 32];
        for (q, v) in qs.iter_mut().zip(x) {
            *q = super::round_half_away(v * id) as i8;
        }
        BlockQ8_0 { d: f16_bits(d), qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        for (o, q) in y.iter_mut().zip(self.qs) {
            *o = q as f32 * d;
        }
    }
}

impl IntBlock for BlockQ8_0 {
    const MAXQ: u8 = 255;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 34, None, -128.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 34..b * 34 + 34];
            // i8 → i8 + 128, 16 bytes at a time.
            const X: u128 = 0x8080_8080_8080_8080_8080_8080_8080_8080;
            let lo = u128::from_le_bytes(blk[2..18].try_into().expect("16 bytes")) ^ X;
            let hi = u128::from_le_bytes(blk[18..34].try_into().expect("16 bytes")) ^ X;
            out.q[32 * b..32 * b + 16].copy_from_slice(&lo.to_le_bytes());
            out.q[32 * b + 16..32 * b + 32].copy_from_slice(&hi.to_le_bytes());
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        b[2 + j] = q ^ 0x80;
    }
}
