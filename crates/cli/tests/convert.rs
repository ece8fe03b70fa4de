//! `verity convert --to hf` writes a directory that verity (and Hugging Face tools)
//! load, with the same logits and the same token ids as the GGUF it came from.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets_dir() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets"))
}

fn nrmse(ours: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = ours.iter().zip(reference).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The test strings of llama.cpp's vocabulary test files.
fn vocab_test_strings() -> Vec<String> {
    let dir = assets_dir().join("vocab");
    assert!(dir.exists(), "{} is missing: run scripts/fetch-vocab-vectors", dir.display());
    let mut out = Vec::new();
    for name in ["ggml-vocab-llama-bpe.gguf.inp", "ggml-vocab-qwen2.gguf.inp", "ggml-vocab-gpt-2.gguf.inp"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        out.extend(text.split("\n__ggml_vocab_test__\n").map(str::to_string));
    }
    out
}

#[test]
fn hf_directory_matches_its_gguf() {
    let gguf = verity_store::resolve(None).expect("default model");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-hf");
    let status = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["convert", "--to", "hf"])
        .arg(&gguf)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    let tok_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tok_config["chat_template"].as_str().is_some_and(|t| t.contains("<|im_start|>")));

    // A second convert into the same place refuses to overwrite.
    let again = Command::new(env!("CARGO_BIN_EXE_verity")).args(["convert", "--to", "hf"]).arg(&gguf).arg(&out).output().unwrap();
    assert_eq!(again.status.code(), Some(1));

    let a = Arc::new(verity_model::load(&gguf).unwrap());
    let b = Arc::new(verity_model::load(&out).unwrap());
    assert_eq!(a.hparams.n_layer, b.hparams.n_layer);

    let text = std::fs::read_to_string(repo_root().join("tests/golden/text.txt")).unwrap();
    let tokens_a = a.tokenizer.encode(&text, true).unwrap();
    assert_eq!(tokens_a, b.tokenizer.encode(&text, true).unwrap());
    let tokens = &tokens_a[..256];
    let la = verity_engine::Session::new(a.clone(), 512).eval_all(tokens).unwrap();
    let lb = verity_engine::Session::new(b.clone(), 512).eval_all(tokens).unwrap();
    let e = nrmse(&lb, &la);
    eprintln!("HF F32 directory vs GGUF: normalised RMS error of logits {:.4}% over {} tokens", e * 100.0, tokens.len());
    assert!(e <= 0.01, "normalised RMS error {e}");

    let strings = vocab_test_strings();
    for s in &strings {
        assert_eq!(a.tokenizer.encode(s, false).unwrap(), b.tokenizer.encode(s, false).unwrap(), "ids differ for {s:?}");
    }
    eprintln!("tokenizer.json gives identical ids on {} test strings", strings.len());
}
