//! QuaRot's offline rotations, applied to a model as it is read: a [`ModelSource`] whose tensors are
//! those of an equivalent model with every RMSNorm scale folded into the linears after it, the
//! residual stream rotated by `R1` (a randomized Hadamard transform of the hidden width) and the
//! attention values rotated per head by `R2` (one of the head width).
//!
//! The result is an ordinary checkpoint — norms of ones, an untied `output.weight` when the original
//! tied it to the embedding (the fold of `output_norm` makes the two differ) — which any loader runs
//! unmodified, computing the original function to float precision. Every quantizer then reads it
//! like any other source.
//!
//! With `h' = h·R1` on the residual stream (RMSNorm commutes with an orthogonal map once its scale
//! is folded out):
//! * `token_embd`: each row `e ← e·R1`;
//! * `attn_q/k/v`, `ffn_gate/up`, `output`: `W ← (W·diag(g))·R1` per row (`g` the norm before them);
//! * `attn_output`, `ffn_down` (write the residual): `W ← R1ᵀ·W` (each column), and their biases `b·R1`;
//! * `attn_v` rows of each KV head `W_h ← R2ᵀ·W_h` (and bias `b_h·R2`), `attn_output` columns of each
//!   head `W_h ← W_h·R2`: attention mixes values linearly per head, so `R2` cancels.
//!
//! Queries and keys are untouched (rotating them needs `R3`, an online rotation after RoPE).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use quantkit_core::{Error, Result};
use quantkit_rotate::{Hadamard, Rotation};

use crate::config::ModelConfig;
use crate::gguf::Value;
use crate::source::{ModelSource, SourceTensor};

/// Which rotation to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct RotationSpec {
    /// Seed of the Hadamard transforms' random signs.
    pub seed: u64,
    /// QuaRot's online `R4` too: `ffn_down`'s input rotated at run time (a Hadamard transform of
    /// the FFN width in the engine), its inverse fused into `ffn_down`. Only a loader that applies
    /// it can run the result.
    #[serde(default)]
    pub online_r4: bool,
}

impl RotationSpec {
    /// How recipes and reports name it: `hadamard`, `quarot` (with R4), `@SEED` when not 0.
    pub fn label(&self) -> String {
        let name = if self.online_r4 { "quarot" } else { "hadamard" };
        if self.seed == 0 {
            name.into()
        } else {
            format!("{name}@{}", self.seed)
        }
    }

    /// The online `R4` of a model whose FFN is `ffn` wide.
    pub fn r4(&self, ffn: usize) -> Result<Option<Hadamard>> {
        if !self.online_r4 {
            return Ok(None);
        }
        Hadamard::new(ffn, Some(self.seed))
            .map(Some)
            .map_err(|e| Error::Unsupported(format!("rotating the FFN (width {ffn}) online: {e}")))
    }
}

/// The metadata key naming the online rotations a GGUF needs (`none` or `r4`).
pub const ONLINE_KEY: &str = "quantkit.rotation.online";

/// The rotations a model needs applied at run time, from what its file says (refused when it names
/// one we do not know: running without it would compute garbage).
pub fn online_rotations(src: &ModelSource) -> Result<Option<Hadamard>> {
    let ffn = src.config().intermediate_size as usize;
    let spec = match src {
        ModelSource::Rotated(r) => Some(r.spec),
        ModelSource::Gguf { file, .. } => gguf_rotation(file)?,
        ModelSource::Hf(h) => config_rotation(&h.raw_config, &h.dir.join("config.json"))?,
    };
    match spec {
        Some(s) => s.r4(ffn),
        None => Ok(None),
    }
}

/// The rotation a GGUF records (`quantkit.rotation.*`), if any.
pub fn gguf_rotation(file: &crate::gguf::GgufFile) -> Result<Option<RotationSpec>> {
    let Some(v) = file.get(ONLINE_KEY) else { return Ok(None) };
    let seed = match file.get("quantkit.rotation.seed") {
        None => 0,
        Some(s) => s.as_u64().ok_or_else(|| {
            Error::malformed(
                file.path(),
                "GGUF",
                "quantkit.rotation.seed",
                format!("{s:?} is not an integer"),
            )
        })?,
    };
    match v.as_str() {
        Some("none") => Ok(Some(RotationSpec { seed, online_r4: false })),
        Some("r4") => Ok(Some(RotationSpec { seed, online_r4: true })),
        other => Err(Error::Unsupported(format!(
            "{}: {ONLINE_KEY} = {other:?} (this engine applies none or r4)",
            file.path().display()
        ))),
    }
}

