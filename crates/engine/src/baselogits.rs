//! Saved base-model log-probabilities for KL divergence, in three file formats:
//!
//! * `QKLOGIT1` ([`BaseFormat::Full`]): every logit of every scored position as a u16 code of log p
//!   over [−30, 0] (2 bytes × vocabulary per position).
//! * `QKLOGIT2` ([`BaseFormat::TopK`]): per scored position the base's K most likely token ids and
//!   their log-probabilities (f32 or f16), the log-probability of the actual next token and the
//!   mass outside the top K. KL is computed over the K tokens plus one merged "rest" category, a
//!   lower bound of the exact KL (merging categories can only lower it: the log-sum inequality).
//! * llama.cpp's `--kl-divergence-base` file ([`BaseFormat::Llama`], magic `_logits_`), byte for
//!   byte as `llama-perplexity` writes and reads it: `n_ctx` (u32), `n_vocab` (i32), `n_chunk`
//!   (i32), the `n_ctx × n_chunk` text tokens (i32, the first of each chunk as in the text — the
//!   reader puts BOS there when its model adds one), then per chunk `n_ctx − 1 − n_ctx/2` rows of
//!   `2·⌈n_vocab/2⌉ + 4` u16: two f32 (scale, min log-prob), u16 codes of log p over the 16 nats
//!   below the row's maximum, padding to an even count.
//!
//! Readers work on the bytes, check every size against the file length before allocating and
//! refuse non-finite or out-of-range values with an error naming the file and the place.

use std::path::Path;

use quantkit_core::{Error, Result};

use crate::eval::logsumexp;

pub const FULL_MAGIC: &[u8; 8] = b"QKLOGIT1";
pub const TOPK_MAGIC: &[u8; 8] = b"QKLOGIT2";
pub const LLAMA_MAGIC: &[u8; 8] = b"_logits_";

/// Floor of the `QKLOGIT1` codes.
const FLOOR: f32 = -30.0;
/// Largest vocabulary / context a base file may declare (config.json's vocabulary cap is 8 M).
const MAX_VOCAB: u64 = 1 << 24;
const MAX_CTX: u64 = 1 << 24;
/// How far above 0 a stored log-probability may be (rounding) before the file is refused.
const LP_SLACK: f32 = 1e-3;

/// How a top-K file stores its log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogProbType {
    F32,
    F16,
}

impl LogProbType {
    fn bytes(self) -> usize {
        match self {
            LogProbType::F32 => 4,
            LogProbType::F16 => 2,
        }
    }
    fn code(self) -> u32 {
        match self {
            LogProbType::F32 => 0,
            LogProbType::F16 => 1,
        }
    }
    /// The value as the file will hold it.
    fn round(self, v: f32) -> f32 {
        match self {
            LogProbType::F32 => v,
            LogProbType::F16 => half::f16::from_f32(v).to_f32(),
        }
    }
}

/// Which file a [`BaseLogits`] is (or will be written as).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseFormat {
    /// `QKLOGIT1`: u16 per logit.
    Full,
    /// `QKLOGIT2`: the top `k` log-probabilities, `tail` tokens sampled from the rest (0: the rest
    /// is one merged category), the next token's log-probability, the rest mass.
    TopK { k: usize, tail: usize, dtype: LogProbType },
    /// llama.cpp's `--kl-divergence-base` file.
    Llama,
}

impl BaseFormat {
    /// Bytes per scored position for a vocabulary of `vocab`.
    pub fn bytes_per_position(self, vocab: usize) -> usize {
        match self {
            BaseFormat::Full => 2 * vocab,
            BaseFormat::TopK { k, tail, dtype } => (k + tail) * (4 + dtype.bytes()) + 8,
            BaseFormat::Llama => 2 * llama_nv(vocab),
        }
    }
}

/// u16 per llama.cpp row: two f32, the codes, padding to an even count.
fn llama_nv(vocab: usize) -> usize {
    2 * vocab.div_ceil(2) + 4
}

/// The rows of a base file, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseRows {
    /// `rows × vocab` codes of log p over [−30, 0].
    Full(Vec<u16>),
    /// Per row `k + tail` ids and log-probabilities (already rounded to `dtype`): the top `k`, best
    /// first, then the `tail` samples.
    TopK {
        k: usize,
        tail: usize,
        dtype: LogProbType,
        ids: Vec<u32>,
        lps: Vec<f32>,
        target: Vec<f32>,
        rest: Vec<f32>,
    },
    /// `rows × nv` u16 exactly as in the llama.cpp file (the two f32 as their low and high halves).
    Llama(Vec<u16>),
}

/// Log-probabilities of the scored positions of llama-mode chunks: what a KL-divergence run compares.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseLogits {
    pub vocab: usize,
    pub ctx: usize,
    /// The text's tokens, `ctx` per chunk.
    pub tokens: Vec<u32>,
    /// The token that replaces each chunk's first when it is evaluated (BOS when the model adds
    /// one). `QKLOGIT` files store the evaluated tokens (so this is `None` after reading them); a
    /// llama.cpp file stores the text's, and its reader takes BOS from the model under test.
    pub bos: Option<u32>,
    pub rows: BaseRows,
}

/// What a KL-divergence row needs from the base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowCompare {
    /// KL(base ‖ model) of the row (for a top-K base: the merged-categories lower bound).
    pub kl: f64,
    /// The base's most likely token (the first on ties).
    pub base_top: usize,
    /// The base's log-probability of the next token.
    pub base_lp_target: f64,
}

