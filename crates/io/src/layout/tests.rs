use super::*;

#[test]
fn bitstream_matches_autogptq_packing() {
    // 4 bits: value j of 8 at bits 4j.
    let w = bitstream((0..8u32).map(|v| v + 1), 8, 4);
    assert_eq!(w, vec![0x8765_4321]);
    // 3 bits: 32 values in 3 words; value 10 straddles words 0/1 (bits 30..33).
    let vals: Vec<u32> = (0..32).map(|i| (i * 5 % 8) as u32).collect();
    let w = bitstream(vals.iter().copied(), 32, 3);
    assert_eq!(w.len(), 3);
    let mut expect = [0u32; 3];
    // AutoGPTQ's pack loop for bits = 3, transcribed.
    let (mut i, mut row) = (0usize, 0usize);
    for j in i..i + 10 {
        expect[row] |= vals[j] << (3 * (j - i));
    }
    i += 10;
    expect[row] |= vals[i] << 30;
    row += 1;
    expect[row] |= (vals[i] >> 2) & 1;
    i += 1;
    for j in i..i + 10 {
        expect[row] |= vals[j] << (3 * (j - i) + 1);
    }
    i += 10;
    expect[row] |= vals[i] << 31;
    row += 1;
    expect[row] |= (vals[i] >> 1) & 3;
    i += 1;
    for j in i..i + 10 {
        expect[row] |= vals[j] << (3 * (j - i) + 2);
    }
    assert_eq!(w, expect.to_vec());
    for (k, v) in vals.iter().enumerate() {
        assert_eq!(field(|x| w[x], k, 3), *v);
    }
}

/// A `rows × cols` matrix of `bits`-bit codes with groups of `group` (the last may be shorter).
struct Fixture {
    rows: usize,
    cols: usize,
    group: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<u8>,
    g_idx: Vec<u32>,
}

impl Fixture {
    fn new(bits: u32, rows: usize, cols: usize, group: usize, zeros: impl Fn(usize) -> u8) -> Self {
        let ng = cols.div_ceil(group);
        let maxq = (1usize << bits) - 1;
        Fixture {
            rows,
            cols,
            group,
            codes: (0..rows * cols).map(|i| ((i * 7 + i / 5) % (maxq + 1)) as u8).collect(),
            // fp16 values.
            scales: (0..rows * ng).map(|i| ((i % 11) + 1) as f32 / 64.0).collect(),
            zeros: (0..rows * ng).map(zeros).collect(),
            g_idx: (0..cols).map(|c| (c / group) as u32).collect(),
        }
    }

    fn weights(&self) -> IntWeights<'_> {
        IntWeights {
            rows: self.rows,
            cols: self.cols,
            group: self.group,
            codes: &self.codes,
            scales: &self.scales,
            zeros: &self.zeros,
            g_idx: &self.g_idx,
        }
    }

    fn dequantize(&self) -> Vec<f32> {
        let ng = self.cols.div_ceil(self.group);
        let mut out = vec![0f32; self.rows * self.cols];
        for o in 0..self.rows {
            for i in 0..self.cols {
                let g = o * ng + self.g_idx[i] as usize;
                out[o * self.cols + i] =
                    self.scales[g] * (self.codes[o * self.cols + i] as f32 - self.zeros[g] as f32);
            }
        }
        out
    }
}

/// Packed tensors read back as a checkpoint would present them.
struct Mem(Vec<Packed>);

impl RawTensors for Mem {
    fn raw(&self, name: &str) -> Result<(&[u8], String, Vec<usize>)> {
        let p =
            self.0.iter().find(|p| p.spec.name == name).ok_or_else(|| Error::bad_tensor(name, "absent"))?;
        Ok((&p.bytes, format!("{:?}", p.spec.dtype), p.spec.shape.clone()))
    }

    fn file_of(&self, _: &str) -> std::path::PathBuf {
        "memory".into()
    }
}

