use super::*;

/// ggml's test vector (tests/test-quantize-fns.cpp): `0.1 + 2·cos(i + offset)`.
fn cos_vector(n: usize, offset: f32) -> Vec<f32> {
    (0..n).map(|i| 0.1 + 2.0 * (i as f32 + offset).cos()).collect()
}

/// A cheap deterministic pseudo-random generator (xorshift), values roughly in [-1, 1].
fn random_vector(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// ggml's `array_rmse` from test-quantize-fns.cpp: `sqrt(Σ (a−b)²) / n` (note: not a true RMSE).
fn ggml_rmse(a: &[f32], b: &[f32]) -> f32 {
    let s: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    s.sqrt() as f32 / a.len() as f32
}

#[test]
fn every_registered_format_roundtrips_within_ggml_ceilings() {
    let x = cos_vector(4096, 0.0);
    for c in REGISTRY {
        let q = quantize(c.ty, &x, 4096).expect("quantize");
        assert_eq!(q.len(), c.ty.row_bytes(4096).expect("whole blocks") as usize);
        let y = dequantize(c.ty, &q, 4096).expect("dequantize");
        let e = ggml_rmse(&x, &y);
        // test-quantize-fns.cpp's ceilings: MAX_QUANTIZATION_TOTAL_ERROR{,_2BITS,_3BITS}.
        let ceiling = match c.ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::TQ2_0 => 0.01, // MAX_QUANTIZATION_TOTAL_ERROR_TERNARY
            GgmlType::Q3_K => 0.0040,
            GgmlType::NVFP4 => 0.003, // MAX_QUANTIZATION_TOTAL_ERROR_FP4
            _ => 0.002,
        };
        assert!(e < ceiling, "{}: error {e}", c.ty);
        // A true RMSE bound as well: half a quantization step of the type's code width over the
        // vector's range (|x| ≤ 2.1).
        let true_rmse =
            (x.iter().zip(&y).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
        let code_bits = match c.ty {
            GgmlType::Q2_K | GgmlType::TQ2_0 => 2,
            GgmlType::Q3_K => 3,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS => 4,
            // E2M1: 15 distinct levels, spaced 1..4 apart (of 24): no better than 3 even bits.
            GgmlType::MXFP4 | GgmlType::NVFP4 => 3,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 5,
            GgmlType::Q6_K => 6,
            _ => 8,
        };
        assert!(true_rmse < 4.2 / ((1 << code_bits) - 1) as f64 / 2.0, "{}: rmse {true_rmse}", c.ty);
        if c.ty == GgmlType::F32 {
            assert_eq!(x, y);
        }
    }
}

#[test]
fn random_data_error_is_bounded_per_block() {
    let x = random_vector(32 * 64, 7);
    for (ty, levels) in [
        (GgmlType::Q4_0, 8.0f32),
        (GgmlType::Q4_1, 7.5),
        (GgmlType::Q5_0, 16.0),
        (GgmlType::Q5_1, 15.5),
        (GgmlType::Q8_0, 127.0),
    ] {
        let y = dequantize(ty, &quantize(ty, &x, 32 * 64).expect("q"), 32 * 64).expect("dq");
        for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let range =
                xb.iter().cloned().fold(f32::MIN, f32::max) - xb.iter().cloned().fold(f32::MAX, f32::min);
            // Half a quantization step (plus fp16 rounding of the scale) bounds every element.
            let step = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                range / (2.0 * levels)
            } else {
                amax / levels
            };
            for (a, b) in xb.iter().zip(yb) {
                assert!((a - b).abs() <= step * 1.01 + 1e-3, "{ty}: {a} vs {b} (step {step})");
            }
        }
    }
}

#[test]
fn zero_blocks_quantize_to_zero() {
    let x = vec![0.0f32; 256];
    for c in REGISTRY {
        let y = dequantize(c.ty, &quantize(c.ty, &x, 256).expect("q"), 256).expect("dq");
        assert!(y.iter().all(|&v| v == 0.0), "{}", c.ty);
    }
}

#[test]
fn q4_0_known_block() {
    // amax element is -4 → d = 0.5, codes = x/d + 8.
    let mut x = vec![0.0f32; 32];
    x[0] = -4.0;
    x[1] = 1.0;
    x[16] = 3.5;
    let b = <ggml::q4_0::BlockQ4_0 as BlockFormat>::quantize(&x);
    assert_eq!(f16_value(b.d), 0.5);
    assert_eq!(b.qs[0], 15 << 4, "low nibble: x0=-4 → 0; high nibble: x16=3.5 → 15");
    assert_eq!(b.qs[1] & 0x0f, 10);
    assert_eq!(b.qs[2], 8 | (8 << 4));
}

#[test]
fn bf16_rounding_matches_ggml() {
    use float::bf16_from_f32;
    assert_eq!(bf16_from_f32(1.0), 0x3f80);
    // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even (down).
    assert_eq!(bf16_from_f32(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(bf16_from_f32(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(bf16_from_f32(f32::from_bits(0x7f80_0001)), 0x7fc0, "NaN forced quiet");
    assert_eq!(bf16_from_f32(f32::INFINITY), 0x7f80);
}

#[test]
fn rows_that_are_not_whole_blocks_are_rejected() {
    let err = quantize(GgmlType::Q8_0, &[0.5; 172], 172).expect_err("172 % 32 != 0");
    assert!(err.to_string().contains("not a multiple of"), "{err}");
    assert!(codec(GgmlType::IQ2_XXS).is_err());
}

/// The importance-weighted quantizers (ggml's `quant_weights` path) trade error where the weights
/// are small for error where they are large: over many rows of random data with spread-out
/// importances, their importance-weighted squared error is below the unweighted reference's. (Their
/// bytes are checked against llama.cpp itself in tests/python/test_mixes.py.)
#[test]
fn imatrix_quantizers_reduce_the_weighted_error() {
    let (rows, n) = (48, 512);
    let x = random_vector(rows * n, 21);
    let mut state = 99u64;
    let qw: Vec<f32> = (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32;
            (u * 8.0 - 4.0).exp() // importances over ~3.5 decades
        })
        .collect();
    let weighted_err = |y: &[f32]| -> f64 {
        x.chunks(n)
            .zip(y.chunks(n))
            .map(|(xr, yr)| {
                xr.iter().zip(yr).zip(&qw).map(|((a, b), w)| (*w * (a - b) * (a - b)) as f64).sum::<f64>()
            })
            .sum()
    };
    let mut covered = 0;
    for c in REGISTRY.iter().filter(|c| c.quantize_row_weighted.is_some()) {
        let rb = row_bytes(c.ty, n).expect("row bytes");
        let (mut plain, mut weighted) = (vec![0u8; rows * rb], vec![0u8; rows * rb]);
        for ((xr, p), w) in x.chunks(n).zip(plain.chunks_mut(rb)).zip(weighted.chunks_mut(rb)) {
            c.quantize_row_with(xr, None, p);
            c.quantize_row_with(xr, Some(&qw), w);
        }
        assert_ne!(plain, weighted, "{}: the imatrix changed nothing", c.ty);
        let (ep, ew) = (
            weighted_err(&dequantize(c.ty, &plain, n).expect("dq")),
            weighted_err(&dequantize(c.ty, &weighted, n).expect("dq")),
        );
        assert!(ew < ep, "{}: weighted error {ew} not below unweighted {ep}", c.ty);
        covered += 1;
    }
    assert_eq!(
        covered, 11,
        "every legacy type but Q8_0, every k-quant, IQ4_NL and IQ4_XS have a weighted path"
    );
}