/// KL terms of a dense base row, as the in-process comparison and `QKLOGIT1` compute them:
/// Σ p_b (log p_b − log p_m) over every entry.
pub fn compare_dense(base_lp: &[f64], row: &[f32], lse: f64, target: usize) -> RowCompare {
    let mut kl = 0f64;
    let mut best = 0usize;
    for (i, (&lb, &v)) in base_lp.iter().zip(row).enumerate() {
        kl += lb.exp() * (lb - (v as f64 - lse));
        if lb > base_lp[best] {
            best = i;
        }
    }
    RowCompare { kl, base_top: best, base_lp_target: base_lp[target] }
}

/// KL over the base's top K plus the merged rest: Σ_{i∈K} p_b,i (log p_b,i − log p_m,i) +
/// r_b (log r_b − log r_m), r_m = Σ_{i∉K} p_m,i (summed directly, not as 1 − Σ, so it keeps its
/// precision when small). Each of the K + 1 terms is taken in the generalized form
/// p log(p/q) − p + q: with exact values the added terms sum to 1 − 1 = 0, and they cancel the
/// first-order effect of the stored values' rounding (f32/f16 log-probabilities whose
/// probabilities no longer sum to exactly 1), which would otherwise swamp a small KL. Every term
/// stays ≥ 0 and merging categories still only lowers the sum. `mask` is scratch of at least
/// `row.len()` entries, all false on entry and on return.
///
/// With tail samples (`ids`/`lps` longer than `k`: tokens drawn from the base's distribution
/// outside its top K, systematic sampling) the merged term is replaced by the unbiased estimate
/// r_b · mean_s f(s), f = log(p_b,s/p_m,s) − 1 + p_m,s/p_b,s ≥ 0, of the tail's generalized-KL
/// terms Σ_{i∉K} (p_b,i log(p_b,i/p_m,i) − p_b,i + p_m,i): no longer a bound, but unbiased.
#[allow(clippy::too_many_arguments)]
pub fn compare_topk(
    k: usize,
    ids: &[u32],
    lps: &[f32],
    target_lp: f32,
    rest: f32,
    row: &[f32],
    lse: f64,
    mask: &mut [bool],
) -> RowCompare {
    let mut kl = 0f64;
    for (&i, &lb) in ids[..k].iter().zip(&lps[..k]) {
        let (lb, lm) = (lb as f64, row[i as usize] as f64 - lse);
        let (pb, pm) = (lb.exp(), lm.exp());
        kl += pb * (lb - lm) - pb + pm;
    }
    let r_b = rest as f64;
    if ids.len() > k {
        let n = (ids.len() - k) as f64;
        let f: f64 = ids[k..]
            .iter()
            .zip(&lps[k..])
            .map(|(&i, &lb)| {
                let d = lb as f64 - (row[i as usize] as f64 - lse);
                d - 1.0 + (-d).exp()
            })
            .sum();
        return RowCompare {
            kl: kl + r_b * f / n,
            base_top: ids[0] as usize,
            base_lp_target: target_lp as f64,
        };
    }
    for &i in &ids[..k] {
        mask[i as usize] = true;
    }
    let r_m: f64 =
        row.iter().zip(mask.iter()).filter(|(_, m)| !**m).map(|(&v, _)| (v as f64 - lse).exp()).sum();
    kl += if r_b > 0.0 { r_b * (r_b.ln() - r_m.max(f64::MIN_POSITIVE).ln()) - r_b + r_m } else { r_m };
    for &i in &ids[..k] {
        mask[i as usize] = false;
    }
    RowCompare { kl, base_top: ids[0] as usize, base_lp_target: target_lp as f64 }
}

/// llama-perplexity's row comparison: log p_b = scale·code + min; only entries with log p_b > −16
/// count (as llama.cpp's `log_softmax(..., kl_divergence_result&)`).
fn compare_llama(r: &[u16], vocab: usize, row: &[f32], lse: f64, target: usize) -> RowCompare {
    let (scale, min) = llama_row_floats(r);
    let codes = &r[4..4 + vocab];
    let mut kl = 0f64;
    let (mut best, mut best_lp) = (0usize, 0f32);
    for (i, (&c, &v)) in codes.iter().zip(row).enumerate() {
        let lb = scale * c as f32 + min;
        if i == 0 || lb > best_lp {
            best_lp = lb;
            best = i;
        }
        if lb > -16.0 {
            let lb = lb as f64;
            kl += lb.exp() * (lb - (v as f64 - lse));
        }
    }
    RowCompare { kl, base_top: best, base_lp_target: (scale * codes[target] as f32 + min) as f64 }
}

fn llama_row_floats(r: &[u16]) -> (f32, f32) {
    let f = |lo: u16, hi: u16| f32::from_bits(lo as u32 | (hi as u32) << 16);
    (f(r[0], r[1]), f(r[2], r[3]))
}

/// llama.cpp's `nearest_int`: round half to even (the 1.5·2²³ trick).
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// One llama.cpp row from logits: llama-perplexity's `log_softmax(n_vocab, logits, log_prob, tok)`.
fn llama_row(logits: &[f32], out: &mut Vec<u16>) {
    let mut max_logit = logits[0];
    let mut min_logit = logits[0];
    for &v in &logits[1..] {
        max_logit = max_logit.max(v);
        min_logit = min_logit.min(v);
    }
    min_logit = min_logit.max(max_logit - 16.0);
    let sum_exp: f64 = logits.iter().map(|&v| (v - max_logit).exp() as f64).sum();
    let log_sum_exp = sum_exp.ln() as f32;
    let min_log_prob = min_logit - max_logit - log_sum_exp;
    let scale = (max_logit - min_logit) / 65535.0;
    let start = out.len();
    for f in [scale, min_log_prob] {
        let b = f.to_bits();
        out.extend_from_slice(&[b as u16, (b >> 16) as u16]);
    }
    if scale != 0.0 {
        let inv_scale = 1.0 / scale;
        out.extend(logits.iter().map(|&v| {
            if v > min_logit {
                nearest_int(inv_scale * (v - min_logit)).clamp(0, 65535) as u16
            } else {
                0
            }
        }));
    } else {
        out.extend(std::iter::repeat_n(0u16, logits.len()));
    }
    out.resize(start + llama_nv(logits.len()), 0);
}

