//! MSE clipping: round to nearest on the integer grid after a per-group search of the clipping
//! range that minimises the group's error weighted by each input's mean square activation,
//! `Σ_j E[x_j²]·(w_j − q_j)²` — the diagonal of GPTQ's output error, llm-compressor's MSE observer
//! (shrink the range in steps down to 80 %, keep the best) made activation-aware. Cheaper than GPTQ
//! (no Hessian inverse, no error feedback), better than RTN wherever outliers stretch a group.

use quantkit_core::{Error, Result};
use quantkit_engine::{BlockWeights, Site};
use rayon::prelude::*;

use super::{GgufUse, Knobs, Method, MethodInfo, Outcome, PassCtx};
use crate::grid::{Grid, IntGrid, IntMatrix, Quantized};
use crate::writers::IntFormat;

/// The registry row.
pub const INFO: MethodInfo = MethodInfo {
    name: "mse",
    needs_calibration: true,
    default_sym: true,
    default_layout: IntFormat::GptqV1,
    reorders_columns: false,
    gguf: GgufUse::No("mse into GGUF (the GGUF types search their own scales: use --method rtn or gptq)"),
    make,
};

fn make(_: &Knobs) -> Box<dyn Method> {
    Box::new(Mse)
}

/// Clip ratios tried: `1 − MAX_SHRINK·i/STEPS` for `i` in `0..=STEPS`.
const STEPS: usize = 20;
const MAX_SHRINK: f32 = 0.2;

/// The method.
#[derive(Debug)]
pub struct Mse;

impl Method for Mse {
    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        cx.quantize_site(layer, site, bw, |cx, j| {
            let Grid::Int(grid) = cx.grid(j.layer, j.p)? else {
                return Err(Error::Unsupported(
                    "mse quantizes onto the integer grids (integer checkpoints)".into(),
                ));
            };
            let (rows, cols) = j.shape;
            let clip = search_clip(grid, j.w, rows, cols, j.imp);
            let q = Quantized::Int(IntMatrix::rtn(grid, j.w, rows, cols, Some(&clip)));
            Ok(Some(Outcome { q, damp: None, dead: None }))
        })
    }
}

/// The best clip ratio per row and group (`rows × groups`, row-major), rows in parallel (each is
/// independent, so the result does not depend on the thread count).
pub fn search_clip(grid: IntGrid, w: &[f32], rows: usize, cols: usize, h: &[f32]) -> Vec<f32> {
    let gs = grid.group_size(cols);
    let per_row: Vec<Vec<f32>> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            row.chunks(gs)
                .zip(h.chunks(gs))
                .map(|(x, hg)| {
                    let (mut best, mut best_clip) = (f64::INFINITY, 1.0f32);
                    for i in 0..=STEPS {
                        let clip = 1.0 - MAX_SHRINK * i as f32 / STEPS as f32;
                        let p = grid.params(x, clip);
                        let err: f64 = x
                            .iter()
                            .zip(hg)
                            .map(|(&v, &hv)| {
                                let e = (v - IntGrid::value(p, grid.code(p, v))) as f64;
                                hv as f64 * e * e
                            })
                            .sum();
                        if err < best {
                            (best, best_clip) = (err, clip);
                        }
                    }
                    best_clip
                })
                .collect()
        })
        .collect();
    per_row.concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::output_error;

    #[test]
    fn mse_clipping_beats_rtn_on_the_activation_weighted_error() {
        let (rows, cols) = (32, 256);
        let mut r = quantkit_calibration::corpus::Rng::new(11);
        // Heavy-tailed weights (a few outliers per group) and uneven input energies.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let v = r.symmetric();
                if i % 61 == 7 {
                    8.0 * v
                } else {
                    v
                }
            })
            .collect();
        let h: Vec<f32> = (0..cols).map(|c| if c % 16 == 3 { 25.0 } else { 1.0 + (c % 5) as f32 }).collect();
        let xtx: Vec<f64> =
            (0..cols * cols).map(|i| if i / cols == i % cols { h[i % cols] as f64 } else { 0.0 }).collect();
        for (bits, group) in [(4, Some(128)), (3, Some(64)), (4, None)] {
            let grid = IntGrid { bits, sym: true, group, zero_min: 0 };
            let rtn = IntMatrix::rtn(grid, &w, rows, cols, None).dequantize();
            let clip = search_clip(grid, &w, rows, cols, &h);
            assert!(clip.iter().any(|&c| c < 1.0), "{bits} bits: some group clips");
            let mse = IntMatrix::rtn(grid, &w, rows, cols, Some(&clip)).dequantize();
            let (e_rtn, e_mse) =
                (output_error(&w, &rtn, rows, cols, &xtx, 1), output_error(&w, &mse, rows, cols, &xtx, 1));
            assert!(e_mse < 0.95 * e_rtn, "{bits} bits g{group:?}: {e_mse} vs RTN {e_rtn}");
        }
    }
}
