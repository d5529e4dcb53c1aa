//! config.json variants: missing, inconsistent, overflowing and unsupported values.

use crate::common::*;
use crate::{all, args, Expect, Suite};

pub(crate) fn config_variants(s: &mut Suite) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stories().join("config.json")).expect("cfg")).expect("json");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let set = |k: &'static str, v: serde_json::Value| -> Edit { Box::new(move |c| c[k] = v.clone()) };
    let del = |k: &'static str| -> Edit {
        Box::new(move |c| {
            c.as_object_mut().expect("obj").remove(k);
        })
    };
    let cases: Vec<(&str, Edit, Expect)> = vec![
        (
            "architecture GPT2",
            set("architectures", serde_json::json!(["GPT2LMHeadModel"])),
            all(&["unsupported", "GPT2LMHeadModel"]),
        ),
        ("architectures empty", set("architectures", serde_json::json!([])), all(&["architectures"])),
        ("architectures a number", set("architectures", serde_json::json!(5)), all(&["architectures"])),
        ("no architectures", del("architectures"), all(&["architectures"])),
        ("heads 7", set("num_attention_heads", serde_json::json!(7)), all(&["heads"])),
        ("heads 0", set("num_attention_heads", serde_json::json!(0)), all(&["num_attention_heads"])),
        ("kv heads 3", set("num_key_value_heads", serde_json::json!(3)), all(&["3 KV heads do not divide"])),
        (
            "kv heads > heads",
            set("num_key_value_heads", serde_json::json!(16)),
            all(&["num_key_value_heads"]).or(&["heads"]),
        ),
        ("hidden_size 0", set("hidden_size", serde_json::json!(0)), all(&["hidden_size"])),
        ("hidden_size negative", set("hidden_size", serde_json::json!(-64)), all(&["hidden_size"])),
        ("hidden_size a string", set("hidden_size", serde_json::json!("64")), all(&["hidden_size"])),
        (
            "hidden_size 2^62",
            set("hidden_size", serde_json::json!(1u64 << 62)),
            all(&["hidden_size"]).or(&["too large", "heads", "shape"]),
        ),
        ("no hidden_size", del("hidden_size"), all(&["hidden_size"])),
        ("layers 6", set("num_hidden_layers", serde_json::json!(6)), all(&["model.layers.5.", "is missing"])),
        (
            "layers 0",
            set("num_hidden_layers", serde_json::json!(0)),
            all(&["num_hidden_layers"]).or(&["no place"]),
        ),
        (
            "layers 2^40",
            set("num_hidden_layers", serde_json::json!(1u64 << 40)),
            all(&["num_hidden_layers"]).or(&["is missing"]),
        ),
        (
            "vocab 2^40",
            set("vocab_size", serde_json::json!(1u64 << 40)),
            all(&[]).or(&["vocab_size", "embed_tokens", "token_embd"]),
        ),
        ("vocab 0", set("vocab_size", serde_json::json!(0)), all(&["vocab_size"]).or(&["shape"])),
        (
            "intermediate 7",
            set("intermediate_size", serde_json::json!(7)),
            all(&["shape"]).or(&["mlp", "ffn"]),
        ),
        ("rms eps negative", set("rms_norm_eps", serde_json::json!(-1.0)), all(&["rms_norm_eps"])),
        ("rope theta 0", set("rope_theta", serde_json::json!(0.0)), all(&["rope_theta"])),
        (
            "rope scaling unknown",
            set("rope_scaling", serde_json::json!({"rope_type": "warp", "factor": 2.0})),
            all(&["warp"]),
        ),
        (
            "rope scaling factor 0",
            set("rope_scaling", serde_json::json!({"rope_type": "linear", "factor": 0.0})),
            all(&["factor"]),
        ),
        (
            "max positions 0",
            set("max_position_embeddings", serde_json::json!(0)),
            all(&["max_position_embeddings"]),
        ),
        (
            "quantization method unknown",
            set("quantization_config", serde_json::json!({"quant_method": "exl9"})),
            all(&["exl9"]),
        ),
        (
            "quantkit_rotation a string",
            set("quantkit_rotation", serde_json::json!("hadamard")),
            all(&["quantkit_rotation"]),
        ),
        (
            "quantkit_rotation with the online R4 into GGUF",
            set("quantkit_rotation", serde_json::json!({"seed": 0, "online_r4": true})),
            all(&["online rotation R4"]).or(&["llama.cpp cannot apply"]),
        ),
        (
            "quantization bits 13",
            set("quantization_config", serde_json::json!({"quant_method": "gptq", "bits": 13})),
            all(&["bits"]),
        ),
    ];
    for (label, edit, expect) in cases {
        let d = s.case_dir();
        let m = copy_stories(&d);
        let mut c = cfg.clone();
        edit(&mut c);
        std::fs::write(m.join("config.json"), serde_json::to_vec_pretty(&c).expect("ser")).expect("w");
        let mut e = expect;
        e.any.extend(["config.json", "model.safetensors", "stories"]);
        s.check(
            "config",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    }
    for (label, bytes) in [
        ("config empty", b"".to_vec()),
        ("config not JSON", b"{\"architectures\": [".to_vec()),
        ("config not UTF-8", b"{\"architectures\": [\"\xff\xfe\"]}".to_vec()),
        ("config a list", b"[1, 2]".to_vec()),
        ("config nested 100000 deep", [b"[".repeat(100_000), b"]".repeat(100_000)].concat()),
    ] {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("config.json"), bytes).expect("w");
        s.check(
            "config",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&["config.json"]),
        );
    }
    // Sharded checkpoints: a broken index.
    let shards = tempfile::tempdir().expect("tmp");
    let (_, hf) = sharded_stories(shards.path());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(hf.join("model.safetensors.index.json")).expect("r"))
            .expect("j");
    let idx_cases: Vec<(&str, serde_json::Value, Vec<&str>)> = vec![
        ("index without weight_map", serde_json::json!({"metadata": {}}), vec!["weight_map"]),
        ("index weight_map a list", serde_json::json!({"weight_map": []}), vec!["weight_map"]),
        (
            "shard name a number",
            serde_json::json!({"weight_map": {"model.norm.weight": 3}}),
            vec!["model.norm.weight", "not a string"],
        ),
        (
            "shard path escapes",
            serde_json::json!({"weight_map": {"model.norm.weight": "../x.safetensors"}}),
            vec!["plain file name"],
        ),
        (
            "shard name empty",
            serde_json::json!({"weight_map": {"model.norm.weight": ""}}),
            vec!["plain file name"],
        ),
        (
            "shard missing",
            {
                let mut i = index.clone();
                i["weight_map"]["model.norm.weight"] = "nope.safetensors".into();
                i
            },
            vec!["nope.safetensors"],
        ),
    ];
    for (label, idx, needles) in idx_cases {
        let d = s.case_dir();
        let m = d.join("hf");
        std::fs::create_dir(&m).expect("mkdir");
        for e in std::fs::read_dir(&hf).expect("r").flatten() {
            std::fs::copy(e.path(), m.join(e.file_name())).expect("cp");
        }
        std::fs::write(m.join("model.safetensors.index.json"), serde_json::to_vec(&idx).expect("s"))
            .expect("w");
        s.check(
            "index",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&needles),
        );
    }
}