impl BaseLogits {
    /// An empty base of `format` to fill with [`BaseLogits::push_row`].
    pub fn new(format: BaseFormat, vocab: usize, ctx: usize, bos: Option<u32>) -> Self {
        let rows = match format {
            BaseFormat::Full => BaseRows::Full(vec![]),
            BaseFormat::TopK { k, tail, dtype } => BaseRows::TopK {
                k: k.min(vocab),
                // No tail to sample from when the top K is the whole vocabulary.
                tail: if k >= vocab { 0 } else { tail },
                dtype,
                ids: vec![],
                lps: vec![],
                target: vec![],
                rest: vec![],
            },
            BaseFormat::Llama => BaseRows::Llama(vec![]),
        };
        BaseLogits { vocab, ctx, tokens: vec![], bos, rows }
    }

    pub fn format(&self) -> BaseFormat {
        match &self.rows {
            BaseRows::Full(_) => BaseFormat::Full,
            BaseRows::TopK { k, tail, dtype, .. } => BaseFormat::TopK { k: *k, tail: *tail, dtype: *dtype },
            BaseRows::Llama(_) => BaseFormat::Llama,
        }
    }

    /// Scored positions per chunk (llama-perplexity's second half: `ctx − 1 − ctx/2`).
    pub fn per_chunk(&self) -> usize {
        self.ctx - 1 - self.ctx / 2
    }

    pub fn chunks(&self) -> usize {
        self.tokens.len() / self.ctx
    }

    /// Chunk `c` as the model evaluates it (BOS first where [`BaseLogits::bos`] says).
    pub fn chunk(&self, c: usize) -> Vec<u32> {
        let mut v = self.tokens[c * self.ctx..(c + 1) * self.ctx].to_vec();
        if let Some(b) = self.bos {
            v[0] = b;
        }
        v
    }

    /// Keep the first `n` chunks.
    pub fn truncate_chunks(&mut self, n: usize) {
        let n = n.min(self.chunks());
        let rows = n * self.per_chunk();
        self.tokens.truncate(n * self.ctx);
        match &mut self.rows {
            BaseRows::Full(c) => c.truncate(rows * self.vocab),
            BaseRows::TopK { k, tail, ids, lps, target, rest, .. } => {
                ids.truncate(rows * (*k + *tail));
                lps.truncate(rows * (*k + *tail));
                target.truncate(rows);
                rest.truncate(rows);
            }
            BaseRows::Llama(c) => c.truncate(rows * llama_nv(self.vocab)),
        }
    }

