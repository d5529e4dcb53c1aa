//! Fused kernel for Q8_0: two blocks (68 bytes) per unit, read with two loads; signed bytes biased by 128.

use std::arch::x86_64::*;

use quantkit_formats::ggml::q8_0::BlockQ8_0;

use super::bytes::{ld, legacy_scales, load64, scale_idx};
use super::Fused;

impl Fused for BlockQ8_0 {
    const UNIT: usize = 64;
    const UNIT_BYTES: usize = 68;
    const BIAS_SHIFT: u32 = 7;
    type State = (__m512i, __m512i);
    #[inline(always)]
    unsafe fn state(p: *const u8, avail: usize) -> (__m512i, __m512i) {
        // SAFETY: forwarded; the second load is masked to what is readable.
        unsafe { (load64(p, avail), load64(p.wrapping_add(64), avail.saturating_sub(64))) }
    }
    #[inline(always)]
    unsafe fn sub(_: *const u8, st: &(__m512i, __m512i), _: usize) -> (__m512i, __m512) {
        // Block 0's codes at bytes 2..34, block 1's at 36..68 (the last four from the second load).
        const Q: [u8; 64] = {
            let mut a = [0u8; 64];
            let mut i = 0;
            while i < 64 {
                a[i] = (if i < 32 { 2 + i } else { 4 + i }) as u8;
                i += 1;
            }
            a
        };
        const S: [u8; 64] = scale_idx(34);
        // SAFETY: forwarded.
        unsafe {
            let q = _mm512_permutex2var_epi8(st.0, ld(&Q), st.1);
            (_mm512_xor_si512(q, _mm512_set1_epi8(-128)), legacy_scales(st.0, &S))
        }
    }
}
