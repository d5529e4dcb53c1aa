//! Layer-sequential execution for calibration: the engine runs one block at a time over a batch of
//! calibration sequences, stage by stage, and lets a [`BlockHook`] see every linear group's input
//! and replace the block's weights between stages. Only the residual stream of the batch (and the
//! block's intermediate results) is held, never activations of other blocks.
//!
//! Per block the stages are (each over every sample, then a hook call):
//!
//! 1. `AttnIn`: the normed input of q/k/v → [`BlockHook::update`]
//! 2. `AttnOut`: attention of the (possibly updated) q/k/v → update
//! 3. `FfnIn`: `h = x + o(attention)`, normed → update
//! 4. `FfnDownIn`: `silu(gate)·up` → update, then [`BlockHook::finish`]
//! 5. the block's output `h + down(...)` with the final weights becomes the next block's input
//!    (if `finish` changed an attention weight, the whole block is recomputed).
//!
//! A hook that quantizes a group in its `update` (GPTQ) therefore gets true-sequential statistics:
//! each group's inputs come from the already-quantized groups before it, in this block and in all
//! earlier ones.

use quantkit_core::{Error, GgmlType, Result};
use quantkit_io::source::ModelSource;
use quantkit_kernels::{QMatrix, WeightBytes};

use crate::linear::{forward_group, Linear, QLinear};
use crate::model::{attention, rmsnorm, Dims, Model, Site};

/// One of a block's seven projections (the names table is `quantkit_io::names`).
pub use quantkit_io::names::Proj;

impl Site {
    /// In execution order.
    pub const ALL: [Site; 4] = [Site::AttnIn, Site::AttnOut, Site::FfnIn, Site::FfnDownIn];

    /// Where `p`'s input is observed.
    pub fn of(p: Proj) -> Site {
        match p {
            Proj::Q | Proj::K | Proj::V => Site::AttnIn,
            Proj::O => Site::AttnOut,
            Proj::Gate | Proj::Up => Site::FfnIn,
            Proj::Down => Site::FfnDownIn,
        }
    }

    /// The projections that read this input.
    pub fn projs(self) -> &'static [Proj] {
        match self {
            Site::AttnIn => &[Proj::Q, Proj::K, Proj::V],
            Site::AttnOut => &[Proj::O],
            Site::FfnIn => &[Proj::Gate, Proj::Up],
            Site::FfnDownIn => &[Proj::Down],
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Site::AttnIn => "attn_in",
            Site::AttnOut => "attn_out",
            Site::FfnIn => "ffn_in",
            Site::FfnDownIn => "ffn_down_in",
        }
    }
}

/// A block's weights in f32 (GGUF layout: row-major `[out × in]`, llama q/k rows permuted).
/// Changes through [`get_mut`](Self::get_mut) and [`set`](Self::set) are tracked, so the engine
/// re-installs only the projections a hook touched (no copy of the block to compare against).
#[derive(Debug, Clone)]
pub struct BlockWeights {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    w: [Vec<f32>; 7],
    shape: [(usize, usize); 7],
    touched: [bool; 7],
}

impl PartialEq for BlockWeights {
    fn eq(&self, o: &Self) -> bool {
        (&self.attn_norm, &self.ffn_norm, &self.w, &self.shape) == (&o.attn_norm, &o.ffn_norm, &o.w, &o.shape)
    }
}

impl BlockWeights {
    pub fn get(&self, p: Proj) -> &[f32] {
        &self.w[p.index()]
    }
    pub fn get_mut(&mut self, p: Proj) -> &mut [f32] {
        self.touched[p.index()] = true;
        &mut self.w[p.index()]
    }
    /// `(rows, cols)` = `(out_features, in_features)`.
    pub fn shape(&self, p: Proj) -> (usize, usize) {
        self.shape[p.index()]
    }
    /// Replace a projection's weights (same shape).
    pub fn set(&mut self, p: Proj, w: Vec<f32>) -> Result<()> {
        let (r, c) = self.shape(p);
        if w.len() != r * c {
            return Err(Error::Invalid(format!("{}: {} values for a {r}×{c} weight", p.gguf(), w.len())));
        }
        self.w[p.index()] = w;
        self.touched[p.index()] = true;
        Ok(())
    }
    /// The projections changed since the last [`take_touched`](Self::take_touched), and reset.
    fn take_touched(&mut self) -> [bool; 7] {
        std::mem::take(&mut self.touched)
    }
}

