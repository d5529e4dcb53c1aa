//! Perplexity (two methods), KL divergence against a base model, and generation.

use std::time::Instant;

use quantkit_core::{Error, Result};
use serde::Serialize;

use crate::baselogits::compare_dense;
use crate::model::Model;

/// How perplexity is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PplMode {
    /// llama-perplexity: chunks of `ctx` tokens, BOS put first when the model adds one, the second
    /// half of each chunk scored.
    Llama,
    /// The sliding window GPTQ/AWQ papers report: windows of `ctx` tokens every `stride`, each token
    /// scored once with as much context as the window gives (stride = ctx: disjoint windows).
    Hf,
}

#[derive(Debug, Clone)]
pub struct PplOptions {
    pub ctx: usize,
    pub chunks: Option<usize>,
    pub mode: PplMode,
    pub stride: Option<usize>,
    /// BOS id to put first in each llama-mode chunk (None: leave the text's token).
    pub bos: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    pub mode: PplMode,
    pub ctx: usize,
    pub chunks: usize,
    pub tokens_scored: usize,
    pub ppl: f64,
    /// llama-perplexity's estimate: ppl · sqrt(var(nll) / (n − 1)).
    pub ppl_err: f64,
    pub mean_nll: f64,
    pub seconds: f64,
    /// Tokens evaluated (not only scored) per second.
    pub tokens_per_second: f64,
}

/// log Σ exp(row), in f64.
pub fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max
}

/// −log softmax(row)[target], in f64.
pub fn nll_of(row: &[f32], target: u32) -> f64 {
    logsumexp(row) - row[target as usize] as f64
}

/// Windows to evaluate: (start, end, first position whose next token is scored).
fn windows(n_tokens: usize, o: &PplOptions) -> Vec<(usize, usize, usize)> {
    match o.mode {
        PplMode::Llama => {
            (0..n_tokens / o.ctx).map(|c| (c * o.ctx, (c + 1) * o.ctx, c * o.ctx + o.ctx / 2)).collect()
        }
        PplMode::Hf => {
            let stride = o.stride.unwrap_or(o.ctx).clamp(1, o.ctx);
            let mut v = vec![];
            let mut prev_end = 0usize;
            let mut begin = 0usize;
            while begin < n_tokens {
                let end = (begin + o.ctx).min(n_tokens);
                // score tokens prev_end.max(begin+1)..end, i.e. logits at positions from−1..end−1
                let first_target = prev_end.max(begin + 1);
                if first_target < end {
                    v.push((begin, end, first_target - 1));
                }
                prev_end = end;
                if end == n_tokens {
                    break;
                }
                begin += stride;
            }
            v
        }
    }
}

/// `--ctx` must be at least 2, fit the model's context and the text must fill one context.
fn check_ctx(model: &Model, tokens: &[u32], o: &PplOptions) -> Result<()> {
    if o.ctx < 2 {
        return Err(Error::Invalid("--ctx must be at least 2".into()));
    }
    let max_ctx = model.cfg.context_length as usize;
    if max_ctx > 0 && o.ctx > max_ctx {
        return Err(Error::Invalid(format!(
            "--ctx {} is larger than the model's context length {max_ctx}",
            o.ctx
        )));
    }
    if tokens.len() < o.ctx {
        return Err(Error::Invalid(format!(
            "the text has {} tokens, fewer than one context of {} (use a longer text or a smaller --ctx)",
            tokens.len(),
            o.ctx
        )));
    }
    Ok(())
}

/// How many llama-perplexity chunks of `o.ctx` tokens to evaluate (after [`check_ctx`]).
fn llama_chunks(model: &Model, tokens: &[u32], o: &PplOptions) -> Result<usize> {
    check_ctx(model, tokens, o)?;
    Ok((tokens.len() / o.ctx).min(o.chunks.map_or(usize::MAX, |c| c.max(1))))
}

/// A chunk with its first token replaced by `bos` (llama-perplexity does so when the model adds BOS).
fn with_bos(tokens: &[u32], bos: Option<u32>) -> Vec<u32> {
    let mut chunk = tokens.to_vec();
    if let Some(b) = bos {
        chunk[0] = b;
    }
    chunk
}

