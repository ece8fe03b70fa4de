//! `pull`: a Hub reference into the Hugging Face cache, and the offline lookup that finds
//! it there again.

use std::path::PathBuf;

use crate::download::{self, Expected, Job};
use crate::hf_cache::{free_space, hub_cache_dir, RepoCache};
use crate::hub::{self, Hub, RemoteFile, RepoInfo};
use crate::reference::HubRef;
use crate::select::{self, Selection};
use crate::StoreError;

/// What a pull produced.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub repo: String,
    pub commit: String,
    /// What `--model` loads: the GGUF file (the first part of a split one) or the snapshot
    /// directory of a safetensors model.
    pub path: PathBuf,
    /// Repository paths of the model's files.
    pub files: Vec<String>,
    pub quant: Option<String>,
    /// Bytes fetched by this pull (0 when everything was already in the cache).
    pub downloaded: u64,
}

/// Options of a pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Connections per large file.
    pub connections: usize,
    /// Show progress bars.
    pub progress: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            connections: 4,
            progress: true,
        }
    }
}

fn err(msg: impl Into<String>) -> StoreError {
    StoreError::Pull(msg.into())
}

/// The model `r` names if the cache already has all of it (no network).
pub fn find_cached(r: &HubRef) -> Option<Pulled> {
    let rc = RepoCache::new(&hub_cache_dir(), &r.repo);
    let commit = rc.commit_of(r.revision())?;
    let files = rc.snapshot_files(&commit);
    let selection = select::select(&r.repo, &files, &r.selector).ok()?;
    let chosen = complete_selection(&rc, &commit, &selection, &files)?;
    Some(Pulled {
        repo: r.repo.clone(),
        path: model_path(&rc, &commit, &selection),
        commit,
        files: chosen,
        quant: quant(&selection),
        downloaded: 0,
    })
}

/// With a safetensors index, its shards must be there too.
fn complete_selection(
    rc: &RepoCache,
    commit: &str,
    selection: &Selection,
    files: &[String],
) -> Option<Vec<String>> {
    let mut chosen = selection.files().to_vec();
    if let Selection::Safetensors {
        index: Some(index), ..
    } = selection
    {
        let bytes = std::fs::read(rc.snapshot(commit).join(index)).ok()?;
        chosen.extend(select::index_shards(&bytes, files).ok()?);
    }
    chosen.iter().all(|f| files.contains(f)).then_some(chosen)
}

fn model_path(rc: &RepoCache, commit: &str, selection: &Selection) -> PathBuf {
    match selection {
        Selection::Gguf { files, .. } => rc.snapshot(commit).join(&files[0]),
        Selection::Safetensors { .. } => rc.snapshot(commit),
    }
}

fn quant(selection: &Selection) -> Option<String> {
    match selection {
        Selection::Gguf { quant, .. } => quant.clone(),
        Selection::Safetensors { .. } => None,
    }
}

/// Fetch what `r` names into the cache (only the files it lacks) and return where it is.
pub fn pull(r: &HubRef, opts: &PullOptions) -> Result<Pulled, StoreError> {
    let cache = hub_cache_dir();
    if hub::offline() {
        return find_cached(r).ok_or_else(|| {
            err(format!(
                "HF_HUB_OFFLINE is set and {r} is not in the Hugging Face cache ({}); unset HF_HUB_OFFLINE to download it",
                cache.display()
            ))
        });
    }
    let hub = Hub::from_env();
    let info = match hub.model_info(&r.repo, r.revision()) {
        Ok(info) => info,
        Err(e) => {
            // Unreachable but already here: use it, saying so.
            if let Some(p) = find_cached(r) {
                eprintln!(
                    "verity: {e}\nverity: using the copy in the cache ({})",
                    p.path.display()
                );
                return Ok(p);
            }
            return Err(err(e.0));
        }
    };
    let rc = RepoCache::new(&cache, &r.repo);
    let selection = select::select(&r.repo, &info.paths(), &r.selector).map_err(err)?;
    let mut files = selection.files().to_vec();
    let mut downloaded = 0;
    if let Selection::Safetensors {
        index: Some(index), ..
    } = &selection
    {
        // The index names the shards: fetch it first.
        downloaded += fetch_files(&hub, &rc, &info, std::slice::from_ref(index), opts)?;
        let bytes = std::fs::read(rc.blob(etag(&info, index)?))
            .map_err(|e| err(format!("{index}: {e}")))?;
        files.extend(select::index_shards(&bytes, &info.paths()).map_err(err)?);
    }
    downloaded += fetch_files(&hub, &rc, &info, &files, opts)?;
    // Every blob is in place: only now does the snapshot name them, so a model is
    // either all there or not there.
    for f in &files {
        rc.link(&info.commit, f, etag(&info, f)?).map_err(|e| {
            err(format!(
                "linking {f} into {}: {e}",
                rc.snapshot(&info.commit).display()
            ))
        })?;
    }
    rc.write_ref(r.revision(), &info.commit)
        .map_err(|e| err(format!("{}: {e}", rc.root.display())))?;
    crate::local::record_pull(&r.repo, &info.commit, &files).map_err(err)?;
    Ok(Pulled {
        repo: r.repo.clone(),
        path: model_path(&rc, &info.commit, &selection),
        commit: info.commit.clone(),
        files,
        quant: quant(&selection),
        downloaded,
    })
}

