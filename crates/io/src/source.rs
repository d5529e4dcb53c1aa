//! One view of a model whatever it was stored as: tensors in GGUF naming and layout (q/k rows
//! permuted for llama.cpp's RoPE), read as f32. The converter only ever talks to this.

use std::path::{Path, PathBuf};

use quantkit_core::{Error, GgmlType, Result};

use crate::config::ModelConfig;
use crate::gguf::{GgufFile, Value};
use crate::hf::HfCheckpoint;
use crate::names;

/// Where a tensor's values come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// An HF tensor, permuted with this many heads if `Some`.
    Hf { name: String, permute_heads: Option<u64>, dtype: String },
    /// A GGUF tensor of this type.
    Gguf { ty: GgmlType },
    /// llama3 RoPE frequency factors computed from the config.
    RopeFreqs,
}

/// A tensor as the converter sees it.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    /// GGUF name.
    pub name: String,
    /// ggml order (`dims[0]` = row length).
    pub dims: Vec<u64>,
    pub origin: Origin,
}

impl SourceTensor {
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Values per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1).max(1) as usize
    }
    /// Number of rows (all dimensions but the first).
    pub fn rows(&self) -> usize {
        (self.numel() / self.row_len() as u64) as usize
    }
}

/// A model opened for conversion.
#[derive(Debug)]
pub enum ModelSource {
    Hf(HfCheckpoint),
    /// `partial`: opened with [`ModelSource::open_partial`] (no model-structure checks).
    Gguf {
        file: GgufFile,
        config: ModelConfig,
        partial: bool,
    },
    /// Another source read through QuaRot's offline rotations ([`crate::rotate`]).
    Rotated(Box<crate::rotate::Rotated>),
}

