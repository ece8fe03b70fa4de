//! Tokenizers and chat templates for verity.
//!
//! A [`Tokenizer`] is built either from the vocabulary embedded in a GGUF file
//! (`tokenizer.ggml.*`: byte-level BPE "gpt2" and SentencePiece "llama" vocabularies) or from a
//! Hugging Face `tokenizer.json`. Both become a Hugging Face `tokenizers::Tokenizer`, so ids match
//! what `AutoTokenizer` produces (GGUF vocabularies are converted the way Hugging Face's own GGUF
//! loader does it, with the pre-tokenizer chosen from `tokenizer.ggml.pre`).
//!
//! [`StreamDecoder`] turns a stream of ids into text without splitting UTF-8 characters, and
//! [`ChatTemplate`] renders Jinja chat templates (`tokenizer.chat_template`) with minijinja.

mod chat;
mod gguf_vocab;
pub mod harmony;
mod pyjson;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use verity_formats::gguf::Gguf;
use verity_formats::hf::HfDir;

pub use chat::{ChatMessage, ChatTemplate};

/// Everything that can go wrong loading a tokenizer, encoding, decoding or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata key {0:?} is missing: the file has no usable embedded vocabulary; re-convert the model with a current llama.cpp convert script, or use its Hugging Face directory")]
    MissingKey(String),
    /// A GGUF metadata value has the wrong shape.
    #[error("GGUF metadata {key:?} is malformed: {msg}; the file may be corrupt, re-download or re-convert it")]
    BadMetadata { key: String, msg: String },
    /// A vocabulary kind verity does not implement.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The tokenizer pipeline could not be assembled.
    #[error("could not build the tokenizer: {0}")]
    Build(String),
    /// A tokenizer.json could not be read or parsed.
    #[error("could not load tokenizer {path}: {msg}; check that it is a Hugging Face tokenizer.json (tokenizers format)")]
    Load { path: String, msg: String },
    /// A Hugging Face model directory without a tokenizer.json.
    #[error("{0} has no tokenizer.json; verity needs the fast-tokenizer file (save it with `AutoTokenizer.from_pretrained(...).save_pretrained(dir)`)")]
    NoTokenizerJson(String),
    /// Encoding failed.
    #[error("encoding failed: {0}")]
    Encode(String),
    /// Decoding failed (for example an id outside the vocabulary).
    #[error("decoding failed: {0}")]
    Decode(String),
    /// A token id is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size}); the ids do not belong to this model")]
    BadId { id: u32, vocab_size: usize },
    /// A chat template failed to compile or render.
    #[error("chat template error: {0}")]
    Template(String),
    /// Serialization failed.
    #[error("could not serialize the tokenizer: {0}")]
    Serialize(String),
}

/// How pieces map to text, used to show single tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PieceStyle {
    /// GPT-2 byte-to-unicode characters.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` are bytes.
    SentencePiece,
    /// Pieces are plain text.
    Plain,
}

/// Token names that end a turn in common chat formats (as llama.cpp's list).
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// A tokenizer: encode text to ids, decode ids to text, plus the model's special tokens and chat
/// template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    bos_str: Option<String>,
    eos_str: Option<String>,
    add_bos: bool,
    eog: BTreeSet<u32>,
    chat_template: Option<String>,
    style: PieceStyle,
    char_to_byte: HashMap<char, u8>,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos_str)
            .field("eos", &self.eos_str)
            .field("style", &self.style)
            .finish()
    }
}

/// A token string from a tokenizer_config value: a string or `{"content": ...}`.
fn config_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// Ids from a config value that is an integer or a list of integers.
fn config_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// `chat_template` from tokenizer_config: a string, or a list of `{name, template}` (take "default").
fn config_chat_template(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => {
            let pick = |name: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(|n| n.as_str()) == Some(name))
                    .and_then(|e| e.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            };
            pick("default").or_else(|| {
                list.first()
                    .and_then(|e| e.get("template"))
                    .and_then(|t| t.as_str())
                    .map(str::to_string)
            })
        }
        _ => None,
    }
}

