//! Training data files: the first byte picks the format (.jsonl, .json or .parquet), the
//! rest is the file. Loaded with a small byte-level tokenizer that has a ChatML template,
//! then split and packed, as `verity tune` does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static SETUP: OnceLock<(std::path::PathBuf, verity_tokenizer::Tokenizer)> = OnceLock::new();

/// GPT-2's byte-to-character map: printable bytes stand for themselves.
fn byte_char(b: u8) -> char {
    let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if printable {
        return b as char;
    }
    let mut n = 0u32;
    for c in 0..b {
        if !((33..=126).contains(&c) || (161..=172).contains(&c) || c >= 174) {
            n += 1;
        }
    }
    char::from_u32(256 + n).unwrap()
}

fn tokenizer(dir: &std::path::Path) -> verity_tokenizer::Tokenizer {
    let mut vocab = serde_json::Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), serde_json::json!(b as u32));
    }
    vocab.insert("<|im_start|>".into(), serde_json::json!(256));
    vocab.insert("<|im_end|>".into(), serde_json::json!(257));
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0",
        "added_tokens": [special(256, "<|im_start|>"), special(257, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok.to_string()).unwrap();
    verity_tokenizer::Tokenizer::from_tokenizer_json_file(&path, Some(&config)).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let (dir, tok) = SETUP.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("verity-fuzz-tune-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let t = tokenizer(&d);
        (d, t)
    });
    let Some((&kind, body)) = data.split_first() else { return };
    let ext = ["jsonl", "json", "parquet"][kind as usize % 3];
    let path = dir.join(format!("data.{ext}"));
    std::fs::write(&path, body).unwrap();
    for train_on_prompt in [false, true] {
        let opts = verity_tune::data::DataOptions { max_seq_len: 64, train_on_prompt };
        if let Ok(ds) = verity_tune::data::load(&path, tok, &opts) {
            let order: Vec<usize> = (0..ds.examples.len()).collect();
            for p in verity_tune::data::pack(&ds.examples, &order, 64) {
                assert!(p.tokens.len() <= 64 && p.tokens.len() == p.target.len());
            }
            let _ = verity_tune::data::split(ds, 0.25, 1);
        }
    }
});
