//! Building a Hugging Face `tokenizers::Tokenizer` from a vocabulary embedded in a GGUF file
//! (`tokenizer.ggml.*`), the way Hugging Face's own GGUF conversion does it.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};
use verity_formats::gguf::Gguf;

use crate::TokenizerError;

/// GGUF token types (`tokenizer.ggml.token_type`).
pub(crate) const TT_UNKNOWN: i64 = 2;
pub(crate) const TT_CONTROL: i64 = 3;
pub(crate) const TT_USER_DEFINED: i64 = 4;

/// What the GGUF-derived parts of a [`crate::Tokenizer`] are.
pub(crate) struct GgufVocab {
    pub inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub extra_eog: Vec<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

// Pre-tokenizer regexes, as written in the models' tokenizer.json (onig syntax).
const GPT2_RE: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_RE: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_RE: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_RE: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_LLM_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";
const DEEPSEEK_V3_RE: &str = r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##;

/// How a BPE vocabulary pre-tokenizes, by `tokenizer.ggml.pre`.
struct PreSpec {
    normalizer: Option<NormalizerWrapper>,
    pre: Vec<PreTokenizerWrapper>,
    ignore_merges: bool,
    /// Whether llama.cpp adds BOS by default for this pre-tokenizer.
    default_add_bos: bool,
}

fn split(re: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    Split::new(
        SplitPattern::Regex(re.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map(PreTokenizerWrapper::Split)
    .map_err(|e| TokenizerError::Build(format!("pre-tokenizer regex {re:?}: {e}")))
}

fn byte_level(use_regex: bool) -> PreTokenizerWrapper {
    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex))
}

fn pre_spec(pre: &str) -> Result<PreSpec, TokenizerError> {
    let nfc = || Some(NormalizerWrapper::NFC(NFC));
    let mut spec = PreSpec {
        normalizer: None,
        pre: Vec::new(),
        ignore_merges: false,
        default_add_bos: false,
    };
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => {
            spec.pre = vec![split(LLAMA3_RE)?, byte_level(false)];
            spec.ignore_merges = true;
            spec.default_add_bos = true;
        }
        "dbrx" | "smaug-bpe" | "chatglm-bpe" => {
            spec.pre = vec![split(LLAMA3_RE)?, byte_level(false)]
        }
        "glm4" | "glm5" => {
            spec.pre = vec![split(LLAMA3_RE)?, byte_level(false)];
            spec.ignore_merges = true;
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => {
            spec.normalizer = nfc();
            spec.pre = vec![split(QWEN2_RE)?, byte_level(false)];
        }
        "qwen35" => spec.pre = vec![split(QWEN35_RE)?, byte_level(false)],
        "stablelm2" | "hunyuan" | "grok-2" | "solar-open" => {
            spec.pre = vec![split(QWEN2_RE)?, byte_level(false)]
        }
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "olmo" | "jais" | "trillion"
        | "granite-docling" | "exaone4" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => {
            spec.pre = vec![byte_level(true)]
        }
        "mpt" => {
            spec.normalizer = nfc();
            spec.pre = vec![byte_level(true)];
        }
        "starcoder" | "refact" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            spec.pre = vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ];
        }
        "command-r" => {
            spec.normalizer = nfc();
            spec.pre = vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ];
        }
        "falcon" => {
            spec.pre = vec![
                PreTokenizerWrapper::Punctuation(Punctuation::new(
                    SplitDelimiterBehavior::Contiguous,
                )),
                byte_level(true),
                PreTokenizerWrapper::Digits(Digits::new(false)),
                split("[0-9][0-9][0-9]")?,
            ];
        }
        "deepseek-llm" => {
            spec.pre = vec![
                split("[\r\n]")?,
                split(DEEPSEEK_LLM_LETTERS)?,
                split("\\s?[!-/:-~！-／：-～‘-‟　-。]+")?,
                split("\\s+$")?,
                split("[一-龥ࠀ-一가-퟿]+")?,
                split(r"\p{N}+")?,
                byte_level(false),
            ];
        }
        "deepseek-coder" => {
            spec.pre = vec![
                split("[\r\n]")?,
                split("\\s?\\p{L}+")?,
                split("\\s?\\p{P}+")?,
                split("[一-龥ࠀ-一가-퟿]+")?,
                split(r"\p{N}")?,
                byte_level(false),
            ];
        }
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" | "hy_v4" => {
            spec.pre = vec![
                split(r"\p{N}{1,3}")?,
                split("[一-龥぀-ゟ゠-ヿ]+")?,
                split(DEEPSEEK_V3_RE)?,
                byte_level(false),
            ];
        }
        "tekken" => {
            spec.pre = vec![split(TEKKEN_RE)?, byte_level(false)];
            spec.ignore_merges = true;
            spec.default_add_bos = true;
        }
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => {
            spec.pre = vec![split(GPT4O_RE)?, byte_level(false)]
        }
        "poro-chat" | "bloom" | "gpt3-finnish" => {
            spec.pre = vec![split(" ?[^(\\s|.,!?…。，、।۔،)]+")?, byte_level(false)]
        }
        "viking" => {
            spec.pre = vec![
                split(" ?[^(\\s|.,!?…。，、।۔،)]+")?,
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(false),
            ]
        }
        // "default", missing, or unknown: llama.cpp's default expression list.
        _ => {
            spec.pre = vec![
                split(r"[\p{P}\$\+<=>\^~\|`]+")?,
                split(GPT2_RE)?,
                split(r"\p{N}+")?,
                split("[0-9][0-9][0-9]")?,
                byte_level(false),
            ];
        }
    }
    Ok(spec)
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>, TokenizerError> {
    let arr = g
        .get_array(key)
        .ok_or_else(|| TokenizerError::MissingKey(key.to_string()))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| TokenizerError::BadMetadata {
                    key: key.to_string(),
                    msg: format!("element {i} is a {}, not a string", v.type_name()),
                })
        })
        .collect()
}

