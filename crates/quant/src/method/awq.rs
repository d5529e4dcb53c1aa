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

use std::collections::BTreeMap;
use std::time::Instant;

use quantkit_calibration::SiteStats;
use quantkit_core::{Error, Result};
use quantkit_engine::{BlockWeights, Proj, Site};
use rayon::prelude::*;

use super::{name, Errors, GgufUse, Knobs, LayerReport, Method, MethodInfo, PassCtx, Target};
use crate::grid::{output_energy, output_error, IntGrid, IntMatrix, Quantized};
use crate::writers::IntFormat;

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

/// The registry row.
pub const INFO: MethodInfo = MethodInfo {
    name: "awq",
    needs_calibration: true,
    default_sym: false,
    default_layout: IntFormat::Awq,
    reorders_columns: false,
    gguf: GgufUse::No("AWQ into GGUF (use gguf with --method gptq or rtn, or an integer format with awq)"),
    make,
};

fn make(k: &Knobs) -> Box<dyn Method> {
    Box::new(Awq { cfg: k.awq, originals: BTreeMap::new(), alphas: BTreeMap::new() })
}

/// The method: at each site the scale search, folded into what produces the input; at the end of
/// the block the clip search and quantization of every projection.
#[derive(Debug)]
pub struct Awq {
    cfg: AwqConfig,
    /// Weights and statistics before scaling (for the RTN comparison), per projection.
    originals: BTreeMap<Proj, (Vec<f32>, SiteStats)>,
    alphas: BTreeMap<Proj, f32>,
}

fn int_grid(cx: &PassCtx) -> Result<IntGrid> {
    match &cx.target {
        Target::Int { grid, .. } => Ok(*grid),
        _ => Err(Error::Unsupported(
            "AWQ writes integer checkpoints (gptq, gptq-v2, awq, compressed-tensors)".into(),
        )),
    }
}

impl Method for Awq {
    /// Search and fold the input scale of `site` (when a preceding operation can absorb it).
    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let grid = int_grid(cx)?;
        let mut projs = vec![];
        for &p in site.projs() {
            if cx.storage(layer, p)?.is_some() {
                projs.push(p);
            }
        }
        for &p in &projs {
            self.originals.insert(p, (bw.get(p).to_vec(), cx.stats[&site].clone()));
        }
        // What absorbs 1/s: the norm before q/k/v and gate/up; the rows of v (only without GQA)
        // before o; the rows of up before down.
        let prev_ok = match site {
            Site::AttnIn | Site::FfnIn => true,
            Site::AttnOut => bw.shape(Proj::V).0 == bw.shape(Proj::O).1,
            Site::FfnDownIn => true,
        };
        if projs.is_empty() || !prev_ok {
            return Ok(());
        }
        let st = cx.stats.get_mut(&site).ok_or_else(|| Error::Invalid(format!("{site:?} not observed")))?;
        let cols = st.dim;
        let mean_abs = st.mean_abs();
        let ws: Vec<(&[f32], usize)> = projs.iter().map(|&p| (bw.get(p), bw.shape(p).0)).collect();
        let s = search_scale(&ws, cols, &mean_abs, &st.xtx, st.rows, grid, self.cfg);
        for &p in &projs {
            self.alphas.insert(p, s.alpha);
        }
        if s.alpha == 0.0 {
            return Ok(());
        }
        let sc = &s.scales;
        for &p in &projs {
            for row in bw.get_mut(p).chunks_exact_mut(cols) {
                for (v, f) in row.iter_mut().zip(sc) {
                    *v *= f;
                }
            }
        }
        match site {
            Site::AttnIn => bw.attn_norm.iter_mut().zip(sc).for_each(|(v, f)| *v /= f),
            Site::FfnIn => bw.ffn_norm.iter_mut().zip(sc).for_each(|(v, f)| *v /= f),
            Site::AttnOut | Site::FfnDownIn => {
                let prev = if site == Site::AttnOut { Proj::V } else { Proj::Up };
                let pc = bw.shape(prev).1;
                for (row, f) in bw.get_mut(prev).chunks_exact_mut(pc).zip(sc) {
                    row.iter_mut().for_each(|v| *v /= f);
                }
            }
        }
        let mut mean = st.abs_sum.clone();
        rescale_stats(&mut st.xtx, &mut mean, sc);
        st.abs_sum = mean;
        for (v, f) in st.sq_sum.iter_mut().zip(sc) {
            *v /= (*f as f64) * (*f as f64);
        }
        for (v, f) in st.abs_max.iter_mut().zip(sc) {
            *v /= f;
        }
        Ok(())
    }

    /// Clip search and quantization of every projection of the block; the folded norms and the
    /// float weights it leaves unquantized go to the result.
    fn finish_block(&mut self, cx: &mut PassCtx, layer: usize, bw: &mut BlockWeights) -> Result<()> {
        let grid = int_grid(cx)?;
        for p in Proj::ALL {
            let Some(storage) = cx.storage(layer, p)? else { continue };
            let t0 = Instant::now();
            let (rows, cols) = bw.shape(p);
            let st = &cx.stats[&Site::of(p)];
            let w = bw.get(p).to_vec();
            let clip = if matches!(p, Proj::Q | Proj::K) {
                None
            } else {
                Some(search_clip(&w, rows, cols, &st.xtx, grid, self.cfg))
            };
            let m = IntMatrix::rtn(grid, &w, rows, cols, clip.as_deref());
            let deq = m.dequantize();
            let err = output_error(&w, &deq, rows, cols, &st.xtx, st.rows);
            let (ow, ost) = &self.originals[&p];
            let err_rtn = output_error(
                ow,
                &IntMatrix::rtn(grid, ow, rows, cols, None).dequantize(),
                rows,
                cols,
                &ost.xtx,
                ost.rows,
            );
            let energy = output_energy(ow, rows, cols, &ost.xtx, ost.rows).max(f64::MIN_POSITIVE);
            bw.set(p, deq)?;
            let errors = Errors { error: err, error_rtn: err_rtn, energy };
            cx.result.layers.push(LayerReport {
                awq_alpha: self.alphas.get(&p).copied(),
                ..LayerReport::new(name(layer, p), (rows, cols), storage, errors, t0)
            });
            cx.result.quantized.insert(name(layer, p), Quantized::Int(m));
        }
        self.originals.clear();
        self.alphas.clear();
        cx.result.norms.insert(format!("blk.{layer}.attn_norm.weight"), bw.attn_norm.clone());
        cx.result.norms.insert(format!("blk.{layer}.ffn_norm.weight"), bw.ffn_norm.clone());
        // AWQ also changes the float weights it leaves unquantized (folded scales).
        for p in Proj::ALL {
            if cx.storage(layer, p)?.is_none() {
                cx.result.norms.insert(name(layer, p), bw.get(p).to_vec());
            }
        }
        Ok(())
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
