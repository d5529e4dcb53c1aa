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
    let src = ModelSource::open(path)?;
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
            Error::Invalid(format!("{}: the model has no chat template (tokenizer.chat_template)", a.model.display()))
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
    /// The reference: a model (HF folder or .gguf), or base logits saved with --save-base.
    #[arg(long)]
    pub base: PathBuf,
    /// UTF-8 text (needed when --base is a model).
    #[arg(long)]
    pub text: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long)]
    pub chunks: Option<usize>,
    /// Save the base model's log-probabilities (u16 per logit, as llama.cpp) to reuse with --base FILE.
    #[arg(long)]
    pub save_base: Option<PathBuf>,
    #[command(flatten)]
    pub weights: WeightArgs,
}

fn is_base_logits(p: &std::path::Path) -> bool {
    let mut m = [0u8; 8];
    p.is_file()
        && std::fs::File::open(p).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut m)).is_ok()
        && &m == b"QKLOGIT1"
}

pub fn kld(ctx: &Ctx, a: &KldArgs) -> Result<()> {
    use quantkit_engine::eval::{base_logits, kld as run_kld, kld_models, BaseLogits};
    let progress = |pb: &indicatif::ProgressBar, d: usize, t: usize| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    };
    let r = if is_base_logits(&a.base) {
        let base = BaseLogits::read(&a.base)?;
        let model_path = a.model.as_ref().ok_or_else(|| Error::Invalid("give a model to compare".into()))?;
        let (model, _) = load(model_path, a.weights)?;
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
            base_logits(&bm, &tokens, &o, &|d, t| progress(&pb, d, t))?.write(p)?;
            pb.finish_and_clear();
            if !ctx.json {
                eprintln!("saved base log-probabilities to {}", p.display());
            }
        }
        let Some(model_path) = &a.model else {
            if a.save_base.is_none() {
                return Err(Error::Invalid("give a model to compare, or --save-base".into()));
            }
            return Ok(());
        };
        let (model, _) = load(model_path, a.weights)?;
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