impl ModelSource {
    /// Open an HF folder or a `.gguf` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(ModelSource::Hf(HfCheckpoint::open(path)?));
        }
        if !path.exists() {
            return Err(Error::Invalid(format!("{}: no such file or directory", path.display())));
        }
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf(&file)?;
        Ok(ModelSource::Gguf { file, config, partial: false })
    }

    /// Like [`open`](Self::open), but a GGUF need not be a complete model: its tensors are not
    /// checked against the hyperparameters and implausible values are let through (re-quantizing a
    /// tensor collection, as llama-quantize does without asking). HF folders are checked as usual.
    pub fn open_partial(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() || !path.exists() {
            return Self::open(path);
        }
        let file = GgufFile::open(path)?;
        let config = ModelConfig::from_gguf_unchecked(&file)?;
        Ok(ModelSource::Gguf { file, config, partial: true })
    }

    /// This model read through QuaRot's Hadamard rotations (an equivalent model; see
    /// [`crate::rotate`]).
    pub fn rotated(self, spec: crate::rotate::RotationSpec) -> Result<Self> {
        Ok(ModelSource::Rotated(Box::new(crate::rotate::Rotated::new(self, spec)?)))
    }

    /// The source the tensors come from, under any rotation.
    pub fn base(&self) -> &ModelSource {
        match self {
            ModelSource::Rotated(r) => r.inner.base(),
            s => s,
        }
    }

    /// The rotation applied here or recorded by the file (a rotated checkpoint), if any; a record
    /// that cannot be read counts as none (see [`ModelSource::recorded_rotation`]).
    pub fn rotation(&self) -> Option<crate::rotate::RotationSpec> {
        self.recorded_rotation().ok().flatten()
    }

    /// The rotation applied here or recorded by the file; an unreadable record is an error.
    pub fn recorded_rotation(&self) -> Result<Option<crate::rotate::RotationSpec>> {
        match self {
            ModelSource::Rotated(r) => Ok(Some(r.spec)),
            ModelSource::Gguf { file, .. } => crate::rotate::gguf_rotation(file),
            ModelSource::Hf(h) => crate::rotate::config_rotation(&h.raw_config, &h.dir.join("config.json")),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            ModelSource::Hf(h) => &h.config,
            ModelSource::Gguf { config, .. } => config,
            ModelSource::Rotated(r) => r.config(),
        }
    }

    pub fn path(&self) -> PathBuf {
        match self {
            ModelSource::Hf(h) => h.dir.clone(),
            ModelSource::Gguf { file, .. } => file.path().to_path_buf(),
            ModelSource::Rotated(r) => r.inner.path(),
        }
    }

    /// Bytes of tensor data in the input.
    pub fn input_bytes(&self) -> u64 {
        match self {
            ModelSource::Hf(h) => h.data_bytes(),
            ModelSource::Gguf { file, .. } => file.tensors.iter().map(|t| t.size).sum(),
            ModelSource::Rotated(r) => r.inner.input_bytes(),
        }
    }

    /// All tensors, in the order llama.cpp's converter writes them, checked against the config.
    pub fn tensors(&self) -> Result<Vec<SourceTensor>> {
        match self {
            ModelSource::Gguf { file, config, partial } => {
                if !partial {
                    check_gguf_structure(file, config)?;
                }
                Ok(file
                    .tensors
                    .iter()
                    .map(|t| SourceTensor {
                        name: t.name.clone(),
                        dims: t.dims.clone(),
                        origin: Origin::Gguf { ty: t.ty },
                    })
                    .collect())
            }
            ModelSource::Hf(h) => hf_tensors(h),
            ModelSource::Rotated(r) => Ok(r.tensors()),
        }
    }

    /// A tensor's values as f32, in GGUF layout. NaN or Inf is an error naming the element.
    pub fn read(&self, t: &SourceTensor) -> Result<Vec<f32>> {
        self.read_rows(t, 0, t.rows())
    }

    fn gguf_info<'a>(file: &'a GgufFile, name: &str) -> Result<&'a crate::gguf::TensorInfo> {
        file.tensor(name).ok_or_else(|| Error::MissingTensor {
            path: file.path().to_path_buf(),
            tensor: name.to_string(),
            hint: String::new(),
        })
    }

    /// Rows `[r0, r1)` of a tensor (a row is `dims[0]` values), so large tensors can be streamed.
    pub fn read_rows(&self, t: &SourceTensor, r0: usize, r1: usize) -> Result<Vec<f32>> {
        if let ModelSource::Rotated(r) = self {
            return r.read_rows(t, r0, r1);
        }
        let row = t.row_len();
        let data = match (&t.origin, self) {
            (Origin::Hf { name, permute_heads: Some(n), .. }, ModelSource::Hf(h)) => {
                // q/k rows move within their head: permute the whole (small) tensor, then slice.
                let all = names::permute_qk(&h.read_f32(name)?, t.rows(), *n as usize);
                all[r0 * row..r1 * row].to_vec()
            }
            (Origin::Hf { name, permute_heads: None, .. }, ModelSource::Hf(h)) => {
                h.read_f32_range(name, r0 * row, r1 * row)?
            }
            (Origin::Gguf { .. }, ModelSource::Gguf { file, .. }) => {
                file.read_rows(Self::gguf_info(file, &t.name)?, r0, r1)?
            }
            (Origin::RopeFreqs, _) => {
                let all = self.config().llama3_rope_factors().unwrap_or_default();
                all[r0 * row..(r1 * row).min(all.len())].to_vec()
            }
            _ => return Err(Error::Invalid(format!("tensor '{}' does not belong to this source", t.name))),
        };
        check_finite(t, &data, r0 * row, &self.file_of(t))?;
        Ok(data)
    }

    /// The file a tensor is read from (for error messages).
    pub fn file_of(&self, t: &SourceTensor) -> PathBuf {
        match (&t.origin, self) {
            (Origin::Hf { name, .. }, ModelSource::Hf(h)) => h.file_of(name),
            (_, ModelSource::Rotated(r)) => r.file_of(t),
            _ => self.path(),
        }
    }

    /// Drop the mapped input pages of rows `[r0, r1)` (bounded RSS while streaming).
    pub fn release_rows(&self, t: &SourceTensor, r0: usize, r1: usize) {
        let row = t.row_len();
        match (&t.origin, self) {
            (Origin::Hf { name, .. }, ModelSource::Hf(h)) => h.release_range(name, r0 * row, r1 * row),
            (Origin::Gguf { .. }, ModelSource::Gguf { file, .. }) => {
                if let Some(info) = file.tensor(&t.name) {
                    file.release_rows(info, r0, r1);
                }
            }
            (_, ModelSource::Rotated(r)) => r.release_rows(t, r0, r1),
            _ => {}
        }
    }

    /// `general.*`, hyperparameter and tokenizer metadata for the output GGUF (everything except
    /// `general.file_type` and `general.quantization_version`, which depend on the output).
    pub fn metadata(&self, tokenizer_pre: Option<&str>) -> Result<Vec<(String, Value)>> {
        match self {
            ModelSource::Gguf { file, .. } => Ok(file
                .metadata
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "general.file_type" | "general.quantization_version" | "general.alignment"
                    )
                })
                .cloned()
                .collect()),
            ModelSource::Hf(h) => {
                let c = &h.config;
                let name = h
                    .dir
                    .canonicalize()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| "model".into());
                let mut kv = vec![
                    ("general.architecture".to_string(), Value::String(c.arch.gguf_arch().into())),
                    ("general.type".to_string(), Value::String("model".into())),
                    ("general.name".to_string(), Value::String(name)),
                ];
                kv.extend(c.gguf_metadata());
                kv.extend(crate::vocab::hf_to_gguf(
                    &h.dir,
                    &h.raw_config,
                    c.vocab_size,
                    c.arch.permutes_qk(),
                    tokenizer_pre,
                )?);
                Ok(kv)
            }
            ModelSource::Rotated(r) => r.metadata(tokenizer_pre),
        }
    }
}

