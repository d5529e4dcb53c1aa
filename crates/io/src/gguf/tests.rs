//! GGUF reader/writer round trips and hostile headers, on in-memory images.

use super::*;
use quantkit_core::GgmlType;

fn sample() -> GgufBuilder {
    let mut b = GgufBuilder::new();
    b.set("general.architecture", Value::String("llama".into()));
    b.set("u8", Value::U8(200))
        .set("i8", Value::I8(-5))
        .set("u16", Value::U16(65000))
        .set("i16", Value::I16(-300));
    b.set("u32", Value::U32(7))
        .set("i32", Value::I32(-7))
        .set("f32", Value::F32(0.5))
        .set("bool", Value::Bool(true));
    b.set("u64", Value::U64(1 << 40)).set("i64", Value::I64(-(1 << 40))).set("f64", Value::F64(1e-300));
    b.set("str", Value::String("héllo ▁ 🦙".into()));
    b.set("empty", Value::Array(ValueType::U32, vec![]));
    b.set(
        "nested",
        Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::String, vec![Value::String("a".into()), Value::String("".into())]),
                Value::Array(ValueType::I16, vec![Value::I16(1), Value::I16(-2)]),
            ],
        ),
    );
    b.add_tensor(TensorSpec { name: "a".into(), dims: vec![32, 3], ty: GgmlType::Q8_0 });
    b.add_tensor(TensorSpec { name: "b".into(), dims: vec![5], ty: GgmlType::F32 });
    b
}

fn image(b: &GgufBuilder) -> Vec<u8> {
    let mut out = Vec::new();
    b.write(
        &mut out,
        |i, sink| {
            // Pushed in two pieces: the writer must accept tensors streamed in parts.
            let bytes = vec![i as u8 + 1; b.tensors[i].size().expect("size") as usize];
            let (x, y) = bytes.split_at(bytes.len() / 2);
            sink(x)?;
            sink(y)
        },
        |e| quantkit_core::Error::Invalid(e.to_string()),
    )
    .expect("write");
    out
}

#[test]
fn every_value_type_roundtrips() {
    let b = sample();
    let g = GgufFile::from_bytes(image(&b), "mem.gguf").expect("parse");
    assert_eq!(g.version, 3);
    assert_eq!(g.metadata, b.metadata);
    assert_eq!(g.tensors.len(), 2);
    let a = g.tensor("a").expect("a");
    assert_eq!((a.dims.clone(), a.ty, a.size, a.offset), (vec![32, 3], GgmlType::Q8_0, 102, 0));
    let bt = g.tensor("b").expect("b");
    assert_eq!(bt.offset, 128, "aligned to 32 after 102 bytes");
    assert!(g.tensor_data(a).iter().all(|&x| x == 1));
    assert!(g.tensor_data(bt).iter().all(|&x| x == 2));
    assert_eq!(g.data_offset() % 32, 0);
}

#[test]
fn custom_alignment_is_honoured() {
    let mut b = sample();
    b.set("general.alignment", Value::U32(64));
    let g = GgufFile::from_bytes(image(&b), "mem.gguf").expect("parse");
    assert_eq!(g.alignment, 64);
    assert_eq!(g.tensor("b").expect("b").offset, 128);
    assert_eq!(g.data_offset() % 64, 0);
}

fn err_of(bytes: Vec<u8>) -> String {
    GgufFile::from_bytes(bytes, "bad.gguf").expect_err("must be rejected").to_string()
}

