//! HF ⇄ GGUF tensor names for the Llama family (the one table: [`Proj`] for the seven projections,
//! the norms and globals beside it), and llama.cpp's q/k row permutation.

/// One of a block's seven projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// In file order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// The GGUF tensor stem (`blk.N.<stem>.weight`).
    pub fn gguf(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// The HF module path inside a layer (`model.layers.N.<path>`).
    pub fn hf(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// Its position in [`Proj::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its weight's GGUF name in `layer`: `blk.{layer}.<stem>.weight`.
    pub fn weight_name(self, layer: usize) -> String {
        format!("blk.{layer}.{}.weight", self.gguf())
    }

    /// The projection whose weight `gguf_name` is (`blk.N.<stem>.weight`), if it is one.
    pub fn of_weight(gguf_name: &str) -> Option<Proj> {
        if !gguf_name.starts_with("blk.") {
            return None;
        }
        Proj::ALL.into_iter().find(|p| gguf_name.ends_with(&format!(".{}.weight", p.gguf())))
    }
}

/// The layer's other tensors: (HF suffix inside `model.layers.{i}.`, GGUF suffix inside `blk.{i}.`).
const LAYER_NORMS: &[(&str, &str)] =
    &[("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")];

/// Every per-layer (HF, GGUF) suffix pair: the norms, then the projections.
fn layer_map() -> impl Iterator<Item = (&'static str, &'static str)> {
    LAYER_NORMS.iter().copied().chain(Proj::ALL.into_iter().map(|p| (p.hf(), p.gguf())))
}

const GLOBAL_MAP: &[(&str, &str)] =
    &[("model.embed_tokens", "token_embd"), ("model.norm", "output_norm"), ("lm_head", "output")];

/// HF tensor names the converter drops.
pub fn hf_is_ignored(name: &str) -> bool {
    name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.masked_bias")
        // The online R4 matrix of a quantkit `quarot` compressed-tensors checkpoint (the engine
        // rebuilds it from `quantkit_rotation`).
        || name == "model.layers.0.mlp.down_proj.R4_input.weight"
}

fn split_suffix(name: &str) -> Option<(&str, &str)> {
    name.rsplit_once('.').filter(|(_, s)| *s == "weight" || *s == "bias")
}

/// HF name → GGUF name (`None` if the name is not part of a Llama-family model).
pub fn hf_to_gguf(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((_, g)) = GLOBAL_MAP.iter().find(|(h, _)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (idx, part) = rest.split_once('.')?;
    let layer: u64 = idx.parse().ok()?;
    let (_, g) = layer_map().find(|(h, _)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// GGUF name → HF name.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(name)?;
    if let Some((h, _)) = GLOBAL_MAP.iter().find(|(_, g)| *g == stem) {
        return Some(format!("{h}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (idx, part) = rest.split_once('.')?;
    let layer: u64 = idx.parse().ok()?;
    let (h, _) = layer_map().find(|(_, g)| *g == part)?;
    Some(format!("model.layers.{layer}.{h}.{suffix}"))
}

/// Layer index of a GGUF name (`blk.N.…`).
pub fn layer_of(gguf_name: &str) -> Option<u64> {
    gguf_name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Which q/k permutation a GGUF tensor needs, as the number of heads to permute with.
pub fn qk_heads(gguf_name: &str, n_heads: u64, n_kv_heads: u64) -> Option<u64> {
    let part = gguf_name.strip_prefix("blk.")?.split('.').nth(1)?;
    match part {
        "attn_q" => Some(n_heads),
        "attn_k" => Some(n_kv_heads),
        _ => None,
    }
}

/// llama.cpp's `permute`: within each head, rows `[first half | second half]` (HF rotate-half
/// order) become interleaved pairs. `data` is row-major with `rows` rows.
pub fn permute_qk<T: Copy + Default>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    reorder_rows(data, rows, n_head, false)
}

/// Inverse of [`permute_qk`].
pub fn unpermute_qk<T: Copy + Default>(data: &[T], rows: usize, n_head: usize) -> Vec<T> {
    reorder_rows(data, rows, n_head, true)
}

fn reorder_rows<T: Copy + Default>(data: &[T], rows: usize, n_head: usize, inverse: bool) -> Vec<T> {
    let cols = data.len() / rows;
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![T::default(); data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let hf_row = h * hd + i * half + j; // HF layout
                let gg_row = h * hd + j * 2 + i; // llama.cpp layout
                let (src, dst) = if inverse { (gg_row, hf_row) } else { (hf_row, gg_row) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_weight_names_round_trip() {
        for p in Proj::ALL {
            assert_eq!(Proj::of_weight(&p.weight_name(7)), Some(p));
        }
        assert_eq!(Proj::Down.weight_name(3), "blk.3.ffn_down.weight");
        for other in ["blk.3.ffn_norm.weight", "blk.3.attn_q.bias", "output.weight", "token_embd.weight"] {
            assert_eq!(Proj::of_weight(other), None, "{other}");
        }
    }

    #[test]
    fn names_roundtrip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.17.self_attn.k_proj.bias",
            "model.layers.3.mlp.down_proj.weight",
            "model.layers.4.post_attention_layernorm.weight",
        ] {
            let g = hf_to_gguf(hf).expect("maps");
            assert_eq!(gguf_to_hf(&g).as_deref(), Some(hf));
        }
        assert_eq!(
            hf_to_gguf("model.layers.2.self_attn.o_proj.weight").as_deref(),
            Some("blk.2.attn_output.weight")
        );
        assert_eq!(hf_to_gguf("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(hf_to_gguf("vision_tower.weight"), None);
        for p in Proj::ALL {
            let g = format!("blk.5.{}.weight", p.gguf());
            assert_eq!(gguf_to_hf(&g), Some(format!("model.layers.5.{}.weight", p.hf())));
            assert_eq!(Proj::ALL[p.index()], p);
        }
    }

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // 2 heads of dim 4, 1 column: HF rows [h0: a0 a1 b0 b1 | h1: c0 c1 d0 d1]
        // → llama.cpp interleaves the halves: [a0 b0 a1 b1 | c0 d0 c1 d1].
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = permute_qk(&hf, 8, 2);
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_qk(&p, 8, 2), hf);
        let wide: Vec<f32> = (0..8 * 3).map(|x| x as f32 * 0.5).collect();
        assert_eq!(unpermute_qk(&permute_qk(&wide, 8, 2), 8, 2), wide);
    }
}
