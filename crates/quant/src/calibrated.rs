//! The calibrated quantizers as engine block hooks: one layer-sequential pass
//! ([`quantkit_calibration::run`]) per output grid, collecting per-layer input statistics and
//! quantizing (RTN, GPTQ or AWQ) between stages, so every group's statistics come from the
//! already-quantized model before it (true-sequential).

use std::collections::BTreeMap;
use std::time::Instant;

use quantkit_calibration::SiteStats;
use quantkit_core::{Error, GgmlType, Result};
use quantkit_engine::{BlockHook, BlockWeights, Proj, Site};
use serde::Serialize;

use crate::awq::{rescale_stats, search_clip, search_scale, AwqConfig};
use crate::gguf_grid::GgufGrid;
use crate::gptq::{gptq, output_energy, output_error, GptqConfig, Grid, Quantized};
use crate::grid::{IntGrid, IntMatrix};

/// The quantization algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Round to nearest (statistics are collected only for the report and the imatrix).
    Rtn,
    Gptq,
    Awq,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "awq" => Ok(Method::Awq),
            _ => Err(Error::Invalid(format!("unknown method {s:?} (rtn, gptq, awq)"))),
        }
    }
}

/// Where a pass puts weights.
#[derive(Debug, Clone)]
pub enum Target {
    /// No quantization: statistics only (an imatrix for plain llama-quantize-style conversion).
    Stats,
    /// The integer group-affine grid; `skip` lists GGUF tensor names left in floating point
    /// (shapes the requested files cannot pack).
    Int { grid: IntGrid, skip: Vec<String> },
    /// GGUF types per tensor name (integer types get the calibrated treatment, others are left to
    /// the converter).
    Gguf { types: BTreeMap<String, GgmlType> },
}

/// One linear layer's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Storage: `int4 g128`, `Q4_K`, `f16 (kept)`...
    pub storage: String,
    /// Mean ‖(W − Q)x‖² per calibration token, for this method and for RTN on the same grid.
    pub error: f64,
    pub error_rtn: f64,
    /// The same, relative to ‖Wx‖².
    pub rel_error: f64,
    pub rel_error_rtn: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damp: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_inputs: Option<usize>,
    /// AWQ: the scale exponent chosen for this layer's input group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awq_alpha: Option<f32>,
    pub seconds: f64,
}

/// What one pass produced.
#[derive(Debug, Default)]
pub struct PassResult {
    /// Per GGUF tensor name.
    pub quantized: BTreeMap<String, Quantized>,
    /// Norm weights changed by AWQ (GGUF names).
    pub norms: BTreeMap<String, Vec<f32>>,
    /// Σx² and token count per GGUF tensor name (imatrix).
    pub imatrix: BTreeMap<String, (Vec<f64>, u64)>,
    pub layers: Vec<LayerReport>,
}

/// The hook that does it.
#[derive(Debug)]
pub struct Calibrator {
    method: Method,
    target: Target,
    gptq: GptqConfig,
    awq: AwqConfig,
    stats: BTreeMap<Site, SiteStats>,
    /// AWQ: weights and statistics before scaling (for the RTN comparison), per projection.
    originals: BTreeMap<Proj, (Vec<f32>, SiteStats)>,
    alphas: BTreeMap<Proj, f32>,
    pub result: PassResult,
}

fn name(layer: usize, p: Proj) -> String {
    format!("blk.{layer}.{}.weight", p.gguf())
}

impl Calibrator {
    pub fn new(method: Method, target: Target, gptq: GptqConfig, awq: AwqConfig) -> Self {
        Calibrator {
            method,
            target,
            gptq,
            awq,
            stats: BTreeMap::new(),
            originals: BTreeMap::new(),
            alphas: BTreeMap::new(),
            result: PassResult::default(),
        }
    }

