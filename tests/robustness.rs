//! Crashes, repeatability and memory, on the real SmolLM2-135M GGUF (large enough that a run takes
//! seconds and a kill lands mid-write):
//! * SIGKILL at random moments during `convert` and `export-hf`: the destination holds the old
//!   output or a complete one identical to an uninterrupted run, never a mix; the next run sweeps
//!   what the killed ones left.
//! * byte-identical GGUF and safetensors across two runs and across 1 vs 2 threads;
//! * peak RSS of an HF → Q4_K_M conversion ≤ output size + 2 × the largest tensor.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn smol_present() -> bool {
    if smol_gguf().exists() {
        return true;
    }
    eprintln!("skipping: {} not present", smol_gguf().display());
    false
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quantkit"))
}

/// Deterministic pseudo-random fractions (the kill moments are reproducible).
fn fractions(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Names in `dir` that a writer left behind (temp files/folders, moved-aside old outputs).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".quantkit-"))
        .collect()
}

/// Start `args`, kill it with SIGKILL after `after` (if still running). Returns whether it had
/// already finished.
fn run_and_kill(args: &[&dyn AsRef<std::ffi::OsStr>], after: Duration) -> bool {
    let mut c = bin();
    for a in args {
        c.arg(a);
    }
    let mut child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    let t0 = Instant::now();
    while t0.elapsed() < after {
        if child.try_wait().expect("wait").is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let finished = child.try_wait().expect("wait").is_some();
    let _ = child.kill(); // SIGKILL on Unix
    let _ = child.wait();
    finished
}

#[test]
fn sigkill_at_random_moments_leaves_the_old_or_a_complete_output() {
    if !smol_present() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let src = smol_gguf();

    // convert: an uninterrupted run gives the reference and the run time.
    let reference = t.path().join("ref.gguf");
    let t0 = Instant::now();
    ok(&[&"convert", &src, &"-t", &"q8_0", &"-o", &reference]);
    let full = t0.elapsed();
    let want = std::fs::read(&reference).expect("ref");
    let work = t.path().join("w");
    std::fs::create_dir(&work).expect("mkdir");
    let dest = work.join("out.gguf");
    let old = b"the previous output".to_vec();
    std::fs::write(&dest, &old).expect("old");
    let (mut saw_old, mut saw_new, mut finished, mut mid_write) = (0, 0, 0, 0);
    let moments = fractions(12, 7);
    for (i, f) in moments.iter().enumerate() {
        let after = full.mul_f64(0.05 + 1.1 * f);
        finished += usize::from(run_and_kill(&[&"convert", &src, &"-t", &"q8_0", &"-o", &dest], after));
        // A temp file beside the destination: the kill landed while the output was being written.
        mid_write += usize::from(!leftovers(&work).is_empty());
        let got = std::fs::read(&dest).expect("destination exists");
        if got == old {
            saw_old += 1;
        } else {
            assert!(
                got == want,
                "kill {i} after {after:?}: destination is neither the old file nor the complete output"
            );
            quantkit_io::gguf::GgufFile::open(&dest).expect("complete output parses");
            saw_new += 1;
            std::fs::write(&dest, &old).expect("reset");
        }
    }
    eprintln!(
        "convert ({full:?} uninterrupted): {} kills → old file {saw_old} ({mid_write} of them mid-write), complete file {saw_new} ({finished} had finished)",
        moments.len(),
    );
    assert!(
        mid_write > 0,
        "no kill landed while the output was being written: the test did not test anything"
    );
    // The next run removes what the killed ones left and completes.
    ok(&[&"convert", &src, &"-t", &"q8_0", &"-o", &dest]);
    assert_eq!(std::fs::read(&dest).expect("r"), want);
    assert!(leftovers(&work).is_empty(), "left behind: {:?}", leftovers(&work));

    // export-hf (a folder, replaced as a whole).
    let ref_dir = t.path().join("ref-hf");
    let t0 = Instant::now();
    ok(&[&"export-hf", &src, &"-o", &ref_dir, &"--dtype", &"bf16"]);
    let full = t0.elapsed();
    let want = files(&ref_dir);
    let dest = work.join("hf");
    std::fs::create_dir(&dest).expect("mkdir");
    std::fs::write(dest.join("old.txt"), b"old").expect("w");
    let old = files(&dest);
    let (mut saw_old, mut saw_new) = (0, 0);
    for (i, f) in fractions(8, 11).iter().enumerate() {
        let after = full.mul_f64(0.05 + 1.1 * f);
        run_and_kill(&[&"export-hf", &src, &"-o", &dest, &"--dtype", &"bf16", &"--force"], after);
        let got = if dest.exists() { files(&dest) } else { vec![] };
        if got == old {
            saw_old += 1;
        } else if got == want {
            saw_new += 1;
            std::fs::remove_dir_all(&dest).expect("rm");
            std::fs::create_dir(&dest).expect("mkdir");
            std::fs::write(dest.join("old.txt"), b"old").expect("w");
        } else {
            // Killed between moving the old folder aside and renaming the new one in: the old
            // folder is kept beside it and the next writer restores it.
            assert!(got.is_empty() && !dest.exists(), "kill {i} after {after:?}: a mixed folder");
            assert!(leftovers(&work).iter().any(|n| n.starts_with(".hf.quantkit-old-")), "old folder lost");
            quantkit_core::remove_stale(&work).expect("sweep");
            assert_eq!(files(&dest), old, "old folder restored");
            saw_old += 1;
        }
    }
    eprintln!(
        "export-hf ({full:?} uninterrupted): 8 kills → old folder {saw_old}, complete folder {saw_new}"
    );
    ok(&[&"export-hf", &src, &"-o", &dest, &"--dtype", &"bf16", &"--force"]);
    assert_eq!(files(&dest), want);
    assert!(leftovers(&work).is_empty(), "left behind: {:?}", leftovers(&work));
}

/// Convert with `threads`, return the bytes.
fn convert_bytes(src: &Path, ty: &str, threads: &str, dir: &Path, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{ty}-{threads}.gguf"));
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"--threads", &threads, &"convert", &src, &"-t", &ty];
    for e in extra {
        args.push(e);
    }
    args.push(&"-o");
    args.push(&out);
    ok(&args);
    let b = std::fs::read(&out).expect("read");
    std::fs::remove_file(&out).expect("rm");
    b
}

