//! Quantized matrices and the threaded GEMV/GEMM drivers.

use std::cell::RefCell;
use std::sync::Arc;

use faer::{Accum, MatMut, MatRef, Par};
use quantkit_core::{Error, GgmlType, Result};
use rayon::prelude::*;

use crate::act::QAct;
use crate::cpu::MAX_GEMV_TOKENS;
use crate::{kernel, Gemv, Isa, Kernel};

/// A weight's stored bytes, shared (a memory-mapped GGUF or an owned buffer); never copied.
#[derive(Clone)]
pub struct WeightBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
}

impl std::fmt::Debug for WeightBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBytes({}..+{})", self.start, self.len)
    }
}

impl WeightBytes {
    /// `owner[start..start + len]`; an error if that is outside `owner`.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Result<Self> {
        let total = (*owner).as_ref().len();
        if start.checked_add(len).is_none_or(|e| e > total) {
            return Err(Error::Invalid(format!(
                "weight bytes {start}..+{len} lie outside a buffer of {total}"
            )));
        }
        Ok(WeightBytes { owner, start, len })
    }
    pub fn owned(v: Vec<u8>) -> Self {
        let len = v.len();
        WeightBytes { owner: Arc::new(v), start: 0, len }
    }
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A weight matrix `[rows × cols]` (GGUF row order: each row is `cols` weights, `cols` along
/// `dims[0]`) in its stored format. `forward` computes `y[n × rows] = x[n × cols] · Wᵀ`.
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    data: WeightBytes,
    kernel: Kernel,
}

pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: used only to hand disjoint output ranges to worker threads.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(&self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static PANEL: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    static AMX_SCRATCH: RefCell<crate::cpu::amx::Scratch> = RefCell::new(Default::default());
}

/// Whether the AMX batch path can run here (x86-64 with AMX-BF16 and the OS's permission).
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl QMatrix {
    /// Wrap stored bytes; checks the row length against the block size and the byte count.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: WeightBytes) -> Result<Self> {
        Self::with_isa(ty, rows, cols, data, Isa::detect())
    }

    /// As [`QMatrix::new`] with a chosen instruction set (it must be in [`Isa::available`]).
    pub fn with_isa(ty: GgmlType, rows: usize, cols: usize, data: WeightBytes, isa: Isa) -> Result<Self> {
        let row_bytes = ty.row_bytes(cols as u64).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: a row of {cols} is not a whole number of {}-weight blocks",
                ty.name(),
                ty.block_size()
            ))
        })? as usize;
        if rows.checked_mul(row_bytes) != Some(data.len()) {
            return Err(Error::Invalid(format!(
                "{} matrix {rows}×{cols} needs {} bytes, got {}",
                ty.name(),
                rows as u128 * row_bytes as u128,
                data.len()
            )));
        }
        if !Isa::available().contains(&isa) {
            return Err(Error::Unsupported(format!("instruction set {} on this CPU", isa.name())));
        }
        let kernel = kernel(ty, isa)
            .ok_or_else(|| Error::Unsupported(format!("{} weights in the kernels", ty.name())))?;
        Ok(QMatrix { ty, rows, cols, row_bytes, data, kernel })
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }
    pub fn bytes(&self) -> &[u8] {
        self.data.as_slice()
    }
    pub fn weight_bytes(&self) -> &WeightBytes {
        &self.data
    }

    /// Dequantize rows `[r0, r1)` into `out` (`(r1 − r0) × cols`).
    pub fn dequantize_rows(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let w = &self.bytes()[r0 * self.row_bytes..r1 * self.row_bytes];
        // SAFETY: the kernel's ISA was checked at construction; sizes were validated.
        unsafe { (self.kernel.dequant)(w, self.row_bytes, self.cols, r1 - r0, out) }
    }

    /// `y[n × rows] = x[n × cols] · Wᵀ`.
    pub fn forward(&self, x: &[f32], n: usize, y: &mut [f32]) {
        forward_group(&[self], x, n, &mut [y]);
    }

    /// GEMV over rows `[r0, r1)` for `n ≤ MAX_GEMV_TOKENS` tokens; `y` points at row r0 of token
    /// 0, token stride `self.rows`.
    ///
    /// # Safety
    /// `y` must be valid for those writes and not written by anyone else meanwhile.
    unsafe fn gemv_rows(&self, x: &[f32], acts: &[QAct], n: usize, r0: usize, r1: usize, y: *mut f32) {
        let w = &self.bytes()[r0 * self.row_bytes..r1 * self.row_bytes];
        match self.kernel.gemv {
            // SAFETY: ISA checked at construction; the caller guarantees y.
            Gemv::Int(f, _) => unsafe { f(w, self.row_bytes, self.cols, &acts[..n], y, self.rows, r1 - r0) },
            Gemv::Float(f) => unsafe { f(w, self.row_bytes, self.cols, x, n, y, self.rows, r1 - r0) },
        }
    }

    /// Batched path: panels of rows dequantized into an L2-sized buffer, times all tokens (faer).
    fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, k) = (self.rows, self.cols);
        if self.ty == GgmlType::F32 {
            if let Ok(w) = bytemuck_f32(self.bytes()) {
                let lhs = MatRef::from_row_major_slice(x, n, k);
                let rhs = MatRef::from_column_major_slice(w, k, rows);
                let dst = MatMut::from_row_major_slice_mut(y, n, rows);
                faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, faer_par());
                return;
            }
        }
        panel_gemm(rows, k, x, n, y, &|r0, r1, w| self.dequantize_rows(r0, r1, w));
    }

    fn for_each_panel(&self, align: usize, f: impl Fn(usize, usize) + Sync + Send) {
        for_each_panel(self.rows, self.cols, align, f)
    }

    /// The AMX batch path (`cpu::amx`): panels of 16-row groups, dequantized and packed into
    /// bf16 hi/lo tiles, times every token of `a`.
    #[cfg(target_arch = "x86_64")]
    fn gemm_amx(&self, a: &crate::cpu::amx::Acts, y: &mut [f32]) {
        assert_eq!(a.k, self.cols);
        assert_eq!(y.len(), a.n * self.rows);
        let rows = self.rows;
        let yp = SendPtr(y.as_mut_ptr());
        self.for_each_panel(16, |r0, r1| {
            AMX_SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let deq = |i0: usize, i1: usize, out: &mut [f32]| self.dequantize_rows(r0 + i0, r0 + i1, out);
                // SAFETY: `a` exists only when AMX is available; columns r0..r1 of the n × rows
                // output belong to this task alone.
                unsafe { crate::cpu::amx::gemm_panel(a, r1 - r0, &deq, &mut s, yp.get().add(r0), rows) };
            });
        });
    }
}