    fn storage(&self, layer: usize, p: Proj) -> Option<String> {
        match &self.target {
            Target::Stats => None,
            Target::Int { grid, skip } => {
                if skip.contains(&name(layer, p)) {
                    None
                } else {
                    Some(format!(
                        "int{} {}{}",
                        grid.bits,
                        grid.group.map(|g| format!("g{g}")).unwrap_or_else(|| "per-channel".into()),
                        if grid.sym { " sym" } else { "" }
                    ))
                }
            }
            Target::Gguf { types } => {
                let ty = types.get(&name(layer, p))?;
                GgufGrid::new(*ty).ok().map(|_| ty.name().to_string())
            }
        }
    }

    fn rtn_of(
        &self,
        layer: usize,
        p: Proj,
        w: &[f32],
        rows: usize,
        cols: usize,
        imp: Option<&[f32]>,
    ) -> Result<Quantized> {
        Ok(match &self.target {
            Target::Int { grid, .. } => Quantized::Int(IntMatrix::rtn(*grid, w, rows, cols, None)),
            Target::Gguf { types } => {
                let ty = types[&name(layer, p)];
                let codec = quantkit_formats::codec(ty)?;
                let rb = quantkit_formats::row_bytes(ty, cols)?;
                let mut bytes = vec![0u8; rows * rb];
                for (o, x) in bytes.chunks_exact_mut(rb).zip(w.chunks_exact(cols)) {
                    codec.quantize_row_with(x, imp, o);
                }
                Quantized::Gguf { ty, rows, cols, bytes }
            }
            Target::Stats => unreachable!("no quantization in a statistics pass"),
        })
    }

    fn grid_of(&self, layer: usize, p: Proj) -> Result<Grid> {
        Ok(match &self.target {
            Target::Int { grid, .. } => Grid::Int(*grid),
            Target::Gguf { types } => Grid::Gguf(GgufGrid::new(types[&name(layer, p)])?),
            Target::Stats => unreachable!("no quantization in a statistics pass"),
        })
    }

    /// Quantize projection `p` of `bw` now (RTN or GPTQ), record it and install its values.
    fn quantize_now(&mut self, layer: usize, p: Proj, bw: &mut BlockWeights) -> Result<()> {
        let t0 = Instant::now();
        let (rows, cols) = bw.shape(p);
        let w = bw.get(p).to_vec();
        let st = &self.stats[&Site::of(p)];
        let imp: Vec<f32> = st.mean_sq().iter().map(|&v| v as f32).collect();
        let storage = self.storage(layer, p).expect("checked by the caller");
        let rtn = self.rtn_of(layer, p, &w, rows, cols, Some(&imp))?;
        let rtn_deq = rtn.dequantize()?;
        let err_rtn = output_error(&w, &rtn_deq, rows, cols, &st.xtx, st.rows);
        let energy = output_energy(&w, rows, cols, &st.xtx, st.rows).max(f64::MIN_POSITIVE);
        let (q, deq, damp, dead) = if self.method == Method::Gptq {
            let h = st.hessian();
            let out = gptq(&w, rows, cols, &h, Some(&imp), self.grid_of(layer, p)?, self.gptq)
                .map_err(|e| Error::bad_tensor(name(layer, p), e.to_string()))?;
            let d = out.q.dequantize()?;
            (out.q, d, Some(out.damp), Some(out.dead))
        } else {
            (rtn, rtn_deq.clone(), None, None)
        };
        let err = output_error(&w, &deq, rows, cols, &st.xtx, st.rows);
        bw.set(p, deq)?;
        self.result.layers.push(LayerReport {
            name: name(layer, p),
            rows,
            cols,
            storage,
            error: err,
            error_rtn: err_rtn,
            rel_error: err / energy,
            rel_error_rtn: err_rtn / energy,
            damp,
            dead_inputs: dead,
            awq_alpha: None,
            seconds: t0.elapsed().as_secs_f64(),
        });
        self.result.quantized.insert(name(layer, p), q);
        Ok(())
    }