fn check_finite(t: &SourceTensor, data: &[f32], first: usize, file: &Path) -> Result<()> {
    if let Some(j) = data.iter().position(|v| !v.is_finite()) {
        let i = first + j;
        let row_len = t.row_len();
        return Err(Error::bad_tensor(
            &t.name,
            format!(
                "{} at element {i} (row {}, column {}) in {}: refusing to quantize non-finite weights",
                data[j],
                i / row_len,
                i % row_len,
                file.display()
            ),
        ));
    }
    Ok(())
}

/// The GGUF names of the tensors a model of this config must have.
fn required_tensors(c: &ModelConfig) -> Vec<String> {
    let mut required: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    if !c.tie_word_embeddings {
        required.push("output.weight".into());
    }
    for i in 0..c.num_layers {
        for p in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            required.push(format!("blk.{i}.{p}.weight"));
        }
        if c.arch == crate::config::Arch::Qwen2 {
            for p in ["attn_q", "attn_k", "attn_v"] {
                required.push(format!("blk.{i}.{p}.bias"));
            }
        }
    }
    required
}

/// A GGUF model's tensors against its own metadata: layers within `block_count`, shapes as the
/// hyperparameters say, every required tensor present (a file damaged or edited by hand would
/// otherwise convert into a model no runtime can load).
fn check_gguf_structure(file: &GgufFile, c: &ModelConfig) -> Result<()> {
    let bad = |t: &str, m: String| Error::malformed(file.path(), "GGUF", format!("tensor '{t}'"), m);
    for t in &file.tensors {
        if let Some(layer) = names::layer_of(&t.name) {
            if layer >= c.num_layers {
                return Err(bad(
                    &t.name,
                    format!("layer {layer}, but the metadata says {} layers", c.num_layers),
                ));
            }
        }
        if let Some(want) = expected_shape(c, &t.name) {
            let shape = t.shape_rowmajor();
            if shape != want {
                return Err(bad(
                    &t.name,
                    format!("shape {shape:?} does not match the metadata (expected {want:?})"),
                ));
            }
        }
    }
    for r in required_tensors(c) {
        if file.tensor(&r).is_none() {
            return Err(Error::MissingTensor {
                path: file.path().to_path_buf(),
                tensor: r,
                hint: format!(" (a {} model with {} layers needs it)", c.arch.gguf_arch(), c.num_layers),
            });
        }
    }
    Ok(())
}

