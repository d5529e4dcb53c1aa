//! Orthogonal rotations for quantization (QuaRot, SpinQuant).
//!
//! An orthogonal `Q` leaves a network's function unchanged when it is folded into the weights on
//! both sides of a linear map (`x·Q · Qᵀ·W = x·W`), while spreading outlier channels over all
//! channels, so weights (and activations, and the KV cache) quantize with less error.
//!
//! Everything here applies `Q` to row vectors: [`Rotation::apply`] sets `x ← x·Q`. Column
//! rotations (`W ← Qᵀ·W`) are the same operation on each column, see [`Rotation::apply_columns`].

mod hadamard;

pub use hadamard::{hadamard_factor, Hadamard, KNOWN_K};

/// An orthogonal `n × n` map applied to row vectors.
pub trait Rotation: Send + Sync + std::fmt::Debug {
    /// The dimension.
    fn n(&self) -> usize;
    /// `x ← x·Q`; `x.len() == n`.
    fn apply(&self, x: &mut [f32]);
    /// A short description for metadata and reports (`hadamard(36·16, seed 0)`).
    fn describe(&self) -> String;

    /// Every row of a row-major matrix with rows of `n` values: `W ← W·Q`. In parallel; each row is
    /// independent, so the result does not depend on the thread count.
    fn apply_rows(&self, data: &mut [f32]) {
        use rayon::prelude::*;
        let n = self.n();
        assert_eq!(data.len() % n, 0, "row length must be the rotation size");
        data.par_chunks_mut(n).for_each(|r| self.apply(r));
    }

    /// Every column of a row-major `n × cols` matrix: `W ← Qᵀ·W` (each column `c` as a row vector
    /// becomes `c·Q`).
    fn apply_columns(&self, data: &mut [f32], cols: usize) {
        use rayon::prelude::*;
        let n = self.n();
        assert_eq!(data.len(), n * cols, "matrix must have n rows");
        // Transpose in, rotate rows, transpose back: column accesses would be strided.
        let mut t = vec![0f32; data.len()];
        t.par_chunks_mut(n).enumerate().for_each(|(c, col)| {
            for (r, v) in col.iter_mut().enumerate() {
                *v = data[r * cols + c];
            }
            self.apply(col);
        });
        data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (c, v) in row.iter_mut().enumerate() {
                *v = t[c * n + r];
            }
        });
    }

    /// The matrix `Q`, row-major (`Q[i][j]` at `i·n + j`): row `i` is `e_i·Q`.
    fn to_dense(&self) -> Vec<f32> {
        let n = self.n();
        let mut m = vec![0f32; n * n];
        for (i, row) in m.chunks_mut(n).enumerate() {
            row[i] = 1.0;
            self.apply(row);
        }
        m
    }
}

/// A dense orthogonal matrix (a learned rotation), row-major.
#[derive(Debug, Clone)]
pub struct Dense {
    n: usize,
    q: Vec<f32>,
    label: String,
}

impl Dense {
    /// `q` is `n × n` row-major; checked orthogonal to `tol` (max |QQᵀ − I|).
    pub fn new(n: usize, q: Vec<f32>, label: impl Into<String>, tol: f32) -> Result<Self, String> {
        if q.len() != n * n {
            return Err(format!("a {n}×{n} rotation needs {} values, got {}", n * n, q.len()));
        }
        if let Some(v) = q.iter().find(|v| !v.is_finite()) {
            return Err(format!("rotation holds a non-finite value ({v})"));
        }
        let err = orthogonality_error(&q, n);
        if err > tol {
            return Err(format!("the {n}×{n} rotation is not orthogonal: max |QQᵀ − I| = {err:e}"));
        }
        Ok(Dense { n, q, label: label.into() })
    }
    pub fn matrix(&self) -> &[f32] {
        &self.q
    }
}

impl Rotation for Dense {
    fn n(&self) -> usize {
        self.n
    }
    fn apply(&self, x: &mut [f32]) {
        let n = self.n;
        let mut y = vec![0f64; n];
        for (i, &xi) in x.iter().enumerate() {
            let row = &self.q[i * n..(i + 1) * n];
            for (yj, &q) in y.iter_mut().zip(row) {
                *yj += xi as f64 * q as f64;
            }
        }
        for (v, y) in x.iter_mut().zip(y) {
            *v = y as f32;
        }
    }
    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// max |Q·Qᵀ − I| of a row-major `n × n` matrix.
pub fn orthogonality_error(q: &[f32], n: usize) -> f32 {
    let mut worst = 0f64;
    for i in 0..n {
        for j in 0..n {
            let d: f64 = (0..n).map(|k| q[i * n + k] as f64 * q[j * n + k] as f64).sum();
            let want = if i == j { 1.0 } else { 0.0 };
            worst = worst.max((d - want).abs());
        }
    }
    worst as f32
}
