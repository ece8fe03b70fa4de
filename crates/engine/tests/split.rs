//! Split GGUF models (llama.cpp's `PREFIX-00001-of-00003.gguf` parts): the default model
//! split into 3 parts by the reference's gguf-py (`scripts/make-split-gguf.py`, run here when
//! the parts are missing) gives the single file's logits bit for bit, opened from any part;
//! a missing or foreign part is an error naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use verity_engine::Session;

const PARTS: usize = 3;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets_dir() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        })
}

fn single() -> PathBuf {
    verity_store::resolve(None).expect("default model (fetched by the store on first use)")
}

/// The parts of the split default model, made by the script if missing.
fn parts() -> &'static [PathBuf] {
    static P: OnceLock<Vec<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        let src = single();
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = assets_dir().join("test-models/split");
        let parts: Vec<PathBuf> = (1..=PARTS)
            .map(|i| dir.join(format!("{stem}-{i:05}-of-{PARTS:05}.gguf")))
            .collect();
        if !parts.iter().all(|p| p.is_file()) {
            let script = repo_root().join("scripts/make-split-gguf.py");
            let out = Command::new(&script)
                .arg(&src)
                .arg("--parts")
                .arg(PARTS.to_string())
                .arg("--outdir")
                .arg(&dir)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parts
    })
}

fn logits(path: &Path) -> Vec<f32> {
    let model = Arc::new(verity_model::load(path).unwrap_or_else(|e| panic!("{e}")));
    let tokens = model
        .tokenizer
        .encode("The capital of France is", true)
        .unwrap();
    Session::new(model, 64).eval_all(&tokens).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn split_gguf_logits_match_the_single_file() {
    let parts = parts();
    let want = bits(&logits(&single()));
    for p in &parts[..2] {
        assert!(
            bits(&logits(p)) == want,
            "logits from {} differ from the single file's",
            p.display()
        );
    }
    // The metadata comes from the first part whichever part was opened.
    let model = verity_model::load(&parts[1]).unwrap();
    assert_eq!(
        model.gguf.as_ref().unwrap().path(),
        Some(parts[0].as_path())
    );
    let opened = verity_model::open_gguf_parts(&parts[2]).unwrap();
    assert_eq!(opened.len(), PARTS);
    assert_eq!(
        opened.iter().map(|g| g.tensors.len()).sum::<usize>(),
        verity_formats::gguf::Gguf::open(&single())
            .unwrap()
            .tensors
            .len()
    );
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn split_gguf_missing_or_foreign_part_is_a_clear_error() {
    let parts = parts();
    let tmp = TempDir(std::env::temp_dir().join(format!("verity-split-{}", std::process::id())));
    std::fs::create_dir_all(&tmp.0).unwrap();
    let copies: Vec<PathBuf> = parts
        .iter()
        .map(|p| tmp.0.join(p.file_name().unwrap()))
        .collect();
    for (p, c) in parts.iter().zip(&copies).take(2) {
        std::fs::copy(p, c).unwrap();
    }
    for opened in &copies[..2] {
        let msg = verity_model::load(opened).unwrap_err().to_string();
        eprintln!("{msg}");
        for want in [
            copies[2].display().to_string().as_str(),
            "is missing",
            "download all 3 parts",
            "verity pull",
        ] {
            assert!(msg.contains(want), "{msg:?} should say {want:?}");
        }
    }
    // Part 2 under part 3's name: its split.no says otherwise.
    std::fs::copy(&parts[1], &copies[2]).unwrap();
    let msg = verity_model::load(&copies[0]).unwrap_err().to_string();
    eprintln!("{msg}");
    let name = copies[2].file_name().unwrap().to_string_lossy();
    for want in [
        &format!("{name} is not part 3 of 3"),
        "split.no 1",
        "download all 3 parts",
    ] {
        assert!(msg.contains(want), "{msg:?} should say {want:?}");
    }
}
