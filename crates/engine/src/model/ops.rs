//! Element-wise maths of the forward pass: RMSNorm, RoPE, SwiGLU and a vectorisable `exp` (for
//! softmax), the last two compiled for several vector widths and chosen at run time by the
//! kernels' instruction-set choice ([`quantkit_kernels::Isa::detect`], so `QUANTKIT_ISA` applies).

use std::sync::OnceLock;

use quantkit_kernels::Isa;
use rayon::prelude::*;

use super::Model;

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
pub(super) const SEQUENTIAL: usize = 1 << 14;

impl Model {
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
}

/// The vector width [`wide!`] functions run at. Made only from an instruction set the CPU has
/// ([`Wide::for_isa`]), which is what makes running the wider variants sound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wide(Width);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Width {
    /// Baseline x86-64 (SSE2), as the rest of the engine is built.
    Base,
    Avx2,
    /// AVX-512 F/DQ/VL/BW.
    Avx512,
}

impl Wide {
    /// The width for `isa`, which must be one this CPU has (from [`Isa::detect`] or
    /// [`Isa::available`]). The kernels' AVX-512 levels imply F/BW/VL but not DQ, which the
    /// AVX-512 variant is also compiled with: without DQ it runs the AVX2 variant.
    fn for_isa(isa: Isa) -> Wide {
        Wide(match isa {
            Isa::Scalar => Width::Base,
            Isa::Avx2 => Width::Avx2,
            Isa::Avx512 | Isa::Avx512Vbmi if has_avx512dq() => Width::Avx512,
            Isa::Avx512 | Isa::Avx512Vbmi => Width::Avx2,
        })
    }

    /// The width for the kernels' choice ([`Isa::detect`]: the best the CPU has, or the one named
    /// by `QUANTKIT_ISA`), worked out once per process.
    pub(crate) fn detect() -> Wide {
        static WIDE: OnceLock<Wide> = OnceLock::new();
        *WIDE.get_or_init(|| Wide::for_isa(Isa::detect()))
    }
}

fn has_avx512dq() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512dq");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Defines `$name(args)`: `$body` (an `#[inline(always)]` element-wise function) compiled for the
/// widest vectors allowed (AVX-512 or AVX2; the engine is otherwise built for baseline x86-64),
/// chosen at run time by [`Wide::detect`]; and `$at(w, args)`, the same at a given width. No fused
/// multiply-adds are formed (Rust never contracts), so every variant gives the same bits.
macro_rules! wide {
    ($(#[$m:meta])* $vis:vis fn $name:ident, $at:ident($($a:ident: $t:ty),*) => $body:ident) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) {
            $at(Wide::detect(), $($a),*)
        }

        fn $at(w: Wide, $($a: $t),*) {
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
                match w.0 {
                    // SAFETY: a `Wide` is made only for features the CPU has (`Wide::for_isa`).
                    Width::Avx512 => return unsafe { avx512($($a),*) },
                    // SAFETY: as above.
                    Width::Avx2 => return unsafe { avx2($($a),*) },
                    Width::Base => {}
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = w;
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

wide!(fn swiglu_chunk, swiglu_chunk_at(gc: &mut [f32], uc: &[f32]) => swiglu_body);

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

wide!(
    /// `x ← exp(x)` for a slice, vectorisable (no libm call): range reduction by ln 2 in two parts and
    /// a degree-6 polynomial (Cephes `expf`), relative error ≈ 1e-7; inputs below −87 give 0.
    pub fn exp_in_place, exp_in_place_at(x: &mut [f32]) => exp_body
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
        #[allow(clippy::manual_clamp)]
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

    /// Every width this CPU can run (the scalar choice, `QUANTKIT_ISA=scalar`, included) gives the
    /// bits of the baseline build, for `exp` and SwiGLU.
    #[test]
    fn every_width_gives_the_same_bits() {
        let widths: Vec<Wide> = Isa::available().into_iter().map(Wide::for_isa).collect();
        assert_eq!(Wide::for_isa(Isa::Scalar), Wide(Width::Base));
        assert_eq!(widths[0], Wide(Width::Base));
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
        let mut xs: Vec<f32> = (-9000..=8700).map(|i| i as f32 * 0.01 + 0.003).collect();
        xs.extend([f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -87.5, 0.0, -0.0]);
        let mut want = xs.clone();
        exp_body(&mut want);
        // A full SwiGLU chunk and a ragged one.
        let g: Vec<f32> = (0..4096 + 1000).map(|i| ((i * 37 % 2001) as f32 - 1000.0) * 0.013).collect();
        let u: Vec<f32> = (0..g.len()).map(|i| ((i * 53 % 997) as f32 - 498.0) * 0.021).collect();
        let mut want_g = g.clone();
        for (gc, uc) in want_g.chunks_mut(4096).zip(u.chunks(4096)) {
            swiglu_body(gc, uc);
        }
        for &w in &widths {
            let mut a = xs.clone();
            exp_in_place_at(w, &mut a);
            assert!(same(&a, &want), "exp at {w:?}");
            let mut b = g.clone();
            for (gc, uc) in b.chunks_mut(4096).zip(u.chunks(4096)) {
                swiglu_chunk_at(w, gc, uc);
            }
            assert!(same(&b, &want_g), "swiglu at {w:?}");
        }
        let mut b = g.clone();
        swiglu(&mut b, &u);
        assert!(same(&b, &want_g), "swiglu at {:?}", Wide::detect());
    }
}
