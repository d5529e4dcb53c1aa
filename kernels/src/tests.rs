//! The conformance suite: every registered format × every instruction set this CPU has, against
//! the scalar reference, on fresh random data (never zeros). A format added to
//! `quantkit_formats::REGISTRY` is picked up here without a new line.
//!
//! Tolerances (docs/testing.md, from ../shared/docs/design.md): decoding is exact across
//! instruction sets and within 1 ulp of the codec's `dequantize_row`; a dot product is within
//! 1e-6·Σ|wᵢxᵢ| of the scalar kernel and of an f64 reference on the same quantized operands.

use super::*;
use crate::decode::{f16_to_f32, GROUP};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal values with the occasional large outlier, like real weights/activations.
    fn values(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let g = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
                let big = if self.next() % 97 == 0 { 8.0 } else { 1.0 };
                g * scale * big + 1e-3
            })
            .collect()
    }
}

fn row_lengths(ty: GgmlType) -> Vec<usize> {
    match ty.block_size() {
        1 => vec![1, 33, 250, 576, 1000],
        256 => vec![256, 768, 1536],
        b => [b, 3 * b, 576, 800, 1024, 13 * b].into_iter().filter(|n| n % b == 0).collect(),
    }
}

/// A random matrix quantized with the format's own reference quantizer.
fn matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng, isa: Isa) -> (QMatrix, Vec<f32>) {
    let x = rng.values(rows * cols, 0.05);
    let bytes = quantkit_formats::quantize(ty, &x, cols).expect("quantize");
    let deq = quantkit_formats::dequantize(ty, &bytes, cols).expect("dequantize");
    (QMatrix::with_isa(ty, rows, cols, WeightBytes::owned(bytes), isa).expect("matrix"), deq)
}

fn types() -> Vec<GgmlType> {
    quantkit_formats::REGISTRY.iter().map(|c| c.ty).collect()
}

#[test]
fn every_registered_format_has_a_kernel_on_every_isa() {
    for ty in types() {
        for isa in Isa::available() {
            let k = kernel(ty, isa).unwrap_or_else(|| panic!("no kernel for {}", ty.name()));
            assert_eq!(k.fused, isa == Isa::Avx512Vbmi && fused_formats().contains(&ty), "{k:?}");
        }
    }
}

#[test]
fn f16_conversion_is_exact_for_every_bit_pattern() {
    for h in 0..=u16::MAX {
        let want = quantkit_formats::f16_value(h.to_le_bytes());
        let got = f16_to_f32(h);
        assert!(
            want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
            "{h:#06x}: {want} vs {got}"
        );
    }
}

#[test]
fn decoding_is_exact_across_isas_and_matches_the_codec() {
    let mut rng = Rng(1);
    for ty in types() {
        for cols in row_lengths(ty) {
            let rows = 3;
            let mut want = None;
            for isa in Isa::available() {
                let (m, deq) = matrix(ty, rows, cols, &mut Rng(rng.0 ^ cols as u64), isa);
                let mut out = vec![f32::NAN; rows * cols];
                m.dequantize_rows(0, rows, &mut out);
                for (i, (a, b)) in out.iter().zip(&deq).enumerate() {
                    let tol = 1.2e-7 * b.abs().max(1e-30) * 2.0;
                    assert!(
                        (a - b).abs() <= tol,
                        "{} {} cols {cols} [{i}]: {a} vs codec {b}",
                        ty.name(),
                        isa.name()
                    );
                }
                match &want {
                    None => want = Some(out),
                    Some(w) => assert!(
                        w.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {}: SIMD decode differs from scalar",
                        ty.name(),
                        isa.name()
                    ),
                }
            }
            rng.next();
        }
    }
}

