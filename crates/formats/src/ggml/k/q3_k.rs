//! Q3_K: 16 sub-blocks of 16 weights, 6-bit signed scales (packed in 12 bytes) times fp16 `d`,
//! 3-bit codes (2 low bits in `qs`, high bit in `hmask`, set meaning "no −4 offset").
//! 3.4375 bits/weight.

use super::QK_K;
use crate::{f16_value, BlockFormat};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

/// The sixteen 6-bit scales (still biased by 32) from their 12-byte packing.
pub fn unpack_q3_scales(s: &[u8; 12]) -> [i8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let mut aux = [0u32; 4];
    for (i, a) in aux.iter_mut().take(3).enumerate() {
        *a = u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    }
    let tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4);
    aux[3] = ((aux[1] >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4);
    aux[0] = (aux[0] & KMASK2) | ((tmp & KMASK1) << 4);
    aux[1] = (aux[1] & KMASK2) | (((tmp >> 2) & KMASK1) << 4);
    let mut out = [0i8; 16];
    for (i, a) in aux.iter().enumerate() {
        for (k, b) in a.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = *b as i8;
        }
    }
    out
}

impl BlockFormat for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const QK: usize = QK_K;

    fn quantize(x: &[f32]) -> Self {
        super::search::quantize_q3_k(x)
    }

    /// `dequantize_row_q3_K`.
    fn dequantize(&self, y: &mut [f32]) {
        let d_all = f16_value(self.d);
        let scales = unpack_q3_scales(&self.scales);
        let mut out = 0;
        let mut is = 0;
        let mut m = 1u8;
        for n in 0..2 {
            let q = &self.qs[n * 32..n * 32 + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    for l in 0..16 {
                        let lo = ((q[l + 16 * half] >> shift) & 3) as i32;
                        let hi = if self.hmask[l + 16 * half] & m != 0 { 0 } else { 4 };
                        y[out] = dl * (lo - hi) as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }
}
