//! Loading a [`Model`] from a [`ModelSource`]: every tensor by its GGUF name, weights memory-mapped
//! in their stored format (or dequantized to f32), and the RoPE frequencies.

use std::sync::Arc;

use quantkit_core::{Error, GgmlType, Result};
use quantkit_io::config::RopeScaling;
use quantkit_io::layout::{bnb, ct_dense, fp8};
use quantkit_io::names;
use quantkit_io::source::{ModelSource, Origin, SourceTensor};
use quantkit_kernels::nf4::Nf4Mat;
use quantkit_kernels::w8::{Code8, Mat8};
use quantkit_kernels::{QMatrix, WeightBytes};

use super::{Layer, Model, WeightMode};
use crate::calib::Proj;
use crate::linear::{Acts8, QLinear, Weights};

/// A projection whose weights are not loaded: `0 × cols` (see [`Model::load_streaming`]).
pub(crate) fn placeholder(cols: usize) -> QMatrix {
    QMatrix::new(GgmlType::F32, 0, cols, WeightBytes::owned(Vec::new()))
        .expect("an empty f32 matrix is valid")
}

/// A packed module of a quantized HF checkpoint whose weights load natively.
struct NativeModule<'a> {
    h: &'a quantkit_io::hf::HfCheckpoint,
    q: &'a quantkit_io::layout::QuantLayout,
    /// The HF tensor name (`…q_proj.weight`) and its module (`…q_proj`).
    name: &'a str,
    module: &'a str,
    /// Heads of llama.cpp's q/k row permutation, when the engine runs `t` permuted.
    permute_heads: Option<u64>,
}

fn native_module<'a>(
    src: &'a ModelSource,
    mode: WeightMode,
    t: &'a SourceTensor,
) -> Option<NativeModule<'a>> {
    let (WeightMode::Native, ModelSource::Hf(h), Origin::Hf { name, permute_heads, .. }) =
        (mode, src, &t.origin)
    else {
        return None;
    };
    let q = h.quant.as_ref()?;
    let module = name.strip_suffix(".weight").unwrap_or(name);
    Some(NativeModule { h, q, name, module, permute_heads: *permute_heads })
}

/// A compressed-tensors int8 / FP8 module kept in its stored bytes with its activation scheme
/// ([`Weights::W8`]), when `t` is one and the weights are loaded natively.
fn dense8(src: &ModelSource, mode: WeightMode, t: &SourceTensor) -> Result<Option<Weights>> {
    let Some(NativeModule { h, q, name, module, permute_heads }) = native_module(src, mode, t) else {
        return Ok(None);
    };
    let Some(mut d) = q.dense8(h, module)? else { return Ok(None) };
    let bad = |e: Error| Error::bad_tensor(name, e.to_string());
    if let Some(n) = permute_heads {
        // The GGUF row order the engine runs (llama.cpp's q/k permutation): scales follow rows.
        d.codes = names::permute_qk(&d.codes, d.rows, n as usize);
        d.scales = names::permute_qk(&d.scales, d.rows, n as usize);
    }
    let acts = ct_dense::activations(&h.raw_config, &h.dir.join("config.json"))?;
    if matches!(acts, Acts8::Int8Token | Acts8::Int4Token) && (d.float || d.group != d.cols) {
        return Err(bad(Error::Unsupported(
            "integer activations with FP8 or grouped weights (W8A8/W4A4 run per-channel integer weights)"
                .into(),
        )));
    }
    let code = if d.float {
        Code8::Table(Box::new(std::array::from_fn(|b| fp8::to_f32(b as u8))))
    } else {
        Code8::Int8
    };
    let m = Mat8::new(d.rows, d.cols, d.group, d.codes, d.scales, code).map_err(bad)?;
    Ok(Some(Weights::W8(Arc::new(m), acts)))
}

/// A bitsandbytes NF4 module kept as codes and absmax values ([`Weights::Nf4`]), when `t` is one,
/// the weights are loaded natively and its rows are whole 64-blocks (else it runs dequantized).
fn nf4(src: &ModelSource, mode: WeightMode, t: &SourceTensor) -> Result<Option<Weights>> {
    let Some(NativeModule { h, q, name, module, permute_heads }) = native_module(src, mode, t) else {
        return Ok(None);
    };
    let Some(mut s) = q.nf4(h, module)? else { return Ok(None) };
    if s.blocksize == 0 || s.cols % s.blocksize != 0 || s.blocksize % 2 != 0 {
        return Ok(None);
    }
    if let Some(n) = permute_heads {
        s.codes = names::permute_qk(&s.codes, s.rows, n as usize);
        s.absmax = names::permute_qk(&s.absmax, s.rows, n as usize);
    }
    let m = Nf4Mat::new(s.rows, s.cols, s.blocksize, &s.codes, s.absmax, bnb::NF4)
        .map_err(|e| Error::bad_tensor(name, e.to_string()))?;
    Ok(Some(Weights::Nf4(Arc::new(m))))
}

impl Model {
    /// Load a model with its weights in their stored format ([`WeightMode::Native`]).
    pub fn load(src: &ModelSource) -> Result<Self> {
        Self::load_with(src, WeightMode::Native)
    }

    pub fn load_with(src: &ModelSource, mode: WeightMode) -> Result<Self> {
        Self::load_inner(src, mode, false)
    }

