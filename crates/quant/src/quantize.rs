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

use quantkit_calibration::{corpus, Manifest, Samples};
use quantkit_core::{Error, GgmlType, Result};
use quantkit_engine::{Model, Proj, Tokenizer, WeightMode};
use quantkit_io::imatrix::{Entry, Imatrix};
use quantkit_io::source::ModelSource;
use serde::Serialize;

use crate::awq::AwqConfig;
use crate::calibrated::{Calibrator, LayerReport, Method, PassResult, Target};
use crate::convert::{convert, ConvertOptions, TensorOverride};
use crate::gptq::{GptqConfig, Quantized};
use crate::grid::{IntGrid, IntMatrix};
use crate::recipe::{ModelInfo, Recipe};
use crate::writers::{self, IntFormat, QuantInfo, WriteReport};

/// One requested output.
#[derive(Debug, Clone)]
pub enum OutFormat {
    Int(IntFormat),
    Gguf(Box<Recipe>),
}

impl OutFormat {
    /// `gptq`, `gptq-v2`, `awq`, `compressed-tensors`, `gguf:<type or mix>`.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "gptq" => OutFormat::Int(IntFormat::GptqV1),
            "gptq-v2" => OutFormat::Int(IntFormat::GptqV2),
            "awq" => OutFormat::Int(IntFormat::Awq),
            "compressed-tensors" => OutFormat::Int(IntFormat::CompressedTensors),
            _ => match s.strip_prefix("gguf:") {
                Some(t) => OutFormat::Gguf(Box::new(Recipe::named(t)?)),
                None => {
                    return Err(Error::Invalid(format!(
                        "unknown format {s:?} (gptq, gptq-v2, awq, compressed-tensors, gguf:<type>)"
                    )))
                }
            },
        })
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
    pub method: Method,
    pub bits: u32,
    /// `None`: one group per row (per-channel).
    pub group: Option<usize>,
    pub sym: bool,
    pub gptq: GptqConfig,
    pub awq: AwqConfig,
    pub formats: Vec<OutFormat>,
    /// Required for GPTQ/AWQ and for GGUF outputs of `rtn` that should use an imatrix.
    pub calib: Option<CalibOptions>,
    /// Also write the calibration's imatrix (`OUT/imatrix.gguf`, llama.cpp's format).
    pub write_imatrix: bool,
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
    pub bits_per_weight: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: Method,
    pub bits: u32,
    pub group_size: Option<usize>,
    pub sym: bool,
    pub gptq: GptqConfig,
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

