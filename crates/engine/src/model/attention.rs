//! Causal grouped-query attention over the KV cache: two GEMMs per head for prefill
//! ([`attention`]), per-head dot products on the decode pool for a few new positions
//! ([`attention_few`]).

use rayon::prelude::*;

use super::ops::{exp_in_place, SEQUENTIAL};

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
