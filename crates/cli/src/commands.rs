//! Subcommand implementations.

use std::path::{Path, PathBuf};

use clap::Args;
use quantkit_core::{Error, GgmlType, Result};
use quantkit_io::config::ModelConfig;
use quantkit_io::export::{export_hf as run_export, ExportOptions};
use quantkit_io::gguf::GgufFile;
use quantkit_io::hf::HfCheckpoint;
use quantkit_io::imatrix::Imatrix;
use quantkit_io::rotate::RotationSpec;
use quantkit_io::safetensors::SafetensorsFile;
use quantkit_io::source::ModelSource;
use quantkit_quant::recipe::{ModelInfo, TensorTypeOverride};
use quantkit_quant::{convert as run_convert, ConvertOptions, Recipe, TensorPlan};
use serde_json::json;

use crate::progress::bar;

/// Peak resident memory of this process in MB (Linux `VmHWM`; reset at exec, unlike `ru_maxrss`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub struct Ctx {
    pub json: bool,
    pub progress: bool,
}

fn parse_type(s: &str) -> std::result::Result<GgmlType, String> {
    let t = GgmlType::parse(s).ok_or_else(|| format!("unknown type {s:?}"))?;
    quantkit_formats::codec(t).map_err(|_| {
        let names: Vec<&str> = quantkit_formats::REGISTRY.iter().map(|c| c.ty.name()).collect();
        format!("type {s:?} is not implemented yet (available: {})", names.join(", "))
    })?;
    Ok(t)
}

/// A `--type` argument: a known mix name (llama-quantize's names and aliases).
fn parse_mix(s: &str) -> std::result::Result<String, String> {
    if let Some(m) = quantkit_quant::recipe::mix(s) {
        return Ok(m.name.clone());
    }
    let names: Vec<&str> = quantkit_quant::recipe::mixes().iter().map(|m| m.name.as_str()).collect();
    match GgmlType::parse(s) {
        Some(_) => Err(format!("type {s:?} is not implemented yet (available: {})", names.join(", "))),
        None => Err(format!("unknown type {s:?} (available: {})", names.join(", "))),
    }
}

/// A `--tensor-type REGEX=TYPE` argument.
fn parse_override(s: &str) -> std::result::Result<TensorTypeOverride, String> {
    let (pattern, ty) =
        s.rsplit_once('=').ok_or_else(|| format!("{s:?}: expected REGEX=TYPE, e.g. attn_v=q8_0"))?;
    if pattern.is_empty() {
        return Err("empty tensor-name pattern".into());
    }
    Ok(TensorTypeOverride { pattern: pattern.to_string(), ty: parse_type(ty)? })
}

/// QuaRot's offline rotation, for every command that reads a model.
#[derive(Debug, Args, Clone, Copy, Default)]
pub struct RotateArgs {
    /// Rotate the model as it is read: `hadamard` = QuaRot's randomized Hadamard transforms, R1 on
    /// the residual stream and R2 per attention head, fused into the weights after folding the
    /// RMSNorm scales (the same function; outlier channels spread over all channels, so coarse
    /// grids lose less). The result is an ordinary checkpoint (a tied output is untied).
    /// `quarot` adds QuaRot's online R4: ffn_down's input is rotated at run time (it has the worst
    /// activation outliers, which matters for W4A4/W8A8); only loaders that apply it can run such a
    /// file (our engine; compressed-tensors outputs record it), so GGUF outputs refuse it.
    #[arg(long, value_enum, default_value = "none", value_name = "hadamard|quarot|none")]
    pub rotate: RotateKind,
    /// Seed of the Hadamard transforms' random signs.
    #[arg(long, default_value_t = 0)]
    pub rotate_seed: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RotateKind {
    #[default]
    None,
    Hadamard,
    Quarot,
}

impl RotateArgs {
    pub fn spec(self) -> Option<RotationSpec> {
        match self.rotate {
            RotateKind::None => None,
            RotateKind::Hadamard => Some(RotationSpec { seed: self.rotate_seed, online_r4: false }),
            RotateKind::Quarot => Some(RotationSpec { seed: self.rotate_seed, online_r4: true }),
        }
    }

