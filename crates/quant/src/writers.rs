//! Integer checkpoints (GPTQ v1/v2, AWQ GEMM, compressed-tensors `pack-quantized` and int8
//! `int-quantized`) and FP8 ones (compressed-tensors `naive-quantized` / `float-quantized`) from
//! quantized matrices: the
//! model's tensors in HF naming, the configs each loader reads (`config.json`'s
//! `quantization_config`, GPTQ's `quantize_config.json`), the tokenizer. The bytes of each layout —
//! packing, AWQ's order, regrouping — are `quantkit_io::layout`'s (docs/quantized-layouts.md).
//!
//! AWQ and compressed-tensors have one group size per file and no ragged groups: when a layer's
//! width is not a multiple of the group size, the file stores `gcd(G, widths)`-sized groups, each
//! original group's `(scale, zero)` repeated — the weights are identical, and the metadata says so.
//! Modules a format cannot pack stay in fp16 and are listed the way each loader skips modules.
//! Every file is written into a temporary folder renamed into place.
//!
//! NVFP4 checkpoints ([`write_nvfp4_checkpoint`], compressed-tensors `nvfp4-pack-quantized`) are
//! quantized here too, round to nearest as llm-compressor's `NVFP4A16` does
//! (`quantkit_io::layout::ct_nvfp4`).
//!
//! bitsandbytes NF4 checkpoints ([`write_bnb_checkpoint`]) are not an integer grid: every linear of
//! every block is quantized here as bnb's `quantize_4bit` does on load (`quantkit_io::layout::bnb`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantkit_core::{AtomicDir, Error, Result};
use quantkit_io::layout::bnb::{self, BnbConfig, Nf4Weights, StateDtype};
use quantkit_io::layout::ct_nvfp4::{self, Nvfp4Weights};
use quantkit_io::layout::{f16_bytes, IntWeights, LayoutConfig, Packed};
use quantkit_io::names::{self, Proj};
use quantkit_io::safetensors::{write_safetensors, StTensorSpec};
use quantkit_io::source::ModelSource;
use safetensors::Dtype;
use serde_json::{json, Value as Json};

use crate::fp8::Fp8Matrix;
use crate::grid::IntMatrix;

/// An integer checkpoint layout: the one enum of `quantkit_io::layout`, under the name the
/// quantizer has always used.
pub use quantkit_io::layout::Layout as IntFormat;

/// How the weights were made (for the configs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantInfo {
    pub method: String,
    pub act_order: bool,
    pub static_groups: bool,
    pub damp: f64,
}

/// The GGUF linear names whose projection kind some requested format cannot pack (a kind is
/// skipped in every layer, and q/k/v and gate/up together, as vLLM fuses them).
pub fn skipped(src: &ModelSource, formats: &[IntFormat], bits: u32) -> Result<Vec<String>> {
    let cfg = src.config();
    let mut skip_kinds = vec![];
    let tensors = src.tensors()?;
    for p in Proj::ALL {
        let t = tensors.iter().find(|t| t.name == format!("blk.0.{}.weight", p.gguf()));
        let Some(t) = t else { continue };
        if formats.iter().any(|f| !f.packs(bits, t.rows(), t.row_len())) {
            skip_kinds.push(p);
        }
    }
    let fused: [&[Proj]; 2] = [&[Proj::Q, Proj::K, Proj::V], &[Proj::Gate, Proj::Up]];
    for group in fused {
        if group.iter().any(|p| skip_kinds.contains(p)) {
            for p in group {
                if !skip_kinds.contains(p) {
                    skip_kinds.push(*p);
                }
            }
        }
    }
    Ok((0..cfg.num_layers).flat_map(|l| skip_kinds.iter().map(move |p| p.weight_name(l as usize))).collect())
}

/// `m`'s codes, scales and zeros with its rows reordered (`rows_from[i]` is the source row of row i).
fn reordered(m: &IntMatrix, rows_from: &[usize]) -> (Vec<u8>, Vec<f32>, Vec<u8>) {
    let ng = m.groups();
    let mut codes = Vec::with_capacity(m.codes.len());
    let (mut scales, mut zeros) = (Vec::with_capacity(m.params.len()), Vec::with_capacity(m.params.len()));
    for &r in rows_from {
        codes.extend_from_slice(&m.codes[r * m.cols..(r + 1) * m.cols]);
        for p in &m.params[r * ng..(r + 1) * ng] {
            scales.push(p.scale);
            zeros.push(p.zero);
        }
    }
    (codes, scales, zeros)
}

