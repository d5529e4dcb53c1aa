//! Which storage type each tensor gets.
//!
//! Rules for a requested type `T` (llama.cpp's converter and llama-quantize, for the types
//! implemented so far):
//! * 1-D tensors, `*_norm.weight`, and anything not ending in `.weight` stay F32;
//! * with a quantized `T` (and without `--pure`), the output projection — or the token embedding
//!   when it is tied to the output — gets Q6_K (Q8_0 when `T` is Q8_0), as llama-quantize does;
//! * a row that is not a whole number of blocks falls back along llama-quantize's chain
//!   (Q4_K → Q5_0, Q5_K → Q5_1, Q6_K → Q8_0; Q2_K/Q3_K → IQ4_NL, which is not implemented yet, so
//!   F16), and legacy types fall back to F16 as llama.cpp's converter does. Every fallback is
//!   recorded (printed, in `--json`, and in the file's `quantkit.fallbacks` metadata).

use quantkit_core::GgmlType;
use quantkit_io::source::SourceTensor;
use serde::Serialize;

/// A conversion recipe. Plain data: print it, serialize it, diff it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// The requested type for weight matrices.
    pub base: GgmlType,
    /// Type for `output.weight` / a tied `token_embd.weight`.
    pub output: GgmlType,
}

/// The decision for one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Why `ty` differs from what the recipe asked for, if it does.
    pub note: Option<String>,
}

/// llama-quantize's replacement for a type whose blocks do not fit a row (`tensor_type_fallback`),
/// limited to the types quantkit implements.
pub fn fallback_type(t: GgmlType) -> GgmlType {
    match t {
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        // llama.cpp: Q2_K/Q3_K → IQ4_NL (not implemented here yet); legacy types → F16 (converter).
        _ => GgmlType::F16,
    }
}

impl Recipe {
    pub fn for_type(base: GgmlType) -> Self {
        let output = match base {
            b if b.is_float() || b == GgmlType::Q8_0 => b,
            _ => GgmlType::Q6_K,
        };
        Recipe { base, output }
    }

    /// Every weight matrix gets `base`, the output projection included (llama-quantize's `--pure`).
    pub fn pure(base: GgmlType) -> Self {
        Recipe { base, output: base }
    }

    /// Decide the type of `t`. `tied` says the token embedding doubles as the output projection.
    pub fn plan(&self, t: &SourceTensor, tied: bool) -> TensorPlan {
        let name = &t.name;
        if t.dims.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
            return TensorPlan { name: name.clone(), dims: t.dims.clone(), ty: GgmlType::F32, note: None };
        }
        let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
        let want = if is_output { self.output } else { self.base };
        let row = t.dims[0];
        let mut ty = want;
        while row % ty.block_size() as u64 != 0 {
            ty = fallback_type(ty);
        }
        let note = (ty != want).then(|| {
            format!(
                "{} → {}: row length {row} is not a multiple of {}",
                want.name(),
                ty.name(),
                want.block_size()
            )
        });
        TensorPlan { name: name.clone(), dims: t.dims.clone(), ty, note }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantkit_io::source::Origin;

    fn t(name: &str, dims: &[u64]) -> SourceTensor {
        SourceTensor { name: name.into(), dims: dims.to_vec(), origin: Origin::RopeFreqs }
    }

    #[test]
    fn rules_follow_llama_cpp() {
        let r = Recipe::for_type(GgmlType::Q4_0);
        assert_eq!(r.plan(&t("blk.0.attn_norm.weight", &[64]), true).ty, GgmlType::F32);
        assert_eq!(r.plan(&t("blk.0.attn_q.weight", &[64, 64]), true).ty, GgmlType::Q4_0);
        assert_eq!(r.plan(&t("blk.0.attn_q.bias", &[64]), true).ty, GgmlType::F32);
        assert_eq!(r.plan(&t("token_embd.weight", &[64, 512]), true).ty, GgmlType::Q8_0, "tied embedding");
        assert_eq!(r.plan(&t("token_embd.weight", &[64, 512]), false).ty, GgmlType::Q4_0, "untied embedding");
        let p = r.plan(&t("blk.0.ffn_down.weight", &[172, 64]), true);
        assert_eq!(p.ty, GgmlType::F16);
        assert!(p.note.as_deref().unwrap_or("").contains("172"), "{p:?}");
        // Output projection: Q6_K when rows are 256-aligned, else the Q6_K → Q8_0 fallback.
        assert_eq!(r.plan(&t("output.weight", &[256, 512]), false).ty, GgmlType::Q6_K);
        assert_eq!(r.plan(&t("output.weight", &[576, 512]), false).ty, GgmlType::Q8_0);
        assert_eq!(
            Recipe::pure(GgmlType::Q4_0).plan(&t("output.weight", &[256, 512]), false).ty,
            GgmlType::Q4_0
        );
        // llama-quantize's k-quant fallback chain, then F16.
        let k = Recipe::for_type(GgmlType::Q4_K);
        assert_eq!(k.plan(&t("blk.0.ffn_up.weight", &[576, 1536]), true).ty, GgmlType::Q5_0);
        assert_eq!(k.plan(&t("blk.0.ffn_down.weight", &[1536, 576]), true).ty, GgmlType::Q4_K);
        assert_eq!(
            Recipe::for_type(GgmlType::Q5_K).plan(&t("blk.0.ffn_up.weight", &[576, 8]), true).ty,
            GgmlType::Q5_1
        );
        assert_eq!(
            Recipe::for_type(GgmlType::Q6_K).plan(&t("blk.0.ffn_up.weight", &[576, 8]), true).ty,
            GgmlType::Q8_0
        );
        assert_eq!(k.plan(&t("blk.0.ffn_down.weight", &[172, 64]), true).ty, GgmlType::F16);
        let f = Recipe::for_type(GgmlType::BF16);
        assert_eq!(f.plan(&t("token_embd.weight", &[64, 512]), true).ty, GgmlType::BF16);
        assert_eq!(f.plan(&t("blk.0.ffn_down.weight", &[172, 64]), true).ty, GgmlType::BF16);
    }
}
