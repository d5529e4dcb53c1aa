//! What `sweep` and `batch` share: recipe strings, quantizing one recipe into one output (written
//! whole or not at all), scoring it against base log-probabilities, and hashing inputs/outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use quantkit_core::{Error, Result};
use quantkit_engine::eval::{base_logits, kld, BaseFormat, BaseLogits, KldReport, PplMode, PplOptions};
use quantkit_engine::tokenizer::read_text;
use quantkit_engine::{Model, Tokenizer, WeightMode};
use quantkit_io::imatrix::Imatrix;
use quantkit_io::rotate::RotationSpec;
use quantkit_io::source::ModelSource;
use quantkit_quant::convert::{convert, ConvertOptions};
use quantkit_quant::gptq::GptqConfig;
use quantkit_quant::grid::IntSpec;
use quantkit_quant::method::smooth::SmoothConfig;
use quantkit_quant::method::{GgufUse, Knobs, MethodKind, METHODS};
use quantkit_quant::quantize::{
    imatrix_pass, quantize_with, OutFormat, Prepared, Progress, QuantizeOptions, RunSettings,
};
use quantkit_quant::recipe::Recipe;
use quantkit_quant::writers::{BnbFormat, IntFormat};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// One recipe of a sweep or a batch job.
///
/// * `q4_k_m`, `q8_0`, … — a llama-quantize mix into GGUF (with the calibration's imatrix when
///   calibration text is given);
/// * `gptq:q4_k_m` — the same mix with GPTQ error feedback (needs calibration);
/// * `rtn:4:128`, `gptq:4:128`, `awq:4:128`, optionally `:sym`/`:asym` — an integer checkpoint
///   (GPTQ layout for rtn/gptq, AWQ GEMM for awq; group `-1` = per channel);
/// * `nf4`, `nf4-dq` — a bitsandbytes 4-bit NF4 checkpoint (blocks of 64, round to nearest as bnb
///   quantizes on load; `-dq` with double-quantized absmax values); `gptq:nf4`, `gptq:nf4-dq` — the
///   same checkpoint with GPTQ's error feedback onto the NF4 levels (needs calibration);
/// * `w8a16`, `w8a8` (round to nearest) and `gptq:w8a16`, `gptq:w8a8` — llm-compressor's int8
///   schemes as compressed-tensors writes them (per-channel symmetric int8: `pack-quantized`
///   weight-only, `int-quantized` with dynamic int8 activations); `w4a4`, `gptq:w4a4` — the same
///   with int4 per-channel weights and dynamic per-token int4 activations (QuaRot's setting: pair it
///   with `quarot:`); `fp8`, `fp8-dynamic` — FP8 E4M3
///   per-channel weights (`naive-quantized` weight-only, `float-quantized` with dynamic FP8
///   activations; round to nearest only); `nvfp4a16` — compressed-tensors NVFP4 (`nvfp4-pack-quantized`:
///   FP4 E2M1, E4M3 scales per 16 weights, a global scale; round to nearest only; not the GGUF
///   `nvfp4` mix, which is llama.cpp's block type);
/// * `smoothquant[@ALPHA|@auto]:<integer recipe>` — SmoothQuant (α 0.5 by default) folded into the
///   RMSNorms first, e.g. `smoothquant:w8a8`, `smoothquant@0.8:gptq:w8a8` (needs calibration);
/// * `hadamard[@SEED]:<recipe>` — QuaRot's Hadamard rotation (R1, R2) fused into the weights first,
///   then the recipe on the rotated model (GGUF mixes collect their imatrix on it), e.g.
///   `hadamard:gptq:4:-1`, `hadamard:q4_k_m`; `quarot[@SEED]:<recipe>` adds the online R4 before
///   `ffn_down` (compressed-tensors outputs only: llama.cpp cannot apply it);
/// * `path/to/recipe.toml` — a recipe file (`convert --print-recipe` writes one) into GGUF.
#[derive(Debug, Clone)]
pub enum Spec {
    Gguf {
        recipe: Box<Recipe>,
        gptq: bool,
    },
    /// A checkpoint folder in `layout` (an FP8 layout ignores `int`), optionally smoothed first.
    Int {
        method: MethodKind,
        int: IntSpec,
        layout: IntFormat,
        smooth: Option<SmoothConfig>,
    },
    /// A bitsandbytes NF4 folder, by `rtn` (bnb's own rounding) or `gptq`.
    Bnb {
        method: MethodKind,
        format: BnbFormat,
    },
}

