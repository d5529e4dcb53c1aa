//! The conversion pipeline: any [`ModelSource`] → GGUF, streamed one tensor at a time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quantkit_core::{AtomicFile, Error, GgmlType, Result};
use quantkit_io::gguf::{GgufBuilder, TensorSpec, Value};
use quantkit_io::imatrix::Imatrix;
use quantkit_io::source::ModelSource;
use rayon::prelude::*;
use serde::Serialize;

use crate::recipe::{ModelInfo, Recipe, TensorPlan};

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub recipe: Recipe,
    /// Override BPE pre-tokenizer detection (`tokenizer.ggml.pre`).
    pub tokenizer_pre: Option<String>,
    /// Importance matrix for the weighted quantizers (llama-quantize's `--imatrix`).
    pub imatrix: Option<Imatrix>,
    /// Tensors produced elsewhere (calibrated quantizers), by GGUF name.
    pub overrides: BTreeMap<String, TensorOverride>,
}

/// A tensor's data from elsewhere than the source.
#[derive(Debug, Clone)]
pub enum TensorOverride {
    /// Already encoded in the plan's type (e.g. GPTQ on a GGUF grid).
    Encoded { ty: GgmlType, bytes: Vec<u8> },
    /// Encoded in the plan's type, `len` bytes at `offset` in `file` (a calibration checkpoint),
    /// read when the tensor is written.
    Stored { ty: GgmlType, file: PathBuf, offset: u64, len: u64 },
}

/// What a conversion did.
#[derive(Debug, Serialize)]
pub struct ConvertReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub recipe: Recipe,
    pub tensors: Vec<TensorPlan>,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub params: u64,
    /// Tensors quantized with importance weights (0 without an imatrix).
    pub imatrix_tensors: usize,
    /// Bits per weight over all tensors (data bytes × 8 / elements).
    pub bits_per_weight: f64,
    pub seconds: f64,
}

/// Rows per parallel work item: big enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// Values read, quantized and written per step of a tensor (16 MiB of f32): large tensors stream
/// through in pieces, so memory does not grow with the largest tensor.
const CHUNK_VALUES: usize = 1 << 22;

/// Quantize a row-major tensor with rows of `row_len` values, in parallel, with per-column
/// importance weights `qw` when given. The result does not depend on the number of threads: every
/// row is quantized independently and concatenated in order.
pub fn quantize_parallel(ty: GgmlType, data: &[f32], row_len: usize, qw: Option<&[f32]>) -> Result<Vec<u8>> {
    let codec = quantkit_formats::codec(ty)?;
    let row_bytes = quantkit_formats::row_bytes(ty, row_len)?;
    if row_len == 0 || data.len() % row_len != 0 {
        return Err(Error::Invalid(format!("{} values are not whole rows of {row_len}", data.len())));
    }
    let mut out = vec![0u8; data.len() / row_len * row_bytes];
    out.par_chunks_mut(row_bytes * ROWS_PER_TASK).zip(data.par_chunks(row_len * ROWS_PER_TASK)).for_each(
        |(o, x)| {
            for (orow, xrow) in o.chunks_exact_mut(row_bytes).zip(x.chunks_exact(row_len)) {
                codec.quantize_row_with(xrow, qw, orow);
            }
        },
    );
    Ok(out)
}

/// A model that needs QuaRot's online R4 (applied before every `ffn_down` at run time) must not go
/// into `target`, whose `loaders` cannot apply it: they would compute garbage.
pub(crate) fn refuse_online_r4(src: &ModelSource, target: &str, loaders: &str) -> Result<()> {
    match src.recorded_rotation()?.filter(|r| r.online_r4) {
        Some(r) => Err(Error::Unsupported(format!(
            "{target}: {loaders} cannot apply the online rotation R4 of a model rotated by {} (before \
             every ffn_down, at run time) and would compute garbage. Use --rotate hadamard, whose \
             rotations are all fused into the weights, or a compressed-tensors output",
            r.label()
        ))),
        None => Ok(()),
    }
}