/// Perplexity of `tokens` (already tokenized, BOS included as the mode wants).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    o: &PplOptions,
    progress: &dyn Fn(usize, usize, f64),
) -> Result<PplReport> {
    check_ctx(model, tokens, o)?;
    let mut wins = windows(tokens.len(), o);
    if let Some(c) = o.chunks {
        wins.truncate(c.max(1));
    }
    let start = Instant::now();
    let mut cache = model.new_cache(o.ctx);
    let (mut nll, mut nll2, mut count, mut evaluated) = (0f64, 0f64, 0usize, 0usize);
    for (i, &(b, e, from)) in wins.iter().enumerate() {
        let chunk = with_bos(&tokens[b..e], if o.mode == PplMode::Llama { o.bos } else { None });
        cache.clear();
        let rel_from = from - b;
        let logits = model.forward(&chunk, &mut cache, rel_from, None)?;
        let vocab = model.vocab_size();
        // positions rel_from..len−1 predict tokens rel_from+1..len
        for (k, pos) in (rel_from..chunk.len() - 1).enumerate() {
            let target = tokens[b + pos + 1];
            let v = nll_of(&logits[k * vocab..(k + 1) * vocab], target);
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        evaluated += chunk.len();
        progress(i + 1, wins.len(), (nll / count.max(1) as f64).exp());
    }
    let mean = nll / count.max(1) as f64;
    let ppl = mean.exp();
    let err = ppl_err(nll, nll2, count.max(1) as f64);
    let seconds = start.elapsed().as_secs_f64();
    Ok(PplReport {
        mode: o.mode,
        ctx: o.ctx,
        chunks: wins.len(),
        tokens_scored: count,
        ppl,
        ppl_err: err,
        mean_nll: mean,
        seconds,
        tokens_per_second: evaluated as f64 / seconds.max(1e-9),
    })
}

/// Greedy (temperature 0) or sampled generation. Returns the new token ids.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    n_new: usize,
    temperature: f32,
    seed: u64,
    stop: Option<u32>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid("empty prompt".into()));
    }
    let cap = prompt.len() + n_new;
    let max_ctx = model.cfg.context_length as usize;
    if max_ctx > 0 && cap > max_ctx {
        return Err(Error::Invalid(format!(
            "prompt + new tokens ({cap}) exceed the context length {max_ctx}"
        )));
    }
    let mut cache = model.new_cache(cap);
    let mut logits = model.forward(prompt, &mut cache, prompt.len() - 1, None)?;
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n_new);
    for _ in 0..n_new {
        let next = if temperature <= 0.0 {
            argmax(&logits)
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            sample(&logits, temperature, (rng >> 11) as f64 / (1u64 << 53) as f64)
        };
        out.push(next);
        if Some(next) == stop {
            break;
        }
        logits = model.forward(&[next], &mut cache, 0, None)?;
    }
    Ok(out)
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn sample(row: &[f32], t: f32, u: f64) -> u32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let p: Vec<f64> = row.iter().map(|&v| (((v - max) / t) as f64).exp()).collect();
    let z: f64 = p.iter().sum();
    let mut acc = 0.0;
    for (i, pi) in p.iter().enumerate() {
        acc += pi / z;
        if u < acc {
            return i as u32;
        }
    }
    (row.len() - 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_token_once() {
        let o = |mode, stride| PplOptions { ctx: 8, chunks: None, mode, stride, bos: None };
        assert_eq!(windows(20, &o(PplMode::Llama, None)), vec![(0, 8, 4), (8, 16, 12)]);
        // HF, disjoint: every window scores its own tokens after the first.
        assert_eq!(windows(20, &o(PplMode::Hf, None)), vec![(0, 8, 0), (8, 16, 8), (16, 20, 16)]);
        // HF, stride 4: later windows score only their last 4 tokens.
        let w = windows(20, &o(PplMode::Hf, Some(4)));
        assert_eq!(w[0], (0, 8, 0));
        assert_eq!(w[1], (4, 12, 7));
        let scored: usize = w.iter().map(|(_, e, f)| e - 1 - f).sum();
        assert_eq!(scored, 19, "every token but the first is scored once");
    }

    #[test]
    fn nll_is_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = row.iter().map(|v| (*v as f64).exp()).sum();
        assert!((nll_of(&row, 2) - (z.ln() - 3.0)).abs() < 1e-12);
        assert_eq!(argmax(&[0.0, 5.0, 5.0, 1.0]), 1);
    }
}

pub use crate::baselogits::{BaseFormat, BaseLogits, BaseRows, LogProbType, RowCompare};

