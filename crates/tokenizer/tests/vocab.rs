//! llama.cpp's tokenizer test vectors (made with Hugging Face `AutoTokenizer`), SmolLM2 goldens
//! from llama.cpp, tokenizer.json round trips and decoding.

mod common;

use std::path::Path;

use verity_formats::gguf::Gguf;
use verity_tokenizer::{StreamDecoder, Tokenizer};

/// Vocabularies that must match 100%.
const REQUIRED: &[&str] = &["llama-spm", "llama-bpe", "qwen2", "gpt-2", "phi-3"];
/// Further vocabularies with test vectors; all of these currently match 100% too.
const OPTIONAL: &[&str] = &[
    "starcoder",
    "falcon",
    "deepseek-llm",
    "deepseek-coder",
    "command-r",
    "mpt",
    "refact",
    "qwen35",
];
/// Vocabularies with vectors that are not tested, and why.
const SKIPPED: &[(&str, &str)] = &[
    ("bert-bge", "WordPiece (tokenizer.ggml.model \"bert\") is not implemented: verity runs decoder-only LLMs"),
    ("gemma-4", "tokenizer.ggml.model \"gemma4\" (SentencePiece-style BPE on raw UTF-8) is not implemented yet"),
];

fn load(path: &Path) -> Tokenizer {
    let g = Gguf::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Encode every vector string; returns the mismatches.
fn mismatches(tok: &Tokenizer, inp: &[String], out: &[Vec<u32>]) -> Vec<String> {
    let mut bad = Vec::new();
    for (s, want) in inp.iter().zip(out) {
        let got = tok.encode(s, false).unwrap();
        if &got != want {
            bad.push(format!(
                "{:?}: got {got:?}, want {want:?}",
                s.chars().take(80).collect::<String>()
            ));
        }
    }
    bad
}

fn check_vectors(name: &str) {
    let (gguf, inp, out) = common::vectors(name);
    let tok = load(&gguf);
    let bad = mismatches(&tok, &inp, &out);
    eprintln!(
        "{name}: {}/{} vectors match",
        inp.len() - bad.len(),
        inp.len()
    );
    assert!(
        bad.is_empty(),
        "{name}: {} of {} vectors differ:\n{}",
        bad.len(),
        inp.len(),
        bad.join("\n")
    );
}

#[test]
fn required_vocabs_match_hf_vectors() {
    for name in REQUIRED {
        check_vectors(name);
    }
}

#[test]
fn optional_vocabs_match_hf_vectors() {
    for name in OPTIONAL {
        check_vectors(name);
    }
    for (name, why) in SKIPPED {
        eprintln!("skipped {name}: {why}");
    }
}

#[test]
fn unsupported_models_fail_clearly() {
    let d = common::vocab_dir();
    let g = Gguf::open(&d.join("ggml-vocab-bert-bge.gguf")).unwrap();
    let e = Tokenizer::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("bert"), "{e}");
}

/// to_tokenizer_json → from_tokenizer_json_file gives identical ids (and config round-trips).
#[test]
fn tokenizer_json_round_trip() {
    let tmp = std::env::temp_dir().join(format!("verity-tok-rt-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in REQUIRED.iter().chain(OPTIONAL) {
        let (gguf, inp, out) = common::vectors(name);
        let tok = load(&gguf);
        let path = tmp.join(format!("{name}.json"));
        std::fs::write(&path, tok.to_tokenizer_json().unwrap()).unwrap();
        let cfg = tok.to_tokenizer_config();
        let back = Tokenizer::from_tokenizer_json_file(&path, Some(&cfg)).unwrap();
        let bad = mismatches(&back, &inp, &out);
        assert!(
            bad.is_empty(),
            "{name} after tokenizer.json round trip:\n{}",
            bad.join("\n")
        );
        assert_eq!(back.bos_id(), tok.bos_id(), "{name}");
        assert_eq!(back.eos_id(), tok.eos_id(), "{name}");
        assert_eq!(back.vocab_size(), tok.vocab_size(), "{name}");
        assert_eq!(back.chat_template(), tok.chat_template(), "{name}");
        assert_eq!(
            back.encode("Hello world", true).unwrap(),
            tok.encode("Hello world", true).unwrap(),
            "{name}"
        );
        std::fs::remove_file(&path).ok();
    }
    std::fs::remove_dir_all(&tmp).ok();
}

/// decode(encode(s)) == s, up to the vocabulary's Unicode normalization (NFC for some).
#[test]
fn decode_inverts_encode() {
    use tokenizers::{NormalizedString, Normalizer};
    for name in REQUIRED.iter().chain(OPTIONAL) {
        let (gguf, inp, _) = common::vectors(name);
        let tok = load(&gguf);
        let nfc = matches!(
            tok.hf().get_normalizer(),
            Some(tokenizers::NormalizerWrapper::NFC(_))
        );
        for s in &inp {
            let want = if nfc {
                let mut n = NormalizedString::from(s.as_str());
                tokenizers::normalizers::NFC.normalize(&mut n).unwrap();
                n.get().to_string()
            } else {
                s.clone()
            };
            let ids = tok.encode(s, false).unwrap();
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                want,
                "{name}: ids {ids:?}"
            );
        }
    }
}

