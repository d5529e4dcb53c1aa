//! bitsandbytes NF4 weights kept in their stored size (half a byte per weight plus one f32 absmax
//! per 64): `w = table[code] · absmax[block]`, blocks of `block` consecutive weights along a row
//! (rows must be whole blocks; bnb's blocks cross rows otherwise, and such a matrix runs dequantized).
//!
//! - Decode (`n ≤` [`crate::MAX_GEMV_TOKENS`] tokens): a fused GEMV — each block's 64 codes are
//!   decoded through a 256-entry table of code pairs (one load per packed byte) into an L1 buffer,
//!   dotted with every token's slice (8 independent partial sums the compiler vectorises) and the
//!   block's absmax applied once per dot, so the weights are read once, in their stored bytes.
//! - Batches: panels of rows dequantized into an L2-sized buffer times all tokens (faer), as every
//!   other format's batch path.
//!
//! The reference is [`Nf4Mat::dequantize_rows`] followed by an f32 product.

use quantkit_core::{Error, Result};
use rayon::prelude::*;

use crate::matmul::{panel_gemm, SendPtr};

/// NF4 weights: `rows × cols` codes packed two per byte (even column in the high nibble, as
/// bitsandbytes packs them), `rows × cols/block` absmax values.
#[derive(Debug, Clone)]
pub struct Nf4Mat {
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
    packed: Vec<u8>,
    absmax: Vec<f32>,
    table: [f32; 16],
    /// Both values of every packed byte: `pairs[b] = [table[b >> 4], table[b & 15]]`.
    pairs: Box<[[f32; 2]; 256]>,
}

impl Nf4Mat {
    /// From one code (0..16) per weight, row-major, and one absmax per block of a row.
    pub fn new(
        rows: usize,
        cols: usize,
        block: usize,
        codes: &[u8],
        absmax: Vec<f32>,
        table: [f32; 16],
    ) -> Result<Self> {
        if block == 0 || block % 2 != 0 || cols % block != 0 {
            return Err(Error::Invalid(format!(
                "NF4 matrix: rows of {cols} are not whole blocks of {block}"
            )));
        }
        if codes.len() != rows * cols || absmax.len() != rows * (cols / block) {
            return Err(Error::Invalid(format!(
                "NF4 matrix {rows}×{cols}: {} codes and {} absmax values",
                codes.len(),
                absmax.len()
            )));
        }
        if let Some(i) = codes.iter().position(|&c| c > 15) {
            return Err(Error::Invalid(format!("NF4 matrix: code {} at {i} is not 4-bit", codes[i])));
        }
        if let Some(i) = absmax.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("NF4 matrix: absmax {i} is {}", absmax[i])));
        }
        let packed = codes.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect();
        let pairs = Box::new(std::array::from_fn(|b| [table[b >> 4], table[b & 15]]));
        Ok(Nf4Mat { rows, cols, block, packed, absmax, table, pairs })
    }

    /// Stored bytes: half a byte per weight plus four per block.
    pub fn bytes(&self) -> u64 {
        self.packed.len() as u64 + 4 * self.absmax.len() as u64
    }

    /// Block `b` of row `r` decoded into `out` (`block` values).
    #[inline]
    fn decode_block(&self, r: usize, b: usize, out: &mut [f32]) {
        let nb = self.cols / self.block;
        let a = self.absmax[r * nb + b];
        let start = (r * self.cols + b * self.block) / 2;
        let bytes = &self.packed[start..start + self.block / 2];
        for (o, &byte) in out.chunks_exact_mut(2).zip(bytes) {
            o[0] = self.table[(byte >> 4) as usize] * a;
            o[1] = self.table[(byte & 15) as usize] * a;
        }
    }

    /// Block `b` of row `r`'s table values (without its absmax) into `out`: one 8-byte load per
    /// packed byte.
    #[inline]
    fn table_values(&self, r: usize, b: usize, out: &mut [f32]) {
        let start = (r * self.cols + b * self.block) / 2;
        for (o, &byte) in out.chunks_exact_mut(2).zip(&self.packed[start..start + self.block / 2]) {
            o.copy_from_slice(&self.pairs[byte as usize]);
        }
    }

    /// Rows `[r0, r1)` as f32 (`(r1 − r0) × cols`).
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let nb = self.cols / self.block;
        for (r, row) in (r0..r1).zip(out.chunks_exact_mut(self.cols)) {
            for (b, o) in (0..nb).zip(row.chunks_exact_mut(self.block)) {
                self.decode_block(r, b, o);
            }
        }
    }

    /// `y[n × rows] = x[n × cols] · Wᵀ`.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "input is not n × cols");
        assert_eq!(y.len(), n * self.rows, "output is not n × rows");
        if n > crate::MAX_GEMV_TOKENS {
            panel_gemm(self.rows, self.cols, x, n, y, &|r0, r1, out| self.dequantize_rows(r0, r1, out));
            return;
        }
        self.gemv(x, n, y, !avx2())
    }

    /// The decode GEMV (`n ≤ MAX_GEMV_TOKENS`), with the portable table loop when `scalar`.
    pub fn gemv(&self, x: &[f32], n: usize, y: &mut [f32], scalar: bool) {
        let (rows, k, nb) = (self.rows, self.cols, self.cols / self.block);
        let yp = SendPtr(y.as_mut_ptr());
        // Fixed chunks of rows: each output is computed by one task in one order (deterministic).
        (0..rows.div_ceil(16)).into_par_iter().for_each(|c| {
            let mut buf = vec![0f32; self.block];
            let mut acc = vec![0f32; n];
            for r in c * 16..((c + 1) * 16).min(rows) {
                acc.iter_mut().for_each(|a| *a = 0.0);
                for b in 0..nb {
                    let am = self.absmax[r * nb + b];
                    let start = (r * self.cols + b * self.block) / 2;
                    let bytes = &self.packed[start..start + self.block / 2];
                    #[cfg(target_arch = "x86_64")]
                    if !scalar && self.block % 8 == 0 {
                        for (t, a) in acc.iter_mut().enumerate() {
                            let xs = &x[t * k + b * self.block..t * k + (b + 1) * self.block];
                            // SAFETY: AVX2 and FMA were detected; `bytes` holds block/2 bytes and
                            // `xs` block values, a multiple of 8.
                            *a += am * unsafe { x86::block_dot(&self.table, bytes, xs) };
                        }
                        continue;
                    }
                    let _ = scalar;
                    self.table_values(r, b, &mut buf);
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a += am * dot(&buf, &x[t * k + b * self.block..t * k + (b + 1) * self.block]);
                    }
                }
                for (t, a) in acc.iter().enumerate() {
                    // SAFETY: row r of every token belongs to this task alone.
                    unsafe { *yp.get().add(t * rows + r) = *a };
                }
            }
        });
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *A.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && std::env::var("QUANTKIT_ISA").as_deref() != Ok("scalar")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `Σ table[code_i] · x_i` over one block: 8 codes at a time expanded from 4 packed bytes
    /// (high nibble first), looked up with two `vpermps` on the table's halves and a blend on the
    /// code's bit 3, then one FMA.
    ///
    /// # Safety
    /// AVX2 and FMA present; `x.len() == 2 · bytes.len()`, a multiple of 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_dot(table: &[f32; 16], bytes: &[u8], x: &[f32]) -> f32 {
        // SAFETY (whole body): loads inside `table`, `bytes` (4 at a time) and `x` (8 at a time).
        unsafe {
            let lo = _mm256_loadu_ps(table.as_ptr());
            let hi = _mm256_loadu_ps(table.as_ptr().add(8));
            let dup = _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1);
            let shifts = _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0);
            let nib = _mm256_set1_epi32(15);
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < bytes.len() {
                let four = (bytes.as_ptr().add(i) as *const u32).read_unaligned();
                let b = _mm_shuffle_epi8(_mm_cvtsi32_si128(four as i32), dup);
                let idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shifts), nib);
                let v = _mm256_blendv_ps(
                    _mm256_permutevar8x32_ps(lo, idx),
                    _mm256_permutevar8x32_ps(hi, idx),
                    _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)),
                );
                acc = _mm256_fmadd_ps(v, _mm256_loadu_ps(x.as_ptr().add(2 * i)), acc);
                i += 4;
            }
            let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }
    }
}

