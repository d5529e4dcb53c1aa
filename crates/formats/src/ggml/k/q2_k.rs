//! Q2_K: 16 sub-blocks of 16 weights; 4-bit scale and 4-bit min per sub-block (scaled by fp16
//! `d` and `dmin`), 2-bit codes. `w = d·sc·q − dmin·m`. 2.625 bits/weight.

use super::QK_K;
use crate::decode::{f16_at, put_bits, Half8, IntChunk};
use crate::ggml::imatrix::{block_weights, mean_square};
use crate::ggml::k::search::{make_qkx3_quants, make_qp_quants, q2_k_finish};
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
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
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
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

impl IntBlock for BlockQ2K {
    const MAXQ: u8 = 3;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let (scales, qs) = (&src[0..16], &src[16..80]);
        let d = f16_at(src, 80);
        let dmin = f16_at(src, 82);
        for g in 0..16 {
            out.s[g] = d * (scales[g] & 0xf) as f32;
            out.o[g] = -(dmin * (scales[g] >> 4) as f32);
        }
        out.bias = 0;
        // Group g = 8n + 2·(shift/2) + half covers weights 16g..16g+16.
        for n in 0..2 {
            for (k, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                for l in 0..32 {
                    out.q[128 * n + 32 * k + l] = (qs[32 * n + l] >> shift) & 3;
                }
            }
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (n, k, l) = (j / 128, (j % 128) / 32, j % 32);
        put_bits(&mut b[16 + 32 * n + l], 2 * k as u32, 2, q & 3);
    }
}

/// `quantize_row_q2_K_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ2K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let (x, qw) = (&x[QK_K * i..QK_K * (i + 1)], &qw[QK_K * i..QK_K * (i + 1)]);
        let sigma2 = mean_square(x);
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let s = 16 * j..16 * j + 16;
            let weight = block_weights::<16>(&x[s.clone()], &qw[s.clone()], sigma2);
            for w in weight {
                sw[j] += w;
            }
            (scales[j], mins[j]) =
                make_qkx3_quants(&x[s.clone()], &weight, 3, &mut l[s], -0.9, 0.05, 36, false);
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
        let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
        let mut sc = [0u8; 16];
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        *y = BlockQ2K::new(sc, [0u8; 64], dm, mm);
        q2_k_finish(x, &mut l, y);
    }
}