/// The rotation a config.json records (`quantkit_rotation`), if any. A compressed-tensors
/// `transform_config` with online transforms that is not ours (no `quantkit_rotation` beside it) is
/// refused: the engine does not apply compressed-tensors' transforms, and running without them
/// computes garbage.
pub fn config_rotation(
    raw_config: &serde_json::Value,
    path: &std::path::Path,
) -> Result<Option<RotationSpec>> {
    let online = |a: &serde_json::Value| {
        matches!(
            a.get("location").and_then(serde_json::Value::as_str),
            Some("input" | "output" | "q_attn" | "k_cache")
        )
    };
    let foreign = raw_config
        .get("quantization_config")
        .and_then(|q| q.get("transform_config"))
        .and_then(|t| t.get("config_groups"))
        .and_then(serde_json::Value::as_object)
        .and_then(|g| {
            g.iter().find(|(_, s)| {
                s.get("apply").and_then(serde_json::Value::as_array).is_some_and(|a| a.iter().any(online))
            })
        });
    match (raw_config.get("quantkit_rotation"), foreign) {
        (None, Some((name, _))) => Err(Error::Unsupported(format!(
            "{}: compressed-tensors transform {name:?} is applied online (at run time), which quantkit \
             does not do; running the weights without it would compute garbage",
            path.display()
        ))),
        (None, None) => Ok(None),
        (Some(j), _) => serde_json::from_value(j.clone())
            .map(Some)
            .map_err(|e| Error::malformed(path, "config.json", "quantkit_rotation", e.to_string())),
    }
}

/// What a tensor becomes.
#[derive(Debug, Clone)]
enum Role {
    /// Unchanged (q/k biases, RoPE factors).
    Same,
    /// A folded norm: all ones.
    Ones,
    /// `x·R1` per row: embedding rows, and the biases of the residual writers.
    Rows,
    /// `(W·diag(norm))·R1` per row; `v`: then `R2ᵀ` on each head's rows.
    Input { norm: String, value_heads: bool },
    /// A residual writer: `W_h·R2` on each head's columns (attn_output, `value_heads`) or `W·R4`
    /// (ffn_down, when the spec has the online R4), then `R1ᵀ·W`.
    Output { value_heads: bool },
    /// A value bias: `b_h·R2` per head.
    ValueBias,
}

/// A model read through QuaRot's offline rotations (see the module docs).
#[derive(Debug)]
pub struct Rotated {
    pub inner: ModelSource,
    pub spec: RotationSpec,
    config: ModelConfig,
    r1: Hadamard,
    r2: Hadamard,
    r4: Option<Hadamard>,
    tensors: Vec<SourceTensor>,
    /// Outer name → (inner tensor read, role).
    plan: HashMap<String, (SourceTensor, Role)>,
    /// The original tied its output to the embedding; the rotated model carries its own.
    pub untied: bool,
    /// The last whole tensor computed (residual writers and values mix rows: computed whole,
    /// sliced for row reads).
    cache: Mutex<Option<(String, Arc<Vec<f32>>)>>,
}

fn unknown(name: &str) -> Error {
    Error::Unsupported(format!(
        "rotating tensor '{name}': the Hadamard rotation knows Llama/Mistral/Qwen2 tensors only \
         (embedding, norms, q/k/v/o, gate/up/down, output)"
    ))
}

