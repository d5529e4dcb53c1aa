//! Tokenizer metadata: HF `tokenizer.json` (+ `tokenizer_config.json`) → GGUF `tokenizer.*` keys,
//! following llama.cpp's converter (`_set_vocab_gpt2`, `_set_vocab_llama_hf`, `SpecialVocab`), and
//! back (GGUF vocabulary → `tokenizer.json`, for `export-hf` and for models that are only a GGUF).
//!
//! One deliberate difference: for sentencepiece-style BPE vocabularies (`tokenizer.ggml.model =
//! "llama"`) llama.cpp's converter writes every score as -1000, which makes llama.cpp's SPM
//! tokenizer merge in text order rather than in the model's merge order. We write
//! `score = -(rank of the merge that forms the token)`, so llama.cpp tokenizes as the HF tokenizer
//! does (tested against the `tokenizers` crate). Key names, types and everything else follow the
//! converter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use quantkit_core::{Error, Result};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::gguf::{Value, ValueType};

/// llama.cpp token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// llama.cpp's pre-tokenizer check text (`chktxt` in convert_hf_to_gguf.py).
const CHKTXT: &str = include_str!("chktxt.txt");
/// `sha256(str(tokenizer.encode(chktxt)))` → pre-tokenizer name, in the converter's order.
const PRE_HASHES: &str = include_str!("pre_hashes.txt");

/// Special-token kinds and their GGUF key names (SpecialVocab; `cls` has no GGUF key).
const SPECIAL_KINDS: &[(&str, &str)] = &[
    ("bos", "bos_token_id"),
    ("eos", "eos_token_id"),
    ("unk", "unknown_token_id"),
    ("sep", "seperator_token_id"),
    ("pad", "padding_token_id"),
    ("mask", "mask_token_id"),
];

fn tok_err(path: &Path, at: &str, msg: impl Into<String>) -> Error {
    Error::malformed(path, "tokenizer.json", at, msg)
}

