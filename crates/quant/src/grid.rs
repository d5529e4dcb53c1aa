//! Quantization grids for the calibrated quantizers: where a weight may land.
//!
//! A grid chooses its parameters at the start of each column group from the values the group has
//! *then* (GPTQ updates the later columns as it goes) and rounds one value at a time. Two
//! families: [`IntGrid`] (the integer group-affine grid of GPTQ/AWQ checkpoints: `w = s·(q − z)`,
//! fp16 `s`, unsigned `q` of `bits`, one `(s, z)` per row and group) and
//! [`crate::gguf_grid::GgufGrid`] (every GGUF integer type, block by block).

use faer::{Accum, Mat, MatRef, Par};
use half::f16;
use quantkit_core::{Error, GgmlType, Result};
use rayon::prelude::*;

use crate::gguf_grid::GgufGrid;
use crate::nf4_grid::{Nf4Grid, Nf4Matrix};

/// Integer group-affine quantization, as GPTQ/AutoGPTQ define it: per row and group,
/// `xmin = min(x, 0)`, `xmax = max(x, 0)`; symmetric: `xmax = max(|xmin|, xmax)`, `xmin = −xmax`,
/// `z = 2^(bits−1)`; `s = (xmax − xmin)/(2^bits − 1)` rounded to fp16 (what is stored, so the
/// rounding GPTQ feeds back is the file's); asymmetric `z = round(−xmin/s)` clamped to
/// `[zero_min, 2^bits − 1]`. `q = clamp(round(x/s) + z, 0, 2^bits − 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IntGrid {
    pub bits: u32,
    pub sym: bool,
    /// Columns per group (the last one may be shorter); `None`: one group per row.
    pub group: Option<usize>,
    /// Smallest zero point: 1 when the output is GPTQ v1 (which stores `z − 1` and cannot hold 0).
    pub zero_min: u8,
}

/// One row-group's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntParams {
    /// An fp16 value, held as f32.
    pub scale: f32,
    pub zero: u8,
}

/// The integer grid a job asks for, validated once — from CLI flags or a recipe string — and
/// turned into an [`IntGrid`] for the layouts being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IntSpec {
    pub bits: u32,
    /// `None`: one group per row (per channel).
    #[serde(rename = "group_size")]
    pub group: Option<usize>,
    pub sym: bool,
}

impl IntSpec {
    /// `bits` in 2..=8; a group size ≤ 0 means one group per output channel.
    pub fn new(bits: u32, group: i64, sym: bool) -> Result<Self> {
        if !(2..=8).contains(&bits) {
            return Err(Error::Invalid(format!("{bits} bits (the integer grids take 2..8)")));
        }
        Ok(IntSpec { bits, group: (group > 0).then_some(group as usize), sym })
    }

    /// A recipe string's fields after the method: `BITS[:GROUP[:sym|asym]]` (group 128 and the
    /// method's default symmetry when left out).
    pub fn parse(fields: &[&str], default_sym: bool) -> Result<Self> {
        let b = fields.first().copied().unwrap_or("");
        let bits: u32 = b.parse().map_err(|_| Error::Invalid(format!("bits {b:?} is not a number")))?;
        let group = match fields.get(1) {
            None => 128,
            Some(g) => {
                g.parse::<i64>().map_err(|_| Error::Invalid(format!("group {g:?} is not a number")))?
            }
        };
        let sym = match fields.get(2).copied() {
            None => default_sym,
            Some("sym") => true,
            Some("asym") => false,
            Some(o) => return Err(Error::Invalid(format!("{o:?} (sym or asym)"))),
        };
        if fields.len() > 3 {
            return Err(Error::Invalid("too many fields".into()));
        }
        IntSpec::new(bits, group, sym)
    }

    /// `int4 g128`, `int3 per-channel`.
    pub fn label(&self) -> String {
        format!(
            "int{} {}",
            self.bits,
            self.group.map(|g| format!("g{g}")).unwrap_or_else(|| "per-channel".into())
        )
    }