impl Rotated {
    pub fn new(inner: ModelSource, spec: RotationSpec) -> Result<Self> {
        if let Some(r) = inner.recorded_rotation()? {
            return Err(Error::Invalid(format!(
                "{}: the model is already rotated ({}); rotate the original",
                inner.path().display(),
                r.label()
            )));
        }
        let cfg = inner.config().clone();
        let hidden = cfg.hidden_size as usize;
        let hd = cfg.head_dim as usize;
        let had = |n: usize, what: &str| {
            Hadamard::new(n, Some(spec.seed))
                .map_err(|e| Error::Unsupported(format!("rotating the {what} (width {n}): {e}")))
        };
        let r1 = had(hidden, "residual stream")?;
        let r2 = had(hd, "attention heads")?;
        let r4 = spec.r4(cfg.intermediate_size as usize)?;
        let inner_tensors = inner.tensors()?;
        let by_name: HashMap<&str, &SourceTensor> =
            inner_tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let find = |n: &str| -> Result<SourceTensor> {
            by_name.get(n).map(|t| (*t).clone()).ok_or_else(|| Error::MissingTensor {
                path: inner.path(),
                tensor: n.to_string(),
                hint: String::new(),
            })
        };
        let mut plan = HashMap::new();
        let mut tensors = Vec::with_capacity(inner_tensors.len() + 1);
        let untied = !by_name.contains_key("output.weight");
        for t in &inner_tensors {
            let name = t.name.as_str();
            let role = if name == "token_embd.weight" {
                Role::Rows
            } else if name == "output.weight" {
                Role::Input { norm: "output_norm.weight".into(), value_heads: false }
            } else if name == "output_norm.weight" {
                Role::Ones
            } else if name == "rope_freqs.weight" {
                Role::Same
            } else if let Some(rest) = name.strip_prefix("blk.") {
                let (layer, stem) = rest.split_once('.').ok_or_else(|| unknown(name))?;
                let norm = |n: &str| format!("blk.{layer}.{n}.weight");
                match stem {
                    "attn_norm.weight" | "ffn_norm.weight" => Role::Ones,
                    "attn_q.weight" | "attn_k.weight" => {
                        Role::Input { norm: norm("attn_norm"), value_heads: false }
                    }
                    "attn_v.weight" => Role::Input { norm: norm("attn_norm"), value_heads: true },
                    "ffn_gate.weight" | "ffn_up.weight" => {
                        Role::Input { norm: norm("ffn_norm"), value_heads: false }
                    }
                    "attn_output.weight" => Role::Output { value_heads: true },
                    "ffn_down.weight" => Role::Output { value_heads: false },
                    "attn_q.bias" | "attn_k.bias" => Role::Same,
                    "attn_v.bias" => Role::ValueBias,
                    "attn_output.bias" | "ffn_down.bias" => Role::Rows,
                    _ => return Err(unknown(name)),
                }
            } else {
                return Err(unknown(name));
            };
            if let Role::Input { norm, .. } = &role {
                find(norm)?;
            }
            plan.insert(t.name.clone(), (t.clone(), role));
            tensors.push(t.clone());
            if untied && name == "output_norm.weight" {
                // The folded output norm makes the output differ from the embedding.
                let e = find("token_embd.weight")?;
                let out = SourceTensor {
                    name: "output.weight".into(),
                    dims: e.dims.clone(),
                    origin: e.origin.clone(),
                };
                plan.insert(
                    out.name.clone(),
                    (e, Role::Input { norm: "output_norm.weight".into(), value_heads: false }),
                );
                tensors.push(out);
            }
        }
        if untied && !plan.contains_key("output.weight") {
            return Err(Error::MissingTensor {
                path: inner.path(),
                tensor: "output_norm.weight".into(),
                hint: String::new(),
            });
        }
        let mut config = cfg;
        config.tie_word_embeddings = false;
        Ok(Rotated { inner, spec, config, r1, r2, r4, tensors, plan, untied, cache: Mutex::new(None) })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn tensors(&self) -> Vec<SourceTensor> {
        self.tensors.clone()
    }

    fn entry(&self, t: &SourceTensor) -> Result<&(SourceTensor, Role)> {
        self.plan
            .get(&t.name)
            .ok_or_else(|| Error::Invalid(format!("tensor '{}' does not belong to this source", t.name)))
    }

    /// The norm scale folded into a linear, as f32.
    fn norm(&self, name: &str) -> Result<Vec<f32>> {
        let (t, _) = self.plan.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.inner.path(),
            tensor: name.to_string(),
            hint: String::new(),
        })?;
        self.inner.read(t)
    }

    /// Rows `[r0, r1)` of tensor `t` of the rotated model.
    pub fn read_rows(&self, t: &SourceTensor, r0: usize, r1: usize) -> Result<Vec<f32>> {
        let (src, role) = self.entry(t)?;
        let row = t.row_len();
        match role {
            Role::Same => self.inner.read_rows(src, r0, r1),
            Role::Ones => Ok(vec![1.0; (r1 - r0) * row]),
            Role::Rows => {
                let mut v = self.inner.read_rows(src, r0, r1)?;
                self.r1.apply_rows(&mut v);
                Ok(v)
            }
            Role::Input { norm, value_heads: false } => {
                let g = self.norm(norm)?;
                let mut v = self.inner.read_rows(src, r0, r1)?;
                fold_and_rotate(&mut v, &g, &self.r1);
                Ok(v)
            }
            Role::ValueBias => {
                let mut v = self.inner.read_rows(src, r0, r1)?;
                self.r2.apply_rows(&mut v);
                Ok(v)
            }
            Role::Input { value_heads: true, .. } | Role::Output { .. } => {
                let all = self.whole(t, src, role)?;
                Ok(all[r0 * row..r1 * row].to_vec())
            }
        }
    }

    /// A tensor whose rows mix (values per head, residual writers), computed whole and cached.
    fn whole(&self, t: &SourceTensor, src: &SourceTensor, role: &Role) -> Result<Arc<Vec<f32>>> {
        let mut cache = self.cache.lock().map_err(|_| Error::Invalid("rotation cache poisoned".into()))?;
        if let Some((n, v)) = cache.as_ref() {
            if *n == t.name {
                return Ok(v.clone());
            }
        }
        let row = t.row_len();
        let mut v = self.inner.read(src)?;
        let hd = self.r2.n();
        match role {
            Role::Input { norm, .. } => {
                // attn_v: fold + R1 along the rows, then R2ᵀ over each head's rows.
                let g = self.norm(norm)?;
                fold_and_rotate(&mut v, &g, &self.r1);
                for head in v.chunks_mut(hd * row) {
                    self.r2.apply_columns(head, row);
                }
            }
            Role::Output { value_heads } => {
                if *value_heads {
                    // attn_output: columns of each head ·R2 (row segments of hd).
                    self.r2.apply_rows(&mut v);
                } else if let Some(r4) = &self.r4 {
                    // ffn_down: its input arrives rotated by R4, so W ← W·R4 (R4 orthogonal).
                    r4.apply_rows(&mut v);
                }
                self.r1.apply_columns(&mut v, row);
            }
            _ => unreachable!("whole() is for mixing roles"),
        }
        let v = Arc::new(v);
        *cache = Some((t.name.clone(), v.clone()));
        Ok(v)
    }

    pub fn file_of(&self, t: &SourceTensor) -> PathBuf {
        match self.plan.get(&t.name) {
            Some((src, _)) => self.inner.file_of(src),
            None => self.inner.path(),
        }
    }

    pub fn release_rows(&self, t: &SourceTensor, r0: usize, r1: usize) {
        if let Some((src, role)) = self.plan.get(&t.name) {
            if !matches!(role, Role::Ones) {
                self.inner.release_rows(src, r0, r1);
            }
        }
    }

    /// The inner model's metadata, plus what was done (`quantkit.rotation.*`).
    pub fn metadata(&self, tokenizer_pre: Option<&str>) -> Result<Vec<(String, Value)>> {
        let mut kv = self.inner.metadata(tokenizer_pre)?;
        kv.retain(|(k, _)| !k.starts_with("quantkit.rotation."));
        let s = |v: String| Value::String(v);
        kv.extend([
            ("quantkit.rotation.method".to_string(), s("quarot-hadamard".into())),
            ("quantkit.rotation.r1".to_string(), s(self.r1.describe())),
            ("quantkit.rotation.r2".to_string(), s(self.r2.describe())),
            ("quantkit.rotation.seed".to_string(), Value::U64(self.spec.seed)),
            ("quantkit.rotation.untied_output".to_string(), Value::Bool(self.untied)),
        ]);
        match &self.r4 {
            // R1/R2 are fused into the weights: nothing to apply at run time.
            None => kv.push((ONLINE_KEY.to_string(), s("none".into()))),
            Some(r4) => {
                kv.push((ONLINE_KEY.to_string(), s("r4".into())));
                kv.push(("quantkit.rotation.r4".to_string(), s(r4.describe())));
            }
        }
        Ok(kv)
    }
}

/// `W ← (W·diag(g))·R` on every row.
fn fold_and_rotate(w: &mut [f32], g: &[f32], r: &Hadamard) {
    for row in w.chunks_mut(g.len()) {
        for (x, g) in row.iter_mut().zip(g) {
            *x *= g;
        }
    }
    r.apply_rows(w);
}
