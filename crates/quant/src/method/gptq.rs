//! GPTQ (Frantar et al. 2022): quantize a weight column by column, feeding each column's rounding
//! error forward into the columns not yet quantized through the inverse Hessian of the layer's
//! inputs, so that `‖WX − QX‖²` (not `‖W − Q‖²`) is minimised.
//!
//! The reference algorithm (IST-DASLab/gptq `fasterquant`, as AutoGPTQ/GPTQModel run it):
//! dead inputs (zero Hessian diagonal) are zeroed; optional act-order (columns in decreasing
//! Hessian diagonal); damping `λ = damp·mean(diag H)` (raised ×10 until the Cholesky succeeds);
//! `U = chol(H⁻¹)ᵀ`; lazy-batch updates in blocks of 128 columns. Here every row is independent
//! (the grid's parameters are per row), so rows are processed in fixed chunks of 16 in parallel and
//! the result does not depend on the thread count. The grid is pluggable: the integer
//! group-affine grid ([`IntGrid`]; static groups and act-order with `g_idx`), or any GGUF integer
//! type ([`crate::gguf_grid::GgufGrid`]), whose block scales are searched inside the column loop.

use faer::{Mat, Side};
use quantkit_core::{Error, Result};
use quantkit_formats::decode::IntChunk;
use rayon::prelude::*;

use crate::grid::{Grid, IntGrid, IntMatrix, IntParams, Quantized};
use crate::writers::IntFormat;
use quantkit_engine::{BlockWeights, Site};

use super::{name, GgufUse, Knobs, Method, MethodInfo, Outcome, PassCtx};

/// GPTQ's knobs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GptqConfig {
    /// Lazy-batch width (columns); raised to a multiple of the grid's group.
    pub block: usize,
    /// Damping as a fraction of the mean Hessian diagonal.
    pub damp: f64,
    /// Quantize columns in decreasing order of the Hessian diagonal (desc_act).
    pub act_order: bool,
    /// With act-order: choose every group's parameters up front, in column order (`g_idx`
    /// stays monotone).
    pub static_groups: bool,
}

impl Default for GptqConfig {
    fn default() -> Self {
        GptqConfig { block: 128, damp: 0.01, act_order: false, static_groups: false }
    }
}

/// What GPTQ did to one matrix.
#[derive(Debug, Clone)]
pub struct GptqOutcome {
    pub q: Quantized,
    /// The damping that made the Cholesky succeed (absolute, added to the diagonal).
    pub damp: f64,
    /// Inputs that never saw a non-zero activation (their weights are zeroed).
    pub dead: usize,
}

/// Rows per parallel task (fixed: the output must not depend on the thread count).
const ROW_CHUNK: usize = 16;

/// Quantize `w` (`rows × cols`, row-major) with GPTQ against the Hessian `h` (`cols × cols`,
/// row-major, `2/n Σ x xᵀ`). `imp`: per-column importance for the GGUF types' block search (the
/// imatrix values); ignored by the integer grid.
pub fn gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    imp: Option<&[f32]>,
    grid: Grid,
    cfg: GptqConfig,
) -> Result<GptqOutcome> {
    gptq_scaled(w, rows, cols, h, 1.0, imp, grid, cfg)
}

/// `U` (row-major, f32) with `(H + λI)⁻¹ = Uᵀ U`, `U` upper triangular with a positive diagonal:
/// GPTQ's `cholesky(H⁻¹, upper=True)`, computed without forming the inverse. With `J` the
/// reversal, `J H J = L Lᵀ` gives `H = Ũ Ũᵀ` for the upper triangular `Ũ = J L J`, so
/// `H⁻¹ = Ũ⁻ᵀ Ũ⁻¹` and `U = Ũ⁻¹ = J L⁻¹ J` (unique, as a Cholesky factor): one Cholesky and one
/// triangular inverse, ⅔ n³ flops instead of ~1.7 n³ for inverse-then-Cholesky. `None` when
/// `H + λI` is not positive definite.
pub fn upper_inverse_factor(h: &Mat<f64>, lambda: f64) -> Option<Vec<f32>> {
    let n = h.nrows();
    let mut hd = Mat::<f64>::from_fn(n, n, |i, j| h[(n - 1 - i, n - 1 - j)]);
    for i in 0..n {
        hd[(i, i)] += lambda;
    }
    let llt = hd.llt(Side::Lower).ok();
    drop(hd);
    let llt = llt?;
    let mut linv = Mat::<f64>::zeros(n, n);
    let par = match rayon::current_num_threads() {
        0 | 1 => faer::Par::Seq,
        t => faer::Par::rayon(t),
    };
    faer::linalg::triangular_inverse::invert_lower_triangular(linv.as_mut(), llt.L(), par);
    drop(llt);
    let mut u = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = linv[(n - 1 - i, n - 1 - j)] as f32;
        }
    }
    Some(u)
}

