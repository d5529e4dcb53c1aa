//! Fused dequant-matmul kernels for every GGUF weight format, with runtime SIMD dispatch.
//!
//! - **Decode** (`decode`): per format, a chunk of ≤ 256 weights → unsigned codes plus a scale
//!   and an offset per 16 weights (integer formats), or → f32 (F32/F16/BF16).
//! - **GEMV** (batch ≤ [`MAX_GEMV_TOKENS`], i.e. decode): activations are quantized to int8 with a
//!   scale per 16 (`act`), each weight chunk is decoded once into an L1-resident buffer and dotted
//!   with every token (`vpdpbusd` on AVX-512 VNNI). Weights are read once, in their stored bytes.
//! - **GEMM** (larger batches, i.e. prefill / perplexity): a panel of rows is dequantized into an
//!   L2-sized f32 buffer and multiplied by all tokens with faer's f32 GEMM; the panel is reused
//!   across the whole batch, so dequantization costs ≪ 1 % of the multiply-adds. No f32 copy of a
//!   whole matrix ever exists. On CPUs with AMX-BF16 (Sapphire Rapids and later) the panel is
//!   instead packed into bf16 hi + lo tiles and multiplied on the tile unit (`cpu::amx`, within
//!   3·2⁻¹⁶ of each product; [`BatchPath`]).
//!
//! Every instruction set runs the same generic drivers (`cpu`), so a new format needs only a
//! decoder and one line in [`kernel`]; a registered format without a decoder still runs, through
//! its codec's scalar `dequantize_row` (`Gemv::Generic`).

pub mod act;
pub mod bw;
pub mod cpu;
pub mod decode;
mod matmul;
pub mod pool;

pub use act::QAct;
pub use cpu::MAX_GEMV_TOKENS;
pub use matmul::{
    amx_available, batch_path, faer_par, forward_group, forward_group_with, BatchPath, QMatrix, WeightBytes,
};

use quantkit_core::GgmlType;
use quantkit_formats::Codec;

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the reference every other kernel is tested against.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI.
    Avx512,
    /// AVX-512 with VNNI and VBMI: fused kernels (`cpu::fused`) for the formats in [`FUSED`]; the
    /// other formats run the `Avx512` kernels.
    Avx512Vbmi,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512-vnni",
            Isa::Avx512Vbmi => "avx512-vbmi",
        }
    }

    /// Every instruction set this CPU can run, scalar first.
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
                {
                    v.push(Isa::Avx512);
                    if is_x86_feature_detected!("avx512vbmi") {
                        v.push(Isa::Avx512Vbmi);
                    }
                }
            }
        }
        v
    }

    /// The best available, or the one named by `QUANTKIT_ISA` (`scalar`, `avx2`, `avx512`,
    /// `avx512vbmi`) when
    /// the CPU has it — for benchmarks and for testing the fallbacks on a big machine.
    pub fn detect() -> Isa {
        let avail = Isa::available();
        let best = *avail.last().unwrap_or(&Isa::Scalar);
        match std::env::var("QUANTKIT_ISA").ok().as_deref() {
            Some("scalar") => Isa::Scalar,
            Some("avx2") if avail.contains(&Isa::Avx2) => Isa::Avx2,
            Some("avx512") if avail.contains(&Isa::Avx512) => Isa::Avx512,
            Some("avx512vbmi") if avail.contains(&Isa::Avx512Vbmi) => Isa::Avx512Vbmi,
            _ => best,
        }
    }
}

pub(crate) type IntGemvFn = unsafe fn(&[u8], usize, usize, &[QAct], *mut f32, usize, usize);
#[allow(clippy::type_complexity)]
pub(crate) type FloatGemvFn = unsafe fn(&[u8], usize, usize, &[f32], usize, *mut f32, usize, usize);
pub(crate) type DequantFn = unsafe fn(&[u8], usize, usize, usize, &mut [f32]);
pub(crate) type QActFn = unsafe fn(&[f32], usize, &mut [QAct]);

/// How a format's GEMV runs.
#[derive(Clone, Copy)]
pub(crate) enum Gemv {
    /// Integer codes × int8 activations.
    Int(IntGemvFn, QActFn),
    /// f32 weights × f32 activations.
    Float(FloatGemvFn),
    /// No decoder: the codec's scalar dequantization, then an f32 dot (correct, slow).
    Generic(&'static Codec),
}

/// The kernels of one format for one instruction set.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub ty: GgmlType,
    pub isa: Isa,
    pub(crate) gemv: Gemv,
    pub(crate) dequant: Option<DequantFn>,
    /// The GEMV reads the stored bytes straight into registers (`cpu::fused`).
    pub fused: bool,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Kernel({}, {}, {}{})",
            self.ty.name(),
            self.isa.name(),
            self.path(),
            if self.fused { ", fused" } else { "" }
        )
    }
}

impl Kernel {
    /// `int8` (integer codes × quantized activations), `f32` or `generic`.
    pub fn path(&self) -> &'static str {
        match self.gemv {
            Gemv::Int(..) => "int8",
            Gemv::Float(_) => "f32",
            Gemv::Generic(_) => "generic",
        }
    }
}

