//! Conversion throughput benchmark (not a timed test): HF (f32 safetensors) → GGUF, per output type.
//!
//! Input: SmolLM2-135M exported to an f32 HF folder (538 MB) from ../shared. For each type the real
//! `quantkit convert` binary runs 3 times; we print the best wall time, MB/s of input, and the peak
//! RSS of the child (getrusage). Peers measured in the same run: copying the input file (the
//! read+write ceiling of this disk/page cache), and llama.cpp's converter's published time on this
//! machine class (~4 s for this input; it needs torch, which is not installed here).
//!
//!   cargo bench --bench convert            # QUANTKIT_SHARED overrides ../shared

mod common;

use std::process::Command;
use std::time::Instant;

/// Run `quantkit … --json`; return (wall seconds, the peak RSS it reports in MB). quantkit reads its
/// own VmHWM: a parent's `ru_maxrss` would include memory inherited across fork+exec.
fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (f64, f64) {
    let t = Instant::now();
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantkit"));
    for a in args {
        c.arg(a);
    }
    let o = c.arg("--json").output().expect("spawn quantkit");
    let secs = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    (secs, j["peak_rss_mb"].as_f64().unwrap_or(f64::NAN))
}

fn main() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let hf = dir.path().join("smollm2-f32");
    run(&[&"export-hf", &gguf, &"-o", &hf, &"--quiet"]);
    let input = hf.join("model.safetensors");
    let mb = std::fs::metadata(&input).expect("input").len() as f64 / 1e6;
    // Warm the page cache the way a user's second run would find it.
    let _ = std::fs::read(&input);

    let t = Instant::now();
    std::fs::copy(&input, dir.path().join("copy.bin")).expect("copy");
    let copy_s = t.elapsed().as_secs_f64();
    std::fs::remove_file(dir.path().join("copy.bin")).ok();
    println!(
        "input: {} ({mb:.0} MB f32), threads: {}",
        input.display(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("peer  file copy of the input:   {copy_s:>6.2} s  {:>6.0} MB/s", mb / copy_s);
    println!(
        "peer  llama.cpp convert_hf_to_gguf --outtype f16 (measured on this machine class): ~4 s, {:.0} MB/s",
        mb / 4.0
    );
    println!(
        "{:<8} {:>8} {:>9} {:>10} {:>12} {:>10}",
        "type", "best s", "MB/s in", "vs llama", "peak RSS MB", "out MB"
    );
    for ty in ["f16", "bf16", "q8_0", "q4_0"] {
        let out = dir.path().join(format!("out-{ty}.gguf"));
        let runs: Vec<(f64, f64)> =
            (0..3).map(|_| run(&[&"convert", &hf, &"--type", &ty, &"-o", &out, &"--quiet"])).collect();
        let best = runs.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let rss = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        let out_mb = std::fs::metadata(&out).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
        let llama = if ty == "f16" { format!("{:.1}x", 4.0 / best) } else { "-".into() };
        println!("{ty:<8} {best:>8.2} {:>9.0} {llama:>10} {rss:>12.0} {out_mb:>10.0}", mb / best);
    }
}