#[test]
fn stream_decoder_matches_decode() {
    let texts = [
        "Hello world",
        " leading space and  double",
        "emoji 🦙🚀 😶‍🌫️ done",
        "中文和日本語のテキスト、한국어",
        "Cửa Việt ½ ∑ 𝔘𝔫𝔦",
        "\n\n  tabs\tand\nnewlines ",
        "🦙",
    ];
    for name in REQUIRED.iter().chain(["starcoder", "falcon"].iter()) {
        let (gguf, _, _) = common::vectors(name);
        let tok = load(&gguf);
        for t in texts {
            let ids = tok.encode(t, false).unwrap();
            let mut sd = StreamDecoder::new(&tok);
            let mut s = String::new();
            for &id in &ids {
                let piece = sd.push(id).unwrap();
                assert!(!piece.contains('\u{FFFD}'), "{name}: {t:?} piece {piece:?}");
                s.push_str(&piece);
            }
            s.push_str(&sd.flush());
            assert_eq!(s, tok.decode(&ids, false).unwrap(), "{name}: {t:?}");
        }
    }
}

#[test]
fn stream_decoder_holds_incomplete_bytes() {
    let (gguf, _, _) = common::vectors("llama-spm");
    let tok = load(&gguf);
    // "🦙" is byte-fallback in Llama 2: four <0xXX> tokens.
    let ids = tok.encode("🦙", false).unwrap();
    assert!(ids.len() >= 4, "{ids:?}");
    let mut sd = StreamDecoder::new(&tok);
    let outs: Vec<String> = ids.iter().map(|&id| sd.push(id).unwrap()).collect();
    assert!(
        outs[..outs.len() - 1]
            .iter()
            .all(|s| s.is_empty() || !s.contains('\u{FFFD}')),
        "{outs:?}"
    );
    assert_eq!(outs.concat().trim_start(), "🦙");
    // An unfinished character is emitted by flush (lossily).
    let mut sd = StreamDecoder::new(&tok);
    assert_eq!(sd.push(ids[1]).unwrap(), "");
    assert!(!sd.flush().is_empty());
}

#[test]
fn special_tokens_and_metadata() {
    let (gguf, _, _) = common::vectors("llama-spm");
    let tok = load(&gguf);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert_eq!(tok.bos_token_str(), Some("<s>"));
    assert_eq!(tok.eos_token_str(), Some("</s>"));
    assert_eq!(tok.encode("Hello", true).unwrap(), vec![1, 15043]);
    assert_eq!(tok.encode("<s>Hello", false).unwrap(), vec![1, 15043]);
    assert!(tok.is_end_of_generation(2));
    assert_eq!(tok.decode(&[1, 15043, 2], true).unwrap(), "Hello");
    assert_eq!(tok.token_text(15043).as_deref(), Some(" Hello"));
    assert_eq!(tok.token_text(13).as_deref(), Some("\n"));
    assert!(tok.decode(&[99_999], false).is_err());

    let (gguf, _, _) = common::vectors("llama-bpe");
    let tok = load(&gguf);
    assert_eq!(
        tok.encode("Hello", true).unwrap()[0],
        128000,
        "Llama 3 adds BOS"
    );
    let eot = tok.token_to_id("<|eot_id|>").unwrap();
    assert!(tok.is_end_of_generation(eot));
    assert_eq!(tok.encode("<|eot_id|>", false).unwrap(), vec![eot]);
    assert_eq!(
        tok.token_text(tok.encode(" world", false).unwrap()[0])
            .as_deref(),
        Some(" world")
    );

    let (gguf, _, _) = common::vectors("qwen2");
    let tok = load(&gguf);
    let im_start = tok.token_to_id("<|im_start|>").unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(tok.is_end_of_generation(im_end));
    assert!(!tok.is_end_of_generation(im_start));
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", true).unwrap();
    assert_eq!(ids[0], im_start, "Qwen2 adds no BOS");
    assert_eq!(*ids.last().unwrap(), im_end);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
    assert!(tok.chat_template().is_some());
}

fn smollm2() -> Tokenizer {
    load(&common::smollm2_path())
}

#[test]
fn smollm2_golden() {
    let tok = smollm2();
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        vec![504, 3575, 282, 4649, 314]
    );
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert!(tok.is_end_of_generation(im_end) && tok.is_end_of_generation(2));

    let golden: serde_json::Value = serde_json::from_str(include_str!("data/smollm2.out.json"))
        .expect("tests/data/smollm2.out.json");
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() > 40);
    let mut bad = Vec::new();
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, false).unwrap();
        if got != want {
            bad.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        assert_eq!(tok.decode(&got, false).unwrap(), text);
    }
    assert!(
        bad.is_empty(),
        "SmolLM2 differs from llama.cpp:\n{}",
        bad.join("\n")
    );
}

#[test]
fn smollm2_chat_template() {
    let tok = smollm2();
    let tmpl = tok.chat().expect("SmolLM2 has a chat template").unwrap();
    let msgs = [
        verity_tokenizer::ChatMessage::new("system", "You are terse."),
        verity_tokenizer::ChatMessage::new("user", "What is 2+2?"),
    ];
    let s = tmpl.render(&msgs, true).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let s = tmpl.render(&msgs[1..], false).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    );
    let ids = tok.encode(&s, false).unwrap();
    assert_eq!(ids[0], tok.token_to_id("<|im_start|>").unwrap());
}
