//! Calibrated quantization methods, one file each, behind one trait.
//!
//! A job is plan → pass → write (`crate::quantize`): the plan picks a [`Target`] (an integer grid,
//! GGUF types per tensor, or statistics only); one layer-sequential pass
//! ([`quantkit_calibration::run`]) drives a [`Pass`], which collects each site's input statistics
//! and hands every finished site and block to the [`Method`]; the writers then pack what the pass
//! produced. Every group's statistics come from the already-quantized model before it
//! (true-sequential).
//!
//! A method is a [`MethodInfo`] row in [`METHODS`] (its name and capabilities, asked in one place)
//! plus a [`Method`] implementation in its own file: [`rtn`], [`gptq`], [`awq`]. Adding one:
//! docs/calibration.md ("Adding a method").

pub mod awq;
pub mod gptq;
pub mod mse;
pub mod rtn;
pub mod smooth;
pub mod work;

use std::collections::BTreeMap;
use std::time::Instant;

use quantkit_calibration::SiteStats;
use quantkit_core::{Error, GgmlType, Result};
use quantkit_engine::{BlockHook, BlockWeights, Proj, Site};
use serde::Serialize;

use crate::gguf_grid::GgufGrid;
use crate::grid::{output_energy_sampled, output_error_sampled, Grid, IntGrid, IntMatrix, Quantized};
use crate::nf4_grid::Nf4Grid;

/// The registry: one line per method.
pub static METHODS: &[MethodInfo] = &[rtn::INFO, gptq::INFO, awq::INFO, mse::INFO];

/// How a method serves a GGUF mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufUse {
    /// llama.cpp's own recipe: the pass only collects an imatrix, the converter quantizes.
    Imatrix,
    /// The pass quantizes every integer tensor on its GGUF type's grid.
    Grid,
    /// Not at all (the reason, for the error).
    No(&'static str),
}

/// A method's name and capabilities.
#[derive(Debug)]
pub struct MethodInfo {
    /// `rtn`, `gptq`, `awq`: the CLI, recipe strings, reports and checkpoint configs use it.
    pub name: &'static str,
    /// Whether it needs calibration samples (else it quantizes straight from the weights).
    pub needs_calibration: bool,
    /// Its default integer grid symmetry.
    pub default_sym: bool,
    /// The integer layout its recipe strings (`gptq:4:128`) write.
    pub default_layout: crate::writers::IntFormat,
    /// Whether it may reorder columns (act-order, recorded in the configs with `g_idx`).
    pub reorders_columns: bool,
    pub gguf: GgufUse,
    /// The method, with the job's knobs.
    pub make: fn(&Knobs) -> Box<dyn Method>,
}

/// The methods' knobs (each method reads its own).
#[derive(Debug, Clone, Copy, Default)]
pub struct Knobs {
    pub gptq: gptq::GptqConfig,
    pub awq: awq::AwqConfig,
    /// SmoothQuant before the method (integer targets only).
    pub smooth: Option<smooth::SmoothConfig>,
}

/// A handle on a registered method: compares, prints and serializes as its name.
#[derive(Clone, Copy)]
pub struct MethodKind(&'static MethodInfo);

impl MethodKind {
    pub fn info(self) -> &'static MethodInfo {
        self.0
    }
    pub fn name(self) -> &'static str {
        self.0.name
    }
    /// Round to nearest: the method every calibrated result is compared with.
    pub fn rtn() -> Self {
        MethodKind(&METHODS[0])
    }
}

impl PartialEq for MethodKind {
    fn eq(&self, o: &Self) -> bool {
        self.0.name == o.0.name
    }
}
impl Eq for MethodKind {}

impl std::fmt::Debug for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}
impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.name)
    }
}

impl Serialize for MethodKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name)
    }
}

impl std::str::FromStr for MethodKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        METHODS.iter().find(|m| m.name == s).map(MethodKind).ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
            Error::Invalid(format!("unknown method {s:?} ({})", names.join(", ")))
        })
    }
}

