//! Per-channel 8-bit weights as compressed-tensors stores them (llm-compressor's `W8A8`, `W8A16`,
//! `FP8`, `FP8_DYNAMIC`): one byte per weight (int8, or an FP8 E4M3 bit pattern) and one f32
//! scale per output row (or per group of columns), `w = scale · value(code)`.
//!
//! - [`Mat8::forward`]: f32 activations (the weight-only schemes, and FP8_DYNAMIC once its
//!   activations are rounded to E4M3 values): panels of rows decoded to f32 (a 256-entry table for
//!   FP8 — CPUs have no FP8 units) times all tokens with faer's f32 GEMM.
//! - [`Mat8::forward_i8`]: W8A8 with real integer arithmetic. The activations are quantized per
//!   token ([`I8Acts`]: `s_t = max|x_t| / 127`, `q = round_half_even(x / s_t)`, as vLLM's dynamic
//!   per-token int8 kernel does; compressed-tensors' simulated forward divides by 127.5
//!   instead), every dot product `Σ q_x · q_w` is an exact i32, and
//!   `y = (acc as f32) · s_t · s_w`. On x86 with AVX2 the dot products run `vpmaddubsw` on
//!   `|q_w|` and `sign(q_x, q_w)` (|q_x| ≤ 127 and |q_w| ≤ 128, so a pair's sum, at most
//!   2·128·127 = 32 512, cannot saturate) and `vpmaddwd` into i32. Scalar elsewhere; the two are
//!   equal bit for bit (integer sums). No AVX-512 VNNI / AMX-INT8 variant yet.

use faer::{Accum, MatMut, MatRef};
use quantkit_core::{Error, Result};
use rayon::prelude::*;

use crate::matmul::{panel_gemm, SendPtr};

/// What a weight byte means.
#[derive(Clone)]
pub enum Code8 {
    /// A two's-complement int8.
    Int8,
    /// An index into a table of 256 values (FP8 E4M3: the caller's decoder, NaN codes refused at
    /// construction).
    Table(Box<[f32; 256]>),
}

impl std::fmt::Debug for Code8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Code8::Int8 => "Int8",
            Code8::Table(_) => "Table",
        })
    }
}

/// A `rows × cols` matrix of 8-bit codes with `rows × cols/group` f32 scales.
#[derive(Debug, Clone)]
pub struct Mat8 {
    pub rows: usize,
    pub cols: usize,
    /// Columns per scale (`cols`: one scale per row).
    pub group: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    code: Code8,
}

impl Mat8 {
    /// Wrap row-major codes and scales; checks sizes, finite scales and (for a table) that no code
    /// in use decodes to a non-finite value.
    pub fn new(
        rows: usize,
        cols: usize,
        group: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
        code: Code8,
    ) -> Result<Self> {
        if group == 0 || cols % group != 0 {
            return Err(Error::Invalid(format!(
                "8-bit matrix: group {group} does not divide {cols} columns"
            )));
        }
        if rows.checked_mul(cols) != Some(codes.len()) {
            return Err(Error::Invalid(format!(
                "8-bit matrix {rows}×{cols} needs {} codes, got {}",
                rows as u128 * cols as u128,
                codes.len()
            )));
        }
        if scales.len() != rows * (cols / group) {
            return Err(Error::Invalid(format!(
                "8-bit matrix {rows}×{cols} in groups of {group} needs {} scales, got {}",
                rows * (cols / group),
                scales.len()
            )));
        }
        if let Some(i) = scales.iter().position(|s| !s.is_finite()) {
            return Err(Error::Invalid(format!("8-bit matrix: scale {i} is {}", scales[i])));
        }
        if let Code8::Table(t) = &code {
            if let Some(i) = codes.iter().position(|&c| !t[c as usize].is_finite()) {
                return Err(Error::Invalid(format!(
                    "8-bit matrix: code {:#04x} at [{}, {}] is not a finite value",
                    codes[i],
                    i / cols.max(1),
                    i % cols.max(1)
                )));
            }
        }
        Ok(Mat8 { rows, cols, group, codes, scales, code })
    }

