//! Shared helpers for the tokenizer tests: locating assets and reading llama.cpp test vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// `$VERITY_ASSETS`, or `~/.cache/verity/assets`.
pub fn assets_root() -> PathBuf {
    if let Some(p) = std::env::var_os("VERITY_ASSETS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/verity/assets")
}

/// The vocab test directory; panics with instructions when it is missing.
pub fn vocab_dir() -> PathBuf {
    let d = assets_root().join("vocab");
    assert!(
        d.join("ggml-vocab-llama-spm.gguf.out").exists(),
        "tokenizer test vectors not found in {}: run scripts/fetch-vocab-vectors first (set VERITY_ASSETS to use another assets root)",
        d.display()
    );
    d
}

/// The chat-template directory fetched by scripts/fetch-vocab-vectors.
pub fn templates_dir() -> PathBuf {
    let d = assets_root().join("chat-templates");
    assert!(
        d.is_dir(),
        "chat templates not found in {}: run scripts/fetch-vocab-vectors first",
        d.display()
    );
    d
}

/// SmolLM2-135M-Instruct GGUF: `$VERITY_ASSETS/models/` or the verity model store.
pub fn smollm2_path() -> PathBuf {
    const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let a = assets_root().join("models").join(NAME);
    if a.exists() {
        return a;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let b = home.join(".cache/verity/models").join(NAME);
    assert!(
        b.exists(),
        "{NAME} not found in {} or {}: download the default model (verity pull) or copy it there",
        a.display(),
        b.display()
    );
    b
}

/// Test strings of a `.inp` file (separated by "\n__ggml_vocab_test__\n").
pub fn read_inp(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut parts: Vec<String> = text
        .split("\n__ggml_vocab_test__\n")
        .map(str::to_string)
        .collect();
    // The file ends with a separator.
    if parts.last().is_some_and(|s| s.is_empty()) {
        parts.pop();
    }
    parts
}

/// Expected ids of a `.out` file: one line of space-separated ids per test string.
pub fn read_out(path: &Path) -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect()
}

/// (strings, expected ids) for `ggml-vocab-NAME.gguf`.
pub fn vectors(name: &str) -> (PathBuf, Vec<String>, Vec<Vec<u32>>) {
    let d = vocab_dir();
    let gguf = d.join(format!("ggml-vocab-{name}.gguf"));
    let inp = read_inp(&d.join(format!("ggml-vocab-{name}.gguf.inp")));
    let out = read_out(&d.join(format!("ggml-vocab-{name}.gguf.out")));
    assert_eq!(
        inp.len(),
        out.len(),
        "{name}: .inp and .out disagree on the number of tests"
    );
    (gguf, inp, out)
}

/// Every distinct test string of llama.cpp's `ggml-vocab-*.gguf.inp` files, in file order.
pub fn all_test_strings() -> Vec<String> {
    let d = vocab_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".gguf.inp"))
        .collect();
    files.sort();
    for must in ["llama-spm", "llama-bpe", "qwen2", "gpt-2"] {
        assert!(
            files
                .iter()
                .any(|p| p.ends_with(format!("ggml-vocab-{must}.gguf.inp"))),
            "ggml-vocab-{must}.gguf.inp missing from {}: run scripts/fetch-vocab-vectors",
            d.display()
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for f in &files {
        for s in read_inp(f) {
            if seen.insert(s.clone()) {
                out.push(s);
            }
        }
    }
    out
}
