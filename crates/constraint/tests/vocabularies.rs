//! Token bytes and constraints over other vocabularies than the default model's:
//! SentencePiece with byte fallback (Llama 2) and a 151k byte-level BPE (Qwen3), from the
//! tokenizer.json files scripts/fetch-vocab-vectors fetches (skipped without them).

use std::path::PathBuf;
use std::time::Instant;

use serde_json::json;
use verity_constraint::{Constraint, ConstraintFactory};
use verity_tokenizer::Tokenizer;

fn load(name: &str) -> Option<Tokenizer> {
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        });
    let d = assets.join("hf-tokenizers").join(name);
    if !d.join("tokenizer.json").exists() {
        eprintln!(
            "{} missing (scripts/fetch-vocab-vectors): skipping",
            d.display()
        );
        return None;
    }
    let cfg: Option<serde_json::Value> = std::fs::read(d.join("tokenizer_config.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    Some(Tokenizer::from_tokenizer_json_file(&d.join("tokenizer.json"), cfg.as_ref()).unwrap())
}

/// Walk `text` through `c` by the longest allowed token each time; returns whether the
/// constraint completed exactly at the end.
fn walk(f: &ConstraintFactory, c: &mut Constraint, text: &[u8]) -> bool {
    let mut at = 0;
    let mut done = false;
    while at < text.len() {
        let mask = c.mask().unwrap().clone();
        let mut best: Option<(u32, usize)> = None;
        mask.iter_set_entries(|t| {
            let b = f.token_bytes(t as u32);
            if !b.is_empty() && text[at..].starts_with(b) && best.is_none_or(|(_, l)| b.len() > l) {
                best = Some((t as u32, b.len()));
            }
        });
        let (t, len) = best.unwrap_or_else(|| {
            panic!(
                "no allowed token spells {:?}",
                String::from_utf8_lossy(&text[at..])
            )
        });
        done = c.commit(t).unwrap();
        at += len;
    }
    done
}

fn check(tok: &Tokenizer, leading_space: bool) {
    let t = Instant::now();
    let f = ConstraintFactory::new(tok, tok.vocab_size()).unwrap();
    eprintln!(
        "factory over {} tokens: {:?}",
        tok.vocab_size(),
        t.elapsed()
    );
    let text = "Héllo, wörld! 😀 {\"a\": [1, 2]}\n\ttabs ∑";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&t| f.token_bytes(t).to_vec())
        .collect();
    let expected = if leading_space {
        format!(" {text}")
    } else {
        text.to_string()
    };
    assert_eq!(String::from_utf8_lossy(&bytes), expected, "{ids:?}");
    // Every end-of-generation token is special, so no grammar spells it as text.
    for id in tok.end_of_generation_ids() {
        assert_eq!(f.token_bytes(id).first(), Some(&0xFF), "token {id}");
    }
    // A schema whose string needs characters the vocabulary may only have as bytes.
    let g = f
        .json_schema(&json!({"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"], "additionalProperties": false}))
        .unwrap();
    let mut c = g.start();
    assert!(walk(&f, &mut c, "{\"s\": \"ü😀∑ \\\"q\\\"\"}".as_bytes()));
}

#[test]
fn sentencepiece_byte_fallback_vocabulary() {
    let Some(tok) = load("llama2") else { return };
    // Byte-fallback pieces are their one byte.
    let nl = tok.token_to_id("<0x0A>").unwrap();
    let ff = tok.token_to_id("<0xFF>").unwrap();
    let f = ConstraintFactory::new(&tok, tok.vocab_size()).unwrap();
    assert_eq!(f.token_bytes(nl), b"\n");
    assert_eq!(f.token_bytes(ff), &[0xFF]);
    assert_eq!(f.token_bytes(tok.token_to_id("▁the").unwrap()), b" the");
    // SentencePiece writes a leading space before the text.
    check(&tok, true);
}

#[test]
fn large_byte_level_vocabulary() {
    let Some(tok) = load("qwen3") else { return };
    check(&tok, false);
}