    /// The grid, with the smallest zero point the layouts can store.
    pub fn grid(&self, zero_min: u8) -> IntGrid {
        IntGrid { bits: self.bits, sym: self.sym, group: self.group, zero_min }
    }
}

impl IntGrid {
    /// The report's storage column: `int4 g128 sym`, `int4 per-channel`.
    pub fn storage(&self) -> String {
        let spec = IntSpec { bits: self.bits, group: self.group, sym: self.sym };
        format!("{}{}", spec.label(), if self.sym { " sym" } else { "" })
    }

    pub fn maxq(&self) -> u32 {
        (1u32 << self.bits) - 1
    }

    /// Group size for `cols` columns.
    pub fn group_size(&self, cols: usize) -> usize {
        self.group.unwrap_or(cols).min(cols).max(1)
    }

    pub fn groups(&self, cols: usize) -> usize {
        cols.div_ceil(self.group_size(cols))
    }

    /// Parameters from a group's values. `clip` ∈ (0, 1] is AWQ's clipping: values are first
    /// clamped to `±clip·max|x|` (AutoAWQ `_compute_best_clip`).
    pub fn params(&self, x: &[f32], clip: f32) -> IntParams {
        let maxq = self.maxq() as f32;
        let mut lo = x.iter().fold(0f32, |a, &b| a.min(b));
        let mut hi = x.iter().fold(0f32, |a, &b| a.max(b));
        if clip < 1.0 {
            let m = hi.max(-lo) * clip;
            lo = lo.max(-m);
            hi = hi.min(m);
        }
        if self.sym {
            hi = hi.max(-lo);
            if lo < 0.0 {
                lo = -hi;
            }
        }
        if lo == 0.0 && hi == 0.0 {
            lo = -1.0;
            hi = 1.0;
        }
        let mut scale = f16::from_f32((hi - lo) / maxq).to_f32();
        if scale.is_nan() || scale <= 0.0 || !scale.is_finite() {
            // Below fp16's smallest subnormal (or beyond its range): the nearest usable step.
            scale = if (hi - lo) / maxq > 1.0 { f16::MAX.to_f32() } else { f16::from_bits(1).to_f32() };
        }
        let zero = if self.sym {
            1u32 << (self.bits - 1)
        } else {
            ((-lo / scale).round() as i64).clamp(self.zero_min as i64, maxq as i64) as u32
        };
        IntParams { scale, zero: zero as u8 }
    }

    /// The code of `x`.
    #[inline]
    pub fn code(&self, p: IntParams, x: f32) -> u8 {
        let q = (x / p.scale).round() + p.zero as f32;
        q.clamp(0.0, self.maxq() as f32) as u8
    }

    /// The value of a code (exact: an fp16 scale times a small integer).
    #[inline]
    pub fn value(p: IntParams, q: u8) -> f32 {
        p.scale * (q as f32 - p.zero as f32)
    }
}

/// A whole matrix on an [`IntGrid`]: codes per weight, parameters per row and group, and the
/// group of every input column (`g_idx`; not monotone after act-order).
#[derive(Debug, Clone, PartialEq)]
pub struct IntMatrix {
    pub grid: IntGrid,
    pub rows: usize,
    pub cols: usize,
    /// Row-major `rows × cols`.
    pub codes: Vec<u8>,
    /// Row-major `rows × groups`.
    pub params: Vec<IntParams>,
    pub g_idx: Vec<u32>,
}

impl IntMatrix {
    pub fn groups(&self) -> usize {
        self.params.len() / self.rows.max(1)
    }