    pub fn is_int8(&self) -> bool {
        matches!(self.code, Code8::Int8)
    }

    /// Stored bytes: one per weight plus four per scale.
    pub fn bytes(&self) -> u64 {
        self.codes.len() as u64 + 4 * self.scales.len() as u64
    }

    /// Rows `[r0, r1)` as f32 (`(r1 − r0) × cols`).
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let (k, ng) = (self.cols, self.cols / self.group);
        for (r, o) in (r0..r1).zip(out.chunks_exact_mut(k)) {
            let codes = &self.codes[r * k..(r + 1) * k];
            let sc = &self.scales[r * ng..(r + 1) * ng];
            for ((oc, cc), s) in o.chunks_exact_mut(self.group).zip(codes.chunks_exact(self.group)).zip(sc) {
                match &self.code {
                    Code8::Int8 => oc.iter_mut().zip(cc).for_each(|(v, &c)| *v = s * c as i8 as f32),
                    Code8::Table(t) => oc.iter_mut().zip(cc).for_each(|(v, &c)| *v = s * t[c as usize]),
                }
            }
        }
    }

    /// `y[n × rows] = x[n × cols] · Wᵀ` with f32 activations.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        assert_eq!(x.len(), n * self.cols, "input is not n × cols");
        assert_eq!(y.len(), n * self.rows, "output is not n × rows");
        panel_gemm(self.rows, self.cols, x, n, y, &|r0, r1, out| self.dequantize_rows(r0, r1, out));
    }

    /// W8A8: `y[t, r] = (Σ_c a.q[t, c] · q_w[r, c]) · a.s[t] · s_w[r]`, exact integer sums (one
    /// scale per row, int8 codes; see the module docs).
    pub fn forward_i8(&self, a: &I8Acts, y: &mut [f32]) -> Result<()> {
        self.forward_i8_with(a, y, !cfg!(target_arch = "x86_64") || !avx2())
    }

    /// [`Mat8::forward_i8`], forcing the scalar dot products when `scalar`.
    pub fn forward_i8_with(&self, a: &I8Acts, y: &mut [f32], scalar: bool) -> Result<()> {
        if !self.is_int8() || self.group != self.cols {
            return Err(Error::Unsupported(
                "int8 activations need int8 weights with one scale per output row".into(),
            ));
        }
        let (n, k, rows) = (a.n, self.cols, self.rows);
        if a.k != k || y.len() != n * rows {
            return Err(Error::Invalid(format!(
                "int8 GEMM: {}×{} activations, {rows}×{k} weights, {} outputs",
                a.n,
                a.k,
                y.len()
            )));
        }
        if n == 0 || rows == 0 {
            return Ok(());
        }
        // Row panels of ~64 KiB of weights, a multiple of 4 rows; tokens in chunks of 64 so the
        // activations a panel meets stay in L2.
        let panel = ((65_536 / k.max(1)).max(4) / 4 * 4).min(rows.div_ceil(4) * 4);
        let yp = SendPtr(y.as_mut_ptr());
        (0..rows.div_ceil(panel)).into_par_iter().for_each(|p| {
            let (r0, r1) = (p * panel, ((p + 1) * panel).min(rows));
            let w = &self.codes[r0 * k..r1 * k];
            let mut t0 = 0;
            while t0 < n {
                let t1 = (t0 + 64).min(n);
                let mut rb = 0;
                while rb < r1 - r0 {
                    let re = (rb + 4).min(r1 - r0);
                    let mut tb = t0;
                    while tb < t1 {
                        let te = (tb + 2).min(t1);
                        let mut acc = [[0i32; 4]; 2];
                        let ws: [&[u8]; 4] = std::array::from_fn(|i| {
                            &w[(rb + i).min(re - 1) * k..((rb + i).min(re - 1) + 1) * k]
                        });
                        if te - tb == 2 {
                            dot_tile(&[a.row(tb), a.row(tb + 1)], &ws, &mut acc, scalar);
                        } else {
                            // One token (decode, or an odd last one): a 1 × 4 tile.
                            let mut one = [[0i32; 4]; 1];
                            dot_tile(&[a.row(tb)], &ws, &mut one, scalar);
                            acc[0] = one[0];
                        }
                        for (ti, t) in (tb..te).enumerate() {
                            for (ri, r) in (r0 + rb..r0 + re).enumerate() {
                                let v = acc[ti][ri] as f32 * a.s[t] * self.scales[r];
                                // SAFETY: rows r0..r1 of every token belong to this task alone.
                                unsafe { *yp.get().add(t * rows + r) = v };
                            }
                        }
                        tb = te;
                    }
                    rb = re;
                }
                t0 = t1;
            }
        });
        Ok(())
    }
}

