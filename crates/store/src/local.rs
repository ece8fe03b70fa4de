//! What the machine can run without a download (`verity list`), and removing what verity
//! itself downloaded (`verity rm`).
//!
//! verity keeps a record of its pulls (`pulled.json` in its store) so that `rm` deletes
//! only those: never what `huggingface_hub` or Ollama put there.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::hf_cache::{hub_cache_dir, repo_of_folder, RepoCache};
use crate::select;

/// Where a model was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// verity's own store (the default model).
    Verity,
    /// The Hugging Face cache, fetched by `verity pull`.
    HfCacheVerity,
    /// The Hugging Face cache, fetched by another tool.
    HfCache,
    /// Ollama's store.
    Ollama,
}

impl Origin {
    pub fn label(self) -> &'static str {
        match self {
            Origin::Verity => "verity",
            Origin::HfCacheVerity => "hf-cache (verity pull)",
            Origin::HfCache => "hf-cache",
            Origin::Ollama => "ollama",
        }
    }
}

/// One file of a local model.
#[derive(Clone, Debug)]
pub struct LocalFile {
    /// Path relative to the model ("." for a single-file model's only file... or its name).
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    /// SHA-256 where the store names the file by it (LFS blobs, Ollama blobs, pinned models).
    pub sha256: Option<String>,
}

/// A model that runs without a download.
#[derive(Clone, Debug)]
pub struct LocalModel {
    /// What `--model` takes to run it.
    pub name: String,
    pub origin: Origin,
    /// What `verity_model::load` opens.
    pub path: PathBuf,
    pub files: Vec<LocalFile>,
}

