//! What a `--model` argument names on the Hugging Face Hub or in Ollama's store.
//!
//! Accepted forms, as llama.cpp's `-hf` and Ollama's `hf.co/` accept them:
//! `ORG/REPO`, `ORG/REPO:QUANT`, `hf.co/ORG/REPO:QUANT`, `huggingface.co/ORG/REPO`,
//! `hf://ORG/REPO/FILE`, each with an optional revision (`ORG/REPO@REV:QUANT`,
//! `ORG/REPO:QUANT@REV`, `hf://ORG/REPO@REV/FILE`); and `ollama:NAME[:TAG]`.

use std::fmt;

/// Which files of a Hub repository a reference selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// GGUF repositories: the default quant (`Q4_K_M`, else the closest); safetensors
    /// repositories: the model's files.
    Default,
    /// A GGUF quant, matched case-insensitively against file names.
    Quant(String),
    /// One file by its path in the repository.
    File(String),
}

/// A model on the Hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubRef {
    /// `ORG/REPO`.
    pub repo: String,
    /// Branch, tag or commit; `None` is `main`.
    pub revision: Option<String>,
    pub selector: Selector,
}

impl HubRef {
    /// The revision asked for (`main` when none was).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for HubRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::File(file) => {
                write!(f, "hf://{}", self.repo)?;
                if let Some(r) = &self.revision {
                    write!(f, "@{r}")?;
                }
                write!(f, "/{file}")
            }
            sel => {
                write!(f, "{}", self.repo)?;
                if let Some(r) = &self.revision {
                    write!(f, "@{r}")?;
                }
                if let Selector::Quant(q) = sel {
                    write!(f, ":{q}")?;
                }
                Ok(())
            }
        }
    }
}

/// A model in Ollama's local store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OllamaRef {
    /// Registry host (`registry.ollama.ai` unless the name carries one, as `hf.co/...` does).
    pub host: String,
    /// Namespace and name, e.g. `library/llama3.2` or `ORG/REPO`.
    pub path: String,
    pub tag: String,
}

impl fmt::Display for OllamaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.host == DEFAULT_OLLAMA_HOST {
            self.path
                .strip_prefix("library/")
                .unwrap_or(&self.path)
                .to_string()
        } else {
            format!("{}/{}", self.host, self.path)
        };
        write!(f, "ollama:{name}:{}", self.tag)
    }
}

pub const DEFAULT_OLLAMA_HOST: &str = "registry.ollama.ai";

/// A parsed `--model` argument that names something remote or in another tool's store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    Hub(HubRef),
    Ollama(OllamaRef),
}

/// Parse `spec` as a Hub or Ollama reference. `Ok(None)` means it is neither (a path or a
/// model name); `Err` means it looks like one but is malformed, with what is wrong.
pub fn parse(spec: &str) -> Result<Option<ModelRef>, String> {
    if let Some(rest) = spec.strip_prefix("ollama:") {
        return parse_ollama(rest).map(|r| Some(ModelRef::Ollama(r)));
    }
    if let Some(rest) = spec.strip_prefix("hf://") {
        return parse_hf_url(rest).map(|r| Some(ModelRef::Hub(r)));
    }
    let mut body = spec;
    let mut explicit = false;
    for prefix in [
        "https://huggingface.co/",
        "https://hf.co/",
        "huggingface.co/",
        "hf.co/",
    ] {
        if let Some(rest) = spec.strip_prefix(prefix) {
            body = rest;
            explicit = true;
            break;
        }
    }
    // Without a prefix, only `ORG/REPO...` with exactly one slash counts: anything that
    // looks like a path (`./x`, `/x`, `a/b/c.gguf`, `x.gguf`) stays a path.
    if !explicit {
        if spec.starts_with(['.', '/', '~']) || spec.matches('/').count() != 1 {
            return Ok(None);
        }
        let lower = spec.to_ascii_lowercase();
        if lower.ends_with(".gguf") || lower.ends_with(".safetensors") {
            return Ok(None);
        }
    }
    parse_repo_quant(body).map(|r| Some(ModelRef::Hub(r)))
}

