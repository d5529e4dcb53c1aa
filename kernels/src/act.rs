//! Activations for the integer kernels: int8 codes with one f32 scale per 16 values.
//!
//! ggml quantizes activations to Q8_0 (one scale per 32) or Q8_K (one per 256); we use one scale
//! per 16, matching the finest weight group, so activation rounding costs less than either
//! (measured: see docs/kernels.md). `sum[g] = d[g]·Σ q` over the group feeds the weight offsets.

use crate::decode::GROUP;

/// `x ≈ d[i/16]·q[i]`.
#[derive(Debug, Clone, Default)]
pub struct QAct {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// `d[g]·Σ_{i∈g} q[i]`.
    pub sum: Vec<f32>,
}

impl QAct {
    /// Quantize `x` (length a multiple of 16) — the scalar reference and the SIMD kernels share
    /// this code (`#[inline(always)]`, compiled per instruction set); rounding is to nearest even
    /// in every build, so all give the same bytes.
    #[inline(always)]
    pub fn quantize_into(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len() % GROUP, 0);
        let g = x.len() / GROUP;
        self.q.resize(x.len(), 0);
        self.d.resize(g, 0.0);
        self.sum.resize(g, 0.0);
        for (((xs, qs), d), s) in
            x.chunks_exact(GROUP).zip(self.q.chunks_exact_mut(GROUP)).zip(&mut self.d).zip(&mut self.sum)
        {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let dd = amax / 127.0;
            let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let mut acc = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                let r = (v * id).round_ties_even() as i32;
                *q = r as i8;
                acc += r;
            }
            *d = dd;
            *s = dd * acc as f32;
        }
    }

    pub fn len(&self) -> usize {
        self.q.len()
    }
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
}