/// A source tensor's HF name and, for q/k of a model whose rows llama.cpp permuted, its head count
/// (the rows go back to HF order with `names::unpermute_qk`).
fn hf_name_and_heads(
    src: &ModelSource,
    t: &quantkit_io::source::SourceTensor,
) -> Result<(String, Option<u64>)> {
    let cfg = src.config();
    let hf = names::gguf_to_hf(&t.name)
        .ok_or_else(|| Error::Unsupported(format!("tensor '{}' has no Hugging Face name", t.name)))?;
    let heads =
        if cfg.arch.permutes_qk() { names::qk_heads(&t.name, cfg.n_heads, cfg.n_kv_heads) } else { None };
    Ok((hf, heads))
}

/// A checkpoint folder in `dest`: `model.safetensors` (`outs`), `config.json`, the tokenizer and any
/// `extra` JSON files, written beside and renamed into place.
fn write_checkpoint_dir(
    dest: &Path,
    src: &ModelSource,
    outs: &[Packed],
    config: &Json,
    extra: &[(&str, &Json)],
) -> Result<()> {
    // A rotated model says so (the engine applies an online R4 from it; the rest is informative),
    // and a compressed-tensors checkpoint that needs R4 carries it as compressed-tensors' own
    // transform config plus the matrix, which vLLM applies.
    let mut config = config.clone();
    let mut r4_tensor = None;
    if let Some(r) = src.recorded_rotation()? {
        config["quantkit_rotation"] = serde_json::to_value(r).map_err(|e| Error::Invalid(e.to_string()))?;
        let ct = config["quantization_config"]["quant_method"] == "compressed-tensors";
        if let (true, Some(r4)) = (ct, r.r4(src.config().intermediate_size as usize)?) {
            let (scheme, tensor) = ct_r4_transform(&r4);
            config["quantization_config"]["transform_config"] = json!({ "config_groups": { "R4": scheme } });
            r4_tensor = Some(tensor);
        }
    }
    let all: Vec<&Packed> = outs.iter().chain(&r4_tensor).collect();
    write_dir(dest, |tmp| {
        let specs: Vec<StTensorSpec> = all.iter().map(|o| o.spec.clone()).collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&tmp.join("model.safetensors"), &specs, &meta, |i, sink| sink(&all[i].bytes))?;
        write_json(&tmp.join("config.json"), &config)?;
        for (name, j) in extra {
            write_json(&tmp.join(name), j)?;
        }
        copy_tokenizer(src, tmp)
    })
}

