//! `ppl` and `generate`: the engine from the command line.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use quantkit_core::{Error, Result};
use quantkit_engine::eval::{generate as run_generate, perplexity, PplMode, PplOptions};
use quantkit_engine::tokenizer::read_text;
use quantkit_engine::{Model, Tokenizer};
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
}

fn load(path: &std::path::Path) -> Result<(Model, Tokenizer)> {
    let src = ModelSource::open(path)?;
    let tok = Tokenizer::for_source(&src)?;
    let model = Model::load(&src)?;
    Ok((model, tok))
}

pub fn ppl(ctx: &Ctx, a: &PplArgs) -> Result<()> {
    let text = read_text(&a.text)?;
    let (model, tok) = load(&a.model)?;
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
}

pub fn generate(ctx: &Ctx, a: &GenerateArgs) -> Result<()> {
    let (model, tok) = load(&a.model)?;
    let prompt = tok.encode(&a.prompt, tok.add_bos)?;
    let t = std::time::Instant::now();
    let out = run_generate(&model, &prompt, a.n, a.temperature, a.seed, tok.eos)?;
    let secs = t.elapsed().as_secs_f64();
    let text = tok.decode(&out)?;
    if ctx.json {
        let j = json!({ "prompt": a.prompt, "prompt_tokens": prompt, "tokens": out, "text": text,
                        "seconds": secs, "tokens_per_second": out.len() as f64 / secs.max(1e-9) });
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!("{}{}", a.prompt, text);
        eprintln!("({} tokens, {:.1} tokens/s)", out.len(), out.len() as f64 / secs.max(1e-9));
    }
    Ok(())
}
