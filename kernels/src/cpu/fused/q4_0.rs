//! Fused kernel for Q4_0: two blocks (36 bytes) per unit; codes biased by 8.

use std::arch::x86_64::*;

use quantkit_formats::ggml::q4_0::BlockQ4_0;

use super::bytes::{legacy_nibbles, legacy_scales, load64, nibble_idx, scale_idx};
use super::Fused;

impl Fused for BlockQ4_0 {
    const UNIT: usize = 64;
    const UNIT_BYTES: usize = 36;
    const BIAS_SHIFT: u32 = 3;
    type State = __m512i;
    #[inline(always)]
    unsafe fn state(p: *const u8, avail: usize) -> __m512i {
        // SAFETY: forwarded.
        unsafe { load64(p, avail) }
    }
    #[inline(always)]
    unsafe fn sub(_: *const u8, x: &__m512i, _: usize) -> (__m512i, __m512) {
        const Q: [u8; 64] = nibble_idx(18, 2);
        const S: [u8; 64] = scale_idx(18);
        // SAFETY: forwarded.
        unsafe { (legacy_nibbles(*x, &Q), legacy_scales(*x, &S)) }
    }
}
