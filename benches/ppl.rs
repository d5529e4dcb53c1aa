//! Perplexity throughput: `quantkit ppl` vs llama.cpp (llama-perplexity's method through
//! llama-cpp-python, `scripts/llamacpp_ppl.py`) on the same f32 SmolLM2 GGUF, same text, same
//! thread count, in one run. Wall time of the whole command on both sides (load + tokenize + eval).
//! Not a timed test.
//!
//!   cargo bench --bench ppl            # QUANTKIT_BENCH_CHUNKS (default 8)

mod common;

use std::process::Command;
use std::time::Instant;

fn main() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let text = common::shared().join("data/wikitext-2-raw/wiki.test.raw");
    let chunks = std::env::var("QUANTKIT_BENCH_CHUNKS").unwrap_or_else(|_| "8".into());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let dir = tempfile::tempdir().expect("tmp");
    let f32g = dir.path().join("smollm2-f32.gguf");
    let qk = env!("CARGO_BIN_EXE_quantkit");
    let st = Command::new(qk)
        .args(["convert", "-t", "f32", "--quiet", "-o"])
        .arg(&f32g)
        .arg(&gguf)
        .output()
        .expect("convert");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));

    let t = Instant::now();
    let o = Command::new(qk)
        .arg("ppl")
        .arg(&f32g)
        .arg("--text")
        .arg(&text)
        .args(["--chunks", &chunks, "--json", "--threads", &threads.to_string()])
        .output()
        .expect("ppl");
    let ours_s = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let tokens = j["chunks"].as_f64().unwrap_or(0.0) * j["ctx"].as_f64().unwrap_or(0.0);
    println!("SmolLM2-135M f32 GGUF, wiki.test.raw, ctx 512, {chunks} chunks, {threads} threads");
    println!(
        "quantkit ppl   {ours_s:>7.2} s  {:>6.0} tokens/s  PPL {:.4}  peak RSS {:.0} MB",
        tokens / ours_s,
        j["ppl"].as_f64().unwrap_or(f64::NAN),
        j["peak_rss_mb"].as_f64().unwrap_or(f64::NAN)
    );

    let py = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/llamacpp_ppl.py");
    if !py.exists() {
        println!("llama.cpp peer not installed (bash scripts/setup-python.sh --with-llama-cpp)");
        return;
    }
    let t = Instant::now();
    let o = Command::new(&py)
        .arg(&script)
        .arg("--text")
        .arg(&text)
        .args(["--chunks", &chunks, "--threads", &threads.to_string()])
        .arg(&f32g)
        .output()
        .expect("python");
    let llama_s = t.elapsed().as_secs_f64();
    if !o.status.success() {
        println!("llama.cpp peer failed: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    let line = String::from_utf8_lossy(&o.stdout);
    let l: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or("{}")).expect("json");
    println!(
        "llama.cpp      {llama_s:>7.2} s  {:>6.0} tokens/s  PPL {:.4}",
        tokens / llama_s,
        l["ppl"].as_f64().unwrap_or(f64::NAN)
    );
    println!("ratio (llama.cpp time / quantkit time): {:.2}x", llama_s / ours_s);
}
