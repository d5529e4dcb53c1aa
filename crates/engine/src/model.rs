//! The Llama-family forward pass (Llama 2/3, Mistral, Qwen2, SmolLM) in f32: token embedding (tied
//! or not), RMSNorm, RoPE (default, linear, Llama 3), grouped-query attention over a KV cache,
//! SwiGLU MLP, q/k/v biases, LM head.
//!
//! Weights come from a [`ModelSource`] in GGUF layout: for `llama`-type models the q/k rows are in
//! llama.cpp's permuted order, so RoPE rotates interleaved pairs (x[2i], x[2i+1]) — the same maths
//! as HF's rotate-half on unpermuted rows; Qwen2 keeps HF order and rotates (x[i], x[i+d/2]).

use std::sync::Arc;

use quantkit_core::{Error, Result};
use quantkit_io::config::{ModelConfig, RopeScaling};
use quantkit_io::source::{ModelSource, SourceTensor};
use rayon::prelude::*;

use quantkit_core::GgmlType;
use quantkit_kernels::{QMatrix, WeightBytes};

use crate::linear::{forward_group, Linear, QLinear};

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

pub(crate) fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    let one = |(o, xr): (&mut [f32], &[f32])| {
        let ss: f64 = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let r = 1.0 / ((ss / d as f64) as f32 + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(xr).zip(w) {
            *o = g * (v * r);
        }
    };
    if x.len() <= SEQUENTIAL {
        out.chunks_mut(d).zip(x.chunks(d)).for_each(one);
    } else {
        out.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(one);
    }
}

/// Element-wise work below this many values runs on the calling thread (a fork/join costs more).
const SEQUENTIAL: usize = 1 << 14;

impl Model {
    /// Load a model with its weights in their stored format ([`WeightMode::Native`]).
    pub fn load(src: &ModelSource) -> Result<Self> {
        Self::load_with(src, WeightMode::Native)
    }