fn token_id(g: &Gguf, key: &str, n: usize) -> Option<u32> {
    let v = g.get(key)?.as_i64()?;
    (v >= 0 && (v as usize) < n).then_some(v as u32)
}

/// Build from `tokenizer.ggml.*` metadata.
pub(crate) fn build(g: &Gguf) -> Result<GgufVocab, TokenizerError> {
    let model = g
        .get_str("tokenizer.ggml.model")
        .ok_or_else(|| TokenizerError::MissingKey("tokenizer.ggml.model".into()))?;
    let mut tokens = strings(g, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    if n == 0 {
        return Err(TokenizerError::BadMetadata {
            key: "tokenizer.ggml.tokens".into(),
            msg: "the vocabulary is empty".into(),
        });
    }
    let types: Vec<i64> = match g.get_array("tokenizer.ggml.token_type") {
        Some(a) if a.len() == n => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        Some(a) => {
            return Err(TokenizerError::BadMetadata {
                key: "tokenizer.ggml.token_type".into(),
                msg: format!("{} entries for {n} tokens", a.len()),
            })
        }
        None => vec![1; n],
    };
    if model == "llama" {
        // llama.cpp's converter writes the spaces of user-defined SentencePiece pieces as ' '
        // ("pre-normalized"); the model and the tokenizer.json have them as '▁' (Gemma's runs of
        // spaces), and only then do they match what the normalizer makes of the text.
        for (t, &ty) in tokens.iter_mut().zip(&types) {
            if ty == TT_USER_DEFINED && t.contains(' ') {
                *t = t.replace(' ', "\u{2581}");
            }
        }
    }
    let bos_id = token_id(g, "tokenizer.ggml.bos_token_id", n);
    let eos_id = token_id(g, "tokenizer.ggml.eos_token_id", n);
    let unk_id = token_id(g, "tokenizer.ggml.unknown_token_id", n);
    let pre = g.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let name = g.get_str("general.name").unwrap_or("").to_lowercase();
    let is_phi3 = name.contains("phi-3") || name.contains("phi3");

    let (mut inner, default_add_bos, byte_level_vocab) = match model {
        "gpt2" => {
            let merges = strings(g, "tokenizer.ggml.merges")?;
            let merges = merges
                .iter()
                .map(|m| {
                    m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| {
                        TokenizerError::BadMetadata { key: "tokenizer.ggml.merges".into(), msg: format!("merge {m:?} has no space") }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let spec = pre_spec(pre)?;
            let vocab = vocab_map(&tokens);
            let mut b = BPE::builder().vocab_and_merges(vocab, merges).ignore_merges(spec.ignore_merges);
            if let Some(u) = unk_id {
                b = b.unk_token(tokens[u as usize].clone());
            }
            let bpe = b.build().map_err(|e| TokenizerError::Build(format!("BPE model: {e}")))?;
            let mut t = tokenizers::Tokenizer::new(bpe);
            t.with_normalizer(spec.normalizer);
            t.with_pre_tokenizer(Some(PreSequence::new(spec.pre)));
            t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
            (t, spec.default_add_bos, true)
        }
        "llama" => {
            let scores: Vec<f32> = match g.get_array("tokenizer.ggml.scores") {
                Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
                _ => {
                    return Err(TokenizerError::BadMetadata {
                        key: "tokenizer.ggml.scores".into(),
                        msg: "a SentencePiece vocabulary needs one score per token".into(),
                    })
                }
            };
            let vocab = vocab_map(&tokens);
            let merges = spm_merges(&tokens, &scores, &types, &vocab);
            let unk = unk_id.map(|u| tokens[u as usize].clone()).unwrap_or_else(|| "<unk>".to_string());
            let bpe = BPE::builder()
                .vocab_and_merges(vocab, merges)
                .unk_token(unk)
                .fuse_unk(true)
                .byte_fallback(true)
                .build()
                .map_err(|e| TokenizerError::Build(format!("BPE model: {e}")))?;
            let mut t = tokenizers::Tokenizer::new(bpe);
            let add_space_prefix = g.get_bool("tokenizer.ggml.add_space_prefix").unwrap_or(true);
            let replace = NormalizerWrapper::Replace(
                Replace::new(" ", "\u{2581}").map_err(|e| TokenizerError::Build(e.to_string()))?,
            );
            let normalizer = if add_space_prefix {
                NormalizerWrapper::Sequence(NormalizerSequence::new(vec![
                    NormalizerWrapper::Prepend(Prepend::new("\u{2581}".into())),
                    replace,
                ]))
            } else {
                replace
            };
            t.with_normalizer(Some(normalizer));
            let mut decoders = vec![
                DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(|e| TokenizerError::Build(e.to_string()))?),
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
            ];
            if add_space_prefix {
                decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
            }
            t.with_decoder(Some(DecoderSequence::new(decoders)));
            (t, true, false)
        }
        other => {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model {other:?} (verity supports \"gpt2\" byte-level BPE and \"llama\" SentencePiece vocabularies)"
            )))
        }
    };

    // Control, unknown and user-defined tokens are matched in text before the model runs.
    let mut added = Vec::new();
    for (tok, &ty) in tokens.iter().zip(&types) {
        if !(ty == TT_CONTROL || ty == TT_USER_DEFINED || (ty == TT_UNKNOWN && !byte_level_vocab)) {
            continue;
        }
        if tok.is_empty() {
            continue;
        }
        let special = ty != TT_USER_DEFINED;
        let rstrip =
            is_phi3 && special && !matches!(tok.as_str(), "<unk>" | "<s>" | "<|endoftext|>");
        added.push(
            AddedToken::from(tok.clone(), special)
                .normalized(false)
                .rstrip(rstrip),
        );
    }
    let (special, normal): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    inner.add_special_tokens(&special);
    inner.add_tokens(&normal);

    let add_bos = g
        .get_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(default_add_bos);
    let add_eos = g.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    set_post_processor(
        &mut inner,
        add_bos.then_some(bos_id).flatten(),
        add_eos.then_some(eos_id).flatten(),
    )?;

    let mut extra_eog = Vec::new();
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = token_id(g, key, n) {
            extra_eog.push(id);
        }
    }
    Ok(GgufVocab {
        inner,
        bos_id,
        eos_id,
        extra_eog,
        add_bos,
        chat_template: g.get_str("tokenizer.chat_template").map(str::to_string),
    })
}

