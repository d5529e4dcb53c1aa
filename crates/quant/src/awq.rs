//! AWQ (Lin et al. 2023, AutoAWQ's `auto_scale` + `auto_clip`): protect the input channels that
//! carry large activations by scaling them up before quantization and folding the inverse scale
//! into the operation that produces the input (an RMSNorm, or the rows of `up`/`v`), then clip each
//! group's range.
//!
//! Both searches are scored on the layer-output error `‖(W − Q)x‖²` summed over all calibration
//! tokens, computed exactly from the accumulated `XᵀX` (no forward re-runs): the scale search
//! over the group of projections that share the input (AutoAWQ scores the whole module's output,
//! e.g. after attention — a difference), the clip search per row and group with the group's
//! diagonal block of `XᵀX` (as AutoAWQ's per-group error).

use rayon::prelude::*;

use crate::gptq::output_error;
use crate::grid::{IntGrid, IntMatrix};

/// AWQ's knobs (AutoAWQ's defaults).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AwqConfig {
    /// Ratios α = i/n_grid, i in 0..n_grid (scale search), and clip steps of 1/n_grid.
    pub n_grid: usize,
    /// Clip ratios from 1 down to 1 − max_shrink (exclusive).
    pub max_shrink: f32,
}

impl Default for AwqConfig {
    fn default() -> Self {
        AwqConfig { n_grid: 20, max_shrink: 0.5 }
    }
}

/// The chosen per-channel scale of one input and its search.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleSearch {
    pub alpha: f32,
    /// Output error at α = 0 (no scaling) and at the best α.
    pub error_unscaled: f64,
    pub error_best: f64,
    #[serde(skip)]
    pub scales: Vec<f32>,
}

/// Search `s = mean|x|^α / sqrt(max·min)` over α for the projections `ws` (each `rows × cols`)
/// that share an input with statistics `mean_abs` and `xtx` (`tokens` rows).
pub fn search_scale(
    ws: &[(&[f32], usize)],
    cols: usize,
    mean_abs: &[f64],
    xtx: &[f64],
    tokens: u64,
    grid: IntGrid,
    cfg: AwqConfig,
) -> ScaleSearch {
    let candidates: Vec<(f32, Vec<f32>)> = (0..cfg.n_grid)
        .map(|i| {
            let alpha = i as f32 / cfg.n_grid as f32;
            let mut s: Vec<f32> = mean_abs.iter().map(|&m| (m as f32).powf(alpha).max(1e-4)).collect();
            let (mx, mn) = s.iter().fold((f32::MIN, f32::MAX), |(a, b), &v| (a.max(v), b.min(v)));
            let norm = (mx * mn).sqrt();
            for v in &mut s {
                *v /= norm;
            }
            (alpha, s)
        })
        .collect();
    let errors: Vec<f64> = candidates
        .par_iter()
        .map(|(_, s)| {
            ws.iter()
                .map(|&(w, rows)| {
                    let scaled: Vec<f32> = w.iter().enumerate().map(|(k, v)| v * s[k % cols]).collect();
                    let q = IntMatrix::rtn(grid, &scaled, rows, cols, None).dequantize();
                    let back: Vec<f32> = q.iter().enumerate().map(|(k, v)| v / s[k % cols]).collect();
                    output_error(w, &back, rows, cols, xtx, tokens)
                })
                .sum()
        })
        .collect();
    let best = (0..errors.len()).fold(0, |b, i| if errors[i] < errors[b] { i } else { b });
    ScaleSearch {
        alpha: candidates[best].0,
        error_unscaled: errors[0],
        error_best: errors[best],
        scales: candidates[best].1.clone(),
    }
}

/// Per row and group, the clip ratio (1, 1 − 1/n, …) with the least output error on the group's
/// block of `xtx`. Returns `rows × groups` ratios for [`IntMatrix::rtn`].
pub fn search_clip(
    w: &[f32],
    rows: usize,
    cols: usize,
    xtx: &[f64],
    grid: IntGrid,
    cfg: AwqConfig,
) -> Vec<f32> {
    let gs = grid.group_size(cols);
    let ng = grid.groups(cols);
    let steps = ((cfg.max_shrink * cfg.n_grid as f32) as usize).max(1);
    (0..rows)
        .into_par_iter()
        .flat_map_iter(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            (0..ng).map(move |g| {
                let c0 = g * gs;
                let x = &row[c0..(c0 + gs).min(cols)];
                let n = x.len();
                let mut best = (f64::INFINITY, 1.0f32);
                let mut e = vec![0f64; n];
                for i in 0..steps {
                    let ratio = 1.0 - i as f32 / cfg.n_grid as f32;
                    let p = grid.params(x, ratio);
                    for (k, &v) in x.iter().enumerate() {
                        e[k] = (v - IntGrid::value(p, grid.code(p, v))) as f64;
                    }
                    let mut err = 0.0;
                    for a in 0..n {
                        let hr = &xtx[(c0 + a) * cols + c0..(c0 + a) * cols + c0 + n];
                        let dot: f64 = hr.iter().zip(&e).map(|(h, b)| h * b).sum();
                        err += e[a] * dot;
                    }
                    if err < best.0 {
                        best = (err, ratio);
                    }
                }
                best.1
            })
        })
        .collect()
}

/// `S⁻¹ XᵀX S⁻¹` and `mean|x|/s`: the statistics of the scaled input `x/s`.
pub fn rescale_stats(xtx: &mut [f64], mean_abs: &mut [f64], s: &[f32]) {
    let d = s.len();
    for i in 0..d {
        for j in 0..d {
            xtx[i * d + j] /= s[i] as f64 * s[j] as f64;
        }
        mean_abs[i] /= s[i] as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_salient_channels_reduces_the_output_error() {
        let (rows, cols, tokens) = (16, 64, 200usize);
        // A few input channels carry 20× larger activations.
        let big = |c: usize| if c % 16 == 5 { 20.0 } else { 1.0 };
        let mut r = quantkit_calibration::corpus::Rng::new(3);
        let mut rnd = || r.symmetric();
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|k| rnd() * big(k % cols)).collect();
        let mut xtx = vec![0f64; cols * cols];
        let mut mean_abs = vec![0f64; cols];
        for t in 0..tokens {
            for i in 0..cols {
                mean_abs[i] += x[t * cols + i].abs() as f64 / tokens as f64;
                for j in 0..cols {
                    xtx[i * cols + j] += x[t * cols + i] as f64 * x[t * cols + j] as f64;
                }
            }
        }
        let grid = IntGrid { bits: 3, sym: false, group: Some(32), zero_min: 0 };
        let r = search_scale(&[(&w, rows)], cols, &mean_abs, &xtx, tokens as u64, grid, AwqConfig::default());
        assert!(r.alpha > 0.0, "{r:?}");
        assert!(r.error_best < 0.9 * r.error_unscaled, "{r:?}");
        let clip = search_clip(&w, rows, cols, &xtx, grid, AwqConfig::default());
        assert_eq!(clip.len(), rows * 2);
        assert!(clip.iter().all(|&c| (0.5..=1.0).contains(&c)));
        let e_clip = output_error(
            &w,
            &IntMatrix::rtn(grid, &w, rows, cols, Some(&clip)).dequantize(),
            rows,
            cols,
            &xtx,
            tokens as u64,
        );
        let e_plain = output_error(
            &w,
            &IntMatrix::rtn(grid, &w, rows, cols, None).dequantize(),
            rows,
            cols,
            &xtx,
            tokens as u64,
        );
        assert!(e_clip <= e_plain, "{e_clip} {e_plain}");
    }
}