/// QuaRot's online R4 as compressed-tensors expresses it (compressed-tensors 0.20
/// `TransformScheme`): a `random-hadamard` transform applied online to every `down_proj`'s input
/// (`x·H/√n`) with its inverse fused into the weight (`W·H/√n`, already done: our `ffn_down` holds
/// `W·R4`), and the ±1 matrix `H = √n·R4` stored once under layer 0, as compressed-tensors saves a
/// shared transform (`<module>.R4_input.weight`). vLLM reads the stored matrix; transformers 5.25
/// does not apply transform configs at all (docs/rotations.md).
fn ct_r4_transform(r4: &quantkit_rotate::Hadamard) -> (Json, Packed) {
    use quantkit_rotate::Rotation;
    let n = r4.n();
    let scale = (n as f32).sqrt();
    let h: Vec<f32> = r4.to_dense().iter().map(|v| (v * scale).round()).collect();
    let scheme = json!({
        "type": "random-hadamard",
        "apply": [
            {"targets": ["re:.*mlp.down_proj$"], "location": "input", "inverse": false, "ignore": []},
            {"targets": ["re:.*mlp.down_proj$"], "location": "weight_input", "inverse": true, "ignore": []}
        ],
        "randomize": false,
        "requires_grad": false,
        "head_dim": null,
        "precision": "torch.float32"
    });
    let tensor = Packed::new(
        "model.layers.0.mlp.down_proj.R4_input.weight".into(),
        safetensors::Dtype::F32,
        vec![n, n],
        h.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    (scheme, tensor)
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteReport {
    pub format: IntFormat,
    pub dir: PathBuf,
    pub bytes: u64,
    /// The group size stored in the file (differs from the quantization's when widths forced a
    /// smaller one, see the module docs).
    pub file_group_size: Option<usize>,
    pub skipped_modules: Vec<String>,
}

/// Write `quantized` (GGUF names → integer matrices, GGUF row order) and every other tensor of
/// `src` (with `floats` overriding source values, GGUF names) as an `fmt` checkpoint in `dest`.
pub fn write_int_checkpoint(
    fmt: IntFormat,
    src: &ModelSource,
    quantized: &BTreeMap<String, IntMatrix>,
    floats: &BTreeMap<String, Vec<f32>>,
    info: &QuantInfo,
    dest: &Path,
) -> Result<WriteReport> {
    if fmt.is_float() || fmt.is_nvfp4() {
        return Err(Error::Unsupported(format!("{} holds float weights, not integer ones", fmt.title())));
    }
    write_checkpoint(fmt, src, quantized, floats, info, dest)
}

/// Write `quantized` (GGUF names → FP8 matrices, GGUF row order) and every other tensor of `src` as
/// an FP8 compressed-tensors checkpoint (`fmt` one of the [`IntFormat::is_float`] layouts).
pub fn write_fp8_checkpoint(
    fmt: IntFormat,
    src: &ModelSource,
    quantized: &BTreeMap<String, Fp8Matrix>,
    info: &QuantInfo,
    dest: &Path,
) -> Result<WriteReport> {
    if !fmt.is_float() {
        return Err(Error::Unsupported(format!("{} does not hold FP8 weights", fmt.title())));
    }
    let carriers = quantized.iter().map(|(k, m)| (k.clone(), m.carrier())).collect();
    write_checkpoint(fmt, src, &carriers, &BTreeMap::new(), info, dest)
}

fn write_checkpoint(
    fmt: IntFormat,
    src: &ModelSource,
    quantized: &BTreeMap<String, IntMatrix>,
    floats: &BTreeMap<String, Vec<f32>>,
    info: &QuantInfo,
    dest: &Path,
) -> Result<WriteReport> {
    let cfg = src.config();
    let grid = quantized
        .values()
        .next()
        .map(|m| m.grid)
        .ok_or_else(|| Error::Invalid("nothing was quantized".into()))?;
    fmt.check_grid(grid.bits, grid.group, grid.sym)?;
    let non_monotone = quantized.values().any(|m| m.g_idx.windows(2).any(|p| p[0] > p[1]));
    if non_monotone && !fmt.stores_g_idx() {
        return Err(Error::Unsupported(format!(
            "{}: act-order groups need g_idx, which this layout does not have (add --static-groups)",
            fmt.dir_name()
        )));
    }
    // One group size per file for AWQ / compressed-tensors.
    let file_group = fmt.file_group(grid.group, quantized.values().map(|m| m.cols));
    let tensors = src.tensors()?;
    let mut outs: Vec<Packed> = vec![];
    let mut skipped_modules = vec![];
    for t in &tensors {
        let (hf, heads) = hf_name_and_heads(src, t)?;
        let (rows, cols) = (t.rows(), t.row_len());
        if let Some(m) = quantized.get(&t.name) {
            let order: Vec<usize> = match heads {
                Some(h) => {
                    let idx: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                    names::unpermute_qk(&idx, rows, h as usize).iter().map(|&v| v as usize).collect()
                }
                None => (0..rows).collect(),
            };
            let (codes, scales, zeros) = reordered(m, &order);
            let w = IntWeights {
                rows: m.rows,
                cols: m.cols,
                group: m.grid.group_size(m.cols),
                codes: &codes,
                scales: &scales,
                zeros: &zeros,
                g_idx: &m.g_idx,
            };
            let layout = LayoutConfig { layout: fmt, bits: m.grid.bits, group: file_group, sym: m.grid.sym };
            outs.extend(layout.pack(&w, hf.trim_end_matches(".weight"))?);
            continue;
        }
        let mut data = match floats.get(&t.name) {
            Some(v) => v.clone(),
            None => src.read(t)?,
        };
        if let Some(h) = heads {
            data = names::unpermute_qk(&data, rows, h as usize);
        }
        if t.name.starts_with("blk.") && t.dims.len() == 2 {
            skipped_modules.push(hf.trim_end_matches(".weight").to_string());
        }
        let shape = if t.dims.len() == 2 { vec![rows, cols] } else { vec![cols] };
        outs.push(Packed::new(hf, Dtype::F16, shape, f16_bytes(data.into_iter())));
    }
    outs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));

    let group_json = |g: Option<usize>| g.map(|g| json!(g)).unwrap_or(json!(-1));
    let rel = |m: &str| {
        m.split_once(".layers.")
            .and_then(|(_, r)| r.split_once('.'))
            .map(|(_, r)| r.to_string())
            .unwrap_or_default()
    };
    let mut kinds: Vec<String> = skipped_modules.iter().map(|m| rel(m)).collect();
    kinds.sort();
    kinds.dedup();
    let qc: Json = match fmt {
        IntFormat::GptqV1 | IntFormat::GptqV2 => {
            let mut q = json!({
                "quant_method": "gptq",
                "bits": grid.bits,
                "group_size": group_json(grid.group),
                "desc_act": info.act_order,
                "static_groups": info.static_groups,
                "sym": grid.sym,
                "true_sequential": true,
                "damp_percent": info.damp,
                "checkpoint_format": if fmt == IntFormat::GptqV1 { "gptq" } else { "gptq_v2" },
                "quantizer": format!("quantkit {}", env!("CARGO_PKG_VERSION")),
            });
            if !kinds.is_empty() {
                let dynamic: serde_json::Map<String, Json> =
                    kinds.iter().map(|k| (format!("-:.*{}$", regex_escape(k)), json!({}))).collect();
                q["dynamic"] = Json::Object(dynamic);
            }
            q
        }
        IntFormat::Awq => json!({
            "quant_method": "awq",
            "bits": 4,
            "group_size": group_json(file_group),
            "zero_point": true,
            "version": "gemm",
            "modules_to_not_convert": if kinds.is_empty() { Json::Null } else { json!(kinds) },
        }),
        IntFormat::CompressedTensors
        | IntFormat::CtW8A8
        | IntFormat::CtW4A4
        | IntFormat::CtFp8
        | IntFormat::CtFp8Dynamic
        | IntFormat::CtNvfp4 => {
            let ty = if fmt.is_float() { "float" } else { "int" };
            let mut weights = json!({
                "dynamic": false,
                "num_bits": grid.bits,
                "strategy": if file_group.is_some() { "group" } else { "channel" },
                "symmetric": grid.sym,
                "type": ty,
            });
            if let Some(g) = file_group {
                weights["group_size"] = json!(g);
            }
            if info.act_order {
                weights["actorder"] = json!("weight");
            }
            // llm-compressor's W8A8 / FP8_DYNAMIC: dynamic per-token symmetric 8-bit activations
            // (compressed-tensors' INT8_W8A8 and FP8_DYNAMIC presets).
            let acts = match fmt {
                IntFormat::CtW8A8 | IntFormat::CtW4A4 | IntFormat::CtFp8Dynamic => json!({
                    "dynamic": true,
                    "num_bits": if fmt == IntFormat::CtW4A4 { 4 } else { 8 },
                    "strategy": "token",
                    "symmetric": true,
                    "type": ty,
                }),
                _ => Json::Null,
            };
            // The format compressed-tensors infers for the scheme (`infer_module_format`): int
            // weights with int activations int-quantized, weight-only int pack-quantized, float
            // weights with activations float-quantized, weight-only float naive-quantized.
            let format = match fmt {
                IntFormat::CtW8A8 | IntFormat::CtW4A4 => "int-quantized",
                IntFormat::CtFp8 => "naive-quantized",
                IntFormat::CtFp8Dynamic => "float-quantized",
                _ => "pack-quantized",
            };
            ct_quantization_config(format, weights, acts, &skipped_modules)
        }
    };
    let mut config = cfg.to_hf_json("float16");
    config["quantization_config"] = qc.clone();
    config["quantkit"] = json!({
        "method": info.method,
        "quantized_group_size": group_json(grid.group),
        "file_group_size": group_json(file_group),
        "ragged_last_group": grid.group.map(|g| quantized.values().any(|m| m.cols % g != 0)).unwrap_or(false),
        "skipped_modules": skipped_modules,
    });

    let bytes: u64 = outs.iter().map(|o| o.bytes.len() as u64).sum();
    let extra: Vec<(&str, &Json)> = if matches!(fmt, IntFormat::GptqV1 | IntFormat::GptqV2) {
        vec![("quantize_config.json", &qc)]
    } else {
        vec![]
    };
    write_checkpoint_dir(dest, src, &outs, &config, &extra)?;
    Ok(WriteReport {
        format: fmt,
        dir: dest.to_path_buf(),
        bytes,
        file_group_size: file_group,
        skipped_modules: kinds,
    })
}

