//! x86-64 dot products (AVX-512 with VNNI, AVX2 + FMA) and the `#[target_feature]` entry points
//! that instantiate the generic drivers of `cpu/mod.rs` for each format.
//!
//! AVX-512: `vpdpbusd` multiplies 64 unsigned weight codes by 64 signed activation codes into 16
//! lanes of 4 products each; lanes 4g..4g+3 belong to 16-weight group g, so one `vpermps` spreads
//! the 4 group factors `s_w·d_a` over the lanes and one FMA accumulates them in f32.
//! AVX2 widens to i16 and uses `vpmaddwd` (exact; `vpmaddubsw` would saturate on Q8_0 codes).

use std::arch::x86_64::*;

use super::{FloatDot, IntDot};
use crate::act::QAct;
use crate::decode::{IntChunk, CHUNK, GROUP};

#[derive(Debug)]
pub struct Avx512;

/// The start of `vpdpbusd` for 16 lanes of a chunk with biased codes: `bias · s4n` (each lane's
/// `−bias·Σa` of its 4 activation codes); zero for unbiased codes.
///
/// # Safety
/// Inside an AVX-512F kernel; 16 readable lanes at `s4n` (`QAct` pads them).
#[inline(always)]
unsafe fn bias_start(bias: u8, s4n: *const i32) -> __m512i {
    // SAFETY: as documented.
    unsafe {
        if bias == 0 {
            _mm512_setzero_si512()
        } else {
            _mm512_mullo_epi32(_mm512_loadu_si512(s4n.cast()), _mm512_set1_epi32(bias as i32))
        }
    }
}

impl IntDot for Avx512 {
    type Acc = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut __m512, ch: &IntChunk, a: &QAct, off: usize, n: usize) {
        // SAFETY (whole body): the caller guarantees AVX-512F/BW/VNNI and off + n ≤ a.len();
        // every load below stays inside ch (256 codes, 16 scales) or inside a (masked loads
        // where a group index could pass the end).
        unsafe {
            let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
            let aq = a.q.as_ptr().add(off);
            let ad = a.d.as_ptr().add(off / GROUP);
            // Biased codes (o = −bias·s): each lane's sum starts from −bias·Σa of its 4 codes
            // (`QAct::s4n`, padded to whole 64-code units), so Σ (q − bias)·a is exact in integers.
            let s4n = a.s4n.as_ptr().add(off / 4);
            let mut j = 0;
            while j + 64 <= n {
                let w = _mm512_loadu_si512(ch.q.as_ptr().add(j).cast());
                let x = _mm512_loadu_si512(aq.add(j).cast());
                let isum = _mm512_dpbusd_epi32(bias_start(ch.bias, s4n.add(j / 4)), w, x);
                let f =
                    _mm_mul_ps(_mm_loadu_ps(ch.s.as_ptr().add(j / GROUP)), _mm_loadu_ps(ad.add(j / GROUP)));
                let f = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, *acc);
                j += 64;
            }
            if j < n {
                // 32 codes left (n is a multiple of 32).
                let w = _mm512_maskz_loadu_epi8(0xffff_ffff, ch.q.as_ptr().add(j).cast());
                let x = _mm512_maskz_loadu_epi8(0xffff_ffff, aq.add(j).cast());
                // Lanes 8..16 of `start` cover padding codes (zero), so they add nothing.
                let isum = _mm512_dpbusd_epi32(bias_start(ch.bias, s4n.add(j / 4)), w, x);
                let f = _mm_mul_ps(
                    _mm_maskz_loadu_ps(0b11, ch.s.as_ptr().add(j / GROUP)),
                    _mm_maskz_loadu_ps(0b11, ad.add(j / GROUP)),
                );
                let f = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(f));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, *acc);
            }
            if ch.bias == 0 {
                let g = n / GROUP;
                let m: __mmask16 = if g >= 16 { 0xffff } else { (1u16 << g) - 1 };
                let o = _mm512_maskz_loadu_ps(m, ch.o.as_ptr());
                let s = _mm512_maskz_loadu_ps(m, a.sum.as_ptr().add(off / GROUP));
                *acc = _mm512_fmadd_ps(o, s, *acc);
            }
        }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m512) -> f32 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm512_reduce_add_ps(acc) }
    }
}

