//! Linear layers behind one seam. [`QLinear`] runs a weight in its stored format through the fused
//! kernels of `quantkit-kernels` (F32 included); [`DenseF32`] is the plain faer reference.

use faer::{Accum, MatMut, MatRef};

/// `y[n × out] = x[n × in] · Wᵀ (+ b)`, row-major activations.
pub trait Linear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `x` holds `n` rows of `in_features`, `y` gets `n` rows of `out_features` (overwritten).
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]);
}

/// A dense f32 weight `[out × in]` (GGUF row order) with an optional bias.
#[derive(Debug)]
pub struct DenseF32 {
    pub w: std::sync::Arc<Vec<f32>>,
    pub rows: usize,
    pub cols: usize,
    pub bias: Option<Vec<f32>>,
}

impl Linear for DenseF32 {
    fn in_features(&self) -> usize {
        self.cols
    }
    fn out_features(&self) -> usize {
        self.rows
    }
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        debug_assert_eq!(x.len(), n * self.cols);
        debug_assert_eq!(y.len(), n * self.rows);
        let lhs = MatRef::from_row_major_slice(x, n, self.cols);
        // W is [out × in] row-major, so Wᵀ is the same memory read column-major.
        let rhs = MatRef::from_column_major_slice(&self.w[..], self.cols, self.rows);
        let dst = MatMut::from_row_major_slice_mut(y, n, self.rows);
        faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, quantkit_kernels::faer_par());
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.rows) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }
}

/// A weight in its stored format (a GGUF tensor's bytes, usually memory-mapped) plus an optional
/// bias, run by the fused dequant-GEMV/GEMM kernels.
#[derive(Debug, Clone)]
pub struct QLinear {
    pub m: quantkit_kernels::QMatrix,
    pub bias: Option<Vec<f32>>,
}

impl QLinear {
    fn add_bias(&self, y: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.m.rows) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }
}

impl Linear for QLinear {
    fn in_features(&self) -> usize {
        self.m.cols
    }
    fn out_features(&self) -> usize {
        self.m.rows
    }
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        self.m.forward(x, n, y);
        self.add_bias(y);
    }
}

/// Several linears over the same input (q/k/v, gate/up) in one pass of the thread pool.
pub fn forward_group(ls: &[&QLinear], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    let ms: Vec<&quantkit_kernels::QMatrix> = ls.iter().map(|l| &l.m).collect();
    quantkit_kernels::forward_group(&ms, x, n, ys);
    for (l, y) in ls.iter().zip(ys.iter_mut()) {
        l.add_bias(y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_matches_a_naive_product() {
        let (n, k, m) = (5, 37, 11);
        let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..m).map(|i| i as f32 * 0.25).collect();
        let l = DenseF32 { w: std::sync::Arc::new(w.clone()), rows: m, cols: k, bias: Some(b.clone()) };
        let mut y = vec![0f32; n * m];
        l.forward(&x, n, &mut y);
        for i in 0..n {
            for j in 0..m {
                let want: f64 =
                    (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).sum::<f64>() + b[j] as f64;
                assert!((y[i * m + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{i},{j}");
            }
        }
    }
}
