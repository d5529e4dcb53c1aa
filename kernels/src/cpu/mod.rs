//! CPU kernels: one generic driver per operation, instantiated per instruction set.
//!
//! Per format the only code is a decoder (`crate::decode`); per instruction set the only code is
//! a chunk dot product (`IntDot`/`FloatDot`). The drivers below combine them and are compiled
//! inside `#[target_feature]` entry points (`x86.rs`), so decoders vectorise for the ISA at hand.

use crate::act::QAct;
use crate::decode::{Half8, IntChunk, CHUNK, GROUP};
use quantkit_formats::{FloatFormat, IntBlock};

/// The entry points of one instruction set: the generic drivers instantiated with its dot product
/// and f16 conversion, under its `#[target_feature]` attribute (none for the scalar reference).
/// The function-pointer table in `lib.rs` points at these.
macro_rules! entry_points {
    ([$($attr:meta),*], $dot:ty, $half:ty, $int:ident, $float:ident, $ideq:ident, $fdeq:ident, $qact:ident) => {
        /// # Safety
        /// The CPU must support the instruction set; see `int_gemv`.
        $(#[$attr])*
        pub(crate) unsafe fn $int<D: quantkit_formats::IntBlock>(
            w: &[u8],
            row_bytes: usize,
            k: usize,
            acts: &[QAct],
            y: *mut f32,
            ys: usize,
            rows: usize,
        ) {
            // SAFETY: forwarded.
            unsafe { super::int_gemv::<D, $dot, $half>(w, row_bytes, k, acts, y, ys, rows) }
        }
        /// # Safety
        /// The CPU must support the instruction set; see `float_gemv`.
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $float<D: quantkit_formats::FloatFormat>(
            w: &[u8],
            row_bytes: usize,
            k: usize,
            x: &[f32],
            n: usize,
            y: *mut f32,
            ys: usize,
            rows: usize,
        ) {
            // SAFETY: forwarded.
            unsafe { super::float_gemv::<D, $dot>(w, row_bytes, k, x, n, y, ys, rows) }
        }
        /// # Safety
        /// The CPU must support the instruction set.
        $(#[$attr])*
        pub(crate) unsafe fn $ideq<D: quantkit_formats::IntBlock>(
            w: &[u8],
            row_bytes: usize,
            k: usize,
            rows: usize,
            out: &mut [f32],
        ) {
            super::int_dequant::<D, $half>(w, row_bytes, k, rows, out)
        }
        /// # Safety
        /// The CPU must support the instruction set.
        $(#[$attr])*
        pub(crate) unsafe fn $fdeq<D: quantkit_formats::FloatFormat>(
            w: &[u8],
            row_bytes: usize,
            k: usize,
            rows: usize,
            out: &mut [f32],
        ) {
            super::float_dequant::<D>(w, row_bytes, k, rows, out)
        }
        /// # Safety
        /// The CPU must support the instruction set.
        $(#[$attr])*
        pub(crate) unsafe fn $qact(x: &[f32], k: usize, out: &mut [QAct]) {
            super::quantize_acts(x, k, out)
        }
    };
}
pub(crate) use entry_points;

#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod fused;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Most tokens one GEMV call handles (the decoded weight chunk is reused across them while it is
/// in L1); larger batches go through the GEMM path.
pub const MAX_GEMV_TOKENS: usize = 8;

/// Accumulates one decoded integer chunk against quantized activations.
pub trait IntDot {
    type Acc: Copy;
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn zero() -> Self::Acc;
    /// `acc += Σ_{i<n} (s[i/16]·q[i] + o[i/16]) · a.d[(off+i)/16]·a.q[off+i]`.
    ///
    /// # Safety
    /// The CPU must support the implementation's instruction set; `off + n ≤ a.len()`,
    /// `n ≤ 256`, `n % 32 == 0`.
    unsafe fn chunk(acc: &mut Self::Acc, ch: &IntChunk, a: &QAct, off: usize, n: usize);
    /// # Safety
    /// As `zero`.
    unsafe fn reduce(acc: Self::Acc) -> f32;
}

/// Accumulates one decoded f32 chunk against f32 activations.
pub trait FloatDot {
    type Acc: Copy;
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn zero() -> Self::Acc;
    /// # Safety
    /// The CPU must support the implementation's instruction set; `x.len() ≥ n`.
    unsafe fn chunk(acc: &mut Self::Acc, w: &[f32; CHUNK], x: &[f32], n: usize);
    /// # Safety
    /// As `zero`.
    unsafe fn reduce(acc: Self::Acc) -> f32;
}

/// Bytes of one decoded chunk's worth of blocks.
#[inline(always)]
fn chunk_bytes<D: IntBlock>() -> usize {
    CHUNK / D::QK * D::BYTES
}

/// `y[t·ys + r] = row_r · x_t` for `rows` rows of `w` and every token `t` of `acts`.
///
/// # Safety
/// `K`'s instruction set must be available; `y` must be valid for the writes described.
#[inline(always)]
pub(crate) unsafe fn int_gemv<D: IntBlock, K: IntDot, C: Half8>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    acts: &[QAct],
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    // A whole piece of the row (up to AHEAD chunks) is decoded before any of it is dotted: the
    // decoder's narrow stores have then left the store buffer when the dot's 64-byte loads come
    // (a load spanning several in-flight stores cannot be forwarded and stalls ~15 cycles).
    const AHEAD: usize = 16;
    let mut buf: [IntChunk; AHEAD] = std::array::from_fn(|_| IntChunk::default());
    let cb = chunk_bytes::<D>();
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        // SAFETY: forwarded from the caller.
        let mut acc = [unsafe { K::zero() }; MAX_GEMV_TOKENS];
        let mut off = 0;
        while off < k {
            let piece = (k - off).min(AHEAD * CHUNK);
            let nch = piece.div_ceil(CHUNK);
            for (c, ch) in buf.iter_mut().take(nch).enumerate() {
                let len = (piece - c * CHUNK).min(CHUNK);
                D::decode::<C>(&row[(off / CHUNK + c) * cb..], len, ch);
            }
            if let [act] = acts {
                // One token (decode): the accumulator stays in a register.
                let mut a = acc[0];
                for (c, ch) in buf.iter().take(nch).enumerate() {
                    let len = (piece - c * CHUNK).min(CHUNK);
                    // SAFETY: forwarded from the caller.
                    unsafe { K::chunk(&mut a, ch, act, off + c * CHUNK, len) };
                }
                acc[0] = a;
            } else {
                for (a, act) in acc.iter_mut().zip(acts) {
                    for (c, ch) in buf.iter().take(nch).enumerate() {
                        let len = (piece - c * CHUNK).min(CHUNK);
                        // SAFETY: forwarded from the caller.
                        unsafe { K::chunk(a, ch, act, off + c * CHUNK, len) };
                    }
                }
            }
            off += piece;
        }
        for (t, a) in acc.iter().take(acts.len()).enumerate() {
            // SAFETY: the caller guarantees y covers t·ys + r.
            unsafe { *y.add(t * ys + r) = K::reduce(*a) };
        }
    }
}

/// Float-format GEMV: `x` holds `n` rows of `k` activations.
///
/// # Safety
/// As [`int_gemv`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn float_gemv<D: FloatFormat, K: FloatDot>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    x: &[f32],
    n: usize,
    y: *mut f32,
    ys: usize,
    rows: usize,
) {
    let mut buf = [0f32; CHUNK];
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        // SAFETY: forwarded from the caller.
        let mut acc = [unsafe { K::zero() }; MAX_GEMV_TOKENS];
        let mut off = 0;
        while off < k {
            let len = (k - off).min(CHUNK);
            D::decode(&row[off * D::BYTES..], len, &mut buf);
            for (t, a) in acc.iter_mut().take(n).enumerate() {
                // SAFETY: forwarded from the caller.
                unsafe { K::chunk(a, &buf, &x[t * k + off..], len) };
            }
            off += len;
        }
        for (t, a) in acc.iter().take(n).enumerate() {
            // SAFETY: the caller guarantees y covers t·ys + r.
            unsafe { *y.add(t * ys + r) = K::reduce(*a) };
        }
    }
}

