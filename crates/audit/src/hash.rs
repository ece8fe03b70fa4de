//! OpenSSF Model Signing (OMS) v1.0 manifests, "files" serialization: the SHA-256 of every
//! file of a model, and the root digest over them.
//!
//! The root digest is SHA-256 over the concatenated raw digests of the files in canonical
//! order (relative POSIX paths, compared component by component, as Python's `PurePosixPath`
//! orders them). For a model that is a single file the one resource is named "." (what
//! `model-signing` records for a file path); the root digest does not depend on names.
//! Files under `.git`, `.github`, `.gitignore`, `.gitattributes` and the paths given to
//! ignore (the signature file, when it lies inside the model directory) are left out.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

/// Paths that `model-signing` ignores by default (git metadata).
pub const GIT_PATHS: [&str; 4] = [".git", ".github", ".gitignore", ".gitattributes"];

/// Most files a model directory may hold (a bound on hostile directories).
const MAX_FILES: usize = 100_000;
/// Deepest directory nesting we walk.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug)]
pub struct HashOptions {
    /// Paths relative to the model directory to leave out (files or whole directories).
    pub ignore_paths: Vec<String>,
    /// Also leave out `.git`, `.github`, `.gitignore`, `.gitattributes` (default).
    pub ignore_git_paths: bool,
}

impl Default for HashOptions {
    fn default() -> Self {
        HashOptions {
            ignore_paths: Vec::new(),
            ignore_git_paths: true,
        }
    }
}

impl HashOptions {
    /// Every ignored path, as recorded in the manifest.
    pub fn all_ignored(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if self.ignore_git_paths {
            v.extend(GIT_PATHS.iter().map(|s| s.to_string()));
        }
        for p in &self.ignore_paths {
            let p = p.trim_end_matches('/').to_string();
            if !p.is_empty() && !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }
}

/// One file of a model and its digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileDigest {
    /// Path relative to the model directory, '/'-separated ("." for a single-file model).
    pub name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
}

/// A model's OMS v1.0 manifest ("files" serialization, SHA-256).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Manifest {
    /// The directory's (or file's) name.
    pub model_name: String,
    /// Files in canonical order.
    pub files: Vec<FileDigest>,
    /// Ignored paths, as recorded in the statement's serialization parameters.
    pub ignore_paths: Vec<String>,
}

impl Manifest {
    /// Build from files in any order (sorts them canonically).
    pub fn new(model_name: String, mut files: Vec<FileDigest>, ignore_paths: Vec<String>) -> Self {
        files.sort_by(|a, b| canonical_cmp(&a.name, &b.name));
        Manifest {
            model_name,
            files,
            ignore_paths,
        }
    }

