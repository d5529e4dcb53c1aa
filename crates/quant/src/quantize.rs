//! `quantkit quantize`: one calibration sample set, every requested output.
//!
//! The samples are drawn once. Integer outputs (GPTQ v1/v2, AWQ, compressed-tensors) share one
//! quantization (one layer-sequential pass), packed in each layout; each GGUF mix gets its own pass
//! (its grid differs per tensor), then the converter writes the file with the calibrated tensors
//! in place. A `rtn` GGUF run is llama.cpp's recipe: an imatrix from the calibration text, then the
//! importance-weighted quantizers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quantkit_calibration::{corpus, Manifest, RunOptions, RunStats, Samples};
use quantkit_core::{Error, GgmlType, Result};
use quantkit_engine::{Model, Proj, Spill, Tokenizer, WeightMode};
use quantkit_io::imatrix::{Entry, Imatrix};
use quantkit_io::rotate::RotationSpec;
use quantkit_io::source::ModelSource;
use serde::Serialize;

use crate::convert::{convert, ConvertOptions, TensorOverride};
use crate::fp8::Fp8Matrix;
use crate::grid::{IntMatrix, IntSpec, Quantized};
use crate::method::{GgufUse, Knobs, LayerReport, MethodKind, Pass, PassResult, Target};
use crate::recipe::{ModelInfo, Recipe};
use crate::writers::{self, BnbFormat, BnbReport, IntFormat, QuantInfo, WriteReport};
use quantkit_io::layout::bnb::Nf4Weights;

/// One requested output.
#[derive(Debug, Clone)]
pub enum OutFormat {
    Int(IntFormat),
    Gguf(Box<Recipe>),
    /// bitsandbytes 4-bit NF4: round to nearest as bnb quantizes on load (`rtn`), or GPTQ onto
    /// the NF4 levels (`gptq`, crate::nf4_grid).
    Bnb(BnbFormat),
}

impl OutFormat {
    /// Whether a file in this format records an online rotation so that its loaders apply it:
    /// compressed-tensors checkpoints (`quantkit_rotation` in config.json, and the transform
    /// config compressed-tensors applies); GGUF, GPTQ, AWQ and bitsandbytes files cannot.
    pub fn applies_online_rotations(&self) -> bool {
        matches!(self.layout(), Some(l) if l.name().starts_with("ct-") || l == IntFormat::CompressedTensors)
    }

    /// `gptq`, `gptq-v2`, `awq`, `compressed-tensors`, `bnb-nf4`, `bnb-nf4-dq`, `gguf:<type or mix>`.
    pub fn parse(s: &str) -> Result<Self> {
        if let Ok(f) = IntFormat::parse(s) {
            return Ok(OutFormat::Int(f));
        }
        if let Some(f) = BnbFormat::parse(s) {
            return Ok(OutFormat::Bnb(f));
        }
        match s.strip_prefix("gguf:") {
            Some(t) => Ok(OutFormat::Gguf(Box::new(Recipe::named(t)?))),
            None => {
                let names: Vec<&str> = IntFormat::ALL
                    .iter()
                    .map(|l| l.name())
                    .chain(BnbFormat::ALL.iter().map(|f| f.name()))
                    .collect();
                Err(Error::Invalid(format!("unknown format {s:?} ({}, gguf:<type>)", names.join(", "))))
            }
        }
    }

    /// The integer layout, when it is one.
    pub fn layout(&self) -> Option<IntFormat> {
        match self {
            OutFormat::Int(f) => Some(*f),
            OutFormat::Gguf(_) | OutFormat::Bnb(_) => None,
        }
    }

    /// As `--format` names it.
    pub fn name(&self) -> String {
        match self {
            OutFormat::Int(f) => f.dir_name().to_string(),
            OutFormat::Gguf(r) => format!("gguf:{}", r.mix.name),
            OutFormat::Bnb(b) => b.name().to_string(),
        }
    }

    /// Whether it is a GGUF mix.
    pub fn is_gguf(&self) -> bool {
        matches!(self, OutFormat::Gguf(_))
    }
}

