//! ggml's k-quant reference quantizers (`quantize_row_q{2,3,4,5,6}_K_ref`) and the scale searches
//! they use (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), ported line by line from
//! ggml/src/ggml-quants.c. Expression order follows the C source exactly (C evaluates `w*l*l` as
//! `(w*l)*l` in f32, ints converted to float) because the searches compare errors and any
//! difference in rounding can flip a decision. Loops keep the C code's index structure on purpose
//! (so they can be checked side by side), hence the lint allowance.
#![allow(clippy::needless_range_loop)]

use super::q2_k::BlockQ2K;
use super::q3_k::BlockQ3K;
use super::q4_k::BlockQ4K;
use super::q5_k::BlockQ5K;
use super::q6_k::BlockQ6K;
use super::{get_scale_min_k4, pack_scale_min_k4, QK_K};
use crate::{f16_bits, f16_value};

const GROUP_MAX_EPS: f32 = 1e-15;

/// `nearest_int`: round to nearest, ties to even, via the 1.5·2²³ trick.
#[inline]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12_582_912.0;
    (val.to_bits() as i32 & 0x007f_ffff) - 0x0040_0000
}

/// `make_qx_quants` (symmetric, signed codes `L ∈ [0, 2·nmax)`). `qw`, when given, replaces the
/// rmse_type weighting (the importance-matrix path).
pub fn make_qx_quants(x: &[f32], nmax: i32, l_out: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let max = crate::ggml::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    if rmse_type == 0 {
        for i in 0..n {
            l_out[i] = (nmax + clamp(nearest_int(iscale * x[i]))) as i8;
        }
        return 1.0 / iscale;
    }
    let weight = |i: usize| -> f32 {
        let v = x[i];
        match (qw, rmse_type) {
            (Some(q), _) => q[i],
            (None, 1) => v * v,
            (None, 2) => 1.0,
            (None, 3) => v.abs(),
            _ => v.abs().sqrt(),
        }
    };
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = clamp(nearest_int(iscale * x[i]));
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    // The 18 trial scales do not depend on one another (only the choice among them does), so
    // their sums are accumulated side by side — each one still adds in index order, exactly as
    // ggml's sequential loop, but the 18 chains vectorise instead of waiting on each other.
    const STEPS: [i32; 18] = [-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    let iscales: [f32; 18] = STEPS.map(|is| -(nmax as f32 + 0.1f32 * is as f32) / max);
    let (mut slx, mut sl2) = ([0f32; 18], [0f32; 18]);
    for (i, &v) in x.iter().enumerate() {
        let w = weight(i);
        for k in 0..18 {
            let l = clamp(nearest_int(iscales[k] * v)) as f32;
            slx[k] += w * v * l;
            sl2[k] += w * l * l;
        }
    }
    for k in 0..18 {
        if sl2[k] > 0.0 && slx[k] * slx[k] > best * sl2[k] {
            for i in 0..n {
                l_out[i] = (nmax + clamp(nearest_int(iscales[k] * x[i]))) as i8;
            }
            scale = slx[k] / sl2[k];
            best = scale * slx[k];
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse = true`.
pub fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let max = crate::ggml::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    let mut l = [0i32; 16];
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        let w = x[i] * x[i];
        sumlx += w * x[i] * l[i] as f32;
        suml2 += w * l[i] as f32 * l[i] as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let mut slx = sumlx - w * x[i] * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * l[i] as f32 * l[i] as f32;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for i in 0..n {
        l_out[i] = (l[i] + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants`: asymmetric codes `L ∈ [0, nmax]` with a (non-positive) minimum, searching
/// `nstep + 1` scales. Returns (scale, −min).
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants(x, weights, nmax, l_out, rmin, rdelta, nstep, use_mad, false)
}

/// `make_qkx3_quants` (the importance-matrix variant of [`make_qkx2_quants`]): the same search,
/// with ∞/NaN-safe code rounding in the trial steps. Returns (scale, −min).
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants(x, weights, nmax, l_out, rmin, rdelta, nstep, use_mad, true)
}

/// Trial steps evaluated side by side in [`make_qkx_quants`].
const LANES: usize = 8;

/// The body of `make_qkx2_quants` / `make_qkx3_quants` (`v3` selects the latter's rounding).
///
/// ggml tries the steps one after another; a step depends on the previous ones only through `min`
/// (updated when a step wins). We evaluate up to [`LANES`] steps at once assuming `min` stays, each
/// lane adding in index order exactly as the C loop does, then walk the lanes in step order making
/// ggml's comparisons; when a winning step changes `min`, the lanes after it are discarded and
/// evaluated again from the new `min`. The result is bit-identical to the sequential search.
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    v3: bool,
) -> (f32, f32) {
    let n = x.len();
    assert!(n <= 32, "sub-blocks have at most 32 values");
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        // qkx2 tests `max == min`; with min ≤ max always, the same condition.
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l_out[i] as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let nmaxf = nmax as f32;
    let code = |v: f32| -> i32 {
        if v3 {
            // qkx3: `v > 0 ? nearest_int(MIN(v, nmax)) : 0`
            if v > 0.0 {
                nearest_int(if v < nmaxf { v } else { nmaxf })
            } else {
                0
            }
        } else {
            nearest_int(v).clamp(0, nmax)
        }
    };
    let mut laux = [[0u8; 32]; LANES];
    let mut is = 0i32;
    while is <= nstep {
        let g = (LANES as i32).min(nstep + 1 - is) as usize;
        let base_min = min;
        let mut isc = [0f32; LANES];
        for (k, v) in isc.iter_mut().enumerate().take(g) {
            *v = (rmin + rdelta * (is + k as i32) as f32 + nmaxf) / (max - min);
        }
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            let xm = xi - min;
            for k in 0..LANES {
                let l = code(isc[k] * xm);
                laux[k][i] = l as u8;
                let lf = l as f32;
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * xi;
            }
        }
        let (mut this_scale, mut this_min, mut ok) = ([0f32; LANES], [0f32; LANES], [false; LANES]);
        for k in 0..g {
            let d = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
            if d > 0.0 {
                ok[k] = true;
                this_scale[k] = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / d;
                this_min[k] = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / d;
                if this_min[k] > 0.0 {
                    this_min[k] = 0.0;
                    this_scale[k] = sum_xl[k] / sum_l2[k];
                }
            }
        }
        let mut cur = [0f32; LANES];
        for i in 0..n {
            let (xi, w) = (x[i], weights[i]);
            for k in 0..LANES {
                let diff = this_scale[k] * laux[k][i] as f32 + this_min[k] - xi;
                cur[k] += w * err(diff);
            }
        }
        let mut advance = g;
        for k in 0..g {
            if ok[k] && cur[k] < best_error {
                l_out[..n].copy_from_slice(&laux[k][..n]);
                best_error = cur[k];
                scale = this_scale[k];
                min = this_min[k];
                if min.to_bits() != base_min.to_bits() {
                    advance = k + 1;
                    break;
                }
            }
        }
        is += advance as i32;
    }
    (scale, -min)
}