    pub fn load_with(src: &ModelSource, mode: WeightMode) -> Result<Self> {
        let cfg = src.config().clone();
        if let Some(RopeScaling::Yarn { .. }) = cfg.rope_scaling {
            return Err(Error::Unsupported("YaRN RoPE scaling in the engine".into()));
        }
        let tensors = src.tensors()?;
        let find = |name: &str| -> Result<&SourceTensor> {
            tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor {
                path: src.path(),
                tensor: name.to_string(),
                hint: String::new(),
            })
        };
        // Read a tensor as f32 and drop the source's mapped pages behind it (RSS ≈ the f32 copy).
        let read = |t: &SourceTensor| -> Result<Vec<f32>> {
            let v = src.read(t)?;
            src.release_rows(t, 0, t.rows());
            Ok(v)
        };
        // GGUF weights stay in the file's bytes: one shared read-only map of the whole file.
        let map: Option<Arc<memmap2::Mmap>> = match (mode, src) {
            (WeightMode::Native, ModelSource::Gguf { file, .. }) => {
                let f = std::fs::File::open(file.path()).map_err(|e| Error::io(file.path(), e))?;
                // SAFETY: read-only map; see GgufFile::open on files changed underneath.
                Some(Arc::new(unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file.path(), e))?))
            }
            _ => None,
        };
        let matrix = |t: &SourceTensor| -> Result<QMatrix> {
            let (cols, rows) = (t.row_len(), t.rows());
            let bad = |e: Error| Error::bad_tensor(&t.name, e.to_string());
            if let (Some(map), ModelSource::Gguf { file, .. }) = (&map, src) {
                let info =
                    file.tensor(&t.name).ok_or_else(|| bad(Error::Invalid("not in the file".into())))?;
                let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = map.clone();
                let start = (file.data_offset() + info.offset) as usize;
                let bytes = WeightBytes::new(owner, start, info.size as usize).map_err(bad)?;
                return QMatrix::new(info.ty, rows, cols, bytes).map_err(bad);
            }
            let v = read(t)?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            QMatrix::new(GgmlType::F32, rows, cols, WeightBytes::owned(bytes)).map_err(bad)
        };
        let vec = |name: &str| -> Result<Vec<f32>> { read(find(name)?) };
        let linear = |name: &str| -> Result<QLinear> {
            let t = find(name)?;
            let bias_name = name.replace(".weight", ".bias");
            let bias = match tensors.iter().find(|t| t.name == bias_name) {
                Some(b) => Some(read(b)?),
                None => None,
            };
            Ok(QLinear { m: matrix(t)?, bias })
        };
        let embed = matrix(find("token_embd.weight")?)?;
        let mut layers = Vec::with_capacity(cfg.num_layers as usize);
        for l in 0..cfg.num_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(Layer {
                attn_norm: vec(&n("attn_norm"))?,
                q: linear(&n("attn_q"))?,
                k: linear(&n("attn_k"))?,
                v: linear(&n("attn_v"))?,
                o: linear(&n("attn_output"))?,
                ffn_norm: vec(&n("ffn_norm"))?,
                gate: linear(&n("ffn_gate"))?,
                up: linear(&n("ffn_up"))?,
                down: linear(&n("ffn_down"))?,
            });
        }
        let h = cfg.hidden_size as usize;
        if embed.cols != h {
            return Err(Error::bad_tensor(
                "token_embd.weight",
                format!("rows of {} but hidden size {h}", embed.cols),
            ));
        }
        let lm_head = if tensors.iter().any(|t| t.name == "output.weight") {
            linear("output.weight")?
        } else {
            QLinear { m: embed.clone(), bias: None }
        };
        let hd = cfg.head_dim as usize;
        let factors = cfg.llama3_rope_factors();
        let linear = match cfg.rope_scaling {
            Some(RopeScaling::Linear { factor }) => factor as f32,
            _ => 1.0,
        };
        let inv_freq = (0..hd / 2)
            .map(|i| {
                let f = 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32);
                let f = f / linear;
                match &factors {
                    Some(fa) => f / fa[i],
                    None => f,
                }
            })
            .collect();
        Ok(Model {
            mode,
            interleaved: cfg.arch.permutes_qk(),
            norm: vec("output_norm.weight")?,
            cfg,
            embed,
            layers,
            lm_head,
            inv_freq,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.lm_head.out_features()
    }

    pub fn weight_mode(&self) -> WeightMode {
        self.mode
    }

    /// Bytes of weights read per generated token (every linear layer, the LM head and one
    /// embedding row): what decode speed is bounded by.
    pub fn weight_bytes_per_token(&self) -> u64 {
        let lin = |l: &QLinear| l.m.bytes().len() as u64;
        let layers: u64 = self.layers.iter().flat_map(Layer::linears).map(lin).sum();
        layers + lin(&self.lm_head) + self.embed.row_bytes as u64
    }

    /// Weight types and how many matrices use each (for reports).
    pub fn weight_types(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for x in self.layers.iter().flat_map(Layer::linears).chain([&self.lm_head]) {
            *m.entry(x.m.ty.name().to_string()).or_default() += 1;
        }
        m.into_iter().collect()
    }

    /// An empty cache for up to `cap` positions.
    pub fn new_cache(&self, cap: usize) -> KvCache {
        let row = (self.cfg.n_kv_heads * self.cfg.head_dim) as usize;
        let nl = self.layers.len();
        KvCache { k: vec![vec![0.0; cap * row]; nl], v: vec![vec![0.0; cap * row]; nl], len: 0, cap, row }
    }

    /// cos/sin of every rotated pair at positions `pos0..pos0 + n` (computed once per call, shared
    /// by all layers and heads).
    pub(crate) fn rope_table(&self, pos0: usize, n: usize) -> Vec<(f32, f32)> {
        let half = self.inv_freq.len();
        let mut t = Vec::with_capacity(n * half);
        for p in pos0..pos0 + n {
            for &f in &self.inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                t.push((c, s));
            }
        }
        t
    }

    pub(crate) fn rope(&self, x: &mut [f32], n_heads: usize, table: &[(f32, f32)]) {
        let hd = self.cfg.head_dim as usize;
        let half = hd / 2;
        let one = |(t, row): (usize, &mut [f32])| {
            let cs = &table[t * half..(t + 1) * half];
            for head in row.chunks_exact_mut(hd) {
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        };
        if x.len() <= SEQUENTIAL {
            x.chunks_mut(n_heads * hd).enumerate().for_each(one);
        } else {
            x.par_chunks_mut(n_heads * hd).enumerate().for_each(one);
        }
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
            swiglu(&mut g, &u);
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

/// Defines `$name(args)`: `$body` (an `#[inline(always)]` element-wise function) compiled for the
/// widest vectors this CPU has (AVX-512 or AVX2; the engine is otherwise built for baseline
/// x86-64), chosen at run time. No fused multiply-adds are formed (Rust never contracts), so
/// every variant gives the same bits.
macro_rules! wide {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,avx2")]
                unsafe fn avx512($($a: $t),*) {
                    $body($($a),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($a: $t),*) {
                    $body($($a),*)
                }
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512bw")
                {
                    // SAFETY: the CPU has the features.
                    return unsafe { avx512($($a),*) };
                }
                if is_x86_feature_detected!("avx2") {
                    // SAFETY: as above.
                    return unsafe { avx2($($a),*) };
                }
            }
            $body($($a),*)
        }
    };
}

