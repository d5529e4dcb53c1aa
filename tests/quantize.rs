//! `quantkit quantize` end to end on stories260K: calibrated GPTQ/AWQ/RTN into every format,
//! determinism across thread counts, the report, reading the checkpoints back, bad input.

mod common;

use common::*;

fn calib() -> std::path::PathBuf {
    shared().join("data/tinyshakespeare/input.txt")
}

#[test]
fn gptq_outputs_are_identical_with_one_or_two_threads() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let run = |threads: &str, out: &std::path::Path| {
        ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--bits",
            &"4",
            &"--group",
            &"32",
            &"--act-order",
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"--seed",
            &"3",
            &"--format",
            &"gptq",
            &"--format",
            &"gguf:q4_k_m",
            &"--imatrix",
            &"-o",
            &out,
        ]);
    };
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    run("1", &a);
    run("2", &b);
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{n} differs between 1 and 2 threads");
    }
    assert!(fa.iter().any(|f| f.0 == "model-Q4_K_M.gguf"));
    assert!(fa.iter().any(|f| f.0 == "imatrix.gguf"));
}

#[test]
fn report_shows_gptq_and_awq_beating_rtn_and_checkpoints_read_back() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    for (method, extra) in [("gptq", "--sym"), ("awq", "--asym")] {
        let out = t.path().join(method);
        let o = ok(&[
            &"quantize",
            &stories(),
            &"--method",
            &method,
            &"--bits",
            &"3",
            &"--group",
            &"32",
            &extra,
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"--format",
            &"compressed-tensors",
            &"-o",
            &out,
            &"--json",
        ]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let pass = &j["passes"][0];
        let layers = pass["layers"].as_array().expect("layers");
        assert!(!layers.is_empty());
        let (m, r) =
            (pass["mean_rel_error"].as_f64().expect("m"), pass["mean_rel_error_rtn"].as_f64().expect("r"));
        assert!(m < r, "{method}: {m} vs RTN {r}");
        if method == "gptq" {
            // GPTQ minimises exactly this error: no layer may be worse than RTN by much.
            for l in layers {
                let (e, er) = (l["error"].as_f64().expect("e"), l["error_rtn"].as_f64().expect("er"));
                assert!(e <= er * 1.05, "{l}");
            }
        }
        assert_eq!(j["calibration"]["samples"], 8);
        assert!(j["calibration"]["sha256"].as_str().expect("sha").len() == 64);
        // The checkpoint reads back through the engine (dequantized) and scores close to the model.
        let ppl = |m: &dyn AsRef<std::ffi::OsStr>| -> f64 {
            let o = ok(&[&"ppl", m, &"--text", &calib(), &"--ctx", &"128", &"--chunks", &"4", &"--json"]);
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
            j["ppl"].as_f64().expect("ppl")
        };
        let (base, q) = (ppl(&stories()), ppl(&out.join("compressed-tensors")));
        assert!(q.is_finite() && q < base * 1.5, "{method}: {q} vs {base}");
    }
}

/// GPTQ onto the non-linear 4-bit grids (IQ4_NL's 16 levels, MXFP4's E2M1 values): every GPTQ'd
/// layer's output error is at most round-to-nearest's on the same levels (mean: well below), and the
/// file stores the layers in that type.
#[test]
fn gptq_onto_non_linear_levels_beats_rounding_to_them() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    for (ty, file) in [("iq4_nl", "model-IQ4_NL.gguf"), ("mxfp4", "model-MXFP4.gguf")] {
        let out = t.path().join(ty);
        let fmt = format!("gguf:{ty}");
        let o = ok(&[
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"--format",
            &fmt,
            &"-o",
            &out,
            &"--json",
        ]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let pass = &j["passes"][0];
        let (m, r) =
            (pass["mean_rel_error"].as_f64().expect("m"), pass["mean_rel_error_rtn"].as_f64().expect("r"));
        assert!(m < 0.8 * r, "{ty}: GPTQ {m} vs RTN {r}");
        let layers = pass["layers"].as_array().expect("layers");
        let on_grid: Vec<_> = layers.iter().filter(|l| l["storage"] == ty).collect();
        assert!(on_grid.len() >= 20, "{ty}: {} layers on the grid", on_grid.len());
        for l in on_grid {
            let (e, er) = (l["error"].as_f64().expect("e"), l["error_rtn"].as_f64().expect("er"));
            assert!(e <= er * 1.05, "{ty}: {l}");
        }
        let g = quantkit_io::gguf::GgufFile::open(out.join(file)).expect("gguf");
        let want = quantkit_core::GgmlType::parse(ty).expect("type");
        assert!(g.tensors.iter().filter(|t| t.ty == want).count() >= 20, "{ty}");
    }
}

