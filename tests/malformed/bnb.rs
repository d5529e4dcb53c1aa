//! bitsandbytes NF4 checkpoint variants: the quant-state JSON (not JSON, not an object, unknown keys,
//! an unsupported quant type, bad block size, shape, nested entries), component dtypes and sizes
//! (packed weight, absmax, nested absmax, quant map), non-finite statistics, orphaned components,
//! and config.json's bitsandbytes settings we do not read (fp4, 8-bit, other storage).

use std::path::Path;

use crate::common::*;
use crate::{all, args, Expect, Suite};

/// One stored tensor: dtype, shape, bytes.
type T = (String, Vec<usize>, Vec<u8>);

fn read_st(p: &Path) -> Vec<(String, T)> {
    let b = std::fs::read(p).expect("read");
    let n = u64::from_le_bytes(b[..8].try_into().expect("8")) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).expect("header");
    let mut v = vec![];
    for (k, e) in h.as_object().expect("obj") {
        if k == "__metadata__" {
            continue;
        }
        let (s, t) = (
            e["data_offsets"][0].as_u64().expect("o") as usize,
            e["data_offsets"][1].as_u64().expect("o") as usize,
        );
        let shape =
            e["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().expect("d") as usize).collect();
        v.push((
            k.clone(),
            (e["dtype"].as_str().expect("dt").to_string(), shape, b[8 + n + s..8 + n + t].to_vec()),
        ));
    }
    v
}

fn write_st(p: &Path, tensors: &[(String, T)]) {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (k, (dt, shape, bytes)) in tensors {
        header.insert(
            k.clone(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).expect("ser");
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(p, out).expect("write");
}

type Edit = Box<dyn Fn(&mut Vec<(String, T)>)>;

const M: &str = "model.layers.1.mlp.down_proj.weight";

fn get<'a>(v: &'a mut [(String, T)], name: &str) -> &'a mut T {
    &mut v.iter_mut().find(|(k, _)| k == name).unwrap_or_else(|| panic!("no {name}")).1
}

/// Replace module M's quant-state JSON.
fn state(edit: impl Fn(&mut serde_json::Value) + 'static) -> Edit {
    Box::new(move |v| {
        let t = get(v, &format!("{M}.quant_state.bitsandbytes__nf4"));
        let mut j: serde_json::Value = serde_json::from_slice(&t.2).expect("state json");
        edit(&mut j);
        t.2 = serde_json::to_vec(&j).expect("ser");
        t.1 = vec![t.2.len()];
    })
}

fn raw_state(bytes: &'static [u8]) -> Edit {
    Box::new(move |v| {
        let t = get(v, &format!("{M}.quant_state.bitsandbytes__nf4"));
        t.2 = bytes.to_vec();
        t.1 = vec![bytes.len()];
    })
}

/// Change a component of M (suffix after `M`).
fn part(suffix: &'static str, edit: impl Fn(&mut T) + 'static) -> Edit {
    Box::new(move |v| edit(get(v, &format!("{M}{suffix}"))))
}

fn remove(suffix: &'static str) -> Edit {
    Box::new(move |v| v.retain(|(k, _)| *k != format!("{M}{suffix}")))
}

