//! Q2_K: 16 sub-blocks of 16 weights; 4-bit scale and 4-bit min per sub-block (scaled by fp16
//! `d` and `dmin`), 2-bit codes. `w = d·sc·q − dmin·m`. 2.625 bits/weight.

use super::QK_K;
use crate::{f16_bits, f16_value, BlockFormat};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

impl BlockFormat for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const QK: usize = QK_K;

    fn quantize(x: &[f32]) -> Self {
        super::search::quantize_q2_k(x)
    }

    /// `dequantize_row_q2_K`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let min = f16_value(self.dmin);
        let mut out = 0;
        let mut is = 0;
        for n in 0..2 {
            let q = &self.qs[n * 32..n * 32 + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[out] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }
}

impl BlockQ2K {
    pub fn new(scales: [u8; 16], qs: [u8; 64], d: f32, dmin: f32) -> Self {
        BlockQ2K { scales, qs, d: f16_bits(d), dmin: f16_bits(dmin) }
    }
}
