//! safetensors variants: header size and JSON, dtypes, shapes and offsets, NaN/Inf weights,
//! missing tensors.

use crate::common::*;
use crate::{all, args, with, Expect, Suite};

/// Split a safetensors file into (header JSON, data).
fn st_split(b: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(b[..8].try_into().expect("8")) as usize;
    (serde_json::from_slice(&b[8..8 + n]).expect("header"), b[8 + n..].to_vec())
}

fn st_join(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

pub(crate) fn safetensors_variants(s: &mut Suite) {
    let good = std::fs::read(stories().join("model.safetensors")).expect("fixture");
    let (header, data) = st_split(&good);
    let n = u64::from_le_bytes(good[..8].try_into().expect("8")) as usize;
    let names: Vec<String> = {
        let mut v: Vec<(u64, String)> = header
            .as_object()
            .expect("obj")
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| (v["data_offsets"][0].as_u64().expect("off"), k.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    };
    let run = |s: &mut Suite, group: &'static str, label: &str, bytes: Vec<u8>, expect: Expect| {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("model.safetensors"), bytes).expect("write");
        let mut e = expect;
        e.all.push(if group == "st-model" || group == "st-values" { "stories" } else { "model.safetensors" });
        s.check(
            group,
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-t", "q8_0", "-o", "{out}"]),
            e,
        );
    };
    let trunc = &["truncated", "too short", "past the end", "exactly fill"];
    // Truncation: inside the length, inside the header, at the data, at every tensor's data.
    let mut cuts =
        vec![("empty".to_string(), 0usize), ("inside the length".into(), 5), ("after the length".into(), 8)];
    cuts.push(("inside the header".into(), 8 + n / 2));
    cuts.push(("at the data".into(), 8 + n));
    for name in &names {
        let off = header[name]["data_offsets"][0].as_u64().expect("off") as usize;
        cuts.push((format!("at the data of '{name}'"), 8 + n + off + 4));
    }
    for (label, cut) in cuts {
        run(s, "st-truncate", &label, good[..cut].to_vec(), all(&["malformed safetensors"]).or(trunc));
    }
    run(
        s,
        "st-header",
        "header length 2^40",
        with(&good, |b| b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes())),
        all(&["header length"]),
    );
    run(
        s,
        "st-header",
        "header length 0",
        with(&good, |b| b[..8].copy_from_slice(&0u64.to_le_bytes())),
        all(&["malformed safetensors"]),
    );
    run(s, "st-header", "header not JSON", with(&good, |b| b[8] = b'['), all(&["malformed safetensors"]));
    run(
        s,
        "st-header",
        "header not UTF-8",
        with(&good, |b| b[10] = 0xff),
        all(&["malformed safetensors"]).or(&["UTF-8", "utf-8"]),
    );
    let text = String::from_utf8(good[8..8 + n].to_vec()).expect("utf8 header");
    // Duplicate tensor name: the first entry's JSON repeated under its own name.
    let first = &names[0];
    let entry = serde_json::to_string(&header[first]).expect("ser");
    let dup =
        text.trim_end().strip_suffix('}').expect("object").to_string() + &format!(",\"{first}\":{entry}}}");
    run(
        s,
        "st-header",
        "duplicate tensor name",
        st_join(dup.as_bytes(), &data),
        all(&[first, "listed twice"]),
    );

    // Per tensor (a spread of them): dtype changed, shapes that overflow or do not match, offsets
    // past the end or shifted, NaN/Inf data.
    for (i, name) in names.iter().enumerate() {
        let edit = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut h = header.clone();
            f(&mut h[name.as_str()]);
            st_join(&serde_json::to_vec(&h).expect("ser"), &data)
        };
        run(
            s,
            "st-tensor",
            &format!("'{name}' dtype F16"),
            edit(&|t| t["dtype"] = "F16".into()),
            all(&[name]),
        );
        run(
            s,
            "st-tensor",
            &format!("'{name}' dtype Q9"),
            edit(&|t| t["dtype"] = "Q9".into()),
            all(&["malformed safetensors"]),
        );
        run(
            s,
            "st-tensor",
            &format!("'{name}' shape overflows"),
            edit(&|t| t["shape"] = serde_json::json!([1u64 << 40, 1u64 << 40, 1u64 << 40])),
            all(&[name, "overflow"]),
        );
        if i % 3 == 0 {
            let end = data.len() as u64 + 64;
            run(
                s,
                "st-tensor",
                &format!("'{name}' offsets past the end"),
                edit(&|t| t["data_offsets"] = serde_json::json!([end - 4, end])),
                all(&[]).or(&[name, "exactly fill", "past the end"]),
            );
            run(
                s,
                "st-tensor",
                &format!("'{name}' dtype I32"),
                edit(&|t| t["dtype"] = "I32".into()),
                all(&[name, "I32"]),
            );
        }
    }
    // Shapes that fit the bytes but not the model, a missing tensor, NaN/Inf values.
    for name in names.iter().filter(|n| n.contains("layers.1.")) {
        let shape: Vec<u64> =
            header[name]["shape"].as_array().expect("s").iter().filter_map(|d| d.as_u64()).collect();
        if shape.len() == 2 && shape[0] != shape[1] {
            let mut h = header.clone();
            h[name.as_str()]["shape"] = serde_json::json!([shape[1], shape[0]]);
            run(
                s,
                "st-model",
                &format!("'{name}' transposed"),
                st_join(&serde_json::to_vec(&h).expect("s"), &data),
                all(&[name, "shape"]),
            );
        } else if shape.len() == 2 {
            let mut h = header.clone();
            h[name.as_str()]["shape"] = serde_json::json!([shape[0] / 2, shape[1] * 2]);
            run(
                s,
                "st-model",
                &format!("'{name}' reshaped"),
                st_join(&serde_json::to_vec(&h).expect("s"), &data),
                all(&[name, "shape"]),
            );
        }
    }
    for (i, name) in names.iter().enumerate().filter(|(i, _)| i % 5 == 2) {
        let off = header[name]["data_offsets"][0].as_u64().expect("o") as usize;
        for (what, bits) in [("NaN", f32::NAN), ("-inf", f32::NEG_INFINITY)] {
            let mut d = data.clone();
            d[off + 4 * i.min(3)..off + 4 * i.min(3) + 4].copy_from_slice(&bits.to_le_bytes());
            let gguf_name = quantkit_io::names::hf_to_gguf(name).unwrap_or_default();
            run(
                s,
                "st-values",
                &format!("{what} in '{name}'"),
                st_join(&good[8..8 + n], &d),
                all(&[what]).or(&[name, &gguf_name]),
            );
        }
    }
    for name in names.iter().filter(|n| n.contains("layers.2.") || n.contains("norm.weight")).take(6) {
        let mut h = header.clone();
        let (b0, b1) = (
            h[name.as_str()]["data_offsets"][0].as_u64().expect("o"),
            h[name.as_str()]["data_offsets"][1].as_u64().expect("o"),
        );
        h.as_object_mut().expect("o").remove(name.as_str());
        // Remove its bytes and shift later tensors down.
        for (_, v) in h.as_object_mut().expect("o").iter_mut() {
            if let Some(o) = v.get_mut("data_offsets") {
                let (a, b) = (o[0].as_u64().expect("a"), o[1].as_u64().expect("b"));
                if a >= b1 {
                    *o = serde_json::json!([a - (b1 - b0), b - (b1 - b0)]);
                }
            }
        }
        let mut d = data[..b0 as usize].to_vec();
        d.extend_from_slice(&data[b1 as usize..]);
        run(
            s,
            "st-model",
            &format!("'{name}' missing"),
            st_join(&serde_json::to_vec(&h).expect("s"), &d),
            all(&[name, "is missing"]),
        );
    }
}
