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
        let bias = ch.bias as i32;
        for g in 0..n / GROUP {
            let ag = off / GROUP + g;
            let (mut isum, mut asum) = (0i32, 0i32);
            for i in 0..GROUP {
                let x = a.q[off + g * GROUP + i] as i32;
                isum += ch.q[g * GROUP + i] as i32 * x;
                asum += x;
            }
            if bias != 0 {
                // Biased codes: Σ (q − bias)·a exactly in integers (o = −bias·s).
                *acc += (isum - bias * asum) as f32 * (ch.s[g] * a.d[ag]);
            } else {
                *acc += isum as f32 * (ch.s[g] * a.d[ag]) + ch.o[g] * a.sum[ag];
            }
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

// The reference kernels: the generic drivers with the scalar dot and the portable f16 conversion.
super::entry_points!(
    [],
    Scalar,
    crate::decode::SoftHalf,
    int_gemv,
    float_gemv,
    int_dequant,
    float_dequant,
    quantize_acts
);
