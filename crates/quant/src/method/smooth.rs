//! SmoothQuant (Xiao et al. 2023; llm-compressor's `SmoothQuantModifier`): migrate activation
//! outliers into the weights before W8A8 quantization. For the inputs of q/k/v (after the attention
//! RMSNorm) and of gate/up (after the FFN RMSNorm) — llm-compressor's default Llama mappings — a
//! per-channel factor
//!
//! `s_j = max|x_j|^α / max_r |W_rj|^(1−α)` (max over every projection sharing the input)
//!
//! divides the norm's weight and multiplies the projections' columns: `(x/s)(W·s)ᵀ = xWᵀ`, so the
//! output file is an ordinary checkpoint with the same function, whose activations are flatter
//! (easier per-token int8) and whose weights carry the difference. `max|x_j|` comes from the
//! calibration pass (`SiteStats::abs_max`, on the already-quantized model before this block).
//!
//! α is the migration strength: fixed (default 0.5, llm-compressor's default) or searched per site
//! over [`ALPHAS`] by a predicted W8A8 output error: the weight term exactly from `XᵀX` (as AWQ's
//! search), plus an activation term `Δ²/12 · ‖W·s‖²_F` per token for per-token int8 rounding of
//! step `Δ = max_j(max|x_j| / s_j) / 127` — a proxy: it assumes every token reaches the largest
//! channel maximum, so it overstates the activation error of typical tokens (it leans to larger α).
//!
//! A wrapper around the method that quantizes ([`Smooth::wrap`]): the smoothing runs at the site,
//! before the inner method sees the (rescaled) statistics.

use quantkit_calibration::SiteStats;
use quantkit_core::{Error, Result};
use quantkit_engine::{BlockWeights, Proj, Site};
use rayon::prelude::*;

use super::{name, Method, PassCtx, Target};
use crate::grid::{output_error, IntGrid, IntMatrix};

/// The α candidates of the search.
pub const ALPHAS: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// SmoothQuant's knob.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SmoothConfig {
    /// Migration strength; `None`: searched per site over [`ALPHAS`].
    pub alpha: Option<f32>,
}

impl Default for SmoothConfig {
    fn default() -> Self {
        SmoothConfig { alpha: Some(0.5) }
    }
}

impl SmoothConfig {
    /// `0.5`, `0.8`, `auto` (search).
    pub fn parse(s: &str) -> Result<Self> {
        if s == "auto" {
            return Ok(SmoothConfig { alpha: None });
        }
        match s.parse::<f32>() {
            Ok(a) if (0.0..=1.0).contains(&a) => Ok(SmoothConfig { alpha: Some(a) }),
            _ => Err(Error::Invalid(format!("SmoothQuant α {s:?}: a number in [0, 1] or `auto`"))),
        }
    }

    /// `α=0.5`, `α=auto`.
    pub fn label(&self) -> String {
        match self.alpha {
            Some(a) => format!("smoothquant α={a}"),
            None => "smoothquant α=auto".into(),
        }
    }
}