/// Compute the base model's log-probabilities on `tokens` (llama-mode chunks), stored as `format`.
pub fn base_logits(
    model: &Model,
    tokens: &[u32],
    o: &PplOptions,
    format: BaseFormat,
    progress: &dyn Fn(usize, usize),
) -> Result<BaseLogits> {
    let n_chunks = llama_chunks(model, tokens, o)?;
    if o.ctx < 3 {
        return Err(Error::Invalid("--ctx must be at least 3 to score any position".into()));
    }
    if let BaseFormat::TopK { k: 0, .. } = format {
        return Err(Error::Invalid("--top-k must be at least 1 (0 means the full vocabulary)".into()));
    }
    let vocab = model.vocab_size();
    let mut out = BaseLogits::new(format, vocab, o.ctx, o.bos);
    let mut cache = model.new_cache(o.ctx);
    let mut mask = vec![false; vocab];
    let first = o.ctx / 2;
    for c in 0..n_chunks {
        let text = &tokens[c * o.ctx..(c + 1) * o.ctx];
        let chunk = with_bos(text, o.bos);
        cache.clear();
        let logits = model.forward(&chunk, &mut cache, first, None)?;
        for r in 0..(o.ctx - 1 - first) {
            out.push_row(&logits[r * vocab..(r + 1) * vocab], chunk[first + r + 1], &mut mask);
        }
        out.tokens.extend_from_slice(text);
        progress(c + 1, n_chunks);
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct KldReport {
    pub chunks: usize,
    pub tokens_scored: usize,
    pub mean_kld: f64,
    pub kld_err: f64,
    pub median_kld: f64,
    pub max_kld: f64,
    /// Fraction of positions where both models' most likely token is the same.
    pub same_top_p: f64,
    pub ppl_base: f64,
    pub ppl: f64,
    /// Standard error of `ppl` (llama-perplexity's: `ppl · sqrt(var(nll) / n)`); same for the base.
    pub ppl_err: f64,
    pub ppl_base_err: f64,
    /// Percentiles of Δp = p_model(correct token) − p_base(correct token).
    pub delta_p_percentiles: Vec<(f64, f64)>,
    pub rms_delta_p: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Accumulates KLD statistics row by row.
#[derive(Default)]
struct KldAcc {
    klds: Vec<f64>,
    dps: Vec<f64>,
    same: usize,
    nll_b: f64,
    nll_m: f64,
    nll_b2: f64,
    nll_m2: f64,
    chunks: usize,
}

impl KldAcc {
    /// One scored position: the base's comparison `c` with the model's `row` (logits, `lse` their
    /// log-sum-exp), `target` the next token.
    fn add(&mut self, c: RowCompare, row: &[f32], lse: f64, target: usize) {
        if argmax(row) as usize == c.base_top {
            self.same += 1;
        }
        let (lb_t, lm_t) = (c.base_lp_target, row[target] as f64 - lse);
        self.nll_b -= lb_t;
        self.nll_m -= lm_t;
        self.nll_b2 += lb_t * lb_t;
        self.nll_m2 += lm_t * lm_t;
        self.dps.push(lm_t.exp() - lb_t.exp());
        self.klds.push(c.kl.max(0.0));
    }

    fn report(self) -> KldReport {
        let n = self.klds.len().max(1) as f64;
        let mean = self.klds.iter().sum::<f64>() / n;
        let var = self.klds.iter().map(|k| (k - mean) * (k - mean)).sum::<f64>() / (n - 1.0).max(1.0);
        let rms_dp = (self.dps.iter().map(|d| d * d).sum::<f64>() / n).sqrt();
        let mut sk = self.klds.clone();
        sk.sort_by(|a, b| a.total_cmp(b));
        let mut sd = self.dps.clone();
        sd.sort_by(|a, b| a.total_cmp(b));
        KldReport {
            chunks: self.chunks,
            tokens_scored: self.klds.len(),
            mean_kld: mean,
            kld_err: (var / n).sqrt(),
            median_kld: percentile(&sk, 0.5),
            max_kld: sk.last().copied().unwrap_or(0.0),
            same_top_p: self.same as f64 / n,
            ppl_base: (self.nll_b / n).exp(),
            ppl: (self.nll_m / n).exp(),
            ppl_err: ppl_err(self.nll_m, self.nll_m2, n),
            ppl_base_err: ppl_err(self.nll_b, self.nll_b2, n),
            delta_p_percentiles: [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99]
                .iter()
                .map(|&q| (q * 100.0, percentile(&sd, q)))
                .collect(),
            rms_delta_p: rms_dp,
        }
    }
}

/// llama-perplexity's error of `exp(mean nll)` from the sum and sum of squares of the nll.
fn ppl_err(sum: f64, sum2: f64, n: f64) -> f64 {
    let mean = sum / n;
    let var = (sum2 / n - mean * mean).max(0.0);
    mean.exp() * (var / (n - 1.0).max(1.0)).sqrt()
}

fn same_vocab(base: usize, model: usize) -> Result<()> {
    if base != model {
        return Err(Error::Invalid(format!("the base has a vocabulary of {base}, the model {model}")));
    }
    Ok(())
}

fn log_probs(row: &[f32]) -> Vec<f64> {
    let lse = logsumexp(row);
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(base ‖ model) with both models in this process, chunk by chunk (exact: a model against
/// itself gives 0 and 100 % same top token).
pub fn kld_models(
    base: &Model,
    model: &Model,
    tokens: &[u32],
    o: &PplOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<KldReport> {
    Ok(kld_models_vs_saved(base, model, tokens, o, &[], progress)?.0)
}

/// [`kld_models`], and besides the exact report one per `formats`: the statistics a base saved in
/// that format would give, each position's base row stored and compared through the same code as
/// a file's (the file round trip itself is lossless, tested). Measures the top-K bound's error in
/// one pass.
pub fn kld_models_vs_saved(
    base: &Model,
    model: &Model,
    tokens: &[u32],
    o: &PplOptions,
    formats: &[BaseFormat],
    progress: &dyn Fn(usize, usize),
) -> Result<(KldReport, Vec<KldReport>)> {
    same_vocab(base.vocab_size(), model.vocab_size())?;
    let n_chunks = llama_chunks(base, tokens, o)?;
    let (vocab, first) = (model.vocab_size(), o.ctx / 2);
    let (mut cb, mut cm) = (base.new_cache(o.ctx), model.new_cache(o.ctx));
    let mut acc = KldAcc { chunks: n_chunks, ..Default::default() };
    let mut saved: Vec<KldAcc> =
        formats.iter().map(|_| KldAcc { chunks: n_chunks, ..Default::default() }).collect();
    let mut mask = vec![false; vocab];
    for c in 0..n_chunks {
        let chunk = with_bos(&tokens[c * o.ctx..(c + 1) * o.ctx], o.bos);
        cb.clear();
        cm.clear();
        let lb = base.forward(&chunk, &mut cb, first, None)?;
        let lm = model.forward(&chunk, &mut cm, first, None)?;
        for r in 0..(o.ctx - 1 - first) {
            let s = r * vocab..(r + 1) * vocab;
            let (row, target) = (&lm[s.clone()], chunk[first + r + 1] as usize);
            let lse = logsumexp(row);
            acc.add(compare_dense(&log_probs(&lb[s.clone()]), row, lse, target), row, lse, target);
            for (f, a) in formats.iter().zip(saved.iter_mut()) {
                let mut one = BaseLogits::new(*f, vocab, o.ctx, None);
                one.push_row(&lb[s.clone()], target as u32, &mut mask);
                a.add(one.compare_row(0, row, lse, target, &mut mask), row, lse, target);
            }
        }
        progress(c + 1, n_chunks);
    }
    Ok((acc.report(), saved.into_iter().map(KldAcc::report).collect()))
}

/// KL(base ‖ model) over the chunks stored in a saved `base` (its [`BaseLogits::bos`] replaces each
/// chunk's first token). For a top-K base the per-position KL is the merged-categories lower bound.
pub fn kld(model: &Model, base: &BaseLogits, progress: &dyn Fn(usize, usize)) -> Result<KldReport> {
    same_vocab(base.vocab, model.vocab_size())?;
    let ctx = base.ctx;
    let max_ctx = model.cfg.context_length as usize;
    if max_ctx > 0 && ctx > max_ctx {
        return Err(Error::Invalid(format!(
            "the base was computed with a context of {ctx}, larger than the model's context length {max_ctx}"
        )));
    }
    let first = ctx / 2;
    let n_chunks = base.chunks();
    let per = base.per_chunk();
    let mut cache = model.new_cache(ctx);
    let mut mask = vec![false; base.vocab];
    let mut acc = KldAcc { chunks: n_chunks, ..Default::default() };
    for c in 0..n_chunks {
        let chunk = base.chunk(c);
        cache.clear();
        let logits = model.forward(&chunk, &mut cache, first, None)?;
        for r in 0..per {
            let row = &logits[r * base.vocab..(r + 1) * base.vocab];
            let target = chunk[first + r + 1] as usize;
            let lse = logsumexp(row);
            acc.add(base.compare_row(c * per + r, row, lse, target, &mut mask), row, lse, target);
        }
        progress(c + 1, n_chunks);
    }
    Ok(acc.report())
}
