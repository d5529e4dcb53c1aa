//! The architecture-neutral model description, read from an HF `config.json` or GGUF metadata and
//! written back to either.

use std::path::Path;

use quantkit_core::{Error, Result};
use serde_json::{json, Value as Json};

use crate::gguf::{GgufFile, Value};

/// Supported architectures (the Llama family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    /// HF `architectures[0]` → Arch, or `None` if unsupported.
    pub fn from_hf(class: &str) -> Option<Self> {
        match class {
            "LlamaForCausalLM" => Some(Arch::Llama),
            "MistralForCausalLM" => Some(Arch::Mistral),
            "Qwen2ForCausalLM" => Some(Arch::Qwen2),
            _ => None,
        }
    }
    pub fn hf_class(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
    /// `general.architecture` (llama.cpp converts Mistral as `llama`).
    pub fn gguf_arch(self) -> &'static str {
        match self {
            Arch::Llama | Arch::Mistral => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
    /// llama.cpp's `llama` arch uses interleaved (GPT-J style) RoPE, so HF's q/k rows are permuted
    /// on conversion; `qwen2` uses NeoX RoPE and keeps HF's row order.
    pub fn permutes_qk(self) -> bool {
        matches!(self, Arch::Llama | Arch::Mistral)
    }
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    Linear {
        factor: f64,
    },
    Yarn {
        factor: f64,
        original_context: u64,
    },
    /// Llama 3.1: per-frequency factors, stored by llama.cpp as the `rope_freqs.weight` tensor.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: u64,
    },
}

/// What the converter and the engine need to know about a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: u64,
    pub intermediate_size: u64,
    pub num_layers: u64,
    pub n_heads: u64,
    pub n_kv_heads: u64,
    pub head_dim: u64,
    /// config.json states `head_dim` (llama.cpp then writes `attention.key_length`/`value_length`).
    pub head_dim_explicit: bool,
    pub vocab_size: u64,
    pub context_length: u64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub rope_scaling: Option<RopeScaling>,
    pub bos_token_id: Option<u64>,
    pub eos_token_id: Option<u64>,
}

fn field<'a>(cfg: &'a Json, key: &str) -> Option<&'a Json> {
    cfg.get(key).filter(|v| !v.is_null())
}

