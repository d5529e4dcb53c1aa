//! Fuzz harness: one entry per parser of untrusted input. Each takes arbitrary bytes, must return
//! (an error is a fine answer) and never panic, hang or allocate without bound.
//!
//! The same table drives the coverage-guided fuzz targets (`tests/fuzz/`, cargo-fuzz on nightly,
//! run by `scripts/fuzz.sh`) and the stable replay test (`tests/fuzz_corpus.rs`, in CI), which runs
//! every committed seed and every crash reproducer under `tests/fuzz/{corpus,regressions}/<name>/`.
//! A new parser joins by adding a line to [`TARGETS`] (and a two-line file in
//! `tests/fuzz/fuzz_targets/`).
//!
//! Besides "no panic", the targets check one property of every error: it names the file it is
//! about, so a user with many files knows which one is bad.

use std::path::Path;

use quantkit_core::Error;
use quantkit_io::gguf::GgufFile;
use quantkit_io::safetensors::SafetensorsFile;

/// (name, entry point). Names are the fuzz target names and corpus folder names.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("gguf", gguf),
    ("safetensors", safetensors),
    ("hf_config", hf_config),
    ("hf_index", hf_index),
    ("imatrix", imatrix),
    ("gguf_tokenizer", gguf_tokenizer),
    ("base_logits", base_logits),
    ("calib_resid", calib_resid),
    ("calib_layer", calib_layer),
    ("bnb_nf4", bnb_nf4),
    ("ct_nvfp4", ct_nvfp4),
];

/// Run target `name` on `data` (panics on an unknown name: a harness bug, not an input one).
pub fn run(name: &str, data: &[u8]) {
    let (_, f) =
        TARGETS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no fuzz target {name:?}"));
    f(data)
}

/// Every error from reading `file` must say which file.
fn names_file(r: &Result<impl Sized, Error>, file: &str) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(msg.contains(file), "error does not name {file}: {msg}");
    }
}

/// Most elements a target dequantizes per input (keeps each execution short; sizes are already
/// bounded by the input's length, this bounds the time).
const MAX_ELEMS: u64 = 1 << 16;

/// The GGUF reader, then what every command does next: hyperparameters, tensor data.
pub fn gguf(data: &[u8]) {
    let r = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf");
    names_file(&r, "fuzz.gguf");
    let Ok(g) = r else { return };
    let _ = g.architecture();
    names_file(&quantkit_io::config::ModelConfig::from_gguf(&g), "fuzz.gguf");
    names_file(&quantkit_io::rotate::gguf_rotation(&g), "fuzz.gguf");
    let mut budget = MAX_ELEMS;
    for t in &g.tensors {
        let rows = t.numel().checked_div(t.row_len()).unwrap_or(0);
        let take = rows.min(budget / t.row_len().max(1));
        if take > 0 {
            let _ = g.read_rows(t, 0, take as usize);
            budget -= take * t.row_len();
        }
        g.release(t);
    }
}

/// The safetensors header validation and float reads.
pub fn safetensors(data: &[u8]) {
    let r = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors");
    names_file(&r, "fuzz.safetensors");
    let Ok(f) = r else { return };
    let _ = f.user_metadata();
    let mut budget = MAX_ELEMS as usize;
    for n in f.names() {
        let Some(info) = f.info(&n) else { continue };
        let numel: usize = info.shape.iter().product();
        let take = numel.min(budget);
        let _ = f.read_f32_range(&n, 0, take);
        budget -= take;
    }
}

/// A bitsandbytes NF4 checkpoint's tensors (a safetensors file): every module's quant-state JSON,
/// component dtypes/shapes/sizes, then its dequantization.
pub fn bnb_nf4(data: &[u8]) {
    let Ok(f) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") else { return };
    for r in quantkit_io::layout::bnb::dequantize_file(&f, MAX_ELEMS as usize) {
        names_file(&r, "fuzz.safetensors");
    }
}

