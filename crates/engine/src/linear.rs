//! Linear layers behind one seam. [`QLinear`] runs a weight in its stored format (F32 included;
//! f32 batches go straight to faer's GEMM) through the fused kernels of `quantkit-kernels`.

/// `y[n × out] = x[n × in] · Wᵀ (+ b)`, row-major activations.
pub trait Linear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `x` holds `n` rows of `in_features`, `y` gets `n` rows of `out_features` (overwritten).
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]);
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
    fn f32_linear_matches_a_naive_product() {
        let (k, m) = (37, 11);
        let w: Vec<f32> = (0..m * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 3.0).collect();
        let b: Vec<f32> = (0..m).map(|i| i as f32 * 0.25).collect();
        let bytes = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m_ = quantkit_kernels::QMatrix::new(
            quantkit_core::GgmlType::F32,
            m,
            k,
            quantkit_kernels::WeightBytes::owned(bytes),
        )
        .expect("matrix");
        let l = QLinear { m: m_, bias: Some(b.clone()) };
        // 5 tokens take the GEMV path, 13 the GEMM path.
        for n in [5, 13] {
            let x: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let mut y = vec![0f32; n * m];
            l.forward(&x, n, &mut y);
            for i in 0..n {
                for j in 0..m {
                    let want: f64 =
                        (0..k).map(|c| x[i * k + c] as f64 * w[j * k + c] as f64).sum::<f64>() + b[j] as f64;
                    assert!((y[i * m + j] as f64 - want).abs() < 1e-4 * (1.0 + want.abs()), "{n}: {i},{j}");
                }
            }
        }
    }
}