    /// `src`, rotated if asked.
    pub fn apply(self, src: ModelSource) -> Result<ModelSource> {
        match self.spec() {
            Some(s) => src.rotated(s),
            None => Ok(src),
        }
    }
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// HF checkpoint folder (config.json + safetensors + tokenizer.json) or a .gguf file.
    pub input: PathBuf,
    /// Output type or mix: f32, f16, bf16, q8_0, q6_k, q5_k_m, q5_k_s, q5_1, q5_0, q4_k_m, q4_k_s,
    /// q4_1, q4_0, q3_k_l, q3_k_m, q3_k_s, q2_k (q3_k/q4_k/q5_k are the _m mixes, as in llama-quantize).
    #[arg(long = "type", short = 't', default_value = "f16", value_parser = parse_mix)]
    pub ty: String,
    /// Output .gguf path (not needed with --dry-run).
    #[arg(long, short, required_unless_present_any = ["dry_run", "print_recipe"])]
    pub output: Option<PathBuf>,
    /// Read the whole recipe (mix, rules, overrides) from a TOML file, as `--print-recipe` writes it.
    #[arg(long, conflicts_with = "ty")]
    pub recipe: Option<PathBuf>,
    /// Importance matrix (llama.cpp imatrix: GGUF or legacy .dat) for weighted quantization.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// The input GGUF is a tensor collection, not a complete model: do not check its tensors
    /// against its hyperparameters (by default a GGUF missing tensors, with more layers in its
    /// metadata than in its tensors or with implausible sizes is refused).
    #[arg(long)]
    pub allow_partial: bool,
    /// Give tensors whose name matches REGEX this type (first match wins; repeatable).
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE", value_parser = parse_override)]
    pub tensor_type: Vec<TensorTypeOverride>,
    /// Type of output.weight (and of a token embedding tied to it).
    #[arg(long, value_parser = parse_type)]
    pub output_tensor_type: Option<GgmlType>,
    /// Type of token_embd.weight.
    #[arg(long, value_parser = parse_type)]
    pub token_embedding_type: Option<GgmlType>,
    /// Give every weight matrix the base type, no mix rules and no output rule (llama-quantize's
    /// --pure).
    #[arg(long)]
    pub pure: bool,
    /// Set tokenizer.ggml.pre instead of detecting it from the tokenizer.
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
    /// Print the per-tensor plan (type and the rule that chose it) and the size, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the recipe as TOML and exit.
    #[arg(long)]
    pub print_recipe: bool,
    #[command(flatten)]
    pub rotation: RotateArgs,
}

fn build_recipe(a: &ConvertArgs) -> Result<Recipe> {
    let mut r = match &a.recipe {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
            toml::from_str::<Recipe>(&text)
                .map_err(|e| Error::Invalid(format!("{}: not a valid recipe: {e}", p.display())))?
        }
        None => Recipe::named(&a.ty)?,
    };
    for t in [Some(r.mix.base), a.output_tensor_type, a.token_embedding_type].into_iter().flatten() {
        quantkit_formats::codec(t)?;
    }
    r.pure |= a.pure;
    r.output_tensor_type = a.output_tensor_type.or(r.output_tensor_type);
    r.token_embedding_type = a.token_embedding_type.or(r.token_embedding_type);
    // Command-line overrides come first: the first matching pattern wins.
    let mut tt = a.tensor_type.clone();
    tt.append(&mut r.tensor_types);
    r.tensor_types = tt;
    Ok(r)
}

