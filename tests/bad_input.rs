//! Bad input gets a clear error that names the problem and the place, exit code 1, no panic and
//! no output file left behind. (The generated corpus of damaged files is tests/malformed/.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use quantkit_io::safetensors::{write_safetensors, SafetensorsFile, StTensorSpec};

/// Rewrite a copy of stories260K's safetensors with `edit` applied to the f32 tensors.
fn rewrite_weights(dir: &Path, edit: impl Fn(&mut BTreeMap<String, (Vec<usize>, Vec<f32>)>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = BTreeMap::new();
    {
        let f = SafetensorsFile::open(&path).expect("open");
        for n in f.names() {
            let shape = f.info(&n).expect("info").shape.clone();
            tensors.insert(n.clone(), (shape, f.read_f32(&n).expect("read")));
        }
    }
    edit(&mut tensors);
    let specs: Vec<StTensorSpec> = tensors
        .iter()
        .map(|(n, (s, _))| StTensorSpec { name: n.clone(), dtype: safetensors::Dtype::F32, shape: s.clone() })
        .collect();
    let data: Vec<Vec<u8>> =
        tensors.values().map(|(_, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    write_safetensors(&path, &specs, &BTreeMap::new(), |i, sink| sink(&data[i])).expect("write");
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
    edit(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("ser")).expect("write");
}

const FIXTURE_FILES: &[&str] =
    &["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"];

#[test]
fn hf_folder_problems() {
    if no_fixtures() {
        return;
    }
    type Case = (&'static str, Box<dyn Fn(&Path)>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "unsupported architecture",
            Box::new(|d| edit_config(d, |c| c["architectures"] = serde_json::json!(["GPT2LMHeadModel"]))),
            vec!["unsupported", "GPT2LMHeadModel", "config.json"],
        ),
        (
            "heads do not divide width",
            Box::new(|d| {
                edit_config(d, |c| {
                    c["num_attention_heads"] = serde_json::json!(7);
                    c.as_object_mut().expect("obj").remove("head_dim");
                })
            }),
            vec!["config.json", "7 heads do not divide hidden_size 64"],
        ),
        (
            "kv heads do not divide heads",
            Box::new(|d| edit_config(d, |c| c["num_key_value_heads"] = serde_json::json!(3))),
            vec!["num_key_value_heads", "3 KV heads do not divide 8 heads"],
        ),
        (
            "config says more layers than the weights have",
            Box::new(|d| edit_config(d, |c| c["num_hidden_layers"] = serde_json::json!(6))),
            vec!["model.layers.5.", "is missing", "6 layers"],
        ),
        (
            "config is not JSON",
            Box::new(|d| std::fs::write(d.join("config.json"), b"{\"architectures\": [").expect("w")),
            vec!["config.json", "malformed", "line 1"],
        ),
        (
            "NaN weight",
            Box::new(|d| {
                rewrite_weights(d, |t| {
                    t.get_mut("model.layers.2.mlp.up_proj.weight").expect("t").1[130] = f32::NAN
                })
            }),
            vec!["blk.2.ffn_up.weight", "NaN at element 130", "row 2, column 2"],
        ),
        (
            "Inf weight",
            Box::new(|d| {
                rewrite_weights(d, |t| t.get_mut("model.norm.weight").expect("t").1[3] = f32::NEG_INFINITY)
            }),
            vec!["output_norm.weight", "-inf at element 3"],
        ),
        (
            "missing tensor",
            Box::new(|d| {
                rewrite_weights(d, |t| {
                    t.remove("model.layers.3.self_attn.v_proj.weight");
                })
            }),
            vec!["model.layers.3.self_attn.v_proj.weight", "is missing"],
        ),
        (
            "wrong shape",
            Box::new(|d| {
                rewrite_weights(d, |t| {
                    let (s, v) = t.get_mut("model.layers.1.self_attn.o_proj.weight").expect("t");
                    *s = vec![32, 128];
                    let _ = v;
                })
            }),
            vec!["model.layers.1.self_attn.o_proj.weight", "shape [32, 128]", "expected [64, 64]"],
        ),
        (
            "unknown tensor",
            Box::new(|d| {
                rewrite_weights(d, |t| {
                    t.insert("vision_tower.proj.weight".into(), (vec![2], vec![0.0, 1.0]));
                })
            }),
            vec!["vision_tower.proj.weight", "no place"],
        ),
        (
            "truncated safetensors",
            Box::new(|d| {
                let p = d.join("model.safetensors");
                let b = std::fs::read(&p).expect("r");
                std::fs::write(&p, &b[..b.len() - 1000]).expect("w");
            }),
            vec!["model.safetensors", "malformed safetensors", "truncated"],
        ),
        (
            "safetensors header length beyond the file",
            Box::new(|d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).expect("r");
                b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
                std::fs::write(&p, &b).expect("w");
            }),
            vec!["model.safetensors", "header length"],
        ),
        (
            "safetensors header is not JSON",
            Box::new(|d| {
                let p = d.join("model.safetensors");
                let mut b = std::fs::read(&p).expect("r");
                b[8] = b'[';
                std::fs::write(&p, &b).expect("w");
            }),
            vec!["model.safetensors", "malformed safetensors"],
        ),
        (
            "no weights at all",
            Box::new(|d| std::fs::remove_file(d.join("model.safetensors")).expect("rm")),
            vec!["no model.safetensors"],
        ),
    ];
    for (what, damage, needles) in cases {
        let t = tempfile::tempdir().expect("tmp");
        let d = copy_stories(t.path());
        damage(&d);
        let out = t.path().join("out.gguf");
        eprintln!("case: {what}");
        fails_with(&[&"convert", &d, &"--type", &"q8_0", &"-o", &out], &needles);
        only_files(t.path(), &["stories"]);
        let left: Vec<_> = std::fs::read_dir(&d).expect("dir").map(|e| e.expect("e").file_name()).collect();
        assert!(left.len() <= FIXTURE_FILES.len(), "{what}: files appeared in the input folder");
    }
}