#[test]
fn quantize_refuses_bad_requests_without_leaving_files() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let out = t.path().join("o");
    fails_with(
        &[&"quantize", &stories(), &"--method", &"gptq", &"--format", &"gptq", &"-o", &out],
        &["--calib"],
    );
    fails_with(
        &[&"quantize", &stories(), &"--method", &"rtn", &"--bits", &"3", &"--format", &"awq", &"-o", &out],
        &["AWQ", "4-bit"],
    );
    fails_with(
        &[&"quantize", &stories(), &"--method", &"rtn", &"--format", &"zip", &"-o", &out],
        &["unknown format"],
    );
    let empty = t.path().join("empty.txt");
    std::fs::write(&empty, "  \n").expect("write");
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--calib",
            &empty,
            &"--format",
            &"gptq",
            &"-o",
            &out,
        ],
        &["empty"],
    );
    assert!(!out.join("gptq").exists());
}

/// A GPTQ run killed with SIGKILL part-way resumes with `--resume` from its last finished block
/// (none done twice: the report says how many came from the checkpoint) and writes exactly the
/// bytes of an uninterrupted run — also when the activations live in temporary files
/// (`--mem-budget` far below their size).
#[test]
fn killed_gptq_run_resumes_to_identical_bytes() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let model = smol_gguf();
    let args = |out: &std::path::Path, extra: &[&str]| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec![
            "quantize".into(),
            model.clone().into(),
            "--method".into(),
            "gptq".into(),
            "--calib".into(),
            calib().into(),
            "--samples".into(),
            "4".into(),
            "--seqlen".into(),
            "64".into(),
            "--format".into(),
            "gptq".into(),
            "--format".into(),
            "gguf:q4_k_m".into(),
            "-o".into(),
            out.into(),
        ];
        v.extend(extra.iter().map(|s| s.into()));
        v
    };
    let run = |a: &[std::ffi::OsString]| {
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> =
            a.iter().map(|s| s as &dyn AsRef<std::ffi::OsStr>).collect();
        ok(&refs)
    };
    let whole = t.path().join("whole");
    run(&args(&whole, &[]));

    // Kill the spilling run once a few blocks of its first pass are saved.
    let cut = t.path().join("cut");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quantkit"))
        .args(args(&cut, &["--mem-budget", "1K"]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let work = cut.join(".quantkit-work");
    // Saved block files of any pass (read_dir errors: the folder is not there yet, or changing).
    let saved = |n: usize| {
        let layers = |d: std::path::PathBuf| {
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("layer-"))
                .count()
        };
        std::fs::read_dir(&work).into_iter().flatten().flatten().map(|e| layers(e.path())).sum::<usize>() >= n
    };
    let t0 = std::time::Instant::now();
    while !saved(3) {
        assert!(child.try_wait().expect("wait").is_none(), "the run ended before it could be killed");
        assert!(t0.elapsed().as_secs() < 300, "no block saved in 300 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    assert!(!cut.join("model-Q4_K_M.gguf").exists() && !cut.join("gptq").exists(), "killed before writing");

    let o = run(&args(&cut, &["--mem-budget", "1K", "--resume", "--json"]));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json report");
    let passes = report["passes"].as_array().expect("passes");
    assert!(passes[0]["resumed_blocks"].as_u64().expect("resumed_blocks") >= 3, "{}", passes[0]);
    assert!(passes.iter().all(|p| p["spilled"] == true));
    assert!(!work.exists(), "checkpoints are removed when the job is done");
    let (fa, fb) = (files(&whole), files(&cut));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(x == y, "{n} differs between the uninterrupted run and the killed + resumed one");
    }
}

/// bitsandbytes NF4 outputs: byte-identical with 1 or 2 threads; they read back through the engine
/// (ppl close to the model's), inspect (packed modules shown as their dequantized weight) and
/// export-hf (a dense folder that quantizes to NF4 again with the same perplexity within 2%);
/// AWQ into bnb is refused without leaving anything (rtn and gptq make NF4).
#[test]
fn bnb_nf4_outputs_are_deterministic_and_read_back() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let run = |threads: &str, out: &std::path::Path| {
        ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"-f",
            &"bnb-nf4",
            &"-f",
            &"bnb-nf4-dq",
            &"-o",
            &out,
        ]);
        files(out)
    };
    let (a, b) = (run("1", &t.path().join("a")), run("2", &t.path().join("b")));
    assert!(a.len() >= 6, "{:?}", a.iter().map(|f| &f.0).collect::<Vec<_>>());
    assert!(a == b, "bnb outputs differ between 1 and 2 threads");
    let base = {
        let o =
            ok(&[&"ppl", &stories(), &"--text", &calib(), &"--ctx", &"128", &"--chunks", &"4", &"--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")["ppl"].as_f64().expect("ppl")
    };
    for f in ["bnb-nf4", "bnb-nf4-dq"] {
        let d = t.path().join("a").join(f);
        let o = ok(&[&"ppl", &d, &"--text", &calib(), &"--ctx", &"128", &"--chunks", &"4", &"--json"]);
        let q = serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")["ppl"]
            .as_f64()
            .expect("ppl");
        assert!(q.is_finite() && q > base * 0.9 && q < base * 1.5, "{f}: ppl {q} vs {base}");
        let o = ok(&[&"inspect", &d]);
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(text.contains("model.layers.0.mlp.down_proj.weight") && !text.contains("absmax"), "{text}");
        // NF4 → dense f32 → NF4 again.
        let dense = t.path().join(format!("{f}-dense"));
        ok(&[&"export-hf", &d, &"-o", &dense, &"--dtype", &"f32"]);
        let again = t.path().join(format!("{f}-again"));
        ok(&[&"quantize", &dense, &"--method", &"rtn", &"-f", &"bnb-nf4", &"-o", &again]);
        let ppl2 = ok(&[
            &"ppl",
            &again.join("bnb-nf4"),
            &"--text",
            &calib(),
            &"--ctx",
            &"128",
            &"--chunks",
            &"4",
            &"--json",
        ]);
        let q2 = serde_json::from_slice::<serde_json::Value>(&ppl2.stdout).expect("json")["ppl"]
            .as_f64()
            .expect("ppl");
        assert!((q2 / q - 1.0).abs() < 0.02, "{f}: re-quantized export {q2} vs {q}");
    }
    let out = t.path().join("refused");
    fails_with(
        &[&"quantize", &stories(), &"--method", &"awq", &"--calib", &calib(), &"-f", &"bnb-nf4", &"-o", &out],
        &["bnb-nf4", "--method rtn", "--method gptq"],
    );
    assert!(!out.join("bnb-nf4").exists());
}

