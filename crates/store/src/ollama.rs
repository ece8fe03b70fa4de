//! Ollama's local store (`~/.ollama/models`, or `$OLLAMA_MODELS`): a manifest per
//! `NAME:TAG` under `manifests/HOST/NAMESPACE/NAME/TAG`, whose model layer is a GGUF blob
//! in `blobs/sha256-HEX`. verity reads it in place and never writes or deletes there.

use std::path::{Path, PathBuf};

use crate::reference::OllamaRef;

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// The store's root.
pub fn ollama_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OLLAMA_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".ollama").join("models")
}

/// A model found in the store.
#[derive(Clone, Debug)]
pub struct OllamaModel {
    pub reference: OllamaRef,
    /// The GGUF blob.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Read the manifest of `r` and return its model layer, checked to exist with the size
/// the manifest gives.
pub fn find(r: &OllamaRef) -> Result<OllamaModel, String> {
    let root = ollama_dir();
    let manifest = root
        .join("manifests")
        .join(&r.host)
        .join(&r.path)
        .join(&r.tag);
    let bytes = std::fs::read(&manifest).map_err(|_| {
        format!(
            "{r} is not in Ollama's store ({}): pull it with `ollama pull {}`, or set OLLAMA_MODELS to the store's folder",
            root.display(),
            r.to_string().trim_start_matches("ollama:")
        )
    })?;
    model_layer(&root, &bytes, r).map_err(|e| format!("{}: {e}", manifest.display()))
}

fn model_layer(root: &Path, manifest: &[u8], r: &OllamaRef) -> Result<OllamaModel, String> {
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("not a manifest: {e}"))?;
    let layer = v
        .get("layers")
        .and_then(|l| l.as_array())
        .and_then(|ls| {
            ls.iter()
                .find(|l| l.get("mediaType").and_then(|m| m.as_str()) == Some(MODEL_LAYER))
        })
        .ok_or("no model layer (an adapter- or projector-only manifest?)")?;
    let digest = layer
        .get("digest")
        .and_then(|d| d.as_str())
        .and_then(|d| d.strip_prefix("sha256:"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or("the model layer has no sha256 digest")?;
    let size = layer.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
    let path = root.join("blobs").join(format!("sha256-{digest}"));
    let len = std::fs::metadata(&path)
        .map_err(|_| {
            format!(
                "its model blob {} is missing; run `ollama pull` again",
                path.display()
            )
        })?
        .len();
    if size != 0 && len != size {
        return Err(format!(
            "its model blob {} has {len} bytes, the manifest says {size}; run `ollama pull` again",
            path.display()
        ));
    }
    Ok(OllamaModel {
        reference: r.clone(),
        path,
        size: len,
        sha256: digest.to_ascii_lowercase(),
    })
}

/// Every model in the store whose blob is present.
pub fn list() -> Vec<OllamaModel> {
    let root = ollama_dir();
    let manifests = root.join("manifests");
    let mut out = Vec::new();
    // manifests/HOST/NAMESPACE.../NAME/TAG: find files, then split their paths.
    let mut stack = vec![manifests.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let Ok(rel) = p.strip_prefix(&manifests) else {
                continue;
            };
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.len() < 3 {
                continue;
            }
            let r = OllamaRef {
                host: parts[0].clone(),
                path: parts[1..parts.len() - 1].join("/"),
                tag: parts[parts.len() - 1].clone(),
            };
            if let Ok(bytes) = std::fs::read(&p) {
                if let Ok(m) = model_layer(&root, &bytes, &r) {
                    out.push(m);
                }
            }
        }
    }
    out.sort_by_key(|m| m.reference.to_string());
    out
}