impl FloatDot for Avx512 {
    type Acc = __m512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut __m512, w: &[f32; CHUNK], x: &[f32], n: usize) {
        // SAFETY: AVX-512F is guaranteed by the caller; x.len() ≥ n; the tail is a masked load.
        unsafe {
            let mut i = 0;
            while i + 16 <= n {
                let a = _mm512_loadu_ps(w.as_ptr().add(i));
                let b = _mm512_loadu_ps(x.as_ptr().add(i));
                *acc = _mm512_fmadd_ps(a, b, *acc);
                i += 16;
            }
            if i < n {
                let m: __mmask16 = (1u16 << (n - i)) - 1;
                let a = _mm512_maskz_loadu_ps(m, w.as_ptr().add(i));
                let b = _mm512_maskz_loadu_ps(m, x.as_ptr().add(i));
                *acc = _mm512_fmadd_ps(a, b, *acc);
            }
        }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m512) -> f32 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm512_reduce_add_ps(acc) }
    }
}

#[derive(Debug)]
pub struct Avx2;

/// Sum of the 8 lanes (also used by `cpu::fused`).
#[inline(always)]
pub(super) unsafe fn hsum256(v: __m256) -> f32 {
    // SAFETY: AVX is guaranteed by the caller.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

impl IntDot for Avx2 {
    type Acc = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut __m256, ch: &IntChunk, a: &QAct, off: usize, n: usize) {
        // SAFETY: AVX2+FMA guaranteed by the caller; 16-byte loads stay inside groups < n.
        unsafe {
            let mut offs = 0f32;
            // Biased codes (o = −bias·s): subtract bias·(a₂ᵢ + a₂ᵢ₊₁) per lane in integers, so
            // Σ (q − bias)·a is exact and no float offset term is added.
            let bias = _mm256_set1_epi16(ch.bias as i16);
            for g in 0..n / GROUP {
                let ag = off / GROUP + g;
                let w = _mm256_cvtepu8_epi16(_mm_loadu_si128(ch.q.as_ptr().add(g * GROUP).cast()));
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(a.q.as_ptr().add(off + g * GROUP).cast()));
                let mut p = _mm256_madd_epi16(w, x);
                if ch.bias != 0 {
                    p = _mm256_sub_epi32(p, _mm256_madd_epi16(bias, x));
                } else {
                    offs += ch.o[g] * a.sum[ag];
                }
                let f = _mm256_set1_ps(ch.s[g] * a.d[ag]);
                *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, *acc);
            }
            *acc = _mm256_add_ps(*acc, _mm256_setr_ps(offs, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
        }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m256) -> f32 {
        // SAFETY: forwarded.
        unsafe { hsum256(acc) }
    }
}

impl FloatDot for Avx2 {
    type Acc = __m256;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: only called inside the matching #[target_feature] entry points.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut __m256, w: &[f32; CHUNK], x: &[f32], n: usize) {
        // SAFETY: AVX2+FMA guaranteed by the caller; x.len() ≥ n.
        unsafe {
            let mut i = 0;
            while i + 8 <= n {
                let a = _mm256_loadu_ps(w.as_ptr().add(i));
                let b = _mm256_loadu_ps(x.as_ptr().add(i));
                *acc = _mm256_fmadd_ps(a, b, *acc);
                i += 8;
            }
            let mut tail = 0f32;
            while i < n {
                tail += w[i] * x[i];
                i += 1;
            }
            *acc = _mm256_add_ps(*acc, _mm256_setr_ps(tail, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
        }
    }
    #[inline(always)]
    unsafe fn reduce(acc: __m256) -> f32 {
        // SAFETY: forwarded.
        unsafe { hsum256(acc) }
    }
}

entry_points!(
    [target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")],
    Avx512,
    crate::decode::F16c,
    int_gemv_avx512,
    float_gemv_avx512,
    int_dequant_avx512,
    float_dequant_avx512,
    quantize_acts_avx512
);
entry_points!(
    [target_feature(enable = "avx2,fma,f16c")],
    Avx2,
    crate::decode::F16c,
    int_gemv_avx2,
    float_gemv_avx2,
    int_dequant_avx2,
    float_dequant_avx2,
    quantize_acts_avx2
);