/// `ORG/REPO[@REV][:QUANT][@REV]`.
fn parse_repo_quant(body: &str) -> Result<HubRef, String> {
    let (repo_part, quant_part) = match body.split_once(':') {
        Some((r, q)) => (r, Some(q)),
        None => (body, None),
    };
    let (repo, rev1) = split_revision(repo_part);
    let (quant, rev2) = match quant_part.map(split_revision) {
        Some((q, r)) => (Some(q), r),
        None => (None, None),
    };
    let revision = rev2.or(rev1);
    check_repo_id(repo)?;
    let selector = match quant {
        None => Selector::Default,
        Some("") => return Err("empty quant after ':' (e.g. ORG/REPO:Q4_K_M)".into()),
        Some(q) if q.eq_ignore_ascii_case("latest") => Selector::Default,
        Some(q) => {
            if !q
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                return Err(format!(
                    "'{q}' is not a quant name (e.g. Q4_K_M, Q8_0, F16)"
                ));
            }
            Selector::Quant(q.to_string())
        }
    };
    check_revision(revision.as_deref())?;
    Ok(HubRef {
        repo: repo.to_string(),
        revision,
        selector,
    })
}

/// `ORG/REPO[@REV]/FILE`.
fn parse_hf_url(rest: &str) -> Result<HubRef, String> {
    let mut parts = rest.splitn(3, '/');
    let (org, repo_rev, file) = (parts.next(), parts.next(), parts.next());
    let (Some(org), Some(repo_rev)) = (org, repo_rev) else {
        return Err(format!("hf://{rest}: expected hf://ORG/REPO/FILE"));
    };
    let (repo_name, revision) = split_revision(repo_rev);
    let repo = format!("{org}/{repo_name}");
    check_repo_id(&repo)?;
    check_revision(revision.as_deref())?;
    let selector = match file {
        None | Some("") => Selector::Default,
        Some(f) => {
            check_repo_path(f)?;
            Selector::File(f.to_string())
        }
    };
    Ok(HubRef {
        repo,
        revision,
        selector,
    })
}

fn split_revision(s: &str) -> (&str, Option<String>) {
    match s.rsplit_once('@') {
        Some((a, rev)) => (a, Some(rev.to_string())),
        None => (s, None),
    }
}

fn parse_ollama(rest: &str) -> Result<OllamaRef, String> {
    if rest.is_empty() {
        return Err("ollama: needs a model name, e.g. ollama:llama3.2:1b".into());
    }
    // A tag follows the last ':' after the last '/' (a host may carry a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rsplit_once(':') {
        Some((_, tag)) => (&rest[..rest.len() - tag.len() - 1], tag),
        None => (rest, "latest"),
    };
    let segments: Vec<&str> = name.split('/').collect();
    let (host, path) = if segments.len() >= 3 || (segments.len() == 2 && segments[0].contains('.'))
    {
        (segments[0].to_string(), segments[1..].join("/"))
    } else if segments.len() == 2 {
        (DEFAULT_OLLAMA_HOST.to_string(), name.to_string())
    } else {
        (DEFAULT_OLLAMA_HOST.to_string(), format!("library/{name}"))
    };
    for part in path.split('/').chain([tag]).chain([host.as_str()]) {
        if part.is_empty()
            || part == "."
            || part == ".."
            || !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            return Err(format!("ollama:{rest}: '{part}' is not a valid name part"));
        }
    }
    Ok(OllamaRef {
        host,
        path,
        tag: tag.to_string(),
    })
}

