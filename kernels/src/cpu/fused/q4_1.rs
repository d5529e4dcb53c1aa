//! Fused kernel for Q4_1: two blocks per unit; per-32 minima as offsets.

use std::arch::x86_64::*;

use quantkit_formats::ggml::q4_1::BlockQ4_1;

use super::bytes::{legacy_nibbles, legacy_scales, load64, nibble_idx, scale_idx, two_mins};
use super::Fused;

impl Fused for BlockQ4_1 {
    const UNIT: usize = 64;
    const UNIT_BYTES: usize = 40;
    const BIAS_SHIFT: u32 = 0;
    const MINS: bool = true;
    /// The unit's bytes and its two blocks' offsets `m` (lanes 0, 1).
    type State = (__m512i, __m256);
    #[inline(always)]
    unsafe fn state(p: *const u8, avail: usize) -> (__m512i, __m256) {
        // SAFETY: the first block is readable; the second block's `m` only when it exists.
        unsafe { (load64(p, avail), two_mins(p, 2, if avail >= 40 { Some(22) } else { None })) }
    }
    #[inline(always)]
    unsafe fn sub(_: *const u8, st: &(__m512i, __m256), _: usize) -> (__m512i, __m512) {
        const Q: [u8; 64] = nibble_idx(20, 4);
        const S: [u8; 64] = scale_idx(20);
        // SAFETY: forwarded.
        unsafe { (legacy_nibbles(st.0, &Q), legacy_scales(st.0, &S)) }
    }
    #[inline(always)]
    unsafe fn mins(st: &(__m512i, __m256)) -> __m256 {
        st.1
    }
}
