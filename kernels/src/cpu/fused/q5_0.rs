//! Fused kernel for Q5_0: two blocks per unit; the fifth bits are added as a masked +16; codes biased by 16.

use std::arch::x86_64::*;

use quantkit_formats::ggml::q5_0::BlockQ5_0;

use super::bytes::{legacy_nibbles, legacy_scales, load64, nibble_idx, scale_idx};
use super::Fused;

impl Fused for BlockQ5_0 {
    const UNIT: usize = 64;
    const UNIT_BYTES: usize = 44;
    const BIAS_SHIFT: u32 = 4;
    /// The unit's bytes and the fifth bits of its 64 weights.
    type State = (__m512i, u64);
    #[inline(always)]
    unsafe fn state(p: *const u8, avail: usize) -> (__m512i, u64) {
        // SAFETY: the first block is readable (the caller's contract); the second block's qh only
        // when it exists.
        unsafe {
            let h0 = p.add(2).cast::<u32>().read_unaligned() as u64;
            let h1 = if avail >= 28 { p.add(24).cast::<u32>().read_unaligned() as u64 } else { 0 };
            (load64(p, avail), h0 | h1 << 32)
        }
    }
    #[inline(always)]
    unsafe fn sub(_: *const u8, st: &(__m512i, u64), _: usize) -> (__m512i, __m512) {
        const Q: [u8; 64] = nibble_idx(22, 6);
        const S: [u8; 64] = scale_idx(22);
        // SAFETY: forwarded.
        unsafe {
            let q = legacy_nibbles(st.0, &Q);
            (_mm512_mask_add_epi8(q, st.1, q, _mm512_set1_epi8(16)), legacy_scales(st.0, &S))
        }
    }
}