pub fn convert(ctx: &Ctx, a: &ConvertArgs) -> Result<()> {
    let recipe = build_recipe(a)?;
    if a.print_recipe {
        print!("{}", toml::to_string(&recipe).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    let src =
        if a.allow_partial { ModelSource::open_partial(&a.input)? } else { ModelSource::open(&a.input)? };
    let src = a.rotation.apply(src)?;
    if src.rotation().is_some() && a.imatrix.is_some() {
        return Err(Error::Invalid(
            "--imatrix with --rotate: an importance matrix of the unrotated model does not describe the \
             rotated one's channels. Use `quantkit quantize --rotate hadamard -f gguf:<mix> --calib FILE`, \
             which collects the imatrix on the rotated model"
                .into(),
        ));
    }
    let imatrix = a.imatrix.as_ref().map(Imatrix::open).transpose()?;
    if a.dry_run {
        return dry_run(ctx, &src, &recipe, imatrix.is_some());
    }
    let output = a.output.as_ref().ok_or_else(|| Error::Invalid("-o/--output is required".into()))?;
    let opts = ConvertOptions {
        recipe,
        tokenizer_pre: a.tokenizer_pre.clone(),
        imatrix,
        overrides: Default::default(),
    };
    let total: u64 = src.tensors()?.iter().map(|t| t.numel()).sum();
    let pb = bar(ctx.progress, total, "converting", false);
    let report = run_convert(&src, output, &opts, &|done, _| pb.set_position(done))?;
    pb.finish_and_clear();
    if ctx.json {
        let mut j = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        j["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    println!(
        "wrote {} ({}{}): {} tensors, {:.1} MB ({:.3} bits/weight) from {:.1} MB in {:.2} s ({:.0} MB/s of input, peak RSS {:.0} MB)",
        report.output.display(),
        report.recipe.mix.name,
        if report.imatrix_tensors > 0 { format!(", imatrix on {} tensors", report.imatrix_tensors) } else { String::new() },
        report.tensors.len(),
        report.output_bytes as f64 / 1e6,
        report.bits_per_weight,
        report.input_bytes as f64 / 1e6,
        report.seconds,
        report.input_bytes as f64 / 1e6 / report.seconds.max(1e-9),
        peak_rss_mb().unwrap_or(0.0)
    );
    print_type_counts(&report.tensors);
    print_fallbacks(&report.tensors);
    Ok(())
}

/// One line per distinct fallback (the full list is in `--json` and the file's metadata).
fn print_fallbacks(plans: &[TensorPlan]) {
    let mut groups: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for t in plans {
        if let Some(n) = &t.note {
            groups.entry(n.as_str()).or_default().push(t.name.as_str());
        }
    }
    for (note, names) in groups {
        let more = if names.len() > 1 { format!(" and {} more", names.len() - 1) } else { String::new() };
        println!("  fallback {note} ({}{more})", names[0]);
    }
}

fn print_type_counts(plans: &[TensorPlan]) {
    let mut counts: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in plans {
        let e = counts.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.dims.iter().product::<u64>();
    }
    for (ty, (n, params)) in counts {
        println!("  {ty:>5}: {n:>4} tensors, {params:>12} weights");
    }
}

/// `--dry-run`: the plan, tensor by tensor, and the data size it implies.
fn dry_run(ctx: &Ctx, src: &ModelSource, recipe: &Recipe, has_imatrix: bool) -> Result<()> {
    let tensors = src.tensors()?;
    let model = ModelInfo::from_config(src.config(), has_imatrix);
    let plans = recipe.plan(&tensors, &model)?;
    let bytes: u64 = plans
        .iter()
        .map(|p| p.ty.row_bytes(p.dims[0]).unwrap_or(0) * p.dims[1..].iter().product::<u64>())
        .sum();
    let params: u64 = plans.iter().map(|p| p.dims.iter().product::<u64>()).sum();
    if ctx.json {
        let j = json!({ "recipe": recipe, "model": model, "tensors": plans, "data_bytes": bytes,
                        "bits_per_weight": bytes as f64 * 8.0 / params.max(1) as f64 });
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    for p in &plans {
        let dims: Vec<String> = p.dims.iter().map(|d| d.to_string()).collect();
        println!("{:<36} {:>14} {:>6}  {}", p.name, dims.join("x"), p.ty.name(), p.reason);
        if let Some(n) = &p.note {
            println!("{:<36} {:>14} {:>6}  fallback {n}", "", "", "");
        }
    }
    println!(
        "{}: {} tensors, {:.1} MB of tensor data, {:.3} bits/weight",
        recipe.mix.name,
        plans.len(),
        bytes as f64 / 1e6,
        bytes as f64 * 8.0 / params.max(1) as f64
    );
    print_type_counts(&plans);
    Ok(())
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .gguf file, a .safetensors file or an HF checkpoint folder.
    pub path: PathBuf,
    /// Show long arrays (token lists) in full in JSON output.
    #[arg(long)]
    pub full: bool,
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

pub fn inspect(ctx: &Ctx, a: &InspectArgs) -> Result<()> {
    let p = &a.path;
    if p.is_dir() {
        return inspect_hf(ctx, p);
    }
    if !p.exists() {
        return Err(Error::Invalid(format!("{}: no such file or directory", p.display())));
    }
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
        let _ = f.read(&mut magic).map_err(|e| Error::io(p, e))?;
    }
    if &magic == b"GGUF" {
        inspect_gguf(ctx, p, a.full)
    } else {
        inspect_safetensors(ctx, p)
    }
}

fn inspect_gguf(ctx: &Ctx, p: &Path, full: bool) -> Result<()> {
    let g = GgufFile::open(p)?;
    let params: u64 = g.tensors.iter().map(|t| t.numel()).sum();
    let data: u64 = g.tensors.iter().map(|t| t.size).sum();
    let file_size = std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len();
    let bpw = if params > 0 { data as f64 * 8.0 / params as f64 } else { 0.0 };
    let mut by_type: std::collections::BTreeMap<String, (usize, u64, u64)> = Default::default();
    for t in &g.tensors {
        let e = by_type.entry(t.ty.name().into()).or_default();
        e.0 += 1;
        e.1 += t.numel();
        e.2 += t.size;
    }
    let fallbacks: Vec<String> = g
        .get("quantkit.fallbacks")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if ctx.json {
        let limit = if full { usize::MAX } else { 16 };
        let meta: serde_json::Map<String, serde_json::Value> =
            g.metadata.iter().map(|(k, v)| (k.clone(), v.to_json(limit))).collect();
        let tensors: Vec<_> = g
            .tensors
            .iter()
            .map(|t| json!({"name": t.name, "shape": t.dims, "type": t.ty.name(), "bytes": t.size, "offset": g.data_offset() + t.offset}))
            .collect();
        let out = json!({
            "path": p, "format": "gguf", "version": g.version, "alignment": g.alignment,
            "file_bytes": file_size, "tensor_bytes": data, "params": params, "bits_per_weight": bpw,
            "types": by_type.iter().map(|(k, v)| (k.clone(), json!({"tensors": v.0, "params": v.1, "bytes": v.2}))).collect::<serde_json::Map<_,_>>(),
            "fallbacks": fallbacks, "metadata": meta, "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    println!(
        "{}: GGUF v{}, {} tensors, {} metadata keys, alignment {}",
        p.display(),
        g.version,
        g.tensors.len(),
        g.metadata.len(),
        g.alignment
    );
    println!("\nmetadata:");
    for (k, v) in &g.metadata {
        println!("  {k:<44} {}", v.summary(5));
    }
    println!("\n{:<40} {:>22} {:>7} {:>12}", "tensor", "shape (ne0, ne1, …)", "type", "bytes");
    for t in &g.tensors {
        let shape = t.dims.iter().map(u64::to_string).collect::<Vec<_>>().join(" × ");
        println!("{:<40} {:>22} {:>7} {:>12}", t.name, shape, t.ty.name(), t.size);
    }
    println!("\nby type:");
    for (ty, (n, pr, b)) in &by_type {
        println!("  {ty:>7}: {n:>4} tensors, {pr:>12} weights, {:>10}", human(*b));
    }
    if !fallbacks.is_empty() {
        println!("\nper-tensor fallbacks:");
        for f in &fallbacks {
            println!("  {f}");
        }
    }
    println!(
        "\ntotal: {params} weights, {} of tensor data ({} file), {bpw:.3} bits per weight",
        human(data),
        human(file_size)
    );
    Ok(())
}

fn tensor_rows_json(names: Vec<(String, Vec<usize>, String, usize)>) -> (Vec<serde_json::Value>, u64, u64) {
    let (mut params, mut bytes) = (0u64, 0u64);
    let rows = names
        .into_iter()
        .map(|(n, shape, dtype, size)| {
            params += shape.iter().product::<usize>() as u64;
            bytes += size as u64;
            json!({"name": n, "shape": shape, "dtype": dtype, "bytes": size})
        })
        .collect();
    (rows, params, bytes)
}

fn print_tensor_rows(rows: &[serde_json::Value]) {
    println!("{:<52} {:>20} {:>6} {:>12}", "tensor", "shape", "dtype", "bytes");
    for r in rows {
        println!(
            "{:<52} {:>20} {:>6} {:>12}",
            r["name"].as_str().unwrap_or(""),
            r["shape"].to_string(),
            r["dtype"].as_str().unwrap_or(""),
            r["bytes"]
        );
    }
}

fn inspect_safetensors(ctx: &Ctx, p: &Path) -> Result<()> {
    let f = SafetensorsFile::open(p)?;
    let rows: Vec<_> = f
        .names()
        .into_iter()
        .filter_map(|n| {
            f.info(&n).map(|i| {
                (n.clone(), i.shape.clone(), format!("{:?}", i.dtype), i.data_offsets.1 - i.data_offsets.0)
            })
        })
        .collect();
    let (rows, params, bytes) = tensor_rows_json(rows);
    if ctx.json {
        let out = json!({"path": p, "format": "safetensors", "metadata": f.user_metadata(), "params": params, "tensor_bytes": bytes, "tensors": rows});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    println!("{}: safetensors, {} tensors", p.display(), rows.len());
    if let Some(m) = f.user_metadata() {
        for (k, v) in m {
            println!("  __metadata__.{k} = {v:?}");
        }
    }
    print_tensor_rows(&rows);
    println!(
        "\ntotal: {params} weights, {}, {:.3} bits per weight",
        human(bytes),
        bytes as f64 * 8.0 / params.max(1) as f64
    );
    Ok(())
}

fn inspect_hf(ctx: &Ctx, p: &Path) -> Result<()> {
    let h = HfCheckpoint::open(p)?;
    let rows: Vec<_> = h
        .names()
        .filter_map(|n| {
            h.shape(n).ok().map(|(s, d)| {
                let elem = match d.as_str() {
                    "F32" | "I32" | "U32" => 4,
                    "F64" | "I64" => 8,
                    "U8" | "I8" | "BOOL" => 1,
                    _ => 2,
                };
                let size = s.iter().product::<usize>() * elem;
                (n.to_string(), s, d, size)
            })
        })
        .collect();
    let (rows, params, bytes) = tensor_rows_json(rows);
    let c: &ModelConfig = &h.config;
    if ctx.json {
        let out = json!({"path": p, "format": "hf", "config": c, "params": params, "tensor_bytes": bytes, "tensors": rows});
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    println!(
        "{}: {} ({} layers, width {}, {} heads / {} KV heads, head dim {}, ffn {}, vocab {}, tied embeddings: {})",
        p.display(), c.arch.hf_class(), c.num_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim,
        c.intermediate_size, c.vocab_size, c.tie_word_embeddings
    );
    print_tensor_rows(&rows);
    println!("\ntotal: {params} weights, {}", human(bytes));
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The .gguf file to export, or an HF folder (GPTQ / AWQ / compressed-tensors checkpoints are
    /// read dequantized).
    pub input: PathBuf,
    /// Output folder (must not exist unless --force).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Weight dtype: f32 (exact dequantization), bf16 or f16.
    #[arg(long, default_value = "f32", value_parser = parse_type)]
    pub dtype: GgmlType,
    /// Copy tokenizer.json and tokenizer_config.json from this folder instead of rebuilding them
    /// from the GGUF vocabulary.
    #[arg(long)]
    pub tokenizer_from: Option<PathBuf>,
    /// Largest safetensors shard, in MB.
    #[arg(long, default_value_t = 5000)]
    pub max_shard_mb: u64,
    /// Replace the output folder if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn export_hf(ctx: &Ctx, a: &ExportArgs) -> Result<()> {
    let opts = ExportOptions {
        dtype: a.dtype,
        tokenizer_from: a.tokenizer_from.clone(),
        max_shard_bytes: a.max_shard_mb.saturating_mul(1_000_000),
        force: a.force,
    };
    let pb = bar(ctx.progress, 0, "exporting", true);
    let t0 = std::time::Instant::now();
    // An HF folder (e.g. a GPTQ/AWQ/compressed-tensors checkpoint, read dequantized): through an
    // exact F32 GGUF in a temporary folder beside the output.
    let report = if a.input.is_dir() {
        let parent = a.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".quantkit-export-")
            .tempdir_in(parent)
            .map_err(|e| Error::io(parent, e))?;
        let gguf = tmp.path().join("f32.gguf");
        let src = ModelSource::open(&a.input)?;
        let recipe = Recipe::named("f32")?;
        run_convert(
            &src,
            &gguf,
            &ConvertOptions { recipe, tokenizer_pre: None, imatrix: None, overrides: Default::default() },
            &|_, _| {},
        )?;
        let opts = ExportOptions {
            tokenizer_from: Some(opts.tokenizer_from.clone().unwrap_or_else(|| a.input.clone())),
            ..opts
        };
        run_export(&gguf, &a.output, &opts, &|done| pb.set_position(done))?
    } else {
        run_export(&a.input, &a.output, &opts, &|done| pb.set_position(done))?
    };
    pb.finish_and_clear();
    if ctx.json {
        let mut j = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        j["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
    } else {
        println!(
            "wrote {}: {} tensors as {} in {} shard(s), {:.1} MB, {:.2} s",
            report.dir.display(),
            report.tensors,
            report.dtype,
            report.shards,
            report.bytes as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
