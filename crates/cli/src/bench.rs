//! `quantkit bench`: prompt-processing and generation speed of a model file, against this
//! machine's measured memory bandwidth and (with `--peer`) llama.cpp on the same file, same run.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use quantkit_core::{Error, Result};
use quantkit_engine::Model;
use quantkit_io::source::ModelSource;
use serde_json::json;

use crate::commands::{peak_rss_mb, Ctx};
use crate::eval::WeightArgs;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A .gguf file (or an HF folder, run in f32).
    pub model: PathBuf,
    /// Prompt tokens processed in one batch (0: skip).
    #[arg(short = 'p', long = "prompt", default_value_t = 512)]
    pub prompt: usize,
    /// Tokens generated one at a time (0: skip).
    #[arg(short = 'n', long = "gen", default_value_t = 128)]
    pub gen: usize,
    /// Timed repetitions of each test (the best is reported, after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// MiB per array of the bandwidth measurement (keep it ≫ the last-level cache).
    #[arg(long, default_value_t = 512)]
    pub bw_mib: usize,
    /// Also measure llama.cpp (through llama-cpp-python, scripts/llamacpp_bench.py) on the same
    /// file with the same thread count and sizes.
    #[arg(long)]
    pub peer: bool,
    /// Python with llama-cpp-python for --peer (scripts/setup-python.sh makes .venv).
    #[arg(long, default_value = ".venv/bin/python")]
    pub python: PathBuf,
    #[command(flatten)]
    pub weights: WeightArgs,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn peer(a: &BenchArgs, threads: usize) -> Result<serde_json::Value> {
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/llamacpp_bench.py"));
    let out = std::process::Command::new(&a.python)
        .arg(&script)
        .args(["-p", &a.prompt.to_string(), "-n", &a.gen.to_string()])
        .args(["--threads", &threads.to_string(), "--reps", &a.reps.to_string()])
        .arg(&a.model)
        .output()
        .map_err(|e| Error::Invalid(format!("--peer: cannot run {}: {e}", a.python.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).ok_or_else(|| {
        Error::Invalid(format!(
            "--peer: llama.cpp gave no result (exit {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().rev().take(3).collect::<Vec<_>>().join(" | ")
        ))
    })?;
    serde_json::from_str(line).map_err(|e| Error::Invalid(format!("--peer: bad output {line:?}: {e}")))
}

pub fn bench(ctx: &Ctx, a: &BenchArgs) -> Result<()> {
    let threads = rayon::current_num_threads();
    let isa = quantkit_kernels::Isa::detect();
    let src = a.weights.rotation.apply(ModelSource::open(&a.model)?)?;
    let file_bytes = std::fs::metadata(&a.model).map(|m| if m.is_file() { m.len() } else { 0 }).unwrap_or(0);
    let t = Instant::now();
    let model = Model::load_with(&src, a.weights.mode())?;
    let load_s = t.elapsed().as_secs_f64();
    drop(src);
    let vocab = model.vocab_size() as u64;
    let mut seed = 1234u64;
    let tokens: Vec<u32> =
        (0..a.prompt.max(a.gen + 1)).map(|_| (splitmix(&mut seed) % vocab) as u32).collect();
    let mut cache = model.new_cache(a.prompt + a.gen + 8);
    let reps = a.reps.max(1);
    let mut pp_s = None;
    if a.prompt > 0 {
        if ctx.progress {
            eprintln!("pp{}: {} runs…", a.prompt, reps + 1);
        }
        let mut best = f64::INFINITY;
        for i in 0..=reps {
            cache.clear();
            let t = Instant::now();
            model.forward(&tokens[..a.prompt], &mut cache, a.prompt - 1, None)?;
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        pp_s = Some(best);
    }
    let mut tg_s = None;
    if a.gen > 0 {
        if ctx.progress {
            eprintln!("tg{}: {} runs…", a.gen, reps + 1);
        }
        let mut best = f64::INFINITY;
        for i in 0..=reps {
            cache.clear();
            model.forward(&tokens[..1], &mut cache, 0, None)?;
            let t = Instant::now();
            for tok in &tokens[1..=a.gen] {
                model.forward(std::slice::from_ref(tok), &mut cache, 0, None)?;
            }
            if i > 0 {
                best = best.min(t.elapsed().as_secs_f64());
            }
        }
        tg_s = Some(best);
    }
    // Peak RSS of the model run itself, before the bandwidth arrays are allocated.
    let rss = peak_rss_mb();
    if ctx.progress {
        eprintln!("measuring memory bandwidth ({} MiB arrays)…", a.bw_mib);
    }
    let bw = quantkit_kernels::bw::measure(a.bw_mib << 20, 3);
    // Bytes one generated token reads: the weights, plus (on average over the run) the KV cache.
    let c = &model.cfg;
    let weights = model.weight_bytes_per_token();
    let kv_row = 2 * c.num_layers * c.n_kv_heads * c.head_dim * 4;
    let kv_avg = kv_row * (1 + a.gen as u64 / 2);
    let per_token = weights + kv_avg;
    let pp_tps = pp_s.map(|s| a.prompt as f64 / s);
    let tg_tps = tg_s.map(|s| a.gen as f64 / s);
    let gbs = tg_tps.map(|t| t * per_token as f64 / 1e9);
    let peer = if a.peer { Some(peer(a, threads)?) } else { None };
    let ratio =
        |ours: Option<f64>, key: &str| -> Option<f64> { Some(ours? / peer.as_ref()?.get(key)?.as_f64()?) };
    if ctx.json {
        println!(
            "{}",
            json!({
                "model": a.model, "threads": threads, "isa": isa.name(),
                "weights": match a.weights.mode() { quantkit_engine::WeightMode::Native => "native", _ => "dequantized" },
                "weight_types": model.weight_types(),
                "file_bytes": file_bytes, "load_s": load_s,
                "pp": a.prompt, "pp_tok_s": pp_tps, "tg": a.gen, "tg_tok_s": tg_tps,
                "weight_bytes_per_token": weights, "kv_bytes_per_token_avg": kv_avg,
                "effective_gb_s": gbs,
                "bandwidth": bw,
                "fraction_of_triad": gbs.map(|g| g / bw.triad_gbs),
                "fraction_of_read": gbs.map(|g| g / bw.read_gbs),
                "kv_cache_bytes": cache.bytes(),
                "peak_rss_mb": rss,
                "peer": peer,
                "pp_vs_peer": ratio(pp_tps, "pp_tok_s"),
                "tg_vs_peer": ratio(tg_tps, "tg_tok_s"),
            })
        );
        return Ok(());
    }
    let types: Vec<String> = model.weight_types().iter().map(|(t, n)| format!("{t}×{n}")).collect();
    println!(
        "model    {} ({:.1} MB; linears: {})",
        a.model.display(),
        file_bytes as f64 / 1e6,
        types.join(" ")
    );
    println!(
        "machine  {threads} threads, {} · bandwidth: triad {:.1} GB/s, read {:.1} GB/s",
        isa.name(),
        bw.triad_gbs,
        bw.read_gbs
    );
    let vs = |r: Option<f64>, key: &str| match (
        r,
        peer.as_ref().and_then(|p| p.get(key)).and_then(|v| v.as_f64()),
    ) {
        (Some(r), Some(p)) => format!("   llama.cpp {p:.1} tok/s → {r:.2}×"),
        _ => String::new(),
    };
    if let Some(t) = pp_tps {
        println!("pp{:<5}  {:>8.1} tok/s{}", a.prompt, t, vs(ratio(pp_tps, "pp_tok_s"), "pp_tok_s"));
    }
    if let (Some(t), Some(g)) = (tg_tps, gbs) {
        println!("tg{:<5}  {:>8.1} tok/s{}", a.gen, t, vs(ratio(tg_tps, "tg_tok_s"), "tg_tok_s"));
        println!(
            "         {:.1} MB read per token ({:.1} MB weights + {:.2} MB KV) → {:.1} GB/s = {:.0} % of triad, {:.0} % of read bandwidth",
            per_token as f64 / 1e6,
            weights as f64 / 1e6,
            kv_avg as f64 / 1e6,
            g,
            100.0 * g / bw.triad_gbs,
            100.0 * g / bw.read_gbs
        );
    }
    println!(
        "memory   peak RSS {} during the model runs (file {:.1} MB, KV cache {:.1} MB)",
        rss.map(|r| format!("{r:.0} MB")).unwrap_or_else(|| "?".into()),
        file_bytes as f64 / 1e6,
        cache.bytes() as f64 / 1e6,
    );
    Ok(())
}
