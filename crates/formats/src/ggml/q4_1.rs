//! Q4_1: 32 weights, fp16 scale `d` and minimum `m`, 4-bit codes, `w = d·q + m`. 5 bits/weight.

use crate::{f16_bits, f16_value, BlockFormat};
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
