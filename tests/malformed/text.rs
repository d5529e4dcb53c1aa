//! Tokenizer and text-file variants: tokenizer.json, the text and corpus inputs of `ppl` and
//! `calib`, a KLD base-logits file.

use std::ffi::OsString;
use std::path::Path;

use crate::common::*;
use crate::{all, args, Suite};

pub(crate) fn tokenizer_and_text_variants(s: &mut Suite, gguf: &Path) {
    for (label, bytes, needle) in [
        ("tokenizer.json empty", b"".to_vec(), "tokenizer.json"),
        ("tokenizer.json not JSON", b"{\"model\": ".to_vec(), "tokenizer.json"),
        ("tokenizer.json not UTF-8", b"{\"model\": \"\xff\"}".to_vec(), "tokenizer.json"),
        ("tokenizer.json without model", b"{\"version\": \"1.0\"}".to_vec(), "tokenizer.json"),
        (
            "tokenizer.json Unigram",
            b"{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}".to_vec(),
            "Unigram",
        ),
    ] {
        let d = s.case_dir();
        let m = copy_stories(&d);
        std::fs::write(m.join("tokenizer.json"), bytes).expect("w");
        s.check(
            "tokenizer",
            label,
            &d,
            &args(&["convert", m.to_str().expect("utf8"), "-o", "{out}"]),
            all(&[needle]),
        );
    }
    // Evaluation and calibration text: empty, blank, not UTF-8, missing, a folder without text.
    let texts: Vec<(&str, Option<Vec<u8>>, &str)> = vec![
        ("empty", Some(vec![]), "empty"),
        ("blank", Some(b"  \n\n \t\n".to_vec()), "empty"),
        ("not UTF-8", Some(b"Once upon a time \xff\xfe there".to_vec()), "not valid UTF-8"),
        ("missing", None, "No such file"),
    ];
    for (label, bytes, needle) in &texts {
        for cmd in ["ppl", "calib"] {
            let d = s.case_dir();
            let t = d.join("t.txt");
            if let Some(b) = bytes {
                std::fs::write(&t, b).expect("w");
            }
            let a = if cmd == "ppl" {
                args(&["ppl", gguf.to_str().expect("u"), "--text", t.to_str().expect("u")])
            } else {
                let o = d.join("qout");
                args(&[
                    "quantize",
                    stories().to_str().expect("u"),
                    "--method",
                    "gptq",
                    "--calib",
                    t.to_str().expect("u"),
                    "--format",
                    "gptq",
                    "-o",
                    o.to_str().expect("u"),
                ])
            };
            s.check("text", &format!("{cmd} text {label}"), &d, &a, all(&["t.txt", needle]));
        }
    }
    let d = s.case_dir();
    let empty = d.join("corpus");
    std::fs::create_dir(&empty).expect("mkdir");
    let a = args(&[
        "quantize",
        stories().to_str().expect("u"),
        "--calib",
        empty.to_str().expect("u"),
        "--format",
        "gptq",
        "-o",
        d.join("q").to_str().expect("u"),
    ]);
    s.check("text", "calibration folder without text", &d, &a, all(&["corpus"]));
    // A base-logits file that is not one.
    let d = s.case_dir();
    let b = d.join("base.logits");
    std::fs::write(&b, b"not logits at all").expect("w");
    s.check(
        "text",
        "kld base file junk",
        &d,
        &args(&["kld", gguf.to_str().expect("u"), "--base", b.to_str().expect("u")]),
        all(&["base.logits"]),
    );
    kld_base_variants(s, gguf);
}

