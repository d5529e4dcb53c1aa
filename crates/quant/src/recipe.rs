//! Which storage type each tensor gets.
//!
//! Rules for a requested type `T` (llama.cpp's converter and llama-quantize, for the types
//! implemented so far):
//! * 1-D tensors, `*_norm.weight`, and anything not ending in `.weight` stay F32;
//! * with a quantized `T`, the output projection (or the token embedding when it is tied to the
//!   output) gets a higher-precision type: llama-quantize picks Q6_K, falling back to Q8_0 when the
//!   row is not a multiple of 256. Q6_K is not implemented yet, so it is Q8_0 here (recorded);
//! * a tensor whose row length is not a multiple of `T`'s block size falls back to F16 (as
//!   llama.cpp's converter does), and the fallback is recorded in the file's metadata.

use quantkit_core::GgmlType;
use quantkit_io::source::SourceTensor;
use serde::Serialize;

/// A conversion recipe. Plain data: print it, serialize it, diff it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// The requested type for weight matrices.
    pub base: GgmlType,
    /// Type for `output.weight` / a tied `token_embd.weight` when `base` is a quantized type.
    pub output: GgmlType,
    /// Type used when a row does not fit `base`'s blocks.
    pub fallback: GgmlType,
}

/// The decision for one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Why `ty` differs from the recipe's base type, if it does for a reason worth reporting.
    pub note: Option<String>,
}

impl Recipe {
    pub fn for_type(base: GgmlType) -> Self {
        Recipe { base, output: if base.is_float() { base } else { GgmlType::Q8_0 }, fallback: GgmlType::F16 }
    }

    /// Decide the type of `t`. `tied` says the token embedding doubles as the output projection.
    pub fn plan(&self, t: &SourceTensor, tied: bool) -> TensorPlan {
        let name = &t.name;
        let mut note = None;
        let ty = if t.dims.len() <= 1 || name.ends_with("_norm.weight") || !name.ends_with(".weight") {
            GgmlType::F32
        } else {
            let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
            let want = if is_output && !self.base.is_float() { self.output } else { self.base };
            let row = t.dims[0];
            if row % want.block_size() as u64 == 0 {
                want
            } else {
                note = Some(format!(
                    "{} → {}: row length {row} is not a multiple of {}",
                    want.name(),
                    self.fallback.name(),
                    want.block_size()
                ));
                self.fallback
            }
        };
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
        let f = Recipe::for_type(GgmlType::BF16);
        assert_eq!(f.plan(&t("token_embd.weight", &[64, 512]), true).ty, GgmlType::BF16);
        assert_eq!(f.plan(&t("blk.0.ffn_down.weight", &[172, 64]), true).ty, GgmlType::BF16);
    }
}
