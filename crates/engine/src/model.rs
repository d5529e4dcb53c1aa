//! The Llama-family forward pass (Llama 2/3, Mistral, Qwen2, SmolLM) in f32: token embedding (tied
//! or not), RMSNorm, RoPE (default, linear, Llama 3), grouped-query attention over a KV cache,
//! SwiGLU MLP, q/k/v biases, LM head.
//!
//! Weights come from a [`ModelSource`](quantkit_io::source::ModelSource) in GGUF layout: for
//! `llama`-type models the q/k rows are in llama.cpp's permuted order, so RoPE rotates interleaved
//! pairs (`x[2i]`, `x[2i+1]`) — the same maths as HF's rotate-half on unpermuted rows; Qwen2 keeps
//! HF order and rotates (`x[i]`, `x[i+d/2]`).
//!
//! This file holds the model's types and the forward pass; `model/load.rs` reads the weights and
//! RoPE frequencies from a source, `model/attention.rs` is causal grouped-query attention (GEMMs
//! for prefill, per-head dot products for decode), and `model/ops.rs` the element-wise maths
//! (RMSNorm, RoPE, SwiGLU, a vectorisable `exp`) with its run-time vector-width choice.

mod attention;
pub(crate) mod load;
mod ops;

use quantkit_core::{Error, Result};
use quantkit_io::config::ModelConfig;
use quantkit_kernels::QMatrix;

use crate::linear::{forward_group, Linear, QLinear};

use attention::attention_few;
pub(crate) use attention::{attention, Dims};
pub use ops::exp_in_place;
pub(crate) use ops::{rmsnorm, swiglu};

/// Where an [`Observer`] sees activations: the input of each group of linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Input of attn_q, attn_k and attn_v (the normed hidden state).
    AttnIn,
    /// Input of attn_output (the attention result).
    AttnOut,
    /// Input of ffn_gate and ffn_up.
    FfnIn,
    /// Input of ffn_down (silu(gate)·up).
    FfnDownIn,
}

/// Calibration hook: called with `n_tokens` rows of a linear layer's input as they are computed;
/// nothing is kept by the engine.
pub trait Observer: Send {
    fn observe(&mut self, layer: usize, site: Site, x: &[f32], n_tokens: usize);
}

pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) q: QLinear,
    pub(crate) k: QLinear,
    pub(crate) v: QLinear,
    pub(crate) o: QLinear,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) gate: QLinear,
    pub(crate) up: QLinear,
    pub(crate) down: QLinear,
}

impl Layer {
    /// The seven projections, in file order.
    pub(crate) fn linears(&self) -> [&QLinear; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
    pub(crate) fn linears_mut(&mut self) -> [&mut QLinear; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }
}

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// In their stored format (a GGUF's bytes, memory-mapped, never copied), run by the fused
    /// dequant-matmul kernels. Unquantized HF checkpoints are held as f32.
    #[default]
    Native,
    /// Every weight dequantized to f32 at load: the reference path the kernels are checked
    /// against (`--dequantize` on the CLI).
    Dequantized,
}

/// A loaded model.
pub struct Model {
    pub cfg: ModelConfig,
    /// Token embeddings `[vocab × hidden]` in their stored format (rows dequantized on lookup).
    pub(crate) embed: QMatrix,
    pub(crate) layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: QLinear,
    mode: WeightMode,
    /// Per rotated pair: the angle per position.
    inv_freq: Vec<f32>,
    /// Interleaved pairs (llama-permuted weights) or halves (Qwen2).
    interleaved: bool,
    /// QuaRot's online R4: `ffn_down`'s input is rotated by it (the file says so; its inverse is
    /// fused into `ffn_down`).
    r4: Option<quantkit_rotate::Hadamard>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Keys and values of the positions seen so far, per layer.
#[derive(Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    cap: usize,
    row: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.cap * self.row * 4
    }
}

