//! TQ2_0: ternary weights (BitNet b1.58, TriLM): super-blocks of 256, 2-bit codes
//! `q ∈ {0, 1, 2}` for `{−1, 0, +1}`, one fp16 scale after them, `w = d·(q − 1)`. 2.0625
//! bits/weight. Byte `qs[32c + m]` (c = 0, 1) holds weights `128c + 32n + m` in bits `2n..2n+2`
//! (n = 0..4). ggml quantizes it without an imatrix (`quantize_tq2_0` ignores one).

use super::k::QK_K;
use crate::decode::{f16_at, put_bits, Half8, IntChunk};
use crate::{f16_bits, f16_value, BlockFormat, IntBlock};
use quantkit_core::GgmlType;

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockTq2_0 {
    pub qs: [u8; 64],
    pub d: [u8; 2],
}
const _: () = assert!(std::mem::size_of::<BlockTq2_0>() == 66);

impl BlockFormat for BlockTq2_0 {
    const TYPE: GgmlType = GgmlType::TQ2_0;
    const QK: usize = QK_K;

    /// `quantize_row_tq2_0_ref`: `d = max|x|`, `q = lroundf(x/d) + 1`.
    fn quantize(x: &[f32]) -> Self {
        let amax = x.iter().fold(0f32, |a, v| if a > v.abs() { a } else { v.abs() });
        let id = if amax != 0.0 { 1.0 / amax } else { 0.0 };
        let mut qs = [0u8; 64];
        for c in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    let xi = (x[128 * c + 32 * n + m] * id).round() as i32 + 1;
                    q += ((xi & 3) as u8) << (2 * n);
                }
                qs[32 * c + m] = q;
            }
        }
        BlockTq2_0 { qs, d: f16_bits(amax) }
    }

    /// `dequantize_row_tq2_0`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        for c in 0..2 {
            for n in 0..4 {
                for m in 0..32 {
                    let q = (self.qs[32 * c + m] >> (2 * n)) & 3;
                    y[128 * c + 32 * n + m] = (q as i32 - 1) as f32 * d;
                }
            }
        }
    }
}

impl IntBlock for BlockTq2_0 {
    const MAXQ: u8 = 2;

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], _n: usize, out: &mut IntChunk) {
        let d = f16_at(src, 64);
        out.s = [d; 16];
        out.o = [-d; 16];
        out.bias = 1;
        for c in 0..2 {
            for n in 0..4 {
                for m in 0..32 {
                    out.q[128 * c + 32 * n + m] = (src[32 * c + m] >> (2 * n)) & 3;
                }
            }
        }
    }

    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        let (c, n, m) = (j / 128, (j % 128) / 32, j % 32);
        put_bits(&mut b[32 * c + m], 2 * n as u32, 2, q);
    }
}
