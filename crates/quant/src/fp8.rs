//! FP8 E4M3 weights, per output channel (compressed-tensors' `FP8` W8A16 / `FP8_DYNAMIC` weights):
//! `scale[r] = max|w[r, ·]| / 448` (f32; compressed-tensors' symmetric float observer:
//! `max / (bit_range / 2)` with `bit_range = 448 − (−448)`), `q = e4m3(w / scale)` rounded to
//! nearest even and saturated ([`quantkit_io::layout::fp8`]), `w ≈ scale · q`. Round to nearest
//! only: GPTQ does not place weights on this grid (yet).

use quantkit_io::layout::fp8;
use rayon::prelude::*;

use crate::grid::{IntGrid, IntMatrix, IntParams};

/// A matrix of E4M3 codes with one f32 scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8Matrix {
    pub rows: usize,
    pub cols: usize,
    /// Row-major E4M3 bit patterns.
    pub codes: Vec<u8>,
    /// One per row.
    pub scales: Vec<f32>,
}

/// Rows per parallel task (fixed: the output does not depend on the thread count, and each row is
/// computed alone anyway).
const ROWS_PER_TASK: usize = 64;

impl Fp8Matrix {
    /// Round to nearest from row-major `w` (`rows × cols`, finite values).
    pub fn rtn(w: &[f32], rows: usize, cols: usize) -> Fp8Matrix {
        let mut codes = vec![0u8; rows * cols];
        let mut scales = vec![0f32; rows];
        codes
            .par_chunks_mut(cols.max(1) * ROWS_PER_TASK)
            .zip(scales.par_chunks_mut(ROWS_PER_TASK))
            .enumerate()
            .for_each(|(k, (cs, ss))| {
                for (j, s) in ss.iter_mut().enumerate() {
                    let r = k * ROWS_PER_TASK + j;
                    let row = &w[r * cols..(r + 1) * cols];
                    *s = row_scale(row);
                    for (c, &x) in cs[j * cols..(j + 1) * cols].iter_mut().zip(row) {
                        *c = fp8::from_f32(x / *s);
                    }
                }
            });
        Fp8Matrix { rows, cols, codes, scales }
    }

    /// `scale[r] · e4m3(code)`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows * self.cols).map(|i| self.scales[i / self.cols] * fp8::to_f32(self.codes[i])).collect()
    }

    /// The matrix as the writers carry packed codes: E4M3 bit patterns in `codes`, the row scales
    /// as one group per row (zero unused). Only the FP8 layouts read a carrier; its
    /// [`IntMatrix::dequantize`] is meaningless.
    pub(crate) fn carrier(&self) -> IntMatrix {
        IntMatrix {
            grid: IntGrid { bits: 8, sym: true, group: None, zero_min: 0 },
            rows: self.rows,
            cols: self.cols,
            codes: self.codes.clone(),
            params: self.scales.iter().map(|&scale| IntParams { scale, zero: 0 }).collect(),
            g_idx: vec![0; self.cols],
        }
    }
}

/// `max|x| / 448`, or 1 for an all-zero row (every code then 0) or a maximum so small that the
/// scale would be subnormal-poor (values are still exact multiples: `x / 1`).
fn row_scale(row: &[f32]) -> f32 {
    let m = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
    let s = m / fp8::MAX;
    if s.is_normal() {
        s
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_use_the_full_range_and_round_to_the_nearest_code() {
        let (rows, cols) = (130, 37); // more rows than one task, odd width
        let w: Vec<f32> =
            (0..rows * cols).map(|i| ((i as f32 * 0.731).sin() * (1 + i % 7) as f32) * 0.01).collect();
        let m = Fp8Matrix::rtn(&w, rows, cols);
        let d = m.dequantize();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |a, &x| a.max(x.abs()));
            assert_eq!(m.scales[r], amax / 448.0);
            // The largest magnitude lands on ±448 exactly (up to the division's rounding).
            let top =
                m.codes[r * cols..(r + 1) * cols].iter().map(|&c| fp8::to_f32(c).abs()).fold(0f32, f32::max);
            assert_eq!(top, 448.0);
            for c in 0..cols {
                let (x, q) = (row[c], d[r * cols + c]);
                // Nearest of all codes: no code is closer to x / s than the chosen one.
                let y = x / m.scales[r];
                let chosen = (fp8::to_f32(m.codes[r * cols + c]) - y).abs();
                for b in 0u8..=255 {
                    if !fp8::is_nan(b) {
                        assert!((fp8::to_f32(b) - y).abs() >= chosen, "row {r} col {c}");
                    }
                }
                // E4M3 has 3 mantissa bits: relative error ≤ 2⁻⁴ in the normal range.
                assert!((x - q).abs() <= x.abs() / 16.0 * 1.0001 + m.scales[r] * 2f32.powi(-10), "{x} {q}");
            }
        }
        // An all-zero row.
        let z = Fp8Matrix::rtn(&[0.0; 8], 2, 4);
        assert_eq!(z.scales, vec![1.0, 1.0]);
        assert!(z.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_same_codes_for_any_thread_count() {
        let (rows, cols) = (300, 64);
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).cos() * 3.0).collect();
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        let a = one.install(|| Fp8Matrix::rtn(&w, rows, cols));
        let four = rayon::ThreadPoolBuilder::new().num_threads(4).build().expect("pool");
        let b = four.install(|| Fp8Matrix::rtn(&w, rows, cols));
        assert_eq!(a, b);
    }
}