impl Tokenizer {
    /// From the vocabulary embedded in a GGUF (`tokenizer.ggml.*`).
    pub fn from_gguf(g: &Gguf) -> Result<Self, TokenizerError> {
        let v = gguf_vocab::build(g)?;
        let style = match g.get_str("tokenizer.ggml.model") {
            Some("llama") => PieceStyle::SentencePiece,
            _ => PieceStyle::ByteLevel,
        };
        let mut t = Self::assemble(
            v.inner,
            v.bos_id,
            v.eos_id,
            None,
            None,
            v.add_bos,
            v.chat_template,
            style,
        );
        t.eog.extend(v.extra_eog);
        t.harmony_end_continues();
        Ok(t)
    }

    /// gpt-oss's harmony vocabulary ends a turn with `<|return|>` or `<|call|>`; its
    /// `<|end|>` only ends a message (the reasoning), after which the answer follows. So,
    /// as llama.cpp does, `<|end|>` does not end generation when both of the others exist.
    fn harmony_end_continues(&mut self) {
        let id = |s: &str| self.inner.token_to_id(s);
        if let (Some(_), Some(_), Some(end)) = (id("<|return|>"), id("<|call|>"), id("<|end|>")) {
            self.eog.remove(&end);
        }
    }

    /// From `tokenizer.json` plus the directory's `tokenizer_config.json`, `config.json` and
    /// `generation_config.json` values.
    pub fn from_hf_dir(dir: &HfDir) -> Result<Self, TokenizerError> {
        let path = dir
            .tokenizer_json()
            .ok_or_else(|| TokenizerError::NoTokenizerJson(dir.dir.display().to_string()))?;
        let mut t = Self::from_tokenizer_json_file(&path, dir.tokenizer_config.as_ref())?;
        let n = t.vocab_size as u32;
        for v in [dir.generation_config.as_ref(), Some(&dir.config)]
            .into_iter()
            .flatten()
        {
            for id in config_ids(v.get("eos_token_id")) {
                if id < n {
                    t.eog.insert(id);
                    t.eos_id.get_or_insert(id);
                }
            }
            if t.bos_id.is_none() {
                t.bos_id = config_ids(v.get("bos_token_id"))
                    .into_iter()
                    .find(|&id| id < n);
            }
        }
        if t.eos_str.is_none() {
            t.eos_str = t.eos_id.and_then(|id| t.inner.id_to_token(id));
        }
        if t.bos_str.is_none() {
            t.bos_str = t.bos_id.and_then(|id| t.inner.id_to_token(id));
        }
        t.harmony_end_continues();
        Ok(t)
    }

    /// From a Hugging Face `tokenizer.json` file, with the optional `tokenizer_config.json` value
    /// (special tokens, `add_bos_token`, `chat_template`).
    pub fn from_tokenizer_json_file(
        path: &Path,
        tokenizer_config: Option<&serde_json::Value>,
    ) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::Load {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        let load_error = |msg: String| TokenizerError::Load {
            path: path.display().to_string(),
            msg,
        };
        let inner = parse_tokenizer_json(&bytes).map_err(load_error)?;
        Ok(Self::from_hf_tokenizer(inner, tokenizer_config))
    }