/// Post-processor that adds BOS (and EOS) like Hugging Face's `TemplateProcessing`.
pub(crate) fn set_post_processor(
    t: &mut tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<(), TokenizerError> {
    if bos.is_none() && eos.is_none() {
        t.with_post_processor(None::<TemplateProcessing>);
        return Ok(());
    }
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    let name = |id: u32| t.id_to_token(id).unwrap_or_default();
    if let Some(b) = bos {
        single.push(format!("{}:0", name(b)));
        specials.push((name(b), b));
    }
    single.push("$A:0".to_string());
    if let Some(e) = eos {
        single.push(format!("{}:0", name(e)));
        if Some(e) != bos {
            specials.push((name(e), e));
        }
    }
    pair.extend(single.iter().cloned());
    if let Some(b) = bos {
        pair.push(format!("{}:1", name(b)));
    }
    pair.push("$B:1".to_string());
    if let Some(e) = eos {
        pair.push(format!("{}:1", name(e)));
    }
    let tp = TemplateProcessing::builder()
        .try_single(single)
        .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))?
        .try_pair(pair)
        .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| TokenizerError::Build(format!("post-processor: {e}")))?;
    t.with_post_processor(Some(tp));
    Ok(())
}

fn vocab_map(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // Keep the first id of a duplicated piece.
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    vocab
}