    /// AWQ: search and fold the input scale of `site` (when a preceding operation can absorb it).
    fn awq_scale(&mut self, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let Target::Int { grid, .. } = &self.target else {
            return Err(Error::Unsupported(
                "AWQ writes integer checkpoints (gptq, gptq-v2, awq, compressed-tensors)".into(),
            ));
        };
        let grid = *grid;
        let projs: Vec<Proj> =
            site.projs().iter().copied().filter(|&p| self.storage(layer, p).is_some()).collect();
        for &p in &projs {
            self.originals.insert(p, (bw.get(p).to_vec(), self.stats[&site].clone()));
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
        let st = self.stats.get_mut(&site).expect("observed");
        let cols = st.dim;
        let mean_abs = st.mean_abs();
        let ws: Vec<(&[f32], usize)> = projs.iter().map(|&p| (bw.get(p), bw.shape(p).0)).collect();
        let s = search_scale(&ws, cols, &mean_abs, &st.xtx, st.rows, grid, self.awq);
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
        Ok(())
    }

    /// AWQ: clip search and quantization of every projection of the block.
    fn awq_quantize(&mut self, layer: usize, bw: &mut BlockWeights) -> Result<()> {
        let Target::Int { grid, .. } = &self.target else { unreachable!("checked in awq_scale") };
        let grid = *grid;
        for p in Proj::ALL {
            if self.storage(layer, p).is_none() {
                continue;
            }
            let t0 = Instant::now();
            let (rows, cols) = bw.shape(p);
            let st = &self.stats[&Site::of(p)];
            let w = bw.get(p).to_vec();
            let clip = if matches!(p, Proj::Q | Proj::K) {
                None
            } else {
                Some(search_clip(&w, rows, cols, &st.xtx, grid, self.awq))
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
            self.result.layers.push(LayerReport {
                name: name(layer, p),
                rows,
                cols,
                storage: self.storage(layer, p).unwrap_or_default(),
                error: err,
                error_rtn: err_rtn,
                rel_error: err / energy,
                rel_error_rtn: err_rtn / energy,
                damp: None,
                dead_inputs: None,
                awq_alpha: self.alphas.get(&p).copied(),
                seconds: t0.elapsed().as_secs_f64(),
            });
            self.result.quantized.insert(name(layer, p), Quantized::Int(m));
        }
        self.originals.clear();
        self.alphas.clear();
        Ok(())
    }
}

impl BlockHook for Calibrator {
    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], rows: usize) {
        let dim = x.len() / rows.max(1);
        self.stats.entry(site).or_insert_with(|| SiteStats::new(dim, true)).add(x, rows);
    }

    fn update(&mut self, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let st = self.stats.get(&site).ok_or_else(|| {
            Error::Invalid(format!("layer {layer}: no calibration rows reached {}", site.name()))
        })?;
        for &p in site.projs() {
            self.result.imatrix.insert(name(layer, p), (st.sq_sum.clone(), st.rows));
        }
        match (self.method, &self.target) {
            (_, Target::Stats) => {}
            (Method::Awq, _) => self.awq_scale(layer, site, bw)?,
            (Method::Rtn | Method::Gptq, _) => {
                for &p in site.projs() {
                    if self.storage(layer, p).is_some() {
                        self.quantize_now(layer, p, bw)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, layer: usize, bw: &mut BlockWeights) -> Result<()> {
        if self.method == Method::Awq && !matches!(self.target, Target::Stats) {
            self.awq_quantize(layer, bw)?;
            self.result.norms.insert(format!("blk.{layer}.attn_norm.weight"), bw.attn_norm.clone());
            self.result.norms.insert(format!("blk.{layer}.ffn_norm.weight"), bw.ffn_norm.clone());
        }
        // AWQ also changes the float weights it leaves unquantized (folded scales).
        if self.method == Method::Awq {
            for p in Proj::ALL {
                if self.storage(layer, p).is_none() {
                    self.result.norms.insert(name(layer, p), bw.get(p).to_vec());
                }
            }
        }
        self.stats.clear();
        Ok(())
    }
}
