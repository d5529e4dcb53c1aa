//! Q5_0: 32 weights, fp16 scale, 5-bit codes `q ∈ [0,31]` (low 4 bits in `qs`, 5th bits in `qh`,
//! bit j for weight j), `w = d·(q − 16)`. 5.5 bits/weight.

use crate::decode::{fifth_bits, legacy_scales, nibbles, set_fifth, set_nibble, Half8, IntChunk};
use crate::ggml::imatrix::{legacy_blocks, q5_high_bits};
use crate::ggml::k::search::make_qx_quants;
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);
    const QK: usize = 32;

    /// `quantize_row_q5_0_ref`.
    fn quantize(x: &[f32]) -> Self {
        let max = super::signed_absmax(x);
        let d = max / -16.0;
        let id = super::inv(d);
        let mut qs = [0u8; 16];
        let mut qh = 0u32;
        for j in 0..16 {
            let x0 = x[j] * id;
            let x1 = x[j + 16] * id;
            let q0 = ((x0 + 16.5) as i8).min(31) as u8;
            let q1 = ((x1 + 16.5) as i8).min(31) as u8;
            qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= (((q0 & 0x10) >> 4) as u32) << j;
            qh |= (((q1 & 0x10) >> 4) as u32) << (j + 16);
        }
        BlockQ5_0 { d: f16_bits(d), qh: qh.to_le_bytes(), qs }
    }

    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..16 {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (((self.qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
            y[j + 16] = (((self.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
        }
    }
}

impl IntBlock for BlockQ5_0 {
    const MAXQ: u8 = 31;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 22, None, -16.0, out);
        for b in 0..n / 32 {
            let blk = &src[b * 22..b * 22 + 22];
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let q = &mut out.q[32 * b..32 * b + 32];
            nibbles(&blk[6..22], q);
            fifth_bits(qh, q);
        }
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 6, j, q & 15);
        set_fifth(b, 2, j, q);
    }
}

/// `quantize_row_q5_0_impl`.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5_0] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0i8; 32];
        y.d = f16_bits(make_qx_quants(xb, 16, &mut l, 1, Some(weight)));
        (y.qs, y.qh) = q5_high_bits(&l.map(|v| v as u8));
    });
}
