//! End-to-end tests of the `quantkit` binary on the real fixtures in ../shared.

mod common;

use common::*;
use quantkit_io::gguf::GgufFile;
use quantkit_io::safetensors::SafetensorsFile;

#[test]
fn convert_is_deterministic_across_runs_and_thread_counts() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    for ty in ["q4_0", "q5_1", "bf16"] {
        let a = t.path().join(format!("a-{ty}.gguf"));
        let b = t.path().join(format!("b-{ty}.gguf"));
        let c = t.path().join(format!("c-{ty}.gguf"));
        ok(&[&"convert", &stories(), &"--type", &ty, &"-o", &a, &"--threads", &"1"]);
        ok(&[&"convert", &stories(), &"--type", &ty, &"-o", &b, &"--threads", &"2"]);
        ok(&[&"convert", &stories(), &"--type", &ty, &"-o", &c]);
        let (a, b, c) =
            (std::fs::read(a).expect("a"), std::fs::read(b).expect("b"), std::fs::read(c).expect("c"));
        assert_eq!(a, b, "{ty}: 1 vs 2 threads");
        assert_eq!(a, c, "{ty}: second run");
    }
}

#[test]
fn hf_to_gguf_to_hf_roundtrip_is_exact_and_sharding_does_not_change_output() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    // Export in several shards (the model is ~1 MB; 0 MB → one tensor per shard).
    let (g, hf) = sharded_stories(t.path());
    assert!(hf.join("model.safetensors.index.json").exists());
    let orig = SafetensorsFile::open(stories().join("model.safetensors")).expect("orig");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("model.safetensors.index.json")).expect("index"))
            .expect("json");
    let map = index["weight_map"].as_object().expect("weight_map");
    assert_eq!(map.len(), orig.names().len());
    for name in orig.names() {
        let shard = SafetensorsFile::open(hf.join(map[&name].as_str().expect("file"))).expect("shard");
        assert_eq!(shard.read_f32(&name).expect("ours"), orig.read_f32(&name).expect("orig"), "{name}");
        assert_eq!(shard.info(&name).expect("info").shape, orig.info(&name).expect("info").shape);
    }
    // The sharded folder converts to the very same bytes as the original folder.
    let g2 = t.path().join("s2.gguf");
    ok(&[&"convert", &hf, &"--type", &"f32", &"-o", &g2]);
    let (a, b) = (GgufFile::open(&g).expect("g"), GgufFile::open(&g2).expect("g2"));
    assert_eq!(a.tensors.len(), b.tensors.len());
    for ta in &a.tensors {
        let tb = b.tensor(&ta.name).expect("same tensors");
        assert_eq!((&ta.dims, ta.ty), (&tb.dims, tb.ty));
        assert_eq!(a.tensor_data(ta), b.tensor_data(tb), "{}", ta.name);
    }
    for key in [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "llama.rope.dimension_count",
    ] {
        assert_eq!(a.get(key), b.get(key), "{key}");
    }
}

#[test]
fn gguf_requantization_and_fallbacks_are_reported() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let f16 = t.path().join("f16.gguf");
    ok(&[&"convert", &stories(), &"--type", &"f16", &"-o", &f16]);
    let q = t.path().join("q4_0.gguf");
    let out = ok(&[&"convert", &f16, &"--type", &"q4_0", &"-o", &q]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fallback q4_0 → f16: row length 172 is not a multiple of 32"), "{text}");
    assert!(text.contains("blk.0.ffn_down.weight and 4 more"), "{text}");
    let g = GgufFile::open(&q).expect("open");
    assert_eq!(g.tensor("blk.0.ffn_down.weight").expect("t").ty.name(), "f16");
    assert_eq!(g.tensor("blk.0.ffn_up.weight").expect("t").ty.name(), "q4_0");
    assert_eq!(g.tensor("token_embd.weight").expect("t").ty.name(), "q8_0", "tied output embedding");
    assert_eq!(g.get("general.file_type").and_then(|v| v.as_u64()), Some(2));
    let insp = ok(&[&"inspect", &q, &"--json"]);
    let j: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("json");
    // five 172-wide ffn_down (q4_0 → f16) and the tied embedding (q6_k → q8_0: row 64)
    assert_eq!(j["fallbacks"].as_array().expect("array").len(), 6);
    assert_eq!(j["tensors"].as_array().expect("array").len(), 47);
    assert!(j["bits_per_weight"].as_f64().expect("bpw") > 4.5);
    // inspect also reads safetensors files and HF folders
    let insp = ok(&[&"inspect", &stories().join("model.safetensors"), &"--json"]);
    let j: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("json");
    assert_eq!(j["params"].as_u64(), Some(260_032));
    let insp = ok(&[&"inspect", &stories(), &"--json"]);
    let j: serde_json::Value = serde_json::from_slice(&insp.stdout).expect("json");
    assert_eq!(j["config"]["num_layers"].as_u64(), Some(5));
}

