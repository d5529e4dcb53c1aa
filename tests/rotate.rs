//! QuaRot's offline rotations: a rotated model computes the original function (engine logits), the
//! rotated files are ordinary and deterministic, and widths without a Hadamard matrix are refused.
//! llama.cpp's and transformers' view of the rotated files: tests/python/test_rotation.py.

mod common;

use common::*;
use quantkit_engine::{Model, WeightMode};
use quantkit_io::rotate::RotationSpec;
use quantkit_io::source::ModelSource;

/// Worst max|a − b| / max|b| over the positions of a fixed token sequence (each position's logits
/// relative to their own scale).
fn logit_gap(a: &ModelSource, b: &ModelSource) -> f64 {
    let ma = Model::load_with(a, WeightMode::Dequantized).expect("load");
    let mb = Model::load_with(b, WeightMode::Dequantized).expect("load");
    let vocab = ma.vocab_size() as u32;
    let tokens: Vec<u32> = (0..24u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let run = |m: &Model| {
        let mut cache = m.new_cache(tokens.len());
        m.forward(&tokens, &mut cache, 0, None).expect("forward")
    };
    let (la, lb) = (run(&ma), run(&mb));
    let v = vocab as usize;
    la.chunks(v)
        .zip(lb.chunks(v))
        .map(|(a, b)| {
            let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            d as f64 / b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-6) as f64
        })
        .fold(0.0, f64::max)
}

fn models() -> Vec<std::path::PathBuf> {
    let tiny = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny");
    let mut v = vec![tiny.join("qwen2"), tiny.join("mistral"), tiny.join("llama3rope")];
    if !no_fixtures() {
        v.push(stories());
        v.push(smol_gguf());
    }
    v
}

#[test]
fn a_rotated_model_computes_the_original_function() {
    for path in models() {
        for seed in [0, 17] {
            let orig = ModelSource::open(&path).expect("open");
            let rot = ModelSource::open(&path)
                .expect("open")
                .rotated(RotationSpec { seed, online_r4: false })
                .expect("rotate");
            let gap = logit_gap(&rot, &orig);
            assert!(gap < 1e-4, "{}: seed {seed}: worst relative logit difference {gap}", path.display());
            // The norms are folded out, and the output is the rotated model's own.
            let ts = rot.tensors().expect("tensors");
            let norm = ts.iter().find(|t| t.name == "blk.0.attn_norm.weight").expect("norm");
            assert!(rot.read(norm).expect("read").iter().all(|&v| v == 1.0));
            assert!(ts.iter().any(|t| t.name == "output.weight"));
            assert!(!rot.config().tie_word_embeddings);
            // And it is not the identity: the embedding moved.
            let e = ts.iter().find(|t| t.name == "token_embd.weight").expect("embd");
            assert_ne!(rot.read_rows(e, 0, 1).expect("row"), orig.read_rows(e, 0, 1).expect("row"));
        }
    }
}

#[test]
fn rotated_gguf_is_ordinary_and_deterministic() {
    if no_fixtures() {
        return;
    }
    let d = tempfile::tempdir().expect("tmp");
    let (a, b) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
    ok(&[&"convert", &stories(), &"-t", &"f32", &"--rotate", &"hadamard", &"-o", &a, &"--threads", &"1"]);
    ok(&[&"convert", &stories(), &"-t", &"f32", &"--rotate", &"hadamard", &"-o", &b, &"--threads", &"2"]);
    assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"), "1 vs 2 threads");
    // The file is a plain model: read back without any rotation, it computes the original function.
    let file = ModelSource::open(&a).expect("open rotated file");
    let gap = logit_gap(&file, &ModelSource::open(stories()).expect("open"));
    assert!(gap < 1e-4, "rotated f32 GGUF: worst relative logit difference {gap}");
    let meta = file.metadata(None).expect("metadata");
    let get = |k: &str| meta.iter().find(|(n, _)| n == k).map(|(_, v)| format!("{v:?}"));
    assert!(get("quantkit.rotation.method").expect("method").contains("quarot-hadamard"));
    assert!(get("quantkit.rotation.r1").expect("r1").contains("hadamard(64, seed 0)"));
    assert!(get("quantkit.rotation.untied_output").expect("untied").contains("true"));
    // Another seed, another file; rotating a rotated file again is refused.
    let c = d.path().join("c.gguf");
    ok(&[&"convert", &stories(), &"-t", &"f32", &"--rotate", &"hadamard", &"--rotate-seed", &"5", &"-o", &c]);
    assert_ne!(std::fs::read(&a).expect("a"), std::fs::read(&c).expect("c"));
    // An imatrix of the unrotated model is refused with the way out named.
    let im = d.path().join("im.gguf");
    std::fs::write(&im, b"not read").expect("write");
    fails_with(
        &[&"convert", &stories(), &"-t", &"q4_k_m", &"--rotate", &"hadamard", &"--imatrix", &im, &"-o", &c],
        &["--imatrix with --rotate", "quantkit quantize --rotate hadamard"],
    );
}

