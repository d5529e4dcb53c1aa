//! quantkit-engine: the measuring instrument. Every quality figure quantkit reports (perplexity,
//! KL divergence) comes from this forward pass, which is tested against transformers and llama.cpp.
//!
//! * [`model`] — Llama-family forward pass (weights in their stored format or dequantized), KV cache,
//!   chunked prefill, and the [`model::Observer`] seam for calibration.
//! * [`calib`] — block-staged execution for calibration: one block at a time over a batch, with a
//!   [`BlockHook`] that sees each linear group's input and may replace weights between stages.
//! * [`linear`] — the [`linear::Linear`] trait and [`linear::QLinear`], a weight in its stored
//!   format run by `quantkit-kernels`.
//! * [`tokenizer`] — HF `tokenizers` from tokenizer.json or from GGUF metadata.
//! * [`eval`] — perplexity (llama-perplexity's method and the sliding-window HF method), KL
//!   divergence against saved base logits, greedy/temperature generation.
//! * [`baselogits`] — saved base log-probabilities: full (`QKLOGIT1`), top-K (`QKLOGIT2`) and
//!   llama.cpp's `--kl-divergence-base` file.

pub mod baselogits;
pub mod calib;
pub mod eval;
pub mod linear;
pub mod model;
pub mod tokenizer;

pub use calib::{BlockHook, BlockWeights, Proj, SeqStore, Spill};
pub use model::{KvCache, Model, Observer, Site, WeightMode};
pub use tokenizer::Tokenizer;