/// The bitsandbytes recipe strings: `nf4`, `nf4-dq`.
fn bnb_recipe(s: &str) -> Option<BnbFormat> {
    match s.to_ascii_lowercase().as_str() {
        "nf4" => Some(BnbFormat { double_quant: false }),
        "nf4-dq" => Some(BnbFormat { double_quant: true }),
        _ => None,
    }
}

/// The compressed-tensors presets (`w8a8`, `gptq:w8a8`, `fp8`, `nvfp4a16`, …): their layout, and
/// whether a calibrated method may make them (the FP8 and NVFP4 ones are round to nearest only).
fn ct8_preset(name: &str) -> Option<(IntFormat, bool)> {
    match name {
        "w8a16" => Some((IntFormat::CompressedTensors, true)),
        "w8a8" => Some((IntFormat::CtW8A8, true)),
        "w4a4" => Some((IntFormat::CtW4A4, true)),
        "fp8" => Some((IntFormat::CtFp8, false)),
        "fp8-dynamic" => Some((IntFormat::CtFp8Dynamic, false)),
        "nvfp4a16" => Some((IntFormat::CtNvfp4, false)),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct RecipeSpec {
    /// As written by the user.
    pub text: String,
    pub spec: Spec,
    /// The recipe file's text, when it is one (part of a batch job's identity).
    pub file_text: Option<String>,
    /// QuaRot's Hadamard rotation first (`hadamard:<recipe>`).
    pub rotate: Option<RotationSpec>,
}

impl RecipeSpec {
    /// Parse a recipe string; relative recipe files are looked up from `base`.
    pub fn parse(s: &str, base: &Path) -> Result<Self> {
        let t = s.trim();
        let rotation = [("hadamard", false), ("quarot", true)].into_iter().find_map(|(n, online)| {
            t.strip_prefix(n).filter(|r| r.starts_with([':', '@'])).map(|r| (r, online))
        });
        if let Some((rest, online_r4)) = rotation {
            // hadamard[@SEED]:<recipe>, quarot[@SEED]:<recipe>
            let (seed, inner) = rest.split_once(':').ok_or_else(|| {
                Error::Invalid(format!("recipe {t:?}: hadamard[@SEED]:<recipe>, e.g. hadamard:gptq:4:128"))
            })?;
            let seed = match seed.strip_prefix('@') {
                Some(n) => n
                    .parse::<u64>()
                    .map_err(|_| Error::Invalid(format!("recipe {t:?}: the seed after @ is a number")))?,
                None => 0,
            };
            let mut r = RecipeSpec::parse(inner, base)?;
            if r.rotate.is_some() {
                return Err(Error::Invalid(format!("recipe {t:?}: one rotation per recipe")));
            }
            r.rotate = Some(RotationSpec { seed, online_r4 });
            r.text = t.into();
            return Ok(r);
        }
        if t.ends_with(".toml") {
            let p = base.join(t);
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            let recipe: Recipe = toml::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: not a valid recipe: {e}", p.display())))?;
            return Ok(RecipeSpec {
                text: t.into(),
                spec: Spec::Gguf { recipe: Box::new(recipe), gptq: false },
                file_text: Some(text),
                rotate: None,
            });
        }
        if let Some(rest) = t.strip_prefix("smoothquant") {
            // smoothquant[@ALPHA|@auto]:<integer recipe>
            let (alpha, inner) = rest.split_once(':').ok_or_else(|| {
                Error::Invalid(format!(
                    "recipe {t:?}: smoothquant[@ALPHA]:<integer recipe>, e.g. smoothquant:w8a8"
                ))
            })?;
            let cfg = match alpha.strip_prefix('@') {
                Some(a) => SmoothConfig::parse(a)?,
                None if alpha.is_empty() => SmoothConfig::default(),
                None => return Err(Error::Invalid(format!("recipe {t:?}: write smoothquant@{alpha}:…"))),
            };
            let mut r = RecipeSpec::parse(inner, base)?;
            match &mut r.spec {
                Spec::Int { layout, smooth, .. } if !layout.is_float() => *smooth = Some(cfg),
                _ => {
                    return Err(Error::Invalid(format!(
                    "recipe {t:?}: SmoothQuant folds into integer checkpoints (w8a8, gptq:w8a8, rtn:8:-1, …)"
                )))
                }
            }
            r.text = t.into();
            return Ok(r);
        }
        let parts: Vec<&str> = t.split(':').collect();
        // The presets' grid: symmetric per channel, 8 bits (4 for W4A4; FP layouts ignore it).
        let per_channel = |l: IntFormat| IntSpec {
            bits: if l == IntFormat::CtW4A4 { 4 } else { 8 },
            group: None,
            sym: true,
        };
        let spec = match parts.as_slice() {
            [name] if ct8_preset(name).is_some() => {
                let (layout, _) = ct8_preset(name).expect("checked");
                Spec::Int { method: MethodKind::rtn(), int: per_channel(layout), layout, smooth: None }
            }
            [m, name] if METHODS.iter().any(|i| i.name == *m) && ct8_preset(name).is_some() => {
                let (layout, calibrated) = ct8_preset(name).expect("checked");
                let method: MethodKind = m.parse()?;
                if !calibrated && method != MethodKind::rtn() {
                    return Err(Error::Invalid(format!(
                        "recipe {t:?}: {name} is round to nearest only (write {name})"
                    )));
                }
                Spec::Int { method, int: per_channel(layout), layout, smooth: None }
            }
            [m, name] if METHODS.iter().any(|i| i.name == *m) && bnb_recipe(name).is_some() => {
                let method: MethodKind = m.parse()?;
                if method != MethodKind::rtn() && method.info().gguf != GgufUse::Grid {
                    return Err(Error::Invalid(format!(
                        "recipe {t:?}: NF4 is made by rtn or gptq (rtn:{name}, gptq:{name})"
                    )));
                }
                Spec::Bnb { method, format: bnb_recipe(name).expect("checked") }
            }
            [m, rest @ ..] if !rest.is_empty() && METHODS.iter().any(|i| i.name == *m) => {
                let method: MethodKind = m.parse()?;
                if rest.len() == 1 && rest[0].parse::<u32>().is_err() {
                    if method.info().gguf != GgufUse::Grid {
                        return Err(Error::Invalid(format!(
                            "recipe {t:?}: only gptq feeds GGUF mixes (gptq:<mix>), or use {m}:<bits>:<group>"
                        )));
                    }
                    Spec::Gguf { recipe: Box::new(Recipe::named(rest[0])?), gptq: true }
                } else {
                    let info = method.info();
                    let int = IntSpec::parse(rest, info.default_sym)
                        .map_err(|e| Error::Invalid(format!("recipe {t:?}: {e}")))?;
                    if !info.default_layout.packs_bits(int.bits) {
                        return Err(Error::Invalid(format!(
                            "recipe {t:?}: {} bits not supported here",
                            int.bits
                        )));
                    }
                    Spec::Int { method, int, layout: info.default_layout, smooth: None }
                }
            }
            [b] if bnb_recipe(b).is_some() => {
                Spec::Bnb { method: MethodKind::rtn(), format: bnb_recipe(b).expect("matched") }
            }
            [mix] => Spec::Gguf { recipe: Box::new(Recipe::named(mix)?), gptq: false },
            _ => {
                let methods: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
                return Err(Error::Invalid(format!(
                    "recipe {t:?}: expected a mix (q4_k_m), gptq:<mix>, {}:<bits>:<group>[:sym|asym], \
                     [<method>:]w8a16|w8a8, fp8, fp8-dynamic, nvfp4a16, [gptq:]nf4, [gptq:]nf4-dq or a .toml file",
                    methods.join("|")
                )));
            }
        };
        Ok(RecipeSpec { text: t.into(), spec, file_text: None, rotate: None })
    }

    /// A file-name-safe name (`q4_k_m`, `gptq-q4_k_m`, `gptq-4-128`, the TOML file's stem).
    pub fn slug(&self) -> String {
        let raw = if self.file_text.is_some() {
            Path::new(&self.text).file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
        } else {
            self.text.to_lowercase().replace(':', "-")
        };
        raw.chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
            .collect()
    }

    pub fn needs_calibration(&self) -> bool {
        match &self.spec {
            Spec::Gguf { gptq, .. } => *gptq,
            Spec::Int { method, smooth, .. } => method.info().needs_calibration || smooth.is_some(),
            Spec::Bnb { method, .. } => method.info().needs_calibration,
        }
    }

    /// Whether the output is a GGUF file (else a checkpoint folder).
    pub fn is_gguf(&self) -> bool {
        matches!(self.spec, Spec::Gguf { .. })
    }

    /// `gguf:Q4_K_M`, `gptq int4 g128`, … (`+ hadamard` when rotated first)
    pub fn format(&self) -> String {
        let f = self.format_unrotated();
        match self.rotate {
            Some(r) => format!("{f} + {}", r.label()),
            None => f,
        }
    }

    fn format_unrotated(&self) -> String {
        match &self.spec {
            Spec::Gguf { recipe, gptq } => {
                format!("gguf:{}{}", recipe.mix.name, if *gptq { " (gptq)" } else { "" })
            }
            Spec::Int { layout, .. } if layout.is_float() => format!("{} fp8 per-channel", layout.dir_name()),
            Spec::Int { layout, .. } if layout.is_nvfp4() => format!("{} fp4 g16", layout.dir_name()),
            Spec::Int { method, int, layout, smooth } => format!(
                "{} {}{}{}{}",
                layout.dir_name(),
                int.label(),
                if int.sym { " sym" } else { " asym" },
                if *layout != method.info().default_layout { format!(" ({method})") } else { String::new() },
                smooth.map(|c| format!(" + {}", c.label())).unwrap_or_default()
            ),
            Spec::Bnb { method, format } if *method == MethodKind::rtn() => format.name().to_string(),
            Spec::Bnb { method, format } => format!("{} ({method})", format.name()),
        }
    }
}

/// What quantizing one recipe produced.
#[derive(Debug, Clone, Serialize)]
pub struct Quantized {
    pub path: PathBuf,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub seconds: f64,
    /// Mean relative layer error of the calibrated method and of RTN (calibrated recipes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_rel_error: Option<(f64, f64)>,
}

/// Everything a recipe may need besides the model.
pub struct Shared<'a> {
    pub prepared: Option<&'a Prepared>,
    pub imatrix: Option<&'a Imatrix>,
    pub gptq: GptqConfig,
    /// Imatrices of rotated models (by rotation label), collected once per rotation.
    pub rotated_imatrices: std::sync::Mutex<BTreeMap<String, Imatrix>>,
}

/// Quantize `src` (at `model`) with `r` into `dest` (a `.gguf` file or a folder): written beside and
/// renamed, so `dest` is either absent/old or complete.
pub fn quantize_recipe(
    model: &Path,
    src: &ModelSource,
    r: &RecipeSpec,
    dest: &Path,
    sh: &Shared,
    progress: &dyn Progress,
) -> Result<Quantized> {
    let t0 = Instant::now();
    if r.needs_calibration() && sh.prepared.is_none() {
        return Err(Error::Invalid(format!("recipe {}: needs calibration text (calib)", r.text)));
    }
    let rotated;
    let src = match r.rotate {
        Some(spec) => {
            rotated = ModelSource::open(model)?.rotated(spec)?;
            &rotated
        }
        None => src,
    };
    let params: u64 = src.tensors()?.iter().map(|t| t.numel()).sum();
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).map_err(|e| Error::io(p, e))?;
    }
    match &r.spec {
        Spec::Gguf { recipe, gptq: false } => {
            // The shared imatrix describes the unrotated model: a rotated one collects its own.
            let imatrix = match (r.rotate, sh.imatrix, sh.prepared) {
                (Some(spec), Some(_), Some(p)) => {
                    let key = spec.label();
                    let memo = sh.rotated_imatrices.lock().ok().and_then(|m| m.get(&key).cloned());
                    match memo {
                        Some(im) => Some(im),
                        None => {
                            let im = imatrix_pass(src, p, Path::new("imatrix.gguf"), progress)?;
                            if let Ok(mut m) = sh.rotated_imatrices.lock() {
                                m.insert(key, im.clone());
                            }
                            Some(im)
                        }
                    }
                }
                (Some(_), Some(_), None) => {
                    return Err(Error::Invalid(format!(
                        "recipe {}: an imatrix of the unrotated model does not apply to the rotated one \
                         (give calibration text instead)",
                        r.text
                    )))
                }
                _ => sh.imatrix.cloned(),
            };
            let opts = ConvertOptions {
                recipe: (**recipe).clone(),
                tokenizer_pre: None,
                imatrix,
                overrides: Default::default(),
            };
            progress.stage(&format!("convert {}", r.text), params);
            let rep = convert(src, dest, &opts, &|d, _| progress.tick(d))?;
            Ok(Quantized {
                path: dest.to_path_buf(),
                bytes: rep.output_bytes,
                bits_per_weight: rep.bits_per_weight,
                seconds: t0.elapsed().as_secs_f64(),
                mean_rel_error: None,
            })
        }
        _ => {
            let (opts, inner) = match &r.spec {
                Spec::Gguf { recipe, .. } => (
                    QuantizeOptions {
                        method: "gptq".parse()?,
                        int: None,
                        knobs: Knobs { gptq: sh.gptq, ..Knobs::default() },
                        formats: vec![OutFormat::Gguf(recipe.clone())],
                        calib: None,
                        write_imatrix: false,
                        run: RunSettings::default(),
                        rotate: r.rotate,
                    },
                    format!("model-{}.gguf", recipe.mix.name),
                ),
                Spec::Int { method, int, layout, smooth } => (
                    QuantizeOptions {
                        method: *method,
                        int: Some(*int),
                        knobs: Knobs {
                            // Layouts without g_idx take act-order with static groups (as `quantize` does).
                            gptq: GptqConfig {
                                static_groups: sh.gptq.static_groups
                                    || (sh.gptq.act_order && !layout.stores_g_idx()),
                                ..sh.gptq
                            },
                            smooth: *smooth,
                            ..Knobs::default()
                        },
                        formats: vec![OutFormat::Int(*layout)],
                        calib: None,
                        write_imatrix: false,
                        run: RunSettings::default(),
                        rotate: r.rotate,
                    },
                    layout.dir_name().to_string(),
                ),
                Spec::Bnb { method, format: f } => (
                    QuantizeOptions {
                        method: *method,
                        int: None,
                        knobs: Knobs { gptq: sh.gptq, ..Knobs::default() },
                        formats: vec![OutFormat::Bnb(*f)],
                        calib: None,
                        write_imatrix: false,
                        run: RunSettings::default(),
                        rotate: r.rotate,
                    },
                    f.name().to_string(),
                ),
            };
            // quantize writes a folder (the output plus its report): build it beside `dest`, then
            // move the output into place and drop the rest.
            let work = sibling(dest, ".work");
            if work.exists() {
                std::fs::remove_dir_all(&work).map_err(|e| Error::io(&work, e))?;
            }
            // Round to nearest needs no calibration pass (it would only report layer errors).
            let prepared = if r.needs_calibration() { sh.prepared } else { None };
            let rep = quantize_with(model, &work, &opts, prepared, progress);
            let rep = match rep {
                Ok(r) => r,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&work);
                    return Err(e);
                }
            };
            let built = work.join(&inner);
            quantkit_core::replace_path(&built, dest)?;
            let _ = std::fs::remove_dir_all(&work);
            let bytes =
                if dest.is_file() { file_len(dest) } else { file_len(&dest.join("model.safetensors")) };
            let bpw = rep
                .outputs
                .first()
                .and_then(|o| o.bits_per_weight)
                .unwrap_or(bytes as f64 * 8.0 / params.max(1) as f64);
            Ok(Quantized {
                path: dest.to_path_buf(),
                bytes,
                bits_per_weight: bpw,
                seconds: t0.elapsed().as_secs_f64(),
                mean_rel_error: rep.passes.first().map(|p| (p.mean_rel_error, p.mean_rel_error_rtn)),
            })
        }
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// `dest` with `suffix` added to its file name (same folder, so a rename is atomic).
pub fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    dest.with_file_name(format!(".{name}{suffix}"))
}

