//! Time to a Q4_K_M (and Q3_K_M, Q2_K) GGUF, ours vs llama.cpp's, measured in the same run.
//! Not a timed test: it prints the numbers.
//!
//! Input: SmolLM2-135M from ../shared, exported to an f32 HF folder (538 MB) and to an F16 GGUF.
//! * quantkit: `convert HF → mix` in one streaming pass, and `convert F16 GGUF → mix`;
//! * llama.cpp: `convert_hf_to_gguf.py --outtype f16` (its converter, needs torch) followed by
//!   `llama_model_quantize` (what llama-quantize runs), and the quantize step alone from the same
//!   F16 GGUF. Peers run when `bash scripts/setup-bench.sh` has installed them; otherwise only our
//!   side is printed.
//!
//! Both sides use every core (`--threads` / `nthread` default). Best of 3 for quantize steps, of 2
//! for llama.cpp's converter (its Python start-up and torch import are part of what users wait for).
//!
//!   cargo bench --bench quantize          # QUANTKIT_SHARED overrides ../shared

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("quantkit")
}

/// Wall seconds of a command that must succeed.
fn timed(c: &mut Command) -> f64 {
    let t = Instant::now();
    let o = c.output().expect("spawn");
    let s = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{:?} failed:\n{}", c, String::from_utf8_lossy(&o.stderr));
    s
}

fn best(n: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn quantkit(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quantkit"));
    for a in args {
        c.arg(a);
    }
    c.arg("--quiet");
    c
}

fn main() {
    let Some(gguf) = common::smollm2_gguf() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let hf = dir.path().join("hf");
    timed(&mut quantkit(&[&"export-hf", &gguf, &"-o", &hf]));
    let f16 = dir.path().join("f16.gguf");
    timed(&mut quantkit(&[&"convert", &hf, &"-t", &"f16", &"-o", &f16]));
    let _ = std::fs::read(hf.join("model.safetensors")); // warm the page cache for both sides

    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bench_py = cache().join("bench-venv/bin/python");
    let convert_py = cache().join("llama.cpp-src/convert_hf_to_gguf.py");
    let test_py = root.join(".venv/bin/python");
    let have_convert = bench_py.exists() && convert_py.exists();
    let have_quantize = test_py.exists()
        && Command::new(&test_py).args(["-c", "import llama_cpp"]).output().is_ok_and(|o| o.status.success());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "SmolLM2-135M, f32 HF folder 538 MB; {threads} threads; best of 3 (llama.cpp convert: best of 2)"
    );

    let llama_convert = have_convert.then(|| {
        let out = dir.path().join("llama-f16.gguf");
        best(2, || {
            timed(
                Command::new(&bench_py)
                    .arg(&convert_py)
                    .arg(&hf)
                    .args(["--outtype", "f16", "--outfile"])
                    .arg(&out),
            )
        })
    });
    if let Some(s) = llama_convert {
        println!("peer  llama.cpp convert_hf_to_gguf.py --outtype f16: {s:.2} s");
    } else {
        println!("peer  llama.cpp converter not installed (bash scripts/setup-bench.sh)");
    }
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>14} {:>10} {:>10}",
        "mix", "ours HF", "llama conv+q", "ratio", "ours F16 GGUF", "llama q", "ratio"
    );
    for (mix, ftype) in [("q4_k_m", 15), ("q3_k_m", 12), ("q2_k", 10)] {
        let out = dir.path().join(format!("ours-{mix}.gguf"));
        let ours_hf = best(3, || timed(&mut quantkit(&[&"convert", &hf, &"-t", &mix, &"-o", &out])));
        let ours_gguf = best(3, || timed(&mut quantkit(&[&"convert", &f16, &"-t", &mix, &"-o", &out])));
        let llama_q = have_quantize.then(|| {
            let out = dir.path().join(format!("llama-{mix}.gguf"));
            best(3, || {
                let o = Command::new(&test_py)
                    .arg(root.join("scripts/llamacpp_quantize.py"))
                    .arg(&f16)
                    .arg(&out)
                    .arg(ftype.to_string())
                    .output()
                    .expect("spawn python");
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
                j["seconds"].as_f64().expect("seconds")
            })
        });
        let fmt = |v: Option<f64>| v.map(|s| format!("{s:.2} s")).unwrap_or_else(|| "-".into());
        let ratio = |peer: Option<f64>, ours: f64| {
            peer.map(|p| format!("{:.1}x", p / ours)).unwrap_or_else(|| "-".into())
        };
        let sum = llama_convert.zip(llama_q).map(|(a, b)| a + b);
        println!(
            "{mix:<8} {:>10} {:>12} {:>10} {:>14} {:>10} {:>10}",
            format!("{ours_hf:.2} s"),
            fmt(sum),
            ratio(sum, ours_hf),
            format!("{ours_gguf:.2} s"),
            fmt(llama_q),
            ratio(llama_q, ours_gguf)
        );
    }
    println!("ratio = llama.cpp time / quantkit time (higher is better for quantkit)");
}
