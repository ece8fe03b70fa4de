//! LoRA adapters: the input is either a GGUF LoRA file, or (after a first 0xFF 0xFF pair)
//! a PEFT directory's adapter_config.json and adapter_model.safetensors. Read, then every
//! pair checked as binding and `inspect` check it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("verity-fuzz-lora-{}", std::process::id()));
        std::fs::create_dir_all(d.join("peft")).unwrap();
        d
    });
    let path = match data.windows(2).position(|w| w == [0xff, 0xff]) {
        Some(i) => {
            let p = dir.join("peft");
            std::fs::write(p.join("adapter_config.json"), &data[..i]).unwrap();
            std::fs::write(p.join("adapter_model.safetensors"), &data[i + 2..]).unwrap();
            p
        }
        None => {
            let p = dir.join("lora.gguf");
            std::fs::write(&p, data).unwrap();
            p
        }
    };
    if let Ok(file) = verity_model::AdapterFile::open(&path) {
        for (&(l, proj), t) in &file.tensors {
            let _ = verity_model::adapter::check_values(&format!("{l} {proj:?}"), t);
        }
        let _ = file.n_params();
        let _ = file.is_uniform();
    }
});
