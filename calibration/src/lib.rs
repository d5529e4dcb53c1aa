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

use std::io::Read;
use std::path::{Path, PathBuf};

use quantkit_core::AtomicFile;
use quantkit_core::Error;
use quantkit_engine::{SeqStore, Spill};
use quantkit_io::source::ModelSource;

/// How [`run`] holds the model and its activations.
#[derive(Debug, Clone, Default)]
pub struct RunOptions<'a> {
    /// Read each block's weights from here when the pass reaches it and drop them after (a model
    /// from [`Model::load_streaming`]); `None`: the model holds all its weights.
    pub source: Option<&'a ModelSource>,
    /// Activations in memory up to this many bytes, beyond it in temporary files (`None`: memory).
    pub spill: Option<Spill>,
    /// Checkpoint folder: after each block the residual stream is saved here (and the hook saves
    /// its block, [`BlockHook::block_done`]); a run given a folder that holds a checkpoint resumes
    /// after its last block ([`BlockHook::restore`]).
    pub work: Option<PathBuf>,
}

/// Run every block of `model` over `samples` (all of length `seqlen`) with `hook`, block by block:
/// the embeddings of all samples are computed once, then each block's output (with the weights
/// the hook left) feeds the next. `progress(done, total)` counts sample-stages.
pub fn run(
    model: &mut Model,
    samples: &Samples,
    hook: &mut dyn BlockHook,
    opts: &RunOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<RunStats> {
    let seqlen = samples.seqlen;
    let h = model.cfg.hidden_size as usize;
    let n = samples.count();
    let spill = opts.spill.clone().unwrap_or_else(Spill::in_memory);
    let mut x = spill.store(n, seqlen * h)?;
    let layers = model.num_layers();
    let total = (layers * n * 5) as u64;
    let first = match &opts.work {
        Some(w) => resume(w, &mut x, layers, hook)?,
        None => None,
    };
    let first = match first {
        Some(done) => done,
        None => {
            for (i, s) in samples.tokens.chunks(seqlen).enumerate() {
                x.write(i, &model.embed_tokens(s)?)?;
            }
            0
        }
    };
    let mut done = (first * n * 5) as u64;
    progress(done, total);
    for li in first..layers {
        if let Some(src) = opts.source {
            model.load_block(li, src)?;
        }
        let mut tick = || {
            done += 1;
            progress(done, total);
        };
        model.calibrate_block(li, &mut x, seqlen, hook, &spill, &mut tick)?;
        if opts.source.is_some() {
            model.unload_block(li);
        }
        // The residual stream after this block, then the hook's save of it, then the previous
        // residual goes: a kill at any point leaves a consistent pair to resume from, and a
        // block whose results were saved is never run again.
        if let Some(w) = &opts.work {
            write_resid(&resid_path(w, li + 1), &x, li + 1)?;
        }
        hook.block_done(li)?;
        if let Some(w) = &opts.work {
            let old = resid_path(w, li);
            if old.exists() {
                std::fs::remove_file(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
    }
    let c = &model.cfg;
    let spilled = !(spill.fits(n, seqlen * h) && spill.fits(n, seqlen * (c.n_heads * c.head_dim) as usize));
    Ok(RunStats { resumed_blocks: first, spilled })
}

/// What [`run`] did besides running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStats {
    /// Blocks taken from the checkpoint folder instead of being run.
    pub resumed_blocks: usize,
    /// Whether activations lived in temporary files.
    pub spilled: bool,
}

const RESID_MAGIC: &[u8; 8] = b"QKRESID1";

/// The residual stream after `done` blocks.
fn resid_path(work: &Path, done: usize) -> PathBuf {
    work.join(format!("resid-{done:04}.bin"))
}

/// Resume from the newest residual checkpoint in `work` whose blocks the hook can restore;
/// `None`: nothing to resume.
fn resume(work: &Path, x: &mut SeqStore, layers: usize, hook: &mut dyn BlockHook) -> Result<Option<usize>> {
    let mut done: Vec<usize> = std::fs::read_dir(work)
        .map_err(|e| Error::io(work, e))?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("resid-")?.strip_suffix(".bin")?.parse().ok()
        })
        .collect();
    done.sort_unstable_by(|a, b| b.cmp(a));
    let mut last_err = None;
    for d in done {
        if d > layers {
            return Err(Error::Invalid(format!("{}: {d} blocks done of {layers}", work.display())));
        }
        match hook.restore(d) {
            Ok(()) => {
                let got = read_resid(&resid_path(work, d), x)?;
                if got != d {
                    return Err(Error::Invalid(format!(
                        "{}: holds {got} blocks",
                        resid_path(work, d).display()
                    )));
                }
                return Ok(Some(d));
            }
            // The block's own save did not happen (killed in between): try the one before.
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// The residual stream after `done` blocks: magic, `done`, sequences, values per sequence (u64
/// LE each), then the f32 values.
fn write_resid(p: &Path, x: &SeqStore, done: usize) -> Result<()> {
    let mut f = AtomicFile::create(p)?;
    f.write_all(RESID_MAGIC)?;
    for v in [done, x.count(), x.seq_len()] {
        f.write_all(&(v as u64).to_le_bytes())?;
    }
    let mut buf = vec![0f32; x.seq_len()];
    for s in 0..x.count() {
        x.read(s, &mut buf)?;
        f.write_all(bytemuck::cast_slice(&buf))?;
    }
    f.commit()
}

/// Read a residual checkpoint (written after each block) into `x`; the number of blocks done.
/// The header must match `x` (sequences, values per sequence) and the file's length.
pub fn read_resid(p: &Path, x: &mut SeqStore) -> Result<usize> {
    let bad = |m: String| Error::malformed(p, "calibration checkpoint", "header", m);
    let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
    let mut head = [0u8; 32];
    f.read_exact(&mut head).map_err(|_| bad("shorter than its 32-byte header".into()))?;
    if &head[..8] != RESID_MAGIC {
        return Err(bad("not a quantkit calibration checkpoint (magic QKRESID1)".into()));
    }
    let word = |i: usize| u64::from_le_bytes(head[8 + 8 * i..16 + 8 * i].try_into().unwrap_or_default());
    let (done, n, len) = (word(0), word(1), word(2));
    if n != x.count() as u64 || len != x.seq_len() as u64 {
        return Err(bad(format!(
            "{n} sequences of {len} values, this run has {} of {}",
            x.count(),
            x.seq_len()
        )));
    }
    let size = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
    if size != 32 + n * len * 4 {
        return Err(bad(format!("{size} bytes, {} expected", 32 + n * len * 4)));
    }
    let mut finite = true;
    let mut buf = vec![0f32; x.seq_len()];
    for s in 0..x.count() {
        f.read_exact(bytemuck::cast_slice_mut(&mut buf)).map_err(|e| Error::io(p, e))?;
        finite &= buf.iter().all(|v| v.is_finite());
        x.write(s, &buf)?;
    }
    if !finite {
        return Err(bad("holds values that are not finite".into()));
    }
    Ok(done as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residual_checkpoints_round_trip_and_reject_damage() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("resid-0002.bin");
        let mem = Spill::in_memory();
        let mut x = mem.store(3, 5).expect("store");
        for s in 0..3 {
            x.write(s, &[s as f32, -1.5, 2.25, 1e-30, 7.0]).expect("write");
        }
        write_resid(&p, &x, 2).expect("write");
        let mut y = mem.store(3, 5).expect("store");
        assert_eq!(read_resid(&p, &mut y).expect("read"), 2);
        let (mut a, mut b) = (vec![0f32; 5], vec![0f32; 5]);
        for s in 0..3 {
            x.read(s, &mut a).expect("r");
            y.read(s, &mut b).expect("r");
            assert_eq!(a, b);
        }
        let good = std::fs::read(&p).expect("read");
        let mut nan = good.clone();
        nan[32..36].copy_from_slice(&f32::NAN.to_le_bytes());
        for (label, bytes) in [
            ("empty", vec![]),
            ("bad magic", [b"QKRESID9".as_slice(), &good[8..]].concat()),
            ("truncated", good[..good.len() - 1].to_vec()),
            ("other shape", [&good[..16], &4u64.to_le_bytes()[..], &good[24..]].concat()),
            ("not finite", nan),
        ] {
            std::fs::write(&p, &bytes).expect("w");
            let e = read_resid(&p, &mut y).expect_err(label).to_string();
            assert!(e.contains("resid-0002.bin"), "{label}: {e}");
        }
    }
}