/// Where calibration text comes from.
#[derive(Debug, Clone)]
pub struct CalibOptions {
    /// A text file or folder; `None`: sample from the model itself.
    pub corpus: Option<PathBuf>,
    pub samples: usize,
    pub seqlen: usize,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub method: MethodKind,
    /// The integer grid (required when an integer layout is among `formats`).
    pub int: Option<IntSpec>,
    /// The methods' knobs.
    pub knobs: Knobs,
    pub formats: Vec<OutFormat>,
    /// Required for GPTQ/AWQ and for GGUF outputs of `rtn` that should use an imatrix.
    pub calib: Option<CalibOptions>,
    /// Also write the calibration's imatrix (`OUT/imatrix.gguf`, llama.cpp's format).
    pub write_imatrix: bool,
    /// How the calibration passes hold activations and whether they resume.
    pub run: RunSettings,
    /// Rotate the model first (QuaRot's Hadamard R1/R2, fused into the weights): calibration and
    /// every method then see the rotated model.
    pub rotate: Option<RotationSpec>,
}

/// Memory and checkpoints of the calibration passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSettings {
    /// Bytes of activations (residual stream, attention context, post-attention residual of every
    /// sample) held in memory; each of the three buffers that does not fit a third of it lives in
    /// a temporary file in the output folder.
    pub mem_budget: u64,
    /// Continue a killed run from its last finished block (`OUT/.quantkit-work`).
    pub resume: bool,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings { mem_budget: 4 << 30, resume: false }
    }
}

/// Parse a byte size: `512M`, `4G`, `1.5G`, `1000000` (binary units: K = 1024).
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(Error::Invalid(format!("{s:?}: a size is a number with K, M, G or T"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{s:?}: a size is a number with K, M, G or T")))?;
    if !(v.is_finite() && v >= 0.0) || v * mul as f64 > u64::MAX as f64 {
        return Err(Error::Invalid(format!("{s:?}: not a size")));
    }
    Ok((v * mul as f64) as u64)
}

/// A pass's summary line.
#[derive(Debug, Clone, Serialize)]
pub struct PassReport {
    /// `int4 g128` or the GGUF mix.
    pub target: String,
    pub seconds: f64,
    /// Mean over layers of the relative output error, this method and RTN.
    pub mean_rel_error: f64,
    pub mean_rel_error_rtn: f64,
    /// Blocks taken from a checkpoint of an earlier, killed run (`--resume`).
    pub resumed_blocks: usize,
    /// Whether activations lived in temporary files (over `--mem-budget`).
    pub spilled: bool,
    pub layers: Vec<LayerReport>,
}

/// One file or folder written.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    pub format: String,
    pub path: PathBuf,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<WriteReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bnb: Option<BnbReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_weight: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: MethodKind,
    #[serde(flatten)]
    pub int: Option<IntSpec>,
    pub gptq: crate::method::gptq::GptqConfig,
    pub calibration: Option<Manifest>,
    pub calibration_seconds: f64,
    pub passes: Vec<PassReport>,
    pub outputs: Vec<OutputReport>,
    pub seconds: f64,
}

/// Progress callbacks: `stage(name, total)` starts a bar, `tick(done)` moves it.
pub trait Progress: Sync {
    fn stage(&self, name: &str, total: u64);
    fn tick(&self, done: u64);
}

fn to_imatrix(r: &PassResult, manifest: Option<&Manifest>, path: &Path) -> Imatrix {
    let entries = r
        .imatrix
        .iter()
        .map(|(k, (sums, rows))| {
            (k.clone(), Entry { sums: sums.iter().map(|&v| v as f32).collect(), counts: vec![*rows as f32] })
        })
        .collect();
    Imatrix {
        path: path.to_path_buf(),
        entries,
        datasets: manifest
            .and_then(|m| m.path.as_ref())
            .map(|p| vec![p.display().to_string()])
            .unwrap_or_default(),
        chunk_count: manifest.map(|m| m.samples as u32).unwrap_or(0),
        chunk_size: manifest.map(|m| m.seqlen as u32).unwrap_or(0),
        legacy: false,
    }
}

fn pass_report(target: String, seconds: f64, r: &PassResult, stats: RunStats) -> PassReport {
    let n = r.layers.len().max(1) as f64;
    PassReport {
        target,
        seconds,
        resumed_blocks: stats.resumed_blocks,
        spilled: stats.spilled,
        mean_rel_error: r.layers.iter().map(|l| l.rel_error).sum::<f64>() / n,
        mean_rel_error_rtn: r.layers.iter().map(|l| l.rel_error_rtn).sum::<f64>() / n,
        layers: r.layers.clone(),
    }
}

fn dir_bytes(p: &Path) -> u64 {
    if p.is_file() {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(p).map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_bytes(&e.path())).sum()).unwrap_or(0)
}