#[test]
fn outputs_are_byte_identical_across_runs_and_thread_counts() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    // stories260K through every mix family, with an imatrix where the mix uses one.
    let im = t.path().join("imatrix.gguf");
    ok(&[
        &"quantize",
        &stories(),
        &"--method",
        &"rtn",
        &"--calib",
        &shared().join("data/tinyshakespeare/input.txt"),
        &"--samples",
        &"4",
        &"--seqlen",
        &"64",
        &"--format",
        &"gguf:q4_k_m",
        &"--imatrix",
        &"-o",
        &t.path().join("q"),
    ]);
    std::fs::rename(t.path().join("q/imatrix.gguf"), &im).expect("imatrix");
    let im_s = im.to_str().expect("utf8");
    for (ty, extra) in [
        ("q4_k_m", vec!["--imatrix", im_s]),
        ("q2_k", vec!["--imatrix", im_s]),
        ("q3_k_m", vec![]),
        ("q5_k_s", vec![]),
        ("q6_k", vec![]),
        ("q4_0", vec!["--imatrix", im_s]),
        ("q5_1", vec![]),
        ("q8_0", vec![]),
        ("bf16", vec![]),
    ] {
        let a = convert_bytes(&stories(), ty, "2", t.path(), &extra);
        let b = convert_bytes(&stories(), ty, "2", t.path(), &extra);
        let c = convert_bytes(&stories(), ty, "1", t.path(), &extra);
        assert!(a == b, "{ty}: two runs differ");
        assert!(a == c, "{ty}: 1 and 2 threads differ");
    }
    // safetensors: export-hf twice, 1 and 2 threads.
    let g = t.path().join("s.gguf");
    ok(&[&"convert", &stories(), &"-t", &"q4_0", &"-o", &g]);
    let mut seen = vec![];
    for (i, threads) in ["2", "2", "1"].iter().enumerate() {
        let d = t.path().join(format!("hf{i}"));
        ok(&[&"--threads", threads, &"export-hf", &g, &"-o", &d]);
        seen.push(files(&d));
    }
    assert!(seen[0] == seen[1] && seen[0] == seen[2], "export-hf outputs differ");
    // SmolLM2 (576-wide rows, 49152-row embeddings: many parallel chunks) to Q4_K_M.
    if smol_present() {
        let a = convert_bytes(&smol_gguf(), "q4_k_m", "2", t.path(), &[]);
        let c = convert_bytes(&smol_gguf(), "q4_k_m", "1", t.path(), &[]);
        assert!(a == c, "SmolLM2 q4_k_m: 1 and 2 threads differ");
    }
}

#[test]
fn hf_to_q4_k_m_peak_rss_is_within_output_plus_two_largest_tensors() {
    if !smol_present() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    // SmolLM2's HF checkpoint is bf16: rebuild it from the GGUF (dequantized Q4_1, same shapes).
    let hf = t.path().join("smol-hf");
    ok(&[&"export-hf", &smol_gguf(), &"-o", &hf, &"--dtype", &"bf16"]);
    let mut largest = 0u64;
    let mut input = 0u64;
    for p in walk(&hf).into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")) {
        let f = quantkit_io::safetensors::SafetensorsFile::open(&p).expect("open");
        for n in f.names() {
            let bytes = f.data(&n).expect("data").len() as u64;
            largest = largest.max(bytes);
            input += bytes;
        }
    }
    let out: PathBuf = t.path().join("q4km.gguf");
    let o = ok(&[&"--json", &"convert", &hf, &"-t", &"q4_k_m", &"-o", &out]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    let rss = j["peak_rss_mb"].as_f64().expect("peak_rss_mb") * 1e6;
    let output = std::fs::metadata(&out).expect("out").len() as f64;
    let bound = output + 2.0 * largest as f64;
    eprintln!(
        "HF bf16 → Q4_K_M: input {:.1} MB, output {:.1} MB, largest tensor {:.1} MB, peak RSS {:.1} MB (bound {:.1} MB)",
        input as f64 / 1e6,
        output / 1e6,
        largest as f64 / 1e6,
        rss / 1e6,
        bound / 1e6
    );
    assert!(rss <= bound, "peak RSS {rss} > output {output} + 2 × largest tensor {largest}");
}
