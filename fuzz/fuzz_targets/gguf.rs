//! GGUF: header, metadata, tensor table; then what the model loader and the tokenizer read
//! from it, and what `verity inspect` computes over it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = verity_formats::gguf::Gguf::from_bytes(data.to_vec()) else {
        return;
    };
    for t in &g.tensors {
        let _ = g.tensor_data(t);
    }
    let _ = verity_model::HParams::from_gguf(&g);
    if let Ok(tok) = verity_tokenizer::Tokenizer::from_gguf(&g) {
        let _ = tok.encode("Hello, world! 123 ünïcode", true);
    }
});