/// The name of a pass's checkpoint folder: the target's label and a hash of everything that decides
/// its output (the model's identity, method, knobs, target, samples), so `--resume` never mixes
/// blocks of different jobs.
fn pass_key(
    src: &ModelSource,
    method: MethodKind,
    knobs: &Knobs,
    target: &Target,
    samples: &Samples,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let path = src.path();
    let meta = std::fs::metadata(&path).ok();
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    h.update(format!(
        "{}|{:?}|{}|{:?}|{}|{:?}|{:?}|{:?}|{}",
        path.display(),
        src.rotation(),
        src.input_bytes(),
        mtime,
        method.name(),
        knobs,
        target,
        samples.seqlen,
        samples.count()
    ));
    for t in &samples.tokens {
        h.update(t.to_le_bytes());
    }
    let d = h.finalize();
    let kind = match target {
        Target::Stats => "stats",
        Target::Int { .. } => "int",
        Target::Gguf { .. } => "gguf",
        Target::Bnb { .. } => "bnb",
    };
    format!("{kind}-{}", d.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
}

/// Calibration samples drawn once, to share between several [`quantize_with`] runs.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub samples: Samples,
    pub manifest: Manifest,
    /// Seconds spent drawing them.
    pub seconds: f64,
}

/// Draw the calibration samples of `c` for the model at `src`.
pub fn prepare_calibration(src: &ModelSource, c: &CalibOptions, progress: &dyn Progress) -> Result<Prepared> {
    let t = Instant::now();
    let tok = Tokenizer::for_source(src)?;
    let (samples, manifest) = match &c.corpus {
        Some(p) => corpus::sample_corpus(p, &tok, c.samples, c.seqlen, c.seed)?,
        None => {
            let model = Model::load_with(src, WeightMode::Native)?;
            progress.stage("sampling", c.samples as u64);
            corpus::sample_model(&model, &tok, c.samples, c.seqlen, c.seed, &|d, _| progress.tick(d))?
        }
    };
    Ok(Prepared { samples, manifest, seconds: t.elapsed().as_secs_f64() })
}

