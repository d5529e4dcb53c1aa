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
    let m = Mem(cfg.pack(&f.weights(), "model.layers.0.mlp.up_proj"));
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
