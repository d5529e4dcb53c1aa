//! Subcommand implementations.

use std::path::{Path, PathBuf};

use clap::Args;
use quantkit_core::{Error, GgmlType, Result};
use quantkit_io::config::ModelConfig;
use quantkit_io::export::{export_hf as run_export, ExportOptions};
use quantkit_io::gguf::GgufFile;
use quantkit_io::hf::HfCheckpoint;
use quantkit_io::safetensors::SafetensorsFile;
use quantkit_io::source::ModelSource;
use quantkit_quant::{convert as run_convert, ConvertOptions, Recipe};
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

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// HF checkpoint folder (config.json + safetensors + tokenizer.json) or a .gguf file.
    pub input: PathBuf,
    /// Output type.
    #[arg(long = "type", short = 't', value_parser = parse_type, default_value = "f16")]
    pub ty: GgmlType,
    /// Output .gguf path.
    #[arg(long, short)]
    pub output: PathBuf,
    /// Set tokenizer.ggml.pre instead of detecting it from the tokenizer.
    #[arg(long)]
    pub tokenizer_pre: Option<String>,
    /// Give every weight matrix the requested type, the output projection / tied embedding included
    /// (llama-quantize's --pure).
    #[arg(long)]
    pub pure: bool,
}

pub fn convert(ctx: &Ctx, a: &ConvertArgs) -> Result<()> {
    let src = ModelSource::open(&a.input)?;
    let recipe = if a.pure { Recipe::pure(a.ty) } else { Recipe::for_type(a.ty) };
    let opts = ConvertOptions { recipe, tokenizer_pre: a.tokenizer_pre.clone() };
    let total: u64 = src.tensors()?.iter().map(|t| t.numel()).sum();
    let pb = bar(ctx.progress, total, "converting", false);
    let report = run_convert(&src, &a.output, &opts, &|done, _| pb.set_position(done))?;
    pb.finish_and_clear();
    if ctx.json {
        let mut j = serde_json::to_value(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        j["peak_rss_mb"] = json!(peak_rss_mb());
        println!("{}", serde_json::to_string_pretty(&j).map_err(|e| Error::Invalid(e.to_string()))?);
        return Ok(());
    }
    let mut counts: std::collections::BTreeMap<String, (usize, u64)> = Default::default();
    for t in &report.tensors {
        let e = counts.entry(t.ty.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.dims.iter().product::<u64>();
    }
    println!(
        "wrote {}: {} tensors, {:.1} MB ({:.3} bits/weight) from {:.1} MB in {:.2} s ({:.0} MB/s of input, peak RSS {:.0} MB)",
        report.output.display(),
        report.tensors.len(),
        report.output_bytes as f64 / 1e6,
        report.bits_per_weight,
        report.input_bytes as f64 / 1e6,
        report.seconds,
        report.input_bytes as f64 / 1e6 / report.seconds.max(1e-9),
        peak_rss_mb().unwrap_or(0.0)
    );
    for (ty, (n, params)) in counts {
        println!("  {ty:>5}: {n:>4} tensors, {params:>12} weights");
    }
    for t in report.tensors.iter().filter(|t| t.note.is_some()) {
        println!("  fallback {}: {}", t.name, t.note.as_deref().unwrap_or(""));
    }
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
    /// The .gguf file to export.
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
    let report = run_export(&a.input, &a.output, &opts, &|done| pb.set_position(done))?;
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
