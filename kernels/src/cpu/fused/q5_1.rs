//! Fused kernel for Q5_1: two blocks per unit; fifth bits as for Q5_0, per-32 minima as offsets.

use std::arch::x86_64::*;

use quantkit_formats::ggml::q5_1::BlockQ5_1;

use super::bytes::{legacy_nibbles, legacy_scales, load64, nibble_idx, scale_idx, two_mins};
use super::Fused;

impl Fused for BlockQ5_1 {
    const UNIT: usize = 64;
    const UNIT_BYTES: usize = 48;
    const BIAS_SHIFT: u32 = 0;
    const MINS: bool = true;
    /// The unit's bytes, the fifth bits of its 64 weights and its blocks' offsets.
    type State = (__m512i, u64, __m256);
    #[inline(always)]
    unsafe fn state(p: *const u8, avail: usize) -> (__m512i, u64, __m256) {
        // SAFETY: the first block is readable; the second block's fields only when it exists.
        unsafe {
            let two = avail >= 48;
            let h0 = p.add(4).cast::<u32>().read_unaligned() as u64;
            let h1 = if two { p.add(28).cast::<u32>().read_unaligned() as u64 } else { 0 };
            (load64(p, avail), h0 | h1 << 32, two_mins(p, 2, if two { Some(26) } else { None }))
        }
    }
    #[inline(always)]
    unsafe fn sub(_: *const u8, st: &(__m512i, u64, __m256), _: usize) -> (__m512i, __m512) {
        const Q: [u8; 64] = nibble_idx(24, 8);
        const S: [u8; 64] = scale_idx(24);
        // SAFETY: forwarded.
        unsafe {
            let q = legacy_nibbles(st.0, &Q);
            (_mm512_mask_add_epi8(q, st.1, q, _mm512_set1_epi8(16)), legacy_scales(st.0, &S))
        }
    }
    #[inline(always)]
    unsafe fn mins(st: &(__m512i, u64, __m256)) -> __m256 {
        st.2
    }
}
