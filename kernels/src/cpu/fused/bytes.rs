//! Register-level helpers the fused formats share: masked loads, byte-pick tables for legacy
//! blocks, and the k-quant scale unpackers.

use std::arch::x86_64::*;

/// 64 bytes from `p`, of which `avail` may be read (masked load past that).
#[inline(always)]
pub(super) unsafe fn load64(p: *const u8, avail: usize) -> __m512i {
    // SAFETY: a full load only when 64 bytes are readable; masked-off bytes are never accessed.
    unsafe {
        if avail >= 64 {
            _mm512_loadu_si512(p.cast())
        } else {
            let m = if avail == 0 { 0 } else { u64::MAX >> (64 - avail) };
            _mm512_maskz_loadu_epi8(m, p.cast())
        }
    }
}

#[inline(always)]
pub(super) unsafe fn ld(a: &[u8; 64]) -> __m512i {
    // SAFETY: 64 readable bytes; AVX-512F is enabled by the caller.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

/// Byte picks for two legacy blocks of `bb` bytes whose 16 nibble bytes start at `qs`: each
/// block's bytes twice (low nibbles, then high nibbles after the shift by [`NIB_SHIFT`]).
pub(super) const fn nibble_idx(bb: usize, qs: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        a[i] = (bb * (i / 32) + qs + i % 16) as u8;
        i += 1;
    }
    a
}

/// Byte picks that put block 0's f16 scale in words 0..8 and block 1's in words 8..16.
pub(super) const fn scale_idx(bb: usize) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut i = 0;
    while i < 32 {
        a[i] = ((i / 16) * bb + i % 2) as u8;
        i += 1;
    }
    a
}

/// Shift counts for `vpsrlvw`, one per 128-bit lane, as the bytes of 32 u16 words.
pub(super) const fn shifts(per_lane: [u16; 4]) -> [u8; 64] {
    let mut a = [0u8; 64];
    let mut h = 0;
    while h < 32 {
        let v = per_lane[h / 8];
        a[2 * h] = v as u8;
        a[2 * h + 1] = (v >> 8) as u8;
        h += 1;
    }
    a
}

/// 128-bit lanes 1 and 3 (high nibbles of each legacy block) shift by 4.
pub(super) const NIB_SHIFT: [u8; 64] = shifts([0, 4, 0, 4]);

/// Legacy 4-bit codes of two blocks (`idx` from [`nibble_idx`]) in weight order.
#[inline(always)]
pub(super) unsafe fn legacy_nibbles(x: __m512i, idx: &[u8; 64]) -> __m512i {
    // SAFETY: VBMI/BW are enabled by the caller.
    unsafe {
        let v = _mm512_permutexvar_epi8(ld(idx), x);
        _mm512_and_si512(_mm512_srlv_epi16(v, ld(&NIB_SHIFT)), _mm512_set1_epi8(0x0f))
    }
}

/// The two blocks' f16 scales, each over its 8 lanes.
#[inline(always)]
pub(super) unsafe fn legacy_scales(x: __m512i, idx: &[u8; 64]) -> __m512 {
    // SAFETY: VBMI/F16C are enabled by the caller.
    unsafe { _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi8(ld(idx), x))) }
}

/// The f16 offsets of a legacy unit's blocks (at `p + a`, and `p + b` when the second block
/// exists) as f32 lanes 0 and 1, zeros elsewhere.
#[inline(always)]
pub(super) unsafe fn two_mins(p: *const u8, a: usize, b: Option<usize>) -> __m256 {
    // SAFETY: the caller guarantees the bytes read are inside the weights; F16C enabled.
    unsafe {
        let m0 = p.add(a).cast::<u16>().read_unaligned() as i32;
        let m1 = b.map_or(0, |b| p.add(b).cast::<u16>().read_unaligned() as i32);
        _mm256_zextps128_ps256(_mm_cvtph_ps(_mm_cvtsi32_si128(m0 | m1 << 16)))
    }
}

/// `d` (and the f16 after it) of a super-block, as f32 lanes 0 and 1.
#[inline(always)]
pub(super) unsafe fn two_halves(p: *const u8) -> __m128 {
    // SAFETY: 4 readable bytes; F16C enabled by the caller.
    unsafe { _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned())) }
}

/// Lane → which of 16 scales, for 64 weights `j` of a super-block: Q4_K (8 scales of 32 weights).
pub(super) static K4_IDX: [[i32; 16]; 4] = {
    let mut a = [[0i32; 16]; 4];
    let mut j = 0;
    while j < 4 {
        let mut l = 0;
        while l < 16 {
            a[j][l] = (2 * j + l / 8) as i32;
            l += 1;
        }
        j += 1;
    }
    a
};

/// Q6_K (16 scales of 16 weights).
pub(super) static K6_IDX: [[i32; 16]; 4] = {
    let mut a = [[0i32; 16]; 4];
    let mut j = 0;
    while j < 4 {
        let mut l = 0;
        while l < 16 {
            a[j][l] = (4 * j + l / 4) as i32;
            l += 1;
        }
        j += 1;
    }
    a
};

/// Eight bytes → eight f32.
#[inline(always)]
pub(super) unsafe fn u8x8(v: u64) -> __m256 {
    // SAFETY: AVX2 enabled by the caller.
    unsafe { _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64))) }
}

/// A Q4_K/Q5_K super-block's `d·scale` per 32 weights (lanes 0..8 of the first value) and
/// `−dmin·min` per 32 (d, dmin at bytes 0..4, the 12 packed scale bytes at 4..16).
#[inline(always)]
pub(super) unsafe fn k4_scales(p: *const u8) -> (__m512, __m256) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    // SAFETY: the caller's super-block is readable; AVX2/F16C enabled by the caller.
    unsafe {
        let dd = two_halves(p);
        let s = p.add(4).cast::<u32>();
        let (u0, u1, u2) = (s.read_unaligned(), s.add(1).read_unaligned(), s.add(2).read_unaligned());
        // ggml's unpacking of the 12 scale bytes: 8 six-bit scales, then 8 six-bit mins.
        let sc = (u0 & K1) as u64 | (((u2 & K2) | (((u0 >> 6) & K3) << 4)) as u64) << 32;
        let mn = (u1 & K1) as u64 | ((((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4)) as u64) << 32;
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_shuffle_ps::<1>(dd, dd));
        (
            _mm512_castps256_ps512(_mm256_mul_ps(u8x8(sc), d)),
            _mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(u8x8(mn), dmin)),
        )
    }
}

/// 32 bytes of Q4_K/Q5_K nibbles → 64 codes in weight order (low nibbles, then high).
#[inline(always)]
pub(super) unsafe fn k4_nibbles(qs: *const u8) -> __m512i {
    const HALF: [u8; 64] = shifts([0, 0, 4, 4]);
    // SAFETY: 32 readable bytes; AVX-512 BW enabled by the caller.
    unsafe {
        let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(qs.cast()));
        _mm512_and_si512(_mm512_srlv_epi16(v, ld(&HALF)), _mm512_set1_epi8(0x0f))
    }
}

/// The weight scale of each lane of 64 weights `j` of a Q4_K/Q5_K super-block.
#[inline(always)]
pub(super) unsafe fn k4_lanes(st: &(__m512, __m256), j: usize) -> __m512 {
    // SAFETY: AVX-512F enabled by the caller; j < 4.
    unsafe { _mm512_permutexvar_ps(_mm512_loadu_si512(K4_IDX[j].as_ptr().cast()), st.0) }
}