/// The fp model's imatrix on `prep` (llama.cpp's `llama-imatrix`, from our calibration pass).
/// `path` is what the imatrix records as its own file name.
pub fn imatrix_pass(
    src: &ModelSource,
    prep: &Prepared,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Imatrix> {
    let mut model = Model::load_streaming(src)?;
    let mut pass = Pass::new(MethodKind::rtn(), &Knobs::default(), Target::Stats);
    progress.stage("imatrix", (model.num_layers() * prep.samples.count() * 5) as u64);
    let ro = RunOptions { source: Some(src), ..Default::default() };
    quantkit_calibration::run(&mut model, &prep.samples, &mut pass, &ro, &|d, _| progress.tick(d))?;
    Ok(to_imatrix(&pass.into_result(), Some(&prep.manifest), path))
}

/// What a job will do, checked before anything runs: the integer layouts and their grid, and the
/// FP8 layouts (round to nearest, their own grid).
#[derive(Debug)]
struct Plan {
    layouts: Vec<IntFormat>,
    /// The integer grid, when an integer layout is requested.
    int: Option<IntSpec>,
    fp8: Vec<IntFormat>,
    /// NVFP4 (round to nearest, its own grid).
    nvfp4: Vec<IntFormat>,
}

/// Every rule that decides whether a job can run, in one place: the method's needs and each
/// layout's capabilities.
fn plan(opts: &QuantizeOptions, prepared: bool) -> Result<Plan> {
    if opts.formats.is_empty() {
        return Err(Error::Invalid("no --format given".into()));
    }
    let info = opts.method.info();
    if info.needs_calibration && opts.calib.is_none() && !prepared {
        return Err(Error::Invalid(format!(
            "{} needs calibration text: --calib FILE|FOLDER (or --calib self to sample from the model)",
            info.name
        )));
    }
    if let Some(c) = opts.knobs.smooth {
        if opts.calib.is_none() && !prepared {
            return Err(Error::Invalid(format!(
                "{} needs calibration text (activation maxima): --calib FILE|FOLDER (or --calib self)",
                c.label()
            )));
        }
        if let Some(f) =
            opts.formats.iter().find(|f| !matches!(f.layout(), Some(l) if !l.is_float() && !l.is_nvfp4()))
        {
            return Err(Error::Unsupported(format!(
                "SmoothQuant folds into integer checkpoints (ct-w8a8, compressed-tensors, gptq, …), not {}",
                f.name()
            )));
        }
    }
    if let (GgufUse::No(why), true) = (info.gguf, opts.formats.iter().any(OutFormat::is_gguf)) {
        return Err(Error::Unsupported(why.into()));
    }
    if let Some(OutFormat::Bnb(f)) = opts.formats.iter().find(|f| matches!(f, OutFormat::Bnb(_))) {
        if opts.method != MethodKind::rtn() && info.gguf != GgufUse::Grid {
            return Err(Error::Unsupported(format!(
                "{}: bitsandbytes NF4 checkpoints are made by round to nearest (--method rtn, as \
                 bitsandbytes quantizes on load) or GPTQ onto the NF4 levels (--method gptq), not {}",
                f.name(),
                opts.method.name()
            )));
        }
    }
    let (nvfp4, rest): (Vec<IntFormat>, Vec<IntFormat>) =
        opts.formats.iter().filter_map(OutFormat::layout).partition(|f| f.is_nvfp4());
    if let (Some(f), false) = (nvfp4.first(), opts.method == MethodKind::rtn()) {
        return Err(Error::Unsupported(format!(
            "{} weights are quantized by round to nearest only (--method rtn), as llm-compressor's \
             NVFP4A16 does; {} onto the NVFP4 grid (E4M3 group scales under a global scale) is not \
             implemented",
            f.dir_name(),
            opts.method
        )));
    }
    let (fp8, layouts): (Vec<IntFormat>, Vec<IntFormat>) = rest.into_iter().partition(|f| f.is_float());
    if let (Some(f), false) = (fp8.first(), opts.method == MethodKind::rtn()) {
        return Err(Error::Unsupported(format!(
            "{} weights are quantized by round to nearest only (--method rtn); {} onto the FP8 grid \
             is not implemented",
            f.dir_name(),
            opts.method
        )));
    }
    let int = if layouts.is_empty() {
        None
    } else {
        let spec = opts.int.ok_or_else(|| {
            Error::Invalid("an integer layout needs an integer grid (bits, group, symmetry)".into())
        })?;
        for f in &layouts {
            f.check_grid(spec.bits, spec.group, spec.sym)?;
        }
        Some(spec)
    };
    let g = opts.knobs.gptq;
    if info.reorders_columns && g.act_order && !g.static_groups {
        if let Some(f) = layouts.iter().find(|f| !f.stores_g_idx()) {
            return Err(Error::Unsupported(format!(
                "act-order without --static-groups needs g_idx, which {} files do not have",
                f.dir_name()
            )));
        }
    }
    Ok(Plan { layouts, int, fp8, nvfp4 })
}

/// Write the checkpoint folder of `fmt` in `out` with `write` (one progress stage) and report it.
fn write_folder(
    fmt: IntFormat,
    out: &Path,
    progress: &dyn Progress,
    write: impl FnOnce(&Path) -> Result<WriteReport>,
) -> Result<OutputReport> {
    let dest = out.join(fmt.dir_name());
    progress.stage(fmt.dir_name(), 1);
    let rep = write(&dest)?;
    progress.tick(1);
    Ok(OutputReport {
        format: fmt.dir_name().to_string(),
        bytes: dir_bytes(&dest.join("model.safetensors")),
        path: dest,
        detail: Some(rep),
        bnb: None,
        bits_per_weight: None,
    })
}

/// A model that needs an online rotation (QuaRot's R4) goes only into formats whose loaders are
/// told to apply it.
fn check_online_rotation(src: &ModelSource, formats: &[OutFormat]) -> Result<()> {
    match formats.iter().find(|f| !f.applies_online_rotations()) {
        Some(f) if f.is_gguf() => crate::convert::refuse_online_r4(src, &f.name(), "llama.cpp"),
        Some(f) => crate::convert::refuse_online_r4(src, &f.name(), "this format's loaders"),
        // Still refuse a record that cannot be read.
        None => src.recorded_rotation().map(|_| ()),
    }
}

/// A source tensor's values, refused (naming it) when one is not finite.
fn read_finite(src: &ModelSource, t: &quantkit_io::source::SourceTensor) -> Result<Vec<f32>> {
    let w = src.read(t)?;
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(Error::bad_tensor(&t.name, format!("value {} at index {i} is not finite", w[i])));
    }
    Ok(w)
}