/// bitsandbytes NF4: what `pack` stores, `unpack` reads back as exactly the weights the quantizer
/// stands for, with and without double quantization, for shapes with a ragged last block and an
/// odd weight count; damaged components are errors naming the tensor and the file.
#[test]
fn bnb_nf4_pack_unpack_round_trip() {
    use super::bnb::{Nf4Weights, StateDtype};
    for (rows, cols) in [(64, 172), (172, 64), (3, 43), (5, 7), (600, 64)] {
        let w: Vec<f32> =
            (0..rows * cols).map(|i| ((i as f32 * 0.7548).sin() + (i % 13) as f32 * 0.01) * 0.03).collect();
        for dq in [false, true] {
            let q = Nf4Weights::quantize(&w, rows, cols, 64, dq, StateDtype::F16);
            let packed = Mem(q.pack("m"));
            let got = super::bnb::unpack(&Module { src: &packed, m: "m" }).expect("unpack");
            assert_eq!(got, q.dequantize(), "{rows}x{cols} dq={dq}");
            let err = |edit: &dyn Fn(&mut Vec<Packed>)| {
                let mut p = q.pack("m");
                edit(&mut p);
                super::bnb::unpack(&Module { src: &Mem(p), m: "m" }).expect_err("damaged").to_string()
            };
            let e = err(&|p| p.retain(|t| t.spec.name != "m.weight.quant_map"));
            assert!(e.contains("m.weight.quant_map"), "{e}");
            let e = err(&|p| {
                let t = p.iter_mut().find(|t| t.spec.name == "m.weight").expect("w");
                t.bytes.push(0);
                t.spec.shape = vec![t.bytes.len(), 1];
            });
            assert!(e.contains("m.weight") && e.contains("memory"), "{e}");
        }
    }
}

fn round_trip(layout: Layout, bits: u32, sym: bool, group: usize) {
    let (rows, cols) = (64, 96);
    let mid = 1u8 << (bits - 1);
    let maxq = (1u32 << bits) - 1;
    let zmin = layout.zero_min(sym) as u32;
    let zero = |i: usize| if sym { mid } else { (zmin + (i as u32 * 5) % (maxq + 1 - zmin)) as u8 };
    let f = Fixture::new(bits, rows, cols, group, zero);
    assert!(layout.packs(bits, rows, cols));
    let file_group = layout.file_group(Some(group), [cols]);
    let cfg = LayoutConfig { layout, bits, group: file_group, sym };
    let m = Mem(cfg.pack(&f.weights(), "model.layers.0.mlp.up_proj").expect("pack"));
    let (marker, parts) = layout.components();
    assert!(m.0.iter().any(|p| p.spec.name.ends_with(&format!(".{marker}"))));
    for p in &m.0 {
        let part = p.spec.name.rsplit_once('.').map(|(_, s)| s).unwrap_or("");
        assert!(parts.contains(&part), "{layout}: {} is not a component", p.spec.name);
    }
    assert_eq!(m.0.iter().any(|p| p.spec.name.ends_with(".g_idx")), layout.stores_g_idx());
    let t = Module { src: &m, m: "model.layers.0.mlp.up_proj" };
    assert_eq!(cfg.shape(&t).expect("shape"), (rows, cols));
    assert_eq!(cfg.unpack(&t).expect("unpack"), f.dequantize(), "{layout} {bits}-bit sym {sym} g{group}");
}

#[test]
fn every_layout_unpacks_what_it_packs() {
    for bits in [2, 3, 4, 8] {
        for sym in [true, false] {
            for group in [32, 40, 96] {
                round_trip(Layout::GptqV1, bits, sym, group);
                round_trip(Layout::GptqV2, bits, sym, group);
                round_trip(Layout::CompressedTensors, bits, sym, group);
                if bits == 4 {
                    round_trip(Layout::Awq, bits, sym, group);
                }
            }
        }
    }
}

#[test]
fn regrouping_keeps_the_weights() {
    let f = Fixture::new(4, 3, 320, 128, |i| (i % 16) as u8);
    let g = Layout::Awq.file_group(Some(128), [320, 96]);
    assert_eq!(g, Some(32));
    let r = f.weights().regrouped(32);
    assert_eq!(r.groups(), 10);
    let mut d = vec![0f32; 3 * 320];
    for o in 0..3 {
        for i in 0..320 {
            let k = o * 10 + i / 32;
            d[o * 320 + i] = r.scales[k] * (r.codes[o * 320 + i] as f32 - r.zeros[k] as f32);
        }
    }
    assert_eq!(d, f.dequantize());
}

