//! Linear layers behind one seam. [`QLinear`] runs a weight in its stored format (F32 included;
//! f32 batches go straight to faer's GEMM) through the fused kernels of `quantkit-kernels`, or
//! compressed-tensors' per-channel 8-bit weights with their activation scheme ([`Weights::W8`]).

use std::sync::Arc;

/// `y[n × out] = x[n × in] · Wᵀ (+ b)`, row-major activations.
pub trait Linear: Send + Sync {
    fn in_features(&self) -> usize;
    fn out_features(&self) -> usize;
    /// `x` holds `n` rows of `in_features`, `y` gets `n` rows of `out_features` (overwritten).
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]);
}

/// How a linear layer's weights are held.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A GGUF tensor's bytes (usually memory-mapped) or f32, run by the fused dequant-GEMV/GEMM
    /// kernels.
    Q(quantkit_kernels::QMatrix),
    /// compressed-tensors' per-channel 8-bit weights (int8 or FP8 E4M3) with the checkpoint's
    /// activation scheme.
    W8(Arc<quantkit_kernels::w8::Mat8>, Acts8),
    /// bitsandbytes NF4 codes and absmax values (fused decode GEMV; batches dequantize panels).
    Nf4(Arc<quantkit_kernels::nf4::Nf4Mat>),
}

/// What a W8 linear does to its input, as the checkpoint's `input_activations` declare it:
/// weight-only (f32 activations), per-token int8 run in integer arithmetic, or per-token FP8 E4M3
/// (each token scaled to ±448 and rounded to E4M3 values, then multiplied in f32: products of E4M3
/// values are exact in f32; CPUs have no FP8 units).
pub use quantkit_io::layout::ct_dense::DenseActs as Acts8;

/// A weight in its stored format plus an optional bias.
#[derive(Debug, Clone)]
pub struct QLinear {
    pub w: Weights,
    pub bias: Option<Vec<f32>>,
}

impl QLinear {
    pub fn new(m: quantkit_kernels::QMatrix, bias: Option<Vec<f32>>) -> Self {
        QLinear { w: Weights::Q(m), bias }
    }

    fn add_bias(&self, y: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_features()) {
                for (v, bb) in row.iter_mut().zip(b) {
                    *v += bb;
                }
            }
        }
    }

    /// Rows `[r0, r1)` of the weight as f32.
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        match &self.w {
            Weights::Q(m) => m.dequantize_rows(r0, r1, out),
            Weights::W8(m, _) => m.dequantize_rows(r0, r1, out),
            Weights::Nf4(m) => m.dequantize_rows(r0, r1, out),
        }
    }

    /// Bytes of weights one token reads.
    pub fn stored_bytes(&self) -> u64 {
        match &self.w {
            Weights::Q(m) => m.bytes().len() as u64,
            Weights::W8(m, _) => m.bytes(),
            Weights::Nf4(m) => m.bytes(),
        }
    }

    /// The weight format for reports (`Q4_K`, `int8 W8A8`, …).
    pub fn type_name(&self) -> String {
        match &self.w {
            Weights::Q(m) => m.ty.name().to_string(),
            Weights::Nf4(_) => "nf4".to_string(),
            Weights::W8(m, a) => format!(
                "{} {}",
                if m.is_int8() { "int8" } else { "fp8-e4m3" },
                match a {
                    Acts8::None => "W8A16",
                    Acts8::Int8Token => "W8A8",
                    Acts8::Int4Token => "W4A4",
                    Acts8::Fp8Token => "W8A8-dynamic",
                }
            ),
        }
    }
}

impl Linear for QLinear {
    fn in_features(&self) -> usize {
        match &self.w {
            Weights::Q(m) => m.cols,
            Weights::W8(m, _) => m.cols,
            Weights::Nf4(m) => m.cols,
        }
    }
    fn out_features(&self) -> usize {
        match &self.w {
            Weights::Q(m) => m.rows,
            Weights::W8(m, _) => m.rows,
            Weights::Nf4(m) => m.rows,
        }
    }
    fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        match &self.w {
            Weights::Q(m) => m.forward(x, n, y),
            Weights::W8(m, acts) => w8_forward(m, *acts, x, n, y),
            Weights::Nf4(m) => m.forward(x, n, y),
        }
        self.add_bias(y);
    }
}

fn w8_forward(m: &quantkit_kernels::w8::Mat8, acts: Acts8, x: &[f32], n: usize, y: &mut [f32]) {
    match acts {
        Acts8::None => m.forward(x, n, y),
        Acts8::Int8Token | Acts8::Int4Token => {
            let qmax = if acts == Acts8::Int4Token { 7 } else { 127 };
            let a = quantkit_kernels::w8::I8Acts::quantize_to(x, n, m.cols, qmax);
            m.forward_i8(&a, y).expect("W8A8 linears are checked at load (int8, per-channel)");
        }
        Acts8::Fp8Token => {
            let mut xq = x.to_vec();
            for row in xq.chunks_exact_mut(m.cols.max(1)) {
                fp8_token(row);
            }
            m.forward(&xq, n, y);
        }
    }
}

/// One token rounded as FP8_DYNAMIC's activations: `s = max|x| / 448`, `x ← s · e4m3(x / s)`.
pub fn fp8_token(row: &mut [f32]) {
    use quantkit_io::layout::fp8;
    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 {
        let s = amax / 448.0;
        for v in row.iter_mut() {
            *v = s * fp8::to_f32(fp8::from_f32(*v / s));
        }
    }
}

/// Several linears over the same input (q/k/v, gate/up) in one pass of the thread pool (GGUF
/// weights; 8-bit channel weights run one by one).
pub fn forward_group(ls: &[&QLinear], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    let ms: Option<Vec<&quantkit_kernels::QMatrix>> = ls
        .iter()
        .map(|l| match &l.w {
            Weights::Q(m) => Some(m),
            Weights::W8(..) | Weights::Nf4(_) => None,
        })
        .collect();
    match ms {
        Some(ms) => {
            quantkit_kernels::forward_group(&ms, x, n, ys);
            for (l, y) in ls.iter().zip(ys.iter_mut()) {
                l.add_bias(y);
            }
        }
        None => {
            for (l, y) in ls.iter().zip(ys.iter_mut()) {
                l.forward(x, n, y);
            }
        }
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
        let l = QLinear::new(m_, Some(b.clone()));
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
