//! `quantkit batch jobs.toml`: unattended quantization jobs with quality gates, a manifest per
//! finished job, resume after a crash, and shards for CI matrices.
//!
//! A job is done when its manifest (`OUT/manifests/<job>.json`) exists with the job's identity
//! (a hash of the input model's bytes, recipe, evaluation and calibration settings, tool version)
//! and the output it names still has the recorded sha256. Outputs and manifests are written beside
//! and renamed, so a kill leaves either nothing or a whole file; a restarted run redoes only the
//! jobs without a valid manifest. The report (`report.json` / `.md`) holds only what does not
//! depend on the run (no times), so shards merged with `batch merge` give the same report as one
//! run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use quantkit_core::{Error, Result};
use quantkit_engine::eval::BaseLogits;
use quantkit_io::imatrix::Imatrix;
use quantkit_io::source::ModelSource;
use quantkit_quant::gptq::GptqConfig;
use quantkit_quant::quantize::{imatrix_pass, prepare_calibration, Prepared};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

mod jobfile;

use jobfile::{load_jobs, parse_shard, Gates, Job, Metrics};

use crate::commands::Ctx;
use crate::jobs::{
    compute_base, hex, quantize_recipe, score, sha256_model, sha256_path, write_atomic, Shared,
};
use crate::progress::StageBars;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub cmd: Option<BatchCmd>,
    /// The job file (TOML).
    pub jobs: Option<PathBuf>,
    /// Run the I-th of N disjoint slices of the jobs (1-based: 1/3, 2/3, 3/3).
    #[arg(long)]
    pub shard: Option<String>,
    /// Output folder (default: the job file's `out`, else `<jobs>-out` beside it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Redo every job even when its manifest says it is done.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum BatchCmd {
    /// Join the manifests of several output folders (shards) into one report.
    Merge {
        /// Output folders of the shards.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// The merged report (JSON; a Markdown copy is written beside it).
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// What a finished (or failed) job leaves in `OUT/manifests/<job>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    job: String,
    index: usize,
    /// sha256 of the job's identity (below).
    key: String,
    identity: Value,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    model: String,
    recipe: String,
    format: String,
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    bytes: u64,
    bits_per_weight: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<Metrics>,
    gates: Gates,
    tool_version: String,
    quantize_seconds: f64,
    eval_seconds: f64,
}

/// Per-process caches: hashes, base logits, calibration samples, imatrices.
#[derive(Default)]
struct Memo {
    sha: BTreeMap<PathBuf, String>,
    base: BTreeMap<String, BaseLogits>,
    prepared: BTreeMap<String, Prepared>,
    imatrix: BTreeMap<String, Imatrix>,
}

impl Memo {
    fn sha_model(&mut self, p: &Path) -> Result<String> {
        if let Some(s) = self.sha.get(p) {
            return Ok(s.clone());
        }
        let s = sha256_model(p)?;
        self.sha.insert(p.to_path_buf(), s.clone());
        Ok(s)
    }
    fn sha_file(&mut self, p: &Path) -> Result<String> {
        if let Some(s) = self.sha.get(p) {
            return Ok(s.clone());
        }
        let s = sha256_path(p)?;
        self.sha.insert(p.to_path_buf(), s.clone());
        Ok(s)
    }
}

fn identity(job: &Job, memo: &mut Memo) -> Result<Value> {
    let model_sha = memo
        .sha_model(&job.model)
        .map_err(|e| Error::Invalid(format!("model {}: {e}", job.model.display())))?;
    let text_sha = memo.sha_file(&job.eval.text)?;
    let calib = match &job.calib {
        Some(c) => {
            let corpus = c.corpus.as_ref().ok_or_else(|| Error::Invalid("calibration corpus".into()))?;
            json!({ "sha256": memo.sha_file(corpus)?, "samples": c.samples, "seqlen": c.seqlen, "seed": c.seed })
        }
        None => Value::Null,
    };
    Ok(json!({
        "tool_version": env!("CARGO_PKG_VERSION"),
        "model_sha256": model_sha,
        "recipe": job.recipe.text,
        "recipe_file": job.recipe.file_text,
        "output": job.output,
        "eval": { "text_sha256": text_sha, "ctx": job.eval.ctx, "chunks": job.eval.chunks },
        "calibration": calib,
        "damp": if job.recipe.needs_calibration() { json!(job.damp) } else { Value::Null },
    }))
}

