//! compressed-tensors NVFP4 checkpoints (`nvfp4-pack-quantized`, written by `quantkit quantize -f
//! ct-nvfp4`) with a damaged tensor or config: packed codes of the wrong dtype or a width that is not
//! whole groups of 16, a scale of the wrong shape or with a NaN code, a zero / NaN / missing global
//! scale, a stray zero point, weights of another type, bit width, group size or symmetry. Each must
//! name the tensor (or config.json).

use std::path::Path;

use crate::ct8::{edited_copy, Edit, Tensors};
use crate::{all, args, Expect, Suite};

pub(crate) fn nvfp4_variants(s: &mut Suite, dir: &Path) {
    const M: &str = "model.layers.1.self_attn.q_proj";
    let find = |ts: &mut Tensors, n: &str| -> usize {
        ts.iter().position(|t| t.0 == n).unwrap_or_else(|| panic!("{n} not in the fixture"))
    };
    let packed = format!("{M}.weight_packed");
    let scale = format!("{M}.weight_scale");
    let global = format!("{M}.weight_global_scale");
    let zp = format!("{M}.weight_zero_point");
    let tensor_edit = |name: &String, f: fn(&mut (String, String, Vec<usize>, Vec<u8>))| -> Edit {
        let n = name.clone();
        Box::new(move |ts, _| {
            let i = find(ts, &n);
            f(&mut ts[i]);
        })
    };
    let weights = |key: &'static str, v: serde_json::Value| -> Edit {
        Box::new(move |_, c| c["quantization_config"]["config_groups"]["group_0"]["weights"][key] = v.clone())
    };
    let cases: Vec<(&str, Edit, Expect)> = vec![
        (
            "packed codes stored as I8",
            tensor_edit(&packed, |t| t.1 = "I8".into()),
            all(&[&packed, "I8", "U8"]),
        ),
        (
            "packed width not whole groups of 16",
            tensor_edit(&packed, |t| {
                let n = t.2[0] * t.2[1];
                t.2 = vec![n / 4, 4];
            }),
            all(&[&packed, "16"]),
        ),
        (
            "scale [out, 2]",
            tensor_edit(&scale, |t| {
                let n = t.2[0] * t.2[1];
                t.2 = vec![n / 2, 2];
            }),
            all(&[&scale, "shape"]),
        ),
        ("scale with a NaN code", tensor_edit(&scale, |t| t.3[3] = 0x7F), all(&[&scale, "NaN"])),
        (
            "scale I32",
            tensor_edit(&scale, |t| {
                t.1 = "I32".into();
                let n = t.3.len() / 4;
                t.2 = vec![t.2[0], n / t.2[0]];
            }),
            all(&[&scale, "I32"]),
        ),
        (
            "global scale 0",
            tensor_edit(&global, |t| t.3 = 0f32.to_le_bytes().to_vec()),
            all(&[&global, "value 0"]),
        ),
        (
            "global scale NaN",
            tensor_edit(&global, |t| t.3 = f32::NAN.to_le_bytes().to_vec()),
            all(&[&global, "NaN"]),
        ),
        (
            "global scale [2]",
            tensor_edit(&global, |t| {
                t.2 = vec![2];
                t.3.extend_from_slice(&1f32.to_le_bytes());
            }),
            all(&[&global, "[2]"]),
        ),
        (
            "global scale missing",
            Box::new({
                let g = global.clone();
                move |ts, _| ts.retain(|t| t.0 != g)
            }),
            all(&[&global]),
        ),
        (
            "stray zero point",
            Box::new({
                let (sc, z) = (scale.clone(), zp.clone());
                move |ts, _| {
                    let i = find(ts, &sc);
                    let mut t = ts[i].clone();
                    t.0 = z.clone();
                    ts.push(t);
                    ts.sort_by_key(|t| t.0.clone());
                }
            }),
            all(&[&zp, "symmetric"]),
        ),
        ("int weights", weights("type", serde_json::json!("int")), all(&["config.json", "\"int\""])),
        ("8-bit weights", weights("num_bits", serde_json::json!(8)), all(&["config.json", "Some(8)"])),
        ("group_size 32", weights("group_size", serde_json::json!(32)), all(&["config.json", "group_size"])),
        ("asymmetric", weights("symmetric", serde_json::json!(false)), all(&["config.json", "asymmetric"])),
        (
            "strategy channel",
            weights("strategy", serde_json::json!("channel")),
            all(&["config.json", "channel"]),
        ),
    ];
    for (label, edit, expect) in cases {
        let (d, m) = edited_copy(s, dir, &edit);
        s.check(
            "ct_nvfp4",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            expect,
        );
    }
}
