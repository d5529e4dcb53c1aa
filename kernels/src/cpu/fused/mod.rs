//! Fused AVX-512 GEMV kernels (VNNI + VBMI) for the formats real files are made of: Q4_0, Q5_0,
//! Q8_0, Q4_1, Q5_1, Q2_K, Q4_K, Q5_K and Q6_K.
//!
//! The generic drivers (`cpu/mod.rs`) decode a chunk of a row into an L1 buffer and dot it from
//! there; that costs a store and a reload per weight and scalar scale gathers, and it made decode
//! compute-bound at a third of the memory bandwidth. Here each 64 weights go from their stored
//! bytes straight into one register of unsigned codes in weight order (one `vpermb` picks the
//! nibbles or bytes of two legacy blocks out of a 64-byte load; a k-quant super-block's scales
//! are unpacked once per 256 weights) plus one register holding the weight scale of each of the
//! 16 `vpdpbusd` lanes. Per token the dot is then: `vpdpbusd` (started from the code bias times
//! the activation lane sums, so the integer sum is exact and signed), one conversion, one multiply
//! by the activation scales and one FMA. Up to 8 tokens reuse the decoded registers.
//!
//! A unit is two legacy blocks (64 weights) or one k-quant super-block (256). Loads that could run
//! past the end of the weight slice (only a row's last legacy unit can) are masked. Lanes past the
//! end of a row whose length is an odd number of legacy blocks get a zero weight scale.
//!
//! Every kernel here is checked by the conformance suite (`Isa::Avx512Vbmi`) against the scalar
//! reference and an f64 dot on the same quantized operands.

use std::arch::x86_64::*;

use crate::act::QAct;

mod bytes;
mod q2_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;

use bytes::K6_IDX;

/// A format the fused driver reads straight from its stored bytes.
pub(crate) trait Fused {
    /// Weights per unit: two legacy blocks (64) or one k-quant super-block (256).
    const UNIT: usize;
    const UNIT_BYTES: usize;
    /// Codes are stored with a bias `b = 2^BIAS_SHIFT` (`w = s·(q − b)`; 0: none): `vpdpbusd`
    /// starts from `b · s4n` (the lanes' `−b·Σ a`), so the integer sum is exact and signed.
    const BIAS_SHIFT: u32;
    /// Per-32 offsets (`w = s·q − m`), accumulated once per unit from `QAct::sum32`.
    const MINS: bool = false;
    type State: Copy;
    /// # Safety
    /// Inside the `#[target_feature]` entry point below; `p` is a unit start with `avail` readable
    /// bytes from it (at least one block).
    unsafe fn state(p: *const u8, avail: usize) -> Self::State;
    /// Weights `64j..64j+64` of the unit: codes in weight order, weight scale per 4-code lane.
    ///
    /// # Safety
    /// As `state`, `j < UNIT / 64`.
    unsafe fn sub(p: *const u8, st: &Self::State, j: usize) -> (__m512i, __m512);
    /// Per-16 offsets (Q2_K), accumulated once per unit from `QAct::sum`.
    const MINS16: bool = false;
    /// The per-16 offsets of the unit (16 lanes), when `MINS16`.
    ///
    /// # Safety
    /// As `state`.
    #[inline(always)]
    unsafe fn mins16(_: &Self::State) -> __m512 {
        // SAFETY: AVX-512F is enabled by the caller.
        unsafe { _mm512_setzero_ps() }
    }
    /// The per-32 offsets of the unit (8 lanes), when `MINS`.
    ///
    /// # Safety
    /// As `state`.
    #[inline(always)]
    unsafe fn mins(_: &Self::State) -> __m256 {
        // SAFETY: AVX is enabled by the caller.
        unsafe { _mm256_setzero_ps() }
    }
}

