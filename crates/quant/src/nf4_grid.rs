//! bitsandbytes NF4 as a GPTQ grid (GPTQ-into-NF4): GPTQ's error feedback onto bnb's 16
//! NormalFloat levels, stored as the ordinary bnb 4-bit checkpoint ([`Nf4Weights`]).
//!
//! bnb blocks the weight flattened row-major in *its* (Hugging Face) row order: blocks of 64
//! consecutive values, across row boundaries when the width is not a multiple of 64, one absmax
//! each. The grid therefore works on the rows in HF order (q/k rows, which the pass holds in
//! llama.cpp's permuted order, are unpermuted first and permuted back on dequantization).
//!
//! **The absmax.** Each block's absmax is decided when GPTQ's column loop first reaches one of the
//! block's weights, from the block's values *at that moment* (already moved by the error feedback
//! of the columns quantized before), as GPTQ chooses group scales: without act-order and with
//! `in % 64 == 0` that is at column `64k`, from the row's columns `64k..64k+64`. Later feedback may
//! push a value past the absmax; it is then clamped to the outer level. With `static_groups`
//! every absmax is instead fixed up front from the original weights (RTN's absmax).
//!
//! **Double quantization.** The nested state (offset = mean absmax, the largest `|absmax − offset|`
//! per 256 blocks) is fixed first from RTN's absmax values of the original weights; each block's
//! absmax is then rounded onto that 8-bit grid ([`Nested::round`]) the moment it is decided, so
//! the error GPTQ feeds forward is the one the file will have (bnb's loader computes exactly
//! `map[q]·nested_absmax + offset`). An absmax beyond the nested range clamps to its end.
//!
//! The weights are taken as float16 (what bnb quantizes when transformers loads a float16 model),
//! as the RTN writer does. Rows are processed in fixed chunks whose size is a multiple of 16 and
//! makes every chunk start on a block boundary, so the result does not depend on the thread count.

use half::f16;
use quantkit_core::{Error, Result};
use quantkit_io::layout::bnb::{self, Nested, Nf4Weights, StateDtype, NF4};
use quantkit_io::names;
use rayon::prelude::*;

/// NF4 as a grid: with or without double quantization, and the q/k head count when the pass's
/// rows are in llama.cpp's permuted order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4Grid {
    pub double_quant: bool,
    /// `Some(n_head)`: rows are permuted q/k rows (GGUF order); bnb's blocks follow HF order.
    pub heads: Option<usize>,
}

/// An NF4 matrix and the row order the pass uses (see [`Nf4Grid::heads`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Matrix {
    /// In HF row order, as stored.
    pub w: Nf4Weights,
    pub heads: Option<usize>,
}

impl Nf4Matrix {
    /// The values bnb computes with, in the pass's (GGUF) row order.
    pub fn dequantize(&self) -> Vec<f32> {
        let d = self.w.dequantize();
        match self.heads {
            Some(h) => names::permute_qk(&d, self.w.rows, h),
            None => d,
        }
    }
}

impl Nf4Grid {
    /// `nf4`, `nf4-dq` (the report's storage column).
    pub fn storage(&self) -> &'static str {
        if self.double_quant {
            "nf4-dq"
        } else {
            "nf4"
        }
    }

    /// `w` (GGUF row order) in bnb's row order, rounded to float16.
    pub fn storage_rows(&self, w: &[f32], rows: usize) -> Vec<f32> {
        let w = match self.heads {
            Some(h) => names::unpermute_qk(w, rows, h),
            None => w.to_vec(),
        };
        w.into_iter().map(|v| f16::from_f32(v).to_f32()).collect()
    }

    /// Round to nearest: exactly what `quantize --method rtn -f bnb-nf4[-dq]` writes.
    pub fn rtn(&self, w: &[f32], rows: usize, cols: usize) -> Nf4Matrix {
        let s = self.storage_rows(w, rows);
        let w = Nf4Weights::quantize(&s, rows, cols, bnb::BLOCK, self.double_quant, StateDtype::F16);
        Nf4Matrix { w, heads: self.heads }
    }
}

/// GPTQ's lazy-batch column loop over `n` rows of a chunk: `(chunk, n, quant)`, where
/// `quant(chunk, i)` replaces column `i` (GPTQ's order) of every row by its quantized value.
pub(crate) type ColumnLoop<'a> = dyn Fn(&mut [f32], usize, &mut dyn FnMut(&mut [f32], usize)) + Sync + 'a;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Rows per parallel task: a multiple of `min_rows` (16) that makes `rows · cols` whole blocks.
pub(crate) fn chunk_rows(cols: usize, min_rows: usize) -> usize {
    let need = bnb::BLOCK / gcd(cols, bnb::BLOCK);
    min_rows / gcd(min_rows, need) * need
}

