//! The model's vocabulary as llguidance sees it: every token id's exact bytes, in a
//! token trie.
//!
//! - Byte-level BPE pieces (GPT-2's byte-to-unicode alphabet) map back to their bytes.
//! - SentencePiece pieces: `▁` is a space, byte-fallback pieces `<0xAB>` are the one
//!   byte 0xAB.
//! - Special (control) tokens get llguidance's marker byte 0xFF before their text, so no
//!   grammar matches them as text; a Lark grammar can still name them (`<|im_end|>`).
//! - Ids past the tokenizer's vocabulary (padding rows of the output matrix) have no
//!   bytes and are never allowed.
//! - End of generation is every end-of-generation token of the model: a grammar allows
//!   them exactly when what was generated is complete.

use std::collections::HashMap;
use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv, INVALID_TOKEN};
use verity_tokenizer::Tokenizer;

/// How a tokenizer's pieces spell bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    ByteLevel,
    SentencePiece,
    Plain,
}

fn style(tok: &Tokenizer) -> Style {
    let decoder = tok
        .hf()
        .get_decoder()
        .map(|d| serde_json::to_string(d).unwrap_or_default())
        .unwrap_or_default();
    if decoder.contains("ByteLevel") {
        Style::ByteLevel
    } else if decoder.contains("ByteFallback")
        || decoder.contains("Metaspace")
        || decoder.contains('\u{2581}')
    {
        Style::SentencePiece
    } else {
        Style::Plain
    }
}

/// GPT-2's byte-to-unicode table, inverted: the character each byte is written as.
fn byte_level_chars() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut map = HashMap::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        let c = if printable(b) {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        map.insert(char::from_u32(c).expect("valid code point"), b);
    }
    map
}

/// The bytes of every token id below `n_vocab`.
pub(crate) fn token_bytes(tok: &Tokenizer, n_vocab: usize) -> Vec<Vec<u8>> {
    let style = style(tok);
    let chars = byte_level_chars();
    let added = tok.hf().get_added_tokens_decoder();
    let mut out = Vec::with_capacity(n_vocab);
    for id in 0..n_vocab as u32 {
        if let Some(t) = added.get(&id) {
            let mut b = Vec::with_capacity(t.content.len() + 1);
            if t.special {
                b.push(TokTrie::SPECIAL_TOKEN_MARKER);
            }
            b.extend_from_slice(t.content.as_bytes());
            out.push(b);
            continue;
        }
        let Some(piece) = tok.token_piece(id) else {
            out.push(Vec::new());
            continue;
        };
        let bytes = match style {
            Style::ByteLevel => piece
                .chars()
                .map(|c| chars.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| piece.as_bytes().to_vec()),
            Style::SentencePiece => match byte_fallback(&piece) {
                Some(b) => vec![b],
                None => piece.replace('\u{2581}', " ").into_bytes(),
            },
            Style::Plain => piece.into_bytes(),
        };
        out.push(bytes);
    }
    out
}

/// `<0xAB>` → 0xAB.
fn byte_fallback(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The trie plus tokenization, as llguidance wants it.
///
/// Tokenization is declared non-canonical: llguidance then never forces a token of its
/// own choosing when the grammar fixes the next bytes; it allows every token that spells
/// a prefix of them (or them and a valid continuation), and the model picks. That keeps
/// masks exact without depending on reproducing the tokenizer's own splits (SentencePiece's
/// leading space, special tokens written in text).
struct Env {
    trie: TokTrie,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// A token environment for `tok`, over `n_vocab` ids (the logits' length).
pub(crate) fn tok_env(tok: &Tokenizer, n_vocab: usize) -> Result<TokEnv, String> {
    let n_vocab = n_vocab.max(tok.vocab_size());
    let words = token_bytes(tok, n_vocab);
    let eog: Vec<u32> = tok
        .end_of_generation_ids()
        .into_iter()
        .filter(|&t| (t as usize) < n_vocab)
        .collect();
    let info = TokRxInfo {
        vocab_size: n_vocab as u32,
        tok_eos: eog.first().copied().unwrap_or(INVALID_TOKEN),
        tok_bos: tok.bos_id(),
        tok_pad: None,
        tok_unk: None,
        tok_end_of_turn: None,
    };
    // TokTrie asserts on malformed input; a vocabulary is checked data, but a panic here
    // must still become an error.
    let trie = std::panic::catch_unwind(|| {
        let trie = TokTrie::from(&info, &words);
        if eog.is_empty() {
            trie
        } else {
            trie.with_eos_tokens(&eog)
        }
    })
    .map_err(|_| "could not build the token trie for this vocabulary".to_string())?;
    Ok(Arc::new(Env { trie }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        let m = byte_level_chars();
        assert_eq!(m.len(), 256);
        assert_eq!(m[&'Ġ'], b' ');
        assert_eq!(m[&'Ċ'], b'\n');
        assert_eq!(m[&'a'], b'a');
        assert_eq!(m[&'\u{100}'], 0);
    }

    #[test]
    fn byte_fallback_pieces() {
        assert_eq!(byte_fallback("<0x0A>"), Some(10));
        assert_eq!(byte_fallback("<0xFF>"), Some(255));
        assert_eq!(byte_fallback("<0x1>"), None);
        assert_eq!(byte_fallback("<s>"), None);
    }
}