#[test]
fn capabilities() {
    for l in Layout::ALL {
        assert_eq!(Layout::parse(l.name()).expect("parses"), l);
        assert_eq!(l.to_string().parse::<Layout>().expect("parses"), l);
    }
    let e = Layout::parse("exl2").expect_err("unknown").to_string();
    assert!(e.contains("\"exl2\"") && e.contains("gptq, gptq-v2, awq, compressed-tensors"), "{e}");
    assert!(Layout::Awq.packs_bits(4) && !Layout::Awq.packs_bits(3) && Layout::GptqV1.packs_bits(3));
    let e = Layout::Awq.check_bits(3).expect_err("3 bits").to_string();
    assert!(e.contains("AWQ GEMM checkpoints hold 4-bit weights, not 3"), "{e}");
    assert_eq!(Layout::GptqV1.zero_min(false), 1);
    assert_eq!(Layout::GptqV1.zero_min(true), 0);
    assert_eq!(Layout::GptqV2.zero_min(false), 0);
    // stories260K: hidden 64, intermediate 172.
    assert!(Layout::GptqV1.packs(4, 64, 64) && !Layout::GptqV2.packs(4, 172, 64));
    assert!(Layout::Awq.packs(4, 64, 172) && !Layout::Awq.packs(4, 172, 64) && !Layout::Awq.packs(3, 64, 64));
    assert!(Layout::CompressedTensors.packs(3, 64, 172));
    assert_eq!(Layout::GptqV1.file_group(Some(128), [172]), Some(128));
    assert_eq!(Layout::CompressedTensors.file_group(Some(128), [64, 172]), Some(4));
    assert_eq!(Layout::Awq.file_group(None, [64]), None);
}