/// `make_qp_quants`: unsigned codes `L ∈ [0, nmax]` for non-negative values (the sub-block
/// scales and mins of a super-block), weighted by `qw`. Returns the scale. Codes are stored as
/// C's `uint8_t` stores them (an out-of-range int wraps).
pub fn make_qp_quants(x: &[f32], nmax: i32, l: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    for &v in x {
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        l[..n].fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..n {
        l[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let li = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * li as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let li = nearest_int(iscale * x[i]).min(nmax);
        l[i] = li as u8;
        let w = qw[i];
        sumlx += w * x[i] * li as f32;
        suml2 += w * li as f32 * li as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `quantize_row_q2_K_ref` for one super-block.
pub fn quantize_q2_k(x: &[f32]) -> BlockQ2K {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let q4scale = 15.0f32;
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let mut weights = [0f32; 16];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = v.abs();
        }
        let (s, m) = make_qkx2_quants(xs, &weights, 3, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let mut sc = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        max_scale / q4scale
    } else {
        0.0
    };
    let dmin = if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        max_min / q4scale
    } else {
        0.0
    };
    let mut blk = BlockQ2K::new(sc, [0u8; 64], d, dmin);
    q2_k_finish(x, &mut l, &mut blk);
    blk
}

/// The common tail of `quantize_row_q2_K_ref` and `_impl`: re-derive the 2-bit codes from the
/// stored 4-bit scales and mins (sub-blocks with scale 0 keep theirs), then pack them.
pub(crate) fn q2_k_finish(x: &[f32], l: &mut [u8; QK_K], blk: &mut BlockQ2K) {
    let (d16, dmin16) = (f16_value(blk.d), f16_value(blk.dmin));
    let sc = blk.scales;
    for j in 0..16 {
        let d = d16 * (sc[j] & 0xF) as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin16 * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3) as u8;
        }
    }
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            blk.qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// `quantize_row_q3_K_ref` for one super-block.
pub fn quantize_q3_k(x: &[f32]) -> BlockQ3K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
        let scale = scales[j].abs();
        if scale > amax {
            amax = scale;
            max_scale = scales[j];
        }
    }
    let mut blk = BlockQ3K { hmask: [0; 32], qs: [0; 64], scales: [0; 12], d: [0; 2] };
    if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        for j in 0..16 {
            let lv = nearest_int(iscale * scales[j]) as i8; // C stores the int in an int8_t
            let lv = (lv.clamp(-32, 31) + 32) as u8;
            if j < 8 {
                blk.scales[j] = lv & 0xF;
            } else {
                blk.scales[j - 8] |= (lv & 0xF) << 4;
            }
            blk.scales[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
        }
        blk.d = f16_bits(1.0 / iscale);
    } else {
        blk.d = f16_bits(0.0);
    }
    q3_k_finish(x, &mut l, &mut blk);
    blk
}