/// `g ← silu(g)·u`, element-wise.
pub(crate) fn swiglu(g: &mut [f32], u: &[f32]) {
    let one = |(gc, uc): (&mut [f32], &[f32])| swiglu_chunk(gc, uc);
    if g.len() <= SEQUENTIAL {
        g.chunks_mut(4096).zip(u.chunks(4096)).for_each(one);
    } else {
        g.par_chunks_mut(4096).zip(u.par_chunks(4096)).for_each(one);
    }
}

wide!(fn swiglu_chunk(gc: &mut [f32], uc: &[f32]) => swiglu_body);

#[inline(always)]
fn swiglu_body(gc: &mut [f32], uc: &[f32]) {
    let mut e = [0f32; 4096];
    let e = &mut e[..gc.len()];
    for (ei, gi) in e.iter_mut().zip(gc.iter()) {
        *ei = -gi;
    }
    exp_body(e);
    for ((gi, ui), ei) in gc.iter_mut().zip(uc).zip(e.iter()) {
        *gi = *gi / (1.0 + ei) * ui;
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) n: usize,
    pub(crate) pos0: usize,
    pub(crate) nh: usize,
    pub(crate) nkv: usize,
    pub(crate) hd: usize,
    pub(crate) scale: f32,
}

/// Causal grouped-query attention of `n` new positions over `pos0 + n` cached ones, per head as
/// two GEMMs (scores = Q·Kᵀ, out = softmax(scores)·V) through faer.
pub(crate) fn attention(q: &[f32], kc: &[f32], vc: &[f32], out: &mut [f32], d: Dims) {
    use faer::{Accum, MatMut, MatRef, Par};
    let Dims { n, pos0, nh, nkv, hd, scale } = d;
    let len = pos0 + n;
    let row = nkv * hd;
    let group = nh / nkv;
    let head = |h: usize| {
        let kvh = h / group;
        let qh = MatRef::from_row_major_slice_with_stride(&q[h * hd..], n, hd, nh * hd);
        let kh = MatRef::from_row_major_slice_with_stride(&kc[kvh * hd..], len, hd, row);
        let vh = MatRef::from_row_major_slice_with_stride(&vc[kvh * hd..], len, hd, row);
        let mut s = vec![0f32; n * len];
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut s, n, len),
            Accum::Replace,
            qh,
            kh.transpose(),
            scale,
            Par::Seq,
        );
        for (t, r) in s.chunks_exact_mut(len).enumerate() {
            let visible = pos0 + t + 1;
            let max = r[..visible].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            for v in r[..visible].iter_mut() {
                *v -= max;
            }
            exp_in_place(&mut r[..visible]);
            let sum: f32 = r[..visible].iter().sum();
            let inv = 1.0 / sum;
            for v in r[..visible].iter_mut() {
                *v *= inv;
            }
            r[visible..].fill(0.0);
        }
        let mut o = vec![0f32; n * hd];
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(&mut o, n, hd),
            Accum::Replace,
            MatRef::from_row_major_slice(&s, n, len),
            vh,
            1.0f32,
            Par::Seq,
        );
        o
    };
    let heads: Vec<Vec<f32>> = if n * len * hd * nh <= SEQUENTIAL * 4 {
        (0..nh).map(head).collect()
    } else {
        (0..nh).into_par_iter().map(head).collect()
    };
    for (h, o) in heads.iter().enumerate() {
        for t in 0..n {
            out[(t * nh + h) * hd..(t * nh + h + 1) * hd].copy_from_slice(&o[t * hd..(t + 1) * hd]);
        }
    }
}

