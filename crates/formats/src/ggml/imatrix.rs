//! Importance-matrix quantization: ggml's `quantize_row_*_impl` paths, taken when llama-quantize
//! has an imatrix (`quant_weights`) for a tensor. Ported line by line from ggml-quants.c, like the
//! reference searches in [`super::k::search`].
//!
//! Each function quantizes one **row**: the legacy types weight every value by
//! `qw[j]·sqrt(σ² + x[j]²)` with σ² the row's mean square; the k-quants compute σ² per
//! super-block (2× for Q3_K/Q4_K/Q5_K), and Q6_K feeds the importance straight into its search.
//! `qw` has one entry per column (`row.len()` of them), the same for every row of a tensor.
//! Q8_0 and the float types have no weighted path in ggml: an imatrix does not change them.
//! Signatures match [`crate::Codec::quantize_row_weighted`]: `out` is the row's bytes.
#![allow(clippy::needless_range_loop)]

use super::k::q2_k::BlockQ2K;
use super::k::q3_k::BlockQ3K;
use super::k::q4_k::BlockQ4K;
use super::k::q5_k::BlockQ5K;
use super::k::q6_k::BlockQ6K;
use super::k::search::{
    make_qkx3_quants, make_qp_quants, make_qx_quants, pack_q4_k, pack_q5_k, q2_k_finish, q3_k_finish,
    q45_k_requantize, quantize_q6_k_weighted,
};
use super::k::{pack_scale_min_k4, QK_K};
use super::q4_0::BlockQ4_0;
use super::q4_1::BlockQ4_1;
use super::q5_0::BlockQ5_0;
use super::q5_1::BlockQ5_1;
use crate::f16_bits;

/// Mean square of a slice, summed in order as ggml does (`sum_x2/n`).
fn mean_square(x: &[f32]) -> f32 {
    let mut s = 0.0f32;
    for &v in x {
        s += v * v;
    }
    s / x.len() as f32
}

/// `qw[j] * sqrtf(sigma2 + x[j]*x[j])` for one block.
fn block_weights<const N: usize>(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; N] {
    let mut w = [0f32; N];
    for j in 0..N {
        w[j] = qw[j] * (sigma2 + x[j] * x[j]).sqrt();
    }
    w
}

/// The legacy-type driver: σ² over the whole row, then `f(block, weights, out)` for each block of 32.
fn legacy_blocks<B>(x: &[f32], qw: &[f32], out: &mut [B], f: impl Fn(&[f32], &[f32; 32], &mut B)) {
    let sigma2 = mean_square(x);
    for (ib, y) in out.iter_mut().enumerate() {
        let (xb, w) = (&x[32 * ib..32 * ib + 32], &qw[32 * ib..32 * ib + 32]);
        f(xb, &block_weights::<32>(xb, w, sigma2), y);
    }
}

fn q5_high_bits(l: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
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

/// `quantize_row_q4_0_impl`.
pub fn q4_0(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4_0] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0i8; 32];
        y.d = f16_bits(make_qx_quants(xb, 8, &mut l, 1, Some(weight)));
        for j in 0..16 {
            y.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    });
}

/// `quantize_row_q4_1_impl`.
pub fn q4_1(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4_1] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0u8; 32];
        let (d, the_min) = make_qkx3_quants(xb, weight, 15, &mut l, -0.9, 0.05, 36, false);
        (y.d, y.m) = (f16_bits(d), f16_bits(-the_min));
        for j in 0..16 {
            y.qs[j] = l[j] | (l[j + 16] << 4);
        }
    });
}

/// `quantize_row_q5_0_impl`.
pub fn q5_0(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5_0] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0i8; 32];
        y.d = f16_bits(make_qx_quants(xb, 16, &mut l, 1, Some(weight)));
        (y.qs, y.qh) = q5_high_bits(&l.map(|v| v as u8));
    });
}

/// `quantize_row_q5_1_impl`.
pub fn q5_1(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5_1] = bytemuck::cast_slice_mut(out);
    legacy_blocks(x, qw, out, |xb, weight, y| {
        let mut l = [0u8; 32];
        let (d, the_min) = make_qkx3_quants(xb, weight, 31, &mut l, -0.9, 0.05, 36, false);
        (y.d, y.m) = (f16_bits(d), f16_bits(-the_min));
        (y.qs, y.qh) = q5_high_bits(&l);
    });
}

/// `quantize_row_q2_K_impl`.
pub fn q2_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ2K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let (x, qw) = (&x[QK_K * i..QK_K * (i + 1)], &qw[QK_K * i..QK_K * (i + 1)]);
        let sigma2 = mean_square(x);
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let s = 16 * j..16 * j + 16;
            let weight = block_weights::<16>(&x[s.clone()], &qw[s.clone()], sigma2);
            for w in weight {
                sw[j] += w;
            }
            (scales[j], mins[j]) =
                make_qkx3_quants(&x[s.clone()], &weight, 3, &mut l[s], -0.9, 0.05, 36, false);
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
        let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
        let mut sc = [0u8; 16];
        for j in 0..16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        *y = BlockQ2K::new(sc, [0u8; 64], dm, mm);
        q2_k_finish(x, &mut l, y);
    }
}

/// `quantize_row_q3_K_impl`.
pub fn q3_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ3K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let (x, qw) = (&x[QK_K * i..QK_K * (i + 1)], &qw[QK_K * i..QK_K * (i + 1)]);
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        for j in 0..16 {
            let s = 16 * j..16 * j + 16;
            let weight = block_weights::<16>(&x[s.clone()], &qw[s.clone()], sigma2);
            let mut sumw = 0.0f32;
            for w in weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(&x[s.clone()], 4, &mut l[s], 1, Some(&weight));
        }
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(&scales, 32, &mut ls, 1, Some(&sw));
        *y = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: f16_bits(d_block) };
        for j in 0..16 {
            let mut lv = ls[j] as u8;
            if j < 8 {
                y.scales[j] = lv & 0xF;
            } else {
                y.scales[j - 8] |= (lv & 0xF) << 4;
            }
            lv >>= 4;
            y.scales[j % 4 + 8] |= lv << (2 * (j / 4));
        }
        q3_k_finish(x, &mut l, y);
    }
}

/// The scale/min search shared by `quantize_row_q4_K_impl` and `_q5_K_impl`.
fn q45_k_weighted(
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

/// `quantize_row_q4_K_impl`.
pub fn q4_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ4K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        let (d, dmin, scales, l) = q45_k_weighted(&x[s.clone()], &qw[s], 15, false);
        *y = pack_q4_k(d, dmin, scales, &l);
    }
}

/// `quantize_row_q5_K_impl`.
pub fn q5_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ5K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        let (d, dmin, scales, l) = q45_k_weighted(&x[s.clone()], &qw[s], 31, true);
        *y = pack_q5_k(d, dmin, scales, &l);
    }
}

/// `quantize_row_q6_K_impl`.
pub fn q6_k(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let out: &mut [BlockQ6K] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = QK_K * i..QK_K * (i + 1);
        *y = quantize_q6_k_weighted(&x[s.clone()], Some(&qw[s]));
    }
}
