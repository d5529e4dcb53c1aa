//! Tokenizer and text-file variants: tokenizer.json, the text and corpus inputs of `ppl` and
//! `calib`, a KLD base-logits file.

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
}
