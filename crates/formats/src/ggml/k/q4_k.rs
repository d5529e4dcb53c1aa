//! Q4_K: 8 sub-blocks of 32 weights; 6-bit scale and min per sub-block (packed in 12 bytes) times
//! fp16 `d` and `dmin`; 4-bit codes. `w = d·sc·q − dmin·m`. 4.5 bits/weight.

use super::{get_scale_min_k4, QK_K};
use crate::{f16_value, BlockFormat};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);

impl BlockFormat for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const QK: usize = QK_K;

    fn quantize(x: &[f32]) -> Self {
        super::search::quantize_q4_k(x)
    }

    /// `dequantize_row_q4_K`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let min = f16_value(self.dmin);
        for j in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &self.qs[32 * j..32 * j + 32];
            for l in 0..32 {
                y[64 * j + l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[64 * j + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}
