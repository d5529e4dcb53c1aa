//! Hugging Face checkpoint folders: `config.json`, `model.safetensors` or sharded
//! `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`, tokenizer files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{Error, Result};
use serde_json::Value as Json;

use crate::config::ModelConfig;
use crate::safetensors::SafetensorsFile;

/// An opened HF checkpoint: config parsed, every shard mapped and validated.
#[derive(Debug)]
pub struct HfCheckpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub raw_config: Json,
    shards: Vec<SafetensorsFile>,
    /// tensor name → shard index
    locations: BTreeMap<String, usize>,
    /// GPTQ / AWQ / compressed-tensors / bitsandbytes checkpoints: how the packed tensors read.
    pub quant: Option<crate::layout::QuantLayout>,
    /// Tensor names as presented: packed modules appear as their dequantized `<m>.weight`.
    visible: BTreeMap<String, Option<(usize, usize)>>,
}

pub(crate) fn read_json(path: &Path, kind: &'static str) -> Result<Json> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_json(&bytes, path, kind)
}

/// Parse a JSON file's bytes (`kind` and `path` name it in errors).
pub fn parse_json(bytes: &[u8], path: &Path, kind: &'static str) -> Result<Json> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::malformed(path, kind, format!("line {}, column {}", e.line(), e.column()), e.to_string())
    })
}

/// The `weight_map` of a `model.safetensors.index.json`: (tensor, shard file) pairs, each shard a
/// plain file name inside the model folder.
pub fn parse_index(index: &Json, index_path: &Path) -> Result<Vec<(String, String)>> {
    let map = index.get("weight_map").and_then(Json::as_object).ok_or_else(|| {
        Error::malformed(index_path, "safetensors index", "\"weight_map\"", "missing or not an object")
    })?;
    let mut out = Vec::with_capacity(map.len());
    for (tensor, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::malformed(
                index_path,
                "safetensors index",
                format!("\"{tensor}\""),
                "file name is not a string",
            )
        })?;
        if file.contains('/') || file.contains('\\') || file == ".." || file == "." || file.is_empty() {
            return Err(Error::malformed(
                index_path,
                "safetensors index",
                format!("\"{tensor}\""),
                format!("shard name {file:?} must be a plain file name in the model folder"),
            ));
        }
        out.push((tensor.clone(), file.to_string()));
    }
    Ok(out)
}