/// `Σ a·b` with 8 independent partial sums (vectorised by the compiler).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            s[i] += x[i] * y[i];
        }
    }
    s.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: [f32; 16] = [
        -1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0, 0.0796, 0.1609, 0.2461, 0.3379,
        0.4407, 0.5626, 0.7230, 1.0,
    ];

    #[test]
    fn fused_gemv_and_batches_match_the_dequantized_product() {
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        for (rows, cols) in [(5, 64), (37, 192), (16, 576)] {
            let codes: Vec<u8> = (0..rows * cols).map(|_| (next() % 16) as u8).collect();
            let absmax: Vec<f32> =
                (0..rows * cols / 64).map(|_| 0.01 + (next() % 1000) as f32 / 1e4).collect();
            let m = Nf4Mat::new(rows, cols, 64, &codes, absmax.clone(), TABLE).expect("matrix");
            let mut w = vec![0f32; rows * cols];
            m.dequantize_rows(0, rows, &mut w);
            for i in 0..rows * cols {
                assert_eq!(w[i], TABLE[codes[i] as usize] * absmax[i / 64]);
            }
            for n in [1, 3, 8, 20] {
                let x: Vec<f32> = (0..n * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                let want = crate::w8::f32_reference(&w, rows, cols, &x, n);
                let mut y = vec![f32::NAN; n * rows];
                m.forward(&x, n, &mut y);
                for (a, b) in y.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{rows}×{cols}, {n}: {a} vs {b}");
                }
                if n <= crate::MAX_GEMV_TOKENS {
                    // Both GEMV paths (SIMD decode where the CPU has it, the portable table loop).
                    for scalar in [true, false] {
                        let mut y = vec![f32::NAN; n * rows];
                        m.gemv(&x, n, &mut y, scalar);
                        for (a, b) in y.iter().zip(&want) {
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{scalar} {n}: {a} vs {b}");
                        }
                    }
                }
            }
        }
        assert!(Nf4Mat::new(2, 96, 64, &[0; 192], vec![1.0; 3], TABLE).is_err());
        assert!(Nf4Mat::new(1, 64, 64, &[16; 64], vec![1.0], TABLE).is_err());
        assert!(Nf4Mat::new(1, 64, 64, &[1; 64], vec![f32::NAN], TABLE).is_err());
    }
}
