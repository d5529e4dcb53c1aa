//! Which storage type each tensor gets: llama-quantize's decision procedure over recipes that are
//! plain data.
//!
//! A [`Recipe`] is a named [`Mix`] (base type + per-tensor rules, loaded from `mixes.toml`) plus the
//! user's options (`--pure`, `--output-tensor-type`, `--token-embedding-type`, `--tensor-type`).
//! It serializes to JSON/TOML, so a recipe can be printed, stored, diffed and read back.
//!
//! [`Recipe::plan`] follows `llama_tensor_get_type` step for step:
//! 1. tensors llama.cpp never quantizes (1-D, `*_norm.weight`, not ending in `weight`) stay F32;
//! 2. `--token-embedding-type` / `--output-tensor-type` decide those tensors outright;
//! 3. with a quantized base: the first `--tensor-type` pattern that matches the name wins;
//!    otherwise (unless `--pure`) the output rule and the mix's rules choose;
//! 4. a type whose blocks do not fit the row falls back (the 256-block IQ types → IQ4_NL,
//!    Q2_K/Q3_K/TQ → Q4_0, Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0, anything else or a
//!    still-misfitting fallback → F16), noted.
//!
//! Layer indices are llama.cpp's running counters, visited in its tensor order (by layer, then
//! name) and advanced only when the mix rules are consulted, so `--tensor-type` overrides shift
//! them exactly as they do in llama-quantize.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use quantkit_core::{Error, GgmlType, Result};
use quantkit_io::config::{Arch, ModelConfig};
use quantkit_io::source::SourceTensor;
use serde::{Deserialize, Serialize};

/// llama.cpp's tensor categories (`tensor_get_category`), as rules name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    TokenEmbd,
    Output,
    /// attn_v, attn_qkv and attn_kv_b (llama.cpp's `category_is_attn_v`).
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Other,
}

impl Category {
    /// The category of a GGUF tensor name, by llama.cpp's substring tests in its order.
    pub fn of(name: &str) -> Self {
        match name {
            "output.weight" => return Category::Output,
            "token_embd.weight" | "per_layer_token_embd.weight" => return Category::TokenEmbd,
            _ => {}
        }
        let tests: [(&str, Category); 10] = [
            ("attn_qkv.weight", Category::AttnV),
            ("attn_kv_b.weight", Category::AttnV),
            ("attn_v.weight", Category::AttnV),
            ("attn_k.weight", Category::AttnK),
            ("attn_q.weight", Category::AttnQ),
            ("attn_output.weight", Category::AttnOutput),
            ("ffn_up", Category::FfnUp),
            ("ffn_gate", Category::FfnGate),
            ("ffn_down", Category::FfnDown),
            ("", Category::Other),
        ];
        tests.iter().find(|(s, _)| name.contains(s)).map(|t| t.1).unwrap_or(Category::Other)
    }
}

/// When a rule applies. Every condition that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct When {
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more_bits: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers_below_nth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_below: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_gqa: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub with_imatrix: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub without_imatrix: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub model_70b: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub type_in: Vec<GgmlType>,
}

/// One rule of a mix: tensors of `tensor`'s category get `ty` when `when` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub tensor: Category,
    #[serde(default)]
    pub when: When,
    #[serde(rename = "type")]
    pub ty: GgmlType,
}

/// A named quantization mix (llama-quantize's ftype).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub file_type: u32,
    pub base: GgmlType,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MixFile {
    common: Common,
    mix: Vec<Mix>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Common {
    rules: Vec<Rule>,
}

/// The built-in mixes (`mixes.toml`), common rules appended.
pub fn mixes() -> &'static [Mix] {
    static MIXES: OnceLock<Vec<Mix>> = OnceLock::new();
    MIXES.get_or_init(|| {
        #[allow(clippy::expect_used)] // a compile-time constant, covered by the unit tests
        let f: MixFile = toml::from_str(include_str!("mixes.toml")).expect("mixes.toml is valid");
        f.mix
            .into_iter()
            .map(|mut m| {
                m.rules.extend(f.common.rules.iter().cloned());
                m
            })
            .collect()
    })
}