/// What a calibration method does with a block.
pub trait BlockHook: Send {
    /// `rows` rows of the input of `site`'s projections (one calibration sequence).
    fn observe(&mut self, layer: usize, site: Site, x: &[f32], rows: usize);
    /// Every sequence of `site` has been observed: change any of the block's weights (quantize the
    /// site's projections, fold scales, ...). Later stages run with what is left in `w`.
    fn update(&mut self, layer: usize, site: Site, w: &mut BlockWeights) -> Result<()>;
    /// The block's last chance to change weights before its output is computed.
    fn finish(&mut self, layer: usize, w: &mut BlockWeights) -> Result<()>;
    /// Block `layer` is done (its output computed): save or release what the hook holds of it.
    fn block_done(&mut self, _layer: usize) -> Result<()> {
        Ok(())
    }
    /// A resumed pass starts after `done` finished blocks: take back what was saved of them.
    fn restore(&mut self, done: usize) -> Result<()> {
        if done == 0 {
            return Ok(());
        }
        Err(Error::Unsupported("resuming a pass whose hook saves nothing".into()))
    }
}

fn f32_linear(rows: usize, cols: usize, w: &[f32], bias: Option<Vec<f32>>) -> Result<QLinear> {
    let bytes: Vec<u8> = bytemuck_f32(w);
    Ok(QLinear::new(QMatrix::new(GgmlType::F32, rows, cols, WeightBytes::owned(bytes))?, bias))
}