/// A width that is neither 2^m nor K·2^m for a carried K: a clear error naming it.
#[test]
fn widths_without_a_hadamard_matrix_are_refused_by_name() {
    let d = tempfile::tempdir().expect("tmp");
    let (h, ffn, vocab) = (100usize, 64usize, 32usize);
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": ffn, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": true,
        "torch_dtype": "float32"
    });
    std::fs::write(d.path().join("config.json"), cfg.to_string()).expect("config");
    let t = |r: usize, c: usize| -> Vec<u8> {
        (0..r * c).flat_map(|i| (((i * 37 % 101) as f32 - 50.0) / 500.0).to_le_bytes()).collect()
    };
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h], t(vocab, h)),
        ("model.norm.weight".into(), vec![h], t(1, h)),
    ];
    let l = "model.layers.0";
    for (n, r, c) in [
        ("self_attn.q_proj", h, h),
        ("self_attn.k_proj", h, h),
        ("self_attn.v_proj", h, h),
        ("self_attn.o_proj", h, h),
        ("mlp.gate_proj", ffn, h),
        ("mlp.up_proj", ffn, h),
        ("mlp.down_proj", h, ffn),
    ] {
        data.push((format!("{l}.{n}.weight"), vec![r, c], t(r, c)));
    }
    data.push((format!("{l}.input_layernorm.weight"), vec![h], t(1, h)));
    data.push((format!("{l}.post_attention_layernorm.weight"), vec![h], t(1, h)));
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &d.path().join("model.safetensors")).expect("write");
    let src = ModelSource::open(d.path()).expect("open the generated checkpoint");
    let e = src
        .rotated(RotationSpec { seed: 0, online_r4: false })
        .expect_err("width 100 has no Hadamard matrix")
        .to_string();
    assert!(e.contains("width 100") && e.contains("no Hadamard transform of size 100"), "{e}");
}

/// `--rotate quarot`: the online R4 is recorded in a compressed-tensors checkpoint and applied by
/// the engine (without it the function is lost); loaders that cannot apply it are refused.
#[test]
fn quarot_r4_is_recorded_applied_and_refused_where_it_cannot_run() {
    if no_fixtures() {
        return;
    }
    let d = tempfile::tempdir().expect("tmp");
    let text = shared().join("data/tinyshakespeare/input.txt");
    let ppl = |model: &std::path::Path| -> f64 {
        let o = ok(&[
            &"ppl",
            &model,
            &"--text",
            &text,
            &"--ctx",
            &"128",
            &"--chunks",
            &"6",
            &"--dequantize",
            &"--json",
        ]);
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        j["ppl"].as_f64().expect("ppl")
    };
    let out = d.path().join("q");
    ok(&[
        &"quantize",
        &stories(),
        &"--rotate",
        &"quarot",
        &"--method",
        &"rtn",
        &"--bits",
        &"8",
        &"--group",
        &"-1",
        &"-f",
        &"ct-w8a8",
        &"-o",
        &out,
    ]);
    let ckpt = out.join("ct-w8a8");
    let cfg_path = ckpt.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).expect("cfg")).expect("json");
    assert_eq!(cfg["quantkit_rotation"], serde_json::json!({"seed": 0, "online_r4": true}));
    // int8 weights, R4 applied: the original's perplexity (within int8 rounding).
    let base = ppl(&stories());
    let with_r4 = ppl(&ckpt);
    assert!((with_r4 / base - 1.0).abs() < 0.02, "with R4: {with_r4} vs {base}");
    assert_eq!(
        cfg["quantization_config"]["transform_config"]["config_groups"]["R4"]["type"],
        "random-hadamard"
    );
    // Without our record, compressed-tensors' online transform is one quantkit does not apply: refused.
    cfg.as_object_mut().expect("object").remove("quantkit_rotation");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    fails_with(&[&"ppl", &ckpt, &"--text", &text, &"--chunks", &"1"], &["transform \"R4\"", "online"]);
    // The same weights with no record at all: R4 is not applied and the function is lost.
    cfg["quantization_config"].as_object_mut().expect("object").remove("transform_config");
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    let without = ppl(&ckpt);
    assert!(without > 1.5 * base, "without R4: {without} vs {base}");
    // A record the engine cannot read is refused, not ignored.
    cfg["quantkit_rotation"] = serde_json::json!({"seed": 0, "online_r4": "yes"});
    std::fs::write(&cfg_path, cfg.to_string()).expect("write");
    fails_with(&[&"ppl", &ckpt, &"--text", &text, &"--chunks", &"1"], &["quantkit_rotation"]);
    // GGUF, GPTQ and bitsandbytes loaders cannot apply R4: refused before any work.
    let bad = d.path().join("bad");
    fails_with(
        &[
            &"quantize",
            &stories(),
            &"--rotate",
            &"quarot",
            &"--method",
            &"rtn",
            &"-f",
            &"gguf:q8_0",
            &"-o",
            &bad,
        ],
        &["online rotation R4", "--rotate hadamard"],
    );
    fails_with(
        &[&"quantize", &stories(), &"--rotate", &"quarot", &"--method", &"rtn", &"-f", &"gptq", &"-o", &bad],
        &["online rotation R4"],
    );
    fails_with(
        &[&"convert", &stories(), &"-t", &"f32", &"--rotate", &"quarot", &"-o", &d.path().join("x.gguf")],
        &["llama.cpp cannot apply", "--rotate hadamard"],
    );
    assert!(!d.path().join("x.gguf").exists());
}
