//! The Hadamard transforms behind `--rotate`: time per vector at the widths models have, against the
//! dense matrix product they replace (`x·Q`, n² multiply-adds) measured in the same run, and the
//! cost per element divided by log2(n) (flat for an O(n log n) transform; the K·K factor adds a
//! constant K per element). Single thread, interleaved rounds, min and max of 5 rounds printed. Not a
//! timed test: it prints the numbers.
//!
//!   cargo bench --bench rotate

use std::time::Instant;

use quantkit_rotate::{Dense, Hadamard, Rotation};

fn per_vector_ns(r: &dyn Rotation, x: &mut [f32], reps: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        r.apply(x);
        std::hint::black_box(&mut *x);
    }
    t.elapsed().as_nanos() as f64 / reps as f64
}

fn main() {
    println!(
        "{:>6} {:>8} {:>12} {:>14} {:>12} {:>12}",
        "n", "K·2^m", "fast ns/vec", "ns/(n·log2 n)", "dense ns/vec", "dense/fast"
    );
    for n in [576usize, 1024, 1536, 4096, 8960, 14336] {
        let h = Hadamard::new(n, Some(0)).expect("size");
        let (k, m) = h.factors();
        let dense = (n <= 4096).then(|| Dense::new(n, h.to_dense(), "dense", 1e-4).expect("orthogonal"));
        let mut x: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 500.0).collect();
        let reps = (2_000_000 / n).max(20);
        let (mut fast, mut slow) = (vec![], vec![]);
        for _ in 0..5 {
            fast.push(per_vector_ns(&h, &mut x, reps));
            if let Some(d) = &dense {
                slow.push(per_vector_ns(d, &mut x, (reps / 50).max(3)));
            }
        }
        let range = |v: &[f64]| {
            (v.iter().cloned().fold(f64::INFINITY, f64::min), v.iter().cloned().fold(0.0, f64::max))
        };
        let (f0, f1) = range(&fast);
        let per = f0 / (n as f64 * (n as f64).log2());
        let d = if slow.is_empty() { "—".to_string() } else { format!("{:.0}", range(&slow).0) };
        let ratio = if slow.is_empty() { "—".to_string() } else { format!("{:.0}×", range(&slow).0 / f0) };
        println!("{n:>6} {:>8} {:>6.0}–{:<6.0}{per:>13.3} {d:>12} {ratio:>12}", format!("{k}·{m}"), f0, f1);
    }
}