    /// SHA-256 over the raw digests of the files in canonical order, hex.
    pub fn root_digest(&self) -> String {
        root_of(self.files.iter().map(|f| f.sha256.as_str()))
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The root digest over hex digests given in canonical order (invalid hex hashes as-is, so
/// that a tampered manifest can never match).
pub fn root_of<'a>(hex_digests: impl Iterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for d in hex_digests {
        match decode_hex(d) {
            Some(bytes) => h.update(bytes),
            None => h.update(d.as_bytes()),
        }
    }
    hex(&h.finalize())
}

/// Path order of Python's `PurePosixPath`: component lists compared lexicographically.
pub fn canonical_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

pub fn hex(bytes: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(H[(b >> 4) as usize] as char);
        s.push(H[(b & 15) as usize] as char);
    }
    s
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The files of a model (relative names and full paths) in canonical order, and its name.
/// The blob a Hugging Face cache link (`models--ORG--REPO/snapshots/REV/FILE` ->
/// `../../blobs/ETAG`) names, when `link` is one: that cache stores each file once and
/// links it, so its links are followed. Any other symbolic link is refused, as in
/// model-signing.
fn hf_cache_link(link: &Path) -> Option<PathBuf> {
    let target = link.canonicalize().ok()?;
    let blobs = target.parent()?;
    let repo_root = blobs.parent()?;
    let is_cache = blobs.file_name()? == "blobs"
        && repo_root.file_name()?.to_str()?.starts_with("models--")
        && link
            .parent()?
            .canonicalize()
            .ok()?
            .starts_with(repo_root.join("snapshots"));
    (is_cache && target.is_file()).then_some(target)
}

pub fn list_files(
    path: &Path,
    opts: &HashOptions,
) -> anyhow::Result<(String, Vec<(String, PathBuf)>)> {
    let meta = std::fs::symlink_metadata(path).with_context(|| path.display().to_string())?;
    let model_name = path
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| path.display().to_string());
    if meta.file_type().is_symlink() {
        if let Some(blob) = hf_cache_link(path) {
            let name = path
                .file_name()
                .map_or(model_name, |n| n.to_string_lossy().into_owned());
            return Ok((name, vec![(".".to_string(), blob)]));
        }
        bail!(
            "{}: is a symbolic link; give the file it points to",
            path.display()
        );
    }
    if meta.is_file() {
        return Ok((model_name, vec![(".".to_string(), path.to_path_buf())]));
    }
    if !meta.is_dir() {
        bail!("{}: neither a file nor a directory", path.display());
    }
    let ignored = opts.all_ignored();
    let is_ignored = |rel: &str| {
        ignored
            .iter()
            .any(|p| rel == p || rel.starts_with(&format!("{p}/")))
    };
    let mut out = Vec::new();
    // Explicit stack: no recursion on what a directory holds.
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(path.to_path_buf(), String::new(), 0)];
    while let Some((dir, prefix, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            bail!("{}: directories nest too deep", dir.display());
        }
        let rd = std::fs::read_dir(&dir).with_context(|| dir.display().to_string())?;
        for entry in rd {
            let entry = entry.with_context(|| dir.display().to_string())?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                bail!(
                    "{}: file name {:?} is not UTF-8",
                    dir.display(),
                    entry.file_name()
                );
            };
            let rel = if prefix.is_empty() {
                name.to_string()
            } else {
                format!("{prefix}/{name}")
            };
            if is_ignored(&rel) {
                continue;
            }
            let ft = entry
                .file_type()
                .with_context(|| entry.path().display().to_string())?;
            if ft.is_symlink() {
                let Some(blob) = hf_cache_link(&entry.path()) else {
                    bail!(
                        "{}: symbolic links are not hashed (as in model-signing); replace it with the file",
                        entry.path().display()
                    );
                };
                out.push((rel, blob));
            } else if ft.is_dir() {
                stack.push((entry.path(), rel, depth + 1));
            } else if ft.is_file() {
                out.push((rel, entry.path()));
                if out.len() > MAX_FILES {
                    bail!("{}: more than {MAX_FILES} files", path.display());
                }
            } else {
                bail!("{}: not a regular file", entry.path().display());
            }
        }
    }
    out.sort_by(|a, b| canonical_cmp(&a.0, &b.0));
    Ok((model_name, out))
}

/// SHA-256 of a file, streamed; `progress` is told of every chunk read.
pub fn sha256_file(path: &Path, progress: &(dyn Fn(u64) + Sync)) -> anyhow::Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| path.display().to_string()),
        };
        h.update(&buf[..n]);
        total += n as u64;
        progress(n as u64);
    }
    Ok((hex(&h.finalize()), total))
}

/// Hash every file of a model (a file or a directory), files in parallel.
pub fn hash_model(
    path: &Path,
    opts: &HashOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Manifest> {
    let (model_name, files) = list_files(path, opts)?;
    let digests = files
        .par_iter()
        .map(|(rel, full)| {
            let (sha256, size) = sha256_file(full, progress)?;
            Ok(FileDigest {
                name: rel.clone(),
                sha256,
                size,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ignore_paths = if path.is_dir() {
        opts.all_ignored()
    } else {
        Vec::new()
    };
    Ok(Manifest::new(model_name, digests, ignore_paths))
}

/// Total bytes the files of a model hold (for a progress bar).
pub fn total_size(path: &Path, opts: &HashOptions) -> anyhow::Result<u64> {
    let (_, files) = list_files(path, opts)?;
    Ok(files
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum())
}

/// The one identity of a model in verity: the OMS v1.0 root digest (hex SHA-256) of the
/// model file or directory, with the default options (git metadata ignored).
pub fn root_digest(path: &Path) -> anyhow::Result<String> {
    Ok(hash_model(path, &HashOptions::default(), &|_| {})?.root_digest())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_order_is_by_component() {
        let mut v = vec!["a.b", "a/b", "a", "b/c/d", "b/c"];
        v.sort_by(|a, b| canonical_cmp(a, b));
        assert_eq!(v, ["a", "a/b", "a.b", "b/c", "b/c/d"]);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            decode_hex(&hex(&[0, 1, 0xab, 0xff])).unwrap(),
            [0, 1, 0xab, 0xff]
        );
        assert!(decode_hex("abc").is_none());
        assert!(decode_hex("zz").is_none());
    }
}