/// [`gptq`] with the Hessian given as `scale · h` (the pass hands its `Σ x xᵀ` and `2/n` without
/// a scaled copy: at FFN widths each `cols × cols` f64 copy is hundreds of MB). Peak memory is
/// the permuted Hessian plus two factor-sized matrices at a time.
#[allow(clippy::too_many_arguments)]
pub fn gptq_scaled(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    scale: f64,
    imp: Option<&[f32]>,
    grid: Grid,
    cfg: GptqConfig,
) -> Result<GptqOutcome> {
    if w.len() != rows * cols || h.len() != cols * cols {
        return Err(Error::Invalid(format!(
            "GPTQ: {rows}×{cols} weight with {} values, Hessian of {}",
            w.len(),
            h.len()
        )));
    }
    let gs = match grid {
        Grid::Int(g) => g.group_size(cols),
        Grid::Gguf(g) => {
            if cols % g.block() != 0 {
                return Err(Error::Invalid(format!(
                    "{cols} columns are not whole {} blocks of {}",
                    g.ty,
                    g.block()
                )));
            }
            g.block()
        }
        // bnb's blocks run along the flattened weight; GPTQ's lazy batch needs no alignment.
        Grid::Nf4(_) => 1,
    };
    // Dead inputs, then the column order.
    let diag: Vec<f64> = (0..cols).map(|i| h[i * cols + i] * scale).collect();
    let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
    let perm: Vec<usize> = if cfg.act_order {
        let mut p: Vec<usize> = (0..cols).collect();
        // Stable: equal diagonals keep column order (deterministic); a dead input counts as 1.
        let key = |c: usize| if dead[c] { 1.0 } else { diag[c] };
        p.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
        p
    } else {
        (0..cols).collect()
    };
    let hp = Mat::<f64>::from_fn(cols, cols, |i, j| {
        let (a, b) = (perm[i], perm[j]);
        if a == b && dead[a] {
            1.0
        } else {
            h[a * cols + b] * scale
        }
    });
    let mean_diag = (0..cols).map(|i| hp[(i, i)]).sum::<f64>() / cols as f64;
    let mut lambda = cfg.damp * mean_diag;
    let mut tries = 0;
    let upper = |lambda: f64| upper_inverse_factor(&hp, lambda);
    let u: Vec<f32> = loop {
        match upper(lambda) {
            Some(u) if u.iter().all(|v| v.is_finite()) && (0..cols).all(|i| u[i * cols + i] > 0.0) => {
                break u
            }
            _ => {
                tries += 1;
                if tries > 8 || !lambda.is_finite() {
                    return Err(Error::Invalid(format!(
                        "GPTQ: the Hessian is not positive definite even with damping {lambda:.3e}"
                    )));
                }
                lambda = if lambda > 0.0 { lambda * 10.0 } else { 1e-6 * mean_diag.max(1e-12) };
            }
        }
    };
    drop(hp);
    let block = {
        let b = cfg.block.max(1);
        if gs >= b {
            gs
        } else {
            gs * b.div_ceil(gs)
        }
    };
    // NF4 works on bnb's row order, in float16 (nf4_grid.rs).
    let nf4_rows: Option<Vec<f32>> = match grid {
        Grid::Nf4(g) => Some(
            g.storage_rows(w, rows)
                .into_iter()
                .enumerate()
                .map(|(k, v)| if dead[k % cols] { 0.0 } else { v })
                .collect(),
        ),
        _ => None,
    };
    let w: &[f32] = nf4_rows.as_deref().unwrap_or(w);
    // Permuted weights (dead inputs zeroed).
    let wp: Vec<f32> = (0..rows)
        .flat_map(|r| perm.iter().map(move |&c| (r, c)))
        .map(|(r, c)| if dead[c] { 0.0 } else { w[r * cols + c] })
        .collect();
    let impp: Option<Vec<f32>> = imp.map(|v| perm.iter().map(|&c| v[c]).collect());
    let pos_of: Vec<usize> = {
        let mut p = vec![0; cols];
        for (pos, &c) in perm.iter().enumerate() {
            p[c] = pos;
        }
        p
    };

    let q = match grid {
        Grid::Int(g) => {
            let ng = cols.div_ceil(gs);
            let statics = cfg.act_order && cfg.static_groups;
            let g_idx: Vec<u32> = (0..cols)
                .map(|c| if statics || !cfg.act_order { (c / gs) as u32 } else { (pos_of[c] / gs) as u32 })
                .collect();
            let mut codes = vec![0u8; rows * cols];
            let mut params = vec![IntParams { scale: 0.0, zero: 0 }; rows * ng];
            let mut wp = wp;
            wp.par_chunks_mut(ROW_CHUNK * cols)
                .zip(codes.par_chunks_mut(ROW_CHUNK * cols))
                .zip(params.par_chunks_mut(ROW_CHUNK * ng))
                .enumerate()
                .for_each(|(ci, ((wc, cc), pc))| {
                    let n = wc.len() / cols;
                    if statics {
                        // Parameters of every group from the original weights, in column order.
                        for r in 0..n {
                            let orig = &w[(ci * ROW_CHUNK + r) * cols..(ci * ROW_CHUNK + r + 1) * cols];
                            for gi in 0..ng {
                                let vals: Vec<f32> = (gi * gs..((gi + 1) * gs).min(cols))
                                    .map(|c| if dead[c] { 0.0 } else { orig[c] })
                                    .collect();
                                pc[r * ng + gi] = g.params(&vals, 1.0);
                            }
                        }
                    }
                    column_loop(wc, n, cols, &u, block, |wc, i| {
                        let col = perm[i];
                        let gi = g_idx[col] as usize;
                        if !statics && i % gs == 0 {
                            for r in 0..n {
                                let end = (i + gs).min(cols);
                                pc[r * ng + gi] = g.params(&wc[r * cols + i..r * cols + end], 1.0);
                            }
                        }
                        for r in 0..n {
                            let p = pc[r * ng + gi];
                            let code = g.code(p, wc[r * cols + i]);
                            cc[r * cols + col] = code;
                            wc[r * cols + i] = IntGrid::value(p, code);
                        }
                    });
                });
            Quantized::Int(IntMatrix { grid: g, rows, cols, codes, params, g_idx })
        }
        Grid::Gguf(g) => {
            let rb = cols / g.block() * g.block_bytes();
            let mut bytes = vec![0u8; rows * rb];
            let mut wp = wp;
            let (bs, bb) = (g.block(), g.block_bytes());
            let nb = cols / bs;
            wp.par_chunks_mut(ROW_CHUNK * cols)
                .zip(bytes.par_chunks_mut(ROW_CHUNK * rb))
                .enumerate()
                .for_each(|(ci, (wc, bc))| {
                    let n = wc.len() / cols;
                    if cfg.act_order {
                        // GGUF stores no permutation, so act-order runs with static blocks (as
                        // llm-compressor's actorder="static"): every block's scales are chosen up
                        // front from the original weights (the format's own weighted search), then
                        // columns are rounded onto them in decreasing-Hessian order with error
                        // feedback. Codes land at their original positions.
                        let mut chunks = vec![IntChunk::default(); n * nb];
                        for r in 0..n {
                            let orig = &w[(ci * ROW_CHUNK + r) * cols..(ci * ROW_CHUNK + r + 1) * cols];
                            for b in 0..nb {
                                let x: Vec<f32> = (b * bs..(b + 1) * bs)
                                    .map(|c| if dead[c] { 0.0 } else { orig[c] })
                                    .collect();
                                let qw = imp.map(|v| &v[b * bs..(b + 1) * bs]);
                                let out = &mut bc[r * rb + b * bb..r * rb + (b + 1) * bb];
                                g.start_block(&x, qw, out, &mut chunks[r * nb + b]);
                            }
                        }
                        column_loop(wc, n, cols, &u, block, |wc, i| {
                            let col = perm[i];
                            let (blk, j) = (col / bs, col % bs);
                            for r in 0..n {
                                let (code, v) = g.round(&chunks[r * nb + blk], j, wc[r * cols + i]);
                                g.set_code(&mut bc[r * rb + blk * bb..r * rb + (blk + 1) * bb], j, code);
                                wc[r * cols + i] = v;
                            }
                        });
                        return;
                    }
                    let mut chunks = vec![IntChunk::default(); n];
                    column_loop(wc, n, cols, &u, block, |wc, i| {
                        let (blk, j) = (i / bs, i % bs);
                        for r in 0..n {
                            let out = &mut bc[r * rb + blk * bb..r * rb + (blk + 1) * bb];
                            if j == 0 {
                                let x = &wc[r * cols + i..r * cols + i + bs];
                                let qw = impp.as_ref().map(|v| &v[i..i + bs]);
                                g.start_block(x, qw, out, &mut chunks[r]);
                            }
                            let (code, v) = g.round(&chunks[r], j, wc[r * cols + i]);
                            g.set_code(out, j, code);
                            wc[r * cols + i] = v;
                        }
                    });
                });
            Quantized::Gguf { ty: g.ty, rows, cols, bytes }
        }
        Grid::Nf4(g) => {
            let lp = |wc: &mut [f32], n: usize, q: &mut dyn FnMut(&mut [f32], usize)| {
                column_loop(wc, n, cols, &u, block, q)
            };
            Quantized::Nf4(crate::nf4_grid::quantize(
                g,
                w,
                wp,
                rows,
                cols,
                &perm,
                &pos_of,
                cfg.static_groups,
                ROW_CHUNK,
                &lp,
            )?)
        }
    };
    Ok(GptqOutcome { q, damp: lambda, dead: dead.iter().filter(|d| **d).count() })
}

