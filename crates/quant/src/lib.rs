//! quantkit-quant: deciding what each tensor becomes, and doing it.
//!
//! * [`recipe`] — a [`Recipe`] is plain data (serializable, printable, diffable) that maps every
//!   tensor to a storage type, with the reason for any deviation from the requested type.
//! * [`convert`] — the streaming pipeline: source tensors → f32 → quantize (rows in parallel,
//!   output independent of the thread count) → GGUF written atomically.

pub mod convert;
pub mod gguf_grid;
pub mod grid;
pub mod method;
pub mod quantize;
pub mod recipe;
pub mod writers;

pub use convert::{convert, ConvertOptions, ConvertReport};
pub use method::{awq, gptq, rtn};
pub use recipe::{Recipe, TensorPlan};
