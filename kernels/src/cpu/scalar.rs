//! The scalar reference dot products: plain loops, one integer sum per 16-weight group.

use super::{FloatDot, IntDot};
use crate::act::QAct;
use crate::decode::{IntChunk, CHUNK, GROUP};

#[derive(Debug)]
pub struct Scalar;

impl IntDot for Scalar {
    type Acc = f32;
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut f32, ch: &IntChunk, a: &QAct, off: usize, n: usize) {
        for g in 0..n / GROUP {
            let ag = off / GROUP + g;
            let mut isum = 0i32;
            for i in 0..GROUP {
                isum += ch.q[g * GROUP + i] as i32 * a.q[off + g * GROUP + i] as i32;
            }
            *acc += isum as f32 * (ch.s[g] * a.d[ag]) + ch.o[g] * a.sum[ag];
        }
    }
    unsafe fn reduce(acc: f32) -> f32 {
        acc
    }
}

impl FloatDot for Scalar {
    type Acc = f32;
    unsafe fn zero() -> f32 {
        0.0
    }
    #[inline(always)]
    unsafe fn chunk(acc: &mut f32, w: &[f32; CHUNK], x: &[f32], n: usize) {
        for i in 0..n {
            *acc += w[i] * x[i];
        }
    }
    unsafe fn reduce(acc: f32) -> f32 {
        acc
    }
}

/// Scalar entry points (the reference kernels).
///
/// # Safety
/// See `int_gemv`.
pub(crate) unsafe fn int_gemv<D: crate::decode::IntDecode>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[QAct],
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    // SAFETY: forwarded; the scalar dot needs no CPU feature.
    unsafe { super::int_gemv::<D, Scalar, crate::decode::SoftHalf>(w, row_bytes, k, acts, y, ys, rows) }
}

/// # Safety
/// See `float_gemv`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn float_gemv<D: crate::decode::FloatDecode>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    // SAFETY: forwarded.
    unsafe { super::float_gemv::<D, Scalar>(w, row_bytes, k, x, n, y, ys, rows) }
}

/// # Safety
/// None beyond the slice bounds (kept `unsafe` to share the function-pointer type).
pub(crate) unsafe fn int_dequant<D: crate::decode::IntDecode>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    super::int_dequant::<D, crate::decode::SoftHalf>(w, row_bytes, k, rows, out)
}

/// # Safety
/// As `int_dequant`.
pub(crate) unsafe fn float_dequant<D: crate::decode::FloatDecode>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    super::float_dequant::<D>(w, row_bytes, k, rows, out)
}

/// # Safety
/// As `int_dequant`.
pub(crate) unsafe fn quantize_acts(x: &[f32], k: usize, out: &mut [QAct]) {
    super::quantize_acts(x, k, out)
}