/// Per-token symmetric integer activations (vLLM's dynamic per-token quantization): int8 (`±127`),
/// or int4 (`±7`) held in the same bytes.
#[derive(Debug, Clone, Default)]
pub struct I8Acts {
    pub n: usize,
    pub k: usize,
    /// `n × k` codes in `[−127, 127]`.
    pub q: Vec<i8>,
    /// One scale per token (`max|x_t| / 127`; a zero row gets 0 and codes 0).
    pub s: Vec<f32>,
}

impl I8Acts {
    pub fn quantize(x: &[f32], n: usize, k: usize) -> I8Acts {
        Self::quantize_to(x, n, k, 127)
    }

    /// Codes in `±qmax` (`qmax` ≤ 127): `s_t = max|x_t| / qmax`, round half to even.
    pub fn quantize_to(x: &[f32], n: usize, k: usize, qmax: i8) -> I8Acts {
        assert_eq!(x.len(), n * k, "input is not n × k");
        assert!(qmax > 0, "qmax must be positive");
        let qm = qmax as f32;
        let mut q = vec![0i8; n * k];
        let mut s = vec![0f32; n];
        q.par_chunks_mut(k.max(1)).zip(s.par_iter_mut()).zip(x.par_chunks(k.max(1))).for_each(
            |((q, s), x)| {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                *s = amax / qm;
                if amax > 0.0 {
                    for (c, v) in q.iter_mut().zip(x) {
                        *c = (v / *s).round_ties_even().clamp(-qm, qm) as i8;
                    }
                }
            },
        );
        I8Acts { n, k, q, s }
    }