    /// For the layer-sequential calibration pass: the embeddings in their stored format (a GGUF's
    /// stay memory-mapped), norms and biases, but no projection weights — each block's are read
    /// from `src` when the pass reaches it ([`Model::load_block`]) and dropped when it is done
    /// ([`Model::unload_block`]), so memory does not grow with the number of layers. There is no
    /// LM head (the pass never runs it): [`Model::vocab_size`] still answers.
    pub fn load_streaming(src: &ModelSource) -> Result<Self> {
        Self::load_inner(src, WeightMode::Native, true)
    }

    fn load_inner(src: &ModelSource, mode: WeightMode, streaming: bool) -> Result<Self> {
        let cfg = src.config().clone();
        if let Some(RopeScaling::Yarn { .. }) = cfg.rope_scaling {
            return Err(Error::Unsupported("YaRN RoPE scaling in the engine".into()));
        }
        let tensors = src.tensors()?;
        let find = |name: &str| -> Result<&SourceTensor> {
            tensors.iter().find(|t| t.name == name).ok_or_else(|| Error::MissingTensor {
                path: src.path(),
                tensor: name.to_string(),
                hint: String::new(),
            })
        };
        // Read a tensor as f32 and drop the source's mapped pages behind it (RSS ≈ the f32 copy).
        let read = |t: &SourceTensor| -> Result<Vec<f32>> {
            let v = src.read(t)?;
            src.release_rows(t, 0, t.rows());
            Ok(v)
        };
        // GGUF weights stay in the file's bytes: one shared read-only map of the whole file.
        let map: Option<Arc<memmap2::Mmap>> = match (mode, src) {
            (WeightMode::Native, ModelSource::Gguf { file, .. }) => {
                let f = std::fs::File::open(file.path()).map_err(|e| Error::io(file.path(), e))?;
                // SAFETY: read-only map; see GgufFile::open on files changed underneath.
                Some(Arc::new(unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(file.path(), e))?))
            }
            _ => None,
        };
        let matrix = |t: &SourceTensor| -> Result<QMatrix> {
            let (cols, rows) = (t.row_len(), t.rows());
            let bad = |e: Error| Error::bad_tensor(&t.name, e.to_string());
            if let (Some(map), ModelSource::Gguf { file, .. }) = (&map, src) {
                let info =
                    file.tensor(&t.name).ok_or_else(|| bad(Error::Invalid("not in the file".into())))?;
                let owner: Arc<dyn AsRef<[u8]> + Send + Sync> = map.clone();
                let start = (file.data_offset() + info.offset) as usize;
                let bytes = WeightBytes::new(owner, start, info.size as usize).map_err(bad)?;
                return QMatrix::new(info.ty, rows, cols, bytes).map_err(bad);
            }
            let v = read(t)?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            QMatrix::new(GgmlType::F32, rows, cols, WeightBytes::owned(bytes)).map_err(bad)
        };
        let vec = |name: &str| -> Result<Vec<f32>> { read(find(name)?) };
        let linear = |name: &str| -> Result<QLinear> {
            let t = find(name)?;
            let bias_name = name.replace(".weight", ".bias");
            let bias = match tensors.iter().find(|t| t.name == bias_name) {
                Some(b) => Some(read(b)?),
                None => None,
            };
            if streaming {
                return Ok(QLinear::new(placeholder(t.row_len()), bias));
            }
            if let Some(w) = dense8(src, mode, t)? {
                return Ok(QLinear { w, bias });
            }
            if let Some(w) = nf4(src, mode, t)? {
                return Ok(QLinear { w, bias });
            }
            Ok(QLinear::new(matrix(t)?, bias))
        };
        let embed = matrix(find("token_embd.weight")?)?;
        let mut layers = Vec::with_capacity(cfg.num_layers as usize);
        for l in 0..cfg.num_layers {
            let p = |p: Proj| linear(&p.weight_name(l as usize));
            layers.push(Layer {
                attn_norm: vec(&format!("blk.{l}.attn_norm.weight"))?,
                q: p(Proj::Q)?,
                k: p(Proj::K)?,
                v: p(Proj::V)?,
                o: p(Proj::O)?,
                ffn_norm: vec(&format!("blk.{l}.ffn_norm.weight"))?,
                gate: p(Proj::Gate)?,
                up: p(Proj::Up)?,
                down: p(Proj::Down)?,
            });
        }
        let h = cfg.hidden_size as usize;
        if embed.cols != h {
            return Err(Error::bad_tensor(
                "token_embd.weight",
                format!("rows of {} but hidden size {h}", embed.cols),
            ));
        }
        let lm_head = if streaming {
            // Never run: it only tells the vocabulary size (the embeddings' rows).
            QLinear::new(embed.clone(), None)
        } else if tensors.iter().any(|t| t.name == "output.weight") {
            linear("output.weight")?
        } else {
            QLinear::new(embed.clone(), None)
        };
        let hd = cfg.head_dim as usize;
        let factors = cfg.llama3_rope_factors();
        let linear = match cfg.rope_scaling {
            Some(RopeScaling::Linear { factor }) => factor as f32,
            _ => 1.0,
        };
        let inv_freq = (0..hd / 2)
            .map(|i| {
                let f = 1.0 / (cfg.rope_theta as f32).powf(2.0 * i as f32 / hd as f32);
                let f = f / linear;
                match &factors {
                    Some(fa) => f / fa[i],
                    None => f,
                }
            })
            .collect();
        Ok(Model {
            mode,
            r4: quantkit_io::rotate::online_rotations(src)?,
            interleaved: cfg.arch.permutes_qk(),
            norm: vec("output_norm.weight")?,
            cfg,
            embed,
            layers,
            lm_head,
            inv_freq,
        })
    }
}