fn etag<'a>(info: &'a RepoInfo, path: &str) -> Result<&'a str, StoreError> {
    info.file(path).and_then(RemoteFile::etag).ok_or_else(|| {
        err(format!(
            "the Hub lists no digest for {path}, so verity cannot check it; it stores only files it has checked"
        ))
    })
}

/// Download the blobs of `paths` that the cache lacks; returns the bytes fetched.
fn fetch_files(
    hub: &Hub,
    rc: &RepoCache,
    info: &RepoInfo,
    paths: &[String],
    opts: &PullOptions,
) -> Result<u64, StoreError> {
    let mut todo: Vec<&RemoteFile> = Vec::new();
    for p in paths {
        let f = info
            .file(p)
            .ok_or_else(|| err(format!("{} has no file {p}", rc.repo)))?;
        etag(info, p)?;
        let blob = rc.blob(f.etag().unwrap_or_default());
        if std::fs::metadata(&blob).is_ok_and(|m| m.len() == f.size) {
            continue;
        }
        if !todo.iter().any(|t| t.etag() == f.etag()) {
            todo.push(f);
        }
    }
    if todo.is_empty() {
        return Ok(0);
    }
    std::fs::create_dir_all(rc.blobs())
        .map_err(|e| err(format!("{}: {e}", rc.blobs().display())))?;
    // Refuse before the first byte when the rest cannot fit.
    let needed: u64 = todo
        .iter()
        .map(|f| {
            f.size.saturating_sub(download::bytes_present(
                &rc.blob(f.etag().unwrap_or_default()),
            ))
        })
        .sum();
    let free =
        free_space(&rc.blobs()).map_err(|e| err(format!("{}: {e}", rc.blobs().display())))?;
    if needed > free {
        return Err(err(format!(
            "not enough disk space for {}: it needs {} more and {} has {} free; free some space, or set HF_HUB_CACHE to a larger disk",
            rc.repo,
            human(needed),
            rc.blobs().display(),
            human(free)
        )));
    }
    let mut fetched = 0;
    for f in todo {
        let etag = f.etag().unwrap_or_default();
        let dest = rc.blob(etag);
        let _lock = rc
            .lock(etag)
            .map_err(|e| err(format!("locking {etag}: {e}")))?;
        if std::fs::metadata(&dest).is_ok_and(|m| m.len() == f.size) {
            continue; // another process finished it while we waited
        }
        let url = hub
            .locate(&rc.repo, &info.commit, &f.path)
            .map_err(|e| err(e.0))?;
        let expected = match &f.sha256 {
            Some(s) => Expected::Sha256(s.clone()),
            None => Expected::GitSha1(etag.to_string()),
        };
        let label = format!("{}/{}", rc.repo, f.path);
        let bar = progress_bar(opts.progress, f.size, &f.path);
        let before = download::bytes_present(&dest);
        let job = Job {
            url,
            size: f.size,
            dest,
            expected,
            label: &label,
        };
        download::download(hub, &job, opts.connections, &|n| bar.inc(n)).map_err(err)?;
        bar.finish_and_clear();
        fetched += f.size - before.min(f.size);
        eprintln!("verity: {label}: {} checked", human(f.size));
    }
    Ok(fetched)
}

fn progress_bar(show: bool, size: u64, name: &str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(size).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(name.to_string());
    bar
}

/// Bytes for people: `98.4 MB`.
pub fn human(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}