/// The mix called `name` (case-insensitive; llama-quantize's aliases Q3_K, Q4_K, Q5_K included).
pub fn mix(name: &str) -> Option<&'static Mix> {
    mixes()
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name) || m.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
}

/// `--tensor-type PATTERN=TYPE`: tensors whose name matches the regex get the type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorTypeOverride {
    pub pattern: String,
    #[serde(rename = "type")]
    pub ty: GgmlType,
}

/// A conversion recipe. Plain data: print it, serialize it, diff it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub mix: Mix,
    /// Every quantized tensor gets the base type (llama-quantize's `--pure`).
    #[serde(default)]
    pub pure: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tensor_type: Option<GgmlType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_embedding_type: Option<GgmlType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensor_types: Vec<TensorTypeOverride>,
}

/// What the rules need to know about the model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub n_layer: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// llama.cpp's `LLM_TYPE_70B`.
    pub is_70b: bool,
    pub has_imatrix: bool,
}

impl ModelInfo {
    pub fn from_config(c: &ModelConfig, has_imatrix: bool) -> Self {
        // llama-model.cpp: Llama with 80 layers is 70B when its attention is grouped (65B if not);
        // Qwen2 with 80 layers is 70B.
        let is_70b = c.num_layers == 80 && (c.arch == Arch::Qwen2 || c.n_heads != c.n_kv_heads);
        ModelInfo {
            n_layer: c.num_layers as u32,
            n_head: c.n_heads as u32,
            n_head_kv: c.n_kv_heads as u32,
            is_70b,
            has_imatrix,
        }
    }

    fn n_gqa(&self) -> u32 {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }
}

/// The decision for one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Which step chose the type (`base`, `output rule`, `rule: …`, `--tensor-type …`, …).
    pub reason: String,
    /// Why `ty` differs from what the rules asked for (a fallback), if it does.
    pub note: Option<String>,
}

