//! quantkit-quant: deciding what each tensor becomes, and doing it.
//!
//! * [`recipe`] — a [`Recipe`] is plain data (serializable, printable, diffable) that maps every
//!   tensor to a storage type, with the reason for any deviation from the requested type.
//! * [`convert`] — the streaming pipeline: source tensors → f32 → quantize (rows in parallel,
//!   output independent of the thread count) → GGUF written atomically.
//! * [`quantize`] — the calibrated job: plan (every rule checked once) → one layer-sequential
//!   pass per target → write every requested output.
//! * [`method`] — the calibrated methods behind one trait, one file each ([`rtn`], [`gptq`],
//!   [`awq`]), and the pass that drives them.
//! * [`grid`] — the integer group-affine grid ([`grid::IntSpec`], the one validated value for it)
//!   and quantized matrices; [`gguf_grid`] — every GGUF integer type as a GPTQ grid, from the
//!   formats registry; [`nf4_grid`] — bitsandbytes NF4 as a GPTQ grid (GPTQ-into-NF4).
//! * [`writers`] — GPTQ v1/v2, AWQ and compressed-tensors checkpoint folders (the bytes come from
//!   `quantkit_io::layout`), and the 8-bit compressed-tensors folders (int8 W8A8; FP8 weights
//!   quantized by [`fp8`]).

pub mod convert;
pub mod fp8;
pub mod gguf_grid;
pub mod grid;
pub mod method;
pub mod nf4_grid;
pub mod quantize;
pub mod recipe;
pub mod writers;

pub use convert::{convert, ConvertOptions, ConvertReport};
pub use method::{awq, gptq, rtn};
pub use recipe::{Recipe, TensorPlan};
