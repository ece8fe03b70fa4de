//! The Hugging Face cache layout (`~/.cache/huggingface/hub`), shared with `transformers`,
//! `huggingface_hub` and `hf download`: `models--ORG--REPO/blobs/ETAG` holds each file once,
//! `snapshots/COMMIT/PATH` links to its blob, `refs/BRANCH` names a commit. What another
//! tool fetched is used as it is; what verity fetches is theirs too.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`.
pub fn hub_cache_dir() -> PathBuf {
    for var in ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"] {
        if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
    }
    crate::hub::hf_home().join("hub")
}

/// `ORG/REPO` → `models--ORG--REPO`.
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// `models--ORG--REPO` → `ORG/REPO` (None for datasets, spaces and anything else).
pub fn repo_of_folder(name: &str) -> Option<String> {
    let rest = name.strip_prefix("models--")?;
    let (org, repo) = rest.split_once("--")?;
    let id = format!("{org}/{repo}");
    crate::reference::check_repo_id(&id).ok().map(|_| id)
}

/// Is `s` a full commit hash?
pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One repository's folder in the cache.
#[derive(Clone, Debug)]
pub struct RepoCache {
    pub cache: PathBuf,
    pub repo: String,
    pub root: PathBuf,
}

impl RepoCache {
    pub fn new(cache: &Path, repo: &str) -> RepoCache {
        RepoCache {
            cache: cache.to_path_buf(),
            repo: repo.to_string(),
            root: cache.join(repo_folder_name(repo)),
        }
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs")
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.blobs().join(etag)
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    /// The commit a revision names: itself when it is a commit, else what `refs/REV` holds.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_ascii_lowercase());
        }
        if revision.contains("..") {
            return None;
        }
        let c = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        let c = c.trim();
        is_commit(c).then(|| c.to_string())
    }

    /// Point `refs/REV` at `commit` (atomically).
    pub fn write_ref(&self, revision: &str, commit: &str) -> io::Result<()> {
        if is_commit(revision) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        io::Write::write_all(&mut tmp, commit.as_bytes())?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Make `snapshots/COMMIT/PATH` a relative link to `blobs/ETAG`, replacing any old link
    /// in one rename.
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> io::Result<()> {
        let dest = self.snapshot(commit).join(path);
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let depth = path.matches('/').count();
        let target = PathBuf::from(format!("{}../../blobs/{etag}", "../".repeat(depth)));
        let tmp = dir.join(format!(".{etag}.verity-link"));
        let _ = std::fs::remove_file(&tmp);
        make_link(&target, &tmp, &self.blob(etag))?;
        std::fs::rename(&tmp, &dest)
    }

    /// Files of a snapshot whose blobs are present, as repository paths.
    pub fn snapshot_files(&self, commit: &str) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.snapshot(commit), "", &mut out);
        out.sort();
        out
    }

    /// Commits with a snapshot folder.
    pub fn snapshots(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.join("snapshots"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    /// Hold the lock `huggingface_hub` takes for a blob, so that it and verity never write
    /// the same file at once.
    pub fn lock(&self, etag: &str) -> io::Result<BlobLock> {
        let dir = self.cache.join(".locks").join(repo_folder_name(&self.repo));
        std::fs::create_dir_all(&dir)?;
        BlobLock::acquire(&dir.join(format!("{etag}.lock")))
    }
}

/// Files under `dir` (links followed, dot-files skipped), as '/'-separated relative paths.
pub(crate) fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        // metadata() follows the link: a dangling link (blob missing) is not a file.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, &rel, out),
            Ok(m) if m.is_file() => out.push(rel),
            _ => {}
        }
    }
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path, _blob: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_link(_target: &Path, link: &Path, blob: &Path) -> io::Result<()> {
    // As huggingface_hub does where symlinks are unavailable: a copy.
    std::fs::copy(blob, link).map(|_| ())
}

/// An exclusive advisory lock on a file (`flock`, as Python's `filelock` takes it).
pub struct BlobLock {
    _file: File,
}

impl BlobLock {
    pub fn acquire(path: &Path) -> io::Result<BlobLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            let fd = file.as_raw_fd();
            // SAFETY: flock on a descriptor we own; released when the file closes.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                eprintln!(
                    "verity: waiting for another download of the same file ({})",
                    path.display()
                );
                if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(BlobLock { _file: file })
    }
}

/// Bytes free for an unprivileged user on the file system holding `dir` (or its nearest
/// existing ancestor).
pub fn free_space(dir: &Path) -> io::Result<u64> {
    let mut d = dir.to_path_buf();
    while !d.exists() {
        if !d.pop() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no existing ancestor",
            ));
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(d.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs writes into the zeroed struct we pass.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s.f_bavail as u64 * s.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        Ok(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let rc = RepoCache::new(dir.path(), "o/r");
        assert_eq!(repo_of_folder("models--o--r").as_deref(), Some("o/r"));
        assert_eq!(repo_of_folder("datasets--o--r"), None);
        std::fs::create_dir_all(rc.blobs()).unwrap();
        std::fs::write(rc.blob("e1"), b"x").unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        rc.link(commit, "sub/f.json", "e1").unwrap();
        rc.link(commit, "g.gguf", "missing").unwrap();
        assert_eq!(rc.snapshot_files(commit), ["sub/f.json"]);
        assert_eq!(
            std::fs::read(rc.snapshot(commit).join("sub/f.json")).unwrap(),
            b"x"
        );
        rc.write_ref("main", commit).unwrap();
        assert_eq!(rc.commit_of("main").as_deref(), Some(commit));
        assert_eq!(rc.commit_of("nope"), None);
        let _l = rc.lock("e1").unwrap();
        assert!(free_space(&dir.path().join("not/yet")).unwrap() > 0);
    }
}