/// Identify the BPE pre-tokenizer the way llama.cpp's converter does: hash the token ids of the
/// check text (with special tokens added) and look the hash up.
pub fn detect_pre_tokenizer(tokenizer_json: &Path) -> Result<String> {
    let tok = tokenizers::Tokenizer::from_file(tokenizer_json)
        .map_err(|e| tok_err(tokenizer_json, "whole file", format!("cannot load: {e}")))?;
    let enc = tok
        .encode(CHKTXT, true)
        .map_err(|e| tok_err(tokenizer_json, "whole file", format!("cannot encode check text: {e}")))?;
    let ids: Vec<String> = enc.get_ids().iter().map(u32::to_string).collect();
    let hash = hex(&Sha256::digest(format!("[{}]", ids.join(", ")).as_bytes()));
    // The converter's if-chain lets the last match win.
    PRE_HASHES
        .lines()
        .rev()
        .filter_map(|l| l.split_once(' '))
        .find(|(h, _)| *h == hash)
        .map(|(_, name)| name.to_string())
        .ok_or_else(|| {
            Error::Unsupported(format!(
                "BPE pre-tokenizer of {} is not one llama.cpp knows (check-text hash {hash}); \
                 pass --tokenizer-pre NAME if you know which one it is",
                tokenizer_json.display()
            ))
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Merges as GGUF strings ("a b"); pair-form merges have inner spaces encoded as U+0120.
fn merges_strings(model: &Json, path: &Path) -> Result<Vec<String>> {
    let Some(merges) = model.get("merges").and_then(Json::as_array) else { return Ok(Vec::new()) };
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => {
                let enc = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{120}"));
                match (enc(&p[0]), enc(&p[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(tok_err(path, "model.merges", "merge pair is not two strings")),
                }
            }
            _ => Err(tok_err(path, "model.merges", format!("unknown merge entry {m}"))),
        })
        .collect()
}

/// Build the `tokenizer.*` GGUF keys for an HF model folder.
///
/// `vocab_size` is config.json's; `llama_family` is true for archs llama.cpp converts with
/// `LlamaModel` (which may use the sentencepiece-style path); `pre_override` replaces detection.
pub fn hf_to_gguf(
    dir: &Path,
    raw_config: &Json,
    vocab_size: u64,
    llama_family: bool,
    pre_override: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(Error::Unsupported(format!(
            "{} has no tokenizer.json (sentencepiece tokenizer.model-only checkpoints are not supported yet)",
            dir.display()
        )));
    }
    let tj = crate::hf::read_json(&path, "tokenizer.json")?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc =
        if tc_path.is_file() { Some(crate::hf::read_json(&tc_path, "tokenizer_config.json")?) } else { None };
    let model = tj.get("model").ok_or_else(|| tok_err(&path, "\"model\"", "missing"))?;
    let mtype = model.get("type").and_then(Json::as_str).unwrap_or("");
    if mtype != "BPE" {
        return Err(Error::Unsupported(format!(
            "{} tokenizer in {} (only BPE is supported)",
            mtype,
            path.display()
        )));
    }
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| tok_err(&path, "model.vocab", "missing or not an object"))?;
    let added: Vec<&Json> =
        tj.get("added_tokens").and_then(Json::as_array).map(|a| a.iter().collect()).unwrap_or_default();

    // id → token text, base vocabulary and added tokens.
    let mut by_id: BTreeMap<u64, String> = BTreeMap::new();
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| tok_err(&path, &format!("model.vocab[{t:?}]"), "id is not an integer"))?;
        by_id.insert(id, t.clone());
    }
    let base_size = by_id.len() as u64;
    let mut added_info: HashMap<u64, (String, bool)> = HashMap::new();
    for a in &added {
        let (Some(id), Some(content)) =
            (a.get("id").and_then(Json::as_u64), a.get("content").and_then(Json::as_str))
        else {
            return Err(tok_err(&path, "added_tokens", format!("entry without id/content: {a}")));
        };
        let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
        added_info.insert(id, (content.to_string(), special));
        by_id.entry(id).or_insert_with(|| content.to_string());
    }

    let mut kv: Vec<(String, Value)> = Vec::new();
    if let Some(aps) = tc.as_ref().and_then(|c| c.get("add_prefix_space")).and_then(Json::as_bool) {
        if llama_family {
            kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(aps)));
        }
    }

    let byte_fallback = model.get("byte_fallback").and_then(Json::as_bool).unwrap_or(false);
    let decoder_is_seq =
        tj.get("decoder").and_then(|d| d.get("type")).and_then(Json::as_str) == Some("Sequence");
    // LlamaHfVocab's test (a Llama-3-style vocabulary, ignore_merges without byte_fallback, fails
    // the byte_fallback requirement already and goes to the gpt2 path).
    let spm_style = llama_family && byte_fallback && decoder_is_seq;
    let merges = merges_strings(model, &path)?;

    if spm_style {
        // LlamaHfVocab: base tokens then added tokens beyond the base, no padding, no merges.
        let special_ids: HashSet<u64> = added_info.iter().filter(|(_, (_, s))| *s).map(|(&i, _)| i).collect();
        let rank = merge_ranks(&merges);
        let mut tokens = Vec::new();
        let mut scores = Vec::new();
        let mut types = Vec::new();
        for (&id, text) in &by_id {
            if id >= base_size && !added_info.contains_key(&id) {
                continue;
            }
            let ty = if is_byte_token(text) {
                token_type::BYTE
            } else if special_ids.contains(&id) {
                token_type::CONTROL
            } else if id >= base_size {
                token_type::USER_DEFINED
            } else {
                token_type::NORMAL
            };
            if id != tokens.len() as u64 {
                return Err(tok_err(
                    &path,
                    "model.vocab",
                    format!("token ids are not contiguous (gap before id {id})"),
                ));
            }
            tokens.push(text.clone());
            scores.push(Value::F32(rank.get(text.as_str()).map(|&r| -(r as f32)).unwrap_or(0.0)));
            types.push(Value::I32(ty));
        }
        kv.push(("tokenizer.ggml.model".into(), Value::String("llama".into())));
        kv.push(("tokenizer.ggml.pre".into(), Value::String("default".into())));
        kv.push(("tokenizer.ggml.tokens".into(), Value::strings(tokens)));
        kv.push(("tokenizer.ggml.scores".into(), Value::Array(ValueType::F32, scores)));
        kv.push(("tokenizer.ggml.token_type".into(), Value::Array(ValueType::I32, types)));
    } else {
        let pre = match pre_override {
            Some(p) => p.to_string(),
            None => detect_pre_tokenizer(&path)?,
        };
        let n = vocab_size.max(by_id.keys().next_back().map(|&m| m + 1).unwrap_or(0));
        let mut tokens = Vec::with_capacity(n as usize);
        let mut types = Vec::with_capacity(n as usize);
        for i in 0..n {
            match by_id.get(&i) {
                None => {
                    tokens.push(format!("[PAD{i}]"));
                    types.push(Value::I32(token_type::UNUSED));
                }
                Some(t) => match added_info.get(&i) {
                    Some((_, special)) if *special || looks_special(t) => {
                        tokens.push(t.clone());
                        types.push(Value::I32(token_type::CONTROL));
                    }
                    Some(_) => {
                        tokens.push(t.replace('\u{2581}', " "));
                        types.push(Value::I32(token_type::USER_DEFINED));
                    }
                    None => {
                        tokens.push(t.clone());
                        types.push(Value::I32(token_type::NORMAL));
                    }
                },
            }
        }
        kv.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        kv.push(("tokenizer.ggml.pre".into(), Value::String(pre)));
        kv.push(("tokenizer.ggml.tokens".into(), Value::strings(tokens)));
        kv.push(("tokenizer.ggml.token_type".into(), Value::Array(ValueType::I32, types)));
        if !merges.is_empty() {
            kv.push(("tokenizer.ggml.merges".into(), Value::strings(merges)));
        }
    }

    kv.extend(special_vocab(&tj, tc.as_ref(), raw_config, &added));
    if llama_family && vocab_size == 49152 {
        // llama.cpp's converter forces this for 49152-token vocabularies (Granite/SmolLM family).
        set_kv(&mut kv, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
    Ok(kv)
}

fn set_kv(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match kv.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => kv.push((key.to_string(), v)),
    }
}