/// GPTQ-into-NF4 (`--method gptq -f bnb-nf4 -f bnb-nf4-dq`): byte-identical with 1 or 2 threads,
/// every linear of every block stored NF4 with a per-layer output error at most RTN's (mean well
/// below), the same tensors as the RTN folder (names, dtypes, shapes), the same
/// `quantization_config`, and the folder reads back
/// through the engine with a perplexity no worse than RTN's by more than noise. stories260K's
/// down_proj (172 wide) has blocks across rows; its q/k rows are permuted in the pass.
#[test]
fn gptq_into_nf4_is_deterministic_beats_rtn_and_reads_back() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let run = |threads: &str, out: &std::path::Path| {
        let o = ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"-f",
            &"bnb-nf4",
            &"-f",
            &"bnb-nf4-dq",
            &"-o",
            &out,
            &"--json",
        ]);
        (files(out), serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json"))
    };
    let ((a, j), (b, _)) = (run("1", &t.path().join("a")), run("2", &t.path().join("b")));
    let differ: Vec<_> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y && !x.0.ends_with("report.json"))
        .map(|(x, _)| &x.0)
        .collect();
    assert!(a.len() == b.len() && differ.is_empty(), "differ between 1 and 2 threads: {differ:?}");
    let passes = j["passes"].as_array().expect("passes");
    assert_eq!(passes.len(), 2, "one pass per NF4 output");
    for (pass, storage) in passes.iter().zip(["nf4", "nf4-dq"]) {
        let (m, r) =
            (pass["mean_rel_error"].as_f64().expect("m"), pass["mean_rel_error_rtn"].as_f64().expect("r"));
        assert!(m < 0.8 * r, "{storage}: GPTQ {m} vs RTN {r}");
        let layers = pass["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 5 * 7, "{storage}: every linear of every block");
        for l in layers {
            assert_eq!(l["storage"], storage);
            let (e, er) = (l["error"].as_f64().expect("e"), l["error_rtn"].as_f64().expect("er"));
            assert!(e <= er * 1.05, "{storage}: {l}");
        }
    }
    let rtn = t.path().join("rtn");
    ok(&[&"quantize", &stories(), &"--method", &"rtn", &"-f", &"bnb-nf4", &"-f", &"bnb-nf4-dq", &"-o", &rtn]);
    let ppl = |d: &std::path::Path| {
        let o = ok(&[&"ppl", &d, &"--text", &calib(), &"--ctx", &"128", &"--chunks", &"4", &"--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")["ppl"].as_f64().expect("ppl")
    };
    for f in ["bnb-nf4", "bnb-nf4-dq"] {
        let (g, r) = (t.path().join("a").join(f), rtn.join(f));
        let specs = |d: &std::path::Path| {
            let st =
                quantkit_io::safetensors::SafetensorsFile::open(d.join("model.safetensors")).expect("st");
            let mut v: Vec<_> = st
                .names()
                .into_iter()
                .map(|n| {
                    let i = st.info(&n).expect("info");
                    // The quant state's JSON length follows the offset's digits.
                    let shape = if n.ends_with("bitsandbytes__nf4") { vec![] } else { i.shape.clone() };
                    (format!("{n} {:?}", i.dtype), shape)
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(specs(&g), specs(&r), "{f}: same tensors as the RTN folder");
        let cfg = |d: &std::path::Path| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(d.join("config.json")).expect("config")).expect("json")
        };
        assert_eq!(cfg(&g)["quantization_config"], cfg(&r)["quantization_config"]);
        assert_eq!(cfg(&g)["quantkit"]["method"], "gptq");
        let (pg, pr) = (ppl(&g), ppl(&r));
        assert!(pg.is_finite() && pg < pr * 1.05, "{f}: GPTQ ppl {pg} vs RTN {pr}");
    }
}

/// The 8-bit compressed-tensors outputs: identical bytes with 1 and 2 threads (GPTQ int8 W8A8 and
/// RTN FP8), every one reads back through the engine (`ppl`) and `export-hf`, and the requests they
/// cannot hold are refused naming why, leaving no folder.
#[test]
fn ct8_outputs_are_deterministic_read_back_and_refuse_what_they_cannot_hold() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let run = |threads: &str, out: &std::path::Path| {
        ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--bits",
            &"8",
            &"--group",
            &"-1",
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"--format",
            &"ct-w8a8",
            &"--format",
            &"compressed-tensors",
            &"-o",
            &out,
        ]);
        ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--format",
            &"ct-fp8",
            &"--format",
            &"ct-fp8-dynamic",
            &"-o",
            &out.join("fp8"),
        ]);
    };
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    run("1", &a);
    run("2", &b);
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(n.ends_with("report.json") || x == y, "{n} differs between 1 and 2 threads");
    }
    let text = t.path().join("text.txt");
    std::fs::write(
        &text,
        std::fs::read_to_string(calib()).expect("text").chars().take(4000).collect::<String>(),
    )
    .expect("write");
    let ppl = |d: &std::path::Path, extra: &[&str]| -> f64 {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"ppl", &d, &"--text", &text, &"--ctx", &"64", &"--json"];
        for e in extra {
            args.push(e);
        }
        let o = ok(&args);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        let p = j["ppl"].as_f64().unwrap_or_else(|| panic!("no ppl in {j}"));
        assert!(p.is_finite() && p > 1.0 && p < 100.0, "{}: ppl {p}", d.display());
        p
    };
    let dirs =
        [a.join("ct-w8a8"), a.join("compressed-tensors"), a.join("fp8/ct-fp8"), a.join("fp8/ct-fp8-dynamic")];
    let mut weights_only = vec![];
    let mut native = vec![];
    for d in &dirs {
        weights_only.push(ppl(d, &["--dequantize"]));
        native.push(ppl(d, &[]));
        ok(&[&"export-hf", &d, &"-o", &t.path().join("exported"), &"--force"]);
    }
    // W8A8 and W8A16 hold the same int8 quantization; FP8 weight-only and FP8_DYNAMIC the same FP8 one.
    assert_eq!(weights_only[0], weights_only[1]);
    assert_eq!(weights_only[2], weights_only[3]);
    assert_ne!(weights_only[0], weights_only[2]);
    // Weight-only schemes run their weights as they are; W8A8 and FP8_DYNAMIC also round the
    // activations (per token), which moves the perplexity a little.
    assert_eq!(native[1], weights_only[1]);
    assert_eq!(native[2], weights_only[2]);
    for i in [0, 3] {
        assert_ne!(native[i], weights_only[i], "{}", dirs[i].display());
        assert!(
            (native[i] / weights_only[i] - 1.0).abs() < 0.05,
            "{}: {} vs {}",
            dirs[i].display(),
            native[i],
            weights_only[i]
        );
    }

    let out = t.path().join("bad");
    fails_with(
        &[&"quantize", &stories(), &"--method", &"rtn", &"--format", &"ct-w8a8", &"-o", &out],
        &["int8 W8A8", "8-bit", "not 4"],
    );
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--bits",
            &"8",
            &"--format",
            &"ct-w8a8",
            &"-o",
            &out,
        ],
        &["per-channel", "groups of 128"],
    );
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"gptq",
            &"--calib",
            &calib(),
            &"--format",
            &"ct-fp8",
            &"-o",
            &out,
        ],
        &["ct-fp8", "round to nearest only", "--method rtn"],
    );
    assert!(!out.exists() || std::fs::read_dir(&out).expect("dir").next().is_none());
}