/// The Hub's rules for repository ids, which also keep them safe as directory names.
pub fn check_repo_id(repo: &str) -> Result<(), String> {
    let bad = || {
        format!("'{repo}' is not a Hugging Face repository id (ORG/REPO, letters, digits, '-', '_', '.')")
    };
    let Some((org, name)) = repo.split_once('/') else {
        return Err(bad());
    };
    for part in [org, name] {
        if part.is_empty()
            || part.len() > 96
            || part.starts_with(['.', '-'])
            || part.ends_with('.')
            || part.contains("..")
            || part.contains("--")
            || !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        {
            return Err(bad());
        }
    }
    Ok(())
}

fn check_revision(rev: Option<&str>) -> Result<(), String> {
    match rev {
        None => Ok(()),
        Some(r)
            if !r.is_empty()
                && !r.contains("..")
                && !r.starts_with('/')
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c)) =>
        {
            Ok(())
        }
        Some(r) => Err(format!("'{r}' is not a revision (a branch, tag or commit)")),
    }
}

/// A file path inside a repository, as a server may send it: relative, '/'-separated,
/// without '..' or empty parts, so that it can never leave the snapshot directory.
pub fn check_repo_path(path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && !path.contains('\\')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{path}' is not a safe file path inside a repository"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(spec: &str) -> HubRef {
        match parse(spec).unwrap() {
            Some(ModelRef::Hub(h)) => h,
            other => panic!("{spec}: {other:?}"),
        }
    }

    #[test]
    fn hub_forms() {
        let h = hub("bartowski/Llama-3.2-1B-Instruct-GGUF:q4_k_m");
        assert_eq!(h.repo, "bartowski/Llama-3.2-1B-Instruct-GGUF");
        assert_eq!(h.selector, Selector::Quant("q4_k_m".into()));
        assert_eq!(h.revision(), "main");
        assert_eq!(hub("hf.co/a/b:Q8_0"), hub("a/b:Q8_0"));
        assert_eq!(
            hub("https://huggingface.co/a/b").selector,
            Selector::Default
        );
        let h = hub("a/b@v1.0:Q8_0");
        assert_eq!(
            (h.revision(), &h.selector),
            ("v1.0", &Selector::Quant("Q8_0".into()))
        );
        assert_eq!(hub("a/b:Q8_0@abc").revision(), "abc");
        let h = hub("hf://a/b@abc/sub/model.gguf");
        assert_eq!(h.selector, Selector::File("sub/model.gguf".into()));
        assert_eq!(h.revision(), "abc");
        assert_eq!(h.to_string(), "hf://a/b@abc/sub/model.gguf");
        assert_eq!(hub("a/b:latest").selector, Selector::Default);
    }

    #[test]
    fn paths_stay_paths() {
        for spec in [
            "model.gguf",
            "./a/b",
            "/abs/x",
            "dir/model.gguf",
            "a/b/c",
            "smollm2",
        ] {
            assert_eq!(parse(spec).unwrap(), None, "{spec}");
        }
    }

    #[test]
    fn malformed_references_say_why() {
        for spec in [
            "hf.co/a",
            "a/..:Q4",
            "hf://a/b/../x",
            "hf.co/a/b:",
            "a--b/c:Q4_0",
            "ollama:",
        ] {
            assert!(parse(spec).is_err(), "{spec}");
        }
    }

    #[test]
    fn ollama_forms() {
        let Some(ModelRef::Ollama(o)) = parse("ollama:llama3.2:1b").unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.host.as_str(), o.path.as_str(), o.tag.as_str()),
            (DEFAULT_OLLAMA_HOST, "library/llama3.2", "1b")
        );
        assert_eq!(o.to_string(), "ollama:llama3.2:1b");
        let Some(ModelRef::Ollama(o)) = parse("ollama:hf.co/a/b:Q4_K_M").unwrap() else {
            panic!()
        };
        assert_eq!(
            (o.host.as_str(), o.path.as_str(), o.tag.as_str()),
            ("hf.co", "a/b", "Q4_K_M")
        );
        let Some(ModelRef::Ollama(o)) = parse("ollama:user/m").unwrap() else {
            panic!()
        };
        assert_eq!((o.path.as_str(), o.tag.as_str()), ("user/m", "latest"));
    }
}