fn int_kernel<D: decode::IntDecode>(ty: GgmlType, isa: Isa) -> Kernel {
    let (g, q, d): (IntGemvFn, QActFn, DequantFn) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vbmi => (
            cpu::x86::int_gemv_avx512::<D>,
            cpu::x86::quantize_acts_avx512,
            cpu::x86::int_dequant_avx512::<D>,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            (cpu::x86::int_gemv_avx2::<D>, cpu::x86::quantize_acts_avx2, cpu::x86::int_dequant_avx2::<D>)
        }
        _ => (cpu::scalar::int_gemv::<D>, cpu::scalar::quantize_acts, cpu::scalar::int_dequant::<D>),
    };
    Kernel { ty, isa, gemv: Gemv::Int(g, q), dequant: Some(d), fused: false }
}

fn float_kernel<D: decode::FloatDecode>(ty: GgmlType, isa: Isa) -> Kernel {
    let (g, d): (FloatGemvFn, DequantFn) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vbmi => {
            (cpu::x86::float_gemv_avx512::<D>, cpu::x86::float_dequant_avx512::<D>)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (cpu::x86::float_gemv_avx2::<D>, cpu::x86::float_dequant_avx2::<D>),
        _ => (cpu::scalar::float_gemv::<D>, cpu::scalar::float_dequant::<D>),
    };
    Kernel { ty, isa, gemv: Gemv::Float(g), dequant: Some(d), fused: false }
}

/// The formats with a fused AVX-512 VBMI GEMV (`cpu::fused`).
pub const FUSED: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The kernels for `ty` on `isa` (an ISA the CPU lacks must not be passed; see
/// [`Isa::available`]). Formats not listed here fall back to their codec (`None` only for a type
/// with no codec at all).
pub fn kernel(ty: GgmlType, isa: Isa) -> Option<Kernel> {
    use decode as d;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vbmi {
        use cpu::fused::{self as f, dequant, gemv};
        // The activation quantizer is the Avx512 one; the GEMV and the batch path's dequantizer
        // read the stored bytes with the fused decoders.
        let with = |g: IntGemvFn, dq: DequantFn, base: Kernel| match base.gemv {
            Gemv::Int(_, q) => Kernel { gemv: Gemv::Int(g, q), dequant: Some(dq), fused: true, ..base },
            _ => base,
        };
        macro_rules! fused {
            ($f:ty, $d:ty) => {
                Some((gemv::<$f> as IntGemvFn, dequant::<$f> as DequantFn, int_kernel::<$d>(ty, isa)))
            };
        }
        let fused = match ty {
            // Keep this list in step with FUSED below.
            GgmlType::Q4_0 => fused!(f::Q4_0, d::Q4_0),
            GgmlType::Q4_1 => fused!(f::Q4_1, d::Q4_1),
            GgmlType::Q5_0 => fused!(f::Q5_0, d::Q5_0),
            GgmlType::Q5_1 => fused!(f::Q5_1, d::Q5_1),
            GgmlType::Q8_0 => fused!(f::Q8_0, d::Q8_0),
            GgmlType::Q2_K => fused!(f::Q2K, d::Q2K),
            GgmlType::Q4_K => fused!(f::Q4K, d::Q4K),
            GgmlType::Q5_K => fused!(f::Q5K, d::Q5K),
            GgmlType::Q6_K => fused!(f::Q6K, d::Q6K),
            _ => None,
        };
        if let Some((g, dq, base)) = fused {
            return Some(with(g, dq, base));
        }
    }
    Some(match ty {
        GgmlType::F32 => float_kernel::<d::F32>(ty, isa),
        GgmlType::F16 => float_kernel::<d::F16>(ty, isa),
        GgmlType::BF16 => float_kernel::<d::BF16>(ty, isa),
        GgmlType::Q4_0 => int_kernel::<d::Q4_0>(ty, isa),
        GgmlType::Q4_1 => int_kernel::<d::Q4_1>(ty, isa),
        GgmlType::Q5_0 => int_kernel::<d::Q5_0>(ty, isa),
        GgmlType::Q5_1 => int_kernel::<d::Q5_1>(ty, isa),
        GgmlType::Q8_0 => int_kernel::<d::Q8_0>(ty, isa),
        GgmlType::Q2_K => int_kernel::<d::Q2K>(ty, isa),
        GgmlType::Q3_K => int_kernel::<d::Q3K>(ty, isa),
        GgmlType::Q4_K => int_kernel::<d::Q4K>(ty, isa),
        GgmlType::Q5_K => int_kernel::<d::Q5K>(ty, isa),
        GgmlType::Q6_K => int_kernel::<d::Q6K>(ty, isa),
        _ => {
            let codec = quantkit_formats::codec(ty).ok()?;
            Kernel { ty, isa: Isa::Scalar, gemv: Gemv::Generic(codec), dequant: None, fused: false }
        }
    })
}

#[cfg(test)]
mod tests;