/// Merges of a SentencePiece vocabulary, derived like Hugging Face's `SentencePieceExtractor`:
/// every split of a piece into two pieces of the vocabulary is a merge, ranked by the merged
/// piece's score (highest first; ties keep vocabulary order).
///
/// User-defined pieces come first, longest first: SentencePiece matches them whole, leftmost
/// longest, before any merge (their GGUF score, -1000, says nothing), and so do the merges
/// of Gemma's tokenizer.json (a run of 40 spaces is the 31-space piece, then the 9-space one).
fn spm_merges(
    tokens: &[String],
    scores: &[f32],
    types: &[i64],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    use std::cmp::Ordering;
    // (left, right, user-defined piece length in chars (0 for others), score)
    let mut merges: Vec<(u32, u32, usize, f32)> = Vec::new();
    let mut local: Vec<(u32, u32)> = Vec::new();
    for ((piece, &score), &ty) in tokens.iter().zip(scores).zip(types) {
        local.clear();
        for (idx, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(idx);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((li, ri));
            }
        }
        local.sort();
        let user = if ty == TT_USER_DEFINED {
            piece.chars().count()
        } else {
            0
        };
        merges.extend(local.iter().map(|&(l, r)| (l, r, user, score)));
    }
    merges.sort_by(|a, b| {
        b.2.cmp(&a.2)
            .then_with(|| b.3.partial_cmp(&a.3).unwrap_or(Ordering::Equal))
    });
    merges
        .into_iter()
        .map(|(l, r, _, _)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect()
}

/// GPT-2's byte → printable char table, reversed.
pub(crate) fn byte_level_char_to_byte() -> HashMap<char, u8> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..=255u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (char::from_u32(c).unwrap_or('?'), b as u8))
        .collect()
}
