//! Memory bandwidth, measured the STREAM way: the limit decode speed is judged against.

use std::time::Instant;

use rayon::prelude::*;

/// Sustained bandwidth in GB/s (10⁹ bytes/s), best of `reps`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Bandwidth {
    /// STREAM triad `a = b + s·c` (counts 3 arrays per pass, as STREAM does).
    pub triad_gbs: f64,
    /// A read-only pass (sum of an array): what a GEMV does.
    pub read_gbs: f64,
    /// Bytes per array.
    pub array_bytes: usize,
    pub threads: usize,
}

/// Measure with arrays of `array_bytes` each (choose ≥ 4× the last-level cache) on the current
/// rayon pool.
pub fn measure(array_bytes: usize, reps: usize) -> Bandwidth {
    let n = array_bytes / 8;
    let threads = rayon::current_num_threads();
    let chunk = n.div_ceil(threads * 4).max(1024);
    let mut a = vec![0f64; n];
    let b: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
    let c: Vec<f64> = (0..n).map(|i| (i % 5) as f64).collect();
    // First touch in parallel, as STREAM does.
    a.par_chunks_mut(chunk).for_each(|x| x.iter_mut().for_each(|v| *v = 1.0));
    let mut best_triad = f64::INFINITY;
    let mut best_read = f64::INFINITY;
    let mut sink = 0.0;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        a.par_chunks_mut(chunk).zip(b.par_chunks(chunk)).zip(c.par_chunks(chunk)).for_each(|((a, b), c)| {
            for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                *a = b + 3.0 * c;
            }
        });
        best_triad = best_triad.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let s: f64 = a
            .par_chunks(chunk)
            .map(|x| {
                // 8 independent sums so the adds do not serialise.
                let mut acc = [0f64; 8];
                for v in x.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] += v[i];
                    }
                }
                acc.iter().sum::<f64>()
            })
            .sum();
        best_read = best_read.min(t.elapsed().as_secs_f64());
        sink += s;
    }
    std::hint::black_box(sink);
    Bandwidth {
        triad_gbs: 3.0 * (n * 8) as f64 / best_triad / 1e9,
        read_gbs: (n * 8) as f64 / best_read / 1e9,
        array_bytes: n * 8,
        threads,
    }
}
