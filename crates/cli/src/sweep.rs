//! `quantkit sweep`: many recipes on one model → one table and two plots of accuracy vs bits.
//!
//! The base model's log-probabilities are computed once; calibration samples are drawn once (and
//! the fp model's imatrix collected once, for the GGUF mixes); every recipe is quantized into
//! `DIR/models/` and scored against the base (PPL, KLD, same top token).

use std::path::{Path, PathBuf};

use clap::Args;
use quantkit_core::{Error, Result};
use quantkit_io::source::ModelSource;
use quantkit_quant::gptq::GptqConfig;
use quantkit_quant::quantize::{imatrix_pass, prepare_calibration, CalibOptions};
use serde::Serialize;

use crate::commands::Ctx;
use crate::jobs::{compute_base, quantize_recipe, score, write_atomic, EvalSettings, RecipeSpec, Shared};
use crate::plot;
use crate::progress::StageBars;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// HF checkpoint folder or GGUF file (the unquantized reference).
    pub model: PathBuf,
    /// Comma-separated recipes: mixes (q8_0, q4_k_m, …), gptq:<mix>, rtn|gptq|awq|mse:<bits>:<group>[:sym|asym],
    /// or recipe .toml files.
    #[arg(long, value_delimiter = ',', required = true)]
    pub recipes: Vec<String>,
    /// Evaluation text (e.g. wiki.test.raw).
    #[arg(long)]
    pub text: PathBuf,
    /// Calibration text (GPTQ/AWQ recipes need it; GGUF mixes then get an imatrix from it).
    /// Never the evaluation text.
    #[arg(long)]
    pub calib: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    #[arg(long, default_value_t = 512)]
    pub seqlen: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// GPTQ damping (fraction of the mean Hessian diagonal).
    #[arg(long, default_value_t = GptqConfig::default().damp)]
    pub damp: f64,
    /// Evaluation context (llama-perplexity chunks).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Output folder: results.{csv,json,md}, plot.{svg,png}, models/.
    #[arg(long, short)]
    pub output: PathBuf,
}

/// One row of the results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub recipe: String,
    pub format: String,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub ppl: f64,
    pub ppl_err: f64,
    pub kld: f64,
    pub kld_err: f64,
    pub same_top_p: f64,
    pub quantize_seconds: f64,
    pub eval_seconds: f64,
    pub pareto_ppl: bool,
    pub pareto_kld: bool,
}

#[derive(Debug, Serialize)]
struct Results {
    model: PathBuf,
    text: PathBuf,
    ctx: usize,
    chunks: usize,
    tokens_scored: usize,
    base_ppl: f64,
    base_ppl_err: f64,
    calibration: Option<quantkit_calibration::Manifest>,
    rows: Vec<Row>,
}