fn bytemuck_f32(w: &[f32]) -> Vec<u8> {
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Model {
    /// Embeddings of `tokens`, `[n × hidden]`.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let h = self.cfg.hidden_size as usize;
        let vocab = self.embed.rows;
        let mut x = vec![0f32; tokens.len() * h];
        for (row, &t) in x.chunks_exact_mut(h).zip(tokens) {
            if t as usize >= vocab {
                return Err(Error::Invalid(format!("token id {t} is outside the vocabulary ({vocab})")));
            }
            self.embed.dequantize_rows(t as usize, t as usize + 1, row);
        }
        Ok(x)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Block `li`'s weights as f32.
    pub fn block_weights(&self, li: usize) -> BlockWeights {
        let l = &self.layers[li];
        let lin = l.linears();
        let shape = lin.map(|q| (q.out_features(), q.in_features()));
        let w = lin.map(|q| {
            let mut v = vec![0f32; q.out_features() * q.in_features()];
            q.dequantize_rows(0, q.out_features(), &mut v);
            v
        });
        BlockWeights {
            attn_norm: l.attn_norm.clone(),
            ffn_norm: l.ffn_norm.clone(),
            w,
            shape,
            touched: [false; 7],
        }
    }

    /// Install f32 weights into block `li` (biases are kept).
    pub fn set_block_weights(&mut self, li: usize, bw: &BlockWeights) -> Result<()> {
        self.install(li, bw, [true; 7])
    }

    /// Install the norms and the projections `which` of `bw` into block `li`.
    fn install(&mut self, li: usize, bw: &BlockWeights, which: [bool; 7]) -> Result<()> {
        let l = &mut self.layers[li];
        if bw.attn_norm.len() != l.attn_norm.len() || bw.ffn_norm.len() != l.ffn_norm.len() {
            return Err(Error::Invalid(format!("block {li}: norm weights of the wrong length")));
        }
        l.attn_norm.clone_from(&bw.attn_norm);
        l.ffn_norm.clone_from(&bw.ffn_norm);
        for (i, q) in l.linears_mut().into_iter().enumerate() {
            if !which[i] {
                continue;
            }
            let (r, c) = bw.shape[i];
            if (r, c) != (q.out_features(), q.in_features()) || bw.w[i].len() != r * c {
                return Err(Error::Invalid(format!(
                    "block {li}: {} has the wrong shape",
                    Proj::ALL[i].gguf()
                )));
            }
            *q = f32_linear(r, c, &bw.w[i], q.bias.take())?;
        }
        Ok(())
    }

    /// A model from [`Model::load_streaming`]: read block `li`'s projections from `src` as f32
    /// (a quantized GGUF is dequantized here, one block at a time) and drop the source's pages
    /// behind them.
    pub fn load_block(&mut self, li: usize, src: &ModelSource) -> Result<()> {
        if li >= self.layers.len() {
            return Err(Error::Invalid(format!("block {li} of {}", self.layers.len())));
        }
        let tensors = src.tensors()?;
        let l = &mut self.layers[li];
        for (p, q) in Proj::ALL.into_iter().zip(l.linears_mut()) {
            let name = p.weight_name(li);
            let t = tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor {
                path: src.path(),
                tensor: name.clone(),
                hint: String::new(),
            })?;
            if t.row_len() != q.in_features() {
                let want = q.in_features();
                return Err(Error::bad_tensor(&name, format!("rows of {} but {want} expected", t.row_len())));
            }
            let w = src.read(t)?;
            src.release_rows(t, 0, t.rows());
            *q = f32_linear(t.rows(), t.row_len(), &w, q.bias.take())?;
        }
        Ok(())
    }

    /// Drop block `li`'s projection weights (biases and norms stay): the pass is past it.
    pub fn unload_block(&mut self, li: usize) {
        if let Some(l) = self.layers.get_mut(li) {
            for q in l.linears_mut() {
                q.w = crate::linear::Weights::Q(crate::model::load::placeholder(q.in_features()));
            }
        }
    }

    /// Run block `li` over `x` (`x.count()` sequences of `seqlen` positions, each `seqlen × hidden`
    /// and starting at position 0), stage by stage with `hook` (see the module docs), and leave
    /// the block's output in `x`. The block's weights end as the hook left them. `spill` holds the
    /// block's two intermediate results (attention context, post-attention residual) like `x`:
    /// in memory or in a temporary file. `tick` is called once per sample and stage.
    pub fn calibrate_block(
        &mut self,
        li: usize,
        x: &mut SeqStore,
        seqlen: usize,
        hook: &mut dyn BlockHook,
        spill: &Spill,
        tick: &mut (dyn FnMut() + Send),
    ) -> Result<()> {
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            return rayon::scope(|_| self.calibrate_block_inner(li, x, seqlen, hook, spill, tick));
        }
        self.calibrate_block_inner(li, x, seqlen, hook, spill, tick)
    }

    fn calibrate_block_inner(
        &mut self,
        li: usize,
        x: &mut SeqStore,
        t: usize,
        hook: &mut dyn BlockHook,
        spill: &Spill,
        tick: &mut (dyn FnMut() + Send),
    ) -> Result<()> {
        let c = &self.cfg;
        let (h, nh, nkv, hd) =
            (c.hidden_size as usize, c.n_heads as usize, c.n_kv_heads as usize, c.head_dim as usize);
        let ffn = c.intermediate_size as usize;
        let eps = c.rms_norm_eps as f32;
        if li >= self.layers.len() {
            return Err(Error::Invalid(format!("block {li} of {}", self.layers.len())));
        }
        if t == 0 || x.seq_len() != t * h {
            return Err(Error::Invalid(format!(
                "sequences of {} values are not {t} positions × {h}",
                x.seq_len()
            )));
        }
        let samples = x.count();
        let qd = nh * hd;
        let table = self.rope_table(0, t);
        let dims = Dims { n: t, pos0: 0, nh, nkv, hd, scale: 1.0 / (hd as f32).sqrt() };
        let mut xn = vec![0f32; t * h];
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * nkv * hd], vec![0f32; t * nkv * hd]);
        // One sequence's residual, context and post-attention residual.
        let (mut xs, mut cs, mut hs) = (vec![0f32; t * h], vec![0f32; t * qd], vec![0f32; t * h]);
        let mut ctx = spill.store(samples, t * qd)?;
        let mut hres = spill.store(samples, t * h)?;
        let mut tmp = vec![0f32; t * h];
        let (mut g, mut u) = (vec![0f32; t * ffn], vec![0f32; t * ffn]);
        let mut bw = self.block_weights(li);

        // q/k/v, RoPE and attention of one sequence into `out`.
        let attend = |m: &Model,
                      xs: &[f32],
                      xn: &mut [f32],
                      q: &mut Vec<f32>,
                      k: &mut Vec<f32>,
                      v: &mut Vec<f32>,
                      out: &mut [f32]| {
            let l = &m.layers[li];
            rmsnorm(xs, &l.attn_norm, eps, xn);
            forward_group(&[&l.q, &l.k, &l.v], xn, t, &mut [&mut q[..], &mut k[..], &mut v[..]]);
            m.rope(q, nh, &table);
            m.rope(k, nkv, &table);
            attention(q, k, v, out, dims);
        };
        // silu(gate)·up of one sequence's `h` into g.
        let mlp_in = |m: &Model, hs: &[f32], xn: &mut [f32], g: &mut Vec<f32>, u: &mut Vec<f32>| {
            let l = &m.layers[li];
            rmsnorm(hs, &l.ffn_norm, eps, xn);
            forward_group(&[&l.gate, &l.up], xn, t, &mut [&mut g[..], &mut u[..]]);
            m.down_input(g, u);
        };

        // 1. AttnIn
        for s in 0..samples {
            x.read(s, &mut xs)?;
            rmsnorm(&xs, &self.layers[li].attn_norm, eps, &mut xn);
            hook.observe(li, Site::AttnIn, &xn, t);
            tick();
        }
        self.update(li, Site::AttnIn, &mut bw, hook)?;
        // 2. AttnOut
        for s in 0..samples {
            x.read(s, &mut xs)?;
            attend(self, &xs, &mut xn, &mut q, &mut k, &mut v, &mut cs);
            hook.observe(li, Site::AttnOut, &cs, t);
            ctx.write(s, &cs)?;
            tick();
        }
        self.update(li, Site::AttnOut, &mut bw, hook)?;
        // 3. FfnIn
        for s in 0..samples {
            x.read(s, &mut xs)?;
            ctx.read(s, &mut cs)?;
            self.layers[li].o.forward(&cs, t, &mut tmp);
            for ((o, a), b) in hs.iter_mut().zip(&xs).zip(&tmp) {
                *o = a + b;
            }
            rmsnorm(&hs, &self.layers[li].ffn_norm, eps, &mut xn);
            hook.observe(li, Site::FfnIn, &xn, t);
            hres.write(s, &hs)?;
            tick();
        }
        drop(ctx);
        self.update(li, Site::FfnIn, &mut bw, hook)?;
        // 4. FfnDownIn
        for s in 0..samples {
            hres.read(s, &mut hs)?;
            mlp_in(self, &hs, &mut xn, &mut g, &mut u);
            hook.observe(li, Site::FfnDownIn, &g, t);
            tick();
        }
        self.update(li, Site::FfnDownIn, &mut bw, hook)?;
        let norm_before = bw.attn_norm.clone();
        hook.finish(li, &mut bw)?;
        let touched = bw.take_touched();
        let attention_changed = touched[..4].iter().any(|&t| t) || norm_before != bw.attn_norm;
        self.install(li, &bw, touched)?;
        // 5. the block's output
        for s in 0..samples {
            x.read(s, &mut xs)?;
            hres.read(s, &mut hs)?;
            if attention_changed {
                attend(self, &xs, &mut xn, &mut q, &mut k, &mut v, &mut cs);
                self.layers[li].o.forward(&cs, t, &mut tmp);
                for ((o, a), b) in hs.iter_mut().zip(xs.iter()).zip(&tmp) {
                    *o = a + b;
                }
            }
            mlp_in(self, &hs, &mut xn, &mut g, &mut u);
            self.layers[li].down.forward(&g, t, &mut tmp);
            for ((o, a), b) in xs.iter_mut().zip(hs.iter()).zip(&tmp) {
                *o = a + b;
            }
            x.write(s, &xs)?;
            tick();
        }
        Ok(())
    }

    /// The hook's update of `site`; whatever it changed is installed for the stages that follow.
    fn update(
        &mut self,
        li: usize,
        site: Site,
        bw: &mut BlockWeights,
        hook: &mut dyn BlockHook,
    ) -> Result<()> {
        let norms = (bw.attn_norm.clone(), bw.ffn_norm.clone());
        hook.update(li, site, bw)?;
        let touched = bw.take_touched();
        if touched.iter().any(|&t| t) || norms.0 != bw.attn_norm || norms.1 != bw.ffn_norm {
            self.install(li, bw, touched)?;
        }
        Ok(())
    }
}