/// The fused group a projection's global scale is shared with (llm-compressor's
/// `update_fused_layer_weight_global_scales`: vLLM runs q/k/v and gate/up as one matrix with one
/// global scale), keyed by layer: `(layer, 0)` q/k/v, `(layer, 1)` gate/up, `(layer, 2 + index)`
/// a projection alone.
fn fused_key(name: &str) -> Option<(u64, usize)> {
    let p = Proj::of_weight(name)?;
    let layer = names::layer_of(name)?;
    Some(match p {
        Proj::Q | Proj::K | Proj::V => (layer, 0),
        Proj::Gate | Proj::Up => (layer, 1),
        p => (layer, 2 + p.index()),
    })
}

/// Write `src` as a compressed-tensors NVFP4 checkpoint (`nvfp4-pack-quantized`, the `NVFP4A16`
/// scheme) in `dest`: every projection whose width is whole groups of 16 — and not in `skip` (GGUF
/// names) — is quantized round to nearest as llm-compressor does (`ct_nvfp4`: global scale from the
/// fused group's largest magnitude, E4M3 scales per 16 columns, E2M1 codes); everything else stays
/// float16 and is listed in `ignore`.
pub fn write_nvfp4_checkpoint(
    src: &ModelSource,
    skip: &[String],
    info: &QuantInfo,
    dest: &Path,
) -> Result<WriteReport> {
    let fmt = IntFormat::CtNvfp4;
    let cfg = src.config();
    let tensors = src.tensors()?;
    let quantized = |t: &quantkit_io::source::SourceTensor| {
        Proj::of_weight(&t.name).is_some() && !skip.contains(&t.name) && fmt.packs(4, t.rows(), t.row_len())
    };
    // Pass 1: the largest magnitude of each fused group (one tensor in memory at a time).
    let mut amax: BTreeMap<(u64, usize), f32> = BTreeMap::new();
    for t in tensors.iter().filter(|t| quantized(t)) {
        let w = src.read(t)?;
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::bad_tensor(&t.name, format!("value {} at index {i} is not finite", w[i])));
        }
        let m = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let key = fused_key(&t.name).expect("a projection");
        let e = amax.entry(key).or_insert(0.0);
        *e = e.max(m);
    }
    // Pass 2: quantize and pack, in HF row order (rows are independent, so unpermuting first
    // changes nothing but the order).
    let mut outs: Vec<Packed> = vec![];
    let mut skipped_modules = vec![];
    let mut modules = 0usize;
    for t in &tensors {
        let (hf, heads) = hf_name_and_heads(src, t)?;
        let (rows, cols) = (t.rows(), t.row_len());
        let mut data = src.read(t)?;
        if let Some(h) = heads {
            data = names::unpermute_qk(&data, rows, h as usize);
        }
        if quantized(t) {
            let key = fused_key(&t.name).expect("a projection");
            let global = ct_nvfp4::global_scale(amax[&key]);
            let q = Nvfp4Weights::quantize(&data, rows, cols, global);
            outs.extend(q.pack(hf.trim_end_matches(".weight")));
            modules += 1;
            continue;
        }
        if t.name.starts_with("blk.") && t.dims.len() == 2 {
            skipped_modules.push(hf.trim_end_matches(".weight").to_string());
        }
        let shape = if t.dims.len() == 2 { vec![rows, cols] } else { vec![cols] };
        outs.push(Packed::new(hf, Dtype::F16, shape, f16_bytes(data.into_iter())));
    }
    if modules == 0 {
        return Err(Error::Invalid(
            "nothing was quantized (NVFP4 needs widths that are whole groups of 16)".into(),
        ));
    }
    outs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let qc = ct_quantization_config(
        "nvfp4-pack-quantized",
        ct_nvfp4::weights_args(),
        Json::Null,
        &skipped_modules,
    );
    let mut config = cfg.to_hf_json("float16");
    config["quantization_config"] = qc;
    config["quantkit"] = json!({
        "method": info.method,
        "format": fmt.name(),
        "fused_global_scales": ["q_proj/k_proj/v_proj", "gate_proj/up_proj"],
        "skipped_modules": skipped_modules,
    });
    let bytes: u64 = outs.iter().map(|o| o.bytes.len() as u64).sum();
    write_checkpoint_dir(dest, src, &outs, &config, &[])?;
    let rel = |m: &str| {
        m.split_once(".layers.")
            .and_then(|(_, r)| r.split_once('.'))
            .map(|(_, r)| r.to_string())
            .unwrap_or_default()
    };
    let mut kinds: Vec<String> = skipped_modules.iter().map(|m| rel(m)).collect();
    kinds.sort();
    kinds.dedup();
    Ok(WriteReport {
        format: fmt,
        dir: dest.to_path_buf(),
        bytes,
        file_group_size: Some(ct_nvfp4::GROUP),
        skipped_modules: kinds,
    })
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}

