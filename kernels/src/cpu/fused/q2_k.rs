//! Fused kernel for Q2_K: one super-block per unit; per-16 scales and mins.

use std::arch::x86_64::*;

use quantkit_formats::ggml::k::q2_k::BlockQ2K;

use super::bytes::{ld, shifts, two_halves, K6_IDX};
use super::Fused;

impl Fused for BlockQ2K {
    const UNIT: usize = 256;
    const UNIT_BYTES: usize = 84;
    const BIAS_SHIFT: u32 = 0;
    const MINS16: bool = true;
    /// `d·scale` and `−dmin·min` per 16 weights.
    type State = (__m512, __m512);
    #[inline(always)]
    unsafe fn state(p: *const u8, _: usize) -> (__m512, __m512) {
        // SAFETY: a whole super-block is readable (k-quant rows are whole super-blocks).
        unsafe {
            let dd = two_halves(p.add(80));
            let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast()));
            let lo = _mm512_cvtepi32_ps(_mm512_and_si512(sc, _mm512_set1_epi32(0x0f)));
            let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(sc));
            let d = _mm512_broadcastss_ps(dd);
            let dmin = _mm512_broadcastss_ps(_mm_shuffle_ps::<1>(dd, dd));
            (_mm512_mul_ps(lo, d), _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(hi, dmin)))
        }
    }
    #[inline(always)]
    unsafe fn sub(p: *const u8, st: &(__m512, __m512), j: usize) -> (__m512i, __m512) {
        // Weights 128n + 64·part + i: two bits of qs[32n + i % 32] at 4·part + 2·(i / 32).
        const SH: [[u8; 64]; 2] = [shifts([0, 0, 2, 2]), shifts([4, 4, 6, 6])];
        let (n, part) = (j / 2, j % 2);
        // SAFETY: qs (16..80) reads stay inside the super-block.
        unsafe {
            let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p.add(16 + 32 * n).cast()));
            let q = _mm512_and_si512(_mm512_srlv_epi16(v, ld(&SH[part])), _mm512_set1_epi8(3));
            let idx = _mm512_loadu_si512(K6_IDX[j].as_ptr().cast());
            (q, _mm512_permutexvar_ps(idx, st.0))
        }
    }
    #[inline(always)]
    unsafe fn mins16(st: &(__m512, __m512)) -> __m512 {
        st.1
    }
}