fn write_json(p: &Path, v: &impl Serialize) -> Result<()> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    b.push(b'\n');
    write_atomic(p, &b)
}

fn read_manifest(p: &Path) -> Option<Manifest> {
    let b = std::fs::read(p).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Run one job (its manifest is written by the caller).
fn run_job(
    job: &Job,
    out: &Path,
    memo: &mut Memo,
    bars: &StageBars,
    key: &str,
    ident: &Value,
) -> Result<Manifest> {
    let src = ModelSource::open(&job.model)?;
    let model_sha = ident["model_sha256"].as_str().unwrap_or_default().to_string();
    // Base log-probabilities: cached on disk by (model, text, ctx, chunks).
    let base_key = {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&json!([model_sha, ident["eval"]])).unwrap_or_default());
        hex(&h.finalize())[..16].to_string()
    };
    if !memo.base.contains_key(&base_key) {
        let cache = out.join(".cache").join(format!("base-{base_key}.logits"));
        let base = match BaseLogits::read(&cache) {
            Ok(b) => b,
            Err(_) => {
                let b = compute_base(&job.model, &job.eval, bars)?;
                std::fs::create_dir_all(out.join(".cache")).map_err(|e| Error::io(out, e))?;
                b.write(&cache)?;
                b
            }
        };
        memo.base.insert(base_key.clone(), base);
    }
    let calib_key = format!("{model_sha}:{}", ident["calibration"]);
    if let Some(c) = &job.calib {
        if !memo.prepared.contains_key(&calib_key) {
            let p = prepare_calibration(&src, c, bars)?;
            memo.prepared.insert(calib_key.clone(), p);
        }
        if job.recipe.is_gguf() && !job.recipe.needs_calibration() && !memo.imatrix.contains_key(&calib_key) {
            let im = imatrix_pass(&src, &memo.prepared[&calib_key], Path::new("imatrix.gguf"), bars)?;
            memo.imatrix.insert(calib_key.clone(), im);
        }
    }
    let shared = Shared {
        prepared: memo.prepared.get(&calib_key),
        imatrix: if job.recipe.is_gguf() { memo.imatrix.get(&calib_key) } else { None },
        gptq: GptqConfig { damp: job.damp, act_order: true, ..GptqConfig::default() },
        rotated_imatrices: Default::default(),
    };
    let dest = out.join(&job.output);
    let q = quantize_recipe(&job.model, &src, &job.recipe, &dest, &shared, bars)?;
    let (k, eval_seconds) = score(&dest, &memo.base[&base_key], bars)?;
    Ok(Manifest {
        job: job.name.clone(),
        index: job.index,
        key: key.to_string(),
        identity: ident.clone(),
        status: "ok".into(),
        error: None,
        model: job.model_text.clone(),
        recipe: job.recipe.text.clone(),
        format: job.recipe.format(),
        output: job.output.clone(),
        sha256: Some(sha256_path(&dest)?),
        bytes: q.bytes,
        bits_per_weight: q.bits_per_weight,
        metrics: Some(Metrics {
            ppl: k.ppl,
            ppl_err: k.ppl_err,
            ppl_base: k.ppl_base,
            ppl_ratio: k.ppl / k.ppl_base,
            kld: k.mean_kld,
            kld_err: k.kld_err,
            same_top_p: k.same_top_p,
            tokens_scored: k.tokens_scored,
        }),
        gates: job.gates.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        quantize_seconds: q.seconds,
        eval_seconds,
    })
}

