//! Q4_K: 8 sub-blocks of 32 weights; 6-bit scale and min per sub-block (packed in 12 bytes) times
//! fp16 `d` and `dmin`; 4-bit codes. `w = d·sc·q − dmin·m`. 4.5 bits/weight.

use super::{get_scale_min_k4, QK_K};
use crate::decode::{k4_scales, put_bits, Half8, IntChunk};
use crate::ggml::imatrix::q45_k_weighted;
use crate::ggml::k::search::pack_q4_k;
use crate::{f16_value, BlockFormat, IntBlock, WeightedRowFn};
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
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
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

impl IntBlock for BlockQ4K {
    const MAXQ: u8 = 15;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        k4_scales(src, out);
        let qs = &src[16..144];
        for j in 0..4 {
            for l in 0..32 {
                out.q[64 * j + l] = qs[32 * j + l] & 0xf;
                out.q[64 * j + 32 + l] = qs[32 * j + l] >> 4;
            }
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (c, l) = (j / 64, j % 64);
        put_bits(&mut b[16 + 32 * c + l % 32], if l < 32 { 0 } else { 4 }, 4, q & 15);
    }
}

/// `quantize_row_q4_K_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        let (d, dmin, scales, l) = q45_k_weighted(&x[s.clone()], &qw[s], 15, false);
        *y = pack_q4_k(d, dmin, scales, &l);
    }
}