/// A compressed-tensors NVFP4 checkpoint's tensors (a safetensors file): every module's packed
/// codes, E4M3 group scales and global scale (dtypes, shapes, values), then its dequantization.
pub fn ct_nvfp4(data: &[u8]) {
    let Ok(f) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors") else { return };
    for r in quantkit_io::layout::ct_nvfp4::dequantize_file(&f, MAX_ELEMS as usize) {
        names_file(&r, "fuzz.safetensors");
    }
}

/// config.json: JSON, the model description and a `quantization_config`.
pub fn hf_config(data: &[u8]) {
    let p = Path::new("fuzz/config.json");
    let r = quantkit_io::hf::parse_json(data, p, "config.json");
    names_file(&r, "config.json");
    let Ok(j) = r else { return };
    names_file(&quantkit_io::config::ModelConfig::from_hf(&j, p), "config.json");
    names_file(&quantkit_io::layout::QuantLayout::from_config(&j, p), "config.json");
    // The activation scheme the engine reads for the 8-bit compressed-tensors layouts.
    names_file(&quantkit_io::layout::ct_dense::activations(&j, p), "config.json");
    // The online rotation a rotated checkpoint asks the engine for.
    names_file(&quantkit_io::rotate::config_rotation(&j, p), "config.json");
}

/// model.safetensors.index.json.
pub fn hf_index(data: &[u8]) {
    let p = Path::new("fuzz/model.safetensors.index.json");
    let r = quantkit_io::hf::parse_json(data, p, "safetensors index");
    names_file(&r, "index.json");
    if let Ok(j) = r {
        names_file(&quantkit_io::hf::parse_index(&j, p), "index.json");
    }
}

/// llama.cpp importance matrices: the legacy binary format and the GGUF one.
pub fn imatrix(data: &[u8]) {
    use quantkit_io::imatrix::Imatrix;
    let p = Path::new("fuzz.imatrix");
    let r = if data.starts_with(b"GGUF") {
        let Ok(g) = GgufFile::from_bytes(data.to_vec(), p) else { return };
        Imatrix::from_gguf(&g)
    } else {
        Imatrix::from_legacy_bytes(data, p)
    };
    names_file(&r, "fuzz.imatrix");
    if let Ok(m) = r {
        for n in m.entries.keys() {
            let _ = m.values(n);
        }
    }
}

/// A tokenizer rebuilt from GGUF `tokenizer.ggml.*` metadata, then used both ways.
pub fn gguf_tokenizer(data: &[u8]) {
    let Ok(g) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else { return };
    let r = quantkit_engine::tokenizer::Tokenizer::from_gguf(&g);
    names_file(&r, "fuzz.gguf");
    let Ok(t) = r else { return };
    if let Ok(ids) = t.encode("Hello world, once upon a time\n\tthere was 123 ünïcödé 🙂", true) {
        let _ = t.decode(&ids);
    }
    let _ = t.decode(&[0, 1, 2, 3, u32::MAX]);
}

/// KLD base files: QKLOGIT1 (u16 per logit), QKLOGIT2 (top-K) and llama.cpp's `_logits_`; then
/// what `kld` does with a parsed one: each stored row compared with a flat model row.
pub fn base_logits(data: &[u8]) {
    use quantkit_engine::eval::BaseLogits;
    let p = Path::new("fuzz.kldbase");
    let r = BaseLogits::from_bytes(data, p);
    names_file(&r, "fuzz.kldbase");
    let Ok(mut b) = r else { return };
    if b.vocab > 1 << 20 {
        return; // a top-K file may declare a large vocabulary in few bytes: keep executions short
    }
    let budget = (MAX_ELEMS as usize / b.vocab.max(1)).max(1);
    b.truncate_chunks(budget.div_ceil(b.per_chunk()));
    let row = vec![0f32; b.vocab];
    let lse = (b.vocab as f64).ln();
    let mut mask = vec![false; b.vocab];
    for c in 0..b.chunks() {
        let chunk = b.chunk(c);
        for r in 0..b.per_chunk().min(budget) {
            let target = chunk[b.ctx / 2 + r + 1] as usize;
            let _ = b.compare_row(c * b.per_chunk() + r, &row, lse, target, &mut mask);
        }
    }
}

