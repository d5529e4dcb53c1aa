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
use quantkit_kernels::{QMatrix, WeightBytes};

use crate::linear::{forward_group, Linear, QLinear};
use crate::model::{attention, rmsnorm, swiglu, Dims, Model, Site};

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
#[derive(Debug, Clone, PartialEq)]
pub struct BlockWeights {
    pub attn_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    w: [Vec<f32>; 7],
    shape: [(usize, usize); 7],
}

impl BlockWeights {
    pub fn get(&self, p: Proj) -> &[f32] {
        &self.w[p.index()]
    }
    pub fn get_mut(&mut self, p: Proj) -> &mut [f32] {
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
        Ok(())
    }
    fn attention_part(&self) -> (&[f32], [&Vec<f32>; 4]) {
        (&self.attn_norm, [&self.w[0], &self.w[1], &self.w[2], &self.w[3]])
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
}

fn f32_linear(rows: usize, cols: usize, w: &[f32], bias: Option<Vec<f32>>) -> Result<QLinear> {
    let bytes: Vec<u8> = bytemuck_f32(w);
    Ok(QLinear { m: QMatrix::new(GgmlType::F32, rows, cols, WeightBytes::owned(bytes))?, bias })
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
        let shape = lin.map(|q| (q.m.rows, q.m.cols));
        let w = lin.map(|q| {
            let mut v = vec![0f32; q.m.rows * q.m.cols];
            q.m.dequantize_rows(0, q.m.rows, &mut v);
            v
        });
        BlockWeights { attn_norm: l.attn_norm.clone(), ffn_norm: l.ffn_norm.clone(), w, shape }
    }

    /// Install f32 weights into block `li` (biases are kept).
    pub fn set_block_weights(&mut self, li: usize, bw: &BlockWeights) -> Result<()> {
        let l = &mut self.layers[li];
        if bw.attn_norm.len() != l.attn_norm.len() || bw.ffn_norm.len() != l.ffn_norm.len() {
            return Err(Error::Invalid(format!("block {li}: norm weights of the wrong length")));
        }
        l.attn_norm.clone_from(&bw.attn_norm);
        l.ffn_norm.clone_from(&bw.ffn_norm);
        for (i, q) in l.linears_mut().into_iter().enumerate() {
            let (r, c) = bw.shape[i];
            if (r, c) != (q.m.rows, q.m.cols) || bw.w[i].len() != r * c {
                return Err(Error::Invalid(format!(
                    "block {li}: {} has the wrong shape",
                    Proj::ALL[i].gguf()
                )));
            }
            *q = f32_linear(r, c, &bw.w[i], q.bias.take())?;
        }
        Ok(())
    }

    /// Run block `li` over `x` (`samples` sequences of `seqlen` positions, `[samples·seqlen ×
    /// hidden]`, each sequence starting at position 0), stage by stage with `hook` (see the module
    /// docs), and leave the block's output in `x`. The block's weights end as the hook left them.
    /// `tick` is called once per sample and stage (for progress bars).
    pub fn calibrate_block(
        &mut self,
        li: usize,
        x: &mut [f32],
        seqlen: usize,
        hook: &mut dyn BlockHook,
        tick: &mut (dyn FnMut() + Send),
    ) -> Result<()> {
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            return rayon::scope(|_| self.calibrate_block_inner(li, x, seqlen, hook, tick));
        }
        self.calibrate_block_inner(li, x, seqlen, hook, tick)
    }

    fn calibrate_block_inner(
        &mut self,
        li: usize,
        x: &mut [f32],
        t: usize,
        hook: &mut dyn BlockHook,
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
        if t == 0 || x.len() % (t * h) != 0 {
            return Err(Error::Invalid(format!("{} values are not whole sequences of {t}×{h}", x.len())));
        }
        let samples = x.len() / (t * h);
        let table = self.rope_table(0, t);
        let dims = Dims { n: t, pos0: 0, nh, nkv, hd, scale: 1.0 / (hd as f32).sqrt() };
        let mut xn = vec![0f32; t * h];
        let (mut q, mut k, mut v) =
            (vec![0f32; t * nh * hd], vec![0f32; t * nkv * hd], vec![0f32; t * nkv * hd]);
        let mut ctx = vec![0f32; samples * t * nh * hd];
        let mut hres = vec![0f32; samples * t * h];
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
            swiglu(g, u);
        };

        // 1. AttnIn
        for s in 0..samples {
            rmsnorm(&x[s * t * h..(s + 1) * t * h], &self.layers[li].attn_norm, eps, &mut xn);
            hook.observe(li, Site::AttnIn, &xn, t);
            tick();
        }
        self.update(li, Site::AttnIn, &mut bw, hook)?;
        // 2. AttnOut
        let qd = nh * hd;
        for s in 0..samples {
            let out = &mut ctx[s * t * qd..(s + 1) * t * qd];
            attend(self, &x[s * t * h..(s + 1) * t * h], &mut xn, &mut q, &mut k, &mut v, out);
            hook.observe(li, Site::AttnOut, out, t);
            tick();
        }
        self.update(li, Site::AttnOut, &mut bw, hook)?;
        // 3. FfnIn
        for s in 0..samples {
            let hs = &mut hres[s * t * h..(s + 1) * t * h];
            self.layers[li].o.forward(&ctx[s * t * qd..(s + 1) * t * qd], t, &mut tmp);
            for ((o, a), b) in hs.iter_mut().zip(&x[s * t * h..(s + 1) * t * h]).zip(&tmp) {
                *o = a + b;
            }
            rmsnorm(hs, &self.layers[li].ffn_norm, eps, &mut xn);
            hook.observe(li, Site::FfnIn, &xn, t);
            tick();
        }
        self.update(li, Site::FfnIn, &mut bw, hook)?;
        // 4. FfnDownIn
        for s in 0..samples {
            mlp_in(self, &hres[s * t * h..(s + 1) * t * h], &mut xn, &mut g, &mut u);
            hook.observe(li, Site::FfnDownIn, &g, t);
            tick();
        }
        self.update(li, Site::FfnDownIn, &mut bw, hook)?;
        let before = bw.clone();
        hook.finish(li, &mut bw)?;
        let attention_changed = before.attention_part() != bw.attention_part();
        if bw != before {
            self.set_block_weights(li, &bw)?;
        }
        // 5. the block's output
        for s in 0..samples {
            let xs = &mut x[s * t * h..(s + 1) * t * h];
            let hs = &mut hres[s * t * h..(s + 1) * t * h];
            if attention_changed {
                let out = &mut ctx[..t * qd];
                attend(self, xs, &mut xn, &mut q, &mut k, &mut v, out);
                self.layers[li].o.forward(out, t, &mut tmp);
                for ((o, a), b) in hs.iter_mut().zip(xs.iter()).zip(&tmp) {
                    *o = a + b;
                }
            }
            mlp_in(self, hs, &mut xn, &mut g, &mut u);
            self.layers[li].down.forward(&g, t, &mut tmp);
            for ((o, a), b) in xs.iter_mut().zip(hs.iter()).zip(&tmp) {
                *o = a + b;
            }
            tick();
        }
        Ok(())
    }

    fn update(
        &mut self,
        li: usize,
        site: Site,
        bw: &mut BlockWeights,
        hook: &mut dyn BlockHook,
    ) -> Result<()> {
        let before = bw.clone();
        hook.update(li, site, bw)?;
        if *bw != before {
            self.set_block_weights(li, bw)?;
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