/// A calibrated method: what it does with each site's statistics and each finished block.
pub trait Method: Send + std::fmt::Debug {
    /// Whether the pass must accumulate `XᵀX` (the Hessian) per site; `Σ|x|` and `Σx²` are always
    /// collected.
    fn needs_hessian(&self) -> bool {
        true
    }
    /// Every calibration row of `site` has been observed: quantize or transform its projections.
    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()>;
    /// The block's last chance to change its weights.
    fn finish_block(&mut self, _cx: &mut PassCtx, _layer: usize, _bw: &mut BlockWeights) -> Result<()> {
        Ok(())
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
    /// GGUF types per tensor name (integer types get the calibrated treatment, float types are
    /// left to the converter).
    Gguf { types: BTreeMap<String, GgmlType> },
    /// bitsandbytes NF4 on every projection (GPTQ-into-NF4). `qk_heads`: `(n_head, n_kv_head)`
    /// when the pass holds q/k rows in llama.cpp's permuted order (bnb blocks follow HF order).
    Bnb { double_quant: bool, qk_heads: Option<(u64, u64)> },
}

/// One linear layer's line in the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    /// SmoothQuant: the migration strength α applied to this layer's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth_alpha: Option<f32>,
    pub seconds: f64,
}

/// A layer's output errors (this method, RTN) and its output energy, for [`LayerReport::new`].
#[derive(Debug, Clone, Copy)]
pub struct Errors {
    pub error: f64,
    pub error_rtn: f64,
    /// ‖Wx‖² of the original weights (the relative errors' denominator).
    pub energy: f64,
}

impl LayerReport {
    /// The report line of one layer quantized since `t0` (method-specific fields empty).
    pub fn new(name: String, (rows, cols): (usize, usize), storage: String, e: Errors, t0: Instant) -> Self {
        LayerReport {
            name,
            rows,
            cols,
            storage,
            error: e.error,
            error_rtn: e.error_rtn,
            rel_error: e.error / e.energy,
            rel_error_rtn: e.error_rtn / e.energy,
            damp: None,
            dead_inputs: None,
            awq_alpha: None,
            smooth_alpha: None,
            seconds: t0.elapsed().as_secs_f64(),
        }
    }
}

/// What one pass produced.
#[derive(Debug, Default)]
pub struct PassResult {
    /// Per GGUF tensor name: in memory (the current block's, or every block's in a pass without a
    /// checkpoint folder) ...
    pub quantized: BTreeMap<String, Quantized>,
    /// ... or saved in the checkpoint folder ([`work`]).
    pub stored: BTreeMap<String, work::StoredTensor>,
    /// Float weights the method changed (norms and unquantized projections; GGUF names).
    pub norms: BTreeMap<String, Vec<f32>>,
    /// Σx² and token count per GGUF tensor name (imatrix).
    pub imatrix: BTreeMap<String, (Vec<f64>, u64)>,
    pub layers: Vec<LayerReport>,
}

impl PassResult {
    /// Every quantized tensor, in memory (saved ones read back).
    pub fn load_all(&mut self) -> Result<BTreeMap<String, Quantized>> {
        let mut all = std::mem::take(&mut self.quantized);
        for (k, t) in std::mem::take(&mut self.stored) {
            all.insert(k, t.load()?);
        }
        Ok(all)
    }
}

/// The GGUF name of projection `p` of `layer`.
pub fn name(layer: usize, p: Proj) -> String {
    p.weight_name(layer)
}

/// What a method sees of the pass: the target, the statistics of the current block, the result.
#[derive(Debug)]
pub struct PassCtx {
    pub target: Target,
    pub stats: BTreeMap<Site, SiteStats>,
    pub result: PassResult,
}

/// What a method's quantizer returns for one projection (see [`PassCtx::quantize_site`]).
#[derive(Debug)]
pub struct Outcome {
    pub q: Quantized,
    pub damp: Option<f64>,
    pub dead: Option<usize>,
}