#[test]
fn hostile_headers_are_rejected_with_a_reason() {
    let b = sample();
    let good = image(&b);
    // Every truncation before the end of the last tensor's data is an error, never a panic (a cut
    // inside the final alignment padding loses nothing and is accepted).
    let parsed = GgufFile::from_bytes(good.clone(), "good.gguf").expect("good");
    let data_end = (parsed.data_offset() + 128 + 20) as usize;
    for cut in 0..data_end {
        let e = err_of(good[..cut].to_vec());
        assert!(e.contains("bad.gguf"), "{e}");
    }
    // Overlapping tensors.
    let mut img = image(&sample());
    // Rewrite tensor b's offset to 64 (inside a's 102 bytes) — find it after the name "b".
    let pat = [1u64.to_le_bytes().as_slice(), b"b", &1u32.to_le_bytes()].concat();
    let pos = img.windows(pat.len()).rposition(|w| w == pat.as_slice()).expect("tensor b info");
    let offset_pos = pos + pat.len() + 8 + 4;
    img[offset_pos..offset_pos + 8].copy_from_slice(&64u64.to_le_bytes());
    assert!(err_of(img.clone()).contains("the previous tensor 'a'"));
    // Misaligned offset.
    img[offset_pos..offset_pos + 8].copy_from_slice(&130u64.to_le_bytes());
    assert!(err_of(img.clone()).contains("not aligned"));
    // Offset past the end (and so not where the previous tensor ends).
    img[offset_pos..offset_pos + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    assert!(err_of(img.clone()).contains("starts at offset 4611686018427387904"));
    // Dimensions that overflow.
    let mut img = image(&sample());
    let dims_pos = pos + pat.len();
    img[dims_pos..dims_pos + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_of(img).contains("overflow"));
    // Unknown tensor type, row not a multiple of the block size.
    let mut img = image(&sample());
    img[dims_pos + 8..dims_pos + 12].copy_from_slice(&99u32.to_le_bytes());
    assert!(err_of(img).contains("unknown ggml type id 99"));
    let mut odd = sample();
    odd.tensors[0].dims = vec![32, 3];
    let mut img = image(&odd);
    let pat_a = [1u64.to_le_bytes().as_slice(), b"a", &2u32.to_le_bytes()].concat();
    let pa = img.windows(pat_a.len()).position(|w| w == pat_a.as_slice()).expect("tensor a info");
    img[pa + pat_a.len()..pa + pat_a.len() + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(err_of(img).contains("not a multiple of Q8_0's block size 32"));
    // Duplicate tensor names and keys.
    let mut dup = sample();
    dup.tensors[1].name = "a".into();
    assert!(dup.header().is_err(), "writer refuses duplicates");
    let mut img = image(&sample());
    let pb = img.windows(pat.len()).rposition(|w| w == pat.as_slice()).expect("b");
    img[pb + 8] = b'a';
    assert!(err_of(img).contains("duplicate tensor name"));
    let mut img = image(&sample());
    let k = [3u64.to_le_bytes().as_slice(), b"u16"].concat();
    let pk = img.windows(k.len()).position(|w| w == k.as_slice()).expect("key u16");
    img[pk + 8] = b'i'; // "u16" → "i16", a key that already exists
    assert!(err_of(img).contains("duplicate metadata key"));
    // Invalid bool byte, unknown value type, bad alignment value.
    let mut img = image(&sample());
    let kb = [4u64.to_le_bytes().as_slice(), b"bool", &7u32.to_le_bytes()].concat();
    let p = img.windows(kb.len()).position(|w| w == kb.as_slice()).expect("bool");
    img[p + kb.len()] = 2;
    assert!(err_of(img.clone()).contains("neither 0 nor 1"));
    img[p + kb.len() - 4] = 42;
    assert!(err_of(img).contains("unknown value type 42"));
    let mut al = sample();
    al.set("general.alignment", Value::U32(48));
    assert!(err_of(image(&al)).contains("power-of-two"));
}

#[test]
fn nesting_and_value_count_caps() {
    // An array nested deeper than the cap.
    let mut v = Value::Array(ValueType::U8, vec![Value::U8(1)]);
    for _ in 0..6 {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    let mut b = GgufBuilder::new();
    b.set("deep", v);
    assert!(err_of(image(&b)).contains("nested deeper"));
    // An array count larger than the bytes left.
    let mut b = GgufBuilder::new();
    b.set("arr", Value::Array(ValueType::U32, vec![Value::U32(1); 4]));
    let mut img = image(&b);
    let pat = [3u64.to_le_bytes().as_slice(), b"arr", &9u32.to_le_bytes(), &4u32.to_le_bytes()].concat();
    let p = img.windows(pat.len()).position(|w| w == pat.as_slice()).expect("arr");
    img[p + pat.len()..p + pat.len() + 8].copy_from_slice(&(1u64 << 61).to_le_bytes());
    assert!(err_of(img).contains("cannot fit"));
}