/// The start of `vpdpbusd` for 16 lanes: `2^BIAS_SHIFT · s4n` (zero for unbiased codes).
#[inline(always)]
unsafe fn bias<F: Fused>(s4n: *const i32) -> __m512i {
    // SAFETY: 16 readable lanes (QAct pads s4n); AVX-512F enabled by the caller. The match on a
    // constant folds away.
    unsafe {
        if F::BIAS_SHIFT == 0 {
            return _mm512_setzero_si512();
        }
        let v = _mm512_loadu_si512(s4n.cast());
        match F::BIAS_SHIFT {
            3 => _mm512_slli_epi32::<3>(v),
            4 => _mm512_slli_epi32::<4>(v),
            5 => _mm512_slli_epi32::<5>(v),
            7 => _mm512_slli_epi32::<7>(v),
            s => _mm512_sll_epi32(v, _mm_cvtsi32_si128(s as i32)),
        }
    }
}

/// Bytes the weight stream is prefetched ahead. A core's hardware prefetchers alone reached
/// ~60 % of this VM's read bandwidth in decode; software prefetches 4–8 KiB ahead lifted SmolLM2
/// generation by 15–25 % (Q4_0 125 → 146–152 tok/s, best of 4 interleaved runs; 2 KiB and
/// 16 KiB were worse). Measured with `quantkit bench`.
const PREFETCH: usize = 6144;

/// `y[t·ys + r] = row_r · x_t` for `N` tokens, `R` rows at a time (then one at a time for the
/// rows left over). A row's result does not depend on `R`: each row keeps its own accumulators
/// and [`reduce`] sums every row's lanes in the same order, so how rows fall into tasks (the
/// thread count) never changes a bit.
#[inline(always)]
unsafe fn gemv_n<F: Fused, const N: usize, const R: usize>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[QAct],
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    // SAFETY: forwarded; rows_step reads only rows < `rows` of `w`.
    unsafe {
        let acts: &[QAct; N] = acts.try_into().expect("N tokens");
        // The stream this task reads starts cold: ask for its first `PREFETCH` bytes now (the
        // loop prefetches `PREFETCH` ahead of each row from there on).
        let mut q = 0;
        while q < PREFETCH.min(w.len()) {
            _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(q).cast());
            q += 64;
        }
        let mut r = 0;
        while r + R <= rows {
            rows_step::<F, N, R>(w, row_bytes, k, acts, y.add(r), ys, r);
            r += R;
        }
        while r < rows {
            rows_step::<F, N, 1>(w, row_bytes, k, acts, y.add(r), ys, r);
            r += 1;
        }
    }
}

