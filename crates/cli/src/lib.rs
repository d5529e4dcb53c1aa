//! The `quantkit` command line. Each subcommand is a thin layer over the library crates; every
//! error is printed as one clear message (and as JSON with `--json`) with a non-zero exit code.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # HF checkpoint → GGUF that llama.cpp / Ollama load as is
  quantkit convert ./SmolLM2-135M-Instruct --type q8_0 -o smollm2-q8_0.gguf
  # Re-quantize a GGUF, see what is inside
  quantkit convert model-f16.gguf --type q4_0 -o model-q4_0.gguf
  quantkit inspect model-q4_0.gguf
  quantkit inspect ./SmolLM2-135M-Instruct --json
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
        after_help = "Types: f32, f16, bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k.\n\
Norms and biases stay f32. With a quantized type the output projection (or the tied token\n\
embedding) gets q6_k (q8_0 when its rows are not 256-aligned) unless --pure. Rows that are not\n\
whole blocks fall back (q4_k → q5_0, q5_k → q5_1, q6_k → q8_0, otherwise f16), listed in the output\n\
and in the file's `quantkit.fallbacks` metadata. Mixes such as q4_k_m are not implemented yet.\n\n\
Example:\n  quantkit convert ./SmolLM2-135M-Instruct --type q4_k -o smollm2-q4_k.gguf"
    )]
    Convert(commands::ConvertArgs),
    /// Show the metadata and tensors of a GGUF file, a safetensors file or an HF folder.
    #[command(
        after_help = "Example:\n  quantkit inspect model.gguf --json | jq '.tensors[] | select(.type==\"f16\")'"
    )]
    Inspect(commands::InspectArgs),
    /// Dequantize a GGUF into a Hugging Face folder (safetensors + config + tokenizer).
    #[command(
        name = "export-hf",
        after_help = "Example:\n  quantkit export-hf SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2-hf"
    )]
    ExportHf(commands::ExportArgs),
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
        Command::ExportHf(a) => commands::export_hf(&ctx, a),
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