    /// Append one scored position from the base model's logits; `target` is the next token.
    pub fn push_row(&mut self, logits: &[f32], target: u32, mask: &mut [bool]) {
        let vocab = self.vocab;
        match &mut self.rows {
            BaseRows::Full(codes) => {
                let lse = logsumexp(logits);
                let scale = -FLOOR / 65535.0;
                codes.extend(logits.iter().map(|&v| {
                    let lp = ((v as f64 - lse) as f32).max(FLOOR);
                    ((lp - FLOOR) / scale).round() as u16
                }));
            }
            BaseRows::TopK { k, tail, dtype, ids, lps, target: tl, rest } => {
                let lse = logsumexp(logits);
                let top = top_k(logits, *k);
                let lp = |i: u32| dtype.round((logits[i as usize] as f64 - lse) as f32);
                for &i in &top {
                    ids.push(i);
                    lps.push(lp(i));
                    mask[i as usize] = true;
                }
                let r: f64 = logits
                    .iter()
                    .zip(mask.iter())
                    .filter(|(_, m)| !**m)
                    .map(|(&v, _)| (v as f64 - lse).exp())
                    .sum();
                if *tail > 0 {
                    // Systematic sampling of the tail ∝ p_b: points (u + j)/S of its mass, u seeded
                    // by the row number (deterministic output).
                    let mut h = (tl.len() as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                    let u = ((h ^ (h >> 31)) >> 11) as f64 / (1u64 << 53) as f64;
                    let (mut acc, mut j, mut last) = (0f64, 0usize, None);
                    for (i, (&v, &m)) in logits.iter().zip(mask.iter()).enumerate() {
                        if m {
                            continue;
                        }
                        acc += (v as f64 - lse).exp();
                        last = Some(i as u32);
                        while j < *tail && (u + j as f64) / *tail as f64 * r < acc {
                            ids.push(i as u32);
                            lps.push(lp(i as u32));
                            j += 1;
                        }
                    }
                    // Rounding (or a tail of no mass) can leave points unreached: the last tail token.
                    let last = last.unwrap_or(top[0]);
                    for _ in j..*tail {
                        ids.push(last);
                        lps.push(lp(last));
                    }
                }
                for &i in &top {
                    mask[i as usize] = false;
                }
                rest.push(r.min(1.0) as f32);
                tl.push((logits[target as usize] as f64 - lse) as f32);
            }
            BaseRows::Llama(rows) => {
                debug_assert_eq!(logits.len(), vocab);
                llama_row(logits, rows);
            }
        }
    }

    /// Compare stored row `r` with the model's `row` (logits, `lse` their log-sum-exp).
    pub fn compare_row(
        &self,
        r: usize,
        row: &[f32],
        lse: f64,
        target: usize,
        mask: &mut [bool],
    ) -> RowCompare {
        let v = self.vocab;
        match &self.rows {
            BaseRows::Full(codes) => {
                let scale = -FLOOR / 65535.0;
                let lb: Vec<f64> =
                    codes[r * v..(r + 1) * v].iter().map(|&c| (FLOOR + c as f32 * scale) as f64).collect();
                compare_dense(&lb, row, lse, target)
            }
            BaseRows::TopK { k, tail, ids, lps, target: tl, rest, .. } => {
                let w = k + tail;
                let s = r * w..(r + 1) * w;
                compare_topk(*k, &ids[s.clone()], &lps[s], tl[r], rest[r], row, lse, mask)
            }
            BaseRows::Llama(rows) => {
                let nv = llama_nv(v);
                compare_llama(&rows[r * nv..(r + 1) * nv], v, row, lse, target)
            }
        }
    }

    /// Write the file of this base's format (temp file + rename).
    pub fn write(&self, dest: &Path) -> Result<()> {
        let mut f = quantkit_core::AtomicFile::create(dest)?;
        let evaluated: Vec<u32> = (0..self.chunks()).flat_map(|c| self.chunk(c)).collect();
        let u32s = |f: &mut quantkit_core::AtomicFile, v: &[u32]| -> Result<()> {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.write_all(&b)
        };
        let u16s = |f: &mut quantkit_core::AtomicFile, v: &[u16]| -> Result<()> {
            for part in v.chunks(1 << 20) {
                let b: Vec<u8> = part.iter().flat_map(|x| x.to_le_bytes()).collect();
                f.write_all(&b)?;
            }
            Ok(())
        };
        match &self.rows {
            BaseRows::Full(codes) => {
                f.write_all(FULL_MAGIC)?;
                u32s(&mut f, &[self.vocab as u32, self.ctx as u32, self.tokens.len() as u32])?;
                u32s(&mut f, &evaluated)?;
                u16s(&mut f, codes)?;
            }
            BaseRows::TopK { k, tail, dtype, ids, lps, target, rest } => {
                f.write_all(TOPK_MAGIC)?;
                let h = [
                    self.vocab as u32,
                    self.ctx as u32,
                    self.tokens.len() as u32,
                    *k as u32,
                    dtype.code(),
                    *tail as u32,
                ];
                u32s(&mut f, &h)?;
                u32s(&mut f, &evaluated)?;
                let w = k + tail;
                let mut b = Vec::with_capacity(self.format().bytes_per_position(0));
                for r in 0..target.len() {
                    b.clear();
                    for &i in &ids[r * w..(r + 1) * w] {
                        b.extend_from_slice(&i.to_le_bytes());
                    }
                    for &l in &lps[r * w..(r + 1) * w] {
                        match dtype {
                            LogProbType::F32 => b.extend_from_slice(&l.to_le_bytes()),
                            LogProbType::F16 => b.extend_from_slice(&half::f16::from_f32(l).to_le_bytes()),
                        }
                    }
                    b.extend_from_slice(&target[r].to_le_bytes());
                    b.extend_from_slice(&rest[r].to_le_bytes());
                    f.write_all(&b)?;
                }
            }
            BaseRows::Llama(rows) => {
                f.write_all(LLAMA_MAGIC)?;
                u32s(&mut f, &[self.ctx as u32, self.vocab as u32, self.chunks() as u32])?;
                u32s(&mut f, &self.tokens)?;
                u16s(&mut f, rows)?;
            }
        }
        f.commit()
    }

    /// Read any of the three formats (told apart by their magic).
    pub fn read(path: &Path) -> Result<Self> {
        let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&b, path)
    }

    /// Whether `magic` (a file's first 8 bytes) is one of ours or llama.cpp's.
    pub fn is_base_magic(magic: &[u8]) -> bool {
        [FULL_MAGIC, TOPK_MAGIC, LLAMA_MAGIC].iter().any(|m| magic.starts_with(&m[..]))
    }

    /// Parse a base file held in memory; `path` names it in errors.
    pub fn from_bytes(b: &[u8], path: &Path) -> Result<Self> {
        if b.len() < 8 {
            return Err(Error::malformed(
                path,
                "base logits",
                "byte 0",
                format!("{} bytes, too short for a base-logits file", b.len()),
            ));
        }
        match &b[..8] {
            m if m == FULL_MAGIC => read_full(b, path),
            m if m == TOPK_MAGIC => read_topk(b, path),
            m if m == LLAMA_MAGIC => read_llama(b, path),
            _ => Err(Error::malformed(
                path,
                "base logits",
                "byte 0",
                "not a base-logits file (magic QKLOGIT1, QKLOGIT2 or llama.cpp's _logits_)",
            )),
        }
    }
}

/// The `k` largest logits' indices, largest first (lower index first on ties, as argmax).
fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(logits.len());
    let cmp = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
    }
    idx.truncate(k);
    idx.sort_unstable_by(cmp);
    idx
}

/// A bounds-checked little-endian cursor for the readers.
struct Cur<'a> {
    b: &'a [u8],
    path: &'a Path,
}

