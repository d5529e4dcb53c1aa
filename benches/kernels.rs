//! Kernel micro-benchmarks, per format: GEMV in GB/s of weights read (against the machine's
//! measured bandwidth, printed first) and GEMM in GFLOP/s.
//!
//!     cargo bench --bench kernels                # every format, best ISA
//!     QUANTKIT_ISA=avx2 cargo bench --bench kernels
//!     cargo bench --bench kernels -- q4_0 q4_k   # a subset
//!
//! The GEMV matrix is 4096 × 11008 weights (a 7B FFN projection), ≫ L2 and, for 4-bit, about a
//! third of this machine's 105 MiB L3: the numbers are "from L3/DRAM", not from L2.

use std::time::Instant;

use quantkit_core::GgmlType;
use quantkit_kernels::{bw, Isa, QMatrix, WeightBytes};

fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let isa = Isa::detect();
    let b = bw::measure(512 << 20, 3);
    println!(
        "isa {} · threads {} · memory bandwidth: triad {:.1} GB/s, read {:.1} GB/s",
        isa.name(),
        b.threads,
        b.triad_gbs,
        b.read_gbs
    );
    println!(
        "{:<6} {:>10} {:>9} {:>9} {:>8} {:>11}",
        "type", "MB", "gemv µs", "GB/s", "of read", "gemm GF/s"
    );
    let (rows, cols) = (11008usize, 4096usize);
    // A deterministic, non-zero weight matrix.
    let w: Vec<f32> = (0..rows * cols).map(|i| (((i * 2654435761) % 1000) as f32 - 500.0) * 1e-4).collect();
    let x: Vec<f32> = (0..256 * cols).map(|i| (((i * 40503) % 997) as f32 - 498.0) * 1e-3).collect();
    for codec in quantkit_formats::REGISTRY {
        let ty: GgmlType = codec.ty;
        if !filter.is_empty() && !filter.iter().any(|f| f.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        let bytes = quantkit_formats::quantize(ty, &w, cols).expect("quantize");
        let mb = bytes.len() as f64 / 1e6;
        let m = QMatrix::with_isa(ty, rows, cols, WeightBytes::owned(bytes), isa).expect("matrix");
        let mut y = vec![0f32; 256 * rows];
        let t1 = best(20, || m.forward(&x[..cols], 1, &mut y[..rows]));
        let gemm_rows = 2048;
        let mg = QMatrix::with_isa(
            ty,
            gemm_rows,
            cols,
            WeightBytes::owned(m.bytes()[..gemm_rows * m.row_bytes].to_vec()),
            isa,
        )
        .expect("matrix");
        let tn = best(3, || mg.forward(&x, 256, &mut y[..256 * gemm_rows]));
        println!(
            "{:<6} {:>10.1} {:>9.0} {:>9.1} {:>7.0}% {:>11.1}",
            ty.name(),
            mb,
            t1 * 1e6,
            mb / 1e3 / t1,
            100.0 * mb / 1e3 / t1 / b.read_gbs,
            2.0 * 256.0 * gemm_rows as f64 * cols as f64 / tn / 1e9
        );
    }
}
