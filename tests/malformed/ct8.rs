//! compressed-tensors 8-bit checkpoints (int8 `int-quantized`, FP8 `naive-quantized` /
//! `float-quantized`, written by `quantkit quantize`) with a damaged tensor or config: wrong weight
//! dtype, wrong scale shape or dtype, NaN/Inf scales, an FP8 NaN code, a missing scale, a stray zero
//! point, an unknown format, scheme or strategy. Each must name the tensor (or the config key).

use std::path::Path;

use crate::{all, args, Expect, Suite};

/// A safetensors file's tensors: name → (dtype, shape, bytes), in file order.
pub(crate) type Tensors = Vec<(String, String, Vec<usize>, Vec<u8>)>;

pub(crate) fn read(path: &Path) -> Tensors {
    let b = std::fs::read(path).expect("read");
    let n = u64::from_le_bytes(b[..8].try_into().expect("8")) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).expect("header");
    let mut v: Tensors = h
        .as_object()
        .expect("obj")
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| {
            let o = &t["data_offsets"];
            let (s, e) = (o[0].as_u64().expect("off") as usize, o[1].as_u64().expect("off") as usize);
            let shape = t["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            (
                k.clone(),
                t["dtype"].as_str().expect("dtype").to_string(),
                shape,
                b[8 + n + s..8 + n + e].to_vec(),
            )
        })
        .collect();
    v.sort_by_key(|t| t.0.clone());
    v
}

pub(crate) fn write(path: &Path, ts: &Tensors) {
    let mut h = serde_json::Map::new();
    let mut data = vec![];
    for (name, dt, shape, bytes) in ts {
        h.insert(
            name.clone(),
            serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(bytes);
    }
    let mut hb = serde_json::to_vec(&serde_json::Value::Object(h)).expect("json");
    while hb.len() % 8 != 0 {
        hb.push(b' ');
    }
    let mut out = (hb.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&hb);
    out.extend_from_slice(&data);
    std::fs::write(path, out).expect("write");
}

pub(crate) type Edit = Box<dyn Fn(&mut Tensors, &mut serde_json::Value)>;

/// A fresh case folder holding a copy of checkpoint folder `src` (as `m/`) with `edit` applied to
/// its tensors and config: `(case folder, checkpoint folder)`.
pub(crate) fn edited_copy(
    s: &mut Suite,
    src: &Path,
    edit: &dyn Fn(&mut Tensors, &mut serde_json::Value),
) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = s.case_dir();
    let m = d.join("m");
    std::fs::create_dir(&m).expect("mkdir");
    for e in std::fs::read_dir(src).expect("src") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, m.join(p.file_name().expect("name"))).expect("copy");
    }
    let mut ts = read(&m.join("model.safetensors"));
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.join("config.json")).expect("cfg")).expect("json");
    edit(&mut ts, &mut cfg);
    write(&m.join("model.safetensors"), &ts);
    std::fs::write(m.join("config.json"), serde_json::to_vec(&cfg).expect("json")).expect("write");
    (d, m)
}