impl Model {
    pub fn vocab_size(&self) -> usize {
        self.lm_head.out_features()
    }

    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }

    /// Bytes of weights read per generated token (every linear layer, the LM head and one
    /// embedding row): what decode speed is bounded by.
    pub fn weight_bytes_per_token(&self) -> u64 {
        let lin = |l: &QLinear| l.stored_bytes();
        let layers: u64 = self.layers.iter().flat_map(Layer::linears).map(lin).sum();
        layers + lin(&self.lm_head) + self.embed.row_bytes as u64
    }

    /// Weight types and how many matrices use each (for reports).
    pub fn weight_types(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for x in self.layers.iter().flat_map(Layer::linears).chain([&self.lm_head]) {
            *m.entry(x.type_name()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// `ffn_down`'s input from gate and up (`g ← silu(g)·u`), rotated by the online R4 when the
    /// model has one.
    pub(crate) fn down_input(&self, g: &mut [f32], u: &[f32]) {
        swiglu(g, u);
        if let Some(r4) = &self.r4 {
            use quantkit_rotate::Rotation;
            r4.apply_rows(g);
        }
    }

    /// An empty cache for up to `cap` positions.
    pub fn new_cache(&self, cap: usize) -> KvCache {
        let row = (self.cfg.n_kv_heads * self.cfg.head_dim) as usize;
        let nl = self.layers.len();
        KvCache { k: vec![vec![0.0; cap * row]; nl], v: vec![vec![0.0; cap * row]; nl], len: 0, cap, row }
    }

    /// Run `tokens` (appended after what `cache` holds) and return the logits of the positions
    /// `logits_from..tokens.len()` of this call, row-major `[rows × vocab]`.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        // Run the whole step on a pool thread: the kernels' fork/joins are then local to the pool
        // (one cross-thread hand-off per call, not one per matrix).
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            return rayon::scope(|_| self.forward_inner(tokens, cache, logits_from, observer));
        }
        self.forward_inner(tokens, cache, logits_from, observer)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits_from: usize,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        let c = &self.cfg;
        let (h, nh, nkv, hd) =
            (c.hidden_size as usize, c.n_heads as usize, c.n_kv_heads as usize, c.head_dim as usize);
        let ffn = c.intermediate_size as usize;
        let eps = c.rms_norm_eps as f32;
        let vocab = self.embed.rows;
        if cache.len + n > cache.cap {
            return Err(Error::Invalid(format!(
                "{} positions do not fit the context of {} (already {} in the cache)",
                n, cache.cap, cache.len
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!("token id {bad} is outside the vocabulary ({vocab})")));
        }
        let pos0 = cache.len;
        let mut x = vec![0f32; n * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            self.embed.dequantize_rows(t as usize, t as usize + 1, row);
        }
        let mut xn = vec![0f32; n * h];
        let (mut q, mut k, mut v) =
            (vec![0f32; n * nh * hd], vec![0f32; n * nkv * hd], vec![0f32; n * nkv * hd]);
        let mut att = vec![0f32; n * nh * hd];
        let mut tmp = vec![0f32; n * h];
        let (mut g, mut u) = (vec![0f32; n * ffn], vec![0f32; n * ffn]);
        let scale = 1.0 / (hd as f32).sqrt();
        let table = self.rope_table(pos0, n);
        for (li, l) in self.layers.iter().enumerate() {
            rmsnorm(&x, &l.attn_norm, eps, &mut xn);
            if let Some(o) = observer.as_deref_mut() {
                o.observe(li, Site::AttnIn, &xn, n);
            }
            forward_group(&[&l.q, &l.k, &l.v], &xn, n, &mut [&mut q, &mut k, &mut v]);
            self.rope(&mut q, nh, &table);
            self.rope(&mut k, nkv, &table);
            let row = nkv * hd;
            cache.k[li][pos0 * row..(pos0 + n) * row].copy_from_slice(&k);
            cache.v[li][pos0 * row..(pos0 + n) * row].copy_from_slice(&v);
            let (kc, vc) = (&cache.k[li][..(pos0 + n) * row], &cache.v[li][..(pos0 + n) * row]);
            let dims = Dims { n, pos0, nh, nkv, hd, scale };
            if n <= quantkit_kernels::MAX_GEMV_TOKENS {
                attention_few(&q, kc, vc, &mut att, dims);
            } else {
                attention(&q, kc, vc, &mut att, dims);
            }
            if let Some(o) = observer.as_deref_mut() {
                o.observe(li, Site::AttnOut, &att, n);
            }
            l.o.forward(&att, n, &mut tmp);
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
            rmsnorm(&x, &l.ffn_norm, eps, &mut xn);
            if let Some(o) = observer.as_deref_mut() {
                o.observe(li, Site::FfnIn, &xn, n);
            }
            forward_group(&[&l.gate, &l.up], &xn, n, &mut [&mut g, &mut u]);
            self.down_input(&mut g, &u);
            if let Some(o) = observer.as_deref_mut() {
                o.observe(li, Site::FfnDownIn, &g, n);
            }
            l.down.forward(&g, n, &mut tmp);
            for (a, b) in x.iter_mut().zip(&tmp) {
                *a += b;
            }
        }
        cache.len += n;
        let from = logits_from.min(n);
        let rows = n - from;
        let mut out_norm = vec![0f32; rows * h];
        rmsnorm(&x[from * h..], &self.norm, eps, &mut out_norm);
        let mut logits = vec![0f32; rows * self.vocab_size()];
        if rows > 0 {
            self.lm_head.forward(&out_norm, rows, &mut logits);
        }
        Ok(logits)
    }
}