impl HfCheckpoint {
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::Invalid(format!(
                "{} is not a Hugging Face model folder: it has no config.json",
                dir.display()
            )));
        }
        let raw_config = read_json(&config_path, "config.json")?;
        let config = ModelConfig::from_hf(&raw_config, &config_path)?;

        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut shards = Vec::new();
        let mut locations = BTreeMap::new();
        if index_path.is_file() {
            let index = read_json(&index_path, "safetensors index")?;
            let mut files: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, file) in parse_index(&index, &index_path)? {
                let next = files.len();
                let idx = *files.entry(file).or_insert(next);
                locations.insert(tensor, idx);
            }
            let mut ordered: Vec<(&String, &usize)> = files.iter().collect();
            ordered.sort_by_key(|(_, &i)| i);
            for (file, _) in ordered {
                shards.push(SafetensorsFile::open(dir.join(file))?);
            }
            for (tensor, &i) in &locations {
                if shards[i].info(tensor).is_none() {
                    return Err(Error::MissingTensor {
                        path: shards[i].path().to_path_buf(),
                        tensor: tensor.clone(),
                        hint: " (model.safetensors.index.json says it is in this shard)".into(),
                    });
                }
            }
            // Tensors present in a shard but absent from the index would be silently ignored by
            // transformers too; we do the same, but never let two shards claim one name.
        } else if single.is_file() {
            let f = SafetensorsFile::open(&single)?;
            for name in f.names() {
                locations.insert(name, 0);
            }
            shards.push(f);
        } else {
            return Err(Error::Invalid(format!(
                "{}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)",
                dir.display()
            )));
        }
        let quant = crate::layout::QuantLayout::from_config(&raw_config, &config_path)?;
        let mut me = Self { dir, config, raw_config, shards, locations, quant, visible: BTreeMap::new() };
        me.visible = match &me.quant {
            Some(q) => q.visible_names(&me)?,
            None => me.locations.keys().map(|k| (k.clone(), None)).collect(),
        };
        Ok(me)
    }

    /// Tensor names, sorted (a packed module shows as its `<m>.weight`).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.visible.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.visible.contains_key(name)
    }

    /// The stored tensor names (packed components included).
    pub fn stored_names(&self) -> impl Iterator<Item = &str> {
        self.locations.keys().map(String::as_str)
    }

    /// The raw bytes and (dtype, shape) of a stored tensor.
    pub fn raw(&self, name: &str) -> Result<(&[u8], String, Vec<usize>)> {
        let (s, info) = self.info(name)?;
        Ok((s.data(name)?, format!("{:?}", info.dtype), info.shape.clone()))
    }

    /// A stored tensor's shard and header entry.
    fn info(&self, name: &str) -> Result<(&SafetensorsFile, &::safetensors::tensor::TensorInfo)> {
        let s = self.shard(name)?;
        let info = s.info(name).ok_or_else(|| Error::MissingTensor {
            path: s.path().to_path_buf(),
            tensor: name.into(),
            hint: String::new(),
        })?;
        Ok((s, info))
    }

    fn packed(&self, name: &str) -> Option<(usize, usize)> {
        self.visible.get(name).copied().flatten()
    }

    fn shard(&self, name: &str) -> Result<&SafetensorsFile> {
        self.locations.get(name).map(|&i| &self.shards[i]).ok_or_else(|| Error::MissingTensor {
            path: self.dir.clone(),
            tensor: name.to_string(),
            hint: String::new(),
        })
    }

    /// The file that holds a stored tensor (its shard; the model folder when it has none).
    pub fn file_of(&self, name: &str) -> PathBuf {
        self.shard(name).map(|s| s.path().to_path_buf()).unwrap_or_else(|_| self.dir.clone())
    }

    /// Row-major shape and dtype name of a tensor.
    pub fn shape(&self, name: &str) -> Result<(Vec<usize>, String)> {
        if let Some((r, c)) = self.packed(name) {
            return Ok((vec![r, c], "F32".into()));
        }
        let (_, info) = self.info(name)?;
        Ok((info.shape.clone(), format!("{:?}", info.dtype)))
    }

    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        if let (Some(q), Some(_)) = (&self.quant, self.packed(name)) {
            return q.dequantize(self, name.trim_end_matches(".weight"));
        }
        self.shard(name)?.read_f32(name)
    }

    pub fn read_f32_range(&self, name: &str, start: usize, end: usize) -> Result<Vec<f32>> {
        if self.packed(name).is_some() {
            let all = self.read_f32(name)?;
            return all
                .get(start..end)
                .map(<[f32]>::to_vec)
                .ok_or_else(|| Error::bad_tensor(name, "range out of bounds"));
        }
        self.shard(name)?.read_f32_range(name, start, end)
    }

    pub fn release_range(&self, name: &str, start: usize, end: usize) {
        if let Ok(s) = self.shard(name) {
            s.release_range(name, start, end);
        }
    }

    pub fn release(&self, name: &str) {
        if let Ok(s) = self.shard(name) {
            s.release(name);
        }
    }

    /// Total bytes of tensor data across shards.
    pub fn data_bytes(&self) -> u64 {
        self.locations
            .iter()
            .filter_map(|(n, &i)| self.shards[i].info(n))
            .map(|info| (info.data_offsets.1 - info.data_offsets.0) as u64)
            .sum()
    }

    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        Some(self.dir.join("tokenizer.json")).filter(|p| p.is_file())
    }

    pub fn tokenizer_config(&self) -> Result<Option<Json>> {
        let p = self.dir.join("tokenizer_config.json");
        if p.is_file() {
            read_json(&p, "tokenizer_config.json").map(Some)
        } else {
            Ok(None)
        }
    }
}
