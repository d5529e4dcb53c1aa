//! quantkit-kernels: fused dequant-matmul kernels for every GGUF weight format, with runtime SIMD
//! dispatch ([`Isa`], [`kernel`]).
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
//! Every instruction set runs the same generic drivers (`cpu`) over each format's own decoder
//! (`IntBlock::decode` / `FloatFormat::decode`, in the format's file in quantkit-formats), and the
//! kernel table ([`kernel`], [`fused_formats`]) is generated from the formats registry
//! (`quantkit_formats::for_each_format!`): a new format needs no line here.
//!
//! Modules: [`act`] (int8 activations, one scale per 16: `QAct`) · [`cpu`] (the generic drivers
//! per instruction set: `scalar`, `x86` AVX2/AVX-512 VNNI, `fused` AVX-512 VBMI one file per
//! format, `amx` AMX-BF16 batch GEMM) · `matmul` ([`QMatrix`] over mapped bytes, threaded
//! GEMV/GEMM, [`forward_group`], [`BatchPath`]) · [`pool`] (the spinning decode pool) · [`bw`]
//! (STREAM-style bandwidth) · [`decode`] (re-exported from quantkit-formats: the chunk form).

pub mod act;
pub mod bw;
pub mod cpu;
/// The decoded chunk form the generic kernels work on (owned by quantkit-formats, where each
/// format's decoder lives).
pub use quantkit_formats::decode;
mod matmul;
pub mod nf4;
pub mod pool;
pub mod w8;

pub use act::QAct;
pub use cpu::MAX_GEMV_TOKENS;
pub use matmul::{
    amx_available, batch_path, faer_par, forward_group, forward_group_with, BatchPath, QMatrix, WeightBytes,
};

use quantkit_core::GgmlType;
use quantkit_formats::{FloatFormat, IntBlock};

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust: the reference every other kernel is tested against.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL with VNNI.
    Avx512,
    /// AVX-512 with VNNI and VBMI: fused kernels (`cpu::fused`) for the formats marked `fused` in
    /// the registry ([`fused_formats`]); the other formats run the `Avx512` kernels.
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
}

/// The kernels of one format for one instruction set.
#[derive(Clone, Copy)]
pub struct Kernel {
    pub ty: GgmlType,
    pub isa: Isa,
    pub(crate) gemv: Gemv,
    pub(crate) dequant: DequantFn,
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
    /// `int8` (integer codes × quantized activations) or `f32`.
    pub fn path(&self) -> &'static str {
        match self.gemv {
            Gemv::Int(..) => "int8",
            Gemv::Float(_) => "f32",
        }
    }
}

fn int_kernel<B: IntBlock>(isa: Isa) -> Kernel {
    let (g, q, d): (IntGemvFn, QActFn, DequantFn) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vbmi => (
            cpu::x86::int_gemv_avx512::<B>,
            cpu::x86::quantize_acts_avx512,
            cpu::x86::int_dequant_avx512::<B>,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            (cpu::x86::int_gemv_avx2::<B>, cpu::x86::quantize_acts_avx2, cpu::x86::int_dequant_avx2::<B>)
        }
        _ => (cpu::scalar::int_gemv::<B>, cpu::scalar::quantize_acts, cpu::scalar::int_dequant::<B>),
    };
    Kernel { ty: B::TYPE, isa, gemv: Gemv::Int(g, q), dequant: d, fused: false }
}

/// A format with a fused kernel (`cpu::fused`): on AVX-512 VBMI its GEMV and the batch path's
/// dequantizer read the stored bytes with the fused decoders (the activation quantizer stays the
/// AVX-512 one); elsewhere its generic kernels.
#[cfg(target_arch = "x86_64")]
fn fused_kernel<B: IntBlock + cpu::fused::Fused>(isa: Isa) -> Kernel {
    let base = int_kernel::<B>(isa);
    match (isa, base.gemv) {
        (Isa::Avx512Vbmi, Gemv::Int(_, q)) => Kernel {
            gemv: Gemv::Int(cpu::fused::gemv::<B>, q),
            dequant: cpu::fused::dequant::<B>,
            fused: true,
            ..base
        },
        _ => base,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn fused_kernel<B: IntBlock>(isa: Isa) -> Kernel {
    int_kernel::<B>(isa)
}

fn float_kernel<F: FloatFormat>(isa: Isa) -> Kernel {
    let (g, d): (FloatGemvFn, DequantFn) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vbmi => {
            (cpu::x86::float_gemv_avx512::<F>, cpu::x86::float_dequant_avx512::<F>)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => (cpu::x86::float_gemv_avx2::<F>, cpu::x86::float_dequant_avx2::<F>),
        _ => (cpu::scalar::float_gemv::<F>, cpu::scalar::float_dequant::<F>),
    };
    Kernel { ty: F::TYPE, isa, gemv: Gemv::Float(g), dequant: d, fused: false }
}

/// The kernel table, generated from the formats registry (`quantkit_formats::for_each_format!`):
/// a row's kind picks the generic integer or float drivers, `fused` adds its fused kernel.
macro_rules! kernel_table {
    ($($kind:ident $ty:ident $imp:path, $kernel:ident;)*) => {
        /// The kernels for `ty` on `isa` (an ISA the CPU lacks must not be passed; see
        /// [`Isa::available`]); `None` for a type that is not in the registry.
        pub fn kernel(ty: GgmlType, isa: Isa) -> Option<Kernel> {
            $(if ty == GgmlType::$ty {
                return Some(kernel_table!(@row $kind $kernel $imp, isa));
            })*
            None
        }

        /// The formats with a fused AVX-512 VBMI GEMV (`cpu::fused`), in registry order.
        pub fn fused_formats() -> Vec<GgmlType> {
            let mut v = vec![];
            $(if kernel_table!(@fused $kernel) {
                v.push(GgmlType::$ty);
            })*
            v
        }
    };
    (@row float $kernel:ident $imp:path, $isa:expr) => { float_kernel::<$imp>($isa) };
    (@row int generic $imp:path, $isa:expr) => { int_kernel::<$imp>($isa) };
    (@row int fused $imp:path, $isa:expr) => { fused_kernel::<$imp>($isa) };
    (@row int_nogrid $kernel:ident $imp:path, $isa:expr) => { kernel_table!(@row int $kernel $imp, $isa) };
    (@fused fused) => { true };
    (@fused generic) => { false };
}
quantkit_formats::for_each_format!(kernel_table);

#[cfg(test)]
mod tests;