    fn row(&self, t: usize) -> &[i8] {
        &self.q[t * self.k..(t + 1) * self.k]
    }
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *A.get_or_init(|| {
            is_x86_feature_detected!("avx2") && std::env::var("QUANTKIT_ISA").as_deref() != Ok("scalar")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `acc[t][r] = Σ_c xs[t][c] · (ws[r][c] as i8)` for a T × 4 tile (duplicate rows at the edges are
/// computed and ignored).
fn dot_tile<const T: usize>(xs: &[&[i8]; T], ws: &[&[u8]; 4], acc: &mut [[i32; 4]; T], scalar: bool) {
    let k = xs[0].len();
    let mut c0 = 0;
    #[cfg(target_arch = "x86_64")]
    if !scalar {
        c0 = k / 32 * 32;
        // SAFETY: AVX2 was detected (`avx2()`), and every row has k ≥ c0 elements.
        unsafe { x86::dot_tile_avx2(xs, ws, acc, c0) };
    }
    let _ = scalar;
    for (t, x) in xs.iter().enumerate() {
        for (r, w) in ws.iter().enumerate() {
            acc[t][r] += x[c0..].iter().zip(&w[c0..]).map(|(&a, &b)| a as i32 * b as i8 as i32).sum::<i32>();
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The first `c1` (a multiple of 32) columns of [`super::dot_tile`].
    ///
    /// # Safety
    /// AVX2 present; every row holds at least `c1` elements.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn dot_tile_avx2<const T: usize>(
        xs: &[&[i8]; T],
        ws: &[&[u8]; 4],
        acc: &mut [[i32; 4]; T],
        c1: usize,
    ) {
        // SAFETY (whole body): unaligned 32-byte loads inside rows of ≥ c1 elements.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            let mut s = [[_mm256_setzero_si256(); 4]; T];
            let mut c = 0;
            while c < c1 {
                let x: [__m256i; T] =
                    std::array::from_fn(|t| _mm256_loadu_si256(xs[t].as_ptr().add(c).cast()));
                for r in 0..4 {
                    let w = _mm256_loadu_si256(ws[r].as_ptr().add(c).cast());
                    let aw = _mm256_abs_epi8(w);
                    for t in 0..T {
                        let p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x[t], w));
                        s[t][r] = _mm256_add_epi32(s[t][r], _mm256_madd_epi16(p, ones));
                    }
                }
                c += 32;
            }
            for t in 0..T {
                for r in 0..4 {
                    acc[t][r] += hsum(s[t][r]);
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }
}

/// f32 reference of [`Mat8::forward_i8`]'s integer sums (for tests): `Σ q_x · q_w` per pair.
pub fn i8_dots_reference(a: &I8Acts, m: &Mat8) -> Vec<i32> {
    let mut out = vec![0i32; a.n * m.rows];
    for t in 0..a.n {
        for r in 0..m.rows {
            out[t * m.rows + r] = a
                .row(t)
                .iter()
                .zip(&m.codes[r * m.cols..(r + 1) * m.cols])
                .map(|(&x, &w)| x as i32 * w as i8 as i32)
                .sum();
        }
    }
    out
}

/// `y[n × rows] = x · Wᵀ` for f32 `w` (row-major `rows × k`) through faer: the reference the 8-bit
/// paths are compared with in tests.
pub fn f32_reference(w: &[f32], rows: usize, k: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; n * rows];
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(&mut y, n, rows),
        Accum::Replace,
        MatRef::from_row_major_slice(x, n, k),
        MatRef::from_column_major_slice(w, k, rows),
        1.0f32,
        faer::Par::Seq,
    );
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) as u32
        }
        fn f(&mut self) -> f32 {
            self.next() as f32 / (1u64 << 31) as f32 - 1.0
        }
    }

    fn int8_matrix(rows: usize, cols: usize, seed: u64) -> Mat8 {
        let mut r = Rng(seed);
        // Every code including −128 (the AVX2 path's edge case).
        let codes: Vec<u8> =
            (0..rows * cols).map(|i| if i % 97 == 3 { 0x80 } else { r.next() as u8 }).collect();
        let scales: Vec<f32> = (0..rows).map(|_| 0.01 + r.f().abs() * 0.02).collect();
        Mat8::new(rows, cols, cols, codes, scales, Code8::Int8).expect("matrix")
    }

    #[test]
    fn int8_dots_are_exact_on_both_paths() {
        // Widths with and without a 32-column tail; row and token counts off the 4 × 2 tile.
        for (rows, cols, n) in [(7, 64, 3), (13, 77, 5), (4, 31, 1), (33, 544, 9), (70, 1536, 2)] {
            let m = int8_matrix(rows, cols, rows as u64 * 31 + cols as u64);
            let mut r = Rng(n as u64 + 5);
            let x: Vec<f32> = (0..n * cols).map(|i| r.f() * if i % 17 == 0 { 30.0 } else { 1.0 }).collect();
            let a = I8Acts::quantize(&x, n, cols);
            assert!(a.q.iter().any(|&q| q == 127 || q == -127) && a.q.iter().any(|&q| q != 0));
            assert_exact_on_both_paths(&a, &m, &format!("{rows}×{cols}, {n} tokens"));
        }
    }

    /// Both kernels give the reference i32 dots times the two scales, bit for bit.
    fn assert_exact_on_both_paths(a: &I8Acts, m: &Mat8, what: &str) {
        let (n, rows) = (a.n, m.rows);
        let dots = i8_dots_reference(a, m);
        let want: Vec<f32> =
            (0..n * rows).map(|i| dots[i] as f32 * a.s[i / rows] * m.scales[i % rows]).collect();
        for scalar in [true, false] {
            let mut y = vec![f32::NAN; n * rows];
            m.forward_i8_with(a, &mut y, scalar).expect("forward");
            assert_eq!(y, want, "{what}, scalar {scalar}");
        }
    }

