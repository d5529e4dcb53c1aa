//! Q8_0: 32 weights, fp16 scale, int8 codes, `w = d·q`. 8.5 bits/weight.

use crate::{f16_bits, f16_value, BlockFormat};
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
