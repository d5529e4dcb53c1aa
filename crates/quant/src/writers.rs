//! Integer checkpoints as the loaders expect them (layouts in docs/quantized-layouts.md):
//!
//! * GPTQ v1 (AutoGPTQ): `qweight` int32 `[in·bits/32, out]` (a little-endian bit stream along the
//!   input per output column), `qzeros` int32 `[groups, out·bits/32]` storing `zero − 1`, fp16
//!   `scales [groups, out]`, `g_idx [in]`, `quantize_config.json`; GPTQ v2 (GPTQModel) stores the
//!   zero itself. Ragged last groups are native (`groups = ceil(in/G)`).
//! * AWQ GEMM (AutoAWQ): `qweight [in, out/8]` packed along the output in the order
//!   `[0,2,4,6,1,3,5,7]`, `qzeros [groups, out/8]`, fp16 `scales [groups, out]`.
//! * compressed-tensors `pack-quantized`: `weight_packed [out, ceil(in·bits/32)]` (bit stream along
//!   the input, value = signed + 2^(bits−1)), `weight_scale [out, groups]` (stored f32 so the
//!   package's dequantization, done in the scale dtype, is exact), `weight_shape`, and for
//!   asymmetric grids `weight_zero_point [ceil(out·bits/32), groups]` packed along the output.
//!
//! AWQ and compressed-tensors have one group size per file and no ragged groups: when a layer's
//! width is not a multiple of the group size, the file stores `gcd(G, widths)`-sized groups, each
//! original group's `(scale, zero)` repeated — the weights are identical, and the metadata says so.
//! Modules a format cannot pack stay in fp16 and are listed the way each loader skips modules.
//! Every file is written into a temporary folder renamed into place.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use quantkit_core::{AtomicDir, Error, Result};
use quantkit_engine::Proj;
use quantkit_io::names;
use quantkit_io::safetensors::{write_safetensors, StTensorSpec};
use quantkit_io::source::ModelSource;
use safetensors::Dtype;
use serde_json::{json, Value as Json};

use crate::grid::{IntGrid, IntMatrix};

/// An integer checkpoint layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum IntFormat {
    GptqV1,
    GptqV2,
    Awq,
    CompressedTensors,
}

impl IntFormat {
    pub fn dir_name(self) -> &'static str {
        match self {
            IntFormat::GptqV1 => "gptq",
            IntFormat::GptqV2 => "gptq-v2",
            IntFormat::Awq => "awq",
            IntFormat::CompressedTensors => "compressed-tensors",
        }
    }

    /// Whether this layout can hold `rows × cols` (`out × in`) at `bits`.
    pub fn packs(self, bits: u32, rows: usize, cols: usize) -> bool {
        match self {
            // The loaders size buffers with floor divisions by 32.
            IntFormat::GptqV1 | IntFormat::GptqV2 => cols % 32 == 0 && rows % 32 == 0,
            IntFormat::Awq => bits == 4 && rows % 8 == 0,
            IntFormat::CompressedTensors => true,
        }
    }

    /// The layout's name for the CLI (`--format`) and the folder it is written to.
    pub fn parse(s: &str) -> Option<Self> {
        [IntFormat::GptqV1, IntFormat::GptqV2, IntFormat::Awq, IntFormat::CompressedTensors]
            .into_iter()
            .find(|f| f.dir_name() == s)
    }

    /// The bit widths it stores: AWQ GEMM checkpoints hold 4-bit weights only.
    pub fn packs_bits(self, bits: u32) -> bool {
        self != IntFormat::Awq || bits == 4
    }

    /// Whether it stores `g_idx` (a column permutation for act-order).
    pub fn stores_g_idx(self) -> bool {
        matches!(self, IntFormat::GptqV1 | IntFormat::GptqV2)
    }

    /// The smallest zero point it can store: GPTQ v1 stores `zero − 1`.
    pub fn zero_min(self) -> u8 {
        (self == IntFormat::GptqV1) as u8
    }
}

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
    Ok((0..cfg.num_layers)
        .flat_map(|l| skip_kinds.iter().map(move |p| format!("blk.{l}.{}.weight", p.gguf())))
        .collect())
}

/// Bits `bits` wide values into little-endian u32 words at bit `i·bits` (straddling words).
fn bitstream(vals: impl Iterator<Item = u32>, n: usize, bits: u32) -> Vec<u32> {
    let mut out = vec![0u32; (n * bits as usize).div_ceil(32)];
    for (i, v) in vals.enumerate() {
        let bit = i * bits as usize;
        let (w, s) = (bit / 32, bit % 32);
        out[w] |= v << s;
        if s + bits as usize > 32 {
            out[w + 1] |= v >> (32 - s);
        }
    }
    out
}