impl<'a> Cur<'a> {
    fn bad(&self, at: impl Into<String>, msg: impl Into<String>) -> Error {
        Error::malformed(self.path, "base logits", at, msg)
    }
    fn u32(&self, off: usize, field: &str) -> Result<u32> {
        let s = self
            .b
            .get(off..off + 4)
            .ok_or_else(|| self.bad(format!("byte {off}"), format!("the file ends inside {field}")))?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn f32(&self, off: usize, field: &str) -> Result<f32> {
        Ok(f32::from_bits(self.u32(off, field)?))
    }
}

/// Sizes shared by every format: nonzero, within caps, whole chunks, at least one scored position.
fn check_sizes(c: &Cur, vocab: u64, ctx: u64, n_tok: u64) -> Result<()> {
    if vocab == 0 || vocab > MAX_VOCAB {
        return Err(c.bad("header", format!("vocabulary size {vocab} (must be 1..={MAX_VOCAB})")));
    }
    if !(3..=MAX_CTX).contains(&ctx) {
        return Err(c.bad("header", format!("context {ctx} (must be 3..={MAX_CTX})")));
    }
    if n_tok == 0 || n_tok % ctx != 0 {
        return Err(
            c.bad("header", format!("{n_tok} tokens is not a whole, nonzero number of chunks of {ctx}"))
        );
    }
    Ok(())
}

fn check_length(c: &Cur, need: u128) -> Result<()> {
    if need != c.b.len() as u128 {
        return Err(c.bad("header", format!("{} bytes, the header implies {need}", c.b.len())));
    }
    Ok(())
}

/// `signed`: llama.cpp's tokens are i32 (show −1 as −1).
fn read_tokens(c: &Cur, off: usize, n: usize, vocab: usize, signed: bool) -> Result<Vec<u32>> {
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let v = c.u32(off + 4 * i, "the tokens")?;
        if v as usize >= vocab {
            return Err(c.bad(
                format!("token {i} (byte {})", off + 4 * i),
                format!(
                    "token id {} is outside the vocabulary of {vocab}",
                    if signed { (v as i32).to_string() } else { v.to_string() }
                ),
            ));
        }
        t.push(v);
    }
    Ok(t)
}

fn rows_of(ctx: usize, n_tok: usize) -> usize {
    n_tok / ctx * (ctx - 1 - ctx / 2)
}