/// Where a calibration pass keeps per-sequence activations: in memory while they fit `budget`
/// bytes, else in unlinked temporary files in `dir` (read and written one sequence at a time, so
/// memory holds a few sequences whatever the number of samples).
#[derive(Debug, Clone)]
pub struct Spill {
    pub budget: u64,
    pub dir: std::path::PathBuf,
}

impl Spill {
    /// Everything in memory.
    pub fn in_memory() -> Self {
        Spill { budget: u64::MAX, dir: std::env::temp_dir() }
    }

    /// Whether a store of `n` sequences of `len` values stays in memory: it fits a third of the
    /// budget (a block holds three: residual stream, attention context, post-attention residual).
    pub fn fits(&self, n: usize, len: usize) -> bool {
        (n as u64).saturating_mul(len as u64).saturating_mul(4) <= self.budget / 3
    }

    /// A store of `n` sequences of `len` values (zeros).
    pub fn store(&self, n: usize, len: usize) -> Result<SeqStore> {
        if self.fits(n, len) {
            return Ok(SeqStore { n, len, data: Data::Mem(vec![0f32; n * len]) });
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let path = self.dir.join(format!(
            ".quantkit-spill-{}-{}",
            std::process::id(),
            SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // Unlinked at once: the file goes away with the process, however it ends.
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        file.set_len((n * len * 4) as u64).map_err(|e| Error::io(&path, e))?;
        Ok(SeqStore { n, len, data: Data::File { file, path } })
    }
}

static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `n` sequences of `len` f32 values (see [`Spill`]).
#[derive(Debug)]
pub struct SeqStore {
    n: usize,
    len: usize,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Mem(Vec<f32>),
    File { file: std::fs::File, path: std::path::PathBuf },
}

impl SeqStore {
    /// Sequences held.
    pub fn count(&self) -> usize {
        self.n
    }
    /// Values per sequence.
    pub fn seq_len(&self) -> usize {
        self.len
    }
    /// Whether the store lives in a temporary file.
    pub fn spilled(&self) -> bool {
        matches!(self.data, Data::File { .. })
    }
    fn check(&self, s: usize, buf: usize) -> Result<()> {
        if s >= self.n || buf != self.len {
            return Err(Error::Invalid(format!(
                "sequence {s} of {} with {buf} values (sequences hold {})",
                self.n, self.len
            )));
        }
        Ok(())
    }
    /// Copy sequence `s` into `out`.
    pub fn read(&self, s: usize, out: &mut [f32]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(s, out.len())?;
        match &self.data {
            Data::Mem(v) => out.copy_from_slice(&v[s * self.len..(s + 1) * self.len]),
            Data::File { file, path } => file
                .read_exact_at(bytemuck::cast_slice_mut(out), (s * self.len * 4) as u64)
                .map_err(|e| Error::io(path, e))?,
        }
        Ok(())
    }
    /// Replace sequence `s` with `v`.
    pub fn write(&mut self, s: usize, v: &[f32]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(s, v.len())?;
        let len = self.len;
        match &mut self.data {
            Data::Mem(d) => d[s * len..(s + 1) * len].copy_from_slice(v),
            Data::File { file, path } => file
                .write_all_at(bytemuck::cast_slice(v), (s * len * 4) as u64)
                .map_err(|e| Error::io(path.as_path(), e))?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proj_and_site_tables_agree() {
        for s in Site::ALL {
            for p in s.projs() {
                assert_eq!(Site::of(*p), s);
            }
        }
        let n: usize = Site::ALL.iter().map(|s| s.projs().len()).sum();
        assert_eq!(n, Proj::ALL.len());
        for (i, p) in Proj::ALL.iter().enumerate() {
            assert_eq!(p.index(), i);
        }
    }
}
