//! quantkit-cli: the `quantkit` command line. Each subcommand is a thin layer over the library
//! crates; every error is printed as one clear message (and as JSON with `--json`) with a non-zero
//! exit code.
//!
//! * `commands` — `convert`, `inspect`, `export-hf`.
//! * `eval` — `ppl`, `generate`, `kld`: the engine from the command line.
//! * `quantize` — `quantize`: calibrated quantization (RTN, GPTQ, AWQ) into GGUF and integer
//!   checkpoints.
//! * `sweep` — many recipes on one model → one table and two plots of accuracy vs bits.
//! * `batch` — unattended quantization jobs from a job file, with quality gates, manifests, resume
//!   and shards.
//! * `jobs` — what `sweep` and `batch` share: recipe strings, quantizing one recipe, scoring,
//!   hashing.
//! * `bench` — prompt-processing and generation speed against the measured memory bandwidth.
//! * `plot` — the sweep plots (SVG and a dependency-free PNG).
//! * `progress` — progress bars on stderr.
//! * [`fuzzing`] — the fuzz harness: one entry per parser of untrusted input.

mod batch;
mod bench;
mod commands;
mod eval;
pub mod fuzzing;
mod jobs;
mod plot;
mod progress;
mod quantize;
mod sweep;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # HF checkpoint → GGUF that llama.cpp / Ollama load as is (llama-quantize's mixes)
  quantkit convert ./SmolLM2-135M-Instruct --type q4_k_m -o smollm2-q4_k_m.gguf
  quantkit convert ./SmolLM2-135M-Instruct --type q4_k_m --imatrix imatrix.gguf -o out.gguf
  # Re-quantize a GGUF, see what is inside
  quantkit convert model-f16.gguf --type q4_0 -o model-q4_0.gguf
  quantkit inspect model-q4_0.gguf
  quantkit inspect ./SmolLM2-135M-Instruct --json
  # Calibrated: GPTQ into a GPTQ checkpoint and a GPTQ-improved Q4_K_M GGUF
  quantkit quantize ./SmolLM2-135M-Instruct --method gptq --calib corpus.txt --format gptq --format gguf:q4_k_m -o out/
  # GGUF → HF folder (dequantized, q/k permutation undone)
  quantkit export-hf model.gguf -o ./model-hf --dtype bf16";