/// `s_j = xmax_j^α / wmax_j^(1−α)`, 1 where either maximum is 0, clamped to [1e-5, 1e5].
pub fn smoothing_scales(xmax: &[f32], wmax: &[f32], alpha: f32) -> Vec<f32> {
    xmax.iter()
        .zip(wmax)
        .map(
            |(&x, &w)| {
                if x > 0.0 && w > 0.0 {
                    (x.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
                } else {
                    1.0
                }
            },
        )
        .collect()
}

/// Max |W_rj| per column over every matrix in `ws` (`(weights, rows)`, `cols` columns each).
pub fn column_max(ws: &[(&[f32], usize)], cols: usize) -> Vec<f32> {
    let mut m = vec![0f32; cols];
    for (w, _) in ws {
        for row in w.chunks_exact(cols) {
            for (a, v) in m.iter_mut().zip(row) {
                *a = a.max(v.abs());
            }
        }
    }
    m
}

/// The predicted mean per-token squared output error of W8A8 after smoothing by `s` (see the
/// module docs): weights on `grid` exactly (from `xtx`), activations by the per-token int8 proxy.
pub fn predicted_error(
    ws: &[(&[f32], usize)],
    cols: usize,
    xmax: &[f32],
    xtx: &[f64],
    tokens: u64,
    grid: IntGrid,
    s: &[f32],
) -> f64 {
    let step = xmax.iter().zip(s).fold(0f32, |m, (x, f)| m.max(x / f)) as f64 / 127.0;
    ws.iter()
        .map(|&(w, rows)| {
            let scaled: Vec<f32> = w.iter().enumerate().map(|(k, v)| v * s[k % cols]).collect();
            let q = IntMatrix::rtn(grid, &scaled, rows, cols, None).dequantize();
            let back: Vec<f32> = q.iter().enumerate().map(|(k, v)| v / s[k % cols]).collect();
            let energy: f64 = q.iter().map(|&v| (v as f64) * (v as f64)).sum();
            output_error(w, &back, rows, cols, xtx, tokens) + step * step / 12.0 * energy
        })
        .sum()
}

/// Divide a site's statistics by `s` (the input becomes `x/s`).
fn rescale(st: &mut SiteStats, s: &[f32]) {
    let d = s.len();
    if st.with_xtx && st.xtx.len() == d * d {
        st.xtx.par_chunks_exact_mut(d).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v /= s[i] as f64 * s[j] as f64;
            }
        });
    }
    for (i, &f) in s.iter().enumerate() {
        st.abs_sum[i] /= f as f64;
        st.sq_sum[i] /= (f as f64) * (f as f64);
        st.abs_max[i] /= f;
    }
}

/// SmoothQuant around a quantizing method.
#[derive(Debug)]
pub struct Smooth {
    inner: Box<dyn Method>,
    cfg: SmoothConfig,
    /// α chosen per projection of the current block.
    alphas: Vec<(Proj, f32)>,
}

impl Smooth {
    pub fn wrap(inner: Box<dyn Method>, cfg: SmoothConfig) -> Box<dyn Method> {
        Box::new(Smooth { inner, cfg, alphas: vec![] })
    }

    fn smooth(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let grid = match &cx.target {
            Target::Int { grid, .. } => *grid,
            _ => {
                return Err(Error::Unsupported(
                    "SmoothQuant writes integer checkpoints (e.g. ct-w8a8)".into(),
                ))
            }
        };
        let mut projs = vec![];
        for &p in site.projs() {
            if cx.storage(layer, p)?.is_some() {
                projs.push(p);
            }
        }
        if projs.is_empty() {
            return Ok(());
        }
        let st = cx.stats.get_mut(&site).ok_or_else(|| Error::Invalid(format!("{site:?} not observed")))?;
        let cols = st.dim;
        let ws: Vec<(&[f32], usize)> = projs.iter().map(|&p| (bw.get(p), bw.shape(p).0)).collect();
        let wmax = column_max(&ws, cols);
        let (alpha, s) = match self.cfg.alpha {
            Some(a) => (a, smoothing_scales(&st.abs_max, &wmax, a)),
            None => {
                let cands: Vec<(f32, Vec<f32>)> =
                    ALPHAS.iter().map(|&a| (a, smoothing_scales(&st.abs_max, &wmax, a))).collect();
                let errs: Vec<f64> = cands
                    .iter()
                    .map(|(_, s)| predicted_error(&ws, cols, &st.abs_max, &st.xtx, st.rows, grid, s))
                    .collect();
                let best = (0..errs.len()).fold(0, |b, i| if errs[i] < errs[b] { i } else { b });
                cands[best].clone()
            }
        };
        for &p in &projs {
            self.alphas.push((p, alpha));
            for row in bw.get_mut(p).chunks_exact_mut(cols) {
                row.iter_mut().zip(&s).for_each(|(v, f)| *v *= f);
            }
        }
        let norm = if site == Site::AttnIn { &mut bw.attn_norm } else { &mut bw.ffn_norm };
        norm.iter_mut().zip(&s).for_each(|(v, f)| *v /= f);
        rescale(st, &s);
        Ok(())
    }
}