/// Rows `r0..r0 + R` for `N` tokens; the results go to `y[t·ys + i]`, `i < R`.
#[inline(always)]
unsafe fn rows_step<F: Fused, const N: usize, const R: usize>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[QAct; N],
    y: *mut f32,
    ys: usize,
    r0: usize,
) {
    // SAFETY (whole body): the entry point's features are enabled; every weight read stays inside
    // `w` (units are whole blocks; load64 masks past its end); activation reads stay inside the
    // padded QAct buffers (off < k rounded up to 64); y is the caller's.
    unsafe {
        let end = w.as_ptr().add(w.len());
        let units = k.div_ceil(F::UNIT);
        let mut row = [w.as_ptr(); R];
        for (i, p) in row.iter_mut().enumerate() {
            *p = w.as_ptr().add((r0 + i) * row_bytes);
        }
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let mut macc = [[_mm256_setzero_ps(); N]; R];
        let mut macc16 = [[_mm512_setzero_ps(); N]; R];
        for u in 0..units {
            let mut st = [core::mem::MaybeUninit::<F::State>::uninit(); R];
            for i in 0..R {
                let p = row[i].add(u * F::UNIT_BYTES);
                // (A prefetch never faults, so running past the slice is harmless.)
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
                if F::UNIT_BYTES > 64 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 64).cast());
                }
                if F::UNIT_BYTES > 128 {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + 128).cast());
                }
                st[i].write(F::state(p, end.offset_from(p) as usize));
            }
            let base = u * F::UNIT;
            for j in 0..F::UNIT / 64 {
                let off = base + 64 * j;
                let mut dec = [(_mm512_setzero_si512(), _mm512_setzero_ps()); R];
                for i in 0..R {
                    let (codes, mut fw) = F::sub(row[i].add(u * F::UNIT_BYTES), st[i].assume_init_ref(), j);
                    if k - off < 64 {
                        // An odd legacy block at the row's end: the other lanes hold the next
                        // row's bytes (or zeros) and must not count, not even as 0·NaN.
                        fw = _mm512_maskz_mov_ps(((1u32 << ((k - off) / 4)) - 1) as u16, fw);
                    }
                    dec[i] = (codes, fw);
                }
                for t in 0..N {
                    let a = &acts[t];
                    let x = _mm512_loadu_si512(a.q.as_ptr().add(off).cast());
                    let init = bias::<F>(a.s4n.as_ptr().add(off / 4));
                    let dx = _mm512_loadu_ps(a.dx.as_ptr().add(off / 4));
                    for i in 0..R {
                        let isum = _mm512_dpbusd_epi32(init, dec[i].0, x);
                        let f = _mm512_mul_ps(dec[i].1, dx);
                        acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), f, acc[i][t]);
                    }
                }
            }
            if F::MINS16 {
                // Whole super-blocks only (k-quant rows), so 16 groups of `sum` are there.
                for t in 0..N {
                    let s = _mm512_loadu_ps(acts[t].sum.as_ptr().add(base / 16));
                    for i in 0..R {
                        macc16[i][t] = _mm512_fmadd_ps(F::mins16(st[i].assume_init_ref()), s, macc16[i][t]);
                    }
                }
            }
            if F::MINS {
                // A unit cut short by the row's end counts only its own 32-weight groups.
                let cut = if k - base < F::UNIT { ((1u32 << ((k - base) / 32)) - 1) as u8 } else { u8::MAX };
                for t in 0..N {
                    let s = _mm256_loadu_ps(acts[t].sum32.as_ptr().add(base / 32));
                    for i in 0..R {
                        let m = _mm256_maskz_mov_ps(cut, F::mins(st[i].assume_init_ref()));
                        macc[i][t] = _mm256_fmadd_ps(m, s, macc[i][t]);
                    }
                }
            }
        }
        for t in 0..N {
            let mut v = [_mm512_setzero_ps(); R];
            for i in 0..R {
                v[i] = acc[i][t];
                if F::MINS {
                    v[i] = _mm512_add_ps(v[i], _mm512_zextps256_ps512(macc[i][t]));
                }
                if F::MINS16 {
                    v[i] = _mm512_add_ps(v[i], macc16[i][t]);
                }
            }
            reduce::<R>(&v, y.add(t * ys));
        }
    }
}

/// `y[i] = Σ lanes of v[i]`, every row summed in the same order (halves, quarters, then
/// `(l0 + l1) + (l2 + l3)`), four rows sharing the last steps.
#[inline(always)]
unsafe fn reduce<const R: usize>(v: &[__m512; R], y: *mut f32) {
    // SAFETY: AVX-512F enabled by the caller; y valid for R writes.
    unsafe {
        let mut q = [_mm_setzero_ps(); R];
        for i in 0..R {
            // (The upper half through the f64 view: `extractf32x8` would need AVX-512 DQ.)
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v[i])));
            let h = _mm256_add_ps(_mm512_castps512_ps256(v[i]), upper);
            q[i] = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
        }
        let mut i = 0;
        while i + 4 <= R {
            let ab = _mm_hadd_ps(q[i], q[i + 1]);
            let cd = _mm_hadd_ps(q[i + 2], q[i + 3]);
            _mm_storeu_ps(y.add(i), _mm_hadd_ps(ab, cd));
            i += 4;
        }
        while i < R {
            let h = _mm_hadd_ps(q[i], q[i]);
            *y.add(i) = _mm_cvtss_f32(_mm_hadd_ps(h, h));
            i += 1;
        }
    }
}