#[test]
fn activation_quantization_is_identical_across_isas() {
    let mut rng = Rng(7);
    let x = rng.values(8 * 576, 1.0);
    let mut want: Option<Vec<QAct>> = None;
    for isa in Isa::available() {
        let Some(Kernel { gemv: Gemv::Int(_, q), .. }) = kernel(GgmlType::Q4_0, isa) else { panic!() };
        let mut acts = vec![QAct::default(); 8];
        // SAFETY: isa is available.
        unsafe { q(&x, 576, &mut acts) };
        for a in &acts {
            for g in 0..a.d.len() {
                let s: i32 = a.q[g * GROUP..(g + 1) * GROUP].iter().map(|v| *v as i32).sum();
                assert_eq!(a.sum[g], a.d[g] * s as f32);
                assert!(a.q[g * GROUP..(g + 1) * GROUP].iter().all(|v| *v >= -127));
            }
        }
        match &want {
            None => want = Some(acts),
            Some(w) => {
                for (a, b) in w.iter().zip(&acts) {
                    assert_eq!(a.q, b.q, "{}", isa.name());
                    assert_eq!(a.d, b.d, "{}", isa.name());
                }
            }
        }
    }
}

/// Σ|wᵢxᵢ| and the f64 dot of one dequantized row with one activation row.
fn dot64(w: &[f32], x: &[f32]) -> (f64, f64) {
    w.iter()
        .zip(x)
        .fold((0.0, 0.0), |(s, a), (w, x)| (s + *w as f64 * *x as f64, a + (*w as f64 * *x as f64).abs()))
}