/// `f(r0, r1)` on rayon for each batch-path panel of a `rows × k` matrix: ≈ 256 KiB–1 MiB of
/// f32, a multiple of `align` rows, and a multiple of the thread count of panels when the matrix
/// allows.
fn for_each_panel(rows: usize, k: usize, align: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let threads = rayon::current_num_threads().max(1);
    let target = (262_144 / k.max(1)).clamp(16, 512);
    let tasks = rows.div_ceil(target).max(1).div_ceil(threads) * threads;
    let panel = rows.div_ceil(tasks).max(1).div_ceil(align) * align;
    (0..rows.div_ceil(panel)).into_par_iter().for_each(|p| f(p * panel, ((p + 1) * panel).min(rows)));
}

/// `y[n × rows] = x[n × k] · Wᵀ` where `deq(r0, r1, out)` writes rows `[r0, r1)` of W as f32:
/// panels of rows decoded into an L2-sized thread-local buffer, times all tokens (faer). No f32
/// copy of the whole matrix exists.
pub(crate) fn panel_gemm(
    rows: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    deq: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) {
    let lhs = MatRef::from_row_major_slice(x, n, k);
    let yp = SendPtr(y.as_mut_ptr());
    for_each_panel(rows, k, 1, |r0, r1| {
        PANEL.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.resize((r1 - r0) * k, 0.0);
            let w = &mut buf[..(r1 - r0) * k];
            deq(r0, r1, w);
            let rhs = MatRef::from_column_major_slice(w, k, r1 - r0);
            // SAFETY: columns r0..r1 of the n × rows output belong to this task alone.
            let dst = unsafe { MatMut::from_raw_parts_mut(yp.get().add(r0), n, r1 - r0, rows as isize, 1) };
            faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
        });
    });
}

fn bytemuck_f32(b: &[u8]) -> std::result::Result<&[f32], ()> {
    if b.len() % 4 != 0 || (b.as_ptr() as usize) % std::mem::align_of::<f32>() != 0 {
        return Err(());
    }
    // SAFETY: aligned, length a multiple of 4, and every bit pattern is a valid f32.
    Ok(unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4) })
}

/// faer's parallelism for the current rayon pool (sequential with one thread).
pub fn faer_par() -> Par {
    let n = rayon::current_num_threads();
    if n > 1 {
        Par::rayon(n)
    } else {
        Par::Seq
    }
}

/// How batches larger than [`MAX_GEMV_TOKENS`] run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPath {
    /// Dequantized panels × f32 GEMM (faer): the exact reference, and the default without AMX.
    Gemm,
    /// Dequantized panels × AMX-BF16 tiles, both operands split into bf16 hi + lo
    /// (`cpu::amx`): within 3·2⁻¹⁶ of each exact product, 1.1–1.6× the f32 GEMM here; the
    /// default where the CPU has AMX. F32 matrices (e.g. `--dequantize`) keep the f32 GEMM.
    Amx,
    /// The decode kernels (int8 activations), [`MAX_GEMV_TOKENS`] tokens at a time: slower, but
    /// lets a perplexity run measure exactly what generation computes.
    Gemv,
}

/// The batch path: [`BatchPath::Amx`] where the CPU has it, else [`BatchPath::Gemm`];
/// `QUANTKIT_BATCH=gemm|amx|gemv` chooses (`amx` falls back to `gemm` without AMX). Read once.
pub fn batch_path() -> BatchPath {
    static P: std::sync::OnceLock<BatchPath> = std::sync::OnceLock::new();
    *P.get_or_init(|| {
        let amx = if amx_available() { BatchPath::Amx } else { BatchPath::Gemm };
        match std::env::var("QUANTKIT_BATCH").as_deref() {
            Ok("gemv") => BatchPath::Gemv,
            Ok("gemm") => BatchPath::Gemm,
            _ => amx,
        }
    })
}