/// Dequantize `rows` rows of `k` weights into `out` (the `DequantFn` signature) from the stored
/// bytes with the fused decoders: `w = s·q + o` per weight, the multiply and the add rounded
/// separately as in the generic drivers, so the values are the same bits on every ISA.
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI; `w` holds `rows` rows of `row_bytes`;
/// `out.len() ≥ rows·k`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
pub(crate) unsafe fn dequant<F: Fused>(w: &[u8], row_bytes: usize, k: usize, rows: usize, out: &mut [f32]) {
    assert!(out.len() >= rows * k && w.len() >= rows * row_bytes);
    // SAFETY: as the GEMV: weight reads stay inside `w` (load64 masks past its end); stores go
    // to out[r·k + off .. + 16] with off + 16 ≤ k (k is a whole number of 32-weight blocks).
    unsafe {
        let end = w.as_ptr().add(w.len());
        let bias = _mm512_set1_ps(-((1u32 << F::BIAS_SHIFT) as f32));
        for r in 0..rows {
            let row = w.as_ptr().add(r * row_bytes);
            let dst = out.as_mut_ptr().add(r * k);
            for u in 0..k.div_ceil(F::UNIT) {
                let p = row.add(u * F::UNIT_BYTES);
                let st = F::state(p, end.offset_from(p) as usize);
                let mins = _mm512_zextps256_ps512(F::mins(&st));
                let mins16 = F::mins16(&st);
                for j in 0..F::UNIT / 64 {
                    let off = u * F::UNIT + 64 * j;
                    if off >= k {
                        break;
                    }
                    let (codes, fw) = F::sub(p, &st, j);
                    for q in 0..4 {
                        if off + 16 * q >= k {
                            break;
                        }
                        let c = match q {
                            0 => _mm512_extracti32x4_epi32::<0>(codes),
                            1 => _mm512_extracti32x4_epi32::<1>(codes),
                            2 => _mm512_extracti32x4_epi32::<2>(codes),
                            _ => _mm512_extracti32x4_epi32::<3>(codes),
                        };
                        let code = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(c));
                        // Weights 16q..16q + 16 take lane scales 4q + i / 4: Q6_K's 16-weight group picks.
                        let scale = _mm512_permutexvar_ps(_mm512_loadu_si512(K6_IDX[q].as_ptr().cast()), fw);
                        // The offset: −bias·s (exact), or the unit's per-32 / per-16 offset.
                        let o = if F::MINS {
                            _mm512_permutexvar_ps(_mm512_set1_epi32((2 * j + q / 2) as i32), mins)
                        } else if F::MINS16 {
                            _mm512_permutexvar_ps(_mm512_set1_epi32((4 * j + q) as i32), mins16)
                        } else {
                            _mm512_mul_ps(bias, scale)
                        };
                        _mm512_storeu_ps(dst.add(off + 16 * q), _mm512_add_ps(_mm512_mul_ps(scale, code), o));
                    }
                }
            }
        }
    }
}

/// The fused GEMV entry point for format `F` (the `IntGemvFn` signature).
///
/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI/VBMI; `acts.len()` in 1..=8, each quantized from `k`
/// values; `y` valid for `t·ys + r` writes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
pub(crate) unsafe fn gemv<F: Fused>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[QAct],
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    // SAFETY: forwarded.
    unsafe {
        match acts.len() {
            // Several rows at a time only while their streams fit in the prefetch distance: each
            // row prefetches `PREFETCH` ahead of itself, so with longer rows the start of a later
            // row in the next step would be read cold.
            1 if 4 * row_bytes <= PREFETCH => gemv_n::<F, 1, 4>(w, row_bytes, k, acts, y, ys, rows),
            1 => gemv_n::<F, 1, 1>(w, row_bytes, k, acts, y, ys, rows),
            2 if 2 * row_bytes <= PREFETCH => gemv_n::<F, 2, 2>(w, row_bytes, k, acts, y, ys, rows),
            2 => gemv_n::<F, 2, 1>(w, row_bytes, k, acts, y, ys, rows),
            3 => gemv_n::<F, 3, 1>(w, row_bytes, k, acts, y, ys, rows),
            4 => gemv_n::<F, 4, 1>(w, row_bytes, k, acts, y, ys, rows),
            5 => gemv_n::<F, 5, 1>(w, row_bytes, k, acts, y, ys, rows),
            6 => gemv_n::<F, 6, 1>(w, row_bytes, k, acts, y, ys, rows),
            7 => gemv_n::<F, 7, 1>(w, row_bytes, k, acts, y, ys, rows),
            8 => gemv_n::<F, 8, 1>(w, row_bytes, k, acts, y, ys, rows),
            n => unreachable!("{n} tokens in one GEMV call"),
        }
    }
}