#[test]
fn sharded_index_problems() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let (_, hf) = sharded_stories(t.path());
    let index_path = hf.join("model.safetensors.index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("r")).expect("json");

    // The index names a tensor that is not in the shard it points to.
    let mut bad = index.clone();
    let other = bad["weight_map"]["model.norm.weight"].clone();
    bad["weight_map"]["model.layers.0.mlp.up_proj.weight"] = other;
    std::fs::write(&index_path, serde_json::to_vec(&bad).expect("ser")).expect("w");
    let out = t.path().join("out.gguf");
    fails_with(
        &[&"convert", &hf, &"-o", &out],
        &["model.layers.0.mlp.up_proj.weight", "is missing", "index.json says"],
    );

    // The index points outside the model folder.
    let mut bad = index.clone();
    bad["weight_map"]["model.norm.weight"] = serde_json::json!("../../etc/passwd");
    std::fs::write(&index_path, serde_json::to_vec(&bad).expect("ser")).expect("w");
    fails_with(&[&"convert", &hf, &"-o", &out], &["model.norm.weight", "plain file name"]);

    // A shard is gone.
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("ser")).expect("w");
    let shard = hf.join(index["weight_map"]["model.norm.weight"].as_str().expect("s"));
    std::fs::remove_file(&shard).expect("rm");
    fails_with(
        &[&"convert", &hf, &"-o", &out],
        &[shard.file_name().expect("n").to_str().expect("utf8"), "No such file"],
    );
    assert!(!out.exists());
}

#[test]
fn failed_conversion_keeps_the_previous_output_and_bad_arguments_are_clear() {
    if no_fixtures() {
        return;
    }
    let t = tempfile::tempdir().expect("tmp");
    let out = t.path().join("model.gguf");
    std::fs::write(&out, b"previous contents").expect("w");
    let d = copy_stories(t.path());
    rewrite_weights(&d, |w| w.get_mut("model.layers.4.mlp.down_proj.weight").expect("t").1[0] = f32::NAN);
    fails_with(&[&"convert", &d, &"-o", &out], &["NaN"]);
    assert_eq!(std::fs::read(&out).expect("r"), b"previous contents");
    only_files(t.path(), &["model.gguf", "stories"]);
    fails_with(&[&"convert", &stories(), &"-o", &t.path().join("no/such/dir/x.gguf")], &["does not exist"]);
    fails_with(&[&"convert", &t.path().join("nothing-here"), &"-o", &out], &["no such file or directory"]);
    let o = quantkit(&[&"convert", &stories(), &"--type", &"q9_9", &"-o", &out]);
    assert_eq!(o.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown type"));
    let o = quantkit(&[&"convert", &stories(), &"--type", &"iq2_xxs", &"-o", &out]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not implemented yet"));
    // export-hf refuses to overwrite without --force, and a failed export leaves nothing
    let g = t.path().join("s.gguf");
    ok(&[&"convert", &stories(), &"-o", &g]);
    std::fs::create_dir(t.path().join("exists")).expect("mkdir");
    fails_with(&[&"export-hf", &g, &"-o", &t.path().join("exists")], &["already exists", "--force"]);
    // --json errors are JSON on stdout
    let o = quantkit(&[&"inspect", &t.path().join("nothing-here"), &"--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json error");
    assert!(j["error"].as_str().expect("msg").contains("no such file"));
}

#[test]
fn bad_imatrix_files_and_recipes_are_refused_without_output() {
    if no_fixtures() {
        return;
    }
    use quantkit_io::imatrix::{Entry, Imatrix};
    let t = tempfile::tempdir().expect("tmp");
    let out = t.path().join("out.gguf");
    // An entry sized for another model: the error names the imatrix and the tensor.
    let mut entries = std::collections::BTreeMap::new();
    entries.insert("blk.0.attn_q.weight".to_string(), Entry { sums: vec![1.0; 100], counts: vec![1.0] });
    let m = Imatrix {
        path: Default::default(),
        entries,
        datasets: vec![],
        chunk_count: 1,
        chunk_size: 1,
        legacy: false,
    };
    let im = t.path().join("imatrix.gguf");
    m.write_gguf(&im).expect("write");
    fails_with(
        &[&"convert", &stories(), &"-t", &"q4_0", &"--imatrix", &im, &"-o", &out],
        &["imatrix.gguf", "blk.0.attn_q.weight", "100 values"],
    );
    // Not an imatrix at all, and a truncated legacy file.
    let junk = t.path().join("junk.dat");
    std::fs::write(&junk, b"\x05\x00\x00\x00abc").expect("w");
    fails_with(&[&"convert", &stories(), &"-t", &"q4_0", &"--imatrix", &junk, &"-o", &out], &["junk.dat"]);
    // A recipe file that is not a recipe, and a bad --tensor-type regex.
    let r = t.path().join("r.toml");
    std::fs::write(&r, "[mix]\nname = 'X'\n").expect("w");
    fails_with(&[&"convert", &stories(), &"--recipe", &r, &"-o", &out], &["r.toml", "not a valid recipe"]);
    fails_with(
        &[&"convert", &stories(), &"-t", &"q4_0", &"--tensor-type", &"(=q8_0", &"-o", &out],
        &["--tensor-type", "("],
    );
    only_files(t.path(), &["imatrix.gguf", "junk.dat", "r.toml"]);
}
