//! Fused kernel for Q4_K: one super-block per unit; 6-bit scales and mins per 32.

use std::arch::x86_64::*;

use quantkit_formats::ggml::k::q4_k::BlockQ4K;

use super::bytes::{k4_lanes, k4_nibbles, k4_scales};
use super::Fused;

impl Fused for BlockQ4K {
    const UNIT: usize = 256;
    const UNIT_BYTES: usize = 144;
    const BIAS_SHIFT: u32 = 0;
    const MINS: bool = true;
    /// `d·scale` per 32 weights (lanes 0..8) and `−dmin·min` per 32.
    type State = (__m512, __m256);
    #[inline(always)]
    unsafe fn state(p: *const u8, _: usize) -> (__m512, __m256) {
        // SAFETY: a whole super-block is readable (k-quant rows are whole super-blocks).
        unsafe { k4_scales(p) }
    }
    #[inline(always)]
    unsafe fn sub(p: *const u8, st: &(__m512, __m256), j: usize) -> (__m512i, __m512) {
        // SAFETY: bytes 16 + 32j .. + 32 lie inside the super-block.
        unsafe { (k4_nibbles(p.add(16 + 32 * j)), k4_lanes(st, j)) }
    }
    #[inline(always)]
    unsafe fn mins(st: &(__m512, __m256)) -> __m256 {
        st.1
    }
}