#[test]
fn config_names_the_layout() {
    let p = Path::new("m/config.json");
    let read = |q: Json| LayoutConfig::from_config(&serde_json::json!({ "quantization_config": q }), p);
    let c = read(serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": false}))
        .expect("reads")
        .expect("quantized");
    assert_eq!(c, LayoutConfig { layout: Layout::GptqV1, bits: 4, group: Some(128), sym: false });
    let c = read(serde_json::json!({"quant_method": "gptq", "bits": 3, "group_size": -1,
        "checkpoint_format": "gptq_v2"}))
    .expect("reads")
    .expect("quantized");
    assert_eq!(c, LayoutConfig { layout: Layout::GptqV2, bits: 3, group: None, sym: true });
    let c = read(serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 32, "zero_point": true,
        "version": "gemm"}))
    .expect("reads")
    .expect("quantized");
    assert_eq!(c, LayoutConfig { layout: Layout::Awq, bits: 4, group: Some(32), sym: false });
    let c = read(serde_json::json!({"quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"weights": {"num_bits": 8, "symmetric": false, "group_size": 16}}}}))
    .expect("reads")
    .expect("quantized");
    assert_eq!(c, LayoutConfig { layout: Layout::CompressedTensors, bits: 8, group: Some(16), sym: false });
    let e = read(serde_json::json!({"quant_method": "gptq", "bits": 13})).expect_err("bits").to_string();
    assert!(e.contains("config.json") && e.contains("quantization_config") && e.contains("13"), "{e}");
    assert_eq!(LayoutConfig::from_config(&serde_json::json!({}), p).expect("plain"), None);
}

#[test]
fn int8_w8a8_unpacks_what_it_packs() {
    // Per channel and (as compressed-tensors also reads it) per group; codes span 0..=255.
    for group in [96, 32] {
        let f = Fixture::new(8, 64, 96, group, |_| 128);
        let cfg =
            LayoutConfig { layout: Layout::CtW8A8, bits: 8, group: (group < 96).then_some(group), sym: true };
        let m = Mem(cfg.pack(&f.weights(), "model.layers.0.mlp.up_proj").expect("pack"));
        let names: Vec<(&str, String, Vec<usize>)> =
            m.0.iter()
                .map(|p| (p.spec.name.as_str(), format!("{:?}", p.spec.dtype), p.spec.shape.clone()))
                .collect();
        assert_eq!(
            names,
            vec![
                ("model.layers.0.mlp.up_proj.weight", "I8".into(), vec![64, 96]),
                ("model.layers.0.mlp.up_proj.weight_scale", "F32".into(), vec![64, 96 / group]),
            ]
        );
        // Stored as signed code − 128.
        assert_eq!(m.0[0].bytes[5] as i8 as i32, f.codes[5] as i32 - 128);
        let t = Module { src: &m, m: "model.layers.0.mlp.up_proj" };
        assert_eq!(cfg.shape(&t).expect("shape"), (64, 96));
        assert_eq!(cfg.unpack(&t).expect("unpack"), f.dequantize());
    }
}

#[test]
fn int4_w4a4_unpacks_what_it_packs_and_reads_its_config() {
    // Symmetric 4-bit codes 0..=15 (zero 8) stored as signed code − 8 in int8.
    let f = Fixture::new(4, 16, 48, 48, |_| 8);
    let cfg = LayoutConfig { layout: Layout::CtW4A4, bits: 4, group: None, sym: true };
    let m = Mem(cfg.pack(&f.weights(), "model.layers.0.mlp.up_proj").expect("pack"));
    assert!(f.codes.iter().all(|&c| c < 16));
    for (b, c) in m.0[0].bytes.iter().zip(&f.codes) {
        assert_eq!(*b as i8 as i32, *c as i32 - 8);
    }
    let t = Module { src: &m, m: "model.layers.0.mlp.up_proj" };
    assert_eq!(cfg.unpack(&t).expect("unpack"), f.dequantize());
    let p = Path::new("m/config.json");
    let j = |bits: u32, abits: u32| {
        serde_json::json!({ "quantization_config": {"quant_method": "compressed-tensors", "format": "int-quantized",
            "config_groups": {"group_0": {"targets": ["Linear"],
                "weights": {"num_bits": bits, "type": "int", "symmetric": true, "strategy": "channel"},
                "input_activations": {"num_bits": abits, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true}}}}})
    };
    assert_eq!(LayoutConfig::from_config(&j(4, 4), p).expect("w4a4"), Some(cfg));
    assert_eq!(
        super::ct_dense::activations(&j(4, 4), p).expect("acts"),
        super::ct_dense::DenseActs::Int4Token
    );
    assert_eq!(
        super::ct_dense::activations(&j(8, 8), p).expect("acts"),
        super::ct_dense::DenseActs::Int8Token
    );
    let e = super::ct_dense::activations(&j(4, 3), p).expect_err("3-bit activations").to_string();
    assert!(e.contains("3"), "{e}");
    let e = LayoutConfig::from_config(&j(6, 8), p).expect_err("6-bit weights").to_string();
    assert!(e.contains("Some(6) bits"), "{e}");
}

#[test]
fn fp8_unpacks_what_it_packs_and_refuses_bad_tensors() {
    let (rows, cols) = (8, 16);
    let codes: Vec<u8> =
        (0..rows * cols).map(|i| (i * 37 % 256) as u8).map(|c| if fp8::is_nan(c) { 0 } else { c }).collect();
    let scales: Vec<f32> = (0..rows).map(|r| (r + 1) as f32 / 256.0).collect();
    let zeros = vec![0u8; rows];
    let g_idx = vec![0u32; cols];
    let w =
        IntWeights { rows, cols, group: cols, codes: &codes, scales: &scales, zeros: &zeros, g_idx: &g_idx };
    for layout in [Layout::CtFp8, Layout::CtFp8Dynamic] {
        let cfg = LayoutConfig { layout, bits: 8, group: None, sym: true };
        let m = Mem(cfg.pack(&w, "m.q_proj").expect("pack"));
        assert_eq!(format!("{:?}", m.0[0].spec.dtype), "F8_E4M3");
        assert_eq!(m.0[0].bytes, codes);
        let t = Module { src: &m, m: "m.q_proj" };
        let want: Vec<f32> = (0..rows * cols).map(|i| scales[i / cols] * fp8::to_f32(codes[i])).collect();
        assert_eq!(cfg.unpack(&t).expect("unpack"), want);
        // A per-tensor scale ([1]) broadcasts.
        let mut one = m.0.clone();
        one[1] =
            Packed::new("m.q_proj.weight_scale".into(), Dtype::F32, vec![1], 0.5f32.to_le_bytes().to_vec());
        let t1 = Module { src: &Mem(one), m: "m.q_proj" };
        let half: Vec<f32> = codes.iter().map(|&c| 0.5 * fp8::to_f32(c)).collect();
        assert_eq!(cfg.unpack(&t1).expect("per tensor"), half);
        // Damage: each error names the tensor.
        let damaged = |i: usize, p: Packed| {
            let mut v = m.0.clone();
            v[i] = p;
            cfg.unpack(&Module { src: &Mem(v), m: "m.q_proj" }).expect_err("damaged").to_string()
        };
        let e = damaged(0, Packed::new("m.q_proj.weight".into(), Dtype::I8, vec![rows, cols], codes.clone()));
        assert!(e.contains("m.q_proj.weight") && e.contains("I8") && e.contains("F8_E4M3"), "{e}");
        let mut nan = codes.clone();
        nan[3] = 0xFF;
        let e = damaged(0, Packed::new("m.q_proj.weight".into(), Dtype::F8_E4M3, vec![rows, cols], nan));
        assert!(e.contains("m.q_proj.weight") && e.contains("NaN"), "{e}");
        let e = damaged(
            1,
            Packed::new("m.q_proj.weight_scale".into(), Dtype::F32, vec![rows, 2], vec![0; rows * 8]),
        );
        assert!(e.contains("m.q_proj.weight_scale") && e.contains("[8, 2]"), "{e}");
        let e = damaged(
            1,
            Packed::new("m.q_proj.weight_scale".into(), Dtype::I32, vec![rows, 1], vec![0; rows * 4]),
        );
        assert!(e.contains("m.q_proj.weight_scale") && e.contains("I32"), "{e}");
        let e = damaged(
            1,
            Packed::new(
                "m.q_proj.weight_scale".into(),
                Dtype::F32,
                vec![rows, 1],
                f32_bytes((0..rows).map(|_| f32::INFINITY)),
            ),
        );
        assert!(e.contains("m.q_proj.weight_scale") && e.contains("not finite"), "{e}");
        let mut zp = m.0.clone();
        zp.push(Packed::new("m.q_proj.weight_zero_point".into(), Dtype::I8, vec![rows, 1], vec![0; rows]));
        let e = cfg.unpack(&Module { src: &Mem(zp), m: "m.q_proj" }).expect_err("zp").to_string();
        assert!(e.contains("m.q_proj.weight_zero_point") && e.contains("symmetric"), "{e}");
    }
}

#[test]
fn config_reads_the_8bit_formats_and_refuses_bad_ones() {
    let p = Path::new("m/config.json");
    let read = |fmt: &str, w: Json, acts: Json| {
        LayoutConfig::from_config(
            &serde_json::json!({ "quantization_config": {"quant_method": "compressed-tensors", "format": fmt,
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": acts}}}}),
            p,
        )
    };
    let w =
        |ty: &str| serde_json::json!({"num_bits": 8, "type": ty, "symmetric": true, "strategy": "channel"});
    let act = |ty: &str| serde_json::json!({"num_bits": 8, "type": ty, "symmetric": true, "strategy": "token", "dynamic": true});
    let cfg = |layout, group| Some(LayoutConfig { layout, bits: 8, group, sym: true });
    assert_eq!(read("int-quantized", w("int"), act("int")).expect("w8a8"), cfg(Layout::CtW8A8, None));
    assert_eq!(read("int-quantized", w("int"), Json::Null).expect("w8a16 int"), cfg(Layout::CtW8A8, None));
    assert_eq!(read("naive-quantized", w("float"), Json::Null).expect("fp8"), cfg(Layout::CtFp8, None));
    assert_eq!(
        read("float-quantized", w("float"), act("float")).expect("fp8 dyn"),
        cfg(Layout::CtFp8Dynamic, None)
    );
    let tensor = serde_json::json!({"num_bits": 8, "type": "float", "strategy": "tensor"});
    assert_eq!(
        read("float-quantized", tensor, act("float")).expect("per tensor"),
        cfg(Layout::CtFp8Dynamic, None)
    );
    let grouped = serde_json::json!({"num_bits": 8, "type": "int", "strategy": "group", "group_size": 32});
    assert_eq!(read("int-quantized", grouped, act("int")).expect("group"), cfg(Layout::CtW8A8, Some(32)));
    for (fmt, wt, what) in [
        ("int-quantized", w("float"), "\"float\""),
        ("float-quantized", w("int"), "\"int\""),
        ("marlin-24", w("int"), "marlin-24"),
        (
            "int-quantized",
            serde_json::json!({"num_bits": 6, "type": "int", "strategy": "channel"}),
            "Some(6)",
        ),
        (
            "int-quantized",
            serde_json::json!({"num_bits": 8, "type": "int", "symmetric": false}),
            "asymmetric",
        ),
        (
            "float-quantized",
            serde_json::json!({"num_bits": 8, "type": "float", "strategy": "block"}),
            "\"block\"",
        ),
        (
            "int-quantized",
            serde_json::json!({"num_bits": 8, "type": "int", "strategy": "group"}),
            "group_size",
        ),
    ] {
        let e = read(fmt, wt, Json::Null).expect_err(fmt).to_string();
        assert!(e.contains("config.json") && e.contains(what), "{fmt}: {e}");
    }
}

#[test]
fn the_8bit_layouts_take_symmetric_per_channel_grids() {
    for l in [Layout::CtW8A8, Layout::CtFp8, Layout::CtFp8Dynamic] {
        assert!(l.check_grid(8, None, true).is_ok());
        assert!(l.check_bits(4).is_err());
        let e = l.check_grid(8, Some(128), true).expect_err("groups").to_string();
        assert!(e.contains("per-channel") && e.contains("groups of 128"), "{e}");
        assert!(l.check_grid(8, None, false).expect_err("asym").to_string().contains("asymmetric"));
        assert!(l.packs(8, 172, 64) && !l.stores_g_idx());
    }
    assert!(Layout::CtFp8.is_float() && Layout::CtFp8Dynamic.is_float() && !Layout::CtW8A8.is_float());
    assert!(Layout::CompressedTensors.check_grid(4, Some(128), false).is_ok());
}

/// xorshift64 values, roughly normal-ish with outliers, never all zero.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            u * 0.1 * if i % 37 == 0 { 8.0 } else { 1.0 }
        })
        .collect()
}

#[test]
fn e2m1_rounds_as_compressed_tensors_casts() {
    use super::ct_nvfp4::{e2m1, e2m1_code};
    // cast_to_fp4's buckets: ties to the even mantissa.
    for (x, v) in [
        (0.0, 0.0),
        (0.25, 0.0),
        (0.2501, 0.5),
        (0.75, 1.0),
        (0.7499, 0.5),
        (1.25, 1.0),
        (1.2501, 1.5),
        (1.75, 2.0),
        (2.5, 2.0),
        (2.5001, 3.0),
        (3.5, 4.0),
        (5.0, 4.0),
        (5.0001, 6.0),
        (6.0, 6.0),
    ] {
        assert_eq!(e2m1(e2m1_code(x)), v, "{x}");
        assert_eq!(e2m1(e2m1_code(-x)), -v, "-{x}");
    }
    // Negative values that round to zero keep the sign bit (compressed-tensors packs −0 as 8).
    assert_eq!(e2m1_code(-0.1), 8);
    assert_eq!(e2m1_code(-0.0), 0);
    for c in 0u8..16 {
        let back = e2m1_code(e2m1(c));
        assert_eq!(back, if c == 8 { 0 } else { c }, "{c}");
    }
    assert_eq!((0u8..8).map(e2m1).collect::<Vec<_>>(), [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
}

/// NVFP4: `pack` stores what `unpack` reads back as exactly the quantizer's weights, nibbles low
/// first; the quantizer follows llm-compressor (global scale, E4M3 group scales, nearest codes).
#[test]
fn nvfp4_pack_unpack_round_trip() {
    use super::ct_nvfp4::{e2m1, global_scale, Nvfp4Weights, GROUP};
    for (rows, cols, seed) in [(3, 64, 1u64), (5, 176, 2), (64, 16, 3)] {
        let w = noise(rows * cols, seed);
        assert!(w.iter().any(|&x| x != 0.0));
        let amax = w.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let g = global_scale(amax);
        assert_eq!(g, (1.0 / amax) * 2688.0);
        let q = Nvfp4Weights::quantize(&w, rows, cols, g);
        let m = Mem(q.pack("m.up_proj"));
        let names: Vec<(&str, String, Vec<usize>)> =
            m.0.iter()
                .map(|p| (p.spec.name.as_str(), format!("{:?}", p.spec.dtype), p.spec.shape.clone()))
                .collect();
        assert_eq!(
            names,
            vec![
                ("m.up_proj.weight_global_scale", "F32".into(), vec![1]),
                ("m.up_proj.weight_packed", "U8".into(), vec![rows, cols / 2]),
                ("m.up_proj.weight_scale", "F8_E4M3".into(), vec![rows, cols / GROUP]),
            ]
        );
        // Byte k = code 2k in the low nibble, code 2k + 1 in the high one.
        for k in 0..rows * cols / 2 {
            assert_eq!(m.0[1].bytes[k], q.codes[2 * k] | (q.codes[2 * k + 1] << 4));
        }
        let cfg = LayoutConfig { layout: Layout::CtNvfp4, bits: 4, group: Some(GROUP), sym: true };
        let t = Module { src: &m, m: "m.up_proj" };
        assert_eq!(cfg.shape(&t).expect("shape"), (rows, cols));
        let got = cfg.unpack(&t).expect("unpack");
        assert_eq!(got, q.dequantize());
        // Nearest code under each group's scale, and the group's largest magnitude near ±6.
        let ng = cols / GROUP;
        for (i, (&x, &c)) in w.iter().zip(&q.codes).enumerate() {
            let eff = fp8::to_f32(q.scales[(i / cols) * ng + (i % cols) / GROUP]) / g;
            let y = x / eff;
            let best = (0u8..16).map(|k| (e2m1(k) - y).abs()).fold(f32::INFINITY, f32::min);
            assert!((e2m1(c) - y).abs() <= best * (1.0 + 1e-6) + 1e-6, "{i}: {x} → {c}");
            assert_eq!(got[i], e2m1(c) * eff);
        }
        for (k, grp) in w.chunks(GROUP).enumerate() {
            let a = grp.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let s = fp8::to_f32(q.scales[k]);
            assert_eq!(q.scales[k], fp8::from_f32(g * (a / 6.0)), "group {k}");
            assert!((a / (s / g) - 6.0).abs() < 6.0 / 8.0, "group {k}: {a} {s}");
        }
        // LayoutConfig::pack does not take NVFP4 (no global scale in IntWeights).
        let f = Fixture::new(4, rows, cols, 16, |_| 8);
        assert!(cfg.pack(&f.weights(), "m").is_err());
    }
    // An all-zero tensor: global 1, scales the package's eps (0.125), codes 0.
    let z = Nvfp4Weights::quantize(&[0.0; 32], 2, 16, global_scale(0.0));
    assert_eq!(z.global, 1.0);
    assert!(z.scales.iter().all(|&s| fp8::to_f32(s) == 0.125) && z.codes.iter().all(|&c| c == 0));
    assert!(z.dequantize().iter().all(|&v| v == 0.0));
}

#[test]
fn nvfp4_refuses_damaged_tensors_naming_them() {
    use super::ct_nvfp4::{global_scale, Nvfp4Weights};
    let (rows, cols) = (4, 32);
    let w = noise(rows * cols, 9);
    let q = Nvfp4Weights::quantize(&w, rows, cols, global_scale(0.4));
    let cfg = LayoutConfig { layout: Layout::CtNvfp4, bits: 4, group: Some(16), sym: true };
    let base = q.pack("m.q_proj");
    let damaged = |edit: &dyn Fn(&mut Vec<Packed>)| {
        let mut v = base.clone();
        edit(&mut v);
        let m = Mem(v);
        let t = Module { src: &m, m: "m.q_proj" };
        cfg.shape(&t).and_then(|_| cfg.unpack(&t)).expect_err("damaged").to_string()
    };
    let set = |v: &mut Vec<Packed>, p: Packed| {
        let i = v.iter().position(|t| t.spec.name == p.spec.name).expect("present");
        v[i] = p;
    };
    let gs = |x: f32| {
        Packed::new("m.q_proj.weight_global_scale".into(), Dtype::F32, vec![1], x.to_le_bytes().to_vec())
    };
    for (g, what) in [(0.0, "value 0"), (f32::NAN, "NaN"), (-2.0, "-2"), (f32::INFINITY, "inf")] {
        let e = damaged(&|v| set(v, gs(g)));
        assert!(e.contains("m.q_proj.weight_global_scale") && e.contains(what), "{g}: {e}");
    }
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_global_scale".into(), Dtype::F32, vec![2], vec![0; 8]))
    });
    assert!(e.contains("weight_global_scale") && e.contains("[2]"), "{e}");
    let e = damaged(&|v| v.retain(|t| !t.spec.name.ends_with("weight_global_scale")));
    assert!(e.contains("m.q_proj.weight_global_scale"), "{e}");
    let e = damaged(&|v| {
        set(
            v,
            Packed::new(
                "m.q_proj.weight_packed".into(),
                Dtype::I32,
                vec![rows, cols / 8],
                vec![0; rows * cols / 2],
            ),
        )
    });
    assert!(e.contains("m.q_proj.weight_packed") && e.contains("I32"), "{e}");
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_packed".into(), Dtype::U8, vec![rows, 7], vec![0; rows * 7]))
    });
    assert!(e.contains("m.q_proj.weight_packed") && e.contains("16"), "{e}");
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_scale".into(), Dtype::F8_E4M3, vec![rows, 1], vec![0x38; rows]))
    });
    assert!(e.contains("m.q_proj.weight_scale") && e.contains("[4, 2]"), "{e}");
    let mut nan = q.scales.clone();
    nan[5] = 0x7F;
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_scale".into(), Dtype::F8_E4M3, vec![rows, 2], nan.clone()))
    });
    assert!(e.contains("m.q_proj.weight_scale") && e.contains("NaN"), "{e}");
    let inf = f32_bytes((0..rows * 2).map(|i| if i == 3 { f32::INFINITY } else { 1.0 }));
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_scale".into(), Dtype::F32, vec![rows, 2], inf.clone()))
    });
    assert!(e.contains("m.q_proj.weight_scale") && e.contains("not finite"), "{e}");
    let e = damaged(&|v| {
        set(v, Packed::new("m.q_proj.weight_scale".into(), Dtype::I32, vec![rows, 2], vec![0; rows * 8]))
    });
    assert!(e.contains("m.q_proj.weight_scale") && e.contains("I32"), "{e}");
    let e = damaged(&|v| {
        v.push(Packed::new(
            "m.q_proj.weight_zero_point".into(),
            Dtype::F8_E4M3,
            vec![rows, 2],
            vec![0; rows * 2],
        ))
    });
    assert!(e.contains("m.q_proj.weight_zero_point") && e.contains("symmetric"), "{e}");
    // F32 scales (any float dtype) read as their values.
    let f: Vec<f32> = q.scales.iter().map(|&b| fp8::to_f32(b)).collect();
    let mut v = base.clone();
    set(
        &mut v,
        Packed::new("m.q_proj.weight_scale".into(), Dtype::F32, vec![rows, 2], f32_bytes(f.into_iter())),
    );
    let m = Mem(v);
    assert_eq!(cfg.unpack(&Module { src: &m, m: "m.q_proj" }).expect("f32 scales"), q.dequantize());
}