fn pass_report(target: String, seconds: f64, r: &PassResult) -> PassReport {
    let n = r.layers.len().max(1) as f64;
    PassReport {
        target,
        seconds,
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
    let mut model = Model::load_with(src, WeightMode::Dequantized)?;
    let mut hook = Calibrator::new(Method::Rtn, Target::Stats, GptqConfig::default(), AwqConfig::default());
    progress.stage("imatrix", (model.num_layers() * prep.samples.count() * 5) as u64);
    quantkit_calibration::run(&mut model, &prep.samples, &mut hook, &|d, _| progress.tick(d))?;
    Ok(to_imatrix(&hook.result, Some(&prep.manifest), path))
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
    if opts.formats.is_empty() {
        return Err(Error::Invalid("no --format given".into()));
    }
    if !(2..=8).contains(&opts.bits) {
        return Err(Error::Invalid(format!("--bits {} (2..8)", opts.bits)));
    }
    if opts.method != Method::Rtn && opts.calib.is_none() && prepared.is_none() {
        return Err(Error::Invalid(format!(
            "{:?} needs calibration text: --calib FILE|FOLDER (or --calib self to sample from the model)",
            opts.method
        )));
    }
    if out.is_file() {
        return Err(Error::Invalid(format!("{} is a file; -o names an output folder", out.display())));
    }
    let src = ModelSource::open(model_path)?;
    let int_formats: Vec<IntFormat> =
        opts.formats.iter().filter_map(|f| if let OutFormat::Int(i) = f { Some(*i) } else { None }).collect();
    if int_formats.contains(&IntFormat::Awq) && opts.bits != 4 {
        return Err(Error::Unsupported(format!(
            "AWQ GEMM checkpoints hold 4-bit weights, not {}",
            opts.bits
        )));
    }
    if opts.method == Method::Gptq
        && opts.gptq.act_order
        && !opts.gptq.static_groups
        && int_formats.iter().any(|f| matches!(f, IntFormat::Awq | IntFormat::CompressedTensors))
    {
        return Err(Error::Unsupported(
            "act-order without --static-groups needs g_idx, which awq and compressed-tensors files do not have".into(),
        ));
    }
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
    let info = QuantInfo {
        method: format!("{:?}", opts.method).to_lowercase(),
        // Only GPTQ reorders columns (RTN and AWQ record no act-order).
        act_order: opts.method == Method::Gptq && opts.gptq.act_order,
        static_groups: opts.method == Method::Gptq && opts.gptq.act_order && opts.gptq.static_groups,
        damp: opts.gptq.damp,
    };
    let run_pass = |target: Target, label: &str| -> Result<(PassResult, f64)> {
        let t0 = Instant::now();
        let samples = samples.expect("checked: calibration given");
        let mut model = Model::load_with(&src, WeightMode::Dequantized)?;
        // GGUF stores no column permutation: act-order there runs with static blocks (gptq.rs).
        let gptq = match target {
            Target::Gguf { .. } => GptqConfig { static_groups: true, ..opts.gptq },
            _ => opts.gptq,
        };
        let mut hook = Calibrator::new(opts.method, target, gptq, opts.awq);
        progress.stage(label, (model.num_layers() * samples.count() * 5) as u64);
        quantkit_calibration::run(&mut model, samples, &mut hook, &|d, _| progress.tick(d))?;
        Ok((hook.result, t0.elapsed().as_secs_f64()))
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
    if !int_formats.is_empty() {
        let skip = writers::skipped(&src, &int_formats, opts.bits)?;
        let grid = IntGrid {
            bits: opts.bits,
            sym: opts.sym,
            group: opts.group,
            zero_min: if int_formats.contains(&IntFormat::GptqV1) && !opts.sym { 1 } else { 0 },
        };
        let label = format!(
            "int{} {}",
            opts.bits,
            opts.group.map(|g| format!("g{g}")).unwrap_or_else(|| "per-channel".into())
        );
        let (quantized, floats): (BTreeMap<String, IntMatrix>, BTreeMap<String, Vec<f32>>) = if samples
            .is_some()
        {
            let (r, secs) = run_pass(Target::Int { grid, skip: skip.clone() }, &label)?;
            write_imatrix(&r)?;
            passes.push(pass_report(label.clone(), secs, &r));
            let q = r
                .quantized
                .into_iter()
                .filter_map(|(k, v)| if let Quantized::Int(m) = v { Some((k, m)) } else { None })
                .collect();
            (q, r.norms)
        } else {
            // RTN without calibration: straight from the weights.
            let tensors = src.tensors()?;
            let mut q = BTreeMap::new();
            for t in &tensors {
                let is_linear = Proj::ALL.iter().any(|p| t.name.ends_with(&format!(".{}.weight", p.gguf())));
                if is_linear && t.name.starts_with("blk.") && !skip.contains(&t.name) {
                    let w = src.read(t)?;
                    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                        return Err(Error::bad_tensor(
                            &t.name,
                            format!("value {} at index {i} is not finite", w[i]),
                        ));
                    }
                    q.insert(t.name.clone(), IntMatrix::rtn(grid, &w, t.rows(), t.row_len(), None));
                }
            }
            (q, BTreeMap::new())
        };
        for fmt in &int_formats {
            let dest = out.join(fmt.dir_name());
            progress.stage(fmt.dir_name(), 1);
            let rep = writers::write_int_checkpoint(*fmt, &src, &quantized, &floats, &info, &dest)?;
            progress.tick(1);
            outputs.push(OutputReport {
                format: fmt.dir_name().to_string(),
                path: dest.clone(),
                bytes: dir_bytes(&dest.join("model.safetensors")),
                detail: Some(rep),
                bits_per_weight: None,
            });
        }
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
            let target =
                match opts.method {
                    Method::Rtn => Target::Stats,
                    Method::Gptq => Target::Gguf {
                        types: plans
                            .iter()
                            .filter(|p| {
                                p.name.starts_with("blk.")
                                    && Proj::ALL
                                        .iter()
                                        .any(|q| p.name.ends_with(&format!(".{}.weight", q.gguf())))
                            })
                            .map(|p| (p.name.clone(), p.ty))
                            .collect::<BTreeMap<String, GgmlType>>(),
                    },
                    Method::Awq => return Err(Error::Unsupported(
                        "AWQ into GGUF (use gguf with --method gptq or rtn, or an integer format with awq)"
                            .into(),
                    )),
                };
            let label = format!(
                "gguf:{mix}{}",
                if opts.gptq.act_order && opts.method == Method::Gptq {
                    " (act-order, static blocks)"
                } else {
                    ""
                }
            );
            let (r, secs) = run_pass(target, &label)?;
            write_imatrix(&r)?;
            if opts.method != Method::Rtn {
                passes.push(pass_report(label, secs, &r));
            }
            // Recorded in the GGUF by name only (as written by --imatrix): the file stays independent
            // of the output folder's location.
            imatrix = Some(to_imatrix(&r, manifest, Path::new("imatrix.gguf")));
            for (k, q) in r.quantized {
                if let Quantized::Gguf { ty, bytes, .. } = q {
                    overrides.insert(k, TensorOverride::Encoded { ty, bytes });
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
            bits_per_weight: Some(rep.bits_per_weight),
        });
    }

    let report = QuantizeReport {
        model: model_path.to_path_buf(),
        out: out.to_path_buf(),
        method: opts.method,
        bits: opts.bits,
        group_size: opts.group,
        sym: opts.sym,
        gptq: opts.gptq,
        calibration: manifest.cloned(),
        calibration_seconds,
        passes,
        outputs,
        seconds: start.elapsed().as_secs_f64(),
    };
    let mut j = serde_json::to_vec_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    j.push(b'\n');
    let rp = out.join("report.json");
    let mut f = quantkit_core::AtomicFile::create(&rp)?;
    f.write_all(&j)?;
    f.commit()?;
    Ok(report)
}