    #[test]
    fn int4_activations_and_int4_weights_are_exact_too() {
        // W4A4 runs through the same kernels: codes in ±7 (activations) and [−8, 7] (weights).
        let (rows, cols, n) = (9, 200, 3);
        let mut r = Rng(41);
        let codes: Vec<u8> = (0..rows * cols).map(|_| ((r.next() % 16) as i32 - 8) as i8 as u8).collect();
        let scales: Vec<f32> = (0..rows).map(|_| 0.05 + r.f().abs() * 0.1).collect();
        let m = Mat8::new(rows, cols, cols, codes, scales, Code8::Int8).expect("matrix");
        let x: Vec<f32> = (0..n * cols).map(|i| r.f() * if i % 29 == 0 { 12.0 } else { 1.0 }).collect();
        let a = I8Acts::quantize_to(&x, n, cols, 7);
        assert!(a.q.iter().all(|&q| (-7..=7).contains(&q)) && a.q.iter().any(|&q| q.abs() == 7));
        for (t, xs) in x.chunks(cols).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(a.s[t], amax / 7.0);
            for (q, v) in a.q[t * cols..(t + 1) * cols].iter().zip(xs) {
                assert_eq!(*q as f32, (v / a.s[t]).round_ties_even());
            }
        }
        assert_exact_on_both_paths(&a, &m, "W4A4");
    }

    #[test]
    fn w8a8_is_close_to_the_float_product() {
        let (rows, cols, n) = (48, 256, 6);
        let m = int8_matrix(rows, cols, 9);
        let mut r = Rng(2);
        let x: Vec<f32> = (0..n * cols).map(|_| r.f()).collect();
        let mut w = vec![0f32; rows * cols];
        m.dequantize_rows(0, rows, &mut w);
        let want = f32_reference(&w, rows, cols, &x, n);
        let mut y = vec![f32::NAN; n * rows];
        m.forward_i8(&I8Acts::quantize(&x, n, cols), &mut y).expect("forward");
        let (num, den) = y
            .iter()
            .zip(&want)
            .fold((0f64, 0f64), |(a, b), (&p, &q)| (a + ((p - q) as f64).powi(2), b + (q as f64).powi(2)));
        // Activation rounding of ≤ 1/254 of each token's range: NMSE well under 1e-4.
        assert!(num / den < 1e-4, "nmse {}", num / den);
        let mut yf = vec![f32::NAN; n * rows];
        m.forward(&x, n, &mut yf);
        for (a, b) in yf.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} {b}");
        }
    }

    #[test]
    fn table_codes_and_groups_dequantize() {
        let mut t = [0f32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            *v = i as f32 - 100.0;
        }
        t[255] = f32::NAN;
        let codes: Vec<u8> = (0..4 * 8).map(|i| (i * 7 % 200) as u8).collect();
        let scales = vec![1.0, 2.0, 0.5, 4.0, 1.0, 1.0, 3.0, 0.25];
        let m = Mat8::new(4, 8, 4, codes.clone(), scales.clone(), Code8::Table(Box::new(t))).expect("table");
        let mut out = vec![0f32; 32];
        m.dequantize_rows(0, 4, &mut out);
        for i in 0..32 {
            assert_eq!(out[i], scales[i / 4] * t[codes[i] as usize]);
        }
        assert!(m.forward_i8(&I8Acts::quantize(&[1.0; 8], 1, 8), &mut [0.0; 4]).is_err());
        let mut bad = codes;
        bad[5] = 255;
        let e = Mat8::new(4, 8, 4, bad, scales, Code8::Table(Box::new(t))).expect_err("non-finite table");
        assert!(e.to_string().contains("[0, 5]"), "{e}");
        assert!(Mat8::new(2, 8, 3, vec![0; 16], vec![1.0; 2], Code8::Int8).is_err());
        assert!(Mat8::new(2, 8, 8, vec![0; 16], vec![f32::INFINITY, 1.0], Code8::Int8).is_err());
    }
}