pub fn sweep(ctx: &Ctx, a: &SweepArgs) -> Result<()> {
    let cwd = PathBuf::from(".");
    let recipes = a.recipes.iter().map(|r| RecipeSpec::parse(r, &cwd)).collect::<Result<Vec<_>>>()?;
    let mut slugs = std::collections::BTreeSet::new();
    for r in &recipes {
        if !slugs.insert(r.slug()) {
            return Err(Error::Invalid(format!("recipe {:?} is listed twice", r.text)));
        }
    }
    if recipes.iter().any(|r| r.needs_calibration()) && a.calib.is_none() {
        return Err(Error::Invalid("gptq/awq recipes need --calib FILE (never the evaluation text)".into()));
    }
    let src = ModelSource::open(&a.model)?;
    let bars = StageBars::new(ctx.progress);
    let say = |s: String| {
        if !ctx.json {
            bars.clear();
            eprintln!("{s}");
        }
    };
    std::fs::create_dir_all(&a.output).map_err(|e| Error::io(&a.output, e))?;

    let eval = EvalSettings { text: a.text.clone(), ctx: a.ctx, chunks: a.chunks };
    let t = std::time::Instant::now();
    let base = compute_base(&a.model, &eval, &bars)?;
    // Saved so any row can be re-scored by hand: `quantkit kld FILE --base DIR/base.logits`.
    base.write(&a.output.join("base.logits"))?;
    say(format!(
        "base log-probabilities: {} chunks of {} in {:.1} s",
        base.tokens.len() / base.ctx,
        base.ctx,
        t.elapsed().as_secs_f64()
    ));

    let prepared = match &a.calib {
        Some(c) => Some(prepare_calibration(
            &src,
            &CalibOptions { corpus: Some(c.clone()), samples: a.samples, seqlen: a.seqlen, seed: a.seed },
            &bars,
        )?),
        None => None,
    };
    let imatrix = match &prepared {
        Some(p) if recipes.iter().any(|r| r.is_gguf() && !r.needs_calibration()) => {
            let t = std::time::Instant::now();
            let im = imatrix_pass(&src, p, Path::new("imatrix.gguf"), &bars)?;
            im.write_gguf(&a.output.join("imatrix.gguf"))?;
            say(format!(
                "imatrix from {} × {} calibration tokens in {:.1} s",
                p.samples.count(),
                p.samples.seqlen,
                t.elapsed().as_secs_f64()
            ));
            Some(im)
        }
        _ => None,
    };
    let shared = Shared {
        prepared: prepared.as_ref(),
        imatrix: imatrix.as_ref(),
        gptq: GptqConfig { damp: a.damp, act_order: true, ..GptqConfig::default() },
        rotated_imatrices: Default::default(),
    };

    let models = a.output.join("models");
    let mut rows = vec![];
    let mut base_report = None;
    for (i, r) in recipes.iter().enumerate() {
        bars.prefix(format!("[{}/{}] {} ", i + 1, recipes.len(), r.text));
        let dest = models.join(if r.is_gguf() { format!("{}.gguf", r.slug()) } else { r.slug() });
        let q = quantize_recipe(&a.model, &src, r, &dest, &shared, &bars)
            .map_err(|e| Error::Invalid(format!("recipe {}: {e}", r.text)))?;
        let (k, secs) =
            score(&q.path, &base, &bars).map_err(|e| Error::Invalid(format!("recipe {}: {e}", r.text)))?;
        say(format!(
            "[{}/{}] {:<14} {:>6.3} bpw  PPL {:>9.4} ± {:.4}  KLD {:.6}  same top {:.2} %  ({:.1} s + {:.1} s)",
            i + 1,
            recipes.len(),
            r.text,
            q.bits_per_weight,
            k.ppl,
            k.ppl_err,
            k.mean_kld,
            100.0 * k.same_top_p,
            q.seconds,
            secs
        ));
        rows.push(Row {
            recipe: r.text.clone(),
            format: r.format(),
            path: q.path.clone(),
            file_bytes: q.bytes,
            bits_per_weight: q.bits_per_weight,
            ppl: k.ppl,
            ppl_err: k.ppl_err,
            kld: k.mean_kld,
            kld_err: k.kld_err,
            same_top_p: k.same_top_p,
            quantize_seconds: q.seconds,
            eval_seconds: secs,
            pareto_ppl: false,
            pareto_kld: false,
        });
        base_report = Some(k);
    }
    bars.prefix(String::new());
    bars.clear();
    let front_ppl = plot::pareto_front(&rows.iter().map(|r| (r.bits_per_weight, r.ppl)).collect::<Vec<_>>());
    let front_kld = plot::pareto_front(&rows.iter().map(|r| (r.bits_per_weight, r.kld)).collect::<Vec<_>>());
    for (r, (p, k)) in rows.iter_mut().zip(front_ppl.into_iter().zip(front_kld)) {
        r.pareto_ppl = p;
        r.pareto_kld = k;
    }
    let k0 = base_report.ok_or_else(|| Error::Invalid("no recipe".into()))?;
    let results = Results {
        model: a.model.clone(),
        text: a.text.clone(),
        ctx: a.ctx,
        chunks: k0.chunks,
        tokens_scored: k0.tokens_scored,
        base_ppl: k0.ppl_base,
        base_ppl_err: k0.ppl_base_err,
        calibration: prepared.as_ref().map(|p| p.manifest.clone()),
        rows,
    };
    write_results(&a.output, &results)?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&results).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        print!("{}", markdown(&results));
        println!("\nwrote {}/results.{{csv,json,md}} and plot.{{svg,png}}", a.output.display());
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn markdown(r: &Results) -> String {
    let mut s = format!(
        "PPL and KLD against {} on {} ({} chunks of {}, {} tokens scored); base PPL {:.4} ± {:.4}\n\n",
        r.model.display(),
        r.text.display(),
        r.chunks,
        r.ctx,
        r.tokens_scored,
        r.base_ppl,
        r.base_ppl_err
    );
    s += "| recipe | format | bytes | bpw | PPL | KLD | same top | quantize s | eval s | front |\n";
    s += "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for x in &r.rows {
        let front = match (x.pareto_ppl, x.pareto_kld) {
            (true, true) => "PPL, KLD",
            (true, false) => "PPL",
            (false, true) => "KLD",
            _ => "",
        };
        s += &format!(
            "| {} | {} | {} | {:.3} | {:.4} ± {:.4} | {:.6} ± {:.6} | {:.2} % | {:.1} | {:.1} | {} |\n",
            x.recipe,
            x.format,
            x.file_bytes,
            x.bits_per_weight,
            x.ppl,
            x.ppl_err,
            x.kld,
            x.kld_err,
            100.0 * x.same_top_p,
            x.quantize_seconds,
            x.eval_seconds,
            front
        );
    }
    s
}

