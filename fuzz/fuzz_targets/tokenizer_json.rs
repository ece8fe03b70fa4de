//! tokenizer.json (with an optional tokenizer_config.json ahead of it, split at 0xFF 0xFF),
//! loaded and used to encode and decode.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("verity-fuzz-tok-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let split = data.windows(2).position(|w| w == [0xff, 0xff]);
    let (config, tok) = match split {
        Some(i) => (serde_json::from_slice(&data[..i]).ok(), &data[i + 2..]),
        None => (None, data),
    };
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tok).unwrap();
    if let Ok(t) = verity_tokenizer::Tokenizer::from_tokenizer_json_file(&path, config.as_ref()) {
        if let Ok(ids) = t.encode("Hello, world! 123 ünïcode <|im_start|>", true) {
            let _ = t.decode(&ids, false);
        }
        let _ = t.decode(&[0, 1, 2, 3, u32::MAX], true);
    }
});