/// token → rank of the first merge that produces it.
fn merge_ranks(merges: &[String]) -> HashMap<String, usize> {
    let mut rank = HashMap::new();
    for (r, m) in merges.iter().enumerate() {
        if let Some((a, b)) = m.split_once(' ') {
            rank.entry(format!("{a}{b}")).or_insert(r + 1);
        }
    }
    rank
}

fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// SpecialVocab: special token ids, add_bos/add_eos/add_sep, chat template.
fn special_vocab(tj: &Json, tc: Option<&Json>, cfg: &Json, added: &[&Json]) -> Vec<(String, Value)> {
    let mut kv = Vec::new();
    let tc_token = |kind: &str| tc.and_then(|c| token_content(c.get(format!("{kind}_token"))));
    let (bos, eos) =
        (tc_token("bos").or_else(|| tc_token("cls")), tc_token("eos").or_else(|| tc_token("sep")));
    let mut add: BTreeMap<&str, bool> = BTreeMap::new();
    if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
        let procs: Vec<&Json> = match pp.get("processors").and_then(Json::as_array) {
            Some(list) => list.iter().collect(),
            None => vec![pp],
        };
        for p in procs {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    add.entry("bos").or_insert(false);
                    add.entry("eos").or_insert(false);
                }
                Some("RobertaProcessing") => {
                    add.insert("bos", true);
                    add.insert("eos", true);
                    add.insert("sep", true);
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
                    let sp = |v: &Json| {
                        v.get("SpecialToken")
                            .and_then(|s| s.get("id"))
                            .and_then(Json::as_str)
                            .map(str::to_string)
                    };
                    if single.len() > 1 {
                        if let Some(first) = single.first().and_then(sp) {
                            add.insert("bos", Some(&first) == bos.as_ref() || tc.is_none());
                        }
                        if let Some(last) = single.last().and_then(sp) {
                            add.insert("eos", Some(&last) == eos.as_ref() || tc.is_none());
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(c) = tc {
        for kind in ["bos", "eos", "sep"] {
            if let Some(b) = c.get(format!("add_{kind}_token")).and_then(Json::as_bool) {
                add.entry(kind).or_insert(b);
            }
        }
    }
    for (kind, key) in SPECIAL_KINDS {
        let from_tc = tc_token(kind).and_then(|content| {
            added
                .iter()
                .find(|a| a.get("content").and_then(Json::as_str) == Some(&content))
                .and_then(|a| a.get("id"))
                .and_then(Json::as_u64)
        });
        let id = from_tc.or_else(|| cfg.get(format!("{kind}_token_id")).and_then(Json::as_u64));
        if let Some(id) = id {
            kv.push((format!("tokenizer.ggml.{key}"), Value::U32(id as u32)));
        }
    }
    for kind in ["bos", "eos", "sep"] {
        if let Some(&b) = add.get(kind) {
            kv.push((format!("tokenizer.ggml.add_{kind}_token"), Value::Bool(b)));
        }
    }
    if let Some(t) = tc.and_then(|c| c.get("chat_template")).and_then(Json::as_str) {
        kv.push(("tokenizer.chat_template".into(), Value::String(t.to_string())));
    }
    kv
}

/// What `export-hf` writes for the tokenizer: `tokenizer.json` and `tokenizer_config.json`.
#[derive(Debug)]
pub struct HfTokenizerFiles {
    pub tokenizer_json: Json,
    pub tokenizer_config: Json,
}

fn gguf_strings(meta: &dyn Fn(&str) -> Option<Value>, key: &str) -> Option<Vec<String>> {
    meta(key)?.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
}

/// Rebuild an HF tokenizer from GGUF `tokenizer.*` metadata.
pub fn gguf_to_hf(meta: &dyn Fn(&str) -> Option<Value>, source: &Path) -> Result<HfTokenizerFiles> {
    let bad = |k: &str, m: &str| Error::malformed(source, "GGUF", format!("metadata '{k}'"), m.to_string());
    let model = meta("tokenizer.ggml.model")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| bad("tokenizer.ggml.model", "missing"))?;
    let tokens =
        gguf_strings(meta, "tokenizer.ggml.tokens").ok_or_else(|| bad("tokenizer.ggml.tokens", "missing"))?;
    let types: Vec<i32> = meta("tokenizer.ggml.token_type")
        .and_then(|v| {
            v.as_array().map(|a| {
                a.iter().map(|x| x.as_u64().map(|u| u as i32).unwrap_or(token_type::NORMAL)).collect()
            })
        })
        .unwrap_or_else(|| vec![token_type::NORMAL; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(bad("tokenizer.ggml.token_type", "length differs from tokenizer.ggml.tokens"));
    }
    let id_of = |k: &str| {
        meta(&format!("tokenizer.ggml.{k}")).and_then(|v| v.as_u64()).filter(|&i| (i as usize) < tokens.len())
    };
    let flag = |k: &str| meta(&format!("tokenizer.ggml.{k}")).and_then(|v| v.as_bool());
    let bos = id_of("bos_token_id");
    let eos = id_of("eos_token_id");
    let unk = id_of("unknown_token_id");
    let pad = id_of("padding_token_id");

    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == token_type::CONTROL
            || ty == token_type::USER_DEFINED
            || Some(i as u64) == unk && model == "llama"
        {
            added.push(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == token_type::USER_DEFINED, "special": ty != token_type::USER_DEFINED}));
        }
    }
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.starts_with("[PAD"))
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();

    let (add_bos_default, tj) = match model.as_str() {
        "gpt2" => {
            let pre = meta("tokenizer.ggml.pre")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "default".into());
            let merges = gguf_strings(meta, "tokenizer.ggml.merges")
                .ok_or_else(|| bad("tokenizer.ggml.merges", "missing for a gpt2 vocabulary"))?;
            let merges: Vec<Json> = merges
                .iter()
                .map(|m| {
                    let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                    json!([a, b])
                })
                .collect();
            let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
            let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
            let (pre_tok, ignore_merges) = match pre.as_str() {
                "smollm" => (json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)]}), false),
                "gpt-2" | "default" => (byte_level(true), false),
                "llama-bpe" | "llama3" | "llama-v3" => (json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]}), true),
                "qwen2" | "deepseek-r1-qwen" => (json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]}), false),
                other => {
                    return Err(Error::Unsupported(format!(
                        "{}: rebuilding a tokenizer.json for pre-tokenizer {other:?} (supported: smollm, gpt-2, llama-bpe, qwen2); \
                         pass --tokenizer-from DIR to copy the original tokenizer files",
                        source.display()
                    )))
                }
            };
            (
                false,
                json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": null, "pre_tokenizer": pre_tok,
                    "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
                        "vocab": vocab, "merges": merges}
                }),
            )
        }
        "llama" => {
            let scores: Vec<f32> = meta("tokenizer.ggml.scores")
                .and_then(|v| {
                    v.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect())
                })
                .unwrap_or_else(|| vec![0.0; tokens.len()]);
            if scores.len() != tokens.len() {
                return Err(bad("tokenizer.ggml.scores", "length differs from tokenizer.ggml.tokens"));
            }
            let merges = spm_merges(&tokens, &scores, &types);
            let add_prefix = flag("add_space_prefix").unwrap_or(true);
            let mut normalizers = Vec::new();
            if add_prefix {
                normalizers.push(json!({"type": "Prepend", "prepend": "\u{2581}"}));
            }
            normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if add_prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            (
                true,
                json!({
                    "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
                    "normalizer": {"type": "Sequence", "normalizers": normalizers},
                    "pre_tokenizer": null,
                    "post_processor": null,
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {"type": "BPE", "dropout": null, "unk_token": unk.map(|u| tokens[u as usize].clone()),
                        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
                }),
            )
        }
        other => {
            return Err(Error::Unsupported(format!("tokenizer model {other:?} in {}", source.display())))
        }
    };
    let add_bos = flag("add_bos_token").unwrap_or(add_bos_default);
    let add_eos = flag("add_eos_token").unwrap_or(false);
    let mut tj = tj;
    if add_bos || add_eos {
        // Express BOS/EOS insertion as HF does: a TemplateProcessing post-processor.
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        let mut push = |id: Option<u64>, single: &mut Vec<Json>| {
            if let Some(id) = id {
                let t = &tokens[id as usize];
                single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
                specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
            }
        };
        if add_bos {
            push(bos, &mut single);
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if add_eos {
            push(eos, &mut single);
        }
        let pair: Vec<Json> = single
            .iter()
            .cloned()
            .chain(single.iter().map(|s| {
                let mut s = s.clone();
                if let Some(seq) = s.get_mut("Sequence") {
                    seq["id"] = json!("B");
                }
                for v in s.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
                    v["type_id"] = json!(1);
                }
                s
            }))
            .collect();
        let tmpl =
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials});
        tj["post_processor"] = if model == "gpt2" {
            json!({"type": "Sequence", "processors": [tj["post_processor"].clone(), tmpl]})
        } else {
            tmpl
        };
    }
    let name = |id: Option<u64>| id.map(|i| json!(tokens[i as usize])).unwrap_or(Json::Null);
    let mut tc = json!({
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "clean_up_tokenization_spaces": false,
        "tokenizer_class": if model == "llama" { "LlamaTokenizer" } else { "GPT2Tokenizer" },
    });
    if pad.is_some() {
        tc["pad_token"] = name(pad);
    }
    if let Some(Value::String(t)) = meta("tokenizer.chat_template") {
        tc["chat_template"] = json!(t);
    }
    if model == "gpt2" {
        tc["add_prefix_space"] = json!(flag("add_space_prefix").unwrap_or(false));
    }
    Ok(HfTokenizerFiles { tokenizer_json: tj, tokenizer_config: tc })
}

/// Llama 3's pre-tokenizer regex (from its tokenizer.json).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex (from its tokenizer.json).
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Sentencepiece-style merges from scores (as transformers' SentencePieceExtractor does): every
/// split of a vocabulary piece into two pieces is a merge, ordered by the merged piece's score
/// (higher first), then by the ids of the parts.
fn spm_merges(tokens: &[String], scores: &[f32], types: &[i32]) -> Vec<Json> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == token_type::NORMAL || types[*i] == token_type::USER_DEFINED)
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (&piece, &id) in &index {
        let chars: Vec<(usize, char)> = piece.char_indices().collect();
        for &(split, _) in chars.iter().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                merges.push((scores[id], li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges.into_iter().map(|(_, _, _, l, r)| json!([l, r])).collect()
}
