//! Fused kernel for Q6_K: one super-block per unit; int8 scales per 16, codes biased by 32.

use std::arch::x86_64::*;

use quantkit_formats::ggml::k::q6_k::BlockQ6K;

use super::bytes::{ld, shifts, K6_IDX};
use super::Fused;

impl Fused for BlockQ6K {
    const UNIT: usize = 256;
    const UNIT_BYTES: usize = 210;
    const BIAS_SHIFT: u32 = 5;
    /// `d·scale` per 16 weights.
    type State = __m512;
    #[inline(always)]
    unsafe fn state(p: *const u8, _: usize) -> __m512 {
        // SAFETY: a whole super-block is readable; d is the f16 at 208..210 (its last two bytes).
        unsafe {
            let d = _mm_cvtph_ps(_mm_cvtsi32_si128(p.add(208).cast::<u16>().read_unaligned() as i32));
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(192).cast())));
            _mm512_mul_ps(sc, _mm512_broadcastss_ps(d))
        }
    }
    #[inline(always)]
    unsafe fn sub(p: *const u8, st: &__m512, j: usize) -> (__m512i, __m512) {
        // Weights 128n + 64·part + i: ql[64n + i] (low nibble for part 0, high for part 1) and two
        // bits of qh[32n + i % 32] at 2·(2·part + i / 32).
        const QH: [[u8; 64]; 2] = [shifts([0, 0, 2, 2]), shifts([4, 4, 6, 6])];
        let (n, part) = (j / 2, j % 2);
        // SAFETY: ql (0..128) and qh (128..192) reads stay inside the super-block.
        unsafe {
            let ql = _mm512_loadu_si512(p.add(64 * n).cast());
            let lo = if part == 0 { ql } else { _mm512_srli_epi16::<4>(ql) };
            let lo = _mm512_and_si512(lo, _mm512_set1_epi8(0x0f));
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(128 + 32 * n).cast()));
            let hi = _mm512_and_si512(_mm512_srlv_epi16(qh, ld(&QH[part])), _mm512_set1_epi8(3));
            let q = _mm512_or_si512(lo, _mm512_slli_epi16::<4>(hi));
            let idx = _mm512_loadu_si512(K6_IDX[j].as_ptr().cast());
            (q, _mm512_permutexvar_ps(idx, *st))
        }
    }
}
