//! IQ4_NL: 32 weights, one fp16 scale, 4-bit indices into 16 non-linear levels
//! ([`KVALUES_IQ4NL`], −127…113), `w = d·kvalues[q]`. 4.5 bits/weight. Low nibbles hold weights
//! 0..16, high nibbles 16..32 (as Q4_0).
//!
//! The quantizer is ggml's `quantize_row_iq4_nl_impl` (ggml-quants.c), which IQ4_XS shares
//! ([`quantize_nl_impl`]): llama-quantize calls it through `quantize_iq4_nl` with `ntry = 7` with or
//! without an imatrix (without one the weights are `x²`), so that is what [`BlockFormat::quantize`]
//! runs — not `quantize_row_iq4_nl_ref` (`ntry = −1`), which no file writer uses.
//!
//! Decoded chunk form: codes `kvalues[q] + 128` (biased, `o = −128·d`), so the integer kernels run
//! it as they run Q8_0; the codes are 16 unevenly spaced levels ([`LEVELS_IQ4NL`]), which GPTQ's
//! GGUF grid rounds to (the format's `IntBlock::LEVELS`).

use crate::decode::{legacy_scales, nibbles, set_nibble, Half8, IntChunk};
use crate::ggml::k::search::nearest_int;
use crate::{f16_bits, f16_value, BlockFormat, IntBlock, WeightedRowFn};
use quantkit_core::GgmlType;

/// ggml's `kvalues_iq4nl` (ggml-common.h).
pub const KVALUES_IQ4NL: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// `kvalues + 128`: the decoded code of each 4-bit index.
pub const LEVELS_IQ4NL: [u8; 16] = biased(KVALUES_IQ4NL);

/// A 16-entry table of signed levels as biased (`+128`) codes.
pub(crate) const fn biased(v: [i8; 16]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (v[i] as i16 + 128) as u8;
        i += 1;
    }
    out
}