/// Attention for a few new positions (decode): per head, dot products over the cache, a
/// max-subtracted softmax and the weighted sum of values — the maths of [`attention`] without
/// faer's per-call set-up, KV heads spread over the decode pool. Each head's output depends only
/// on its own inputs, so the result is the same whatever the thread count.
pub(crate) fn attention_few(q: &[f32], kc: &[f32], vc: &[f32], out: &mut [f32], d: Dims) {
    let Dims { n, pos0, nh, nkv, hd, scale } = d;
    let (row, group, len) = (nkv * hd, nh / nkv, pos0 + n);
    assert!(out.len() >= n * nh * hd && q.len() >= n * nh * hd && kc.len() >= len * row);
    struct Out(*mut f32);
    // SAFETY: each task writes the disjoint slices of its own head.
    unsafe impl Sync for Out {}
    impl Out {
        fn at(&self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }
    let o = Out(out.as_mut_ptr());
    // One task per KV head: its `group` query heads share each K and V row it reads.
    let kv_head = |kvh: usize| {
        let mut s = vec![0f32; group * len];
        let mut acc = vec![0f32; group * hd];
        for t in 0..n {
            let visible = pos0 + t + 1;
            let qrow = |g: usize| {
                let h = kvh * group + g;
                &q[(t * nh + h) * hd..(t * nh + h + 1) * hd]
            };
            for j in 0..visible {
                prefetch(kc, (j + 8) * row + kvh * hd, hd);
                let kr = &kc[j * row + kvh * hd..j * row + (kvh + 1) * hd];
                for g in 0..group {
                    s[g * len + j] = dot(qrow(g), kr) * scale;
                }
            }
            for g in 0..group {
                let sg = &mut s[g * len..g * len + visible];
                let max = sg.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for v in sg.iter_mut() {
                    *v -= max;
                }
                exp_in_place(sg);
                let inv = 1.0 / sg.iter().sum::<f32>();
                for v in sg.iter_mut() {
                    *v *= inv;
                }
            }
            acc.fill(0.0);
            for j in 0..visible {
                prefetch(vc, (j + 8) * row + kvh * hd, hd);
                let vr = &vc[j * row + kvh * hd..j * row + (kvh + 1) * hd];
                for (g, ag) in acc.chunks_exact_mut(hd).enumerate() {
                    let p = s[g * len + j];
                    for (a, v) in ag.iter_mut().zip(vr) {
                        *a += p * v;
                    }
                }
            }
            for (g, ag) in acc.chunks_exact(hd).enumerate() {
                let h = kvh * group + g;
                // SAFETY: rows (t, h) of `out` for this KV head's query heads belong to this task
                // alone; in bounds (assert above).
                let dst = unsafe { std::slice::from_raw_parts_mut(o.at((t * nh + h) * hd), hd) };
                dst.copy_from_slice(ag);
            }
        }
    };
    quantkit_kernels::pool::pool().run(nkv, &kv_head);
}

/// Ask for `v[at..at + len]` to be brought into the cache (a hint; nothing past `v`'s end).
#[inline(always)]
fn prefetch(v: &[f32], at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut i = at;
        while i < (at + len).min(v.len()) {
            // SAFETY: in bounds; a prefetch has no architectural effect.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i).cast()) };
            i += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, at, len);
}

/// `Σ aᵢbᵢ` in 16 interleaved partial sums (vectorisable; fixed order).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

wide!(
    /// `x ← exp(x)` for a slice, vectorisable (no libm call): range reduction by ln 2 in two parts and
    /// a degree-6 polynomial (Cephes `expf`), relative error ≈ 1e-7; inputs below −87 give 0.
    pub fn exp_in_place(x: &mut [f32]) => exp_body
);

#[inline(always)]
fn exp_body(x: &mut [f32]) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    for v in x.iter_mut() {
        let xv = *v;
        // max/min (not clamp) so that NaN becomes a finite stand-in here and is put back below:
        // the integer conversions then never see NaN.
        let a = xv.max(-87.0).min(88.0);
        // floor without a libm call
        let t = a * LOG2E + 0.5;
        // SAFETY: t ∈ [−125, 128], finite: the conversion is exact truncation.
        let ti: i32 = unsafe { t.to_int_unchecked() };
        let nf = (ti - ((ti as f32) > t) as i32) as f32;
        let r = a - nf * C1 - nf * C2;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        // SAFETY: nf is a small integer.
        let ni: i32 = unsafe { nf.to_int_unchecked() };
        let bits = ((ni + 127) as u32) << 23;
        let e = y * f32::from_bits(bits);
        *v = if xv < -87.0 {
            0.0
        } else if xv.is_nan() {
            xv
        } else {
            e
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0f64;
        let xs: Vec<f32> = (-9000..=8700).map(|i| i as f32 * 0.01 + 0.003).collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (x, y) in xs.iter().zip(&ys) {
            let want = (*x as f64).exp();
            if want > 1e-30 {
                worst = worst.max(((*y as f64) - want).abs() / want);
            }
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        let mut z = [-1000.0f32, -87.5, 0.0];
        exp_in_place(&mut z);
        assert_eq!(z, [0.0, 0.0, 1.0]);
        let mut z = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        exp_in_place(&mut z);
        assert!(z[0].is_nan() && z[1].is_finite() && z[1] > 1e38 && z[2] == 0.0, "{z:?}");
        // The wide (AVX-512/AVX2) and baseline builds agree bit for bit.
        let mut a = xs.clone();
        exp_body(&mut a);
        assert!(a.iter().zip(&ys).all(|(p, q)| p.to_bits() == q.to_bits()));
    }
}