/// GPTQ's NF4 branch: `ws` is the weight in storage (HF) row order, float16-rounded, original
/// column order, dead inputs zeroed; `wp` the same in GPTQ's column order (`perm`, `pos_of` its
/// inverse). `column_loop(wc, n, quant)` is GPTQ's lazy-batch loop over `n` rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quantize(
    g: Nf4Grid,
    ws: &[f32],
    mut wp: Vec<f32>,
    rows: usize,
    cols: usize,
    perm: &[usize],
    pos_of: &[usize],
    static_absmax: bool,
    min_rows: usize,
    column_loop: &ColumnLoop,
) -> Result<Nf4Matrix> {
    let bs = bnb::BLOCK;
    let n = rows * cols;
    if ws.len() != n || wp.len() != n {
        return Err(Error::Invalid(format!("NF4 GPTQ: {rows}×{cols} weight with {} values", ws.len())));
    }
    let nblocks = n.div_ceil(bs);
    // RTN's absmax of the original weights: the static absmax, and what fixes the nested state.
    let (_, rtn_absmax) = bnb::quantize_nf4(ws, bs);
    let nested: Option<Nested> = g.double_quant.then(|| bnb::double_quant(&rtn_absmax));
    let cr = chunk_rows(cols, min_rows);
    let per = cr * cols / bs; // blocks per chunk (chunks start on block boundaries)
    let mut codes = vec![0u8; n];
    let mut absmax = vec![0f32; nblocks];
    let mut aq = vec![0u8; nblocks];
    wp.par_chunks_mut(cr * cols)
        .zip(codes.par_chunks_mut(cr * cols))
        .zip(absmax.par_chunks_mut(per))
        .zip(aq.par_chunks_mut(per))
        .enumerate()
        .for_each(|(ci, (((wc, cc), ac), qc))| {
            let nr = wc.len() / cols;
            let len = wc.len();
            let b0 = ci * per;
            let mut decided = vec![false; ac.len()];
            // Absmax `a` of local block `b` → (stored value or code, the value bnb multiplies by).
            let decide = |b: usize, a: f32, ac: &mut [f32], qc: &mut [u8]| -> f32 {
                let ragged = (b + 1) * bs > len && n % bs != 0;
                let a = if ragged { a.max(1e-38) } else { a };
                match &nested {
                    Some(nq) => {
                        let (q, eff) = nq.round(b0 + b, a);
                        qc[b] = q;
                        ac[b] = eff;
                        eff
                    }
                    None => {
                        ac[b] = a;
                        a
                    }
                }
            };
            let mut eff = vec![0f32; ac.len()];
            if static_absmax {
                for b in 0..ac.len() {
                    eff[b] = decide(b, rtn_absmax[b0 + b], ac, qc);
                    decided[b] = true;
                }
            }
            column_loop(wc, nr, &mut |wc: &mut [f32], i: usize| {
                let col = perm[i];
                for r in 0..nr {
                    let flat = r * cols + col;
                    let b = flat / bs;
                    if !decided[b] {
                        let end = ((b + 1) * bs).min(len);
                        let a = (b * bs..end)
                            .map(|j| wc[(j / cols) * cols + pos_of[j % cols]].abs())
                            .fold(0f32, f32::max);
                        eff[b] = decide(b, a, ac, qc);
                        decided[b] = true;
                    }
                    let e = eff[b];
                    let x = wc[r * cols + i];
                    let code = if e == 0.0 { 7 } else { bnb::nf4_code((x / e).clamp(-1.0, 1.0)) };
                    cc[flat] = code;
                    wc[r * cols + i] = NF4[code as usize] * e;
                }
            });
        });
    let nested = nested.map(|nq| Nested { codes: aq, ..nq });
    let w = Nf4Weights { rows, cols, blocksize: bs, codes, absmax, nested, dtype: StateDtype::F16 };
    Ok(Nf4Matrix { w, heads: g.heads })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_start_on_block_boundaries() {
        for cols in [1, 3, 17, 64, 172, 576, 1536, 100] {
            let r = chunk_rows(cols, 16);
            assert_eq!(r % 16, 0, "{cols}");
            assert_eq!(r * cols % bnb::BLOCK, 0, "{cols}");
        }
        assert_eq!(chunk_rows(576, 16), 16);
        assert_eq!(chunk_rows(172, 16), 16);
        assert_eq!(chunk_rows(3, 16), 64);
    }
}