fn write_json(path: &Path, v: &Json) -> Result<()> {
    quantkit_io::export::write_file(path, &quantkit_io::export::pretty(v)?)
}

/// Tokenizer files: copied from an HF folder, rebuilt from a GGUF's vocabulary.
pub fn copy_tokenizer(src: &ModelSource, dir: &Path) -> Result<()> {
    match src {
        ModelSource::Hf(hf) => {
            for n in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
            ] {
                let p = hf.dir.join(n);
                if p.is_file() {
                    std::fs::copy(&p, dir.join(n)).map_err(|e| Error::io(&p, e))?;
                }
            }
            Ok(())
        }
        ModelSource::Gguf { file, .. } => {
            let meta = |k: &str| file.get(k).cloned();
            let t = quantkit_io::vocab::gguf_to_hf(&meta, &src.path())?;
            write_json(&dir.join("tokenizer.json"), &t.tokenizer_json)?;
            write_json(&dir.join("tokenizer_config.json"), &t.tokenizer_config)
        }
        ModelSource::Rotated(r) => copy_tokenizer(&r.inner, dir),
    }
}

/// Build a folder beside `dest` (its parent is created) and rename it into place, replacing an
/// older one: a failure leaves nothing behind.
pub fn write_dir(dest: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let staged = AtomicDir::create(dest)?;
    build(staged.path())?;
    staged.commit()
}