/// The 4-bit index whose biased code is `q` (the first one, where two indices share a level).
#[inline]
pub(crate) fn index_of(table: &[u8; 16], q: u8) -> u8 {
    table.iter().position(|&c| c == q).unwrap_or(0) as u8
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// `best_index_int8`: the index of the level nearest to `x` in an ascending table (ties go up).
#[inline]
pub(crate) fn best_index_int8(val: &[i8; 16], x: f32) -> u8 {
    if x <= val[0] as f32 {
        return 0;
    }
    if x >= val[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < val[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (val[mu - 1] as f32) < val[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// What `quantize_row_iq4_nl_impl` writes for one super-block.
pub(crate) struct NlBlock {
    pub d: [u8; 2],
    pub scales_h: u16,
    pub scales_l: [u8; 4],
    /// `n/2` bytes of nibbles (weights `32i+j` low, `32i+16+j` high).
    pub qs: Vec<u8>,
}

/// ggml's `quantize_row_iq4_nl_impl` for one super-block of `x.len()` weights (32: IQ4_NL; 256:
/// IQ4_XS, sub-blocks of 32 with 6-bit scales), ported line by line (f32 arithmetic in the C
/// order: the searches compare sums, and a different rounding could flip a choice).
#[allow(clippy::needless_range_loop)]
pub(crate) fn quantize_nl_impl(x: &[f32], qw: Option<&[f32]>, ntry: i32) -> NlBlock {
    const BS: usize = 32;
    let values = &KVALUES_IQ4NL;
    let sbs = x.len();
    let nb = sbs / BS;
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / sbs as f32;

    let mut l = vec![0u8; sbs];
    let mut scales = vec![0f32; nb];
    let mut weight = [0f32; BS];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    for ib in 0..nb {
        let xb = &x[ib * BS..ib * BS + BS];
        let lb = &mut l[ib * BS..ib * BS + BS];
        match qw {
            Some(qw) => {
                let qw = &qw[ib * BS..ib * BS + BS];
                for j in 0..BS {
                    weight[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..BS {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let v0 = values[0] as f32;
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..BS {
            let al = id * xb[j];
            let li = best_index_int8(values, al);
            lb[j] = li;
            let q = values[li as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..BS {
                let al = id * xb[j];
                let li = best_index_int8(values, al);
                let q = values[li as usize] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }

    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    let dh;
    if nb > 1 {
        let d = -max_scale / 32.0;
        dh = f16_bits(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..nb {
            let mut li = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * li as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[ib * BS..ib * BS + BS];
            for j in 0..BS {
                l[ib * BS + j] = best_index_int8(values, idl * xb[j]);
            }
            li += 32;
            let (l_l, l_h) = ((li & 0xf) as u8, (li >> 4) as u16);
            if ib % 2 == 0 {
                scales_l[ib / 2] = l_l;
            } else {
                scales_l[ib / 2] |= l_l << 4;
            }
            scales_h |= l_h << (2 * (ib % 8));
        }
    } else {
        dh = f16_bits(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 { 1.0 / scales[0] } else { 0.0 };
            for j in 0..sbs {
                l[j] = best_index_int8(values, id * x[j]);
            }
        }
    }

    let mut qs = vec![0u8; sbs / 2];
    for i in 0..sbs / 32 {
        for j in 0..16 {
            qs[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
    NlBlock { d: dh, scales_h, scales_l, qs }
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIq4Nl {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);

fn from_impl(b: NlBlock) -> BlockIq4Nl {
    BlockIq4Nl { d: b.d, qs: b.qs.try_into().expect("16 bytes") }
}

impl BlockFormat for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const QK: usize = 32;
    const WEIGHTED: Option<WeightedRowFn> = Some(quantize_weighted);

    /// `quantize_iq4_nl` without an imatrix (what llama-quantize writes): `ntry = 7`, weights `x²`.
    fn quantize(x: &[f32]) -> Self {
        from_impl(quantize_nl_impl(x, None, 7))
    }

    /// `dequantize_row_iq4_nl`.
    fn dequantize(&self, y: &mut [f32]) {
        let d = f16_value(self.d);
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

impl IntBlock for BlockIq4Nl {
    const MAXQ: u8 = LEVELS_IQ4NL[15];
    const LEVELS: Option<&'static [u8; 16]> = Some(&LEVELS_IQ4NL);

    #[inline(always)]
    fn decode<C: Half8>(src: &[u8], n: usize, out: &mut IntChunk) {
        legacy_scales::<C>(src, n, 18, None, -128.0, out);
        for b in 0..n / 32 {
            nibbles(&src[b * 18 + 2..], &mut out.q[32 * b..]);
        }
        C::lut16(&LEVELS_IQ4NL, &mut out.q[..n]);
    }
    #[inline]
    fn set_code(b: &mut [u8], j: usize, q: u8) {
        set_nibble(b, 2, j, index_of(&LEVELS_IQ4NL, q));
    }
}

/// `quantize_iq4_nl` / `quantize_iq4_xs` with an imatrix, for one row: each block of `B::QK`
/// through [`quantize_nl_impl`] with its slice of `qw` (weights `qw·sqrt(σ² + x²)`, σ² twice the
/// block's mean square), stored by `from`.
pub(crate) fn weighted_row<B: BlockFormat>(x: &[f32], qw: &[f32], out: &mut [u8], from: fn(NlBlock) -> B) {
    let out: &mut [B] = bytemuck::cast_slice_mut(out);
    for (i, y) in out.iter_mut().enumerate() {
        let s = B::QK * i..B::QK * (i + 1);
        *y = from(quantize_nl_impl(&x[s.clone()], Some(&qw[s]), 7));
    }
}

/// `quantize_iq4_nl` with an imatrix.
pub fn quantize_weighted(x: &[f32], qw: &[f32], out: &mut [u8]) {
    weighted_row(x, qw, out, from_impl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_matches_the_c_search() {
        // Brute force: nearest level, ties to the upper one (the C code's `<`).
        for k in -300..300 {
            let x = k as f32 * 0.5;
            let want = (0..16)
                .min_by(|&a, &b| {
                    let (da, db) = ((x - KVALUES_IQ4NL[a] as f32).abs(), (x - KVALUES_IQ4NL[b] as f32).abs());
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .expect("16 levels");
            assert_eq!(best_index_int8(&KVALUES_IQ4NL, x) as usize, want, "x = {x}");
        }
    }

    #[test]
    fn an_all_zero_block_is_scale_zero_and_index_eight() {
        let b = BlockIq4Nl::quantize(&[0.0; 32]);
        assert_eq!(b.d, [0, 0]);
        assert!(b.qs.iter().all(|&q| q == 0x88), "{:?}", b.qs);
    }
}