fn write_results(dir: &Path, r: &Results) -> Result<()> {
    let mut csv = String::from(
        "recipe,format,file_bytes,bits_per_weight,ppl,ppl_err,kld,kld_err,same_top_p,quantize_seconds,eval_seconds,pareto_ppl,pareto_kld\n",
    );
    for x in &r.rows {
        csv += &format!(
            "{},{},{},{:.6},{:.6},{:.6},{:.8},{:.8},{:.6},{:.3},{:.3},{},{}\n",
            csv_field(&x.recipe),
            csv_field(&x.format),
            x.file_bytes,
            x.bits_per_weight,
            x.ppl,
            x.ppl_err,
            x.kld,
            x.kld_err,
            x.same_top_p,
            x.quantize_seconds,
            x.eval_seconds,
            x.pareto_ppl,
            x.pareto_kld
        );
    }
    write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    let mut j = serde_json::to_vec_pretty(r).map_err(|e| Error::Invalid(e.to_string()))?;
    j.push(b'\n');
    write_atomic(&dir.join("results.json"), &j)?;
    write_atomic(&dir.join("results.md"), markdown(r).as_bytes())?;
    let points: Vec<plot::Point> = r
        .rows
        .iter()
        .map(|x| plot::Point {
            label: x.recipe.clone(),
            bpw: x.bits_per_weight,
            ppl: x.ppl,
            ppl_err: x.ppl_err,
            kld: x.kld,
        })
        .collect();
    let name = r.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let title = format!(
        "{name}: PPL and KLD vs bits per weight ({} tokens of {})",
        r.tokens_scored,
        r.text.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
    );
    let plot_err = |e: plot::PlotError| Error::Invalid(e.to_string());
    let svg = plot::svg(&points, &title, Some(r.base_ppl)).map_err(plot_err)?;
    write_atomic(&dir.join("plot.svg"), svg.as_bytes())?;
    write_atomic(&dir.join("plot.png"), &plot::png(&points, &title, Some(r.base_ppl)).map_err(plot_err)?)
}
