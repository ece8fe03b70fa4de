//! GGUF: header, metadata, tensor table; then what the model loader and the tokenizer read
//! from it, and what `verity inspect` computes over it. Files whose hyperparameters read are
//! loaded as `verity run` loads them (every tensor checked against them: experts, windows,
//! fused matrices, RoPE factors), from a file, as the loader maps one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Ok(g) = verity_formats::gguf::Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for t in &g.tensors {
        let _ = g.tensor_data(t);
    }
    let path = FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("verity-fuzz-gguf-{}.gguf", std::process::id()))
    });
    std::fs::write(path, data).unwrap();
    if verity_model::HParams::from_gguf(&g).is_ok() {
        let _ = verity_model::load(path);
    }
    let _ = verity_audit::inspect::inspect(path, 0);
    if let Ok(tok) = verity_tokenizer::Tokenizer::from_gguf(&g) {
        let _ = tok.encode("Hello, world! 123 ünïcode", true);
    }
});