/// GPTQ's lazy-batch column loop over `n` rows of `wc` (row-major, `cols` wide, permuted order):
/// `quant(wc, i)` replaces column `i` of every row by its quantized value; the error
/// `(w − q)/U[i][i]` is fed into the rest of the block at once and into the columns after the block
/// by one GEMM per block.
fn column_loop(
    wc: &mut [f32],
    n: usize,
    cols: usize,
    u: &[f32],
    block: usize,
    mut quant: impl FnMut(&mut [f32], usize),
) {
    let mut err = vec![0f32; n * block];
    let mut b0 = 0;
    while b0 < cols {
        let b1 = (b0 + block).min(cols);
        let bw = b1 - b0;
        for i in b0..b1 {
            let before: Vec<f32> = (0..n).map(|r| wc[r * cols + i]).collect();
            quant(wc, i);
            let d = u[i * cols + i];
            let urow = &u[i * cols + i + 1..i * cols + b1];
            for r in 0..n {
                let e = (before[r] - wc[r * cols + i]) / d;
                err[r * bw + (i - b0)] = e;
                for (wv, uv) in wc[r * cols + i + 1..r * cols + b1].iter_mut().zip(urow) {
                    *wv -= e * uv;
                }
            }
        }
        if b1 < cols {
            // W[:, b1..] -= Err · U[b0..b1, b1..], tiled over columns so each tile of a U row is
            // read once for all `n` rows (it stays in L1; the rows' tiles stay in L2) instead of
            // once per row — at FFN widths this update streams `rows · cols² / 2` products and
            // was GPTQ's largest cost. Every element still subtracts its terms in k order, so the
            // result is bit-identical to the row-by-row loop. (A faer GEMM here corrupted the
            // heap under some shapes — seen with valgrind — hence the explicit loops.)
            const TILE: usize = 1024;
            let mut c0 = b1;
            while c0 < cols {
                let c1 = (c0 + TILE).min(cols);
                for k in 0..bw {
                    let ur = &u[(b0 + k) * cols + c0..(b0 + k) * cols + c1];
                    for r in 0..n {
                        let ev = err[r * bw + k];
                        for (wv, uv) in wc[r * cols + c0..r * cols + c1].iter_mut().zip(ur) {
                            *wv -= ev * uv;
                        }
                    }
                }
                c0 = c1;
            }
        }
        b0 = b1;
    }
}

