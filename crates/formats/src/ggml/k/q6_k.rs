//! Q6_K: 16 sub-blocks of 16 weights, int8 scales times fp16 `d`, 6-bit codes (4 low bits in
//! `ql`, 2 high bits in `qh`), `w = d·sc·(q − 32)`. 6.5625 bits/weight.

use super::QK_K;
use crate::decode::{f16_at, put_bits, Half8, IntChunk};
use crate::ggml::k::search::quantize_q6_k_weighted;
use crate::{f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

impl BlockFormat for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = QK_K;

    fn quantize(x: &[f32]) -> Self {
        super::search::quantize_q6_k(x)
    }

    /// `dequantize_row_q6_K`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        for n in 0..2 {
            let (ql, qh, sc) = (&self.ql[64 * n..], &self.qh[32 * n..], &self.scales[8 * n..]);
            let y = &mut y[128 * n..];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

impl IntBlock for BlockQ6K {
    const MAXQ: u8 = 63;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (ql, qh, sc) = (&src[0..128], &src[128..192], &src[192..208]);
        let d = f16_at(src, 208);
        for g in 0..16 {
            let s = d * (sc[g] as i8) as f32;
            out.s[g] = s;
            out.o[g] = -32.0 * s;
        }
        out.bias = 32;
        for n in 0..2 {
            let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
            let q = &mut out.q[128 * n..128 * n + 128];
            for l in 0..32 {
                q[l] = (ql[l] & 0xf) | ((qh[l] & 3) << 4);
                q[l + 32] = (ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4);
                q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (n, m) = (j / 128, j % 128);
        let (quarter, l) = (m / 32, m % 32);
        let ql = 64 * n + l + if quarter % 2 == 1 { 32 } else { 0 };
        put_bits(&mut b[ql], if quarter >= 2 { 4 } else { 0 }, 4, q & 15);
        put_bits(&mut b[128 + 32 * n + l], 2 * quarter as u32, 2, q >> 4);
    }
}

/// `quantize_row_q6_K_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ6K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        *y = quantize_q6_k_weighted(&x[s.clone()], Some(&qw[s]));
    }
}
