//! Importance-matrix quantization: the helpers shared by ggml's `quantize_row_*_impl` paths,
//! taken when llama-quantize has an imatrix (`quant_weights`) for a tensor. Each format's
//! weighted entry point (`quantize_weighted`, its `BlockFormat::WEIGHTED`) lives in the format's
//! own file; they are ported line by line from ggml-quants.c, like the reference searches in
//! [`super::k::search`].
//!
//! Each entry point quantizes one **row**: the legacy types weight every value by
//! `qw[j]·sqrt(σ² + x[j]²)` with σ² the row's mean square; the k-quants compute σ² per
//! super-block (2× for Q3_K/Q4_K/Q5_K), and Q6_K feeds the importance straight into its search.
//! `qw` has one entry per column (`row.len()` of them), the same for every row of a tensor.
//! Q8_0 and the float types have no weighted path in ggml: an imatrix does not change them.
//! Signatures match [`crate::Codec::quantize_row_weighted`]: `out` is the row's bytes.
#![allow(clippy::needless_range_loop)]

use super::k::search::{make_qkx3_quants, make_qp_quants, q45_k_requantize};
use super::k::{pack_scale_min_k4, QK_K};
use crate::f16_bits;

/// Mean square of a slice, summed in order as ggml does (`sum_x2/n`).
pub(crate) fn mean_square(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s / x.len() as f32
}

/// `qw[j] * sqrtf(sigma2 + x[j]*x[j])` for one block.
pub(crate) fn block_weights<const N: usize>(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; N] {
    let mut w = [0f32; N];
    for j in 0..N {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// The legacy-type driver: σ² over the whole row, then `f(block, weights, out)` for each block of 32.
pub(crate) fn legacy_blocks<B>(x: &[f32], qw: &[f32], out: &mut [B], f: impl Fn(&[f32], &[f32; 32], &mut B)) {
    let sigma2 = mean_square(x);
    for (ib, y) in out.iter_mut().enumerate() {
        let (xb, w) = (&x[32 * ib..32 * ib + 32], &qw[32 * ib..32 * ib + 32]);
        f(xb, &block_weights::<32>(xb, w, sigma2), y);
    }
}

pub(crate) fn q5_high_bits(l: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qs = [0u8; 16];
    let mut qh = 0u32;
    for j in 0..16 {
        let (x0, x1) = (l[j], l[j + 16]);
        qs[j] = (x0 & 0x0F) | ((x1 & 0x0F) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    (qs, qh.to_le_bytes())
}

/// The scale/min search shared by `quantize_row_q4_K_impl` and `_q5_K_impl`.
pub(crate) fn q45_k_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp63: bool,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let s = 32 * j..32 * j + 32;
        let weight = block_weights::<32>(&x[s.clone()], &qw[s.clone()], sigma2);
        let mut sumw = 0.0f32;
        for w in weight {
            sumw += w;
        }
        sw[j] = sumw;
        (scales[j], mins[j]) =
            make_qkx3_quants(&x[s.clone()], &weight, nmax, &mut l[s], -0.9, 0.05, 36, false);
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    if clamp63 {
        ls = ls.map(|v| v.min(63));
        lm = lm.map(|v| v.min(63));
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, dmin) = (f16_bits(d_block), f16_bits(m_block));
    q45_k_requantize(x, &packed, d, dmin, nmax, &mut l);
    (d, dmin, packed, l)
}