/// The expected row-major shape of each HF tensor.
fn expected_shape(c: &ModelConfig, gguf_name: &str) -> Option<Vec<u64>> {
    let part =
        gguf_name.strip_prefix("blk.").and_then(|r| r.split_once('.')).map(|(_, p)| p).unwrap_or(gguf_name);
    let (h, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q, kv) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    Some(match part {
        "token_embd.weight" | "output.weight" => vec![v, h],
        "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![h],
        "attn_q.weight" => vec![q, h],
        "attn_k.weight" | "attn_v.weight" => vec![kv, h],
        "attn_q.bias" => vec![q],
        "attn_k.bias" | "attn_v.bias" => vec![kv],
        "attn_output.weight" => vec![h, q],
        "ffn_gate.weight" | "ffn_up.weight" => vec![f, h],
        "ffn_down.weight" => vec![h, f],
        _ => return None,
    })
}

fn hf_tensors(h: &HfCheckpoint) -> Result<Vec<SourceTensor>> {
    let c = &h.config;
    let mut out = Vec::new();
    if let Some(f) = c.llama3_rope_factors() {
        out.push(SourceTensor {
            name: "rope_freqs.weight".into(),
            dims: vec![f.len() as u64],
            origin: Origin::RopeFreqs,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for hf_name in h.names() {
        if names::hf_is_ignored(hf_name) || (c.tie_word_embeddings && hf_name == "lm_head.weight") {
            continue;
        }
        let gguf_name = names::hf_to_gguf(hf_name).ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor '{hf_name}' in {} has no place in a {} model",
                h.dir.display(),
                c.arch.hf_class()
            ))
        })?;
        if let Some(layer) = names::layer_of(&gguf_name) {
            if layer >= c.num_layers {
                return Err(Error::bad_tensor(
                    hf_name,
                    format!(
                        "layer {layer} in {}, but config.json says num_hidden_layers = {}",
                        h.file_of(hf_name).display(),
                        c.num_layers
                    ),
                ));
            }
        }
        let (shape, dtype) = h.shape(hf_name)?;
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if let Some(want) = expected_shape(c, &gguf_name) {
            if shape != want {
                return Err(Error::bad_tensor(
                    hf_name,
                    format!(
                        "shape {shape:?} in {} does not match config.json (expected {want:?})",
                        h.file_of(hf_name).display()
                    ),
                ));
            }
        }
        if !matches!(dtype.as_str(), "F32" | "F16" | "BF16") {
            return Err(Error::Unsupported(format!(
                "tensor '{hf_name}' in {} has dtype {dtype} (quantkit converts F32, F16 and BF16 checkpoints)",
                h.file_of(hf_name).display()
            )));
        }
        let permute_heads =
            if c.arch.permutes_qk() { names::qk_heads(&gguf_name, c.n_heads, c.n_kv_heads) } else { None };
        seen.insert(gguf_name.clone());
        out.push(SourceTensor {
            name: gguf_name,
            dims: shape.iter().rev().copied().collect(),
            origin: Origin::Hf { name: hf_name.to_string(), permute_heads, dtype },
        });
    }
    // Every tensor the architecture needs must be present.
    for r in required_tensors(c) {
        if !seen.contains(&r) {
            let hf = names::gguf_to_hf(&r).unwrap_or_else(|| r.clone());
            return Err(Error::MissingTensor {
                path: h.dir.clone(),
                tensor: hf,
                hint: format!(" (a {} with {} layers needs it)", c.arch.hf_class(), c.num_layers),
            });
        }
    }
    Ok(out)
}