#[test]
fn config_reads_nvfp4_and_refuses_other_schemes() {
    let p = Path::new("m/config.json");
    let read = |w: Json, acts: Json| {
        LayoutConfig::from_config(
            &serde_json::json!({ "quantization_config": {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                "config_groups": {"group_0": {"targets": ["Linear"], "weights": w, "input_activations": acts}}}}),
            p,
        )
    };
    let want = Some(LayoutConfig { layout: Layout::CtNvfp4, bits: 4, group: Some(16), sym: true });
    let w = super::ct_nvfp4::weights_args();
    assert_eq!(read(w.clone(), Json::Null).expect("nvfp4a16"), want);
    // NVFP4 (W4A4): the activation scheme does not change the weights.
    assert_eq!(read(w.clone(), w.clone()).expect("nvfp4"), want);
    for (edit, what) in [
        (("type", serde_json::json!("int")), "\"int\""),
        (("num_bits", serde_json::json!(8)), "Some(8)"),
        (("group_size", serde_json::json!(32)), "Some(32)"),
        (("symmetric", serde_json::json!(false)), "asymmetric"),
        (("strategy", serde_json::json!("channel")), "\"channel\""),
    ] {
        let mut bad = w.clone();
        bad[edit.0] = edit.1;
        let e = read(bad, Json::Null).expect_err(what).to_string();
        assert!(e.contains("config.json") && e.contains(what), "{what}: {e}");
    }
    assert!(
        Layout::CtNvfp4.packs(4, 172, 64)
            && !Layout::CtNvfp4.packs(4, 64, 172)
            && !Layout::CtNvfp4.packs(8, 64, 64)
    );
    assert!(Layout::CtNvfp4.check_grid(4, Some(16), true).is_ok());
    assert!(Layout::CtNvfp4.check_grid(4, Some(128), true).is_err());
    assert!(Layout::CtNvfp4.is_nvfp4() && !Layout::CtNvfp4.is_float());
}
