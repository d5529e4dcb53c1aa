//! `ppl` and `generate`: the engine from the command line.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use quantkit_core::{Error, Result};
use quantkit_engine::eval::{generate as run_generate, perplexity, PplMode, PplOptions};
use quantkit_engine::tokenizer::read_text;
use quantkit_engine::{Model, Tokenizer, WeightMode};
use quantkit_io::source::ModelSource;
use serde_json::json;

use crate::commands::{peak_rss_mb, Ctx};
use crate::progress::bar;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// llama-perplexity's method: chunks of --ctx, BOS first, the second half of each scored.
    Llama,
    /// Sliding windows of --ctx every --stride tokens (default: disjoint), every token scored once.
    Hf,
}

#[derive(Debug, Args)]
pub struct PplArgs {
    /// HF checkpoint folder or .gguf file.
    pub model: PathBuf,
    /// UTF-8 text to score (e.g. wikitext-2's wiki.test.raw).
    #[arg(long)]
    pub text: PathBuf,
    /// Context (tokens per chunk / window).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks/windows.
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long, value_enum, default_value = "llama")]
    pub mode: Mode,
    /// Window step for --mode hf (default: --ctx).
    #[arg(long)]
    pub stride: Option<usize>,
    #[command(flatten)]
    pub weights: WeightArgs,
}

/// How the model's weights are held.
#[derive(Debug, Args, Clone, Copy)]
pub struct WeightArgs {
    /// Dequantize every weight to f32 at load (the reference path) instead of running the
    /// quantized weights through the fused kernels.
    #[arg(long)]
    pub dequantize: bool,
    #[command(flatten)]
    pub rotation: crate::commands::RotateArgs,
}

impl WeightArgs {
    pub fn mode(self) -> WeightMode {
        if self.dequantize {
            WeightMode::Dequantized
        } else {
            WeightMode::Native
        }
    }
}

pub(crate) fn load(path: &std::path::Path, w: WeightArgs) -> Result<(Model, Tokenizer)> {
    let src = w.rotation.apply(ModelSource::open(path)?)?;
    let tok = Tokenizer::for_source(&src)?;
    let model = Model::load_with(&src, w.mode())?;
    Ok((model, tok))
}

pub fn ppl(ctx: &Ctx, a: &PplArgs) -> Result<()> {
    let text = read_text(&a.text)?;
    let (model, tok) = load(&a.model, a.weights)?;
    let mode = match a.mode {
        Mode::Llama => PplMode::Llama,
        Mode::Hf => PplMode::Hf,
    };
    let tokens = tok.encode(&text, tok.add_bos)?;
    let o = PplOptions {
        ctx: a.ctx,
        chunks: a.chunks,
        mode,
        stride: a.stride,
        bos: if tok.add_bos { tok.bos } else { None },
    };
    let pb = bar(ctx.progress, 0, "ppl", false);
    let r = perplexity(&model, &tokens, &o, &|done, total, running| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
        pb.set_message(format!("ppl {running:.3}"));
    })?;
    pb.finish_and_clear();
    if ctx.json {
        let mut j = serde_json::to_value(&r).map_err(|e| Error::Invalid(e.to_string()))?;
        j["model"] = json!(a.model);
        j["text"] = json!(a.text);
        j["text_tokens"] = json!(tokens.len());
        j["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!(
            "PPL = {:.4} +/- {:.5}  ({} mode, ctx {}, {} chunks, {} tokens scored, {:.1} s, {:.0} tokens/s, peak RSS {:.0} MB)",
            r.ppl,
            r.ppl_err,
            match r.mode {
                PplMode::Llama => "llama",
                PplMode::Hf => "hf",
            },
            r.ctx,
            r.chunks,
            r.tokens_scored,
            r.seconds,
            r.tokens_per_second,
            peak_rss_mb().unwrap_or(0.0)
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// HF checkpoint folder or .gguf file.
    pub model: PathBuf,
    /// The prompt.
    #[arg(long, short, default_value = "Once upon a time")]
    pub prompt: String,
    /// New tokens.
    #[arg(long, short, default_value_t = 64)]
    pub n: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Treat the prompt as a user message: render the model's chat template (from the GGUF's
    /// `tokenizer.chat_template` or tokenizer_config.json) with the assistant turn opened, and
    /// print only the answer.
    #[arg(long)]
    pub chat: bool,
    /// With --chat: a system message first (default: the template's own default, if any).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    #[command(flatten)]
    pub weights: WeightArgs,
}

/// Render `template` (HF's Jinja chat template) for `messages` (role, content) with the assistant
/// turn opened, as transformers' `apply_chat_template(..., add_generation_prompt=True)`.
pub fn render_chat(template: &str, messages: &[(&str, &str)], tok: &Tokenizer) -> Result<String> {
    use minijinja::{context, Environment, Error as JError, ErrorKind};
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JError> {
        Err(JError::new(ErrorKind::InvalidOperation, msg))
    });
    let bad = |e: JError| Error::Invalid(format!("chat template: {e:#}"));
    env.add_template("chat", template).map_err(bad)?;
    let msgs: Vec<serde_json::Value> =
        messages.iter().map(|(r, c)| json!({"role": r, "content": c})).collect();
    env.get_template("chat")
        .and_then(|t| {
            t.render(context! {
                messages => msgs,
                add_generation_prompt => true,
                bos_token => tok.bos_text.clone().unwrap_or_default(),
                eos_token => tok.eos_text.clone().unwrap_or_default(),
            })
        })
        .map_err(bad)
}

