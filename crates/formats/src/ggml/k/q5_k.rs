//! Q5_K: as Q4_K with a 5th bit per weight in `qh`. 5.5 bits/weight.

use super::{get_scale_min_k4, QK_K};
use crate::decode::{k4_scales, put_bits, Half8, IntChunk};
use crate::ggml::imatrix::q45_k_weighted;
use crate::ggml::k::search::pack_q5_k;
use crate::{f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);

impl BlockFormat for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = QK_K;

    fn quantize(x: &[f32]) -> Self {
        super::search::quantize_q5_k(x)
    }

    /// `dequantize_row_q5_K`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let min = f16_value(self.dmin);
        let (mut u1, mut u2) = (1u8, 2u8);
        for j in 0..4 {
            let (sc1, m1) = get_scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = get_scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let ql = &self.qs[32 * j..32 * j + 32];
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[64 * j + l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
                y[64 * j + 32 + l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
            u1 <<= 2;
            u2 <<= 2;
        }
    }
}

impl IntBlock for BlockQ5K {
    const MAXQ: u8 = 31;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        k4_scales(src, out);
        let (qh, qs) = (&src[16..48], &src[48..176]);
        for j in 0..4 {
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * j)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * j + 1)) & 1) << 4;
                out.q[64 * j + l] = (qs[32 * j + l] & 0xf) | h1;
                out.q[64 * j + 32 + l] = (qs[32 * j + l] >> 4) | h2;
            }
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (c, l) = (j / 64, j % 64);
        put_bits(&mut b[48 + 32 * c + l % 32], if l < 32 { 0 } else { 4 }, 4, q & 15);
        put_bits(&mut b[16 + l % 32], (2 * c + (l >= 32) as usize) as u32, 1, q >> 4);
    }
}

/// `quantize_row_q5_K_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        let (d, dmin, scales, l) = q45_k_weighted(&x[s.clone()], &qw[s], 31, true);
        *y = pack_q5_k(d, dmin, scales, &l);
    }
}
