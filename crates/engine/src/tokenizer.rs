//! Tokenization with the HF `tokenizers` crate: from the folder's `tokenizer.json`, or for a bare
//! GGUF from a tokenizer.json rebuilt from its vocabulary (BPE merges / SentencePiece scores).
//! BOS follows the model's `add_bos_token` (as llama.cpp records it).

use quantkit_core::{Error, Result};
use quantkit_io::gguf::{GgufFile, Value};
use quantkit_io::source::ModelSource;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
    /// The model's chat template (`tokenizer.chat_template`, a Jinja template as HF stores it).
    pub chat_template: Option<String>,
    /// The text of the BOS / EOS tokens (the chat template's `bos_token` / `eos_token`).
    pub bos_text: Option<String>,
    pub eos_text: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer").field("bos", &self.bos).field("add_bos", &self.add_bos).finish()
    }
}

impl Tokenizer {
    pub fn for_source(src: &ModelSource) -> Result<Self> {
        let path = src.path();
        match src {
            ModelSource::Hf(_) => {
                let p = path.join("tokenizer.json");
                let inner = tokenizers::Tokenizer::from_file(&p)
                    .map_err(|e| Error::malformed(&p, "tokenizer.json", "", e.to_string()))?;
                let meta = src.metadata(None)?;
                Ok(Self::with_ids(inner, &|k| meta.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())))
            }
            ModelSource::Gguf { file, .. } => Self::from_gguf(file),
            ModelSource::Rotated(r) => Self::for_source(&r.inner),
        }
    }

    /// The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata (rebuilt as an HF
    /// tokenizer.json: BPE merges or SentencePiece scores).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let meta = |k: &str| file.get(k).cloned();
        let t = quantkit_io::vocab::gguf_to_hf(&meta, path)?;
        let bytes = serde_json::to_vec(&t.tokenizer_json).map_err(|e| Error::Invalid(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::malformed(path, "GGUF tokenizer metadata", "tokenizer.ggml.*", e.to_string())
        })?;
        Ok(Self::with_ids(inner, &meta))
    }

    fn with_ids(inner: tokenizers::Tokenizer, get: &dyn Fn(&str) -> Option<Value>) -> Self {
        let id = |k: &str| get(k).and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok());
        let (bos, eos) = (id("tokenizer.ggml.bos_token_id"), id("tokenizer.ggml.eos_token_id"));
        let text = |t: Option<u32>| t.and_then(|t| inner.id_to_token(t));
        Tokenizer {
            bos_text: text(bos),
            eos_text: text(eos),
            chat_template: get("tokenizer.chat_template").and_then(|v| v.as_str().map(str::to_string)),
            inner,
            bos,
            eos,
            add_bos: get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false),
        }
    }

    /// Token ids of `text` (no special tokens added by the tokenizer's post-processor), with BOS
    /// first when `with_bos` and the model has one.
    pub fn encode(&self, text: &str, with_bos: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| Error::Invalid(format!("tokenizing: {e}")))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if with_bos {
            if let Some(b) = self.bos {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Invalid(format!("detokenizing: {e}")))
    }
}

/// Read a text file for evaluation: it must exist, be UTF-8 and not be empty.
pub fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::malformed(path, "text", format!("byte {}", e.utf8_error().valid_up_to()), "is not valid UTF-8")
    })?;
    if text.trim().is_empty() {
        return Err(Error::malformed(path, "text", "start", "the file is empty"));
    }
    Ok(text)
}