fn i32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
fn f16_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| f16::from_f32(x).to_le_bytes()).collect()
}
fn f32_bytes(v: impl Iterator<Item = f32>) -> Vec<u8> {
    v.flat_map(|x| x.to_le_bytes()).collect()
}

/// `m` with its rows reordered (`rows_from[i]` is the source row of row i).
fn reorder_rows(m: &IntMatrix, rows_from: &[usize]) -> IntMatrix {
    let ng = m.groups();
    let mut codes = Vec::with_capacity(m.codes.len());
    let mut params = Vec::with_capacity(m.params.len());
    for &r in rows_from {
        codes.extend_from_slice(&m.codes[r * m.cols..(r + 1) * m.cols]);
        params.extend_from_slice(&m.params[r * ng..(r + 1) * ng]);
    }
    IntMatrix { codes, params, ..m.clone() }
}

/// `m` re-expressed with groups of `g` (a divisor of its group size): same weights.
fn regroup(m: &IntMatrix, g: usize) -> IntMatrix {
    let gs = m.grid.group_size(m.cols);
    let ng_old = m.groups();
    let ng = m.cols.div_ceil(g);
    let mut params = Vec::with_capacity(m.rows * ng);
    for r in 0..m.rows {
        for k in 0..ng {
            params.push(m.params[r * ng_old + (k * g) / gs]);
        }
    }
    IntMatrix {
        grid: IntGrid { group: Some(g), ..m.grid },
        params,
        g_idx: (0..m.cols).map(|c| (c / g) as u32).collect(),
        ..m.clone()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One tensor of the output.
struct Out {
    spec: StTensorSpec,
    bytes: Vec<u8>,
}

fn out(name: String, dtype: Dtype, shape: Vec<usize>, bytes: Vec<u8>) -> Out {
    Out { spec: StTensorSpec { name, dtype, shape }, bytes }
}

/// `<prefix>.scales`: fp16 `[groups, out]` (GPTQ and AWQ store scales group-major).
fn scales_by_group(m: &IntMatrix, prefix: &str) -> Out {
    let (rows, ng) = (m.rows, m.groups());
    let v = (0..ng).flat_map(|g| (0..rows).map(move |o| m.params[o * ng + g].scale));
    out(format!("{prefix}.scales"), Dtype::F16, vec![ng, rows], f16_bytes(v))
}

/// Pack one matrix (HF row order) in `fmt`, under the HF module prefix `m`.
fn pack(fmt: IntFormat, m: &IntMatrix, prefix: &str, file_group: Option<usize>) -> Vec<Out> {
    let (rows, cols, bits) = (m.rows, m.cols, m.grid.bits);
    let ng = m.groups();
    match fmt {
        IntFormat::GptqV1 | IntFormat::GptqV2 => {
            let nw = cols * bits as usize / 32;
            let mut qweight = vec![0u32; nw * rows];
            for o in 0..rows {
                let col = bitstream((0..cols).map(|i| m.codes[o * cols + i] as u32), cols, bits);
                for (w, v) in col.iter().enumerate() {
                    qweight[w * rows + o] = *v;
                }
            }
            let mask = m.grid.maxq();
            let zero =
                |z: u8| if fmt == IntFormat::GptqV1 { (z as u32).wrapping_sub(1) & mask } else { z as u32 };
            let mut qzeros = vec![];
            for g in 0..ng {
                qzeros.extend(bitstream((0..rows).map(|o| zero(m.params[o * ng + g].zero)), rows, bits));
            }
            vec![
                out(format!("{prefix}.qweight"), Dtype::I32, vec![nw, rows], i32_bytes(&qweight)),
                out(
                    format!("{prefix}.qzeros"),
                    Dtype::I32,
                    vec![ng, rows * bits as usize / 32],
                    i32_bytes(&qzeros),
                ),
                scales_by_group(m, prefix),
                out(format!("{prefix}.g_idx"), Dtype::I32, vec![cols], i32_bytes(&m.g_idx)),
            ]
        }
        IntFormat::Awq => {
            let m = regroup(m, file_group.unwrap_or(cols));
            let ng = m.groups();
            const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];
            let pack8 = |get: &dyn Fn(usize) -> u32| -> Vec<u32> {
                (0..rows / 8)
                    .map(|c| (0..8).fold(0u32, |w, j| w | (get(8 * c + ORDER[j]) << (4 * j))))
                    .collect()
            };
            let mut qweight = vec![];
            for i in 0..cols {
                qweight.extend(pack8(&|o| m.codes[o * cols + i] as u32));
            }
            let mut qzeros = vec![];
            for g in 0..ng {
                qzeros.extend(pack8(&|o| m.params[o * ng + g].zero as u32));
            }
            vec![
                out(format!("{prefix}.qweight"), Dtype::I32, vec![cols, rows / 8], i32_bytes(&qweight)),
                out(format!("{prefix}.qzeros"), Dtype::I32, vec![ng, rows / 8], i32_bytes(&qzeros)),
                scales_by_group(&m, prefix),
            ]
        }
        IntFormat::CompressedTensors => {
            let m = regroup(m, file_group.unwrap_or(cols));
            let ng = m.groups();
            let nw = (cols * bits as usize).div_ceil(32);
            let mut packed = vec![];
            for o in 0..rows {
                packed.extend(bitstream((0..cols).map(|i| m.codes[o * cols + i] as u32), cols, bits));
            }
            let mut v = vec![
                out(format!("{prefix}.weight_packed"), Dtype::I32, vec![rows, nw], i32_bytes(&packed)),
                out(
                    format!("{prefix}.weight_scale"),
                    Dtype::F32,
                    vec![rows, ng],
                    f32_bytes(m.params.iter().map(|p| p.scale)),
                ),
                out(
                    format!("{prefix}.weight_shape"),
                    Dtype::I64,
                    vec![2],
                    [rows as i64, cols as i64].iter().flat_map(|x| x.to_le_bytes()).collect(),
                ),
            ];
            if !m.grid.sym {
                // [ceil(out·bits/32), groups]: per group a bit stream along the output.
                let nz = (rows * bits as usize).div_ceil(32);
                let mut zp = vec![0u32; nz * ng];
                for g in 0..ng {
                    let col = bitstream((0..rows).map(|o| m.params[o * ng + g].zero as u32), rows, bits);
                    for (w, x) in col.iter().enumerate() {
                        zp[w * ng + g] = *x;
                    }
                }
                v.push(out(format!("{prefix}.weight_zero_point"), Dtype::I32, vec![nz, ng], i32_bytes(&zp)));
            }
            v
        }
    }
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
    let cfg = src.config();
    let grid = quantized
        .values()
        .next()
        .map(|m| m.grid)
        .ok_or_else(|| Error::Invalid("nothing was quantized".into()))?;
    if fmt == IntFormat::Awq && grid.bits != 4 {
        return Err(Error::Unsupported(format!(
            "AWQ GEMM checkpoints hold 4-bit weights, not {}",
            grid.bits
        )));
    }
    let non_monotone = quantized.values().any(|m| m.g_idx.windows(2).any(|p| p[0] > p[1]));
    if non_monotone && matches!(fmt, IntFormat::Awq | IntFormat::CompressedTensors) {
        return Err(Error::Unsupported(format!(
            "{}: act-order groups need g_idx, which this layout does not have (add --static-groups)",
            fmt.dir_name()
        )));
    }
    // One group size per file for AWQ / compressed-tensors.
    let file_group = grid.group.map(|g| quantized.values().fold(g, |acc, m| gcd(acc, m.cols)));
    let tensors = src.tensors()?;
    let mut outs: Vec<Out> = vec![];
    let mut skipped_modules = vec![];
    for t in &tensors {
        let hf = names::gguf_to_hf(&t.name)
            .ok_or_else(|| Error::Unsupported(format!("tensor '{}' has no Hugging Face name", t.name)))?;
        let heads =
            if cfg.arch.permutes_qk() { names::qk_heads(&t.name, cfg.n_heads, cfg.n_kv_heads) } else { None };
        let (rows, cols) = (t.rows(), t.row_len());
        if let Some(m) = quantized.get(&t.name) {
            let order: Vec<usize> = match heads {
                Some(h) => {
                    let idx: Vec<f32> = (0..rows).map(|r| r as f32).collect();
                    names::unpermute_qk(&idx, rows, h as usize).iter().map(|&v| v as usize).collect()
                }
                None => (0..rows).collect(),
            };
            let m = reorder_rows(m, &order);
            let prefix = hf.trim_end_matches(".weight");
            outs.extend(pack(fmt, &m, prefix, file_group));
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
        outs.push(out(hf, Dtype::F16, shape, f16_bytes(data.into_iter())));
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
        IntFormat::CompressedTensors => {
            let mut weights = json!({
                "dynamic": false,
                "num_bits": grid.bits,
                "strategy": if file_group.is_some() { "group" } else { "channel" },
                "symmetric": grid.sym,
                "type": "int",
            });
            if let Some(g) = file_group {
                weights["group_size"] = json!(g);
            }
            if info.act_order {
                weights["actorder"] = json!("weight");
            }
            let mut ignore = vec!["lm_head".to_string()];
            ignore.extend(skipped_modules.iter().cloned());
            json!({
                "config_groups": {"group_0": {
                    "format": "pack-quantized",
                    "input_activations": null,
                    "output_activations": null,
                    "targets": ["Linear"],
                    "weights": weights,
                }},
                "format": "pack-quantized",
                "global_compression_ratio": null,
                "ignore": ignore,
                "kv_cache_scheme": null,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
                "sparsity_config": {},
                "version": "0.20.0",
            })
        }
    };
    let mut config = cfg.to_hf_json("float16");
    config["quantization_config"] = qc.clone();
    config["quantkit"] = json!({
        "method": info.method,
        "quantized_group_size": group_json(grid.group),
        "file_group_size": group_json(if matches!(fmt, IntFormat::GptqV1 | IntFormat::GptqV2) { grid.group } else { file_group }),
        "ragged_last_group": grid.group.map(|g| quantized.values().any(|m| m.cols % g != 0)).unwrap_or(false),
        "skipped_modules": skipped_modules,
    });

    let bytes: u64 = outs.iter().map(|o| o.bytes.len() as u64).sum();
    write_dir(dest, |tmp| {
        let specs: Vec<StTensorSpec> = outs.iter().map(|o| o.spec.clone()).collect();
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_safetensors(&tmp.join("model.safetensors"), &specs, &meta, |i, sink| sink(&outs[i].bytes))?;
        write_json(&tmp.join("config.json"), &config)?;
        if matches!(fmt, IntFormat::GptqV1 | IntFormat::GptqV2) {
            write_json(&tmp.join("quantize_config.json"), &qc)?;
        }
        copy_tokenizer(src, tmp)
    })?;
    Ok(WriteReport {
        format: fmt,
        dir: dest.to_path_buf(),
        bytes,
        file_group_size: if matches!(fmt, IntFormat::GptqV1 | IntFormat::GptqV2) {
            grid.group
        } else {
            file_group
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitstream_matches_autogptq_packing() {
        // 4 bits: value j of 8 at bits 4j.
        let w = bitstream((0..8u32).map(|v| v + 1), 8, 4);
        assert_eq!(w, vec![0x8765_4321]);
        // 3 bits: 32 values in 3 words; value 10 straddles words 0/1 (bits 30..33).
        let vals: Vec<u32> = (0..32).map(|i| (i * 5 % 8) as u32).collect();
        let w = bitstream(vals.iter().copied(), 32, 3);
        assert_eq!(w.len(), 3);
        let mut expect = [0u32; 3];
        // AutoGPTQ's pack loop for bits = 3, transcribed.
        let (mut i, mut row) = (0usize, 0usize);
        for j in i..i + 10 {
            expect[row] |= vals[j] << (3 * (j - i));
        }
        i += 10;
        expect[row] |= vals[i] << 30;
        row += 1;
        expect[row] |= (vals[i] >> 2) & 1;
        i += 1;
        for j in i..i + 10 {
            expect[row] |= vals[j] << (3 * (j - i) + 1);
        }
        i += 10;
        expect[row] |= vals[i] << 31;
        row += 1;
        expect[row] |= (vals[i] >> 1) & 3;
        i += 1;
        for j in i..i + 10 {
            expect[row] |= vals[j] << (3 * (j - i) + 2);
        }
        assert_eq!(w, expect.to_vec());
    }

    #[test]
    fn regrouping_keeps_the_weights() {
        let grid = IntGrid { bits: 4, sym: false, group: Some(128), zero_min: 0 };
        let (rows, cols) = (3, 320);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 31 % 97) as f32 - 48.0) / 50.0).collect();
        let m = IntMatrix::rtn(grid, &w, rows, cols, None);
        let r = regroup(&m, gcd(128, cols));
        assert_eq!(r.groups(), 5);
        assert_eq!(r.dequantize(), m.dequantize());
    }
}