/// The registry row.
pub const INFO: MethodInfo = MethodInfo {
    name: "gptq",
    needs_calibration: true,
    default_sym: true,
    default_layout: IntFormat::GptqV1,
    reorders_columns: true,
    gguf: GgufUse::Grid,
    make,
};

fn make(k: &Knobs) -> Box<dyn Method> {
    Box::new(Gptq(k.gptq))
}

/// The method: [`gptq`] on each projection of a site, against the site's Hessian.
#[derive(Debug)]
pub struct Gptq(pub GptqConfig);

impl Method for Gptq {
    fn at_site(&mut self, cx: &mut PassCtx, layer: usize, site: Site, bw: &mut BlockWeights) -> Result<()> {
        let cfg = self.0;
        cx.quantize_site(layer, site, bw, |cx, j| {
            // The Hessian 2/n Σ x xᵀ, scaled on the fly (no copy).
            let scale = 2.0 / j.stats.rows.max(1) as f64;
            let (rows, cols) = j.shape;
            let out =
                gptq_scaled(j.w, rows, cols, &j.stats.xtx, scale, Some(j.imp), cx.grid(j.layer, j.p)?, cfg)
                    .map_err(|e| Error::bad_tensor(name(j.layer, j.p), e.to_string()))?;
            Ok(Some(Outcome { q: out.q, damp: Some(out.damp), dead: Some(out.dead) }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct factor equals GPTQ's reference route: invert, then upper Cholesky.
    #[test]
    fn upper_inverse_factor_matches_inverse_then_cholesky() {
        use faer::linalg::solvers::DenseSolveCore;
        let n = 61;
        let mut r = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            (r >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let a = Mat::<f64>::from_fn(n, 2 * n, |_, _| next());
        let h = &a * a.transpose();
        let lambda = 0.01;
        let u = upper_inverse_factor(&h, lambda).expect("positive definite");
        let mut hd = h.clone();
        for i in 0..n {
            hd[(i, i)] += lambda;
        }
        let inv = hd.llt(Side::Lower).expect("llt").inverse();
        let l = inv.llt(Side::Lower).expect("llt of the inverse");
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let want = if j >= i { l.L()[(j, i)] } else { 0.0 };
                worst = worst.max((u[i * n + j] as f64 - want).abs() / want.abs().max(1e-3));
            }
        }
        assert!(worst < 1e-4, "relative difference {worst}");
        assert!(upper_inverse_factor(&(-&h), 0.0).is_none(), "not positive definite");
    }
    use crate::gguf_grid::GgufGrid;
    use crate::grid::output_error;
    use quantkit_core::GgmlType;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut r = quantkit_calibration::corpus::Rng::new(seed);
        (0..n).map(|_| r.symmetric()).collect()
    }

    /// Correlated inputs (GPTQ's gain comes from off-diagonal Hessian terms).
    fn inputs(tokens: usize, cols: usize) -> (Vec<f64>, Vec<f32>) {
        let z = lcg(tokens * cols, 9);
        let mut x = vec![0f32; tokens * cols];
        for t in 0..tokens {
            for c in 0..cols {
                let base = z[t * cols + c];
                let shared = z[t * cols + (c * 7 + 3) % cols];
                x[t * cols + c] = base + 0.8 * shared * if c % 3 == 0 { 3.0 } else { 1.0 };
            }
        }
        let mut xtx = vec![0f64; cols * cols];
        for t in 0..tokens {
            let r = &x[t * cols..(t + 1) * cols];
            for i in 0..cols {
                for j in 0..cols {
                    xtx[i * cols + j] += r[i] as f64 * r[j] as f64;
                }
            }
        }
        (xtx, x)
    }

    #[test]
    fn gptq_beats_rtn_on_the_output_error_for_every_grid() {
        let (rows, cols, tokens) = (24, 256, 600);
        let w = lcg(rows * cols, 5);
        let (xtx, _) = inputs(tokens, cols);
        let h: Vec<f64> = xtx.iter().map(|v| v * 2.0 / tokens as f64).collect();
        for (bits, sym, group, act) in [
            (4, true, Some(32), false),
            (3, false, Some(64), true),
            (2, false, None, false),
            (8, true, Some(128), true),
        ] {
            let g = IntGrid { bits, sym, group, zero_min: 0 };
            let cfg = GptqConfig { act_order: act, ..Default::default() };
            let out = gptq(&w, rows, cols, &h, None, Grid::Int(g), cfg).expect("gptq");
            let q = out.q.dequantize().expect("deq");
            let rtn = IntMatrix::rtn(g, &w, rows, cols, None).dequantize();
            let (eg, er) = (
                output_error(&w, &q, rows, cols, &xtx, tokens as u64),
                output_error(&w, &rtn, rows, cols, &xtx, tokens as u64),
            );
            assert!(eg < er * 0.95, "{bits} bits sym {sym} group {group:?} act {act}: gptq {eg} rtn {er}");
            // Every value is on the grid: re-deriving codes from the stored parameters is exact.
            let Quantized::Int(m) = &out.q else { panic!() };
            if act {
                assert!(
                    m.g_idx.windows(2).any(|p| p[0] > p[1]) || group.is_none(),
                    "act-order g_idx is permuted"
                );
            }
        }
        for (ty, act) in [
            (GgmlType::Q4_K, false),
            (GgmlType::Q6_K, false),
            (GgmlType::Q4_0, false),
            (GgmlType::Q3_K, false),
            (GgmlType::Q4_K, true),
            (GgmlType::Q5_0, true),
        ] {
            let g = GgufGrid::new(ty).expect("grid");
            let cfg = GptqConfig { act_order: act, ..Default::default() };
            let out = gptq(&w, rows, cols, &h, None, Grid::Gguf(g), cfg).expect("gptq");
            let q = out.q.dequantize().expect("deq");
            if act {
                // Static blocks: the scales are the plain quantizer's, only the codes differ.
                let Quantized::Gguf { bytes, .. } = &out.q else { panic!("gguf") };
                assert_eq!(bytes.len(), quantkit_formats::quantize(ty, &w, cols).expect("q").len());
            }
            let rtn =
                quantkit_formats::dequantize(ty, &quantkit_formats::quantize(ty, &w, cols).expect("q"), cols)
                    .expect("d");
            let (eg, er) = (
                output_error(&w, &q, rows, cols, &xtx, tokens as u64),
                output_error(&w, &rtn, rows, cols, &xtx, tokens as u64),
            );
            assert!(eg < er * 0.95, "{ty} act {act}: gptq {eg} rtn {er}");
        }
    }

    /// GPTQ-into-NF4 (bnb's blocks of 64 of the flattened weight, absmax each, ± double
    /// quantization) has a lower Hessian-weighted output error than bnb's round to nearest, for
    /// whole-row blocks and for blocks across rows (a width not a multiple of 64), in column order
    /// and act-order, with permuted q/k rows; the result does not depend on the thread count; and
    /// the stored state is bnb's layout (dequantizes to what the pass installs).
    #[test]
    fn gptq_into_nf4_beats_bnb_rounding_and_does_not_depend_on_threads() {
        use crate::nf4_grid::Nf4Grid;
        let tokens = 600;
        for (rows, cols, dq, act, statics, heads) in [
            (48, 256, false, false, false, None),
            (48, 256, true, false, false, None),
            (40, 256, true, true, false, Some(4)),
            (36, 100, false, false, false, None),
            (36, 100, true, true, false, Some(3)),
            (32, 192, true, false, true, None),
        ] {
            // Random non-zero weights with a few outliers (absmax ≠ typical magnitude).
            let mut w = lcg(rows * cols, 11 + cols as u64);
            for k in (0..w.len()).step_by(97) {
                w[k] *= 4.0;
            }
            let (xtx, _) = inputs(tokens, cols);
            let h: Vec<f64> = xtx.iter().map(|v| v * 2.0 / tokens as f64).collect();
            let g = Nf4Grid { double_quant: dq, heads };
            let cfg = GptqConfig { act_order: act, static_groups: statics, ..Default::default() };
            let run = |threads| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("pool")
                    .install(|| gptq(&w, rows, cols, &h, None, Grid::Nf4(g), cfg).expect("gptq").q)
            };
            let (Quantized::Nf4(a), Quantized::Nf4(b)) = (run(1), run(2)) else { panic!("nf4") };
            assert_eq!(a, b, "{rows}×{cols} dq {dq} act {act}: 1 vs 2 threads");
            assert_eq!(a.w.nested.is_some(), dq);
            assert_eq!(
                (a.w.codes.len(), a.w.effective_absmax().len()),
                (rows * cols, (rows * cols).div_ceil(64))
            );
            let q = a.dequantize();
            let rtn = g.rtn(&w, rows, cols).dequantize();
            let (eg, er) = (
                output_error(&w, &q, rows, cols, &xtx, tokens as u64),
                output_error(&w, &rtn, rows, cols, &xtx, tokens as u64),
            );
            assert!(eg < er * 0.9, "{rows}×{cols} dq {dq} act {act} static {statics}: gptq {eg} rtn {er}");
            // Packs as bnb's tensors, like the RTN matrix of the same shape.
            let names = |m: &crate::nf4_grid::Nf4Matrix| -> Vec<(String, usize)> {
                m.w.pack("m").iter().map(|p| (p.spec.name.clone(), p.bytes.len())).collect()
            };
            assert_eq!(names(&a), names(&g.rtn(&w, rows, cols)));
        }
    }

    #[test]
    fn static_groups_keep_g_idx_monotone_and_results_do_not_depend_on_threads() {
        let (rows, cols, tokens) = (40, 128, 300);
        let w = lcg(rows * cols, 6);
        let (xtx, _) = inputs(tokens, cols);
        let h: Vec<f64> = xtx.iter().map(|v| v * 2.0 / tokens as f64).collect();
        let g = IntGrid { bits: 4, sym: false, group: Some(32), zero_min: 0 };
        let cfg = GptqConfig { act_order: true, static_groups: true, ..Default::default() };
        let run = |threads| {
            rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool").install(
                || match gptq(&w, rows, cols, &h, None, Grid::Int(g), cfg).expect("gptq").q {
                    Quantized::Int(m) => m,
                    _ => unreachable!(),
                },
            )
        };
        let a = run(1);
        assert!(a.g_idx.windows(2).all(|p| p[0] <= p[1]));
        assert_eq!(a, run(2));
    }

    #[test]
    fn a_singular_hessian_is_damped_and_dead_inputs_are_zeroed() {
        let (rows, cols) = (4, 32);
        let w = lcg(rows * cols, 7);
        // Rank-1 Hessian with two dead inputs.
        let v: Vec<f64> =
            (0..cols).map(|i| if i == 3 || i == 9 { 0.0 } else { 1.0 + i as f64 * 0.1 }).collect();
        let h: Vec<f64> = (0..cols * cols).map(|k| v[k / cols] * v[k % cols]).collect();
        let g = IntGrid { bits: 4, sym: true, group: Some(16), zero_min: 0 };
        let out = gptq(&w, rows, cols, &h, None, Grid::Int(g), GptqConfig::default()).expect("gptq");
        assert_eq!(out.dead, 2);
        let q = out.q.dequantize().expect("deq");
        for r in 0..rows {
            assert_eq!(q[r * cols + 3], 0.0);
            assert_eq!(q[r * cols + 9], 0.0);
        }
    }
}
