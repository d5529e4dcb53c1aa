//! Q3_K: 16 sub-blocks of 16 weights, 6-bit signed scales (packed in 12 bytes) times fp16 `d`,
//! 3-bit codes (2 low bits in `qs`, high bit in `hmask`, set meaning "no −4 offset").
//! 3.4375 bits/weight.

use super::QK_K;
use crate::decode::{f16_at, put_bits, Half8, IntChunk};
use crate::ggml::imatrix::block_weights;
use crate::ggml::k::search::{make_qx_quants, q3_k_finish};
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
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
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
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

impl IntBlock for BlockQ3K {
    const MAXQ: u8 = 7;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (hmask, qs) = (&src[0..32], &src[32..96]);
        let mut sc12 = [0u8; 12];
        sc12.copy_from_slice(&src[96..108]);
        let scales = unpack_q3_scales(&sc12);
        let d = f16_at(src, 108);
        for g in 0..16 {
            let dl = d * (scales[g] as i32 - 32) as f32;
            out.s[g] = dl;
            out.o[g] = -4.0 * dl;
        }
        out.bias = 4;
        for n in 0..2 {
            for (k, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                let m = 4 * n + k;
                for l in 0..32 {
                    let lo = (qs[32 * n + l] >> shift) & 3;
                    let hi = ((hmask[l] >> m) & 1) << 2;
                    out.q[128 * n + 32 * k + l] = lo | hi;
                }
            }
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (n, k, l) = (j / 128, (j % 128) / 32, j % 32);
        put_bits(&mut b[32 + 32 * n + l], 2 * k as u32, 2, q & 3);
        put_bits(&mut b[l], (4 * n + k) as u32, 1, q >> 2);
    }
}

/// `quantize_row_q3_K_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ3K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let (x, qw) = (&x[QK_K * i..QK_K * (i + 1)], &qw[QK_K * i..QK_K * (i + 1)]);
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let s = 16 * j..16 * j + 16;
            let weight = block_weights::<16>(&x[s.clone()], &qw[s.clone()], sigma2);
            let mut sumw = 0.0f32;
            for w in weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(&x[s.clone()], 4, &mut l[s], 1, Some(&weight));
        }
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(&scales, 32, &mut ls, 1, Some(&sw));
        *y = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: f16_bits(d_block) };
        for j in 0..16 {
            let mut lv = ls[j] as u8;
            if j < 8 {
                y.scales[j] = lv & 0xF;
            } else {
                y.scales[j - 8] |= (lv & 0xF) << 4;
            }
            lv >>= 4;
            y.scales[j % 4 + 8] |= lv << (2 * (j / 4));
        }
        q3_k_finish(x, &mut l, y);
    }
}
