//! The Hugging Face Hub's HTTP API, as documented: the model info endpoint for a
//! revision's file list (with each LFS file's SHA-256), and `resolve/REV/FILE` with its
//! redirect to where the bytes are. Settings come from the same environment variables
//! `huggingface_hub` reads, so one configuration serves both.

use std::path::PathBuf;
use std::time::Duration;

use crate::reference::check_repo_path;

/// One file of a repository at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    /// Path in the repository, '/'-separated, checked to stay inside it.
    pub path: String,
    pub size: u64,
    /// SHA-256 of an LFS file (its blob name in the cache).
    pub sha256: Option<String>,
    /// Git blob SHA-1 (the blob name of a regular file in the cache).
    pub git_sha1: Option<String>,
}

impl RemoteFile {
    /// The name of its blob in the Hugging Face cache: the SHA-256 for LFS files, the git
    /// blob id otherwise, as `huggingface_hub` names them.
    pub fn etag(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.git_sha1.as_deref())
    }
}

/// A revision of a repository: its commit and files.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    pub commit: String,
    pub files: Vec<RemoteFile>,
    pub gated: bool,
}

impl RepoInfo {
    pub fn file(&self, path: &str) -> Option<&RemoteFile> {
        self.files.iter().find(|f| f.path == path)
    }
    pub fn paths(&self) -> Vec<String> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }
}

/// A client for one Hub endpoint.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    agent: ureq::Agent,
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
}

/// `HF_HUB_OFFLINE=1`: never touch the network, use only what the cache has.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v))
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
pub fn hf_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HF_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(x).join("huggingface");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("huggingface")
}

/// The token: `HF_TOKEN`, else the file `hf auth login` writes (`$HF_TOKEN_PATH`, else
/// `$HF_HOME/token`).
pub fn token() -> Option<String> {
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Ok(t) = std::env::var(var) {
            if !t.trim().is_empty() {
                return Some(t.trim().to_string());
            }
        }
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home().join("token"));
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A failed Hub request, with what the user can do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HubError(pub String);

impl Hub {
    /// The endpoint from `HF_ENDPOINT` (default `https://huggingface.co`), the token from
    /// the environment.
    pub fn from_env() -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".to_string());
        Hub::new(endpoint.trim_end_matches('/').to_string(), token())
    }

    pub fn new(endpoint: String, token: Option<String>) -> Hub {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // An idle connection is an error (then retried or resumed), never a hang.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("verity/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Hub {
            endpoint,
            token,
            agent,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The repository's page, where a gated model's licence is accepted.
    pub fn page(&self, repo: &str) -> String {
        format!("{}/{repo}", self.endpoint)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> HubError {
        HubError(format!(
            "could not reach the Hugging Face Hub at {}: {e}. Check the network (or set HF_ENDPOINT to a mirror); models already downloaded run offline with HF_HUB_OFFLINE=1",
            self.endpoint
        ))
    }

    /// The Authorization header, only for the endpoint's own host (never for the CDN a
    /// download is redirected to).
    fn auth_for(&self, url: &str) -> Option<String> {
        let t = self.token.as_ref()?;
        url.starts_with(&self.endpoint)
            .then(|| format!("Bearer {t}"))
    }

    /// What the Hub's error status means for `repo`, phrased as what to do.
    fn status_error(
        &self,
        resp: &ureq::http::Response<ureq::Body>,
        repo: &str,
        what: &str,
    ) -> HubError {
        let code = resp
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let page = self.page(repo);
        HubError(match (resp.status().as_u16(), code) {
            (401, _) | (403, "GatedRepo") if self.token.is_none() => format!(
                "{repo} is gated or private: accept its licence at {page} while logged in, then set HF_TOKEN to a token of that account (or run `hf auth login`)"
            ),
            (401, _) => format!("the Hub refused the token for {repo} (HF_TOKEN or the `hf auth login` token): check it is valid and that its account may read {page}"),
            (403, _) => format!("{repo} is gated and this token's account has not been granted access: accept its licence at {page}, then try again"),
            (404, "RevisionNotFound") => format!("{repo} has no revision {what}: use a branch, tag or commit that exists (see {page}/tree/main)"),
            (404, "EntryNotFound") => format!("{repo} has no file {what}"),
            (404, _) => format!("no repository {repo} on {}: check the name (a private repository also needs HF_TOKEN)", self.endpoint),
            (429, _) => format!("the Hub is rate-limiting requests for {repo}: wait a minute and try again (a token, HF_TOKEN, raises the limit)"),
            (s, _) => format!("the Hub answered {s} for {repo} ({what}); try again later"),
        })
    }

    /// The files and commit of `repo` at `revision`.
    pub fn model_info(&self, repo: &str, revision: &str) -> Result<RepoInfo, HubError> {
        let url = format!(
            "{}/api/models/{repo}/revision/{}?blobs=true",
            self.endpoint,
            // Branch names may hold '/', which the API wants encoded.
            encode_component(revision)
        );
        let mut req = self.agent.get(&url);
        if let Some(a) = self.auth_for(&url) {
            req = req.header("Authorization", a);
        }
        let resp = req.call().map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(&resp, repo, revision));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        parse_model_info(&body).map_err(|e| {
            HubError(format!(
                "{}: the model info for {repo} is not what the Hub sends: {e}",
                self.endpoint
            ))
        })
    }

    /// Where the bytes of `path` are: follows the Hub's redirects (to a CDN, or relative)
    /// and returns the URL to GET.
    pub fn locate(&self, repo: &str, commit: &str, path: &str) -> Result<String, HubError> {
        let mut url = format!(
            "{}/{repo}/resolve/{commit}/{}",
            self.endpoint,
            path.split('/')
                .map(encode_component)
                .collect::<Vec<_>>()
                .join("/")
        );
        for _ in 0..10 {
            let mut req = self.agent.head(&url).header("Accept-Encoding", "identity");
            if let Some(a) = self.auth_for(&url) {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.unreachable(e))?;
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| HubError(format!("{url}: redirect without a Location")))?;
                let next = join_url(&url, loc);
                // Another host (a CDN) signs its URL for GET only: hand it over unvisited,
                // as huggingface_hub does.
                if host_of(&next) != host_of(&url) {
                    return Ok(next);
                }
                url = next;
                continue;
            }
            if !status.is_success() {
                return Err(self.status_error(&resp, repo, path));
            }
            return Ok(url);
        }
        Err(HubError(format!("{url}: too many redirects")))
    }

    /// GET `url`, from byte `start` (a range request when `start > 0` or `end` is set).
    pub(crate) fn get(
        &self,
        url: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ureq::http::Response<ureq::Body>, String> {
        let mut req = self.agent.get(url).header("Accept-Encoding", "identity");
        if let Some(a) = self.auth_for(url) {
            req = req.header("Authorization", a);
        }
        if start > 0 || end.is_some() {
            let range = match end {
                Some(e) => format!("bytes={start}-{e}"),
                None => format!("bytes={start}-"),
            };
            req = req.header("Range", range);
        }
        req.call().map_err(|e| self.unreachable(e).0)
    }
}

