//! Activations for the integer kernels: int8 codes with one f32 scale per 16 values.
//!
//! ggml quantizes activations to Q8_0 (one scale per 32) or Q8_K (one per 256); we use one scale
//! per 16, matching the finest weight group, so activation rounding costs less than either
//! (measured: see docs/kernels.md). `sum[g] = d[g]·Σ q` over the group feeds the weight offsets.
//!
//! The fused AVX-512 kernels (`cpu::fused`) also read a few per-lane views, computed here once per
//! call and shared by every row: the codes padded with zeros to a multiple of 64 (so a 64-byte
//! load never needs a mask), `s4n` (minus the sum of each 4 consecutive codes: one `vpdpbusd`
//! lane), `dx` (each group's scale repeated for its 4 lanes) and `sum32` (offsets per 32).

use crate::decode::GROUP;

/// `x ≈ d[i/16]·q[i]`.
#[derive(Debug, Clone, Default)]
pub struct QAct {
    /// The codes, then zeros up to a multiple of 64.
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    /// `d[g]·Σ_{i∈g} q[i]`.
    pub sum: Vec<f32>,
    /// `−Σ_{i<4} q[4l + i]` per lane of 4 codes (padded like `q`).
    pub s4n: Vec<i32>,
    /// `d[l/4]` per lane of 4 codes (padded like `q`, zeros there).
    pub dx: Vec<f32>,
    /// `sum[2j] + sum[2j+1]`: the offset weight of each 32 codes (zero-padded: 8 lanes can be read
    /// from any 32-code boundary).
    pub sum32: Vec<f32>,
    k: usize,
}

impl QAct {
    /// Quantize `x` (length a multiple of 16) — the scalar reference and the SIMD kernels share
    /// this code (`#[inline(always)]`, compiled per instruction set); rounding is to nearest even
    /// in every build, so all give the same bytes.
    #[inline(always)]
    pub fn quantize_into(&mut self, x: &[f32]) {
        debug_assert_eq!(x.len() % GROUP, 0);
        let k = x.len();
        let g = k / GROUP;
        let padded = k.div_ceil(64) * 64;
        self.k = k;
        self.q.clear();
        self.q.resize(padded, 0);
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
        self.s4n.clear();
        self.s4n.extend(self.q.chunks_exact(4).map(|c| -c.iter().map(|&v| v as i32).sum::<i32>()));
        self.dx.clear();
        self.dx.extend((0..padded / 4).map(|l| self.d.get(l / 4).copied().unwrap_or(0.0)));
        self.sum32.clear();
        self.sum32.extend(self.sum.chunks(2).map(|p| p.iter().sum::<f32>()));
        // Eight readable lanes from any unit start, also a legacy unit's in the last 8 groups.
        self.sum32.resize(self.sum32.len().div_ceil(8) * 8 + 8, 0.0);
    }

    /// Activations quantized (not counting padding).
    pub fn len(&self) -> usize {
        self.k
    }
    pub fn is_empty(&self) -> bool {
        self.k == 0
    }
}