    fn from_hf_tokenizer(inner: tokenizers::Tokenizer, cfg: Option<&serde_json::Value>) -> Self {
        let get = |k: &str| cfg.and_then(|c| c.get(k));
        let bos_str = config_token(get("bos_token"));
        let eos_str = config_token(get("eos_token"));
        let bos_id = bos_str.as_deref().and_then(|s| inner.token_to_id(s));
        let eos_id = eos_str.as_deref().and_then(|s| inner.token_to_id(s));
        let add_bos = get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let style = match inner
            .get_decoder()
            .map(|d| serde_json::to_string(d).unwrap_or_default())
        {
            Some(s) if s.contains("ByteLevel") => PieceStyle::ByteLevel,
            Some(s) if s.contains('\u{2581}') || s.contains("Metaspace") => {
                PieceStyle::SentencePiece
            }
            _ => PieceStyle::Plain,
        };
        Self::assemble(
            inner,
            bos_id,
            eos_id,
            bos_str,
            eos_str,
            add_bos,
            config_chat_template(get("chat_template")),
            style,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        bos_str: Option<String>,
        eos_str: Option<String>,
        add_bos: bool,
        chat_template: Option<String>,
        style: PieceStyle,
    ) -> Self {
        let vocab_size = inner.get_vocab_size(true);
        let bos_str = bos_str.or_else(|| bos_id.and_then(|id| inner.id_to_token(id)));
        let eos_str = eos_str.or_else(|| eos_id.and_then(|id| inner.id_to_token(id)));
        let mut eog: BTreeSet<u32> = eos_id.into_iter().collect();
        for (id, tok) in inner.get_added_tokens_decoder() {
            if tok.special && EOG_NAMES.contains(&tok.content.as_str()) {
                eog.insert(id);
            }
        }
        Tokenizer {
            inner,
            bos_id,
            eos_id,
            bos_str,
            eos_str,
            add_bos,
            eog,
            chat_template,
            style,
            char_to_byte: gguf_vocab::byte_level_char_to_byte(),
            vocab_size,
        }
    }

    /// The underlying Hugging Face tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Encode `text`. With `add_special`, add the special tokens the model declares (BOS when
    /// `add_bos_token` says so). Special tokens written in the text (e.g. `<|im_start|>`) are
    /// always parsed as special tokens.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if add_special && self.add_bos {
            if let Some(b) = self.bos_id {
                if ids.first() != Some(&b) {
                    ids.insert(0, b);
                }
            }
        }
        Ok(ids)
    }

    /// Decode ids to text; `skip_special` leaves out special (control) tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::BadId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of tokens, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Whether the model prepends BOS when special tokens are added.
    pub fn add_bos(&self) -> bool {
        self.add_bos
            || self.bos_id.is_some_and(|b| {
                self.inner
                    .encode("", true)
                    .map(|e| e.get_ids().first() == Some(&b))
                    .unwrap_or(false)
            })
    }

    /// End-of-generation tokens: EOS, EOT (`tokenizer.ggml.eot_token_id`), EOM, special tokens such
    /// as `<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`, and for Hugging Face
    /// directories the `eos_token_id` of generation_config.json / config.json (int or list).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation token ids.
    pub fn end_of_generation_ids(&self) -> Vec<u32> {
        self.eog.iter().copied().collect()
    }

    /// The piece of one token as text, for display (`Ġ`/`▁` shown as spaces; invalid UTF-8
    /// shown as U+FFFD).
    pub fn token_text(&self, id: u32) -> Option<String> {
        let piece = self.inner.id_to_token(id)?;
        if let Some(added) = self.inner.get_added_tokens_decoder().get(&id) {
            // User-defined pieces keep `▁` for spaces (Gemma's `▁▁`, ...): show them as spaces.
            if self.style == PieceStyle::SentencePiece && !added.special {
                return Some(piece.replace('\u{2581}', " "));
            }
            return Some(piece);
        }
        Some(match self.style {
            PieceStyle::ByteLevel => {
                let bytes: Option<Vec<u8>> = piece
                    .chars()
                    .map(|c| self.char_to_byte.get(&c).copied())
                    .collect();
                match bytes {
                    Some(b) => String::from_utf8_lossy(&b).into_owned(),
                    None => piece,
                }
            }
            PieceStyle::SentencePiece => {
                if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
                    match u8::from_str_radix(&piece[3..5], 16) {
                        Ok(b) if b.is_ascii() => (b as char).to_string(),
                        _ => piece,
                    }
                } else {
                    piece.replace('\u{2581}', " ")
                }
            }
            PieceStyle::Plain => piece,
        })
    }

    /// The raw vocabulary string of a token, as stored.
    pub fn token_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of a vocabulary string (added tokens included).
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// The Jinja chat template: `tokenizer.chat_template`, or tokenizer_config.json's
    /// `chat_template` (a string, or the "default" entry of a list).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The BOS token's text.
    pub fn bos_token_str(&self) -> Option<&str> {
        self.bos_str.as_deref()
    }

    /// The EOS token's text.
    pub fn eos_token_str(&self) -> Option<&str> {
        self.eos_str.as_deref()
    }

    /// A [`ChatTemplate`] for this model's template, with its BOS and EOS strings.
    pub fn chat(&self) -> Option<Result<ChatTemplate, TokenizerError>> {
        let src = self.chat_template()?;
        Some(ChatTemplate::new(
            src,
            self.bos_token_str().unwrap_or(""),
            self.eos_token_str().unwrap_or(""),
        ))
    }

    /// Serialize as a Hugging Face tokenizer.json string. Loading it back with
    /// [`Tokenizer::from_tokenizer_json_file`] gives the same ids.
    pub fn to_tokenizer_json(&self) -> Result<String, TokenizerError> {
        self.inner
            .to_string(false)
            .map_err(|e| TokenizerError::Serialize(e.to_string()))
    }

    /// A tokenizer_config.json value (special tokens, `add_bos_token`, `chat_template`,
    /// `added_tokens_decoder`) to write next to [`Tokenizer::to_tokenizer_json`].
    pub fn to_tokenizer_config(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let mut added: Vec<_> = self.inner.get_added_tokens_decoder().into_iter().collect();
        added.sort_by_key(|(id, _)| *id);
        let mut decoder = Map::new();
        for (id, t) in added {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": t.content,
                    "lstrip": t.lstrip,
                    "normalized": t.normalized,
                    "rstrip": t.rstrip,
                    "single_word": t.single_word,
                    "special": t.special,
                }),
            );
        }
        let mut cfg = Map::new();
        cfg.insert("add_bos_token".into(), Value::Bool(self.add_bos()));
        cfg.insert("add_eos_token".into(), Value::Bool(false));
        cfg.insert("added_tokens_decoder".into(), Value::Object(decoder));
        cfg.insert(
            "bos_token".into(),
            self.bos_str
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        cfg.insert(
            "eos_token".into(),
            self.eos_str
                .clone()
                .map(Value::String)
                .unwrap_or(Value::Null),
        );
        if let Some(t) = &self.chat_template {
            cfg.insert("chat_template".into(), Value::String(t.clone()));
        }
        cfg.insert("clean_up_tokenization_spaces".into(), Value::Bool(false));
        cfg.insert(
            "model_max_length".into(),
            json!(1_000_000_000_000_000_000u64),
        );
        cfg.insert(
            "tokenizer_class".into(),
            Value::String("PreTrainedTokenizerFast".into()),
        );
        Value::Object(cfg)
    }
}

