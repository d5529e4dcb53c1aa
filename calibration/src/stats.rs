//! Input statistics of one linear group, accumulated sample by sample.

use faer::linalg::matmul::triangular::BlockStructure;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// `Σ x xᵀ`, `Σ |x|` and `Σ x²` over every observed row of a group's input.
///
/// Each sample's `XᵀX` is one f32 GEMM (rows summed in f32 within a sample) added into f64
/// accumulators in sample order, so the result is the same for any thread count.
#[derive(Debug, Clone)]
pub struct SiteStats {
    pub dim: usize,
    /// Row-major `dim × dim`.
    pub xtx: Vec<f64>,
    pub abs_sum: Vec<f64>,
    pub sq_sum: Vec<f64>,
    /// max |x| per channel (SmoothQuant's activation statistic).
    pub abs_max: Vec<f32>,
    pub rows: u64,
    /// Whether `xtx` is accumulated (AWQ-only or imatrix-only runs may skip it).
    pub with_xtx: bool,
    scratch: Vec<f32>,
    /// Whether the upper triangle of `xtx` is up to date ([`SiteStats::mirror`]).
    mirrored: bool,
}

impl SiteStats {
    pub fn new(dim: usize, with_xtx: bool) -> Self {
        SiteStats {
            dim,
            xtx: if with_xtx { vec![0.0; dim * dim] } else { vec![] },
            abs_sum: vec![0.0; dim],
            sq_sum: vec![0.0; dim],
            abs_max: vec![0.0; dim],
            rows: 0,
            with_xtx,
            scratch: vec![],
            mirrored: true,
        }
    }

    /// Add `rows` rows of `dim` values.
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let d = self.dim;
        debug_assert_eq!(x.len(), rows * d);
        for r in x.chunks_exact(d) {
            for (((a, s), m), v) in
                self.abs_sum.iter_mut().zip(self.sq_sum.iter_mut()).zip(self.abs_max.iter_mut()).zip(r)
            {
                *a += v.abs() as f64;
                *s += (*v as f64) * (*v as f64);
                *m = m.max(v.abs());
            }
        }
        self.rows += rows as u64;
        if !self.with_xtx {
            return;
        }
        self.scratch.resize(d * d, 0.0);
        let xm = MatRef::from_row_major_slice(x, rows, d);
        // XᵀX is symmetric: compute the lower triangle (half the work) and mirror it.
        faer::linalg::matmul::triangular::matmul(
            MatMut::from_row_major_slice_mut(&mut self.scratch, d, d),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xm.transpose(),
            BlockStructure::Rectangular,
            xm,
            BlockStructure::Rectangular,
            1.0f32,
            par(),
        );
        // Only the lower triangle is accumulated (rows in parallel: each element has one writer,
        // so the sums do not depend on the thread count); `mirror` fills the upper one when the
        // site is complete.
        let scratch = &self.scratch;
        self.xtx.par_chunks_exact_mut(d).enumerate().for_each(|(i, row)| {
            for (a, &v) in row[..=i].iter_mut().zip(&scratch[i * d..i * d + i + 1]) {
                *a += v as f64;
            }
        });
        self.mirrored = false;
    }

    /// Copy the accumulated lower triangle of `xtx` into the upper one: call once all rows are in
    /// (the pass does, before a method sees the statistics); `xtx` is then the full `Σ x xᵀ`.
    pub fn mirror(&mut self) {
        if self.mirrored || !self.with_xtx {
            return;
        }
        let d = self.dim;
        for i in 0..d {
            for j in 0..i {
                self.xtx[j * d + i] = self.xtx[i * d + j];
            }
        }
        self.mirrored = true;
    }

    /// GPTQ's Hessian `2/n Σ x xᵀ`.
    pub fn hessian(&self) -> Vec<f64> {
        let f = 2.0 / self.rows.max(1) as f64;
        self.xtx.iter().map(|v| v * f).collect()
    }

    /// Mean |x| per channel (AWQ's activation statistic).
    pub fn mean_abs(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        self.abs_sum.iter().map(|v| v / n).collect()
    }

    /// Mean x² per channel (the imatrix value llama-quantize uses).
    pub fn mean_sq(&self) -> Vec<f64> {
        let n = self.rows.max(1) as f64;
        self.sq_sum.iter().map(|v| v / n).collect()
    }
}

fn par() -> Par {
    match rayon::current_num_threads() {
        0 | 1 => Par::Seq,
        n => Par::rayon(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut r = crate::corpus::Rng::new(seed);
        (0..n).map(|_| r.symmetric()).collect()
    }

    #[test]
    fn accumulates_the_exact_gram_matrix() {
        let d = 37;
        let mut st = SiteStats::new(d, true);
        let a = data(11 * d, 1);
        let b = data(5 * d, 2);
        st.add(&a, 11);
        st.add(&b, 5);
        st.mirror();
        assert_eq!(st.rows, 16);
        let all: Vec<f32> = a.iter().chain(&b).copied().collect();
        for i in 0..d {
            for j in 0..d {
                let want: f64 = all.chunks(d).map(|r| r[i] as f64 * r[j] as f64).sum();
                assert!((st.xtx[i * d + j] - want).abs() < 1e-4, "{i},{j}");
            }
            let sq: f64 = all.chunks(d).map(|r| (r[i] as f64).powi(2)).sum();
            assert!((st.sq_sum[i] - sq).abs() < 1e-9);
            assert!((st.hessian()[i * d + i] - 2.0 * sq / 16.0).abs() < 1e-4);
        }
    }

    #[test]
    fn gram_matrix_does_not_depend_on_the_thread_count() {
        let d = 300;
        let x = data(512 * d, 3);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
            pool.install(|| {
                let mut st = SiteStats::new(d, true);
                st.add(&x, 512);
                st.mirror();
                st.xtx
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
    }
}