impl ModelConfig {
    /// Parse an HF `config.json` value. `path` is used in error messages.
    pub fn from_hf(cfg: &Json, path: &Path) -> Result<Self> {
        let bad = |key: &str, msg: String| Error::malformed(path, "config.json", format!("\"{key}\""), msg);
        let class = field(cfg, "architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
            .and_then(|a| a.as_str())
            .ok_or_else(|| bad("architectures", "missing (expected e.g. [\"LlamaForCausalLM\"])".into()))?;
        let arch = Arch::from_hf(class).ok_or_else(|| {
            Error::Unsupported(format!(
                "architecture {class:?} in {} (quantkit supports LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)",
                path.display()
            ))
        })?;
        let uint = |key: &str| -> Result<u64> {
            field(cfg, key)
                .and_then(Json::as_u64)
                .filter(|&v| v > 0)
                .ok_or_else(|| bad(key, "missing or not a positive integer".into()))
        };
        let float = |key: &str, default: f64| -> Result<f64> {
            match field(cfg, key) {
                None => Ok(default),
                Some(v) => {
                    v.as_f64().filter(|f| f.is_finite()).ok_or_else(|| bad(key, format!("not a number: {v}")))
                }
            }
        };
        let hidden_size = uint("hidden_size")?;
        let n_heads = uint("num_attention_heads")?;
        let n_kv_heads = match field(cfg, "num_key_value_heads") {
            None => n_heads,
            Some(_) => uint("num_key_value_heads")?,
        };
        let head_dim = match field(cfg, "head_dim") {
            Some(_) => uint("head_dim")?,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(bad(
                        "num_attention_heads",
                        format!("{n_heads} heads do not divide hidden_size {hidden_size}"),
                    ));
                }
                hidden_size / n_heads
            }
        };
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                "num_key_value_heads",
                format!("{n_kv_heads} KV heads do not divide {n_heads} heads"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad("head_dim", format!("head dimension {head_dim} is odd; RoPE needs pairs")));
        }
        // transformers ≥ 5 writes `rope_parameters` (rope_theta + the scaling) instead of
        // `rope_theta` and `rope_scaling`; accept both.
        let rope_params = field(cfg, "rope_parameters");
        let rope_scaling = match field(cfg, "rope_scaling").or(rope_params) {
            None => None,
            Some(rs) => Self::parse_rope_scaling(rs).map_err(|m| bad("rope_scaling", m))?,
        };
        let rope_theta = match (field(cfg, "rope_theta"), rope_params.and_then(|p| p.get("rope_theta"))) {
            (None, Some(t)) => {
                t.as_f64().ok_or_else(|| bad("rope_parameters.rope_theta", "not a number".into()))?
            }
            _ => float("rope_theta", 10000.0)?,
        };
        let token_id = |key: &str| -> Option<u64> {
            match field(cfg, key)? {
                Json::Array(a) => a.first().and_then(Json::as_u64),
                v => v.as_u64(),
            }
        };
        let c = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_layers: uint("num_hidden_layers")?,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_explicit: field(cfg, "head_dim").is_some(),
            vocab_size: uint("vocab_size")?,
            context_length: match field(cfg, "max_position_embeddings") {
                Some(_) => uint("max_position_embeddings")?,
                None => 2048,
            },
            rms_norm_eps: float("rms_norm_eps", 1e-6)?,
            rope_theta,
            tie_word_embeddings: field(cfg, "tie_word_embeddings").and_then(Json::as_bool).unwrap_or(false),
            rope_scaling,
            bos_token_id: token_id("bos_token_id"),
            eos_token_id: token_id("eos_token_id"),
        };
        c.check_plausible().map_err(|(hf_key, _, m)| bad(hf_key, m))?;
        Ok(c)
    }

    /// Values a real model cannot have: sizes past any model's (a hostile header could otherwise
    /// make us allocate per layer or per vocabulary entry without bound) and non-positive RoPE /
    /// norm constants. Returns (config.json key, GGUF key suffix, why).
    fn check_plausible(&self) -> std::result::Result<(), (&'static str, &'static str, String)> {
        let caps: [(&str, &str, u64, u64); 7] = [
            ("hidden_size", "embedding_length", self.hidden_size, 1 << 17),
            ("intermediate_size", "feed_forward_length", self.intermediate_size, 1 << 20),
            ("num_hidden_layers", "block_count", self.num_layers, 1 << 12),
            ("num_attention_heads", "attention.head_count", self.n_heads, 1 << 12),
            ("head_dim", "attention.key_length", self.head_dim, 1 << 12),
            ("vocab_size", "vocab_size", self.vocab_size, 1 << 23),
            ("max_position_embeddings", "context_length", self.context_length, 1 << 30),
        ];
        for (hf, gguf, v, cap) in caps {
            if v == 0 || v > cap {
                return Err((hf, gguf, format!("{v} is not a plausible value (1 to {cap})")));
            }
        }
        if self.n_kv_heads > self.n_heads {
            return Err((
                "num_key_value_heads",
                "attention.head_count_kv",
                format!("{} KV heads exceed {} heads", self.n_kv_heads, self.n_heads),
            ));
        }
        let eps = self.rms_norm_eps;
        if !(eps.is_finite() && (0.0..1.0).contains(&eps)) {
            return Err((
                "rms_norm_eps",
                "attention.layer_norm_rms_epsilon",
                format!("{eps} is not in [0, 1)"),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(("rope_theta", "rope.freq_base", format!("{} must be positive", self.rope_theta)));
        }
        let factors: Vec<f64> = match &self.rope_scaling {
            None => vec![],
            Some(RopeScaling::Linear { factor }) => vec![*factor],
            Some(RopeScaling::Yarn { factor, .. }) => vec![*factor],
            Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, .. }) => {
                vec![*factor, *low_freq_factor, *high_freq_factor]
            }
        };
        if let Some(f) = factors.iter().find(|f| !(f.is_finite() && **f > 0.0)) {
            return Err(("rope_scaling", "rope.scaling.factor", format!("factor {f} must be positive")));
        }
        if let Some(RopeScaling::Llama3 { low_freq_factor, high_freq_factor, .. }) = &self.rope_scaling {
            if high_freq_factor <= low_freq_factor {
                return Err((
                    "rope_scaling",
                    "rope.scaling.factor",
                    format!(
                        "high_freq_factor {high_freq_factor} must exceed low_freq_factor {low_freq_factor}"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn parse_rope_scaling(rs: &Json) -> std::result::Result<Option<RopeScaling>, String> {
        let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(Json::as_str).unwrap_or("default");
        let num =
            |k: &str| rs.get(k).and_then(Json::as_f64).ok_or_else(|| format!("{kind} scaling needs \"{k}\""));
        Ok(match kind {
            "default" => None,
            "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
            "yarn" => Some(RopeScaling::Yarn {
                factor: num("factor")?,
                original_context: num("original_max_position_embeddings")? as u64,
            }),
            "llama3" => Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_context: num("original_max_position_embeddings")? as u64,
            }),
            other => return Err(format!("rope scaling type {other:?} is not supported")),
        })
    }

    /// The `<arch>.*` hyperparameter keys llama.cpp's converter writes.
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let a = self.arch.gguf_arch();
        let u = |v: u64| Value::U32(v as u32);
        let mut kv = vec![
            (format!("{a}.block_count"), u(self.num_layers)),
            (format!("{a}.context_length"), u(self.context_length)),
            (format!("{a}.embedding_length"), u(self.hidden_size)),
            (format!("{a}.feed_forward_length"), u(self.intermediate_size)),
            (format!("{a}.attention.head_count"), u(self.n_heads)),
            (format!("{a}.attention.head_count_kv"), u(self.n_kv_heads)),
            (format!("{a}.rope.freq_base"), Value::F32(self.rope_theta as f32)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(self.rms_norm_eps as f32)),
        ];
        if self.head_dim_explicit || self.head_dim != self.hidden_size / self.n_heads {
            kv.push((format!("{a}.attention.key_length"), u(self.head_dim)));
            kv.push((format!("{a}.attention.value_length"), u(self.head_dim)));
        }
        match &self.rope_scaling {
            Some(RopeScaling::Linear { factor }) => {
                kv.push((format!("{a}.rope.scaling.type"), Value::String("linear".into())));
                kv.push((format!("{a}.rope.scaling.factor"), Value::F32(*factor as f32)));
            }
            Some(RopeScaling::Yarn { factor, original_context }) => {
                kv.push((format!("{a}.rope.scaling.type"), Value::String("yarn".into())));
                kv.push((format!("{a}.rope.scaling.factor"), Value::F32(*factor as f32)));
                kv.push((format!("{a}.rope.scaling.original_context_length"), u(*original_context)));
            }
            Some(RopeScaling::Llama3 { .. }) | None => {}
        }
        if a == "llama" {
            // LlamaModel adds these; Qwen2Model (plain TextModel) does not.
            kv.push((format!("{a}.vocab_size"), u(self.vocab_size)));
            kv.push((format!("{a}.rope.dimension_count"), u(self.head_dim)));
        }
        kv
    }

    /// Read the hyperparameters back from a GGUF file.
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let c = Self::from_gguf_unchecked(g)?;
        let a = g.architecture()?;
        c.check_plausible()
            .map_err(|(_, key, m)| Error::malformed(g.path(), "GGUF", format!("metadata '{a}.{key}'"), m))?;
        Ok(c)
    }

    /// [`from_gguf`](Self::from_gguf) without the plausibility checks (for tensor collections).
    pub fn from_gguf_unchecked(g: &GgufFile) -> Result<Self> {
        let a = g.architecture()?.to_string();
        let arch = match a.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            other => {
                return Err(Error::Unsupported(format!(
                    "GGUF architecture {other:?} in {} (quantkit supports llama, qwen2)",
                    g.path().display()
                )))
            }
        };
        let k = |s: &str| format!("{a}.{s}");
        let hidden_size = g.get_u64(&k("embedding_length"))?;
        let n_heads = g.get_u64(&k("attention.head_count"))?;
        let n_kv_heads = g.get(&k("attention.head_count_kv")).and_then(Value::as_u64).unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(Error::malformed(
                g.path(),
                "GGUF",
                k("attention.head_count_kv"),
                format!("{n_kv_heads} KV heads do not divide {n_heads} heads"),
            ));
        }
        let head_dim_explicit = g.get(&k("attention.key_length")).is_some();
        let head_dim = match g.get(&k("attention.key_length")).and_then(Value::as_u64) {
            Some(d) => d,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(Error::malformed(
                        g.path(),
                        "GGUF",
                        k("attention.head_count"),
                        format!("{n_heads} heads do not divide embedding length {hidden_size}"),
                    ));
                }
                hidden_size / n_heads
            }
        };
        let vocab_size = match g.get(&k("vocab_size")).and_then(Value::as_u64) {
            Some(v) => v,
            None => {
                g.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|t| t.len() as u64).unwrap_or(0)
            }
        };
        let rope_scaling = match g.get(&k("rope.scaling.type")).and_then(Value::as_str) {
            Some("linear") => Some(RopeScaling::Linear { factor: g.get_f64(&k("rope.scaling.factor"))? }),
            Some("yarn") => Some(RopeScaling::Yarn {
                factor: g.get_f64(&k("rope.scaling.factor"))?,
                original_context: g.get_u64(&k("rope.scaling.original_context_length"))?,
            }),
            Some("none") | None => None,
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "rope scaling type {other:?} in {}",
                    g.path().display()
                )))
            }
        };
        let tok = |s: &str| g.get(&format!("tokenizer.ggml.{s}")).and_then(Value::as_u64);
        let c = ModelConfig {
            arch,
            hidden_size,
            intermediate_size: g.get_u64(&k("feed_forward_length"))?,
            num_layers: g.get_u64(&k("block_count"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            head_dim_explicit,
            vocab_size,
            context_length: g.get(&k("context_length")).and_then(Value::as_u64).unwrap_or(2048),
            rms_norm_eps: g.get_f64(&k("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.get(&k("rope.freq_base")).and_then(Value::as_f64).unwrap_or(10000.0),
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            rope_scaling,
            bos_token_id: tok("bos_token_id"),
            eos_token_id: tok("eos_token_id"),
        };
        Ok(c)
    }

    /// An HF `config.json` for this model.
    pub fn to_hf_json(&self, torch_dtype: &str) -> Json {
        let mut c = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.hf_model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.context_length,
            // GGUF stores an f32: write its shortest decimal (1e-6, not 9.999999974752427e-7).
            "rms_norm_eps": shortest_f32(self.rms_norm_eps),
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": torch_dtype,
        });
        let obj = c.as_object_mut().expect("object literal");
        if self.arch != Arch::Qwen2 {
            obj.insert("attention_bias".into(), json!(false));
            obj.insert("mlp_bias".into(), json!(false));
        }
        if self.head_dim_explicit || self.head_dim != self.hidden_size / self.n_heads {
            obj.insert("head_dim".into(), json!(self.head_dim));
        }
        if let Some(b) = self.bos_token_id {
            obj.insert("bos_token_id".into(), json!(b));
        }
        if let Some(e) = self.eos_token_id {
            obj.insert("eos_token_id".into(), json!(e));
        }
        obj.insert(
            "rope_scaling".into(),
            match &self.rope_scaling {
                None => Json::Null,
                Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
                Some(RopeScaling::Yarn { factor, original_context }) => json!({
                    "rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original_context}),
                Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context }) => json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_context}),
            },
        );
        c
    }

    /// Llama 3 RoPE frequency factors (`rope_freqs.weight`), as llama.cpp's converter computes them.
    pub fn llama3_rope_factors(&self) -> Option<Vec<f32>> {
        let Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_context }) =
            self.rope_scaling
        else {
            return None;
        };
        let base = self.rope_theta;
        let dim = self.head_dim as f64;
        let low_freq_wavelen = original_context as f64 / low_freq_factor;
        let high_freq_wavelen = original_context as f64 / high_freq_factor;
        Some(
            (0..self.head_dim / 2)
                .map(|i| {
                    let freq = 1.0 / base.powf(2.0 * i as f64 / dim);
                    let wavelen = 2.0 * std::f64::consts::PI / freq;
                    let f = if wavelen < high_freq_wavelen {
                        1.0
                    } else if wavelen > low_freq_wavelen {
                        factor
                    } else {
                        let smooth = (original_context as f64 / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    };
                    f as f32
                })
                .collect(),
        )
    }
}

/// The f64 whose decimal is the shortest one that reads back as the same f32 (`1e-6`, where
/// `1e-6f32 as f64` prints as 9.999999974752427e-7).
fn shortest_f32(x: f64) -> f64 {
    (x as f32).to_string().parse().unwrap_or(x)
}

#[cfg(test)]
mod shortest_tests {
    #[test]
    fn f32_values_print_as_written() {
        for (x, want) in [(1e-6f32, "1e-6"), (1e-5, "1e-5"), (0.1, "1e-1"), (1.5e-7, "1.5e-7")] {
            assert_eq!(format!("{:e}", super::shortest_f32(x as f64)), want);
        }
    }
}