/// A bitsandbytes 4-bit output: NF4, with or without double quantization of the absmax values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BnbFormat {
    pub double_quant: bool,
}

impl BnbFormat {
    pub const ALL: [BnbFormat; 2] = [BnbFormat { double_quant: false }, BnbFormat { double_quant: true }];

    /// The name on the command line (`--format`) and of the output folder.
    pub fn name(self) -> &'static str {
        if self.double_quant {
            "bnb-nf4-dq"
        } else {
            "bnb-nf4"
        }
    }

    pub fn parse(s: &str) -> Option<BnbFormat> {
        BnbFormat::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// What a bitsandbytes checkpoint holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BnbReport {
    pub format: &'static str,
    pub dir: PathBuf,
    pub bytes: u64,
    pub quantized_modules: usize,
    /// Bits per weight of the quantized linears: 4 + the absmax (+ nested state) overhead.
    pub linear_bits_per_weight: f64,
}

/// Write `src` as a bitsandbytes 4-bit NF4 checkpoint in `dest`: what transformers'
/// `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True,
/// bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=…), dtype=torch.float16)` followed by
/// `save_pretrained` writes. Every linear of every block is quantized (bnb blocks the flattened
/// weight, so any shape packs) from its float16 value, blocks of 64; the embeddings, norms and an
/// untied `lm_head` stay float16 (`llm_int8_skip_modules: ["lm_head"]`).
///
/// `calibrated`: the method's name and its NF4 matrices per GGUF tensor name (GPTQ-into-NF4, in
/// bnb's row order); every projection must then be there. `None`: round to nearest, as bnb.
pub fn write_bnb_checkpoint(
    src: &ModelSource,
    fmt: BnbFormat,
    dest: &Path,
    calibrated: Option<(&str, &BTreeMap<String, Nf4Weights>)>,
) -> Result<BnbReport> {
    let cfg = src.config();
    let tensors = src.tensors()?;
    let mut outs: Vec<Packed> = vec![];
    let (mut modules, mut linear_bytes, mut linear_params) = (0usize, 0u64, 0u64);
    for t in &tensors {
        let (hf, heads) = hf_name_and_heads(src, t)?;
        let (rows, cols) = (t.rows(), t.row_len());
        let mut data = src.read(t)?;
        if let Some(h) = heads {
            data = names::unpermute_qk(&data, rows, h as usize);
        }
        if Proj::of_weight(&t.name).is_some() {
            // bnb quantizes the float16 weight transformers loaded.
            let w: Vec<f32> = data.iter().map(|&v| StateDtype::F16.round(v)).collect();
            if let Some(i) = w.iter().position(|v| !v.is_finite()) {
                return Err(Error::bad_tensor(
                    &t.name,
                    format!("value {} at index {i} is not finite as float16 (bitsandbytes quantizes the float16 weight)", data[i]),
                ));
            }
            let rtn;
            let q = match calibrated {
                None => {
                    rtn = Nf4Weights::quantize(&w, rows, cols, bnb::BLOCK, fmt.double_quant, StateDtype::F16);
                    &rtn
                }
                Some((_, m)) => {
                    let q = m.get(&t.name).ok_or_else(|| {
                        Error::bad_tensor(&t.name, "the calibration pass did not quantize this projection")
                    })?;
                    if (q.rows, q.cols, q.nested.is_some()) != (rows, cols, fmt.double_quant) {
                        return Err(Error::bad_tensor(
                            &t.name,
                            format!(
                                "calibrated NF4 matrix is {}×{}, the tensor {rows}×{cols}",
                                q.rows, q.cols
                            ),
                        ));
                    }
                    q
                }
            };
            let packed = q.pack(hf.trim_end_matches(".weight"));
            linear_bytes += packed.iter().map(|p| p.bytes.len() as u64).sum::<u64>();
            linear_params += (rows * cols) as u64;
            modules += 1;
            outs.extend(packed);
            continue;
        }
        let shape = if t.dims.len() == 2 { vec![rows, cols] } else { vec![cols] };
        outs.push(Packed::new(hf, Dtype::F16, shape, f16_bytes(data.into_iter())));
    }
    if modules == 0 {
        return Err(Error::Invalid("nothing was quantized".into()));
    }
    outs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    let mut config = cfg.to_hf_json("float16");
    config["quantization_config"] = BnbConfig { double_quant: fmt.double_quant }.to_json();
    config["quantkit"] = json!({
        "method": calibrated.map_or("rtn", |(m, _)| m),
        "format": fmt.name(),
        "quant_state_dtype": "float16",
        "blocksize": bnb::BLOCK,
        "nested_blocksize": if fmt.double_quant { json!(bnb::NESTED_BLOCK) } else { Json::Null },
    });
    let bytes: u64 = outs.iter().map(|o| o.bytes.len() as u64).sum();
    write_checkpoint_dir(dest, src, &outs, &config, &[])?;
    Ok(BnbReport {
        format: fmt.name(),
        dir: dest.to_path_buf(),
        bytes,
        quantized_modules: modules,
        linear_bits_per_weight: linear_bytes as f64 * 8.0 / linear_params.max(1) as f64,
    })
}

/// compressed-tensors' `quantization_config` with one config group on every `Linear` (`weights`,
/// `acts` its `QuantizationArgs`), as compressed-tensors 0.20 writes it; `lm_head` and `skipped`
/// modules ignored.
fn ct_quantization_config(format: &str, weights: Json, acts: Json, skipped: &[String]) -> Json {
    let mut ignore = vec!["lm_head".to_string()];
    ignore.extend(skipped.iter().cloned());
    json!({
        "config_groups": {"group_0": {
            "format": format,
            "input_activations": acts,
            "output_activations": null,
            "targets": ["Linear"],
            "weights": weights,
        }},
        "format": format,
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "version": "0.20.0",
    })
}