fn read_full(b: &[u8], path: &Path) -> Result<BaseLogits> {
    let c = Cur { b, path };
    let (vocab, ctx, n_tok) = (c.u32(8, "the header")?, c.u32(12, "the header")?, c.u32(16, "the header")?);
    check_sizes(&c, vocab as u64, ctx as u64, n_tok as u64)?;
    let (vocab, ctx, n_tok) = (vocab as usize, ctx as usize, n_tok as usize);
    let rows = rows_of(ctx, n_tok);
    check_length(&c, 20 + n_tok as u128 * 4 + rows as u128 * vocab as u128 * 2)?;
    let tokens = read_tokens(&c, 20, n_tok, vocab, false)?;
    let off = 20 + 4 * n_tok;
    let codes = b[off..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    Ok(BaseLogits { vocab, ctx, tokens, bos: None, rows: BaseRows::Full(codes) })
}

/// Header bytes of `QKLOGIT2`: magic, vocab, ctx, tokens, k, log-prob type, tail samples.
const HEAD2: usize = 32;

fn read_topk(b: &[u8], path: &Path) -> Result<BaseLogits> {
    let c = Cur { b, path };
    let h: Vec<u32> = (0..6).map(|i| c.u32(8 + 4 * i, "the header")).collect::<Result<_>>()?;
    let (vocab, ctx, n_tok, k, dt, tail) = (h[0], h[1], h[2], h[3], h[4], h[5]);
    check_sizes(&c, vocab as u64, ctx as u64, n_tok as u64)?;
    if k == 0 || k > vocab {
        return Err(c.bad("header", format!("top-k {k} (must be 1..={vocab}, the vocabulary)")));
    }
    let dtype = match dt {
        0 => LogProbType::F32,
        1 => LogProbType::F16,
        _ => return Err(c.bad("header", format!("unknown log-probability type {dt} (0 = f32, 1 = f16)"))),
    };
    if tail > 0 && k == vocab {
        return Err(c.bad("header", format!("{tail} tail samples, but the top {k} is the whole vocabulary")));
    }
    if tail > 1 << 24 {
        return Err(c.bad("header", format!("{tail} tail samples (at most {})", 1 << 24)));
    }
    let (vocab, ctx, n_tok, k, tail) =
        (vocab as usize, ctx as usize, n_tok as usize, k as usize, tail as usize);
    let rows = rows_of(ctx, n_tok);
    let per = BaseFormat::TopK { k, tail, dtype }.bytes_per_position(0);
    check_length(&c, HEAD2 as u128 + n_tok as u128 * 4 + rows as u128 * per as u128)?;
    let tokens = read_tokens(&c, HEAD2, n_tok, vocab, false)?;
    let w = k + tail;
    let (mut ids, mut lps) = (Vec::with_capacity(rows * w), Vec::with_capacity(rows * w));
    let (mut target, mut rest) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let mut seen = Vec::with_capacity(k);
    for r in 0..rows {
        let o = HEAD2 + 4 * n_tok + r * per;
        let at = |what: &str| format!("row {r} {what} (byte {o})");
        seen.clear();
        for j in 0..w {
            let id = c.u32(o + 4 * j, "a row")?;
            if id as usize >= vocab {
                return Err(c.bad(at("ids"), format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            ids.push(id);
            if j < k {
                seen.push(id);
            }
        }
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(c.bad(at("ids"), "a token id appears twice among the top k"));
        }
        if ids[ids.len() - tail..].iter().any(|i| seen.binary_search(i).is_ok()) {
            return Err(c.bad(at("ids"), "a tail sample is one of the top k"));
        }
        let lo = o + 4 * w;
        let mut prev = f32::INFINITY;
        for j in 0..w {
            let v = match dtype {
                LogProbType::F32 => c.f32(lo + 4 * j, "a row")?,
                LogProbType::F16 => {
                    let p = lo + 2 * j;
                    half::f16::from_le_bytes([b[p], b[p + 1]]).to_f32()
                }
            };
            if !v.is_finite() || v > LP_SLACK {
                return Err(
                    c.bad(at("log-probabilities"), format!("log-probability {v} is not finite and ≤ 0"))
                );
            }
            if j < k {
                if v > prev {
                    return Err(c.bad(at("log-probabilities"), "the top k are not in decreasing order"));
                }
                prev = v;
            }
            lps.push(v);
        }
        let to = lo + w * dtype.bytes();
        let (t, re) = (c.f32(to, "a row")?, c.f32(to + 4, "a row")?);
        if !t.is_finite() || t > LP_SLACK {
            return Err(c.bad(at("next-token log-probability"), format!("{t} is not finite and ≤ 0")));
        }
        if !(0.0..=1.0).contains(&re) {
            return Err(c.bad(at("rest mass"), format!("{re} is not in [0, 1]")));
        }
        target.push(t);
        rest.push(re);
    }
    Ok(BaseLogits {
        vocab,
        ctx,
        tokens,
        bos: None,
        rows: BaseRows::TopK { k, tail, dtype, ids, lps, target, rest },
    })
}

fn read_llama(b: &[u8], path: &Path) -> Result<BaseLogits> {
    let c = Cur { b, path };
    let ctx = c.u32(8, "the header (n_ctx)")? as u64;
    let vocab = c.u32(12, "the header (n_vocab)")? as i32;
    let n_chunk = c.u32(16, "the header (n_chunk)")? as i32;
    if vocab <= 0 || n_chunk <= 0 {
        return Err(c.bad("header", format!("n_vocab {vocab}, n_chunk {n_chunk}: both must be positive")));
    }
    let n_tok =
        ctx.checked_mul(n_chunk as u64).ok_or_else(|| c.bad("header", "n_ctx × n_chunk overflows"))?;
    check_sizes(&c, vocab as u64, ctx, n_tok)?;
    let (vocab, ctx, n_chunk) = (vocab as usize, ctx as usize, n_chunk as usize);
    let nv = llama_nv(vocab);
    let per = ctx - 1 - ctx / 2;
    check_length(&c, 20 + n_tok as u128 * 4 + (n_chunk * per) as u128 * nv as u128 * 2)?;
    let n_tok = n_tok as usize;
    let tokens = read_tokens(&c, 20, n_tok, vocab, true)?;
    let off = 20 + 4 * n_tok;
    let rows: Vec<u16> = b[off..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    for (r, row) in rows.chunks_exact(nv).enumerate() {
        let (scale, min) = llama_row_floats(row);
        if !scale.is_finite() || scale < 0.0 || !min.is_finite() || min > LP_SLACK {
            return Err(c.bad(
                format!("chunk {} row {} (byte {})", r / per, r % per, off + 2 * r * nv),
                format!("scale {scale} / minimum log-probability {min}: not finite, or out of range"),
            ));
        }
    }
    Ok(BaseLogits { vocab, ctx, tokens, bos: None, rows: BaseRows::Llama(rows) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random generator for the tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn logits(&mut self, n: usize, spread: f64) -> Vec<f32> {
            (0..n).map(|_| ((self.next() - 0.5) * spread) as f32).collect()
        }
    }

    fn exact(base: &[f32], model: &[f32]) -> f64 {
        let (lb, lm) = (logsumexp(base), logsumexp(model));
        let lp: Vec<f64> = base.iter().map(|&v| v as f64 - lb).collect();
        compare_dense(&lp, model, lm, 0).kl
    }

    fn topk_kl(base: &[f32], model: &[f32], k: usize, dtype: LogProbType) -> RowCompare {
        let n = base.len();
        let mut b = BaseLogits::new(BaseFormat::TopK { k, tail: 0, dtype }, n, 4, None);
        let mut mask = vec![false; n];
        b.push_row(base, 1, &mut mask);
        let r = b.compare_row(0, model, logsumexp(model), 1, &mut mask);
        assert!(mask.iter().all(|m| !m), "mask left clean");
        r
    }

    #[test]
    fn topk_kl_is_a_lower_bound_and_exact_at_full_k() {
        let mut rng = Rng(0x1234_5678);
        for case in 0..200 {
            let n = 2 + case % 97;
            let spread = [1.0, 8.0, 30.0][case % 3];
            let base = rng.logits(n, spread);
            // The model: the base plus noise of several sizes (close and far distributions).
            let noise = [0.01, 0.3, 3.0][(case / 3) % 3];
            let model: Vec<f32> = base.iter().map(|&v| v + ((rng.next() - 0.5) * noise) as f32).collect();
            let e = exact(&base, &model);
            for k in [1, 2, 5, 16, n] {
                let a = topk_kl(&base, &model, k, LogProbType::F32).kl;
                assert!(a <= e + 1e-7 * (1.0 + e), "case {case} k {k}: {a} > exact {e}");
                assert!(a >= -1e-7, "case {case} k {k}: negative {a}");
                if k >= n {
                    assert!((a - e).abs() <= 1e-5 * (1.0 + e), "case {case}: full k {a} vs exact {e}");
                }
            }
        }
    }

    #[test]
    fn topk_kl_grows_with_k_and_f16_stays_close() {
        let mut rng = Rng(99);
        let n = 4000;
        let base = rng.logits(n, 20.0);
        let model: Vec<f32> = base.iter().map(|&v| v + ((rng.next() - 0.5) * 1.0) as f32).collect();
        let e = exact(&base, &model);
        let mut prev = 0.0;
        for k in [1, 4, 16, 64, 256, 1024, n] {
            let a = topk_kl(&base, &model, k, LogProbType::F32).kl;
            assert!(a >= prev - 1e-9, "k {k}: {a} < {prev}");
            prev = a;
            let h = topk_kl(&base, &model, k, LogProbType::F16).kl;
            assert!((h - a).abs() <= 2e-3 * e.max(1e-3), "k {k}: f16 {h} vs f32 {a}");
        }
        assert!((prev - e).abs() < 1e-6 * (1.0 + e));
    }

    /// Tail samples: unbiased (the mean over many positions approaches the exact mean, where the
    /// merged-rest bound stays clearly below it), never negative.
    #[test]
    fn tail_samples_estimate_the_exact_kl() {
        let mut rng = Rng(2024);
        let (n, rows) = (3000, 60);
        let (mut exact_sum, mut est_sum, mut bound_sum) = (0f64, 0f64, 0f64);
        let f = |tail| BaseFormat::TopK { k: 16, tail, dtype: LogProbType::F16 };
        let (mut est, mut bound) = (BaseLogits::new(f(64), n, 4, None), BaseLogits::new(f(0), n, 4, None));
        let mut mask = vec![false; n];
        for r in 0..rows {
            let base = rng.logits(n, 16.0);
            let model: Vec<f32> = base.iter().map(|&v| v + ((rng.next() - 0.5) * 1.5) as f32).collect();
            exact_sum += exact(&base, &model);
            let lse = logsumexp(&model);
            est.push_row(&base, 0, &mut mask);
            bound.push_row(&base, 0, &mut mask);
            let e = est.compare_row(r, &model, lse, 0, &mut mask).kl;
            assert!(e >= 0.0, "row {r}: {e}");
            est_sum += e;
            bound_sum += bound.compare_row(r, &model, lse, 0, &mut mask).kl;
        }
        let rel = (est_sum - exact_sum).abs() / exact_sum;
        assert!(rel < 0.03, "sampled tail {est_sum} vs exact {exact_sum} ({rel})");
        assert!(bound_sum < 0.9 * exact_sum, "the merged bound {bound_sum} is well below {exact_sum} here");
    }

    #[test]
    fn topk_keeps_top_token_and_target_exact() {
        let logits = [0.5f32, 3.0, 3.0, -1.0, 2.0];
        assert_eq!(top_k(&logits, 3), vec![1, 2, 4]);
        let r = topk_kl(&logits, &logits, 2, LogProbType::F32);
        assert_eq!(r.base_top, 1);
        assert!(r.kl.abs() < 1e-9);
        let lse = logsumexp(&logits);
        assert!((r.base_lp_target - (3.0 - lse)).abs() < 1e-6);
    }

    fn sample(format: BaseFormat, vocab: usize, bos: Option<u32>) -> BaseLogits {
        let mut rng = Rng(7);
        let ctx = 8;
        let mut b = BaseLogits::new(format, vocab, ctx, bos);
        let mut mask = vec![false; vocab];
        for _chunk in 0..2 {
            b.tokens.extend((0..ctx).map(|_| (rng.next() * vocab as f64) as u32));
            for _ in 0..b.per_chunk() {
                let l = rng.logits(vocab, 20.0);
                b.push_row(&l, 3, &mut mask);
            }
        }
        b
    }

    #[test]
    fn every_format_round_trips() {
        let t = tempfile::tempdir().expect("tmp");
        for (i, f) in [
            BaseFormat::Full,
            BaseFormat::TopK { k: 5, tail: 0, dtype: LogProbType::F32 },
            BaseFormat::TopK { k: 7, tail: 0, dtype: LogProbType::F16 },
            BaseFormat::TopK { k: 3, tail: 6, dtype: LogProbType::F16 },
            BaseFormat::Llama,
        ]
        .into_iter()
        .enumerate()
        {
            for vocab in [33, 34] {
                let b = sample(f, vocab, Some(1));
                let p = t.path().join(format!("b{i}-{vocab}"));
                b.write(&p).expect("write");
                let len = std::fs::metadata(&p).expect("meta").len() as usize;
                let head = match f {
                    BaseFormat::TopK { .. } => HEAD2,
                    _ => 20,
                };
                assert_eq!(len, head + 4 * 16 + 2 * 3 * f.bytes_per_position(vocab), "{f:?} size");
                let mut r = BaseLogits::read(&p).expect("read");
                assert_eq!(r.rows, b.rows, "{f:?}");
                assert_eq!(r.format(), f);
                // QKLOGIT files hold the evaluated tokens; llama.cpp's the text's (BOS from the model).
                if f == BaseFormat::Llama {
                    assert_eq!(r.tokens, b.tokens);
                    r.bos = b.bos;
                }
                assert_eq!(
                    (0..2).map(|c| r.chunk(c)).collect::<Vec<_>>(),
                    (0..2).map(|c| b.chunk(c)).collect::<Vec<_>>()
                );
                // Every truncation is refused, with the file named; so is a byte more.
                let bytes = std::fs::read(&p).expect("r");
                for cut in [0, 7, 8, 12, 19, 20, 27, 30, len - 1] {
                    let e = BaseLogits::from_bytes(&bytes[..cut], &p).expect_err("truncated");
                    assert!(e.to_string().contains(&format!("b{i}-{vocab}")), "{e}");
                }
                let mut longer = bytes.clone();
                longer.push(0);
                BaseLogits::from_bytes(&longer, &p).expect_err("trailing byte");
            }
        }
    }

    #[test]
    fn llama_rows_decode_to_log_probs() {
        let logits = [1.0f32, -2.0, 0.5, -30.0, 4.0];
        let mut row = vec![];
        llama_row(&logits, &mut row);
        assert_eq!(row.len(), llama_nv(5));
        let (scale, min) = llama_row_floats(&row);
        let lse = logsumexp(&logits);
        for (i, &v) in logits.iter().enumerate() {
            let lp = scale * row[4 + i] as f32 + min;
            let want = (v as f64 - lse).max(4.0 - 16.0 - lse) as f32;
            assert!((lp - want).abs() < 2e-4, "{i}: {lp} vs {want}");
        }
        // A flat row: scale 0, every code 0.
        let mut flat = vec![];
        llama_row(&[2.0; 3], &mut flat);
        assert_eq!(llama_row_floats(&flat).0, 0.0);
        assert!(flat[4..].iter().all(|&c| c == 0));
    }

    fn header_damage(bytes: &[u8], off: usize, v: u32) -> Vec<u8> {
        let mut b = bytes.to_vec();
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn hostile_headers_and_rows_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let p = t.path().join("base.bin");
        let check = |b: &[u8], needle: &str| {
            let e = BaseLogits::from_bytes(b, &p).expect_err(needle).to_string();
            assert!(e.contains("base.bin") && e.contains(needle), "{needle}: {e}");
        };
        let topk = sample(BaseFormat::TopK { k: 4, tail: 0, dtype: LogProbType::F32 }, 40, None);
        topk.write(&p).expect("w");
        let b = std::fs::read(&p).expect("r");
        check(&header_damage(&b, 8, 0), "vocabulary size 0");
        check(&header_damage(&b, 8, u32::MAX), "vocabulary size");
        check(&header_damage(&b, 12, 2), "context 2");
        check(&header_damage(&b, 16, 9), "whole");
        check(&header_damage(&b, 16, u32::MAX - 7), "the header implies");
        check(&header_damage(&b, 20, 41), "top-k 41");
        check(&header_damage(&b, 24, 7), "log-probability type");
        check(&header_damage(&b, HEAD2, 40), "outside the vocabulary");
        check(&header_damage(&b, 28, 3), "the header implies");
        check(&header_damage(&b, 28, u32::MAX), "tail samples");
        let row0 = HEAD2 + 4 * 16;
        check(&header_damage(&b, row0, 999), "outside the vocabulary");
        let dup = {
            let id = u32::from_le_bytes(b[row0..row0 + 4].try_into().expect("4"));
            header_damage(&b, row0 + 4, id)
        };
        check(&dup, "twice");
        check(&header_damage(&b, row0 + 16, f32::NAN.to_bits()), "not finite");
        check(&header_damage(&b, row0 + 20, 0.0f32.to_bits()), "decreasing");
        check(&header_damage(&b, row0 + 32, f32::INFINITY.to_bits()), "not finite");
        check(&header_damage(&b, row0 + 36, 2.0f32.to_bits()), "rest mass");
        check(&header_damage(&b, row0 + 36, f32::NAN.to_bits()), "rest mass");
        check(b"QKLOGIT9xxxxxxxxxxxxxxxxxxxxxxxxx", "not a base-logits file");
        let tailed = sample(BaseFormat::TopK { k: 2, tail: 3, dtype: LogProbType::F32 }, 40, None);
        tailed.write(&p).expect("w");
        let b = std::fs::read(&p).expect("r");
        let row0 = HEAD2 + 4 * 16;
        let top0 = u32::from_le_bytes(b[row0..row0 + 4].try_into().expect("4"));
        check(&header_damage(&b, row0 + 8, top0), "tail sample is one of the top k");
        check(&header_damage(&b, row0 + 12, 77), "outside the vocabulary");
        check(&header_damage(&b, row0 + 20 + 8, f32::NAN.to_bits()), "not finite");
        check(&header_damage(&b, 20, 40), "whole vocabulary");

        let llama = sample(BaseFormat::Llama, 40, None);
        llama.write(&p).expect("w");
        let b = std::fs::read(&p).expect("r");
        check(&header_damage(&b, 12, (-5i32) as u32), "n_vocab -5");
        check(&header_damage(&b, 16, 0), "n_chunk 0");
        check(&header_damage(&b, 8, u32::MAX), "context");
        check(&header_damage(&b, 8, 1 << 23), "bytes, the header implies");
        check(&header_damage(&b, 16, i32::MAX as u32), "bytes, the header implies");
        check(&header_damage(&b, 20, (-1i32) as u32), "token id -1");
        let row0 = 20 + 4 * 16;
        check(&header_damage(&b, row0, f32::NAN.to_bits()), "not finite");
        check(&header_damage(&b, row0 + 4, f32::INFINITY.to_bits()), "not finite");
        check(&header_damage(&b, row0 + 4, 5.0f32.to_bits()), "out of range");

        let full = sample(BaseFormat::Full, 40, None);
        full.write(&p).expect("w");
        let b = std::fs::read(&p).expect("r");
        check(&header_damage(&b, 8, u32::MAX), "vocabulary size");
        check(&header_damage(&b, 12, 0), "context 0");
        check(&header_damage(&b, 20, 40), "outside the vocabulary");
    }
}

#[cfg(test)]
mod seeds {
    /// The fuzz seeds are written by `scripts/fuzz_seeds.py` from the format descriptions, by hand
    /// (not by this code): every one must parse, and to the values the script put there.
    #[test]
    fn hand_made_files_parse() {
        use super::*;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus/base_logits");
        let mut formats = vec![];
        for e in std::fs::read_dir(&dir).expect("seeds") {
            let p = e.expect("entry").path();
            let b = BaseLogits::read(&p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((b.vocab, b.ctx, b.chunks(), b.per_chunk()), (5, 4, 2, 1), "{}", p.display());
            // Every format's rows say the same thing: compare each with a flat model row.
            let row = [0f32; 5];
            let mut mask = [false; 5];
            let kl: Vec<f64> = (0..2)
                .map(|r| b.compare_row(r, &row, 5f64.ln(), b.tokens[4 * r + 3] as usize, &mut mask).kl)
                .collect();
            formats.push((b.format(), kl));
        }
        formats.sort_by_key(|(f, _)| format!("{f:?}"));
        let full = &formats.iter().find(|(f, _)| *f == BaseFormat::Full).expect("full").1;
        for (f, kl) in &formats {
            for (a, b) in kl.iter().zip(full) {
                let tol = if matches!(f, BaseFormat::TopK { k: 2, .. }) { b.abs() + 1e-3 } else { 2e-3 };
                assert!((a - b).abs() <= tol, "{f:?}: {a} vs full {b}");
            }
        }
        assert_eq!(formats.len(), 5);
    }
}