pub fn batch(ctx: &Ctx, a: &BatchArgs) -> Result<()> {
    if let Some(BatchCmd::Merge { dirs, output }) = &a.cmd {
        let mut all: BTreeMap<String, Manifest> = BTreeMap::new();
        for d in dirs {
            let md = d.join("manifests");
            if !md.is_dir() {
                return Err(Error::Invalid(format!(
                    "{}: no manifests/ folder (not a batch output folder)",
                    d.display()
                )));
            }
            for m in manifests_in(&md)? {
                if let Some(prev) = all.get(&m.job) {
                    if prev.key != m.key || prev.sha256 != m.sha256 {
                        return Err(Error::Invalid(format!(
                            "job {} appears in two folders with different results ({})",
                            m.job,
                            d.display()
                        )));
                    }
                }
                all.insert(m.job.clone(), m);
            }
        }
        let ms: Vec<Manifest> = all.into_values().collect();
        return finish(ctx, &ms, output);
    }
    let jobs_path =
        a.jobs.as_ref().ok_or_else(|| Error::Invalid("give a job file: quantkit batch jobs.toml".into()))?;
    let (jobs, file_out) = load_jobs(jobs_path)?;
    let out = match (&a.out, file_out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => o,
        (None, None) => {
            let stem = jobs_path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_else(|| "jobs".into());
            jobs_path.with_file_name(format!("{stem}-out"))
        }
    };
    let (shard_i, shard_n) = match &a.shard {
        Some(s) => parse_shard(s)?,
        None => (1, 1),
    };
    let mine: Vec<&Job> = jobs.iter().filter(|j| j.index % shard_n == shard_i - 1).collect();
    let mdir = out.join("manifests");
    std::fs::create_dir_all(&mdir).map_err(|e| Error::io(&mdir, e))?;
    let stale = quantkit_core::remove_stale(&out)?;
    if stale > 0 && !ctx.json {
        eprintln!("removed {stale} unfinished file(s) left by an interrupted run");
    }
    let bars = StageBars::new(ctx.progress);
    let mut memo = Memo::default();
    let mut manifests = vec![];
    let total = mine.len();
    let line = |s: String| {
        bars.clear();
        if !ctx.json {
            eprintln!("{s}");
        }
    };
    for (n, job) in mine.iter().enumerate() {
        let tag = format!("[{}/{total}] {}", n + 1, job.name);
        bars.prefix(format!("{tag} "));
        let mpath = mdir.join(format!("{}.json", job.name));
        let ident = match identity(job, &mut memo) {
            Ok(i) => i,
            Err(e) => {
                line(format!("{tag}  ERROR {e}"));
                let m = error_manifest(job, "", Value::Null, &e);
                write_json(&mpath, &m)?;
                manifests.push(m);
                continue;
            }
        };
        let key = hex(&Sha256::digest(serde_json::to_vec(&ident).unwrap_or_default()));
        if !a.force {
            if let Some(mut m) = read_manifest(&mpath) {
                let dest = out.join(&job.output);
                if m.status == "ok"
                    && m.key == key
                    && m.sha256.as_deref() == sha256_path(&dest).ok().as_deref()
                {
                    if m.gates != job.gates || m.index != job.index {
                        m.gates = job.gates.clone();
                        m.index = job.index;
                        write_json(&mpath, &m)?;
                    }
                    line(format!("{tag}  skipped (done: {})", job.output));
                    manifests.push(m);
                    continue;
                }
            }
        }
        match run_job(job, &out, &mut memo, &bars, &key, &ident) {
            Ok(m) => {
                let met = m.metrics.as_ref().map(|k| {
                    format!(
                        "{:.3} bpw  PPL {:.4} (×{:.4})  KLD {:.6}  same top {:.2} %",
                        m.bits_per_weight,
                        k.ppl,
                        k.ppl_ratio,
                        k.kld,
                        100.0 * k.same_top_p
                    )
                });
                let fails =
                    m.metrics.as_ref().map(|k| job.gates.check(k, m.bits_per_weight)).unwrap_or_default();
                let verdict = if fails.is_empty() {
                    "ok".to_string()
                } else {
                    format!("GATE FAILED: {}", fails.join("; "))
                };
                line(format!(
                    "{tag}  {}  {}  {:.1} s + {:.1} s  {verdict}",
                    job.output,
                    met.unwrap_or_default(),
                    m.quantize_seconds,
                    m.eval_seconds
                ));
                write_json(&mpath, &m)?;
                manifests.push(m);
            }
            Err(e) => {
                line(format!("{tag}  ERROR {e}"));
                let m = error_manifest(job, &key, ident, &e);
                write_json(&mpath, &m)?;
                manifests.push(m);
            }
        }
    }
    bars.prefix(String::new());
    bars.clear();
    let report = if shard_n == 1 {
        out.join("report.json")
    } else {
        out.join(format!("report-shard-{shard_i}-of-{shard_n}.json"))
    };
    finish(ctx, &manifests, &report)
}