/// Run the whole job: calibrate, quantize, write every format into `out` (a folder).
pub fn quantize(
    model_path: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    quantize_with(model_path, out, opts, None, progress)
}

/// [`quantize`] with calibration samples already drawn (`prepared`; else drawn from `opts.calib`).
pub fn quantize_with(
    model_path: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    prepared: Option<&Prepared>,
    progress: &dyn Progress,
) -> Result<QuantizeReport> {
    let start = Instant::now();
    let plan = plan(opts, prepared.is_some())?;
    if out.is_file() {
        return Err(Error::Invalid(format!("{} is a file; -o names an output folder", out.display())));
    }
    let mut src = ModelSource::open(model_path)?;
    if let Some(spec) = opts.rotate {
        src = src.rotated(spec)?;
    }
    check_online_rotation(&src, &opts.formats)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;

    // Calibration samples, once.
    let drawn;
    let prepared: Option<&Prepared> = match (prepared, &opts.calib) {
        (Some(p), _) => Some(p),
        (None, Some(c)) => {
            drawn = prepare_calibration(&src, c, progress)?;
            Some(&drawn)
        }
        (None, None) => None,
    };
    let samples: Option<&Samples> = prepared.map(|p| &p.samples);
    let manifest: Option<&Manifest> = prepared.map(|p| &p.manifest);
    let calibration_seconds = prepared.map_or(0.0, |p| p.seconds);
    let gptq = opts.knobs.gptq;
    // Only a method that reorders columns records act-order.
    let act_order = opts.method.info().reorders_columns && gptq.act_order;
    let info = QuantInfo {
        method: opts.method.name().to_string(),
        act_order,
        static_groups: act_order && gptq.static_groups,
        damp: gptq.damp,
    };
    // Checkpoints of every pass (one folder each, named by what makes its output), removed when
    // the job has written everything; `--resume` continues from them.
    let work_root = out.join(".quantkit-work");
    let run_pass = |target: Target, label: &str| -> Result<(PassResult, f64, RunStats)> {
        let t0 = Instant::now();
        let samples = samples.expect("checked: calibration given");
        let mut model = Model::load_streaming(&src)?;
        // GGUF stores no column permutation: act-order there runs with static blocks (gptq.rs).
        let mut knobs = opts.knobs;
        if let Target::Gguf { .. } = target {
            knobs.gptq.static_groups = true;
        }
        let work = work_root.join(pass_key(&src, opts.method, &knobs, &target, samples));
        if !opts.run.resume && work.exists() {
            std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        }
        std::fs::create_dir_all(&work).map_err(|e| Error::io(&work, e))?;
        let mut pass = Pass::new(opts.method, &knobs, target).with_checkpoints(work.clone());
        progress.stage(label, (model.num_layers() * samples.count() * 5) as u64);
        let ro = RunOptions {
            source: Some(&src),
            spill: Some(Spill { budget: opts.run.mem_budget, dir: work_root.clone() }),
            work: Some(work),
        };
        let stats = quantkit_calibration::run(&mut model, samples, &mut pass, &ro, &|d, _| progress.tick(d))?;
        Ok((pass.into_result(), t0.elapsed().as_secs_f64(), stats))
    };
    let mut passes = vec![];
    let mut outputs = vec![];
    let mut imatrix_written = false;
    let mut write_imatrix = |r: &PassResult| -> Result<()> {
        if opts.write_imatrix && !imatrix_written && !r.imatrix.is_empty() {
            let p = out.join("imatrix.gguf");
            to_imatrix(r, manifest, &p).write_gguf(&p)?;
            imatrix_written = true;
        }
        Ok(())
    };

    // Integer checkpoints: one quantization, every layout.
    if let Some(spec) = plan.int {
        let int_formats = &plan.layouts;
        let skip = writers::skipped(&src, int_formats, spec.bits)?;
        // The smallest zero point every layout can store (asymmetric grids only).
        let zero_min = int_formats.iter().map(|f| f.zero_min(spec.sym)).max().unwrap_or(0);
        let grid = spec.grid(zero_min);
        let label = spec.label();
        let (quantized, floats): (BTreeMap<String, IntMatrix>, BTreeMap<String, Vec<f32>>) =
            if samples.is_some() {
                let (mut r, secs, stats) = run_pass(Target::Int { grid, skip: skip.clone() }, &label)?;
                write_imatrix(&r)?;
                passes.push(pass_report(label.clone(), secs, &r, stats));
                let q = r
                    .load_all()?
                    .into_iter()
                    .filter_map(|(k, v)| if let Quantized::Int(m) = v { Some((k, m)) } else { None })
                    .collect();
                (q, r.norms)
            } else {
                // RTN without calibration: straight from the weights.
                let tensors = src.tensors()?;
                let mut q = BTreeMap::new();
                for t in &tensors {
                    if Proj::of_weight(&t.name).is_some() && !skip.contains(&t.name) {
                        let w = read_finite(&src, t)?;
                        q.insert(t.name.clone(), IntMatrix::rtn(grid, &w, t.rows(), t.row_len(), None));
                    }
                }
                (q, BTreeMap::new())
            };
        for fmt in int_formats {
            outputs.push(write_folder(*fmt, out, progress, |dest| {
                writers::write_int_checkpoint(*fmt, &src, &quantized, &floats, &info, dest)
            })?);
        }
    }

    // FP8 checkpoints: round to nearest straight from the weights (every projection fits).
    if !plan.fp8.is_empty() {
        let skip = writers::skipped(&src, &plan.fp8, 8)?;
        let mut q = BTreeMap::new();
        for t in &src.tensors()? {
            if Proj::of_weight(&t.name).is_some() && !skip.contains(&t.name) {
                let w = read_finite(&src, t)?;
                q.insert(t.name.clone(), Fp8Matrix::rtn(&w, t.rows(), t.row_len()));
            }
        }
        for fmt in &plan.fp8 {
            outputs.push(write_folder(*fmt, out, progress, |dest| {
                writers::write_fp8_checkpoint(*fmt, &src, &q, &info, dest)
            })?);
        }
    }

    // NVFP4: round to nearest straight from the weights (widths not whole groups of 16 stay f16,
    // with their fused partners).
    for fmt in &plan.nvfp4 {
        let skip = writers::skipped(&src, &[*fmt], 4)?;
        outputs.push(write_folder(*fmt, out, progress, |dest| {
            writers::write_nvfp4_checkpoint(&src, &skip, &info, dest)
        })?);
    }

    // bitsandbytes NF4: straight from the weights (rtn), or one GPTQ pass per output (the
    // double-quantized absmax changes what GPTQ feeds back).
    for f in &opts.formats {
        let OutFormat::Bnb(b) = f else { continue };
        let dest = out.join(b.name());
        let calibrated: Option<BTreeMap<String, Nf4Weights>> = match samples {
            Some(_) if opts.method != MethodKind::rtn() => {
                let cfg = src.config();
                let target = Target::Bnb {
                    double_quant: b.double_quant,
                    qk_heads: cfg.arch.permutes_qk().then_some((cfg.n_heads, cfg.n_kv_heads)),
                };
                let label = format!("{}{}", b.name(), if act_order { " (act-order)" } else { "" });
                let (mut r, secs, stats) = run_pass(target, &label)?;
                write_imatrix(&r)?;
                passes.push(pass_report(label, secs, &r, stats));
                let q = r
                    .load_all()?
                    .into_iter()
                    .filter_map(|(k, v)| if let Quantized::Nf4(m) = v { Some((k, m.w)) } else { None })
                    .collect();
                Some(q)
            }
            _ => None,
        };
        progress.stage(b.name(), 1);
        let rep = writers::write_bnb_checkpoint(
            &src,
            *b,
            &dest,
            calibrated.as_ref().map(|m| (opts.method.name(), m)),
        )?;
        progress.tick(1);
        outputs.push(OutputReport {
            format: b.name().to_string(),
            path: dest.clone(),
            bytes: dir_bytes(&dest.join("model.safetensors")),
            detail: None,
            bnb: Some(rep),
            bits_per_weight: None,
        });
    }

    // GGUF mixes.
    for f in &opts.formats {
        let OutFormat::Gguf(recipe) = f else { continue };
        let recipe: Recipe = (**recipe).clone();
        let mix = recipe.mix.name.clone();
        let dest = out.join(format!("model-{mix}.gguf"));
        let tensors = src.tensors()?;
        let plans = recipe.plan(&tensors, &ModelInfo::from_config(src.config(), samples.is_some()))?;
        let mut overrides = BTreeMap::new();
        let mut imatrix = None;
        if samples.is_some() {
            let target = match opts.method.info().gguf {
                GgufUse::Imatrix => Target::Stats,
                GgufUse::Grid => Target::Gguf {
                    types: plans
                        .iter()
                        .filter(|p| Proj::of_weight(&p.name).is_some())
                        .map(|p| (p.name.clone(), p.ty))
                        .collect::<BTreeMap<String, GgmlType>>(),
                },
                GgufUse::No(why) => return Err(Error::Unsupported(why.into())),
            };
            let label = format!("gguf:{mix}{}", if act_order { " (act-order, static blocks)" } else { "" });
            let (r, secs, stats) = run_pass(target, &label)?;
            write_imatrix(&r)?;
            if opts.method.info().gguf != GgufUse::Imatrix {
                passes.push(pass_report(label, secs, &r, stats));
            }
            // Recorded in the GGUF by name only (as written by --imatrix): the file stays independent
            // of the output folder's location.
            imatrix = Some(to_imatrix(&r, manifest, Path::new("imatrix.gguf")));
            for (k, q) in r.quantized {
                if let Quantized::Gguf { ty, bytes, .. } = q {
                    overrides.insert(k, TensorOverride::Encoded { ty, bytes });
                }
            }
            for (k, t) in r.stored {
                if let Some((ty, file, offset, len)) = t.gguf_range() {
                    overrides.insert(k, TensorOverride::Stored { ty, file: file.to_path_buf(), offset, len });
                }
            }
        }
        progress.stage(&format!("gguf:{mix}"), 1);
        let rep = convert(
            &src,
            &dest,
            &ConvertOptions { recipe, tokenizer_pre: None, imatrix, overrides },
            &|_, _| {},
        )?;
        progress.tick(1);
        outputs.push(OutputReport {
            format: format!("gguf:{mix}"),
            path: dest,
            bytes: rep.output_bytes,
            detail: None,
            bnb: None,
            bits_per_weight: Some(rep.bits_per_weight),
        });
    }

    let report = QuantizeReport {
        model: model_path.to_path_buf(),
        out: out.to_path_buf(),
        method: opts.method,
        int: plan.int,
        gptq,
        calibration: manifest.cloned(),
        calibration_seconds,
        passes,
        outputs,
        seconds: start.elapsed().as_secs_f64(),
    };
    if work_root.exists() {
        std::fs::remove_dir_all(&work_root).map_err(|e| Error::io(&work_root, e))?;
    }
    let mut j = serde_json::to_vec_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    j.push(b'\n');
    let rp = out.join("report.json");
    let mut f = quantkit_core::AtomicFile::create(&rp)?;
    f.write_all(&j)?;
    f.commit()?;
    Ok(report)
}