/// Dequantize `rows` rows of an integer format to f32 (`out[r·k + i]`), for the GEMM path.
#[inline(always)]
pub(crate) fn int_dequant<D: IntBlock, C: Half8>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    let mut ch = IntChunk::default();
    let cb = chunk_bytes::<D>();
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let o = &mut out[r * k..(r + 1) * k];
        let (mut off, mut boff) = (0, 0);
        while off < k {
            let len = (k - off).min(CHUNK);
            D::decode::<C>(&row[boff..], len, &mut ch);
            for (g, (dst, q)) in
                o[off..off + len].chunks_exact_mut(GROUP).zip(ch.q.chunks_exact(GROUP)).enumerate()
            {
                let (s, b) = (ch.s[g], ch.o[g]);
                for (d, q) in dst.iter_mut().zip(q) {
                    *d = s * *q as f32 + b;
                }
            }
            off += len;
            boff += cb;
        }
    }
}

/// Dequantize `rows` rows of a float format to f32.
#[inline(always)]
pub(crate) fn float_dequant<D: FloatFormat>(
    w: &[u8],
    row_bytes: usize,
    k: usize,
    rows: usize,
    out: &mut [f32],
) {
    let mut buf = [0f32; CHUNK];
    for r in 0..rows {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut off = 0;
        while off < k {
            let len = (k - off).min(CHUNK);
            D::decode(&row[off * D::BYTES..], len, &mut buf);
            out[r * k + off..r * k + off + len].copy_from_slice(&buf[..len]);
            off += len;
        }
    }
}

/// Quantize every token's activations (`x`: `n` rows of `k`).
#[inline(always)]
pub(crate) fn quantize_acts(x: &[f32], k: usize, out: &mut [QAct]) {
    for (a, xr) in out.iter_mut().zip(x.chunks_exact(k)) {
        a.quantize_into(xr);
    }
}