impl PassCtx {
    /// How projection `p` of `layer` is stored, `None` when the pass leaves it in floating point.
    /// An integer GGUF type without a grid is an error naming the type, never a silent skip.
    pub fn storage(&self, layer: usize, p: Proj) -> Result<Option<String>> {
        Ok(match &self.target {
            Target::Stats => None,
            Target::Int { grid, skip } => (!skip.contains(&name(layer, p))).then(|| grid.storage()),
            Target::Gguf { types } => match types.get(&name(layer, p)) {
                None => None,
                Some(ty) if ty.is_float() => None,
                Some(ty) => {
                    GgufGrid::new(*ty).map_err(|e| Error::bad_tensor(name(layer, p), e.to_string()))?;
                    Some(ty.name().to_string())
                }
            },
            Target::Bnb { .. } => match self.grid(layer, p)? {
                Grid::Nf4(g) => Some(g.storage().to_string()),
                _ => None,
            },
        })
    }

    /// The grid of projection `p` (a target that quantizes).
    pub fn grid(&self, layer: usize, p: Proj) -> Result<Grid> {
        Ok(match &self.target {
            Target::Int { grid, .. } => Grid::Int(*grid),
            Target::Gguf { types } => Grid::Gguf(GgufGrid::new(types[&name(layer, p)])?),
            Target::Bnb { double_quant, qk_heads } => Grid::Nf4(Nf4Grid {
                double_quant: *double_quant,
                heads: qk_heads
                    .and_then(|(h, kv)| quantkit_io::names::qk_heads(&name(layer, p), h, kv))
                    .map(|h| h as usize),
            }),
            Target::Stats => return Err(Error::Invalid("no grid in a statistics pass".into())),
        })
    }

    /// Round-to-nearest of `w` on projection `p`'s grid (`imp`: importance for GGUF types).
    pub fn rtn(
        &self,
        layer: usize,
        p: Proj,
        w: &[f32],
        (rows, cols): (usize, usize),
        imp: Option<&[f32]>,
    ) -> Result<Quantized> {
        Ok(match self.grid(layer, p)? {
            Grid::Int(grid) => Quantized::Int(IntMatrix::rtn(grid, w, rows, cols, None)),
            Grid::Gguf(g) => {
                let rb = quantkit_formats::row_bytes(g.ty, cols)?;
                let codec = quantkit_formats::codec(g.ty)?;
                let mut bytes = vec![0u8; rows * rb];
                for (o, x) in bytes.chunks_exact_mut(rb).zip(w.chunks_exact(cols)) {
                    codec.quantize_row_with(x, imp, o);
                }
                Quantized::Gguf { ty: g.ty, rows, cols, bytes }
            }
            Grid::Nf4(g) => Quantized::Nf4(g.rtn(w, rows, cols)),
        })
    }

    /// The per-projection flow of RTN-like methods: for each of `site`'s projections that the
    /// target quantizes, RTN on its grid (the comparison), then `quantize` (`None`: keep the RTN
    /// result), the report line, and the quantized values installed in `bw` for what follows.
    pub fn quantize_site(
        &mut self,
        layer: usize,
        site: Site,
        bw: &mut BlockWeights,
        mut quantize: impl FnMut(&Self, Job) -> Result<Option<Outcome>>,
    ) -> Result<()> {
        for &p in site.projs() {
            let Some(storage) = self.storage(layer, p)? else { continue };
            let t0 = Instant::now();
            let shape = bw.shape(p);
            let (rows, cols) = shape;
            let w = bw.get(p).to_vec();
            let st = &self.stats[&Site::of(p)];
            let imp: Vec<f32> = st.mean_sq().iter().map(|&v| v as f32).collect();
            let rtn = self.rtn(layer, p, &w, shape, Some(&imp))?;
            let rtn_deq = rtn.dequantize()?;
            // Report figures, estimated on at most 256 rows (exact below that).
            let err_rtn = output_error_sampled(&w, &rtn_deq, rows, cols, &st.xtx, st.rows);
            let energy = output_energy_sampled(&w, rows, cols, &st.xtx, st.rows).max(f64::MIN_POSITIVE);
            let job = Job { layer, p, w: &w, shape, imp: &imp, stats: st };
            let (q, deq, damp, dead) = match quantize(self, job)? {
                Some(o) => {
                    let d = o.q.dequantize()?;
                    (o.q, d, o.damp, o.dead)
                }
                None => (rtn, rtn_deq, None, None),
            };
            let st = &self.stats[&Site::of(p)];
            let err = output_error_sampled(&w, &deq, rows, cols, &st.xtx, st.rows);
            bw.set(p, deq)?;
            let errors = Errors { error: err, error_rtn: err_rtn, energy };
            self.result.layers.push(LayerReport {
                damp,
                dead_inputs: dead,
                ..LayerReport::new(name(layer, p), shape, storage, errors, t0)
            });
            self.result.quantized.insert(name(layer, p), q);
        }
        Ok(())
    }
}