/// llama-quantize's `use_more_bits`.
fn use_more_bits(i: i64, n: i64) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama-quantize's `tensor_type_fallback` for a row of `ncols`, with the reason when it changes
/// the type.
pub fn fallback(ty: GgmlType, ncols: u64) -> (GgmlType, Option<String>) {
    if ncols % ty.block_size() as u64 == 0 {
        return (ty, None);
    }
    use GgmlType as T;
    let mut to = match ty {
        T::IQ1_S | T::IQ1_M | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S | T::IQ4_XS => {
            T::IQ4_NL
        }
        T::Q2_K | T::Q3_K | T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if ncols % to.block_size() as u64 != 0 {
        to = GgmlType::F16;
    }
    (
        to,
        Some(format!(
            "{} → {}: row length {ncols} is not a multiple of {}",
            ty.name(),
            to.name(),
            ty.block_size()
        )),
    )
}

/// llama.cpp's `tensor_allows_quantization` for the tensors our architectures have.
fn quantizable(t: &SourceTensor) -> bool {
    t.dims.len() >= 2 && t.name.ends_with("weight") && !t.name.contains("_norm.weight")
}

/// The layer of `blk.N.…`, or −1: llama.cpp's loader orders tensors by this, then by name.
fn layer_key(name: &str) -> i64 {
    name.strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .unwrap_or(-1)
}

#[derive(Default)]
struct Counters {
    n_attn_v: i64,
    i_attn_v: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

impl Recipe {
    /// The recipe for a mix name (`q4_k_m`, `Q8_0`, `f16`…) with default options.
    pub fn named(name: &str) -> Result<Self> {
        let m = mix(name).ok_or_else(|| {
            let names: Vec<&str> = mixes().iter().map(|m| m.name.as_str()).collect();
            Error::Invalid(format!("unknown quantization type {name:?} (known: {})", names.join(", ")))
        })?;
        Ok(Recipe::of_mix(m.clone()))
    }

    pub fn of_mix(mix: Mix) -> Self {
        Recipe {
            mix,
            pure: false,
            output_tensor_type: None,
            token_embedding_type: None,
            tensor_types: vec![],
        }
    }

    /// The mix's base type.
    pub fn base(&self) -> GgmlType {
        self.mix.base
    }

    /// Decide the type of every tensor (returned in the order given).
    pub fn plan(&self, tensors: &[SourceTensor], model: &ModelInfo) -> Result<Vec<TensorPlan>> {
        let patterns = self
            .tensor_types
            .iter()
            .map(|o| {
                regex::Regex::new(&o.pattern)
                    .map(|r| (r, o))
                    .map_err(|e| Error::Invalid(format!("--tensor-type pattern {:?}: {e}", o.pattern)))
            })
            .collect::<Result<Vec<_>>>()?;
        let tied = !tensors.iter().any(|t| t.name == "output.weight");
        let mut c = Counters {
            n_attn_v: tensors.iter().filter(|t| Category::of(&t.name) == Category::AttnV).count() as i64,
            ..Default::default()
        };
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by(|&a, &b| {
            let (na, nb) = (&tensors[a].name, &tensors[b].name);
            (layer_key(na), na).cmp(&(layer_key(nb), nb))
        });
        let mut plans: BTreeMap<usize, TensorPlan> = BTreeMap::new();
        for i in order {
            plans.insert(i, self.plan_one(&tensors[i], tied, model, &patterns, &mut c));
        }
        Ok(plans.into_values().collect())
    }

    fn plan_one(
        &self,
        t: &SourceTensor,
        tied: bool,
        model: &ModelInfo,
        patterns: &[(regex::Regex, &TensorTypeOverride)],
        c: &mut Counters,
    ) -> TensorPlan {
        let done = |ty: GgmlType, reason: String| {
            let (ty, note) = fallback(ty, t.dims[0]);
            TensorPlan { name: t.name.clone(), dims: t.dims.clone(), ty, reason, note }
        };
        if !quantizable(t) {
            return TensorPlan {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: GgmlType::F32,
                reason: "not quantized".into(),
                note: None,
            };
        }
        let cat = Category::of(&t.name);
        match (cat, self.token_embedding_type, self.output_tensor_type) {
            (Category::TokenEmbd, Some(ty), _) => return done(ty, "--token-embedding-type".into()),
            (Category::Output, _, Some(ty)) => return done(ty, "--output-tensor-type".into()),
            _ => {}
        }
        let base = self.mix.base;
        if base.is_float() {
            return done(base, "base".into());
        }
        if let Some((_, o)) = patterns.iter().find(|(r, _)| r.is_match(&t.name)) {
            return done(o.ty, format!("--tensor-type {}={}", o.pattern, o.ty.name()));
        }
        if self.pure {
            return done(base, "base (--pure)".into());
        }
        // llama_tensor_get_type_impl
        if cat == Category::Output || (tied && cat == Category::TokenEmbd) {
            if let Some(ty) = self.output_tensor_type {
                return done(ty, "--output-tensor-type".into());
            }
            if t.dims[0] % base.block_size() as u64 != 0 {
                return done(GgmlType::Q8_0, "output rule (row not whole base blocks)".into());
            }
            if base != GgmlType::Q8_0 {
                return done(GgmlType::Q6_K, "output rule".into());
            }
            return done(base, "base".into());
        }
        let (i, n) = match cat {
            Category::AttnV => (c.i_attn_v, c.n_attn_v),
            Category::FfnDown => (c.i_ffn_down, model.n_layer as i64),
            Category::FfnGate => (c.i_ffn_gate, model.n_layer as i64),
            Category::FfnUp => (c.i_ffn_up, model.n_layer as i64),
            _ => (0, model.n_layer as i64),
        };
        let mut ty = base;
        let mut reason = "base".to_string();
        for (k, r) in self.mix.rules.iter().enumerate() {
            if r.tensor == cat && self.holds(&r.when, i, n, ty, model) {
                ty = r.ty;
                reason = format!("rule {} of {} (i={i}, n={n})", k + 1, self.mix.name);
            }
        }
        match cat {
            Category::AttnV => c.i_attn_v += 1,
            Category::FfnDown => c.i_ffn_down += 1,
            Category::FfnGate => c.i_ffn_gate += 1,
            Category::FfnUp => c.i_ffn_up += 1,
            _ => {}
        }
        done(ty, reason)
    }

    fn holds(&self, w: &When, i: i64, n: i64, ty: GgmlType, m: &ModelInfo) -> bool {
        (!w.more_bits || use_more_bits(i, n))
            && w.layers_below_nth.is_none_or(|k| k > 0 && i < n / k as i64)
            && w.index_below.is_none_or(|k| i < k as i64)
            && w.min_gqa.is_none_or(|k| m.n_gqa() >= k)
            && (!w.with_imatrix || m.has_imatrix)
            && (!w.without_imatrix || !m.has_imatrix)
            && (!w.model_70b || m.is_70b)
            && (w.type_in.is_empty() || w.type_in.contains(&ty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantkit_io::source::Origin;

    fn t(name: &str, dims: &[u64]) -> SourceTensor {
        SourceTensor { name: name.into(), dims: dims.to_vec(), origin: Origin::RopeFreqs }
    }

    fn info(n_layer: u32, n_head: u32, n_head_kv: u32) -> ModelInfo {
        ModelInfo { n_layer, n_head, n_head_kv, is_70b: false, has_imatrix: false }
    }

    /// A Llama-shaped tensor list (llama.cpp's converter order within a layer).
    fn model(n_layer: usize, width: u64, ffn: u64, tied: bool) -> Vec<SourceTensor> {
        let mut v = vec![t("token_embd.weight", &[width, 512])];
        for l in 0..n_layer {
            for (n, d) in [
                ("attn_norm.weight", vec![width]),
                ("attn_q.weight", vec![width, width]),
                ("attn_k.weight", vec![width, width / 4]),
                ("attn_v.weight", vec![width, width / 4]),
                ("attn_output.weight", vec![width, width]),
                ("ffn_norm.weight", vec![width]),
                ("ffn_gate.weight", vec![width, ffn]),
                ("ffn_up.weight", vec![width, ffn]),
                ("ffn_down.weight", vec![ffn, width]),
            ] {
                v.push(t(&format!("blk.{l}.{n}"), &d));
            }
        }
        v.push(t("output_norm.weight", &[width]));
        if !tied {
            v.push(t("output.weight", &[width, 512]));
        }
        v
    }

    fn ty_of<'a>(p: &'a [TensorPlan], name: &str) -> &'a TensorPlan {
        p.iter().find(|x| x.name == name).unwrap_or_else(|| panic!("{name} not planned"))
    }

    #[test]
    fn mixes_load_and_roundtrip_as_data() {
        let names: Vec<&str> = mixes().iter().map(|m| m.name.as_str()).collect();
        for want in
            ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0"]
        {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert_eq!(mix("q4_k").map(|m| m.name.as_str()), Some("Q4_K_M"));
        assert_eq!(mix("Q3_K").map(|m| m.file_type), Some(12));
        let mut r = Recipe::named("q4_k_m").expect("ok");
        r.tensor_types.push(TensorTypeOverride { pattern: "attn_q".into(), ty: GgmlType::Q8_0 });
        r.output_tensor_type = Some(GgmlType::Q8_0);
        let text = toml::to_string(&r).expect("ok");
        let back: Recipe = toml::from_str(&text).expect("ok");
        assert_eq!(back, r, "{text}");
        let json = serde_json::to_string(&r).expect("ok");
        assert_eq!(serde_json::from_str::<Recipe>(&json).expect("ok"), r);
        assert!(Recipe::named("q4_k_xl").is_err());
    }

    #[test]
    fn q4_k_m_bumps_attn_v_and_ffn_down_on_more_bits_layers() {
        // 16 layers: use_more_bits → layers 0,1 (< n/8), 14,15 (≥ 7n/8), and (i-2)%3==2: 4,7,10,13.
        let m = model(16, 256, 512, false);
        let p = Recipe::named("q4_k_m").expect("ok").plan(&m, &info(16, 8, 2)).expect("ok");
        let bumped: Vec<usize> =
            (0..16).filter(|l| ty_of(&p, &format!("blk.{l}.attn_v.weight")).ty == GgmlType::Q6_K).collect();
        assert_eq!(bumped, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        for l in 0..16 {
            assert_eq!(
                ty_of(&p, &format!("blk.{l}.ffn_down.weight")).ty,
                ty_of(&p, &format!("blk.{l}.attn_v.weight")).ty
            );
            assert_eq!(ty_of(&p, &format!("blk.{l}.attn_q.weight")).ty, GgmlType::Q4_K);
            assert_eq!(ty_of(&p, &format!("blk.{l}.attn_norm.weight")).ty, GgmlType::F32);
        }
        assert_eq!(ty_of(&p, "output.weight").ty, GgmlType::Q6_K);
        assert_eq!(ty_of(&p, "token_embd.weight").ty, GgmlType::Q4_K, "untied embedding keeps the base");
    }

    #[test]
    fn q2_k_and_q3_k_rules() {
        let m = model(16, 256, 512, true);
        let p = Recipe::named("q2_k").expect("ok").plan(&m, &info(16, 8, 2)).expect("ok");
        assert_eq!(ty_of(&p, "blk.3.attn_v.weight").ty, GgmlType::Q4_K, "gqa 4");
        assert_eq!(ty_of(&p, "blk.3.ffn_down.weight").ty, GgmlType::Q3_K);
        assert_eq!(ty_of(&p, "blk.3.attn_output.weight").ty, GgmlType::Q3_K);
        assert_eq!(ty_of(&p, "blk.3.attn_k.weight").ty, GgmlType::Q2_K);
        assert_eq!(ty_of(&p, "token_embd.weight").ty, GgmlType::Q6_K, "tied embedding = output");
        let p = Recipe::named("q2_k").expect("ok").plan(&m, &info(16, 8, 8)).expect("ok");
        assert_eq!(ty_of(&p, "blk.3.attn_v.weight").ty, GgmlType::Q3_K, "no gqa");
        let p = Recipe::named("q3_k_m").expect("ok").plan(&m, &info(32, 8, 8)).expect("ok");
        assert_eq!(ty_of(&p, "blk.1.attn_v.weight").ty, GgmlType::Q5_K);
        assert_eq!(ty_of(&p, "blk.2.attn_v.weight").ty, GgmlType::Q4_K);
        // ffn_down: i < n/16 with n = 32 layers → layers 0 and 1 get Q5_K.
        assert_eq!(ty_of(&p, "blk.1.ffn_down.weight").ty, GgmlType::Q5_K);
        assert_eq!(ty_of(&p, "blk.2.ffn_down.weight").ty, GgmlType::Q4_K);
        assert_eq!(ty_of(&p, "blk.2.attn_output.weight").ty, GgmlType::Q4_K);
    }

    #[test]
    fn overrides_shift_counters_like_llama_quantize() {
        let m = model(16, 256, 512, false);
        let mut r = Recipe::named("q4_k_s").expect("ok");
        // attn_v of layer 0 is overridden, so the mix's "first 4 attn_v" become layers 1..=4.
        r.tensor_types.push(TensorTypeOverride { pattern: r"blk\.0\.attn_v".into(), ty: GgmlType::Q8_0 });
        let p = r.plan(&m, &info(16, 8, 2)).expect("ok");
        assert_eq!(ty_of(&p, "blk.0.attn_v.weight").ty, GgmlType::Q8_0);
        let bumped: Vec<usize> =
            (1..16).filter(|l| ty_of(&p, &format!("blk.{l}.attn_v.weight")).ty == GgmlType::Q5_K).collect();
        assert_eq!(bumped, vec![1, 2, 3, 4]);
        // Layer order is numeric (blk.10 after blk.9), as llama.cpp's loader sorts.
        let r = Recipe::named("q3_k_m").expect("ok");
        let p = r.plan(&model(12, 256, 512, false), &info(12, 8, 8)).expect("ok");
        assert_eq!(ty_of(&p, "blk.10.attn_v.weight").ty, GgmlType::Q4_K);
        assert_eq!(ty_of(&p, "blk.1.attn_v.weight").ty, GgmlType::Q5_K);
        let mut bad = Recipe::named("q4_0").expect("ok");
        bad.tensor_types.push(TensorTypeOverride { pattern: "(".into(), ty: GgmlType::Q8_0 });
        assert!(bad.plan(&m, &info(16, 8, 2)).is_err());
    }

    #[test]
    fn fallbacks_and_output_rules() {
        // SmolLM2-like widths: 576 is not a multiple of 256.
        let m = model(4, 576, 1536, true);
        let p = Recipe::named("q4_k_m").expect("ok").plan(&m, &info(4, 9, 3)).expect("ok");
        let q = ty_of(&p, "blk.0.attn_q.weight");
        assert_eq!(q.ty, GgmlType::Q5_0);
        assert!(q.note.as_deref().unwrap_or("").contains("576"), "{q:?}");
        // 4 layers: use_more_bits holds only for layer 3 (≥ 7·4/8).
        assert_eq!(ty_of(&p, "blk.0.ffn_down.weight").ty, GgmlType::Q4_K);
        assert_eq!(ty_of(&p, "blk.3.ffn_down.weight").ty, GgmlType::Q6_K);
        assert_eq!(ty_of(&p, "token_embd.weight").ty, GgmlType::Q8_0, "576 % 256 → Q8_0 output");
        let p = Recipe::named("q2_k").expect("ok").plan(&m, &info(4, 9, 3)).expect("ok");
        assert_eq!(ty_of(&p, "blk.0.attn_q.weight").ty, GgmlType::Q4_0);
        let p =
            Recipe::named("q4_0").expect("ok").plan(&model(1, 172, 64, false), &info(1, 4, 1)).expect("ok");
        assert_eq!(ty_of(&p, "blk.0.attn_q.weight").ty, GgmlType::F16);
        let p = Recipe::named("q8_0").expect("ok").plan(&m, &info(4, 9, 3)).expect("ok");
        assert_eq!(ty_of(&p, "token_embd.weight").ty, GgmlType::Q8_0);
        let mut r = Recipe::named("q4_0").expect("ok");
        r.pure = true;
        let p = r.plan(&model(1, 256, 512, false), &info(1, 4, 1)).expect("ok");
        assert_eq!(ty_of(&p, "output.weight").ty, GgmlType::Q4_0);
        let mut r = Recipe::named("q4_k_m").expect("ok");
        r.output_tensor_type = Some(GgmlType::Q8_0);
        r.token_embedding_type = Some(GgmlType::Q4_0);
        let p = r.plan(&model(1, 256, 512, false), &info(1, 4, 1)).expect("ok");
        assert_eq!(ty_of(&p, "output.weight").ty, GgmlType::Q8_0);
        assert_eq!(ty_of(&p, "token_embd.weight").ty, GgmlType::Q4_0);
        let p =
            Recipe::named("bf16").expect("ok").plan(&model(1, 172, 64, false), &info(1, 4, 1)).expect("ok");
        assert_eq!(ty_of(&p, "blk.0.ffn_down.weight").ty, GgmlType::BF16);
    }

    #[test]
    fn imatrix_and_70b_rules() {
        let m = model(16, 256, 512, false);
        let mut mi = info(16, 8, 2);
        let p = Recipe::named("q4_0").expect("ok").plan(&m, &mi).expect("ok");
        assert_eq!(ty_of(&p, "blk.0.ffn_down.weight").ty, GgmlType::Q4_0);
        mi.has_imatrix = true;
        let p = Recipe::named("q4_0").expect("ok").plan(&m, &mi).expect("ok");
        assert_eq!(ty_of(&p, "blk.1.ffn_down.weight").ty, GgmlType::Q4_1);
        assert_eq!(ty_of(&p, "blk.2.ffn_down.weight").ty, GgmlType::Q4_0);
        mi.is_70b = true;
        let p = Recipe::named("q4_k_m").expect("ok").plan(&m, &mi).expect("ok");
        assert_eq!(ty_of(&p, "blk.2.attn_v.weight").ty, GgmlType::Q5_K);
        assert_eq!(ty_of(&p, "blk.1.attn_v.weight").ty, GgmlType::Q6_K);
    }
}