/// Damaged KLD base files of the three formats (QKLOGIT1, QKLOGIT2, llama.cpp's `_logits_`), made
/// by `kld --save-base` from the stories GGUF: cuts at every section, header sizes that overflow or
/// disagree with the length, token ids and top-K ids outside the vocabulary, NaN/Inf rows, a
/// vocabulary that is not the model's.
fn kld_base_variants(s: &mut Suite, gguf: &Path) {
    let src = tempfile::tempdir().expect("tmp");
    let text = shared().join("data/wikitext-2-raw/wiki.test.raw");
    let g = gguf.to_str().expect("u");
    let save = |name: &str, fmt: &[&str]| -> Vec<u8> {
        let p = src.path().join(name);
        let mut a =
            vec!["kld", "--base", g, "--text", text.to_str().expect("u"), "--ctx", "16", "--chunks", "2"];
        a.extend_from_slice(&["--save-base", p.to_str().expect("u")]);
        a.extend_from_slice(fmt);
        let refs: Vec<OsString> = args(&a);
        let r: Vec<&dyn AsRef<std::ffi::OsStr>> = refs.iter().map(|x| x as _).collect();
        ok(&r);
        std::fs::read(&p).expect("read base")
    };
    let put = |b: &mut Vec<u8>, off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    // 2 chunks of 16: 32 tokens, 7 scored positions a chunk, vocabulary 512.
    let full = save("full", &["--top-k", "0"]);
    let topk = save("topk", &["--top-k", "3", "--tail-samples", "0", "--logprob-type", "f32"]);
    let topk16 = save("topk16", &["--top-k", "3", "--tail-samples", "0", "--logprob-type", "f16"]);
    let tailed = save("tailed", &["--top-k", "3", "--tail-samples", "2"]);
    let llama = save("llama", &["--base-format", "llama"]);
    let (t1, t2, tl) = (20 + 4 * 32, 32 + 4 * 32, 20 + 4 * 32);
    let mut cases: Vec<(String, Vec<u8>, &str)> = vec![];
    for (fmt, b, sections) in [
        ("QKLOGIT1", &full, vec![0, 8, 12, 16, 20, 24, t1, t1 + 1, t1 + 1024]),
        ("QKLOGIT2", &topk, vec![8, 24, 28, 32, t2, t2 + 12, t2 + 24, t2 + 28, t2 + 32]),
        ("QKLOGIT2 tail samples", &tailed, vec![t2 + 20, t2 + 30]),
        ("QKLOGIT2 f16", &topk16, vec![t2 + 12, t2 + 18, t2 + 22]),
        ("llama", &llama, vec![8, 12, 16, 20, tl, tl + 4, tl + 8, tl + 1000]),
    ] {
        for cut in sections.into_iter().chain([b.len() - 1]) {
            cases.push((format!("{fmt} cut at byte {cut}"), b[..cut].to_vec(), "base"));
        }
        cases.push((format!("{fmt} a byte too many"), crate::with(b, |v| v.push(0)), "the header implies"));
    }
    let hdr = |b: &Vec<u8>, off: usize, v: u32| crate::with(b, |x| put(x, off, v));
    for (label, bytes, needle) in [
        ("QKLOGIT1 vocabulary 0", hdr(&full, 8, 0), "vocabulary size 0"),
        ("QKLOGIT1 vocabulary 2^32-1", hdr(&full, 8, u32::MAX), "vocabulary size"),
        ("QKLOGIT1 vocabulary 513", hdr(&full, 8, 513), "the header implies"),
        ("QKLOGIT1 tokens 2^32-16", hdr(&full, 16, u32::MAX - 15), "the header implies"),
        ("QKLOGIT1 context 1", hdr(&full, 12, 1), "context 1"),
        ("QKLOGIT1 token outside the vocabulary", hdr(&full, 20, 512), "outside the vocabulary"),
        ("QKLOGIT2 top-k 0", hdr(&topk, 20, 0), "top-k 0"),
        ("QKLOGIT2 top-k 2^31", hdr(&topk, 20, 1 << 31), "top-k"),
        ("QKLOGIT2 log-prob type 9", hdr(&topk, 24, 9), "log-probability type"),
        ("QKLOGIT2 tail samples 2^32-1", hdr(&topk, 28, u32::MAX), "tail samples"),
        ("QKLOGIT2 tail samples 1", hdr(&topk, 28, 1), "the header implies"),
        (
            "QKLOGIT2 tail sample in the top k",
            crate::with(&tailed, |x| {
                let v = x[t2..t2 + 4].to_vec();
                x[t2 + 12..t2 + 16].copy_from_slice(&v)
            }),
            "one of the top k",
        ),
        ("QKLOGIT2 id outside the vocabulary", hdr(&topk, t2, 600), "outside the vocabulary"),
        ("QKLOGIT2 NaN log-prob", hdr(&topk, t2 + 12, f32::NAN.to_bits()), "not finite"),
        ("QKLOGIT2 +Inf next-token log-prob", hdr(&topk, t2 + 24, f32::INFINITY.to_bits()), "not finite"),
        ("QKLOGIT2 rest mass NaN", hdr(&topk, t2 + 28, f32::NAN.to_bits()), "rest mass"),
        ("QKLOGIT2 rest mass 3", hdr(&topk, t2 + 28, 3f32.to_bits()), "rest mass"),
        (
            "QKLOGIT2 f16 NaN log-prob",
            crate::with(&topk16, |x| x[t2 + 12..t2 + 14].copy_from_slice(&[0x00, 0x7e])),
            "not finite",
        ),
        ("llama n_vocab -1", hdr(&llama, 12, u32::MAX), "n_vocab -1"),
        ("llama n_vocab 513", hdr(&llama, 12, 513), "the header implies"),
        ("llama n_chunk 2^31-1", hdr(&llama, 16, i32::MAX as u32), "the header implies"),
        ("llama n_ctx 2^32-1", hdr(&llama, 8, u32::MAX), "context"),
        (
            "llama n_ctx × n_chunk huge",
            crate::with(&llama, |x| {
                put(x, 8, 1 << 24);
                put(x, 16, i32::MAX as u32)
            }),
            "the header implies",
        ),
        ("llama token -7", hdr(&llama, 20, (-7i32) as u32), "token id -7"),
        ("llama NaN scale", hdr(&llama, tl, f32::NAN.to_bits()), "not finite"),
        ("llama -Inf minimum", hdr(&llama, tl + 4, f32::NEG_INFINITY.to_bits()), "not finite"),
    ] {
        cases.push((label.to_string(), bytes, needle));
    }
    for (label, bytes, needle) in cases {
        let d = s.case_dir();
        let b = d.join("kld.base");
        std::fs::write(&b, bytes).expect("w");
        s.check(
            "kld base",
            &label,
            &d,
            &args(&["kld", g, "--base", b.to_str().expect("u")]),
            all(&["kld.base", needle]),
        );
    }
    // A sound base of another vocabulary (stories' 512 against SmolLM2's 49152).
    if smol_gguf().exists() {
        let d = s.case_dir();
        let b = d.join("kld.base");
        std::fs::write(&b, &topk).expect("w");
        s.check(
            "kld base",
            "QKLOGIT2 of another vocabulary",
            &d,
            &args(&["kld", smol_gguf().to_str().expect("u"), "--base", b.to_str().expect("u")]),
            all(&["vocabulary of 512"]),
        );
    }
}