/// A private scratch folder for targets whose parser reads a file by path (per process and thread:
/// the replay test may run targets side by side).
fn scratch() -> std::path::PathBuf {
    let id = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let d = std::env::temp_dir().join(format!("quantkit-fuzz-{}-{id}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// A calibration checkpoint's residual stream (`quantize --resume` reads it).
pub fn calib_resid(data: &[u8]) {
    let p = scratch().join("resid-0001.bin");
    std::fs::write(&p, data).expect("write scratch");
    let mut x = quantkit_engine::Spill::in_memory().store(2, 8).expect("a small store");
    names_file(&quantkit_calibration::read_resid(&p, &mut x), "resid-0001.bin");
}

/// A calibration checkpoint's block file (`quantize --resume` reads it), every tensor in it.
pub fn calib_layer(data: &[u8]) {
    use quantkit_quant::method::{work, PassResult};
    let d = scratch();
    std::fs::write(work::layer_path(&d, 0), data).expect("write scratch");
    let mut r = PassResult::default();
    let res = work::restore_layer(&d, 0, &mut r);
    names_file(&res, "layer-0000.bin");
    for t in r.stored.values() {
        names_file(&t.load(), "layer-0000.bin");
    }
}

#[cfg(test)]
mod tests {
    /// The bitsandbytes seeds dequantize; every single-byte corruption and truncation of them is
    /// handled (no panic, errors name the file).
    #[test]
    fn bnb_nf4_seeds_and_their_corruptions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus/bnb_nf4");
        for name in ["nf4.safetensors", "nf4-dq.safetensors"] {
            let data = std::fs::read(dir.join(name)).expect("seed");
            let f = quantkit_io::safetensors::SafetensorsFile::from_bytes(data.clone(), name)
                .expect("seed parses");
            let r = quantkit_io::layout::bnb::dequantize_file(&f, usize::MAX);
            assert!(!r.is_empty() && r.iter().all(|x| matches!(x, Ok(n) if *n > 0)), "{name}: {r:?}");
            for i in 0..data.len() {
                for v in [0u8, 0xff, data[i] ^ 1] {
                    let mut d = data.clone();
                    d[i] = v;
                    super::bnb_nf4(&d);
                }
                super::bnb_nf4(&data[..i]);
            }
        }
    }

    /// The NVFP4 seed dequantizes; every single-byte corruption and truncation of it is handled.
    #[test]
    fn ct_nvfp4_seed_and_its_corruptions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz/corpus/ct_nvfp4");
        let name = "nvfp4.safetensors";
        let data = std::fs::read(dir.join(name)).expect("seed");
        let f =
            quantkit_io::safetensors::SafetensorsFile::from_bytes(data.clone(), name).expect("seed parses");
        let r = quantkit_io::layout::ct_nvfp4::dequantize_file(&f, usize::MAX);
        assert!(r.len() == 2 && r.iter().all(|x| matches!(x, Ok(n) if *n > 0)), "{r:?}");
        for i in 0..data.len() {
            for v in [0u8, 0xff, data[i] ^ 1] {
                let mut d = data.clone();
                d[i] = v;
                super::ct_nvfp4(&d);
            }
            super::ct_nvfp4(&data[..i]);
        }
    }

    #[test]
    fn every_target_runs_on_empty_and_junk_input() {
        for (name, _) in super::TARGETS {
            super::run(name, b"");
            super::run(name, b"GGUF\x03\x00\x00\x00junk");
            super::run(name, b"{\"weight_map\": {\"a\": \"b\"}, \"architectures\": [\"LlamaForCausalLM\"]}");
        }
    }
}