/// One projection handed to a method's quantizer.
#[derive(Debug)]
pub struct Job<'a> {
    pub layer: usize,
    pub p: Proj,
    /// The weights as they are now (`rows × cols`, row-major).
    pub w: &'a [f32],
    pub shape: (usize, usize),
    /// Mean squared input per column (the imatrix values).
    pub imp: &'a [f32],
    pub stats: &'a SiteStats,
}

/// The engine hook of one pass: statistics per site, the method at each finished site and block.
#[derive(Debug)]
pub struct Pass {
    method: Box<dyn Method>,
    pub cx: PassCtx,
    /// Checkpoint folder: each finished block is saved there ([`work`]).
    work: Option<std::path::PathBuf>,
    /// Report lines already saved.
    reports_saved: usize,
}

impl Pass {
    /// A pass of `method` into `target`. A statistics pass ([`Target::Stats`]) quantizes nothing
    /// and skips the Hessian.
    pub fn new(method: MethodKind, knobs: &Knobs, target: Target) -> Self {
        let method: Box<dyn Method> = match (&target, knobs.smooth) {
            (Target::Stats, _) => Box::new(StatsOnly),
            (_, Some(c)) => smooth::Smooth::wrap((method.0.make)(knobs), c),
            (_, None) => (method.0.make)(knobs),
        };
        Pass {
            method,
            cx: PassCtx { target, stats: BTreeMap::new(), result: PassResult::default() },
            work: None,
            reports_saved: 0,
        }
    }

    /// Save each finished block in `dir` (which must exist): its quantized tensors leave memory,
    /// and a run killed later can resume after it ([`BlockHook::restore`]).
    pub fn with_checkpoints(mut self, dir: std::path::PathBuf) -> Self {
        self.work = Some(dir);
        self
    }

    pub fn into_result(self) -> PassResult {
        self.cx.result
    }
}

/// The method of a statistics pass: it changes nothing.
#[derive(Debug)]
struct StatsOnly;
impl Method for StatsOnly {
    fn needs_hessian(&self) -> bool {
        false
    }
    fn at_site(&mut self, _: &mut PassCtx, _: usize, _: Site, _: &mut BlockWeights) -> Result<()> {
        Ok(())
    }
}

impl BlockHook for Pass {
    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], rows: usize) {
        let dim = x.len() / rows.max(1);
        let hessian = self.method.needs_hessian();
        self.cx.stats.entry(site).or_insert_with(|| SiteStats::new(dim, hessian)).add(x, rows);
    }

    fn update(&mut self, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let st = self.cx.stats.get_mut(&site).ok_or_else(|| {
            Error::Invalid(format!("layer {layer}: no calibration rows reached {}", site.name()))
        })?;
        st.mirror();
        for &p in site.projs() {
            self.cx.result.imatrix.insert(name(layer, p), (st.sq_sum.clone(), st.rows));
        }
        self.method.at_site(&mut self.cx, layer, site, bw)
    }

    fn finish(&mut self, layer: usize, bw: &mut BlockWeights) -> Result<()> {
        self.method.finish_block(&mut self.cx, layer, bw)?;
        self.cx.stats.clear();
        Ok(())
    }

    fn block_done(&mut self, layer: usize) -> Result<()> {
        if let Some(dir) = &self.work {
            work::save_layer(dir, layer, &mut self.cx.result, self.reports_saved)?;
            self.reports_saved = self.cx.result.layers.len();
        }
        Ok(())
    }

    fn restore(&mut self, done: usize) -> Result<()> {
        let Some(dir) = &self.work else {
            return Err(Error::Invalid("resuming a pass without a checkpoint folder".into()));
        };
        self.cx.result = PassResult::default();
        for layer in 0..done {
            work::restore_layer(dir, layer, &mut self.cx.result)?;
        }
        self.reports_saved = self.cx.result.layers.len();
        Ok(())
    }
}
