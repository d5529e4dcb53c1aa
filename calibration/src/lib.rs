//! quantkit-calibration: what a calibrated quantizer needs to know about real activations.
//!
//! * [`corpus`] — seeded token samples from a text corpus (file or folder) or from the model
//!   itself, and the [`corpus::Manifest`] that records them.
//! * [`stats`] — per linear-group input statistics (`Σ x xᵀ`, `Σ |x|`, `Σ x²`), accumulated in f64
//!   in sample order so the result does not depend on the thread count.
//! * [`run`] — the layer-sequential pass through the engine: one block at a time, with a
//!   [`quantkit_engine::BlockHook`] that may quantize between stages (true-sequential GPTQ).

pub mod corpus;
pub mod stats;

use quantkit_core::Result;
use quantkit_engine::{BlockHook, Model};

pub use corpus::{Manifest, Samples};
pub use stats::SiteStats;

/// Run every block of `model` over `samples` (all of length `seqlen`) with `hook`, block by block:
/// the embeddings of all samples are computed once, then each block's output (with the weights
/// the hook left) feeds the next. `progress(done, total)` counts sample-stages.
pub fn run(
    model: &mut Model,
    samples: &Samples,
    hook: &mut dyn BlockHook,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<()> {
    let seqlen = samples.seqlen;
    let mut x = Vec::with_capacity(samples.tokens.len() * model.cfg.hidden_size as usize);
    for s in samples.tokens.chunks(seqlen) {
        x.extend(model.embed_tokens(s)?);
    }
    let n = samples.count() as u64;
    let layers = model.num_layers() as u64;
    let total = layers * n * 5;
    let mut done = 0u64;
    for li in 0..model.num_layers() {
        let mut tick = || {
            done += 1;
            progress(done, total);
        };
        model.calibrate_block(li, &mut x, seqlen, hook, &mut tick)?;
    }
    Ok(())
}
