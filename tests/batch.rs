//! `quantkit batch` and `quantkit sweep` end to end on stories260K: resume after SIGKILL with the
//! same bytes as an uninterrupted run and no finished job redone, shards merging into the same
//! report as one run, gates failing loudly, and a sweep whose rows match `convert` + `kld` by hand.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn data(p: &str) -> PathBuf {
    shared().join("data").join(p)
}

/// Six jobs (GGUF mixes, a GPTQ-fed GGUF, integer checkpoints), small evaluation settings.
fn job_file(dir: &Path, gates: &str) -> PathBuf {
    let text = format!(
        r#"
[defaults]
text = "{text}"
ctx = 64
chunks = 3
calib = "{calib}"
samples = 6
seqlen = 64
gates = {{ {gates} }}

[[job]]
name = "gptq-int4"
model = "{model}"
recipe = "gptq:4:32"

[[job]]
name = "gptq-q4km"
model = "{model}"
recipe = "gptq:q4_k_m"
output = "gguf/gptq-q4_k_m.gguf"

[[matrix]]
models = ["{model}"]
recipes = ["q8_0", "q4_0", "q4_k_m", "awq:4:32"]
"#,
        text = data("wikitext-2-raw/wiki.test.raw").display(),
        calib = data("tinyshakespeare/input.txt").display(),
        model = stories().display(),
    );
    let p = dir.join("jobs.toml");
    std::fs::write(&p, text).expect("write jobs");
    p
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn outputs(out: &Path) -> Vec<(String, Vec<u8>)> {
    files(out)
        .into_iter()
        .filter(|(n, _)| !n.starts_with("manifests") && !n.starts_with(".cache") && !n.starts_with("report"))
        .collect()
}

fn batch(args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--threads", &"1", &"--quiet", &"batch"];
    a.extend_from_slice(args);
    quantkit(&a)
}

/// Lines of stderr that report a job as run (not skipped).
fn ran(stderr: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter(|l| l.starts_with('[') && l.contains(" bpw "))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .collect()
}

#[test]
fn batch_resumes_after_sigkill_with_identical_bytes_and_shards_merge_to_the_same_report() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let jobs = job_file(t.path(), "max_ppl_ratio = 2.0");

    // Uninterrupted reference run.
    let full = t.path().join("full");
    let o = batch(&[&jobs, &"--out", &full]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut first = ran(&o.stderr);
    first.sort();
    assert_eq!(first.len(), 6, "{}", String::from_utf8_lossy(&o.stderr));
    let reference = outputs(&full);
    assert_eq!(reference.iter().filter(|(n, _)| n.ends_with(".gguf")).count(), 4);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(full.join("report.json")).expect("report")).expect("json");
    assert_eq!(report["summary"]["ok"], 6);
    for j in report["jobs"].as_array().expect("jobs") {
        assert_eq!(j["sha256"].as_str().expect("sha").len(), 64);
        assert!(j["metrics"]["kld"].as_f64().expect("kld") >= 0.0);
    }

    // Killed with SIGKILL at growing delays, then resumed: same bytes, no finished job run twice.
    let mut kills = 0;
    for (i, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        let out = t.path().join(format!("killed{i}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_quantkit"))
            .args(["--threads", "1", "--quiet", "batch"])
            .arg(&jobs)
            .arg("--out")
            .arg(&out)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(delay_ms) {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().expect("wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let killed = child.wait_with_output().expect("output");
        let before = ran(&killed.stderr);
        let o = batch(&[&jobs, &"--out", &out]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let after = ran(&o.stderr);
        for j in &after {
            assert!(!before.contains(j), "job {j} ran twice (delay {delay_ms} ms)");
        }
        let mut all: Vec<String> = before.iter().chain(&after).cloned().collect();
        all.sort();
        assert_eq!(all, first, "delay {delay_ms} ms");
        let got = outputs(&out);
        assert_eq!(
            got.iter().map(|f| &f.0).collect::<Vec<_>>(),
            reference.iter().map(|f| &f.0).collect::<Vec<_>>(),
            "delay {delay_ms} ms"
        );
        for ((n, a), (_, b)) in got.iter().zip(&reference) {
            assert!(a == b, "{n} differs from the uninterrupted run (delay {delay_ms} ms)");
        }
        assert_eq!(read(&out.join("report.json")), read(&full.join("report.json")), "delay {delay_ms} ms");
    }
    assert!(kills >= 1, "no run was still going when killed");

    // Shards 1/3, 2/3, 3/3 as separate processes, merged: the single run's report.
    let mut dirs = vec![];
    for i in 1..=3 {
        let d = t.path().join(format!("shard{i}"));
        let o = batch(&[&jobs, &"--shard", &format!("{i}/3"), &"--out", &d]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(ran(&o.stderr).len(), 2);
        dirs.push(d);
    }
    let merged = t.path().join("merged.json");
    let o = batch(&[&"merge", &dirs[0], &dirs[1], &dirs[2], &"-o", &merged]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&merged), read(&full.join("report.json")));

    // A second run of the finished folder does nothing; a damaged output is redone.
    let o = batch(&[&jobs, &"--out", &full]);
    assert!(o.status.success());
    assert!(ran(&o.stderr).is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    let victim = full.join("stories260K-q4_0.gguf");
    let mut b = std::fs::read(&victim).expect("read");
    let n = b.len();
    b[n - 1] ^= 0xff;
    std::fs::write(&victim, &b).expect("damage");
    let o = batch(&[&jobs, &"--out", &full]);
    assert!(o.status.success());
    assert_eq!(ran(&o.stderr), vec!["stories260K-q4_0".to_string()]);
    assert!(outputs(&full) == reference, "the redone output differs");
}

#[test]
fn a_tight_gate_fails_the_batch_and_names_the_job_and_metric() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let jobs = job_file(t.path(), "max_kld = 0.02");
    let out = t.path().join("out");
    let o = batch(&[&jobs, &"--out", &out]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("job stories260K-q4_0: gate failed: kld"), "{err}");
    assert!(err.contains("> max_kld 0.02"), "{err}");
    // q8_0 passes the same gate.
    assert!(!err.contains("job stories260K-q8_0: gate failed"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report")).expect("json");
    assert!(report["summary"]["gate_failed"].as_u64().expect("n") >= 1);
    // Every output is still complete and valid (a gate failure is not an error of the job).
    assert_eq!(report["summary"]["errors"], 0);

    // A bad job file is refused with what and where.
    let bad = t.path().join("bad.toml");
    std::fs::write(&bad, "[[job]]\nname = \"x\"\nmodel = \"m\"\nrecipe = \"q4_k_m\"\nmax_kdl = 1\n")
        .expect("w");
    let o = batch(&[&bad]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("max_kdl"), "{err}");
}

#[test]
fn sweep_rows_match_convert_and_kld_by_hand() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let out = t.path().join("sweep");
    let text = data("wikitext-2-raw/wiki.test.raw");
    ok(&[
        &"--threads",
        &"1",
        &"--quiet",
        &"sweep",
        &stories(),
        &"--recipes",
        &"q8_0,q4_0,q4_k_m,rtn:4:32,gptq:4:32,awq:4:32",
        &"--text",
        &text,
        &"--ctx",
        &"64",
        &"--chunks",
        &"3",
        &"--calib",
        &data("tinyshakespeare/input.txt"),
        &"--samples",
        &"6",
        &"--seqlen",
        &"64",
        &"-o",
        &out,
    ]);
    for f in ["results.csv", "results.json", "results.md", "plot.svg", "plot.png"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_eq!(&std::fs::read(out.join("plot.png")).expect("png")[..8], b"\x89PNG\r\n\x1a\n");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).expect("results")).expect("json");
    let rows = r["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().any(|x| x["pareto_kld"] == true));
    assert_eq!(std::fs::read_to_string(out.join("results.csv")).expect("csv").lines().count(), 7);

    // q4_0 by hand: convert with the sweep's imatrix, then kld against the base model.
    let hand = t.path().join("q4_0.gguf");
    // (From inside the sweep folder: the GGUF records the imatrix path as given, like llama-quantize.)
    let o = Command::new(env!("CARGO_BIN_EXE_quantkit"))
        .current_dir(&out)
        .args(["--quiet", "convert"])
        .arg(stories().canonicalize().expect("stories"))
        .args(["--type", "q4_0", "--imatrix", "imatrix.gguf", "-o"])
        .arg(&hand)
        .output()
        .expect("convert");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read(&hand).expect("hand") == std::fs::read(out.join("models/q4_0.gguf")).expect("sweep"),
        "convert by hand differs from the sweep's file"
    );
    let row = rows.iter().find(|x| x["recipe"] == "q4_0").expect("q4_0 row");
    // Against the saved base log-probabilities (stored as llama.cpp does, 16 bits a value): exact.
    let o = ok(&[&"--threads", &"1", &"--json", &"kld", &hand, &"--base", &out.join("base.logits")]);
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).expect("kld json");
    for (a, b) in [("ppl", "ppl"), ("ppl_err", "ppl_err"), ("kld", "mean_kld"), ("same_top_p", "same_top_p")]
    {
        let (x, y) = (row[a].as_f64().expect("row"), k[b].as_f64().expect("kld"));
        assert!(x == y, "{a}: sweep {x} vs by hand {y}");
    }
    // Against the base model itself (exact log-probabilities): the same within the 16-bit storage.
    let o = ok(&[
        &"--threads",
        &"1",
        &"--json",
        &"kld",
        &hand,
        &"--base",
        &stories(),
        &"--text",
        &text,
        &"--ctx",
        &"64",
        &"--chunks",
        &"3",
    ]);
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).expect("kld json");
    assert_eq!(row["ppl"].as_f64(), k["ppl"].as_f64());
    let (x, y) = (row["kld"].as_f64().expect("row"), k["mean_kld"].as_f64().expect("kld"));
    assert!((x - y).abs() <= 1e-3 * y, "kld: sweep {x} vs exact base {y}");
    // The integer checkpoint row by hand: kld on the written folder.
    let o = ok(&[
        &"--threads",
        &"1",
        &"--json",
        &"kld",
        &out.join("models/gptq-4-32"),
        &"--base",
        &out.join("base.logits"),
    ]);
    let k: serde_json::Value = serde_json::from_slice(&o.stdout).expect("kld json");
    let row = rows.iter().find(|x| x["recipe"] == "gptq:4:32").expect("gptq row");
    assert_eq!(row["kld"].as_f64(), k["mean_kld"].as_f64());
}
