//! Perplexity (two methods), KL divergence against a base model, and generation.

use std::time::Instant;

use quantkit_core::{Error, Result};
use serde::Serialize;

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

/// −log softmax(row)[target], in f64.
pub fn nll_of(row: &[f32], target: u32) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    z.ln() + max - row[target as usize] as f64
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

/// Perplexity of `tokens` (already tokenized, BOS included as the mode wants).
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    o: &PplOptions,
    progress: &dyn Fn(usize, usize, f64),
) -> Result<PplReport> {
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
    let mut wins = windows(tokens.len(), o);
    if let Some(c) = o.chunks {
        wins.truncate(c.max(1));
    }
    let start = Instant::now();
    let mut cache = model.new_cache(o.ctx);
    let (mut nll, mut nll2, mut count, mut evaluated) = (0f64, 0f64, 0usize, 0usize);
    for (i, &(b, e, from)) in wins.iter().enumerate() {
        let mut chunk: Vec<u32> = tokens[b..e].to_vec();
        if o.mode == PplMode::Llama {
            if let Some(bos) = o.bos {
                chunk[0] = bos;
            }
        }
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
    let var = nll2 / count.max(1) as f64 - mean * mean;
    let err = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
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