pub(crate) fn bnb_variants(s: &mut Suite) {
    let src = tempfile::tempdir().expect("tmp");
    ok(&[
        &"quantize",
        &stories(),
        &"--method",
        &"rtn",
        &"-f",
        &"bnb-nf4-dq",
        &"-f",
        &"bnb-nf4",
        &"-o",
        &src.path(),
    ]);
    let good = read_st(&src.path().join("bnb-nf4-dq/model.safetensors"));
    let plain = read_st(&src.path().join("bnb-nf4/model.safetensors"));
    let st = format!("{M}.quant_state.bitsandbytes__nf4");
    let (n_absmax, n_nested) = (format!("{M}.absmax"), format!("{M}.nested_absmax"));
    let (n_nqm, n_qm) = (format!("{M}.nested_quant_map"), format!("{M}.quant_map"));
    let cases: Vec<(&str, bool, Edit, Expect)> = vec![
        ("state not JSON", true, raw_state(b"{\"quant_type\": [nf4"), all(&[&st, "JSON"])),
        ("state not UTF-8", true, raw_state(b"\xff\xfe{}"), all(&[&st, "JSON"])),
        ("state a list", true, raw_state(b"[1, 2]"), all(&[&st, "not a JSON object"])),
        ("state unknown key", true, state(|j| j["colour"] = "blue".into()), all(&[&st, "colour"])),
        (
            "state quant_type other",
            true,
            state(|j| j["quant_type"] = "fp4".into()),
            all(&[&st, "quant_type"]),
        ),
        ("state blocksize 63", true, state(|j| j["blocksize"] = 63.into()), all(&[&st, "blocksize"])),
        ("state blocksize string", true, state(|j| j["blocksize"] = "64".into()), all(&[&st, "blocksize"])),
        ("state dtype int8", true, state(|j| j["dtype"] = "int8".into()), all(&[&st, "dtype"])),
        (
            "state shape 3-D",
            true,
            state(|j| j["shape"] = serde_json::json!([4, 4, 688])),
            all(&[&st, "shape"]),
        ),
        ("state shape 0", true, state(|j| j["shape"] = serde_json::json!([0, 172])), all(&[&st, "shape"])),
        (
            "state shape 2^40 squared",
            true,
            state(|j| j["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40])),
            all(&[&st, "shape"]),
        ),
        (
            "state shape negative",
            true,
            state(|j| j["shape"] = serde_json::json!([-64, 172])),
            all(&[&st, "shape"]),
        ),
        (
            "state shape wrong size",
            true,
            state(|j| j["shape"] = serde_json::json!([64, 171])),
            all(&[M, "[64, 171]"]),
        ),
        (
            "state nested_offset missing",
            true,
            state(|j| {
                j.as_object_mut().expect("o").remove("nested_offset");
            }),
            all(&[&st, "together"]),
        ),
        (
            "state nested_offset string",
            true,
            state(|j| j["nested_offset"] = "0.1".into()),
            all(&[&st, "nested_offset"]),
        ),
        (
            "state nested_blocksize 0",
            true,
            state(|j| j["nested_blocksize"] = 0.into()),
            all(&[&st, "nested_blocksize"]),
        ),
        (
            "state fp4",
            true,
            Box::new(|v: &mut Vec<(String, T)>| {
                for (k, t) in v.iter_mut() {
                    if *k == format!("{M}.quant_state.bitsandbytes__nf4") {
                        *k = format!("{M}.quant_state.bitsandbytes__fp4");
                        let j = String::from_utf8(t.2.clone()).expect("utf8").replace("nf4", "fp4");
                        t.2 = j.into_bytes();
                    }
                }
            }),
            all(&["fp4", M]),
        ),
        (
            "packed weight short",
            true,
            part("", |t| {
                t.2.pop();
                t.1 = vec![t.2.len(), 1];
            }),
            all(&[M, "expected U8"]),
        ),
        ("packed weight I8", true, part("", |t| t.0 = "I8".into()), all(&[M, "expected U8"])),
        ("packed weight 2-D", true, part("", |t| t.1 = vec![t.2.len() / 2, 2]), all(&[M, "expected U8"])),
        (
            "absmax short",
            true,
            part(".absmax", |t| {
                t.2.pop();
                t.1 = vec![t.2.len()];
            }),
            all(&[&n_absmax, "expected U8"]),
        ),
        (
            "absmax F32 with nested state",
            true,
            part(".absmax", |t| {
                t.0 = "F32".into();
                t.2.truncate(t.2.len() / 4 * 4);
                t.1 = vec![t.2.len() / 4];
            }),
            all(&[&n_absmax, "expected U8"]),
        ),
        (
            "nested absmax NaN",
            true,
            part(".nested_absmax", |t| t.2[..4].copy_from_slice(&f32::NAN.to_le_bytes())),
            all(&[&n_nested, "not finite"]),
        ),
        (
            "nested absmax 2 values",
            true,
            part(".nested_absmax", |t| {
                t.2.extend_from_slice(&1f32.to_le_bytes());
                t.1 = vec![2];
            }),
            all(&[&n_nested, "expected F32"]),
        ),
        (
            "nested quant map F16",
            true,
            part(".nested_quant_map", |t| {
                t.0 = "F16".into();
                t.2.truncate(512);
            }),
            all(&[&n_nqm, "expected F32"]),
        ),
        (
            "nested quant map Inf",
            true,
            part(".nested_quant_map", |t| t.2[8..12].copy_from_slice(&f32::INFINITY.to_le_bytes())),
            all(&[&n_nqm, "not finite"]),
        ),
        (
            "quant map not NF4",
            true,
            part(".quant_map", |t| t.2[4..8].copy_from_slice(&0.5f32.to_le_bytes())),
            all(&[&n_qm, "NF4"]),
        ),
        ("quant map missing", true, remove(".quant_map"), all(&[&n_qm])),
        ("nested absmax missing", true, remove(".nested_absmax"), all(&[&n_nested])),
        ("packed weight missing", true, remove(""), all(&[M])),
        ("quant state missing", true, remove(".quant_state.bitsandbytes__nf4"), all(&["no quant state"])),
        (
            "plain absmax Inf",
            false,
            part(".absmax", |t| t.2[..4].copy_from_slice(&f32::INFINITY.to_le_bytes())),
            all(&[&n_absmax, "not finite"]),
        ),
        (
            "plain absmax U8",
            false,
            part(".absmax", |t| {
                t.0 = "U8".into();
                t.1 = vec![t.2.len()];
            }),
            all(&[&n_absmax, "expected F32"]),
        ),
        (
            "plain stray nested absmax",
            false,
            Box::new(|v: &mut Vec<(String, T)>| {
                v.push((format!("{M}.nested_absmax"), ("F32".into(), vec![1], 1f32.to_le_bytes().to_vec())));
            }),
            all(&[&n_nested, "nested"]),
        ),
    ];
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.path().join("bnb-nf4-dq/config.json")).expect("cfg"))
            .expect("json");
    for (label, dq, edit, expect) in cases {
        let d = s.case_dir();
        let m = d.join("bnbq");
        std::fs::create_dir_all(&m).expect("mkdir");
        let from = src.path().join(if dq { "bnb-nf4-dq" } else { "bnb-nf4" });
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(from.join(f), m.join(f)).expect("copy");
        }
        let mut v = if dq { good.clone() } else { plain.clone() };
        edit(&mut v);
        write_st(&m.join("model.safetensors"), &v);
        let mut e = expect;
        e.any.extend(["model.safetensors", "bnbq"]);
        s.check(
            "bnb",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    }
    // config.json: bitsandbytes settings we do not read.
    type CfgEdit = Box<dyn Fn(&mut serde_json::Value)>;
    let set = |k: &'static str, val: serde_json::Value| -> CfgEdit {
        Box::new(move |c| c["quantization_config"][k] = val.clone())
    };
    let cfg_cases: Vec<(&str, CfgEdit, Expect)> = vec![
        ("quant type fp4", set("bnb_4bit_quant_type", "fp4".into()), all(&["fp4", "config.json"])),
        (
            "quant type missing (fp4)",
            Box::new(|c| {
                c["quantization_config"].as_object_mut().expect("o").remove("bnb_4bit_quant_type");
            }),
            all(&["fp4", "config.json"]),
        ),
        ("8-bit", set("load_in_8bit", true.into()), all(&["8-bit", "config.json"])),
        (
            "neither 4 nor 8 bit",
            Box::new(|c| {
                let q = c["quantization_config"].as_object_mut().expect("o");
                q.insert("load_in_4bit".into(), false.into());
                q.insert("_load_in_4bit".into(), false.into());
            }),
            all(&["load_in_4bit", "config.json"]),
        ),
        (
            "storage bfloat16",
            set("bnb_4bit_quant_storage", "bfloat16".into()),
            all(&["quant_storage", "config.json"]),
        ),
    ];
    for (label, edit, expect) in cfg_cases {
        let d = s.case_dir();
        let m = d.join("bnbq");
        std::fs::create_dir_all(&m).expect("mkdir");
        for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(src.path().join("bnb-nf4-dq").join(f), m.join(f)).expect("copy");
        }
        let mut c = cfg.clone();
        edit(&mut c);
        std::fs::write(m.join("config.json"), serde_json::to_vec_pretty(&c).expect("ser")).expect("w");
        s.check(
            "bnb",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            expect,
        );
    }
}
