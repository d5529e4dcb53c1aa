//! The engine against transformers: logits, log-sum-exp, top-5 and greedy tokens from
//! `scripts/golden_logits.py` (committed fixtures), on stories260K and SmolLM2 (whose HF checkpoint
//! is the export of the shared GGUF, so the engine reads the GGUF itself here).

mod common;

use common::*;
use quantkit_engine::eval::{argmax, generate};
use quantkit_engine::{Model, Tokenizer};
use quantkit_io::source::ModelSource;

fn fixture(name: &str) -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("json")
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().expect("array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

/// Returns the worst |ours − theirs| / max(1, |theirs|) over the stored logits.
fn check(model_path: &std::path::Path, fx: &serde_json::Value) -> f64 {
    let src = ModelSource::open(model_path).expect("open");
    // The forward pass's maths against transformers on the same f32 weights; the fused kernels
    // are checked against this path in `quantized_weights_run_natively…`.
    let model = Model::load_with(&src, quantkit_engine::WeightMode::Dequantized).expect("load");
    let tok = Tokenizer::for_source(&src).expect("tokenizer");
    let vocab = model.vocab_size();
    let cols: Option<Vec<usize>> =
        fx["columns"].as_array().map(|a| a.iter().map(|c| c.as_u64().expect("col") as usize).collect());
    let mut worst = 0f64;
    for case in fx["cases"].as_array().expect("cases") {
        let tokens = ids(&case["tokens"]);
        let prompt = case["prompt"].as_str().expect("prompt");
        assert_eq!(tok.encode(prompt, tok.add_bos).expect("encode"), tokens, "tokenization of {prompt:?}");
        let mut cache = model.new_cache(tokens.len());
        let logits = model.forward(&tokens, &mut cache, 0, None).expect("forward");
        for (t, row) in logits.chunks_exact(vocab).enumerate() {
            let want = case["logits"][t].as_array().expect("row");
            for (k, w) in want.iter().enumerate() {
                let c = cols.as_ref().map(|c| c[k]).unwrap_or(k);
                let w = w.as_f64().expect("f");
                worst = worst.max((row[c] as f64 - w).abs() / w.abs().max(1.0));
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
            let want_lse = case["logsumexp"][t].as_f64().expect("lse");
            worst = worst.max((lse - want_lse).abs() / want_lse.abs().max(1.0));
            assert_eq!(
                argmax(row),
                case["top5"][t][0].as_u64().expect("top") as u32,
                "{prompt:?} position {t}"
            );
        }
        let want = ids(&case["greedy"]);
        let got = generate(&model, &tokens, want.len(), 0.0, 0, None).expect("generate");
        assert_eq!(got, want, "greedy continuation of {prompt:?}");
    }
    worst
}

#[test]
fn stories260k_logits_and_greedy_tokens_match_transformers() {
    if no_fixtures() {
        return;
    }
    let worst = check(&stories(), &fixture("stories260k.json"));
    eprintln!("stories260K: worst relative logit difference {worst:e}");
    assert!(worst < 1e-4, "worst relative logit difference {worst}");
}

#[test]
fn smollm2_logits_and_greedy_tokens_match_transformers() {
    if no_fixtures() || !smol_gguf().exists() {
        return;
    }
    let worst = check(&smol_gguf(), &fixture("smollm2.json"));
    eprintln!("SmolLM2: worst relative logit difference {worst:e}");
    assert!(worst < 1e-4, "worst relative logit difference {worst}");
}

#[test]
fn ppl_bad_input_gives_clear_errors() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let empty = t.path().join("empty.txt");
    std::fs::write(&empty, "  \n").expect("w");
    fails_with(&[&"ppl", &stories(), &"--text", &empty], &["empty.txt", "empty"]);
    let bin = t.path().join("latin1.txt");
    std::fs::write(&bin, b"caf\xe9 au lait").expect("w");
    fails_with(&[&"ppl", &stories(), &"--text", &bin], &["latin1.txt", "UTF-8", "byte 3"]);
    let short = t.path().join("short.txt");
    std::fs::write(&short, "Once upon a time there was a cat.").expect("w");
    fails_with(&[&"ppl", &stories(), &"--text", &short], &["fewer than one context of 512"]);
    fails_with(
        &[&"ppl", &stories(), &"--text", &short, &"--ctx", &"4096"],
        &["larger than the model's context length 512"],
    );
    fails_with(&[&"ppl", &stories(), &"--text", &t.path().join("missing.txt")], &["missing.txt"]);
    // A short text still works with a context that fits it; JSON carries the figures.
    let o = ok(&[&"ppl", &stories(), &"--text", &short, &"--ctx", &"8", &"--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(j["ppl"].as_f64().expect("ppl") > 1.0);
    assert_eq!(j["chunks"].as_u64(), Some(1));
}

#[test]
fn generate_command_continues_the_story() {
    if no_fixtures() {
        return;
    }
    let o = ok(&[&"generate", &stories(), &"-p", &"Once upon a time", &"-n", &"12"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("Once upon a time, there was a little girl named Lily"), "{text}");
}

#[test]
fn kld_against_itself_is_zero_and_saved_base_logits_agree() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let text = shared().join("data/wikitext-2-raw/wiki.test.raw");
    let (f32g, q4) = (t.path().join("f32.gguf"), t.path().join("q4_0.gguf"));
    ok(&[&"convert", &stories(), &"-t", &"f32", &"-o", &f32g]);
    ok(&[&"convert", &stories(), &"-t", &"q4_0", &"-o", &q4]);
    let run = |args: &[&dyn AsRef<std::ffi::OsStr>]| -> serde_json::Value {
        let mut a = args.to_vec();
        a.push(&"--json");
        serde_json::from_slice(&ok(&a).stdout).expect("json")
    };
    let same = run(&[&"kld", &f32g, &"--base", &f32g, &"--text", &text, &"--chunks", &"4"]);
    assert_eq!(same["mean_kld"].as_f64(), Some(0.0));
    assert_eq!(same["same_top_p"].as_f64(), Some(1.0));
    let base = t.path().join("base.qklogits");
    let q = run(&[&"kld", &q4, &"--base", &f32g, &"--text", &text, &"--chunks", &"4", &"--save-base", &base]);
    let kq = q["mean_kld"].as_f64().expect("kld");
    assert!(kq > 0.01, "Q4_0 of a 260K model must diverge: {kq}");
    assert!(q["same_top_p"].as_f64().expect("top") < 1.0);
    let from_file = run(&[&"kld", &q4, &"--base", &base]);
    let kf = from_file["mean_kld"].as_f64().expect("kld");
    assert!((kf - kq).abs() < 1e-3 * kq, "saved base (u16 log-probs) {kf} vs in-process {kq}");
    assert_eq!(from_file["tokens_scored"], q["tokens_scored"]);
    // A file that is not base logits is read as a model and refused clearly.
    let junk = t.path().join("junk.qklogits");
    std::fs::write(&junk, b"QKLOGIT1 truncated").expect("w");
    fails_with(&[&"kld", &q4, &"--base", &junk], &["junk.qklogits", "base logits"]);
}

/// Qwen2 (q/k/v biases, half-split RoPE, tied), Mistral, Llama-3 RoPE scaling and linear RoPE scaling, on
/// tiny random checkpoints made and scored by transformers (`scripts/tiny_models.py`; their
/// config.json uses transformers 5's `rope_parameters`).
#[test]
fn tiny_architectures_match_transformers() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    for name in ["qwen2", "mistral", "llama3rope", "linearrope"] {
        let dir = root.join(name);
        let fx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("logits.json")).expect("logits")).expect("json");
        let src = ModelSource::open(&dir).expect("open");
        let model = Model::load(&src).expect("load");
        let tokens = ids(&fx["tokens"]);
        let mut cache = model.new_cache(tokens.len());
        let logits = model.forward(&tokens, &mut cache, 0, None).expect("forward");
        let vocab = model.vocab_size();
        let mut worst = 0f64;
        for (k, r) in fx["rows"].as_array().expect("rows").iter().enumerate() {
            let r = r.as_u64().expect("row") as usize;
            for (c, w) in fx["logits"][k].as_array().expect("row").iter().enumerate() {
                let w = w.as_f64().expect("f");
                worst = worst.max((logits[r * vocab + c] as f64 - w).abs() / w.abs().max(1.0));
            }
        }
        assert!(worst < 1e-4, "{name}: worst relative logit difference {worst}");
        let got = generate(&model, &ids(&fx["greedy_prompt"]), 16, 0.0, 0, None).expect("generate");
        assert_eq!(got, ids(&fx["greedy"]), "{name}: greedy tokens");
    }
}