pub(crate) fn ct8_variants(s: &mut Suite, int8: &Path, fp8: &Path) {
    const M: &str = "model.layers.1.self_attn.q_proj";
    let find = |ts: &mut Tensors, n: &str| -> usize {
        ts.iter().position(|t| t.0 == n).unwrap_or_else(|| panic!("{n} not in the fixture"))
    };
    let scale = format!("{M}.weight_scale");
    let weight = format!("{M}.weight");
    let zero_point = format!("{M}.weight_zero_point");
    let cases: Vec<(&str, &Path, Edit, Expect)> = vec![
        (
            "int8 weight stored as U8",
            int8,
            Box::new({
                let w = weight.clone();
                move |ts, _| {
                    let i = find(ts, &w);
                    ts[i].1 = "U8".into();
                }
            }),
            all(&[&weight, "U8", "I8"]),
        ),
        (
            "fp8 weight stored as F8_E5M2",
            fp8,
            Box::new({
                let w = weight.clone();
                move |ts, _| {
                    let i = find(ts, &w);
                    ts[i].1 = "F8_E5M2".into();
                }
            }),
            all(&[&weight, "F8_E5M2", "F8_E4M3"]),
        ),
        (
            "fp8 weight with a NaN code",
            fp8,
            Box::new({
                let w = weight.clone();
                move |ts, _| {
                    let i = find(ts, &w);
                    ts[i].3[7] = 0x7F;
                }
            }),
            all(&[&weight, "NaN"]),
        ),
        (
            "scale [out, 2]",
            int8,
            Box::new({
                let sc = scale.clone();
                move |ts, _| {
                    let i = find(ts, &sc);
                    ts[i].2[1] = 2;
                    let b = ts[i].3.clone();
                    ts[i].3.extend_from_slice(&b);
                }
            }),
            all(&[&scale, "shape"]),
        ),
        (
            "scale I32",
            fp8,
            Box::new({
                let sc = scale.clone();
                move |ts, _| {
                    let i = find(ts, &sc);
                    ts[i].1 = "I32".into();
                }
            }),
            all(&[&scale, "I32"]),
        ),
        (
            "scale NaN",
            int8,
            Box::new({
                let sc = scale.clone();
                move |ts, _| {
                    let i = find(ts, &sc);
                    ts[i].3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
                }
            }),
            all(&[&scale, "not finite"]),
        ),
        (
            "scale +inf",
            fp8,
            Box::new({
                let sc = scale.clone();
                move |ts, _| {
                    let i = find(ts, &sc);
                    ts[i].3[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
                }
            }),
            all(&[&scale, "not finite"]),
        ),
        (
            "scale missing",
            int8,
            Box::new({
                let sc = scale.clone();
                move |ts, _| {
                    let i = find(ts, &sc);
                    ts.remove(i);
                }
            }),
            all(&[&weight, "I8"]),
        ),
        (
            "stray zero point",
            int8,
            Box::new(move |ts, _| {
                let rows = 64;
                ts.push((format!("{M}.weight_zero_point"), "I8".into(), vec![rows, 1], vec![0; rows]));
                ts.sort_by_key(|t| t.0.clone());
            }),
            all(&[&zero_point, "symmetric"]),
        ),
        (
            "format unknown",
            fp8,
            Box::new(|_, c| c["quantization_config"]["format"] = serde_json::json!("fp8-quantized")),
            all(&["config.json", "fp8-quantized"]),
        ),
        (
            "int-quantized with float weights",
            fp8,
            Box::new(|_, c| c["quantization_config"]["format"] = serde_json::json!("int-quantized")),
            all(&["config.json", "int-quantized", "\"float\""]),
        ),
        (
            "float-quantized with int weights",
            int8,
            Box::new(|_, c| c["quantization_config"]["format"] = serde_json::json!("float-quantized")),
            all(&["config.json", "float-quantized", "\"int\""]),
        ),
        (
            "weight type unknown",
            int8,
            Box::new(|_, c| {
                c["quantization_config"]["config_groups"]["group_0"]["weights"]["type"] =
                    serde_json::json!("posit")
            }),
            all(&["config.json", "posit"]),
        ),
        (
            "strategy block",
            fp8,
            Box::new(|_, c| {
                c["quantization_config"]["config_groups"]["group_0"]["weights"]["strategy"] =
                    serde_json::json!("block")
            }),
            all(&["config.json", "block"]),
        ),
        (
            "num_bits 4 in int-quantized over int8 values",
            int8,
            Box::new(|_, c| {
                c["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] =
                    serde_json::json!(4)
            }),
            all(&["weight", "outside the 4-bit range"]),
        ),
        (
            "asymmetric",
            int8,
            Box::new(|_, c| {
                c["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] =
                    serde_json::json!(false)
            }),
            all(&["config.json", "asymmetric"]),
        ),
    ];
    // Activation schemes the engine cannot run: refused when it loads the checkpoint (`ppl`).
    let engine_cases: Vec<(&str, &Path, Edit, Expect)> = vec![
        (
            "W8A8 with static activation scales",
            int8,
            Box::new(
                |_, c| c["quantization_config"]["config_groups"]["group_0"]["input_activations"] = serde_json::json!({"dynamic": false, "num_bits": 8, "strategy": "tensor", "symmetric": true, "type": "int"}),
            ),
            all(&["config.json", "activation scheme", "dynamic false", "--dequantize"]),
        ),
        (
            "W8A8 with 3-bit activations",
            int8,
            Box::new(|_, c| {
                c["quantization_config"]["config_groups"]["group_0"]["input_activations"]["num_bits"] =
                    serde_json::json!(3)
            }),
            all(&["config.json", "activation scheme", "Some(3)"]),
        ),
        (
            "FP8 with asymmetric activations",
            fp8,
            Box::new(
                |_, c| c["quantization_config"]["config_groups"]["group_0"]["input_activations"] = serde_json::json!({"dynamic": true, "num_bits": 8, "strategy": "token", "symmetric": false, "type": "float"}),
            ),
            all(&["config.json", "activation scheme", "symmetric false"]),
        ),
    ];
    let all_cases = cases.into_iter().map(|c| (c, false)).chain(engine_cases.into_iter().map(|c| (c, true)));
    for ((label, src, edit, expect), engine) in all_cases {
        let (d, m) = edited_copy(s, src, &edit);
        let mdir = m.to_str().expect("utf8");
        let cmd = if engine {
            let text = d.join("text.txt");
            std::fs::write(&text, "Once upon a time there was a little dog. ".repeat(40)).expect("text");
            args(&["ppl", mdir, "--text", text.to_str().expect("utf8"), "--ctx", "32"])
        } else {
            args(&["convert", mdir, "-t", "q8_0", "-o", "{out}"])
        };
        s.check("ct8", label, &d, &cmd, expect);
    }
}