#[test]
fn smoothquant_folds_into_the_norms_deterministically_and_keeps_the_function() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let run = |threads: &str, out: &std::path::Path, alpha: &str| {
        ok(&[
            &"--threads",
            &threads,
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--bits",
            &"8",
            &"--group",
            &"-1",
            &"--calib",
            &calib(),
            &"--samples",
            &"8",
            &"--seqlen",
            &"64",
            &"--smoothquant",
            &alpha,
            &"--format",
            &"ct-w8a8",
            &"-o",
            &out,
        ]);
    };
    let (a, b, auto) = (t.path().join("a"), t.path().join("b"), t.path().join("auto"));
    run("1", &a, "0.5");
    run("2", &b, "0.5");
    run("2", &auto, "auto");
    let (fa, fb) = (files(&a), files(&b));
    for ((n, x), (_, y)) in fa.iter().zip(&fb) {
        assert!(n.ends_with("report.json") || x == y, "{n} differs between 1 and 2 threads");
    }
    // The norms carry 1/s: they differ from the original's.
    let orig =
        quantkit_io::safetensors::SafetensorsFile::open(&stories().join("model.safetensors")).expect("orig");
    let smoothed =
        quantkit_io::safetensors::SafetensorsFile::open(&a.join("ct-w8a8/model.safetensors")).expect("out");
    for n in ["model.layers.0.input_layernorm.weight", "model.layers.2.post_attention_layernorm.weight"] {
        let (x, y) = (orig.read_f32(n).expect(n), smoothed.read_f32(n).expect(n));
        assert_eq!(x.len(), y.len());
        assert!(x.iter().zip(&y).filter(|(p, q)| p != q).count() > x.len() / 2, "{n} unchanged");
    }
    // The report names α for the smoothed inputs (q/k/v, gate/up) only.
    for dir in [&a, &auto] {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report")).expect("json");
        let layers = r["passes"][0]["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 35);
        for l in layers {
            let n = l["name"].as_str().expect("name");
            let smoothed_input =
                ["attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"].iter().any(|p| n.contains(p));
            let alpha = l["smooth_alpha"].as_f64();
            assert_eq!(alpha.is_some(), smoothed_input, "{n}: {l}");
            if dir == &a {
                assert!(alpha.is_none_or(|x| (x - 0.5).abs() < 1e-6), "{n}: {l}");
            }
        }
    }
    // Same function up to 8-bit rounding: the weights alone score like the unsmoothed W8A8's.
    let plain = t.path().join("plain");
    ok(&[
        &"quantize",
        &stories(),
        &"--method",
        &"rtn",
        &"--bits",
        &"8",
        &"--group",
        &"-1",
        &"--format",
        &"ct-w8a8",
        &"-o",
        &plain,
    ]);
    let text = t.path().join("text.txt");
    std::fs::write(
        &text,
        std::fs::read_to_string(calib()).expect("text").chars().take(4000).collect::<String>(),
    )
    .expect("write");
    let ppl = |d: &std::path::Path| -> f64 {
        let o = ok(&[&"ppl", &d, &"--text", &text, &"--ctx", &"64", &"--json", &"--dequantize"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")["ppl"].as_f64().expect("ppl")
    };
    let (p0, p1) = (ppl(&plain.join("ct-w8a8")), ppl(&a.join("ct-w8a8")));
    assert!((p1 / p0 - 1.0).abs() < 0.01, "smoothed {p1} vs plain {p0}");
    // Refusals: no calibration, a non-integer output.
    let out = t.path().join("bad");
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--bits",
            &"8",
            &"--group",
            &"-1",
            &"--smoothquant",
            &"0.5",
            &"--format",
            &"ct-w8a8",
            &"-o",
            &out,
        ],
        &["needs calibration"],
    );
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--calib",
            &calib(),
            &"--smoothquant",
            &"0.5",
            &"--format",
            &"gguf:q8_0",
            &"-o",
            &out,
        ],
        &["SmoothQuant folds into integer checkpoints"],
    );
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--method",
            &"rtn",
            &"--calib",
            &calib(),
            &"--smoothquant",
            &"1.5",
            &"--format",
            &"ct-w8a8",
            &"-o",
            &out,
        ],
        &["SmoothQuant α"],
    );
}