#[test]
fn gemv_matches_the_scalar_kernel_and_an_f64_reference() {
    let mut rng = Rng(42);
    for ty in types() {
        for cols in row_lengths(ty) {
            let rows = 37;
            for n in [1, 3, MAX_GEMV_TOKENS] {
                let x = rng.values(n * cols, 1.0);
                let seed = rng.next();
                let mut scalar_y: Option<Vec<f32>> = None;
                for isa in Isa::available() {
                    let (m, deq) = matrix(ty, rows, cols, &mut Rng(seed), isa);
                    let mut y = vec![f32::NAN; n * rows];
                    m.forward(&x, n, &mut y);
                    // The same quantized operands, in f64: int8 activations for the integer
                    // path, f32 activations for the float formats.
                    let xa: Vec<f32> = if m.kernel().path() == "int8" {
                        let mut acts = vec![QAct::default(); n];
                        for (a, xr) in acts.iter_mut().zip(x.chunks_exact(cols)) {
                            a.quantize_into(xr);
                        }
                        acts.iter()
                            .flat_map(|a| {
                                a.q[..a.len()].iter().enumerate().map(|(i, q)| a.d[i / GROUP] * *q as f32)
                            })
                            .collect()
                    } else {
                        x.clone()
                    };
                    for t in 0..n {
                        for r in 0..rows {
                            let (want, mag) =
                                dot64(&deq[r * cols..(r + 1) * cols], &xa[t * cols..(t + 1) * cols]);
                            let got = y[t * rows + r] as f64;
                            assert!(
                                (got - want).abs() <= 1e-6 * mag + 1e-30,
                                "{} {} cols {cols} n {n} [{t},{r}]: {got} vs f64 {want} (Σ|wx| {mag})",
                                ty.name(),
                                isa.name()
                            );
                            // Activation rounding: at most half a step per value.
                            let (exact, _) =
                                dot64(&deq[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                            let bound: f64 = if m.kernel().path() != "int8" {
                                0.0
                            } else {
                                (0..cols)
                                    .map(|i| {
                                        let g = &x[t * cols + i / GROUP * GROUP
                                            ..t * cols + (i / GROUP + 1) * GROUP];
                                        let amax = g.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                                        (deq[r * cols + i] as f64).abs() * amax / 254.0
                                    })
                                    .sum()
                            };
                            assert!(
                                (got - exact).abs() <= bound * 1.001 + 1e-6 * mag,
                                "{} activation error",
                                ty.name()
                            );
                        }
                    }
                    if let Some(s) = &scalar_y {
                        for (i, (a, b)) in s.iter().zip(&y).enumerate() {
                            let (t, r) = (i / rows, i % rows);
                            let (_, mag) =
                                dot64(&deq[r * cols..(r + 1) * cols], &xa[t * cols..(t + 1) * cols]);
                            assert!(
                                ((a - b) as f64).abs() <= 1e-6 * mag + 1e-30,
                                "{} {} vs scalar: {a} {b}",
                                ty.name(),
                                isa.name()
                            );
                        }
                    } else {
                        scalar_y = Some(y);
                    }
                }
            }
        }
    }
}

/// The fused kernels keep one accumulator per row and token and sum each row's lanes in one
/// order, so a token's result is the same bits whatever else is in the batch (1–8 tokens: 4, 2
/// or 1 rows at a time) and wherever its row falls in a task (37 rows: 8-row pieces, 4-row
/// steps and leftover rows). The f64 checks above cover 1, 3 and 8 tokens.
#[test]
fn fused_results_do_not_depend_on_the_batch_size() {
    if !Isa::available().contains(&Isa::Avx512Vbmi) {
        eprintln!("skipped: no AVX-512 VBMI");
        return;
    }
    let mut rng = Rng(43);
    // Short rows run 4 (or 2) at a time; rows longer than a quarter of the prefetch distance
    // (8192 weights, in every fused format) one at a time.
    for (ty, cols) in fused_formats().into_iter().flat_map(|t| [(t, row_lengths(t)[1]), (t, 8192)]) {
        let rows = 37;
        let (m, _) = matrix(ty, rows, cols, &mut rng, Isa::Avx512Vbmi);
        assert!(m.kernel().fused);
        let x = rng.values(MAX_GEMV_TOKENS * cols, 1.0);
        let one: Vec<Vec<f32>> = x
            .chunks_exact(cols)
            .map(|xt| {
                let mut y = vec![f32::NAN; rows];
                m.forward(xt, 1, &mut y);
                y
            })
            .collect();
        for n in 2..=MAX_GEMV_TOKENS {
            let mut y = vec![f32::NAN; n * rows];
            m.forward(&x[..n * cols], n, &mut y);
            for (t, yt) in y.chunks_exact(rows).enumerate() {
                let same = yt.iter().zip(&one[t]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} n {n} token {t}: {yt:?} vs alone {:?}", ty.name(), one[t]);
            }
        }
    }
}

#[test]
fn gemm_matches_an_f64_reference() {
    let mut rng = Rng(99);
    for ty in types() {
        for cols in row_lengths(ty) {
            let (rows, n) = (45, MAX_GEMV_TOKENS + 5);
            let x = rng.values(n * cols, 1.0);
            let seed = rng.next();
            for isa in Isa::available() {
                let (m, deq) = matrix(ty, rows, cols, &mut Rng(seed), isa);
                let mut y = vec![f32::NAN; n * rows];
                forward_group_with(BatchPath::Gemm, &[&m], &x, n, &mut [&mut y]);
                for t in 0..n {
                    for r in 0..rows {
                        let (want, mag) = dot64(&deq[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                        let got = y[t * rows + r] as f64;
                        // f32 accumulation over `cols` terms in faer's order.
                        let tol = 1e-6 * mag * (cols as f64 / 256.0).sqrt().max(1.0);
                        assert!(
                            (got - want).abs() <= tol + 1e-30,
                            "{} {} gemm cols {cols} [{t},{r}]: {got} vs {want}",
                            ty.name(),
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

/// `v` rounded to bf16 (nearest even), as f32.
fn bf16(v: f32) -> f32 {
    let b = v.to_bits();
    f32::from_bits((b.wrapping_add(0x7fff + ((b >> 16) & 1))) & 0xffff_0000)
}

/// The AMX path's dot: both operands split into bf16 `hi + lo`, `Σ hi·hi + hi·lo + lo·hi` in f64.
fn dot_split(w: &[f32], x: &[f32]) -> f64 {
    let split = |v: f32| {
        let h = bf16(v);
        (h as f64, bf16(v - h) as f64)
    };
    w.iter()
        .zip(x)
        .map(|(&a, &b)| {
            let ((ah, al), (bh, bl)) = (split(a), split(b));
            ah * bh + ah * bl + al * bh
        })
        .sum()
}

#[test]
fn amx_gemm_matches_its_split_operands_and_the_f64_reference() {
    if !amx_available() {
        eprintln!("skipped: no AMX-BF16 on this CPU/OS");
        return;
    }
    let mut rng = Rng(77);
    // F32 matrices keep the f32 GEMM (the `--dequantize` reference path).
    for ty in types().into_iter().filter(|&t| t != GgmlType::F32) {
        for cols in row_lengths(ty) {
            // Rows and tokens that are not multiples of 16 or 32: partial tiles on both sides.
            for (rows, n) in [(45, MAX_GEMV_TOKENS + 5), (16, 32), (70, 75)] {
                let x = rng.values(n * cols, 1.0);
                let (m, deq) = matrix(ty, rows, cols, &mut rng, Isa::detect());
                let mut y = vec![f32::NAN; n * rows];
                forward_group_with(BatchPath::Amx, &[&m], &x, n, &mut [&mut y]);
                for t in 0..n {
                    for r in 0..rows {
                        let (w, xt) = (&deq[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                        let (exact, mag) = dot64(w, xt);
                        let split = dot_split(w, xt);
                        let got = y[t * rows + r] as f64;
                        // The tile unit's f32 accumulation, as for the f32 GEMM.
                        let acc = 1e-6 * mag * (cols as f64 / 256.0).sqrt().max(1.0);
                        assert!(
                            (got - split).abs() <= acc + 1e-30,
                            "{} amx cols {cols} rows {rows} n {n} [{t},{r}]: {got} vs split {split}",
                            ty.name()
                        );
                        // Each half rounds to 8 bits (≤ 2⁻⁸ relative), so the split keeps each
                        // operand to 2⁻¹⁶ and a product to 3·2⁻¹⁶ (with the dropped lo·lo).
                        assert!(
                            (got - exact).abs() <= 4.6e-5 * mag + acc + 1e-30,
                            "{} amx cols {cols} [{t},{r}]: {got} vs exact {exact}",
                            ty.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn amx_gemm_is_deterministic_and_independent_of_the_thread_count() {
    if !amx_available() {
        eprintln!("skipped: no AMX-BF16 on this CPU/OS");
        return;
    }
    let mut rng = Rng(78);
    let (m, _) = matrix(GgmlType::Q4_K, 300, 768, &mut rng, Isa::detect());
    let n = 100;
    let x = rng.values(n * 768, 1.0);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        let mut y = vec![0f32; n * 300];
        pool.install(|| forward_group_with(BatchPath::Amx, &[&m], &x, n, &mut [&mut y]));
        y
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        assert!(one.iter().zip(run(threads)).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
    }
}

#[test]
fn groups_equal_separate_calls_and_sizes_are_checked() {
    let mut rng = Rng(5);
    let isa = Isa::detect();
    let (a, _) = matrix(GgmlType::Q4_K, 20, 512, &mut rng, isa);
    let (b, _) = matrix(GgmlType::Q6_K, 7, 512, &mut rng, isa);
    let (c, _) = matrix(GgmlType::F16, 9, 512, &mut rng, isa);
    for n in [1, 2, 12] {
        let x = rng.values(n * 512, 1.0);
        let (mut ya, mut yb, mut yc) = (vec![0.0; n * 20], vec![0.0; n * 7], vec![0.0; n * 9]);
        forward_group(&[&a, &b, &c], &x, n, &mut [&mut ya, &mut yb, &mut yc]);
        for (m, y) in [(&a, &ya), (&b, &yb), (&c, &yc)] {
            let mut one = vec![0.0; y.len()];
            m.forward(&x, n, &mut one);
            assert_eq!(&one, y);
        }
    }
    let bytes = quantkit_formats::quantize(GgmlType::Q4_0, &rng.values(64, 1.0), 32).expect("q");
    assert!(QMatrix::new(GgmlType::Q4_0, 3, 32, WeightBytes::owned(bytes.clone())).is_err());
    assert!(QMatrix::new(GgmlType::Q4_0, 1, 48, WeightBytes::owned(bytes)).is_err());
}
