//! FP8 E4M3 ("e4m3fn": OCP FP8's E4M3, the `float8_e4m3fn` of torch and safetensors' `F8_E4M3`):
//! 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities, `S.1111.111` is NaN, the largest
//! finite magnitude is 448 (`0x7E`), the smallest subnormal 2⁻⁹.
//!
//! [`from_f32`] rounds to nearest, ties to even, and saturates: every magnitude ≥ 448 (and ±∞)
//! becomes ±448 — what compressed-tensors gets by clamping to `[−448, 448]` before torch's cast.
//! NaN becomes `0x7F`. Tested against a brute-force nearest-value search over all codes.

/// The largest finite E4M3 magnitude.
pub const MAX: f32 = 448.0;

/// The value of an E4M3 code (exact in f32; NaN for `0x7F`/`0xFF`).
#[inline]
pub fn to_f32(b: u8) -> f32 {
    let neg = b & 0x80 != 0;
    let (e, m) = ((b >> 3) & 0x0F, b & 0x07);
    let v = if e == 0x0F && m == 0x07 {
        f32::NAN
    } else if e == 0 {
        m as f32 * (1.0 / 512.0)
    } else {
        (8 + m) as f32 * f32::from_bits(((e as u32 + 127 - 10) & 0xFF) << 23)
    };
    if neg {
        -v
    } else {
        v
    }
}

/// Whether a code is NaN.
#[inline]
pub fn is_nan(b: u8) -> bool {
    b & 0x7F == 0x7F
}

/// `x` rounded to the nearest E4M3 value (ties to even), saturated to ±448.
#[inline]
pub fn from_f32(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = x.abs();
    if a >= MAX {
        return sign | 0x7E;
    }
    // Binade of `a`, floored at the subnormals' (2⁻⁶ with step 2⁻⁹): the step there is 2^(exp−3)
    // and `a / step` lies in [0, 16]; scaling by a power of two is exact.
    let exp = (((a.to_bits() >> 23) & 0xFF) as i32 - 127).max(-6);
    let q = (a * f32::from_bits(((127 + 3 - exp) as u32) << 23)).round_ties_even() as i32;
    // q = 16 carries into the next binade; a < 448 keeps the code ≤ 0x7E.
    sign | ((exp + 7) * 8 + q - 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nearest finite code by exhaustive search (ties to the even mantissa), saturating.
    fn reference(x: f32) -> u8 {
        if x.is_nan() {
            return 0x7F;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = (x as f64).abs();
        let mut best = 0u8;
        for c in 0u8..0x7F {
            let (d, db) = ((to_f32(c) as f64 - a).abs(), (to_f32(best) as f64 - a).abs());
            if d < db || (d == db && c & 1 == 0 && best & 1 == 1) {
                best = c;
            }
        }
        sign | best
    }

    #[test]
    fn every_code_decodes_and_encodes_back() {
        let mut finite = 0;
        for b in 0u8..=255 {
            let v = to_f32(b);
            if is_nan(b) {
                assert!(v.is_nan(), "{b:#04x}");
                continue;
            }
            finite += 1;
            assert_eq!(from_f32(v), b, "{b:#04x} = {v}");
            assert_eq!(v.is_sign_negative(), b & 0x80 != 0);
        }
        assert_eq!(finite, 254);
        assert_eq!(to_f32(0x7E), 448.0);
        assert_eq!(to_f32(0x01), 2f32.powi(-9));
        assert_eq!(to_f32(0x08), 2f32.powi(-6));
        assert_eq!(to_f32(0x38), 1.0);
        assert_eq!(to_f32(0xC0), -2.0);
    }

    #[test]
    fn midpoints_tie_to_even_and_large_values_saturate() {
        // Between every pair of adjacent non-negative codes: the midpoint goes to the even one,
        // a hair either side to the nearer.
        for c in 0u8..0x7E {
            let (lo, hi) = (to_f32(c) as f64, to_f32(c + 1) as f64);
            let mid = ((lo + hi) / 2.0) as f32;
            assert_eq!(mid as f64, (lo + hi) / 2.0, "midpoint exact in f32");
            let even = if c & 1 == 0 { c } else { c + 1 };
            assert_eq!(from_f32(mid), even, "{lo}..{hi}");
            assert_eq!(from_f32(-mid), 0x80 | even);
            assert_eq!(from_f32(f32::from_bits(mid.to_bits() - 1)), c);
            assert_eq!(from_f32(f32::from_bits(mid.to_bits() + 1)), c + 1);
        }
        for x in [448.0, 448.1, 463.9, 464.0, 1e6, f32::MAX, f32::INFINITY] {
            assert_eq!(from_f32(x), 0x7E, "{x}");
            assert_eq!(from_f32(-x), 0xFE, "{x}");
        }
        assert_eq!(from_f32(0.0), 0x00);
        assert_eq!(from_f32(-0.0), 0x80);
        assert_eq!(from_f32(2f32.powi(-10)), 0x00); // half the smallest subnormal: tie to 0
        assert_eq!(from_f32(2f32.powi(-10) * 1.001), 0x01);
        assert_eq!(from_f32(f32::from_bits(1)), 0x00); // f32 subnormal
        assert!(is_nan(from_f32(f32::NAN)));
    }

    #[test]
    fn random_inputs_match_the_exhaustive_search() {
        // xorshift: every magnitude binade from f32's subnormals to past 448, both signs.
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let x = if i % 2 == 0 {
                // Uniform in the interesting range [-600, 600] with more mass near 0.
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                (u * 2.0 - 1.0) * 600.0 * u * u
            } else {
                // Any bit pattern with an exponent up to 2^10.
                f32::from_bits(((s as u32) & 0x807F_FFFF) | ((((s >> 32) as u32) % 138) << 23))
            };
            assert_eq!(from_f32(x), reference(x), "{x:e} ({:#010x})", x.to_bits());
        }
    }
}
