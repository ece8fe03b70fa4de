//! A Hugging Face directory: config.json and model.safetensors (the input, split at the
//! first 0xFF 0xFF pair), opened and read as a model's hyperparameters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("verity-fuzz-hf-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let split = data.windows(2).position(|w| w == [0xff, 0xff]);
    let (config, st) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&b"{}"[..], data),
    };
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), st).unwrap();
    if let Ok(hf) = verity_formats::hf::HfDir::open(dir) {
        for t in hf.tensors.values() {
            let _ = hf.tensor_data(t);
        }
        for (name, info) in &hf.byte_tensors {
            let (_, bytes) = hf.byte_tensor(name).unwrap();
            assert_eq!(bytes.len(), info.end - info.start);
            if bytes.len() % 16 == 0 {
                let scales = vec![127u8; bytes.len() / 16];
                let _ = verity_formats::mxfp4::gguf_rows(bytes, &scales);
            }
        }
        let _ = verity_model::HParams::from_hf_config(&hf.config);
    }
});