#[test]
fn smollm2_export_convert_roundtrip_threads_agree() {
    if no_fixtures() || !smol_gguf().exists() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let hf = t.path().join("smol");
    ok(&[&"export-hf", &smol_gguf(), &"-o", &hf, &"--dtype", &"bf16"]);
    for ty in ["q8_0", "q4_k_m", "q2_k"] {
        let a = t.path().join(format!("a-{ty}.gguf"));
        let b = t.path().join(format!("b-{ty}.gguf"));
        ok(&[&"convert", &hf, &"--type", &ty, &"-o", &a, &"--threads", &"1"]);
        ok(&[&"convert", &hf, &"--type", &ty, &"-o", &b, &"--threads", &"2"]);
        assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"), "{ty}: 1 vs 2 threads");
    }
}

#[test]
fn bench_reports_speeds_bytes_and_bandwidth() {
    if no_fixtures() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let q = dir.path().join("s-q4_0.gguf");
    ok(&[&"--quiet", &"convert", &stories(), &"-t", &"q4_0", &"-o", &q]);
    let out = ok(&[&"--json", &"bench", &q, &"-p", &"16", &"-n", &"8", &"--reps", &"1", &"--bw-mib", &"8"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    for key in ["pp_tok_s", "tg_tok_s", "effective_gb_s", "fraction_of_triad"] {
        assert!(j[key].as_f64().expect(key) > 0.0, "{key}: {}", j[key]);
    }
    assert!(j["bandwidth"]["triad_gbs"].as_f64().expect("triad") > 0.0);
    let weights = j["weight_bytes_per_token"].as_u64().expect("bytes");
    let file = std::fs::metadata(&q).expect("meta").len();
    assert!(weights > 0 && weights < file, "weights read per token {weights} vs file {file}");
    assert!(j["weight_types"].to_string().contains("q4_0"), "{}", j["weight_types"]);
    fails_with(&[&"bench", &dir.path().join("missing.gguf")], &["missing.gguf"]);
}

#[test]
fn generation_is_identical_whatever_the_thread_count() {
    // Decode runs on the spinning pool (GEMV row ranges, attention per KV head); each task writes
    // only its own outputs, so the tokens must not depend on how many threads shared the work.
    // The shared SmolLM2 file (Q4_1) exercises the fused Q4_1 kernel; a Q4_K_M conversion adds
    // the Q5_0/Q4_K/Q6_K/Q8_0 ones.
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let km = t.path().join("q4_k_m.gguf");
    ok(&[&"convert", &smol_gguf(), &"--type", &"q4_k_m", &"-o", &km]);
    for model in [smol_gguf(), km] {
        let run = |threads: &str| {
            let o = ok(&[
                &"--threads",
                &threads,
                &"generate",
                &model,
                &"-p",
                &"The capital of France is",
                &"-n",
                &"24",
                &"-q",
            ]);
            String::from_utf8(o.stdout).expect("utf-8")
        };
        let one = run("1");
        assert!(one.len() > "The capital of France is".len(), "{one:?}");
        assert_eq!(one, run("2"), "{}: 1 vs 2 threads", model.display());
        assert_eq!(one, run("3"), "{}: 1 vs 3 threads", model.display());
    }
}

#[test]
fn generate_chat_renders_the_models_template_like_transformers() {
    // SmolLM2's GGUF carries its HF chat template; `--chat` renders it (trim/lstrip blocks, as
    // transformers' apply_chat_template) and tokenizes the special tokens as single ids.
    if no_fixtures() {
        return;
    }
    let smol_gguf = smol_gguf();
    let run = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&"--json", &"generate", &smol_gguf, &"-p", &"What is 2+2?", &"-n", &"4", &"-q", &"--chat"];
        args.extend_from_slice(extra);
        let o = ok(&args);
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let j = run(&[]);
    assert_eq!(
        j["prompt"],
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(j["prompt_tokens"][0], 1, "<|im_start|> is one special token");
    let j = run(&[&"--system", &"Be brief."]);
    assert_eq!(
        j["prompt"],
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    // A model without a template is told so.
    let o = quantkit(&[&"generate", &stories(), &"--chat", &"-p", &"hi", &"-n", &"2"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no chat template"), "{o:?}");
}