/// Convert `src` to a GGUF file at `dest` (written atomically). `progress(done, total)` is
/// called with element counts as tensors finish.
pub fn convert(
    src: &ModelSource,
    dest: &Path,
    opts: &ConvertOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ConvertReport> {
    let start = Instant::now();
    refuse_online_r4(src, "GGUF", "llama.cpp")?;
    let tensors = src.tensors()?;
    let model = ModelInfo::from_config(src.config(), opts.imatrix.is_some());
    let plans: Vec<TensorPlan> = opts.recipe.plan(&tensors, &model)?;
    let weights = importance_weights(opts.imatrix.as_ref(), &plans)?;

    let mut b = GgufBuilder::new();
    let meta = src.metadata(opts.tokenizer_pre.as_deref())?;
    let ftype = opts.recipe.mix.file_type;
    let mut inserted_ftype = false;
    for (k, v) in meta {
        // An earlier run's recipe is not this file's; a rotation stays true of the weights.
        if k.starts_with("quantkit.") && !k.starts_with("quantkit.rotation.") {
            continue;
        }
        if !inserted_ftype && k.starts_with("tokenizer.") {
            b.set("general.file_type", Value::U32(ftype));
            inserted_ftype = true;
        }
        b.set(k, v);
    }
    if !inserted_ftype {
        b.set("general.file_type", Value::U32(ftype));
    }
    b.set("general.quantization_version", Value::U32(2));
    if let Some(m) = &opts.imatrix {
        // The keys llama-quantize records for an imatrix.
        b.set("quantize.imatrix.file", Value::String(m.path.display().to_string()));
        if let Some(d) = m.datasets.first() {
            b.set("quantize.imatrix.dataset", Value::String(d.clone()));
        }
        b.set("quantize.imatrix.entries_count", Value::I32(m.entries.len() as i32));
        b.set("quantize.imatrix.chunks_count", Value::I32(m.chunk_count as i32));
    }
    b.set(
        "quantkit.recipe",
        Value::String(serde_json::to_string(&opts.recipe).map_err(|e| Error::Invalid(e.to_string()))?),
    );
    let notes: Vec<String> =
        plans.iter().filter_map(|p| p.note.as_ref().map(|n| format!("{}: {n}", p.name))).collect();
    if !notes.is_empty() {
        b.set("quantkit.fallbacks", Value::strings(notes));
    }
    for p in &plans {
        b.add_tensor(TensorSpec { name: p.name.clone(), dims: p.dims.clone(), ty: p.ty });
    }
    // Fail on impossible shapes before creating any file.
    b.header()?;

    let total: u64 = tensors.iter().map(|t| t.numel()).sum();
    let sizes: Vec<u64> = b.tensors.iter().map(|t| t.size().unwrap_or(0)).collect();
    let mut done = 0u64;
    let mut out = AtomicFile::create(dest)?;
    let output_bytes = b.write(
        &mut out,
        |i, sink| {
            let t = &tensors[i];
            let (row_len, rows) = (t.row_len(), t.rows());
            let stored;
            let encoded = match opts.overrides.get(&t.name) {
                Some(TensorOverride::Encoded { ty, bytes }) => Some((*ty, bytes.as_slice())),
                Some(TensorOverride::Stored { ty, file, offset, len }) => {
                    stored = read_range(file, *offset, *len)?;
                    Some((*ty, stored.as_slice()))
                }
                None => None,
            };
            if let Some((ty, bytes)) = encoded {
                if ty != plans[i].ty || bytes.len() as u64 != sizes[i] {
                    return Err(Error::bad_tensor(
                        &t.name,
                        format!("precomputed {ty} data does not match the plan ({})", plans[i].ty),
                    ));
                }
                sink(bytes)?;
                done += t.numel();
                progress(done, total);
                return Ok(());
            }
            let step = (CHUNK_VALUES / row_len).max(1);
            for r0 in (0..rows).step_by(step) {
                let r1 = (r0 + step).min(rows);
                let data = src.read_rows(t, r0, r1)?;
                src.release_rows(t, r0, r1);
                let bytes = quantize_parallel(plans[i].ty, &data, row_len, weights[i].as_deref())
                    .map_err(|e| Error::bad_tensor(&t.name, e.to_string()))?;
                sink(&bytes)?;
                done += data.len() as u64;
                progress(done, total);
            }
            Ok(())
        },
        |e| Error::io(dest, e),
    )?;
    out.commit()?;

    let data_bytes: u64 = b.tensors.iter().map(|t| t.size().unwrap_or(0)).sum();
    Ok(ConvertReport {
        input: src.path(),
        output: dest.to_path_buf(),
        recipe: opts.recipe.clone(),
        tensors: plans,
        input_bytes: src.input_bytes(),
        output_bytes,
        params: total,
        imatrix_tensors: weights.iter().filter(|w| w.is_some()).count(),
        bits_per_weight: if total > 0 { data_bytes as f64 * 8.0 / total as f64 } else { 0.0 },
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Per tensor, the imatrix weights its quantizer uses: present for a quantized type with a
/// weighted path whose name the imatrix has. As llama-quantize: a size mismatch is an error
/// (except for the token embedding, which imatrix tools often size differently), a missing entry
/// means unweighted quantization.
fn importance_weights(m: Option<&Imatrix>, plans: &[TensorPlan]) -> Result<Vec<Option<Vec<f32>>>> {
    let Some(m) = m else { return Ok(vec![None; plans.len()]) };
    plans
        .iter()
        .map(|p| {
            let weighted =
                quantkit_formats::codec(p.ty).map(|c| c.quantize_row_weighted.is_some()).unwrap_or(false);
            if !weighted {
                return Ok(None);
            }
            let Some(v) = m.values(&p.name) else { return Ok(None) };
            if v.len() as u64 != p.dims[0] {
                if p.name == "token_embd.weight" {
                    return Ok(None);
                }
                return Err(Error::malformed(
                    &m.path,
                    "imatrix",
                    p.name.clone(),
                    format!("has {} values, the tensor's rows have {}", v.len(), p.dims[0]),
                ));
            }
            Ok(Some(v))
        })
        .collect()
}

/// `len` bytes at `offset` in `file`.
fn read_range(file: &Path, offset: u64, len: u64) -> Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let mut v = vec![0u8; usize::try_from(len).map_err(|_| Error::Invalid(format!("{len} bytes")))?];
    f.read_exact_at(&mut v, offset).map_err(|e| Error::io(file, e))?;
    Ok(v)
}