/// How outputs are scored.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalSettings {
    pub text: PathBuf,
    pub ctx: usize,
    pub chunks: Option<usize>,
}

/// llama-perplexity's scoring: chunks of `ctx`, BOS first when the model adds one.
pub fn llama_chunks(ctx: usize, chunks: Option<usize>, tok: &Tokenizer) -> PplOptions {
    PplOptions {
        ctx,
        chunks,
        mode: PplMode::Llama,
        stride: None,
        bos: if tok.add_bos { tok.bos } else { None },
    }
}

/// The base model's log-probabilities on the evaluation text (llama-perplexity's chunks).
pub fn compute_base(model: &Path, e: &EvalSettings, progress: &dyn Progress) -> Result<BaseLogits> {
    let src = ModelSource::open(model)?;
    let tok = Tokenizer::for_source(&src)?;
    let m = Model::load_with(&src, WeightMode::Native)?;
    let text = read_text(&e.text)?;
    let tokens = tok.encode(&text, tok.add_bos)?;
    let o = llama_chunks(e.ctx, e.chunks, &tok);
    progress.stage("base logits", 0);
    base_logits(&m, &tokens, &o, BaseFormat::Full, &|d, _| progress.tick(d as u64))
}

/// Score a quantized output against `base`.
pub fn score(path: &Path, base: &BaseLogits, progress: &dyn Progress) -> Result<(KldReport, f64)> {
    let t0 = Instant::now();
    let src = ModelSource::open(path)?;
    let m = Model::load_with(&src, WeightMode::Native)?;
    progress.stage("scoring", 0);
    let r = kld(&m, base, &|d, _| progress.tick(d as u64))?;
    Ok((r, t0.elapsed().as_secs_f64()))
}