impl LocalModel {
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

fn record_path() -> PathBuf {
    crate::store_dir().join("pulled.json")
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Record {
    /// Repository → commit → repository paths verity fetched.
    pulls: std::collections::BTreeMap<String, std::collections::BTreeMap<String, BTreeSet<String>>>,
}

fn read_record() -> Record {
    std::fs::read(record_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_record(r: &Record) -> Result<(), String> {
    let path = record_path();
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| e.to_string())?;
    serde_json::to_writer_pretty(&mut tmp, r).map_err(|e| e.to_string())?;
    tmp.persist(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// Note that verity fetched `files` of `repo` at `commit`.
pub(crate) fn record_pull(repo: &str, commit: &str, files: &[String]) -> Result<(), String> {
    let mut r = read_record();
    r.pulls
        .entry(repo.to_string())
        .or_default()
        .entry(commit.to_string())
        .or_default()
        .extend(files.iter().cloned());
    write_record(&r)
}

/// Every model this machine can run without a download.
pub fn list() -> Vec<LocalModel> {
    let mut out = verity_store_models();
    out.extend(hf_cache_models());
    out.extend(crate::ollama::list().into_iter().map(|m| LocalModel {
        name: m.reference.to_string(),
        origin: Origin::Ollama,
        files: vec![LocalFile {
            rel: m.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            path: m.path.clone(),
            size: m.size,
            sha256: Some(m.sha256),
        }],
        path: m.path,
    }));
    out
}

fn verity_store_models() -> Vec<LocalModel> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(crate::store_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let is_gguf = p.is_file() && name.to_ascii_lowercase().ends_with(".gguf");
        let is_hf = p.is_dir() && p.join("config.json").is_file();
        if !(is_gguf || is_hf) {
            continue;
        }
        let files = if is_gguf {
            let known = crate::KNOWN_MODELS.iter().find(|k| k.file == name);
            vec![LocalFile {
                rel: name.clone(),
                size: std::fs::metadata(&p).map_or(0, |m| m.len()),
                // Pinned models were checked against this digest when stored.
                sha256: known.map(|k| k.sha256.to_string()),
                path: p.clone(),
            }]
        } else {
            let mut rels = Vec::new();
            crate::hf_cache::walk(&p, "", &mut rels);
            rels.into_iter()
                .map(|rel| {
                    let path = p.join(&rel);
                    LocalFile {
                        size: std::fs::metadata(&path).map_or(0, |m| m.len()),
                        rel,
                        path,
                        sha256: None,
                    }
                })
                .collect()
        };
        out.push(LocalModel {
            name: name.trim_end_matches(".gguf").to_string(),
            origin: Origin::Verity,
            path: p,
            files,
        });
    }
    out
}

/// A snapshot file's blob name, when it is an LFS SHA-256.
fn sha256_of_link(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let name = target.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| name.to_ascii_lowercase())
}

fn hf_cache_models() -> Vec<LocalModel> {
    let cache = hub_cache_dir();
    let record = read_record();
    let mut out = Vec::new();
    let mut repos: Vec<String> = std::fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| repo_of_folder(&e.file_name().to_string_lossy()))
        .collect();
    repos.sort();
    for repo in repos {
        let rc = RepoCache::new(&cache, &repo);
        let main = rc.commit_of("main");
        for commit in rc.snapshots() {
            let files = rc.snapshot_files(&commit);
            let at = if main.as_deref() == Some(commit.as_str()) {
                String::new()
            } else {
                format!("@{commit}")
            };
            let pulled = record.pulls.get(&repo).and_then(|c| c.get(&commit));
            let origin = |fs: &[String]| match pulled {
                Some(p) if fs.iter().all(|f| p.contains(f)) => Origin::HfCacheVerity,
                _ => Origin::HfCache,
            };
            let snap = rc.snapshot(&commit);
            let local = |rels: &[String]| -> Vec<LocalFile> {
                rels.iter()
                    .map(|rel| {
                        let path = snap.join(rel);
                        LocalFile {
                            size: std::fs::metadata(&path).map_or(0, |m| m.len()),
                            sha256: sha256_of_link(&path),
                            rel: rel.clone(),
                            path,
                        }
                    })
                    .collect()
            };
            let groups = select::gguf_groups(&files);
            for g in &groups {
                let name = match select::quant_of(&g[0]) {
                    Some(q)
                        if groups
                            .iter()
                            .filter(|o| select::quant_of(&o[0]).as_deref() == Some(&q))
                            .count()
                            == 1 =>
                    {
                        format!("{repo}{at}:{q}")
                    }
                    _ => format!("hf://{repo}{at}/{}", g[0]),
                };
                out.push(LocalModel {
                    name,
                    origin: origin(g),
                    path: snap.join(&g[0]),
                    files: local(g),
                });
            }
            if groups.is_empty() {
                if let Ok(sel) = select::select(&repo, &files, &crate::reference::Selector::Default)
                {
                    let mut chosen = sel.files().to_vec();
                    if let select::Selection::Safetensors {
                        index: Some(ix), ..
                    } = &sel
                    {
                        match std::fs::read(snap.join(ix))
                            .ok()
                            .and_then(|b| select::index_shards(&b, &files).ok())
                        {
                            Some(shards) => chosen.extend(shards),
                            None => continue,
                        }
                    }
                    if chosen.iter().all(|f| files.contains(f))
                        && chosen.iter().any(|f| f.ends_with(".safetensors"))
                    {
                        out.push(LocalModel {
                            name: format!("{repo}{at}"),
                            origin: origin(&chosen),
                            path: snap.clone(),
                            files: local(&chosen),
                        });
                    }
                }
            }
        }
    }
    out
}

/// Remove a model that verity downloaded; anything else is refused, saying whose it is.
/// Returns the bytes freed.
pub fn remove(name: &str) -> Result<(LocalModel, u64), String> {
    let models = list();
    let m = models
        .iter()
        .find(|m| m.name == name)
        .or_else(|| models.iter().find(|m| m.name.eq_ignore_ascii_case(name)))
        .cloned()
        .ok_or_else(|| format!("no local model named '{name}'; `verity list` shows the names"))?;
    match m.origin {
        Origin::Ollama => Err(format!(
            "{} belongs to Ollama; verity never deletes Ollama's files (use `ollama rm {}`)",
            m.name,
            m.name.trim_start_matches("ollama:")
        )),
        Origin::HfCache => Err(format!(
            "{} was downloaded by another tool into the Hugging Face cache; verity removes only what it downloaded (use `hf cache delete`)",
            m.name
        )),
        Origin::Verity => {
            let freed = m.size();
            let r = if m.path.is_dir() {
                std::fs::remove_dir_all(&m.path)
            } else {
                std::fs::remove_file(&m.path)
            };
            r.map_err(|e| format!("{}: {e}", m.path.display()))?;
            Ok((m, freed))
        }
        Origin::HfCacheVerity => remove_pulled(&m).map(|freed| (m, freed)),
    }
}

fn remove_pulled(m: &LocalModel) -> Result<u64, String> {
    let cache = hub_cache_dir();
    // The snapshot is .../models--ORG--REPO/snapshots/COMMIT[/file]; find it from the files.
    let first = m.files.first().ok_or("a model without files")?;
    let snap_dir = first
        .path
        .ancestors()
        .find(|a| a.parent().and_then(|p| p.file_name()) == Some(std::ffi::OsStr::new("snapshots")))
        .ok_or("not in a snapshot folder")?
        .to_path_buf();
    let commit = snap_dir
        .file_name()
        .and_then(|c| c.to_str())
        .ok_or("bad snapshot")?
        .to_string();
    let root = snap_dir
        .parent()
        .and_then(Path::parent)
        .ok_or("bad cache layout")?;
    let repo = repo_of_folder(&root.file_name().unwrap_or_default().to_string_lossy())
        .ok_or("not a model repository folder")?;
    let rc = RepoCache::new(&cache, &repo);
    for f in &m.files {
        std::fs::remove_file(&f.path).map_err(|e| format!("{}: {e}", f.path.display()))?;
    }
    // Blobs no snapshot links to any more go too.
    let mut linked = BTreeSet::new();
    for c in rc.snapshots() {
        for rel in rc.snapshot_files(&c) {
            if let Ok(t) = std::fs::read_link(rc.snapshot(&c).join(&rel)) {
                if let Some(n) = t.file_name() {
                    linked.insert(n.to_os_string());
                }
            }
        }
    }
    let mut freed = 0;
    for e in std::fs::read_dir(rc.blobs())
        .into_iter()
        .flatten()
        .flatten()
    {
        if !linked.contains(&e.file_name())
            && !e.file_name().to_string_lossy().contains(".verity-partial")
        {
            freed += e.metadata().map_or(0, |md| md.len());
            let _ = std::fs::remove_file(e.path());
        }
    }
    // An emptied snapshot, the refs naming it, and an emptied repository folder go last.
    remove_empty_dirs(&snap_dir);
    if !snap_dir.exists() {
        for e in std::fs::read_dir(rc.root.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::read_to_string(e.path()).is_ok_and(|c| c.trim() == commit) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if rc.snapshots().is_empty() {
        let _ = std::fs::remove_dir_all(&rc.root);
    }
    let mut r = read_record();
    if let Some(commits) = r.pulls.get_mut(&repo) {
        if let Some(files) = commits.get_mut(&commit) {
            for f in &m.files {
                files.remove(&f.rel);
            }
            if files.is_empty() {
                commits.remove(&commit);
            }
        }
        if commits.is_empty() {
            r.pulls.remove(&repo);
        }
    }
    write_record(&r)?;
    Ok(freed)
}

/// Remove `dir` and its ancestors' empty folders below it, bottom-up (files are kept).
fn remove_empty_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}
