//! Randomized Hadamard transforms of size `n = K·2^m`: a fast Walsh–Hadamard transform over the
//! `2^m` factor (O(n log n)), a known `K × K` Hadamard matrix over the other (O(n·K)), random signs
//! from a seed, and the `1/√n` that makes it orthogonal.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::Rotation;

/// The non-power-of-two factors we carry a Hadamard matrix for (1 = a plain power of two), in the
/// order they are tried.
pub const KNOWN_K: [usize; 11] = [172, 156, 140, 108, 60, 52, 36, 28, 40, 20, 12];

const TABLES: &str = include_str!("hadamard_tables.txt");

/// `K → H_K` as ±1, row-major, parsed once.
fn tables() -> &'static HashMap<usize, Vec<i8>> {
    static T: OnceLock<HashMap<usize, Vec<i8>>> = OnceLock::new();
    T.get_or_init(|| {
        let mut out = HashMap::new();
        let mut cur: Option<(usize, Vec<i8>)> = None;
        for line in TABLES.lines() {
            if let Some(k) = line.strip_prefix('#').and_then(|s| s.trim().parse::<usize>().ok()) {
                if let Some((k, m)) = cur.take() {
                    out.insert(k, m);
                }
                cur = Some((k, Vec::with_capacity(k * k)));
            } else if let Some((_, m)) = cur.as_mut() {
                m.extend(line.bytes().filter_map(|b| match b {
                    b'+' => Some(1i8),
                    b'-' => Some(-1i8),
                    _ => None,
                }));
            }
        }
        if let Some((k, m)) = cur.take() {
            out.insert(k, m);
        }
        for (k, m) in &out {
            assert_eq!(m.len(), k * k, "hadamard_tables.txt: H_{k} is not {k}×{k}");
        }
        out
    })
}

/// `(K, 2^m)` with `n = K·2^m` for a `K` we know (`K = 1` for a power of two), or `None`.
pub fn hadamard_factor(n: usize) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    if n.is_power_of_two() {
        return Some((1, n));
    }
    KNOWN_K.iter().find(|&&k| n % k == 0 && (n / k).is_power_of_two()).map(|&k| (k, n / k))
}

/// `Q = D·(H_K ⊗ H_M)/√n`: `D` diagonal random signs (all +1 when unsigned).
#[derive(Debug, Clone)]
pub struct Hadamard {
    n: usize,
    k: usize,
    m: usize,
    signs: Option<Vec<f32>>,
    seed: Option<u64>,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Hadamard {
    /// The randomized Hadamard transform of size `n` with signs drawn from `seed` (`None`: no
    /// signs, the plain normalized Hadamard matrix). Errors name `n` when no construction applies.
    pub fn new(n: usize, seed: Option<u64>) -> Result<Self, String> {
        let (k, m) = hadamard_factor(n).ok_or_else(|| {
            format!(
                "no Hadamard transform of size {n}: a size must be 2^m or K·2^m with K one of {:?}",
                KNOWN_K
            )
        })?;
        let signs = seed.map(|s| {
            // The stream depends on the size too, so two rotations drawn from one seed differ.
            let mut st = s ^ (n as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
            (0..n).map(|_| if splitmix(&mut st) >> 63 == 1 { -1.0 } else { 1.0 }).collect()
        });
        Ok(Hadamard { n, k, m, signs, seed })
    }

    /// `(K, 2^m)`.
    pub fn factors(&self) -> (usize, usize) {
        (self.k, self.m)
    }

    pub fn seed(&self) -> Option<u64> {
        self.seed
    }
}

/// In-place unnormalized Walsh–Hadamard transform (natural order) of a power-of-two length.
pub(crate) fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        h *= 2;
    }
}

impl Rotation for Hadamard {
    fn n(&self) -> usize {
        self.n
    }