/// Write `bytes` to `p` through a temp file and a rename (never a half file).
pub fn write_atomic(p: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = quantkit_core::AtomicFile::create(p)?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| Error::io(p, e))?;
    f.commit()
}

pub fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, or of a folder (every file, sorted by relative path: `path\0sha256\n`).
pub fn sha256_path(p: &Path) -> Result<String> {
    if p.is_file() {
        let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h).map_err(|e| Error::io(p, e))?;
        return Ok(hex(&h.finalize()));
    }
    if !p.is_dir() {
        return Err(Error::Invalid(format!("{} does not exist", p.display())));
    }
    let mut files = BTreeMap::new();
    collect(p, p, &mut files)?;
    let mut h = Sha256::new();
    for (rel, abs) in files {
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(sha256_path(&abs)?.as_bytes());
        h.update(b"\n");
    }
    Ok(hex(&h.finalize()))
}

fn collect(root: &Path, d: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(d).map_err(|e| Error::io(d, e))? {
        let p = e.map_err(|e| Error::io(d, e))?.path();
        if p.is_dir() {
            collect(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            out.insert(rel, p);
        }
    }
    Ok(())
}

/// sha256 of a model input: the GGUF file, or an HF folder's weights, config and tokenizer.
pub fn sha256_model(p: &Path) -> Result<String> {
    if p.is_file() {
        return sha256_path(p);
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| Error::io(p, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| {
            let n = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            f.is_file() && (n.ends_with(".safetensors") || n.ends_with(".json") || n.ends_with(".model"))
        })
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for f in names {
        h.update(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().as_bytes());
        h.update([0]);
        h.update(sha256_path(&f)?.as_bytes());
        h.update(b"\n");
    }
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_strings_parse() {
        let b = Path::new(".");
        let r = RecipeSpec::parse("q4_k_m", b).expect("mix");
        assert!(r.is_gguf() && !r.needs_calibration());
        assert_eq!(r.slug(), "q4_k_m");
        let r = RecipeSpec::parse("gptq:q4_k_m", b).expect("gptq gguf");
        assert!(r.is_gguf() && r.needs_calibration());
        assert_eq!(r.slug(), "gptq-q4_k_m");
        let r = RecipeSpec::parse("gptq:4:128", b).expect("int");
        let int = |bits, group, sym| IntSpec { bits, group, sym };
        assert!(
            matches!(r.spec, Spec::Int { method, int: i, .. } if method.name() == "gptq" && i == int(4, Some(128), true))
        );
        let r = RecipeSpec::parse("awq:4:64", b).expect("awq");
        assert!(
            matches!(r.spec, Spec::Int { method, int: i, .. } if method.name() == "awq" && i == int(4, Some(64), false))
        );
        let r = RecipeSpec::parse("rtn:3:-1:asym", b).expect("rtn");
        assert!(
            matches!(r.spec, Spec::Int { method, int: i, .. } if method.name() == "rtn" && i == int(3, None, false))
        );
        assert!(!r.needs_calibration());
        for (text, dq) in [("nf4", false), ("nf4-dq", true), ("NF4-DQ", true)] {
            let r = RecipeSpec::parse(text, b).expect("nf4");
            assert!(
                matches!(r.spec, Spec::Bnb { method, format: f } if f.double_quant == dq && method.name() == "rtn"),
                "{text}"
            );
            assert!(!r.is_gguf() && !r.needs_calibration());
            assert_eq!(r.format(), if dq { "bnb-nf4-dq" } else { "bnb-nf4" });
        }
        assert_eq!(RecipeSpec::parse("nf4-dq", b).expect("nf4").slug(), "nf4-dq");
        for (text, dq, slug) in [("gptq:nf4", false, "gptq-nf4"), ("gptq:nf4-dq", true, "gptq-nf4-dq")] {
            let r = RecipeSpec::parse(text, b).expect("gptq nf4");
            assert!(
                matches!(r.spec, Spec::Bnb { method, format: f } if f.double_quant == dq && method.name() == "gptq"),
                "{text}"
            );
            assert!(!r.is_gguf() && r.needs_calibration());
            assert_eq!(
                (r.slug().as_str(), r.format()),
                (slug, format!("{} (gptq)", if dq { "bnb-nf4-dq" } else { "bnb-nf4" }))
            );
        }
        let r = RecipeSpec::parse("rtn:nf4", b).expect("rtn nf4");
        assert!(
            matches!(r.spec, Spec::Bnb { method, .. } if method.name() == "rtn") && !r.needs_calibration()
        );
        // The 8-bit compressed-tensors presets.
        let c8 = int(8, None, true);
        for (text, method, layout, calib, slug) in [
            ("w8a16", "rtn", IntFormat::CompressedTensors, false, "w8a16"),
            ("w8a8", "rtn", IntFormat::CtW8A8, false, "w8a8"),
            ("gptq:w8a8", "gptq", IntFormat::CtW8A8, true, "gptq-w8a8"),
            ("gptq:w8a16", "gptq", IntFormat::CompressedTensors, true, "gptq-w8a16"),
            ("fp8", "rtn", IntFormat::CtFp8, false, "fp8"),
            ("fp8-dynamic", "rtn", IntFormat::CtFp8Dynamic, false, "fp8-dynamic"),
            ("rtn:fp8", "rtn", IntFormat::CtFp8, false, "rtn-fp8"),
            ("nvfp4a16", "rtn", IntFormat::CtNvfp4, false, "nvfp4a16"),
        ] {
            let r = RecipeSpec::parse(text, b).expect(text);
            assert!(
                matches!(r.spec, Spec::Int { method: m, int: i, layout: l, .. } if m.name() == method && i == c8 && l == layout),
                "{text}: {:?}",
                r.spec
            );
            assert_eq!(
                (r.needs_calibration(), r.is_gguf(), r.slug().as_str()),
                (calib, false, slug),
                "{text}"
            );
        }
        assert_eq!(
            RecipeSpec::parse("w8a8", b).expect("w8a8").format(),
            "ct-w8a8 int8 per-channel sym (rtn)"
        );
        assert_eq!(RecipeSpec::parse("fp8", b).expect("fp8").format(), "ct-fp8 fp8 per-channel");
        // SmoothQuant in front of an integer recipe.
        for (text, alpha, method) in [
            ("smoothquant:w8a8", Some(0.5), "rtn"),
            ("smoothquant@0.8:gptq:w8a8", Some(0.8), "gptq"),
            ("smoothquant@auto:rtn:8:-1", None, "rtn"),
        ] {
            let r = RecipeSpec::parse(text, b).expect(text);
            assert!(
                matches!(r.spec, Spec::Int { method: m, smooth: Some(c), .. } if m.name() == method && c.alpha == alpha),
                "{text}: {:?}",
                r.spec
            );
            assert!(r.needs_calibration() && r.format().contains("smoothquant"), "{text}");
        }
        for bad in [
            "smoothquant:fp8",
            "smoothquant:q4_k_m",
            "smoothquant@2:w8a8",
            "smoothquant0.5:w8a8",
            "smoothquant",
        ] {
            assert!(RecipeSpec::parse(bad, b).is_err(), "{bad}");
        }
        // Rotations in front of any recipe.
        for (text, seed, online, calib, fmt) in [
            ("hadamard:gptq:4:128", 0, false, true, "gptq int4 g128 sym + hadamard"),
            ("hadamard@7:q4_k_m", 7, false, false, "gguf:Q4_K_M + hadamard@7"),
            ("quarot:w4a4", 0, true, false, "ct-w4a4 int4 per-channel sym (rtn) + quarot"),
            ("quarot@3:gptq:w4a4", 3, true, true, "ct-w4a4 int4 per-channel sym (gptq) + quarot@3"),
        ] {
            let r = RecipeSpec::parse(text, b).expect(text);
            assert_eq!(r.rotate, Some(RotationSpec { seed, online_r4: online }), "{text}");
            assert_eq!((r.needs_calibration(), r.format().as_str()), (calib, fmt), "{text}");
        }
        let w4 = RecipeSpec::parse("w4a4", b).expect("w4a4");
        assert!(
            matches!(w4.spec, Spec::Int { int: i, layout: IntFormat::CtW4A4, .. } if i == int(4, None, true))
        );
        for bad in
            ["hadamard:hadamard:q4_k_m", "quarot:hadamard:w4a4", "hadamard@x:q4_k_m", "hadamard:", "quarot"]
        {
            assert!(RecipeSpec::parse(bad, b).is_err(), "{bad}");
        }
        let e = RecipeSpec::parse("gptq:fp8", b).expect_err("gptq fp8").to_string();
        assert!(e.contains("round to nearest only"), "{e}");
        assert_eq!(RecipeSpec::parse("nvfp4a16", b).expect("nvfp4a16").format(), "ct-nvfp4 fp4 g16");
        let e = RecipeSpec::parse("gptq:nvfp4a16", b).expect_err("gptq nvfp4").to_string();
        assert!(e.contains("round to nearest only"), "{e}");
        // `nvfp4` stays llama.cpp's GGUF type / quantkit's NVFP4 mix.
        assert!(RecipeSpec::parse("nvfp4", b).expect("nvfp4").is_gguf());
        for bad in [
            "q9_z",
            "nf4:dq",
            "awq:nf4",
            "mse:nf4-dq",
            "gptq:nf4:dq",
            "nf4-dq2",
            "awq:3:128",
            "rtn:q4_k_m",
            "gptq:x:128",
            "gptq:4:128:maybe",
            "a:b:c:d:e",
            "missing.toml",
            "gptq:fp8-dynamic",
            "awq:fp8",
            "w8a4",
            "fp8:dynamic",
        ] {
            assert!(RecipeSpec::parse(bad, b).is_err(), "{bad}");
        }
    }
}
