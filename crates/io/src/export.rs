//! GGUF → Hugging Face folder: dequantized weights as safetensors (f32, bf16 or f16), `config.json`,
//! tokenizer files; the q/k permutation undone. The folder is built beside the destination and
//! renamed into place, so a failed export leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{AtomicDir, Error, GgmlType, Result};
use safetensors::Dtype;

use crate::config::ModelConfig;
use crate::gguf::GgufFile;
use crate::names;
use crate::safetensors::{write_safetensors, StTensorSpec};

/// Options for [`export_hf`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Output dtype: F32 (exact), BF16 or F16.
    pub dtype: GgmlType,
    /// Copy `tokenizer.json` / `tokenizer_config.json` from here instead of rebuilding them.
    pub tokenizer_from: Option<PathBuf>,
    /// Largest shard in bytes (HF default 5 GB).
    pub max_shard_bytes: u64,
    /// Replace an existing destination folder.
    pub force: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self { dtype: GgmlType::F32, tokenizer_from: None, max_shard_bytes: 5_000_000_000, force: false }
    }
}

/// What was exported.
#[derive(Debug, serde::Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub tensors: usize,
    pub shards: usize,
    pub bytes: u64,
    pub dtype: String,
}

/// Values converted per step of a tensor (16 MiB of f32).
const CHUNK_VALUES: usize = 1 << 22;

struct Planned {
    gguf: String,
    hf: String,
    shape: Vec<usize>,
    unpermute_heads: Option<u64>,
}

/// Export `gguf_path` to the HF folder `dest`. `progress(done_bytes)` is called as tensors finish.
pub fn export_hf(
    gguf_path: &Path,
    dest: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportReport> {
    let file = GgufFile::open(gguf_path)?;
    let config = ModelConfig::from_gguf(&file)?;
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(Error::Unsupported(
            "exporting a model with llama3 RoPE frequency factors (rope_freqs.weight) to HF is not supported yet".into(),
        ));
    }
    let st_dtype = match opts.dtype {
        GgmlType::F32 => Dtype::F32,
        GgmlType::BF16 => Dtype::BF16,
        GgmlType::F16 => Dtype::F16,
        other => return Err(Error::Invalid(format!("export dtype must be f32, bf16 or f16, not {other}"))),
    };
    let mut plan = Vec::new();
    for t in &file.tensors {
        let hf = names::gguf_to_hf(&t.name).ok_or_else(|| {
            Error::Unsupported(format!("GGUF tensor '{}' has no Hugging Face name", t.name))
        })?;
        let unpermute_heads = if config.arch.permutes_qk() {
            names::qk_heads(&t.name, config.n_heads, config.n_kv_heads)
        } else {
            None
        };
        plan.push(Planned {
            gguf: t.name.clone(),
            hf,
            shape: t.shape_rowmajor().iter().map(|&d| d as usize).collect(),
            unpermute_heads,
        });
    }
    plan.sort_by(|a, b| a.hf.cmp(&b.hf));

    // Tokenizer files first: the cheapest thing to fail.
    let tok_files: Vec<(&str, Vec<u8>)> = match &opts.tokenizer_from {
        Some(dir) => ["tokenizer.json", "tokenizer_config.json"]
            .iter()
            .filter_map(|n| {
                let p = dir.join(n);
                p.is_file().then(|| std::fs::read(&p).map(|b| (*n, b)).map_err(|e| Error::io(&p, e)))
            })
            .collect::<Result<_>>()?,
        None => {
            let meta = |k: &str| file.get(k).cloned();
            let t = crate::vocab::gguf_to_hf(&meta, gguf_path)?;
            vec![
                ("tokenizer.json", pretty(&t.tokenizer_json)?),
                ("tokenizer_config.json", pretty(&t.tokenizer_config)?),
            ]
        }
    };

    // Build in a sibling temp folder, then rename.
    let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::Invalid(format!("output directory {} does not exist", parent.display())));
    }
    if dest.exists() && !opts.force {
        return Err(Error::Invalid(format!(
            "{} already exists (pass --force to replace it)",
            dest.display()
        )));
    }
    let staged = AtomicDir::create(dest)?;
    let tmp = staged.path();

    let elem = st_dtype.bitsize() / 8;
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    for (i, p) in plan.iter().enumerate() {
        let bytes = (p.shape.iter().product::<usize>() * elem) as u64;
        if shard_bytes > 0 && shard_bytes + bytes > opts.max_shard_bytes {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("non-empty").push(i);
        shard_bytes += bytes;
    }
    let n_shards = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut done = 0u64;
    let mut total = 0u64;
    for (si, members) in shards.iter().enumerate() {
        let fname = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, n_shards)
        };
        let specs: Vec<StTensorSpec> = members
            .iter()
            .map(|&i| StTensorSpec {
                name: plan[i].hf.clone(),
                dtype: st_dtype,
                shape: plan[i].shape.clone(),
            })
            .collect();
        for s in &specs {
            weight_map.insert(s.name.clone(), fname.clone());
            total += s.size() as u64;
        }
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&tmp.join(&fname), &specs, &meta, |k, sink| {
            let p = &plan[members[k]];
            let info = file.tensor(&p.gguf).expect("planned from this file");
            let row = info.row_len() as usize;
            let rows = (info.numel() / info.row_len().max(1)) as usize;
            // q/k rows move within their head: those (small) tensors are handled whole.
            let step =
                if p.unpermute_heads.is_some() { rows.max(1) } else { (CHUNK_VALUES / row.max(1)).max(1) };
            for r0 in (0..rows).step_by(step) {
                let r1 = (r0 + step).min(rows);
                let mut data = file.read_rows(info, r0, r1)?;
                file.release_rows(info, r0, r1);
                if let Some(h) = p.unpermute_heads {
                    data = names::unpermute_qk(&data, rows, h as usize);
                }
                let out = quantkit_formats::quantize(opts.dtype, &data, row)?;
                sink(&out)?;
                done += out.len() as u64;
                progress(done);
            }
            Ok(())
        })?;
    }
    if n_shards > 1 {
        let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_file(&tmp.join("model.safetensors.index.json"), &pretty(&index)?)?;
    }
    let torch_dtype = match opts.dtype {
        GgmlType::BF16 => "bfloat16",
        GgmlType::F16 => "float16",
        _ => "float32",
    };
    let mut cfg = config.to_hf_json(torch_dtype);
    cfg["quantkit_source"] = serde_json::json!({
        "gguf": gguf_path.file_name().map(|n| n.to_string_lossy().into_owned()),
        "general.file_type": file.get("general.file_type").and_then(|v| v.as_u64()),
    });
    write_file(&tmp.join("config.json"), &pretty(&cfg)?)?;
    for (n, bytes) in &tok_files {
        write_file(&tmp.join(n), bytes)?;
    }

    staged.commit()?;
    Ok(ExportReport {
        dir: dest.to_path_buf(),
        tensors: plan.len(),
        shards: n_shards,
        bytes: total,
        dtype: opts.dtype.name().to_string(),
    })
}

/// Pretty-printed JSON with a final newline.
pub fn pretty(v: &serde_json::Value) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    b.push(b'\n');
    Ok(b)
}

/// Write a whole file atomically.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = quantkit_core::AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}