/// Incremental detokenizer for streaming: push ids, get the newly completed text.
///
/// It never splits a UTF-8 character (byte-fallback and byte-level pieces of one character are
/// held back until the character is complete) and follows the tokenizer's own decoding rules
/// (SentencePiece leading space), so the concatenation of everything returned by
/// [`StreamDecoder::push`] and [`StreamDecoder::flush`] equals [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder that shows special tokens as their text.
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder {
            tok,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special: false,
        }
    }

    /// Leave special (control) tokens out of the text.
    pub fn skip_special(mut self, yes: bool) -> Self {
        self.skip_special = yes;
        self
    }

    fn decode_from(&self, start: usize, end: usize) -> Result<String, TokenizerError> {
        // Both windows compared in `push` start at the same id, so decoder rules that depend on
        // the start (SentencePiece's leading-space strip) apply to both alike.
        self.tok.decode(&self.ids[start..end], self.skip_special)
    }

    /// Add one id; returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String, TokenizerError> {
        if id as usize >= self.tok.vocab_size {
            return Err(TokenizerError::BadId {
                id,
                vocab_size: self.tok.vocab_size,
            });
        }
        self.ids.push(id);
        let prefix = self.decode_from(self.prefix_offset, self.read_offset)?;
        let full = self.decode_from(self.prefix_offset, self.ids.len())?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let new = if let Some(rest) = full.strip_prefix(prefix.as_str()) {
                rest.to_string()
            } else {
                // The window's text changed shape (rare): emit what follows the common prefix.
                let common = prefix
                    .char_indices()
                    .zip(full.char_indices())
                    .find(|((_, a), (_, b))| a != b)
                    .map(|((i, _), _)| i)
                    .unwrap_or(prefix.len().min(full.len()));
                full[common..].to_string()
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(new)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back (an incomplete character at the end of the stream), lossily decoded.
    pub fn flush(&mut self) -> String {
        let prefix = self
            .decode_from(self.prefix_offset, self.read_offset)
            .unwrap_or_default();
        let full = self
            .decode_from(self.prefix_offset, self.ids.len())
            .unwrap_or_default();
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        match full.strip_prefix(prefix.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        }
    }
}

/// Parse tokenizer.json. The `tokenizers` crate panics on some malformed files (e.g. a
/// decoder without its helper, found by fuzzing); a hostile file must give an error, so
/// the parse runs under `catch_unwind` with the panic message kept off the terminal.
fn parse_tokenizer_json(bytes: &[u8]) -> Result<tokenizers::Tokenizer, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            Err("malformed tokenizer.json (the tokenizers library rejected its structure)".into())
        }
    }
}