/// The AMX batch path for a group: the activations are split once for every matrix.
#[cfg(target_arch = "x86_64")]
fn forward_amx(ms: &[&QMatrix], x: &[f32], n: usize, k: usize, ys: &mut [&mut [f32]]) {
    let mut acts = None;
    for (m, y) in ms.iter().zip(ys.iter_mut()) {
        if m.ty == GgmlType::F32 {
            m.gemm(x, n, y);
        } else {
            m.gemm_amx(acts.get_or_insert_with(|| crate::cpu::amx::Acts::new(x, n, k)), y);
        }
    }
}

/// `ys[i][n × ms[i].rows] = x[n × cols] · ms[i]ᵀ` for matrices sharing one input (q/k/v,
/// gate/up): for small batches the activations are quantized once and all matrices' rows go to
/// the thread pool as one job, so a decode step pays one fork/join per group, not per matrix.
pub fn forward_group(ms: &[&QMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    forward_group_with(batch_path(), ms, x, n, ys)
}

/// [`forward_group`] with batches (`n > MAX_GEMV_TOKENS`) on the given path (`Amx` without AMX
/// runs `Gemm`).
pub fn forward_group_with(path: BatchPath, ms: &[&QMatrix], x: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    assert_eq!(ms.len(), ys.len());
    let Some(first) = ms.first() else { return };
    let k = first.cols;
    assert_eq!(x.len(), n * k, "input is not n × cols");
    for (m, y) in ms.iter().zip(ys.iter()) {
        assert_eq!(m.cols, k, "matrices in a group share their input width");
        assert_eq!(y.len(), n * m.rows, "output is not n × rows");
    }
    if n == 0 {
        return;
    }
    if n > MAX_GEMV_TOKENS {
        let path = if path == BatchPath::Amx && !amx_available() { BatchPath::Gemm } else { path };
        match path {
            BatchPath::Gemm => {
                for (m, y) in ms.iter().zip(ys.iter_mut()) {
                    m.gemm(x, n, y);
                }
                return;
            }
            #[cfg(target_arch = "x86_64")]
            BatchPath::Amx => {
                forward_amx(ms, x, n, k, ys);
                return;
            }
            _ => {}
        }
        // Forced GEMV: blocks of MAX_GEMV_TOKENS tokens through the int8 kernels.
        let mut outs: Vec<Vec<f32>> = ms.iter().map(|m| vec![0f32; MAX_GEMV_TOKENS * m.rows]).collect();
        let mut t0 = 0;
        while t0 < n {
            let nb = (n - t0).min(MAX_GEMV_TOKENS);
            let mut views: Vec<&mut [f32]> =
                outs.iter_mut().zip(ms).map(|(o, m)| &mut o[..nb * m.rows]).collect();
            forward_group_with(path, ms, &x[t0 * k..(t0 + nb) * k], nb, &mut views);
            for ((o, m), y) in outs.iter().zip(ms).zip(ys.iter_mut()) {
                y[t0 * m.rows..(t0 + nb) * m.rows].copy_from_slice(&o[..nb * m.rows]);
            }
            t0 += nb;
        }
        return;
    }
    // Per call, not thread-local: a worker waiting in the join below may run another forward
    // (work stealing), which must not find this call's buffers borrowed.
    let mut acts = Vec::new();
    if let Some(q) = ms.iter().find_map(|m| match m.kernel.gemv {
        Gemv::Int(_, q) => Some(q),
        _ => None,
    }) {
        acts.resize_with(n, QAct::default);
        // SAFETY: the ISA was checked when the matrix was built.
        unsafe { q(x, k, &mut acts[..n]) };
    }
    {
        let total: usize = ms.iter().map(|m| m.rows).sum();
        let threads = rayon::current_num_threads().max(1);
        // Enough pieces to balance, few enough that each is ≥ 8 rows of work.
        let piece = total.div_ceil(threads * 8).max(8);
        let mut tasks = Vec::new();
        for (mi, (m, y)) in ms.iter().zip(ys.iter_mut()).enumerate() {
            let yp = y.as_mut_ptr();
            let mut r0 = 0;
            while r0 < m.rows {
                let r1 = (r0 + piece).min(m.rows);
                // SAFETY: r0 < rows, inside y.
                tasks.push((mi, r0, r1, SendPtr(unsafe { yp.add(r0) })));
                r0 = r1;
            }
        }
        let acts = &acts[..];
        let run = |(mi, r0, r1, p): &(usize, usize, usize, SendPtr)| {
            // SAFETY: each task owns rows r0..r1 of its matrix's output for every token.
            unsafe { ms[*mi].gemv_rows(x, acts, n, *r0, *r1, p.get()) };
        };
        crate::pool::pool().run(tasks.len(), &|i| run(&tasks[i]));
    }
}