    /// The dequantized matrix, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let ng = self.groups();
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            let p = &self.params[r * ng..(r + 1) * ng];
            for c in 0..self.cols {
                out[r * self.cols + c] =
                    IntGrid::value(p[self.g_idx[c] as usize], self.codes[r * self.cols + c]);
            }
        }
        out
    }

    /// Round to nearest, no calibration: each row-group's parameters from its values, each value
    /// to its nearest code. `clip[r·groups + g]` (AWQ) shrinks a group's range.
    pub fn rtn(grid: IntGrid, w: &[f32], rows: usize, cols: usize, clip: Option<&[f32]>) -> IntMatrix {
        let gs = grid.group_size(cols);
        let ng = grid.groups(cols);
        let mut codes = vec![0u8; rows * cols];
        let mut params = Vec::with_capacity(rows * ng);
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            for (g, chunk) in row.chunks(gs).enumerate() {
                let p = grid.params(chunk, clip.map(|c| c[r * ng + g]).unwrap_or(1.0));
                for (i, &x) in chunk.iter().enumerate() {
                    codes[r * cols + g * gs + i] = grid.code(p, x);
                }
                params.push(p);
            }
        }
        let g_idx = (0..cols).map(|c| (c / gs) as u32).collect();
        IntMatrix { grid, rows, cols, codes, params, g_idx }
    }
}

/// Where weights land.
#[derive(Debug, Clone, Copy)]
pub enum Grid {
    Int(IntGrid),
    Gguf(GgufGrid),
    /// bitsandbytes NF4 (blocks of 64 of the flattened weight, absmax each).
    Nf4(Nf4Grid),
}

/// A quantized matrix.
#[derive(Debug, Clone)]
pub enum Quantized {
    Int(IntMatrix),
    /// Row-major GGUF bytes of `ty`.
    Gguf {
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: Vec<u8>,
    },
    /// A bitsandbytes NF4 matrix (stored in HF row order).
    Nf4(Nf4Matrix),
}

impl Quantized {
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        match self {
            Quantized::Int(m) => Ok(m.dequantize()),
            Quantized::Gguf { ty, cols, bytes, .. } => quantkit_formats::dequantize(*ty, bytes, *cols),
            Quantized::Nf4(m) => Ok(m.dequantize()),
        }
    }
}

/// `Σ_r (w_r − q_r)ᵀ XᵀX (w_r − q_r) / tokens`: the mean squared output error `‖(W − Q)x‖²` per
/// token, from the accumulated `XᵀX` (`xtx`, `cols × cols`), without running the layer again.
pub fn output_error(w: &[f32], q: &[f32], rows: usize, cols: usize, xtx: &[f64], tokens: u64) -> f64 {
    quadratic(w, Some(q), rows, cols, xtx, rows) / tokens.max(1) as f64
}

/// `Σ_r w_rᵀ XᵀX w_r / tokens`: the mean squared output `‖Wx‖²` (for relative errors).
pub fn output_energy(w: &[f32], rows: usize, cols: usize, xtx: &[f64], tokens: u64) -> f64 {
    quadratic(w, None, rows, cols, xtx, rows) / tokens.max(1) as f64
}

/// Rows a report estimate uses at most ([`output_error_sampled`]).
pub const SAMPLED_ROWS: usize = 256;

/// [`output_error`] estimated from at most [`SAMPLED_ROWS`] evenly spaced rows (every
/// `⌈rows / 256⌉`-th, scaled by `rows / sampled`): the per-layer report figure. Exact for
/// `rows ≤ 256`; at FFN widths the exact sum is a `rows × cols × cols` GEMM per weight, more than
/// GPTQ itself costs.
pub fn output_error_sampled(w: &[f32], q: &[f32], rows: usize, cols: usize, xtx: &[f64], tokens: u64) -> f64 {
    quadratic(w, Some(q), rows, cols, xtx, SAMPLED_ROWS) / tokens.max(1) as f64
}

/// [`output_energy`] on the rows [`output_error_sampled`] uses.
pub fn output_energy_sampled(w: &[f32], rows: usize, cols: usize, xtx: &[f64], tokens: u64) -> f64 {
    quadratic(w, None, rows, cols, xtx, SAMPLED_ROWS) / tokens.max(1) as f64
}