fn parse_model_info(body: &[u8]) -> Result<RepoInfo, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let commit = v
        .get("sha")
        .and_then(|s| s.as_str())
        .filter(|s| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("no commit ('sha')")?
        .to_ascii_lowercase();
    let gated = v
        .get("gated")
        .is_some_and(|g| g.as_bool() != Some(false) && !g.is_null());
    let siblings = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .ok_or("no file list ('siblings')")?;
    let hex_of = |s: Option<&serde_json::Value>, len: usize| {
        s.and_then(|x| x.as_str())
            .filter(|x| x.len() == len && x.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|x| x.to_ascii_lowercase())
    };
    let mut files = Vec::with_capacity(siblings.len());
    for s in siblings {
        let path = s
            .get("rfilename")
            .and_then(|p| p.as_str())
            .ok_or("a sibling without 'rfilename'")?;
        check_repo_path(path)?;
        let lfs = s.get("lfs");
        let size = lfs
            .and_then(|l| l.get("size"))
            .or(s.get("size"))
            .and_then(|n| n.as_u64())
            .unwrap_or(0);
        files.push(RemoteFile {
            path: path.to_string(),
            size,
            sha256: hex_of(lfs.and_then(|l| l.get("sha256")), 64),
            git_sha1: hex_of(s.get("blobId"), 40),
        });
    }
    Ok(RepoInfo {
        commit,
        files,
        gated,
    })
}

fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

/// Resolve a Location header against the URL it came from.
fn join_url(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if loc.starts_with('/') {
        format!("{}{loc}", &base[..host_end])
    } else {
        let dir_end = base.rfind('/').map_or(base.len(), |i| i + 1);
        format!("{}{loc}", &base[..dir_end.max(host_end)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_info_parsing() {
        let body = br#"{"id":"o/r","sha":"0123456789abcdef0123456789abcdef01234567","siblings":[
            {"rfilename":"config.json","size":10,"blobId":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
            {"rfilename":"m.gguf","size":5,"blobId":"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
             "lfs":{"sha256":"cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc","size":99,"pointerSize":134}}]}"#;
        let info = parse_model_info(body).unwrap();
        assert_eq!(info.files[1].size, 99);
        assert_eq!(info.files[1].etag().unwrap().len(), 64);
        assert_eq!(info.files[0].etag().unwrap().len(), 40);
        let hostile = br#"{"sha":"0123456789abcdef0123456789abcdef01234567","siblings":[{"rfilename":"../../etc/x"}]}"#;
        assert!(parse_model_info(hostile).is_err());
    }

    #[test]
    fn redirects_resolve() {
        assert_eq!(join_url("http://a:1/x/y", "http://b:2/z"), "http://b:2/z");
        assert_eq!(join_url("http://a:1/x/y", "/z?q"), "http://a:1/z?q");
        assert_eq!(join_url("http://a:1/x/y", "z"), "http://a:1/x/z");
    }
}