/// `--mode hf` (sliding window, each token scored once) against the same method computed with
/// transformers by `scripts/golden_logits.py --hf-text` on the start of wiki.test.raw.
#[test]
fn hf_mode_perplexity_matches_transformers() {
    if no_fixtures() {
        return;
    }
    let fx = fixture("stories260k.json");
    let h = &fx["hf_ppl"];
    let chars = h["chars"].as_u64().expect("chars") as usize;
    let text: String = std::fs::read_to_string(shared().join("data/wikitext-2-raw/wiki.test.raw"))
        .expect("text")
        .chars()
        .take(chars)
        .collect();
    let t = tempfile::tempdir().expect("tmp");
    let p = t.path().join("prefix.txt");
    std::fs::write(&p, text).expect("w");
    let (ctx, stride) = (h["ctx"].to_string(), h["stride"].to_string());
    let o = ok(&[
        &"ppl",
        &stories(),
        &"--text",
        &p,
        &"--mode",
        &"hf",
        &"--ctx",
        &ctx,
        &"--stride",
        &stride,
        &"--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["tokens_scored"], h["tokens_scored"]);
    let (ours, theirs) = (j["ppl"].as_f64().expect("ppl"), h["ppl"].as_f64().expect("ppl"));
    assert!((ours / theirs - 1.0).abs() < 1e-4, "hf-mode PPL {ours} vs transformers {theirs}");
}

/// The fused kernels against the reference path (every weight dequantized to f32) on quantized
/// stories260K files: batched forward (GEMM, dequantized panels) gives the reference's logits;
/// one-token decode steps (int8 GEMV) stay close and pick the same greedy tokens.
#[test]
fn quantized_weights_run_natively_and_match_the_dequantized_reference() {
    use quantkit_engine::WeightMode;
    if no_fixtures() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    for ty in ["q8_0", "q4_0", "q4_k_m", "q6_k"] {
        let out = dir.path().join(format!("s-{ty}.gguf"));
        ok(&[&"--quiet", &"convert", &stories(), &"-t", &ty, &"-o", &out]);
        let src = ModelSource::open(&out).expect("open");
        let native = Model::load_with(&src, WeightMode::Native).expect("native");
        let reference = Model::load_with(&src, WeightMode::Dequantized).expect("reference");
        assert!(native.weight_types().iter().any(|(t, _)| t != "f32"), "{ty}: nothing quantized");
        let tokens: Vec<u32> = (0..48u32).map(|i| (i * 37 + 11) % 512).collect();
        let vocab = native.vocab_size();
        let run = |m: &Model, one_by_one: bool| -> Vec<f32> {
            let mut cache = m.new_cache(tokens.len());
            if !one_by_one {
                return m.forward(&tokens, &mut cache, 0, None).expect("forward");
            }
            tokens.iter().flat_map(|t| m.forward(&[*t], &mut cache, 0, None).expect("step")).collect()
        };
        let want = run(&reference, false);
        let batched = run(&native, false);
        let stepped = run(&native, true);
        let (mut worst_b, mut worst_s, mut same_top) = (0f32, 0f32, 0);
        for ((w, b), s) in
            want.chunks_exact(vocab).zip(batched.chunks_exact(vocab)).zip(stepped.chunks_exact(vocab))
        {
            let spread = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
            for ((w, b), s) in w.iter().zip(b).zip(s) {
                worst_b = worst_b.max((w - b).abs() / spread);
                worst_s = worst_s.max((w - s).abs() / spread);
            }
            same_top += (argmax(w) == argmax(s)) as usize;
        }
        eprintln!(
            "{ty}: batched {worst_b:.2e}, stepped {worst_s:.2e}, same top-1 {same_top}/{}",
            tokens.len()
        );
        assert!(worst_b < 1e-4, "{ty}: batched path differs from the reference by {worst_b}");
        assert!(worst_s < 2e-2, "{ty}: decode path differs from the reference by {worst_s}");
        assert!(same_top >= tokens.len() - 2, "{ty}: greedy tokens differ ({same_top}/{})", tokens.len());
    }
}