#[derive(Debug, Parser)]
#[command(name = "quantkit", version, about = "Turn Hugging Face checkpoints into small, fast, accurate quantized files", after_help = EXAMPLES)]
struct Cli {
    /// Worker threads (default: all cores). Outputs are identical whatever the count.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an HF checkpoint folder or a GGUF file to a GGUF of the given type.
    #[command(
        after_help = "Types and mixes are llama-quantize's: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k,\n\
q3_k_s, q3_k_m (= q3_k), q3_k_l, q4_k_s, q4_k_m (= q4_k), q5_k_s, q5_k_m (= q5_k), q6_k. A mix gives\n\
each tensor the type llama-quantize would (attn_v/ffn_down bumps by layer, output q6_k, fallbacks\n\
for rows that are not whole blocks: q4_k → q5_0, q5_k → q5_1, q6_k → q8_0, q2_k/q3_k → q4_0, else\n\
f16; each fallback is listed and stored in `quantkit.fallbacks`). Norms and biases stay f32.\n\
`--dry-run` shows the plan; `--print-recipe` shows the recipe as TOML (edit it, pass it back\n\
with --recipe).\n\n\
Examples:\n  quantkit convert ./SmolLM2-135M-Instruct --type q4_k_m -o smollm2-q4_k_m.gguf\n  \
quantkit convert model-f16.gguf -t q3_k_m --imatrix imatrix.gguf -o model-q3_k_m.gguf\n  \
quantkit convert ./model -t q4_k_m --tensor-type 'attn_v=q8_0' --output-tensor-type q8_0 -o out.gguf\n  \
quantkit convert ./model -t q2_k --dry-run"
    )]
    Convert(commands::ConvertArgs),
    /// Show the metadata and tensors of a GGUF file, a safetensors file or an HF folder.
    #[command(
        after_help = "Example:\n  quantkit inspect model.gguf --json | jq '.tensors[] | select(.type==\"f16\")'"
    )]
    Inspect(commands::InspectArgs),
    /// Calibrated quantization: RTN, GPTQ or AWQ into GGUF, GPTQ v1/v2, AWQ and compressed-tensors.
    #[command(
        long_about = "Calibrated quantization. A calibration text is sampled once (seeded), the model runs layer by\n\
layer through the engine, and each linear layer is quantized with its input statistics (GPTQ's\n\
Hessian, AWQ's activation scales); quantized layers feed the next (true-sequential). Integer\n\
formats (gptq, gptq-v2, awq, compressed-tensors) share one quantization; each gguf:<mix> gets\n\
GPTQ on the mix's own types (k-quant scales searched inside GPTQ's column loop), or with\n\
--method rtn an imatrix from the calibration text. OUT/report.json has the per-layer output\n\
errors ‖WX − QX‖² of the method and of RTN. The pass holds one block's weights at a time (peak\n\
memory does not grow with the number of layers) and checkpoints every finished block in\n\
OUT/.quantkit-work, so --resume continues a killed run (the output is byte-identical).",
        after_help = "Examples:\n  quantkit quantize ./SmolLM2 --method gptq --bits 4 --group 128 --calib tinyshakespeare.txt \\\n      \
--format gptq --format compressed-tensors -o out/\n  \
quantkit quantize ./SmolLM2 --method gptq --calib corpus/ --format gguf:q4_k_m -o out/\n  \
quantkit quantize ./SmolLM2 --method awq --calib corpus.txt --format awq -o out/ --preset quick\n  \
quantkit quantize ./SmolLM2 --method rtn --calib corpus.txt --format gguf:q4_k_m --imatrix -o out/\n  \
# QuaRot: rotate first (fused), then GPTQ; W4A4 with the online R4 (compressed-tensors)\n  \
quantkit quantize ./SmolLM2 --rotate hadamard --method gptq --bits 4 --group -1 --calib corpus.txt --format gptq -o out/\n  \
quantkit quantize ./SmolLM2 --rotate quarot --method gptq --bits 4 --group -1 --calib corpus.txt --format ct-w4a4 -o out/\n  \
# a big model: activations beyond 2 GB go to temp files in out/; after a crash, continue\n  \
quantkit quantize model.gguf --method gptq --calib corpus.txt --format gguf:q3_k_m --mem-budget 2G -o out/\n  \
quantkit quantize model.gguf --method gptq --calib corpus.txt --format gguf:q3_k_m --mem-budget 2G -o out/ --resume"
    )]
    Quantize(quantize::QuantizeArgs),
    /// Dequantize a GGUF into a Hugging Face folder (safetensors + config + tokenizer).
    #[command(
        name = "export-hf",
        after_help = "Example:\n  quantkit export-hf SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2-hf"
    )]
    ExportHf(commands::ExportArgs),
    /// Perplexity of a model on a text, with the engine (llama-perplexity's method or HF's).
    #[command(
        after_help = "Examples:\n  quantkit ppl model.gguf --text wiki.test.raw --ctx 512 --chunks 40\n  \
quantkit ppl ./hf-model --text wiki.test.raw --mode hf --ctx 2048 --json"
    )]
    Ppl(eval::PplArgs),
    /// KL divergence of a model's next-token distributions from a base model's (llama-perplexity's
    /// --kl-divergence statistics).
    #[command(
        after_help = "Examples:\n  quantkit kld model-q4_0.gguf --base model-f32.gguf --text wiki.test.raw --chunks 20\n  \
quantkit kld --base model-f32.gguf --text wiki.test.raw --save-base base.qklogits   # QKLOGIT2\n  \
quantkit kld model-q4_k_m.gguf --base base.qklogits\n  \
quantkit kld --base model-f32.gguf --text wiki.test.raw --save-base base.bin --base-format llama\n  \
llama-perplexity -m model-q4_k_m.gguf --kl-divergence-base base.bin --kl-divergence   # and back:\n  \
quantkit kld model-q4_k_m.gguf --base llama-base.bin    # a file from llama-perplexity --kl-divergence-base\n\n\
A QKLOGIT2 base keeps per position the base's top K (default 64) tokens and 64 tokens sampled from\n\
the rest (f16 log-probs, 776 bytes whatever the vocabulary): its KL is an unbiased estimate of the\n\
exact one; with --tail-samples 0 the rest is one merged category and the KL a lower bound (error\n\
measured in docs/evaluation.md). Same-top-token rate, PPL and delta-p stay exact. --top-k 0 saves\n\
every logit (QKLOGIT1, 2 bytes per vocabulary entry)."
    )]
    Kld(eval::KldArgs),
    /// Generate text from a prompt (greedy by default).
    #[command(after_help = "Example:\n  quantkit generate stories260K/ -p 'Once upon a time' -n 32")]
    Generate(eval::GenerateArgs),
    /// Prompt-processing and generation speed, against the measured memory bandwidth.
    #[command(
        long_about = "Prompt-processing (one batch of -p tokens) and generation (-n tokens, one at a time) speed of a\n\
model, with the bytes each generated token reads, the effective GB/s and the fraction of this\n\
machine's memory bandwidth (a STREAM triad and a read-only pass, measured in the same command).\n\
--peer runs llama.cpp (llama-cpp-python) on the same file with the same threads and sizes.",
        after_help = "Examples:\n  quantkit bench model-q4_k_m.gguf\n  quantkit --threads 2 bench model-q4_0.gguf -p 512 -n 128 --peer\n  \
quantkit bench model.gguf --json | jq .tg_tok_s"
    )]
    Bench(bench::BenchArgs),
    /// Accuracy vs bits: quantize many recipes, score each against the base (PPL, KLD, same top
    /// token), write a table and plots.
    #[command(
        long_about = "Quantize one model with many recipes and score each against the unquantized model on one text:\n\
PPL ± error, KLD, same-top-token rate, file bytes, bits per weight, times. The base log-probabilities\n\
are computed once; calibration samples are drawn once and the fp imatrix collected once (GGUF mixes\n\
use it when --calib is given). Writes DIR/results.{csv,json,md}, DIR/plot.{svg,png} (PPL and KLD vs\n\
bits per weight, Pareto front marked) and the quantized files under DIR/models/.\n\n\
Recipes: a mix (q8_0, q6_k, q5_k_m, q4_k_m, q4_0, q3_k_m, q2_k, ...), gptq:<mix> (GPTQ-fed GGUF),\n\
rtn|gptq|awq|mse:<bits>:<group>[:sym|asym] (integer checkpoints), the compressed-tensors presets\n\
w8a16, w8a8, w4a4, fp8, fp8-dynamic, nvfp4a16, bitsandbytes nf4 / nf4-dq, or a recipe .toml file\n\
(`quantkit convert --type q4_k_m --print-recipe > my.toml`, then edit tensor_types). Prefixes:\n\
hadamard:<recipe> (QuaRot's rotation fused first), quarot:<recipe> (plus the online R4;\n\
compressed-tensors only), smoothquant[@ALPHA]:<integer recipe>.",
        after_help = "Examples:\n  quantkit sweep ./SmolLM2 --recipes q8_0,q6_k,q4_k_m,q4_0,q3_k_m,q2_k --text wiki.test.raw --chunks 20 -o sweep/\n  \
quantkit sweep ./SmolLM2 --recipes q4_k_m,gptq:q4_k_m,gptq:4:128,awq:4:128,my-mix.toml \\\n      --text wiki.test.raw --calib shakespeare.txt --samples 32 --seqlen 512 -o sweep/\n  \
quantkit sweep ./SmolLM2 --recipes gptq:4:128,hadamard:gptq:4:128,w4a4,quarot:gptq:w4a4 \\\n      --text wiki.test.raw --calib shakespeare.txt -o rotations/"
    )]
    Sweep(sweep::SweepArgs),
    /// Unattended quantization jobs from a TOML file: quality gates, manifests, resume, shards.
    #[command(
        long_about = "Run the jobs of a TOML job file (models × recipes × outputs × quality gates), one line per job.\n\
Each finished job leaves OUT/manifests/<job>.json (input hashes, recipe, tool version, metrics,\n\
output sha256); a rerun skips jobs whose manifest and output are intact, so a killed run resumes.\n\
Exit status 1 when any job errors or fails a gate (named on stderr and in OUT/report.json).\n\
--shard I/N runs every N-th job (a CI matrix or a Kubernetes indexed Job); `batch merge` joins the\n\
shards' manifests into one report. See docs/batch.md for the file format.",
        after_help = "Examples:\n  quantkit batch jobs.toml\n  quantkit batch jobs.toml --shard 2/3 --out out-2\n  quantkit batch merge out-1 out-2 out-3 -o report.json"
    )]
    Batch(batch::BatchArgs),
}

/// Run the CLI and turn any error into a message and exit code 1.
pub fn main() -> ExitCode {
    // Behave like other command-line tools when stdout is a closed pipe (`quantkit inspect … | head`):
    // exit quietly instead of panicking on the failed write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global() {
            eprintln!("error: cannot set up {n} threads: {e}");
            return ExitCode::FAILURE;
        }
    }
    let ctx = commands::Ctx { json: cli.json, progress: !cli.quiet && !cli.json };
    let result = match &cli.command {
        Command::Convert(a) => commands::convert(&ctx, a),
        Command::Inspect(a) => commands::inspect(&ctx, a),
        Command::Quantize(a) => quantize::quantize(&ctx, a),
        Command::ExportHf(a) => commands::export_hf(&ctx, a),
        Command::Ppl(a) => eval::ppl(&ctx, a),
        Command::Generate(a) => eval::generate(&ctx, a),
        Command::Kld(a) => eval::kld(&ctx, a),
        Command::Bench(a) => bench::bench(&ctx, a),
        Command::Sweep(a) => sweep::sweep(&ctx, a),
        Command::Batch(a) => batch::batch(&ctx, a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
            }
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
