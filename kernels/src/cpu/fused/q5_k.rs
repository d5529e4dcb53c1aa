//! Fused kernel for Q5_K: as Q4_K with the fifth bits from `qh`.

use std::arch::x86_64::*;

use quantkit_formats::ggml::k::q5_k::BlockQ5K;

use super::bytes::{k4_lanes, k4_nibbles, k4_scales, ld, shifts};
use super::Fused;

impl Fused for BlockQ5K {
    const UNIT: usize = 256;
    const UNIT_BYTES: usize = 176;
    const BIAS_SHIFT: u32 = 0;
    const MINS: bool = true;
    type State = (__m512, __m256);
    #[inline(always)]
    unsafe fn state(p: *const u8, _: usize) -> (__m512, __m256) {
        // SAFETY: a whole super-block is readable (k-quant rows are whole super-blocks).
        unsafe { k4_scales(p) }
    }
    #[inline(always)]
    unsafe fn sub(p: *const u8, st: &(__m512, __m256), j: usize) -> (__m512i, __m512) {
        // Weights 64j + i: a nibble of qs[32j + i % 32] (low for i < 32) plus 16 times bit
        // 2j + i / 32 of qh[i % 32].
        const QH: [[u8; 64]; 4] =
            [shifts([0, 0, 1, 1]), shifts([2, 2, 3, 3]), shifts([4, 4, 5, 5]), shifts([6, 6, 7, 7])];
        // SAFETY: qh (16..48) and qs (48..176) reads stay inside the super-block.
        unsafe {
            let lo = k4_nibbles(p.add(48 + 32 * j));
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16).cast()));
            let hi = _mm512_and_si512(_mm512_srlv_epi16(qh, ld(&QH[j])), _mm512_set1_epi8(1));
            (_mm512_or_si512(lo, _mm512_slli_epi16::<4>(hi)), k4_lanes(st, j))
        }
    }
    #[inline(always)]
    unsafe fn mins(st: &(__m512, __m256)) -> __m256 {
        st.1
    }
}