    fn apply(&self, x: &mut [f32]) {
        assert_eq!(x.len(), self.n, "rotation of size {} applied to {} values", self.n, x.len());
        if let Some(s) = &self.signs {
            for (v, s) in x.iter_mut().zip(s) {
                *v *= s;
            }
        }
        // x as a K × M matrix (row a = x[a·M..]): H_M on every row, then H_Kᵀ down every column.
        for row in x.chunks_mut(self.m) {
            fwht(row);
        }
        if self.k > 1 {
            // Row c of the result = Σ_a H_K[a][c] · row a: axpys over contiguous rows of M.
            let hk = &tables()[&self.k];
            let (k, m) = (self.k, self.m);
            let src = x.to_vec();
            for (c, out) in x.chunks_mut(m).enumerate() {
                out.fill(0.0);
                for (a, row) in src.chunks(m).enumerate() {
                    if hk[a * k + c] > 0 {
                        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
                    } else {
                        out.iter_mut().zip(row).for_each(|(o, v)| *o -= v);
                    }
                }
            }
        }
        let scale = 1.0 / (self.n as f32).sqrt();
        for v in x.iter_mut() {
            *v *= scale;
        }
    }

    fn describe(&self) -> String {
        let size = if self.k == 1 { format!("{}", self.n) } else { format!("{}·{}", self.k, self.m) };
        match self.seed {
            Some(s) => format!("hadamard({size}, seed {s})"),
            None => format!("hadamard({size})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orthogonality_error;

    #[test]
    fn every_carried_matrix_is_hadamard() {
        for k in KNOWN_K {
            let h = &tables()[&k];
            for i in 0..k {
                for j in 0..k {
                    let d: i32 = (0..k).map(|c| h[i * k + c] as i32 * h[j * k + c] as i32).sum();
                    assert_eq!(d, if i == j { k as i32 } else { 0 }, "H_{k} rows {i},{j}");
                }
            }
        }
    }

    #[test]
    fn model_widths_factor_as_the_issue_lists() {
        for (n, k) in [(576, 36), (1536, 12), (8960, 140), (11008, 172), (14336, 28), (4096, 1), (64, 1)] {
            assert_eq!(hadamard_factor(n).map(|f| f.0), Some(k), "n = {n}");
        }
        let e = Hadamard::new(100, Some(0)).expect_err("no construction");
        assert!(e.contains("size 100"), "{e}");
        assert!(Hadamard::new(0, None).is_err());
    }

    #[test]
    fn transforms_are_orthogonal_at_every_factor() {
        // One size per carried K (K·2), and powers of two.
        let mut sizes: Vec<usize> = KNOWN_K.iter().map(|k| k * 2).collect();
        sizes.extend([1, 2, 8, 64, 256]);
        for n in sizes {
            for seed in [None, Some(7)] {
                let h = Hadamard::new(n, seed).expect("size");
                let q = h.to_dense();
                let err = orthogonality_error(&q, n);
                assert!(err < 1e-5, "n = {n}, seed {seed:?}: max |QQᵀ−I| = {err}");
            }
        }
    }

    #[test]
    fn fast_transform_matches_the_dense_product_on_random_data() {
        let n = 576;
        let h = Hadamard::new(n, Some(3)).expect("size");
        let q = h.to_dense();
        let mut st = 11u64;
        let x: Vec<f32> =
            (0..n).map(|_| (splitmix(&mut st) >> 40) as f32 / (1u64 << 23) as f32 - 1.0).collect();
        let mut fast = x.clone();
        h.apply(&mut fast);
        for j in 0..n {
            let want: f64 = (0..n).map(|i| x[i] as f64 * q[i * n + j] as f64).sum();
            assert!((fast[j] as f64 - want).abs() < 1e-4, "column {j}: {} vs {want}", fast[j]);
        }
        // Norm preserved.
        let (a, b): (f64, f64) =
            (x.iter().map(|v| (*v as f64).powi(2)).sum(), fast.iter().map(|v| (*v as f64).powi(2)).sum());
        assert!((a - b).abs() < 1e-4 * a);
    }

    #[test]
    fn seeds_differ_and_repeat() {
        let a = Hadamard::new(64, Some(1)).expect("size").to_dense();
        let b = Hadamard::new(64, Some(1)).expect("size").to_dense();
        let c = Hadamard::new(64, Some(2)).expect("size").to_dense();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn columns_rotate_as_the_transpose() {
        // W ← Qᵀ·W, then rows W ← W·Q on a square matrix: (Qᵀ W Q) for W = I is I.
        let n = 24;
        let h = Hadamard::new(n, Some(5)).expect("size");
        let mut w = vec![0f32; n * n];
        for i in 0..n {
            w[i * n + i] = 1.0;
        }
        h.apply_columns(&mut w, n);
        h.apply_rows(&mut w);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((w[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
