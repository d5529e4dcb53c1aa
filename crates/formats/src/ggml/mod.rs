//! ggml's block formats. Layouts: ggml/src/ggml-common.h; reference quantizers:
//! ggml/src/ggml-quants.c (`quantize_row_*_ref`), mirrored by gguf-py's `gguf/quants.py`.

pub mod imatrix;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod k;
pub mod mxfp4;
pub mod nvfp4;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod tq2_0;

/// Index and value of the element with the largest magnitude (first one on ties), as ggml's
/// `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` loop picks it.
///
/// Computed without a data-dependent branch per element (the C loop's branch mispredicts on real
/// weights): the largest magnitude first, then the first element that has it. Same result for any
/// non-NaN input, including all-zero blocks (+0, as the C loop leaves it).
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// C's `roundf` (half away from zero) for |v| < 2²³, without a libm call: truncate, then step by
/// the exact fractional part.
#[inline]
pub(crate) fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let f = v - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// Minimum and maximum as ggml's `q4_1`/`q5_1` reference computes them (starting from ±FLT_MAX).
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// `1.0f/d`, or 0 when `d == 0` (an all-zero block).
#[inline]
pub(crate) fn inv(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}