fn error_manifest(job: &Job, key: &str, ident: Value, e: &Error) -> Manifest {
    Manifest {
        job: job.name.clone(),
        index: job.index,
        key: key.to_string(),
        identity: ident,
        status: "error".into(),
        error: Some(e.to_string()),
        model: job.model_text.clone(),
        recipe: job.recipe.text.clone(),
        format: job.recipe.format(),
        output: job.output.clone(),
        sha256: None,
        bytes: 0,
        bits_per_weight: 0.0,
        metrics: None,
        gates: job.gates.clone(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        quantize_seconds: 0.0,
        eval_seconds: 0.0,
    }
}

fn manifests_in(dir: &Path) -> Result<Vec<Manifest>> {
    let mut out = vec![];
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    for p in names {
        let b = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let m: Manifest = serde_json::from_slice(&b)
            .map_err(|e| Error::Invalid(format!("{}: not a batch manifest: {e}", p.display())))?;
        out.push(m);
    }
    Ok(out)
}

/// Write the report (deterministic: no times) and turn failures into the exit status.
fn finish(ctx: &Ctx, manifests: &[Manifest], path: &Path) -> Result<()> {
    let mut ms: Vec<&Manifest> = manifests.iter().collect();
    ms.sort_by_key(|m| (m.index, m.job.clone()));
    let mut rows = vec![];
    let mut md = String::from(
        "| job | status | recipe | output | bpw | PPL | ×base | KLD | same top |\n|---|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut failures = vec![];
    let (mut ok, mut gate_failed, mut errors) = (0, 0, 0);
    for m in &ms {
        let fails = match (&m.status[..], &m.metrics) {
            ("ok", Some(k)) => m.gates.check(k, m.bits_per_weight),
            _ => vec![],
        };
        let status = if m.status != "ok" {
            errors += 1;
            failures.push(format!("job {}: error: {}", m.job, m.error.clone().unwrap_or_default()));
            "error"
        } else if !fails.is_empty() {
            gate_failed += 1;
            for f in &fails {
                failures.push(format!("job {}: gate failed: {f}", m.job));
            }
            "gate-failed"
        } else {
            ok += 1;
            "ok"
        };
        rows.push(json!({
            "job": m.job, "index": m.index, "status": status, "model": m.model, "recipe": m.recipe,
            "format": m.format, "output": m.output, "sha256": m.sha256, "bytes": m.bytes,
            "bits_per_weight": m.bits_per_weight, "metrics": m.metrics, "gates": m.gates,
            "failed_gates": fails, "error": m.error,
        }));
        let k = m.metrics.as_ref();
        md += &format!(
            "| {} | {} | {} | {} | {:.3} | {} | {} | {} | {} |\n",
            m.job,
            status.replace('-', " "),
            m.recipe,
            m.output,
            m.bits_per_weight,
            k.map(|k| format!("{:.4}", k.ppl)).unwrap_or_default(),
            k.map(|k| format!("{:.4}", k.ppl_ratio)).unwrap_or_default(),
            k.map(|k| format!("{:.6}", k.kld)).unwrap_or_default(),
            k.map(|k| format!("{:.2} %", 100.0 * k.same_top_p)).unwrap_or_default(),
        );
    }
    let report = json!({
        "tool_version": env!("CARGO_PKG_VERSION"),
        "summary": { "jobs": ms.len(), "ok": ok, "gate_failed": gate_failed, "errors": errors },
        "jobs": rows,
    });
    if let Some(p) = path.parent() {
        if !p.as_os_str().is_empty() {
            std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
    }
    write_json(path, &report)?;
    write_atomic(&path.with_extension("md"), md.as_bytes())?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        eprintln!(
            "{} jobs: {ok} ok, {gate_failed} failed a gate, {errors} errors; report {}",
            ms.len(),
            path.display()
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("{f}");
        }
        Err(Error::Invalid(format!(
            "{} of {} jobs failed ({gate_failed} gates, {errors} errors)",
            gate_failed + errors,
            ms.len()
        )))
    }
}