impl Method for Smooth {
    fn needs_hessian(&self) -> bool {
        self.inner.needs_hessian() || self.cfg.alpha.is_none()
    }

    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        if matches!(site, Site::AttnIn | Site::FfnIn) {
            self.smooth(cx, layer, site, bw)?;
        }
        self.inner.at_site(cx, layer, site, bw)
    }

    fn finish_block(&mut self, cx: &mut PassCtx, layer: usize, bw: &mut BlockWeights) -> Result<()> {
        self.inner.finish_block(cx, layer, bw)?;
        cx.result.norms.insert(format!("blk.{layer}.attn_norm.weight"), bw.attn_norm.clone());
        cx.result.norms.insert(format!("blk.{layer}.ffn_norm.weight"), bw.ffn_norm.clone());
        // The float weights left unquantized carry the scales too.
        for p in Proj::ALL {
            if cx.storage(layer, p)?.is_none() && self.alphas.iter().any(|(q, _)| *q == p) {
                cx.result.norms.insert(name(layer, p), bw.get(p).to_vec());
            }
        }
        for (p, a) in self.alphas.drain(..) {
            let n = name(layer, p);
            if let Some(r) = cx.result.layers.iter_mut().rev().find(|r| r.name == n) {
                r.smooth_alpha = Some(a);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_flattens_outlier_channels_and_keeps_the_product() {
        let (rows, cols) = (8, 16);
        let xmax: Vec<f32> = (0..cols).map(|j| if j == 3 { 60.0 } else { 1.0 + j as f32 * 0.1 }).collect();
        let w: Vec<f32> = (0..rows * cols).map(|k| ((k * 7 % 13) as f32 - 6.0) / 10.0).collect();
        let wmax = column_max(&[(&w, rows)], cols);
        let s = smoothing_scales(&xmax, &wmax, 0.5);
        let flat: Vec<f32> = xmax.iter().zip(&s).map(|(x, f)| x / f).collect();
        let spread = |v: &[f32]| {
            let (a, b) = v.iter().fold((f32::MAX, 0f32), |(a, b), &x| (a.min(x), b.max(x)));
            b / a
        };
        assert!(spread(&flat) < spread(&xmax) / 4.0, "{flat:?}");
        // α = 0: only the weights' range matters; zero maxima give 1.
        let s0 = smoothing_scales(&[0.0, 2.0], &[1.0, 0.0], 0.3);
        assert_eq!(s0, vec![1.0, 1.0]);
        assert!(SmoothConfig::parse("1.5").is_err() && SmoothConfig::parse("x").is_err());
        assert_eq!(SmoothConfig::parse("auto").expect("auto").alpha, None);
    }

    #[test]
    fn the_search_prefers_smoothing_when_one_channel_dominates() {
        let (rows, cols, tokens) = (16, 32, 64usize);
        let mut r = quantkit_calibration::corpus::Rng::new(5);
        let w: Vec<f32> = (0..rows * cols).map(|_| r.symmetric()).collect();
        let x: Vec<f32> =
            (0..tokens * cols).map(|k| r.symmetric() * if k % cols == 7 { 80.0 } else { 1.0 }).collect();
        let mut st = SiteStats::new(cols, true);
        st.add(&x, tokens);
        st.mirror();
        let grid = IntGrid { bits: 8, sym: true, group: None, zero_min: 0 };
        let wmax = column_max(&[(&w, rows)], cols);
        let err = |a: f32| {
            let s = smoothing_scales(&st.abs_max, &wmax, a);
            predicted_error(&[(&w, rows)], cols, &st.abs_max, &st.xtx, st.rows, grid, &s)
        };
        let none =
            predicted_error(&[(&w, rows)], cols, &st.abs_max, &st.xtx, st.rows, grid, &vec![1.0; cols]);
        assert!(err(0.5) < 0.5 * none, "{} {none}", err(0.5));
    }
}