/// The common tail of `quantize_row_q3_K_ref` and `quantize_row_q3_K_impl`: re-derive the codes
/// from the stored 6-bit scales (sub-blocks whose scale is 0 keep their search codes), then pack
/// the high bits into `hmask` and the low two bits into `qs`.
pub(crate) fn q3_k_finish(x: &[f32], l: &mut [i8; QK_K], blk: &mut BlockQ3K) {
    let d_all = f16_value(blk.d);
    for j in 0..16 {
        let lo = if j < 8 { blk.scales[j] & 0xF } else { blk.scales[j - 8] >> 4 };
        let sc = (lo | (((blk.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    // The high bit of code i goes to bit i/32 of hmask[i%32] (C: a running mask, with a branch).
    for (i, v) in l.iter_mut().enumerate() {
        let hi = (*v > 3) as u8;
        blk.hmask[i % (QK_K / 8)] |= hi << (i / (QK_K / 8));
        *v -= 4 * hi as i8;
    }
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            blk.qs[j / 4 + k] =
                (l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6)) as u8;
        }
    }
}

/// The shared first half of `quantize_row_q{4,5}_K_ref`: per-sub-block scale/min search, 6-bit
/// packing, then re-deriving the codes from the stored scales. Returns (d, dmin, scales, codes).
fn q45_k(x: &[f32], nmax: i32, rmin: f32, nstep: i32) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let mut weights = [0f32; 32];
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) =
            make_qkx2_quants(xs, &weights, nmax, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep, false);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        // C: `uint8_t ls = nearest_int(...)` keeps the low 8 bits, then MIN(63, ls).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let (d, dmin) = (f16_bits(max_scale / 63.0), f16_bits(max_min / 63.0));
    q45_k_requantize(x, &packed, d, dmin, nmax, &mut l);
    (d, dmin, packed, l)
}

/// Re-derive Q4_K/Q5_K codes from the stored scales/mins (sub-blocks with scale 0 keep theirs).
pub(crate) fn q45_k_requantize(
    x: &[f32],
    packed: &[u8; 12],
    d: [u8; 2],
    dmin: [u8; 2],
    nmax: i32,
    l: &mut [u8; QK_K],
) {
    let (d16, dmin16) = (f16_value(d), f16_value(dmin));
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dd = d16 * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin16 * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
}

/// `quantize_row_q4_K_ref` for one super-block.
pub fn quantize_q4_k(x: &[f32]) -> BlockQ4K {
    let (d, dmin, scales, l) = q45_k(x, 15, -1.0, 20);
    pack_q4_k(d, dmin, scales, &l)
}

pub(crate) fn pack_q4_k(d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], l: &[u8; QK_K]) -> BlockQ4K {
    let mut qs = [0u8; 128];
    for (n, j) in (0..QK_K).step_by(64).enumerate() {
        for k in 0..32 {
            qs[32 * n + k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
    BlockQ4K { d, dmin, scales, qs }
}

/// `quantize_row_q5_K_ref` for one super-block.
pub fn quantize_q5_k(x: &[f32]) -> BlockQ5K {
    let (d, dmin, scales, l) = q45_k(x, 31, -0.5, 15);
    pack_q5_k(d, dmin, scales, &l)
}

pub(crate) fn pack_q5_k(d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], l: &[u8; QK_K]) -> BlockQ5K {
    let (mut qh, mut qs) = ([0u8; 32], [0u8; 128]);
    let (mut m1, mut m2) = (1u8, 2u8);
    for (blk, n) in (0..QK_K).step_by(64).enumerate() {
        for j in 0..32 {
            let mut l1 = l[n + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            qs[32 * blk + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
    }
    BlockQ5K { d, dmin, scales, qh, qs }
}

/// `quantize_row_q6_K_ref` for one super-block.
pub fn quantize_q6_k(x: &[f32]) -> BlockQ6K {
    quantize_q6_k_weighted(x, None)
}

/// `quantize_row_q6_K_impl` for one super-block: the reference with the importance weights `qw`
/// (256 of them) fed straight into each sub-block's scale search.
pub fn quantize_q6_k_weighted(x: &[f32], qw: Option<&[f32]>) -> BlockQ6K {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let sub = 16 * ib..16 * ib + 16;
        let scale = make_qx_quants(&x[sub.clone()], 32, &mut l[sub.clone()], 1, qw.map(|q| &q[sub]));
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    let mut blk = BlockQ6K { ql: [0; 128], qh: [0; 64], scales: [0; 16], d: f16_bits(0.0) };
    if max_abs_scale < GROUP_MAX_EPS {
        return blk;
    }
    let iscale = -128.0f32 / max_scale;
    blk.d = f16_bits(1.0 / iscale);
    for ib in 0..16 {
        blk.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }
    let d16 = f16_value(blk.d);
    for j in 0..16 {
        let d = d16 * blk.scales[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    for (half, j) in (0..QK_K).step_by(128).enumerate() {
        let (ql, qh) = (&mut blk.ql[64 * half..], &mut blk.qh[32 * half..]);
        for k in 0..32 {
            let q = |o: usize| l[j + k + o] as u8;
            ql[k] = (q(0) & 0xF) | ((q(64) & 0xF) << 4);
            ql[k + 32] = (q(32) & 0xF) | ((q(96) & 0xF) << 4);
            qh[k] = (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
        }
    }
    blk
}