/// Rows per task of [`quadratic`]: fixed, so the sum does not depend on the thread count.
const QUAD_ROWS: usize = 32;

/// `Σ_r e_rᵀ M e_r` with `e = w − q` (or `w`), over every `⌈rows / max_rows⌉`-th row, scaled to all
/// rows: only the picked rows of `e` are formed (no full-size difference matrix), one f64 GEMM
/// (`E·M`, straight on `XᵀX`, no converted copy) per fixed block of rows, blocks in parallel, the
/// per-block sums added in block order — the same value for any thread count.
fn quadratic(w: &[f32], q: Option<&[f32]>, rows: usize, cols: usize, xtx: &[f64], max_rows: usize) -> f64 {
    let step = rows.div_ceil(max_rows.max(1)).max(1);
    let picked: Vec<usize> = (0..rows).step_by(step).collect();
    let m = MatRef::from_row_major_slice(&xtx[..cols * cols], cols, cols);
    let parts: Vec<f64> = picked
        .par_chunks(QUAD_ROWS)
        .map(|rs| {
            let eb = Mat::<f64>::from_fn(rs.len(), cols, |i, c| {
                let k = rs[i] * cols + c;
                (match q {
                    Some(q) => w[k] - q[k],
                    None => w[k],
                }) as f64
            });
            let mut em = Mat::<f64>::zeros(rs.len(), cols);
            faer::linalg::matmul::matmul(em.as_mut(), Accum::Replace, eb.as_ref(), m, 1.0f64, Par::Seq);
            let mut s = 0.0f64;
            for i in 0..rs.len() {
                for c in 0..cols {
                    s += em[(i, c)] * eb[(i, c)];
                }
            }
            s
        })
        .collect();
    parts.iter().sum::<f64>() * rows as f64 / picked.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_asymmetric_params_follow_gptq() {
        let g = IntGrid { bits: 4, sym: true, group: Some(4), zero_min: 0 };
        let p = g.params(&[-1.0, 0.5, 0.25, 0.75], 1.0);
        assert_eq!(p.zero, 8);
        assert_eq!(p.scale, f16::from_f32(2.0 / 15.0).to_f32());
        assert_eq!(g.code(p, -1.0), 0);
        assert_eq!(g.code(p, 1.0), 15); // 7.5 steps rounds to 8 → clamped
        let a = IntGrid { bits: 3, sym: false, group: None, zero_min: 0 };
        let p = a.params(&[0.5, 1.5, 2.0], 1.0);
        // xmin clamps to 0 → zero 0, scale 2/7
        assert_eq!(p.zero, 0);
        assert_eq!(a.code(p, 2.0), 7);
        let v1 = IntGrid { zero_min: 1, ..a };
        assert_eq!(v1.params(&[0.5, 1.5, 2.0], 1.0).zero, 1);
        // An all-zero group still gets a usable step.
        let z = g.params(&[0.0; 4], 1.0);
        assert!(z.scale > 0.0);
        assert_eq!(IntGrid::value(z, g.code(z, 0.0)), 0.0);
    }

    #[test]
    fn rtn_round_trips_grid_values_and_handles_a_ragged_group() {
        let grid = IntGrid { bits: 4, sym: false, group: Some(4), zero_min: 0 };
        let w: Vec<f32> = (0..2 * 6).map(|i| (i as f32 * 0.37).sin()).collect();
        let m = IntMatrix::rtn(grid, &w, 2, 6, None);
        assert_eq!(m.groups(), 2);
        assert_eq!(m.g_idx, vec![0, 0, 0, 0, 1, 1]);
        let d = m.dequantize();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= 0.5 * 2.0 / 15.0 + 1e-3, "{a} {b}");
        }
        // Quantizing the dequantized matrix again changes nothing.
        let again = IntMatrix::rtn(grid, &d, 2, 6, None);
        assert_eq!(again.dequantize(), d);
    }
}