pub fn generate(ctx: &Ctx, a: &GenerateArgs) -> Result<()> {
    let (model, tok) = load(&a.model, a.weights)?;
    let rendered;
    let text_in = if a.chat {
        let template = tok.chat_template.as_deref().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the model has no chat template (tokenizer.chat_template)",
                a.model.display()
            ))
        })?;
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(("system", s.as_str()));
        }
        msgs.push(("user", a.prompt.as_str()));
        rendered = render_chat(template, &msgs, &tok)?;
        &rendered
    } else {
        &a.prompt
    };
    // A rendered template carries its own BOS where the model wants one.
    let prompt = tok.encode(text_in, tok.add_bos && !a.chat)?;
    let t = std::time::Instant::now();
    let out = run_generate(&model, &prompt, a.n, a.temperature, a.seed, tok.eos)?;
    let secs = t.elapsed().as_secs_f64();
    let text = tok.decode(&out)?;
    if ctx.json {
        let j = json!({ "prompt": text_in, "prompt_tokens": prompt, "tokens": out, "text": text,
                        "seconds": secs, "tokens_per_second": out.len() as f64 / secs.max(1e-9) });
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        if a.chat {
            println!("{text}");
        } else {
            println!("{}{}", a.prompt, text);
        }
        eprintln!("({} tokens, {:.1} tokens/s)", out.len(), out.len() as f64 / secs.max(1e-9));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct KldArgs {
    /// The model to compare (HF folder or .gguf). Optional with --save-base.
    pub model: Option<PathBuf>,
    /// The reference: a model (HF folder or .gguf), or a base file: ours (QKLOGIT1/QKLOGIT2, saved
    /// with --save-base) or llama.cpp's (llama-perplexity --kl-divergence-base), told apart by magic.
    #[arg(long)]
    pub base: PathBuf,
    /// UTF-8 text (needed when --base is a model).
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score only the first N chunks (of the text, or of the base file).
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save the base model's log-probabilities to reuse with --base FILE.
    #[arg(long)]
    pub save_base: Option<PathBuf>,
    /// Format of --save-base: quantkit (QKLOGIT2 top-K, or QKLOGIT1 with --top-k 0) or llama
    /// (llama-perplexity's --kl-divergence-base file, u16 per logit).
    #[arg(long, value_enum, default_value = "quantkit")]
    pub base_format: BaseFileFormat,
    /// Tokens kept per position in a quantkit base file (their log-probs, the next token's and the
    /// rest mass; KL from it is a lower bound of the exact KL). 0 = every logit as u16 (QKLOGIT1).
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,
    /// Tokens sampled per position from the base's distribution outside its top K (systematic
    /// sampling): KL becomes an unbiased estimate instead of the merged-rest lower bound. 0 = none.
    #[arg(long, default_value_t = 64)]
    pub tail_samples: usize,
    /// Storage of the top-K and tail log-probabilities.
    #[arg(long, value_enum, default_value = "f16")]
    pub logprob_type: LogProbArg,
    /// Measure what top-K bases would give (comma-separated K; f32 and f16 each) against the exact
    /// in-process KLD, in one pass (needs a base model and a model; see docs/evaluation.md).
    #[arg(long, value_delimiter = ',')]
    pub measure_top_k: Vec<usize>,
    /// With --measure-top-k: the tail-sample counts to measure (f16) besides none (f32 and f16).
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub measure_tail: Vec<usize>,
    #[command(flatten)]
    pub weights: WeightArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BaseFileFormat {
    Quantkit,
    Llama,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogProbArg {
    F32,
    F16,
}

impl KldArgs {
    fn base_format(&self) -> quantkit_engine::eval::BaseFormat {
        use quantkit_engine::eval::{BaseFormat, LogProbType};
        match (self.base_format, self.top_k) {
            (BaseFileFormat::Llama, _) => BaseFormat::Llama,
            (BaseFileFormat::Quantkit, 0) => BaseFormat::Full,
            (BaseFileFormat::Quantkit, k) => BaseFormat::TopK {
                k,
                tail: self.tail_samples,
                dtype: match self.logprob_type {
                    LogProbArg::F32 => LogProbType::F32,
                    LogProbArg::F16 => LogProbType::F16,
                },
            },
        }
    }
}

/// `--measure-top-k`: the exact KLD and, per K and log-prob type, what a top-K base gives.
fn measure_top_k(
    ctx: &Ctx,
    a: &KldArgs,
    base: &Model,
    model: &Model,
    tokens: &[u32],
    o: &quantkit_engine::eval::PplOptions,
) -> Result<()> {
    use quantkit_engine::eval::{kld_models_vs_saved, BaseFormat, LogProbType};
    let mut formats = vec![];
    for &k in &a.measure_top_k {
        if k == 0 {
            return Err(Error::Invalid("--measure-top-k: K must be at least 1".into()));
        }
        let k = k.min(base.vocab_size());
        for dtype in [LogProbType::F32, LogProbType::F16] {
            formats.push(BaseFormat::TopK { k, tail: 0, dtype });
        }
        if k < base.vocab_size() {
            for &tail in a.measure_tail.iter().filter(|&&t| t > 0) {
                formats.push(BaseFormat::TopK { k, tail, dtype: LogProbType::F16 });
            }
        }
    }
    formats.push(BaseFormat::Full);
    formats.push(BaseFormat::Llama);
    let pb = bar(ctx.progress, 0, "kld", false);
    let (exact, saved) = kld_models_vs_saved(base, model, tokens, o, &formats, &|d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    let vocab = base.vocab_size();
    let rows: Vec<serde_json::Value> = formats
        .iter()
        .zip(&saved)
        .map(|(f, r)| {
            let (name, k, tail, dtype) = match f {
                BaseFormat::TopK { k, tail, dtype } => {
                    ("topk", *k, *tail, format!("{dtype:?}").to_lowercase())
                }
                BaseFormat::Full => ("qklogit1", 0, 0, "u16".into()),
                BaseFormat::Llama => ("llama", 0, 0, "u16".into()),
            };
            json!({
                "format": name, "k": k, "tail": tail, "dtype": dtype,
                "bytes_per_position": f.bytes_per_position(vocab),
                "mean_kld": r.mean_kld,
                "abs_err": r.mean_kld - exact.mean_kld,
                "rel_err": (r.mean_kld - exact.mean_kld) / exact.mean_kld.max(f64::MIN_POSITIVE),
                "max_kld": r.max_kld,
                "same_top_p": r.same_top_p,
                "ppl_base": r.ppl_base,
            })
        })
        .collect();
    if ctx.json {
        let j = json!({ "model": a.model, "base": a.base, "exact": exact, "saved": rows });
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!(
            "exact: mean KLD {:.6} ± {:.6}, same top {:.3} %, {} positions, vocabulary {vocab}",
            exact.mean_kld,
            exact.kld_err,
            100.0 * exact.same_top_p,
            exact.tokens_scored
        );
        println!("| format | K | tail | log-probs | bytes/position | mean KLD | abs. error | rel. error | same top % |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.6} | {:+.2e} | {:+.3} % | {:.3} |",
                r["format"].as_str().unwrap_or_default(),
                r["k"],
                r["tail"],
                r["dtype"].as_str().unwrap_or_default(),
                r["bytes_per_position"],
                r["mean_kld"].as_f64().unwrap_or(0.0),
                r["abs_err"].as_f64().unwrap_or(0.0),
                100.0 * r["rel_err"].as_f64().unwrap_or(0.0),
                100.0 * r["same_top_p"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

fn is_base_logits(p: &std::path::Path) -> bool {
    let mut m = [0u8; 8];
    p.is_file()
        && std::fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut m)).is_ok()
        && quantkit_engine::eval::BaseLogits::is_base_magic(&m)
}

pub fn kld(ctx: &Ctx, a: &KldArgs) -> Result<()> {
    use quantkit_engine::eval::{base_logits, kld as run_kld, kld_models, BaseFormat, BaseLogits};
    let progress = |pb: &indicatif::ProgressBar, d: usize, t: usize| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    };
    let r = if is_base_logits(&a.base) {
        if a.save_base.is_some() {
            return Err(Error::Invalid(format!(
                "--save-base needs a base model; {} is already a base-logits file",
                a.base.display()
            )));
        }
        let mut base = BaseLogits::read(&a.base)?;
        if let Some(n) = a.chunks {
            base.truncate_chunks(n.max(1));
        }
        let model_path = a.model.as_ref().ok_or_else(|| Error::Invalid("give a model to compare".into()))?;
        let (model, tok) = load(model_path, a.weights)?;
        if base.format() == BaseFormat::Llama {
            // llama.cpp's file holds the text's tokens; like llama-perplexity, put the model's BOS
            // first in each chunk when it adds one.
            base.bos = if tok.add_bos { tok.bos } else { None };
        }
        let pb = bar(ctx.progress, 0, "kld", false);
        let r = run_kld(&model, &base, &|d, t| progress(&pb, d, t))?;
        pb.finish_and_clear();
        r
    } else {
        let text_path = a
            .text
            .as_ref()
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "--text is required when --base is a model ({} is not a base-logits file saved with --save-base)",
                    a.base.display()
                ))
            })?;
        let text = read_text(text_path)?;
        let (bm, bt) = load(&a.base, a.weights)?;
        let tokens = bt.encode(&text, bt.add_bos)?;
        let o = crate::jobs::llama_chunks(a.ctx, a.chunks, &bt);
        if let Some(p) = &a.save_base {
            let pb = bar(ctx.progress, 0, "base", false);
            let format = a.base_format();
            base_logits(&bm, &tokens, &o, format, &|d, t| progress(&pb, d, t))?.write(p)?;
            pb.finish_and_clear();
            if !ctx.json {
                eprintln!(
                    "saved base log-probabilities to {} ({}, {} bytes per position)",
                    p.display(),
                    match format {
                        BaseFormat::Full => "QKLOGIT1, u16 per logit".to_string(),
                        BaseFormat::TopK { k, tail, dtype } => {
                            format!("QKLOGIT2, top {k} + {tail} tail samples, {dtype:?}")
                        }
                        BaseFormat::Llama => "llama.cpp --kl-divergence-base".to_string(),
                    },
                    format.bytes_per_position(bm.vocab_size())
                );
            }
        }
        let Some(model_path) = &a.model else {
            if a.save_base.is_none() {
                return Err(Error::Invalid("give a model to compare, or --save-base".into()));
            }
            return Ok(());
        };
        let (model, _) = load(model_path, a.weights)?;
        if !a.measure_top_k.is_empty() {
            return measure_top_k(ctx, a, &bm, &model, &tokens, &o);
        }
        let pb = bar(ctx.progress, 0, "kld", false);
        let r = kld_models(&bm, &model, &tokens, &o, &|d, t| progress(&pb, d, t))?;
        pb.finish_and_clear();
        r
    };
    if ctx.json {
        let mut j = serde_json::to_value(&r).map_err(|e| Error::Invalid(e.to_string()))?;
        j["model"] = json!(a.model);
        j["base"] = json!(a.base);
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!("chunks {}, tokens scored {}", r.chunks, r.tokens_scored);
        println!("PPL base {:.4}, model {:.4} (ratio {:.4})", r.ppl_base, r.ppl, r.ppl / r.ppl_base);
        println!(
            "Mean KLD {:.6} ± {:.6}, median {:.6}, max {:.6}",
            r.mean_kld, r.kld_err, r.median_kld, r.max_kld
        );
        println!("Same top p: {:.3} %", 100.0 * r.same_top_p);
        println!("RMS Δp: {:.3} %", 100.0 * r.rms_delta_p);
        for (q, v) in &r.delta_p_percentiles {
            println!("  Δp {q:>4.0}%: {:>8.3} %", 100.0 * v);
        }
    }
    Ok(())
}
