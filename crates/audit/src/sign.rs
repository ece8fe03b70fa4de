//! OMS v1.0 signatures with ECDSA P-256 keys, as `model_signing sign key` writes them:
//! a Sigstore bundle (v0.3 JSON) holding a DSSE envelope whose payload is an in-toto
//! statement; the statement's subject is the model's root digest and its predicate lists
//! every file's digest. The public key is identified in the bundle by a hint: the hex
//! SHA-256 of its PEM (SubjectPublicKeyInfo) text.

use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature};
pub use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::hash::{hash_model, root_of, FileDigest, HashOptions, Manifest};

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";

/// Largest signature file we read (real ones are a few kilobytes per thousand files).
const MAX_BUNDLE_BYTES: u64 = 256 << 20;

/// A new P-256 key pair: (private key as PKCS#8 PEM, public key as SPKI PEM).
pub fn keygen() -> anyhow::Result<(String, String)> {
    let key = SigningKey::random(&mut rand_core::OsRng);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("encoding the private key: {e}"))?;
    let public = public_pem(key.verifying_key())?;
    Ok((private.to_string(), public))
}

fn public_pem(key: &VerifyingKey) -> anyhow::Result<String> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow!("encoding the public key: {e}"))
}

/// The key hint `model-signing` records: hex SHA-256 of the public key's PEM text.
pub fn key_hint(key: &VerifyingKey) -> anyhow::Result<String> {
    Ok(crate::hash::hex(&Sha256::digest(
        public_pem(key)?.as_bytes(),
    )))
}

/// Read a P-256 private key: PKCS#8 ("PRIVATE KEY") or SEC1 ("EC PRIVATE KEY") PEM.
pub fn read_private_key(path: &Path) -> anyhow::Result<SigningKey> {
    let pem = read_small(path, 1 << 20)?;
    let pem = String::from_utf8(pem).map_err(|_| anyhow!("{}: not a PEM file", path.display()))?;
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        bail!(
            "{}: encrypted private keys are not supported; decrypt it with `openssl pkcs8 -in KEY -out plain.pem`",
            path.display()
        );
    }
    if let Ok(k) = SigningKey::from_pkcs8_pem(&pem) {
        return Ok(k);
    }
    if let Ok(k) = p256::SecretKey::from_sec1_pem(&pem) {
        return Ok(k.into());
    }
    bail!(
        "{}: not a P-256 (prime256v1) private key in PEM (PKCS#8 or SEC1)",
        path.display()
    )
}

/// Read a P-256 public key (SubjectPublicKeyInfo PEM, "PUBLIC KEY").
pub fn read_public_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    let pem = read_small(path, 1 << 20)?;
    let pem = String::from_utf8(pem).map_err(|_| anyhow!("{}: not a PEM file", path.display()))?;
    parse_public_key(&pem).with_context(|| path.display().to_string())
}

/// Parse a P-256 public key from SubjectPublicKeyInfo PEM text.
pub fn parse_public_key(pem: &str) -> anyhow::Result<VerifyingKey> {
    VerifyingKey::from_public_key_pem(pem).map_err(|_| {
        if pem.contains("PRIVATE KEY") {
            anyhow!("is a private key; verify with the public key (`verity keygen` writes both)")
        } else {
            anyhow!("not a P-256 (prime256v1) public key in PEM (SubjectPublicKeyInfo)")
        }
    })
}

fn read_small(path: &Path, max: u64) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| path.display().to_string())?
        .len();
    if len > max {
        bail!("{}: {len} bytes is too large", path.display());
    }
    std::fs::read(path).with_context(|| path.display().to_string())
}

/// DSSE pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// The in-toto statement for a manifest (what is signed).
pub fn statement(m: &Manifest) -> Value {
    let resources: Vec<Value> = m
        .files
        .iter()
        .map(|f| json!({"algorithm": "sha256", "digest": f.sha256, "name": f.name}))
        .collect();
    let mut serialization = json!({
        "hash_type": "sha256",
        "method": "files",
        "allow_symlinks": false,
    });
    if !m.ignore_paths.is_empty() {
        serialization["ignore_paths"] = json!(m.ignore_paths);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": m.model_name, "digest": {"sha256": m.root_digest()}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": serialization, "resources": resources},
    })
}

/// Sign a manifest: the Sigstore bundle JSON to write to `model.sig`.
pub fn sign_manifest(m: &Manifest, key: &SigningKey) -> anyhow::Result<String> {
    let payload = serde_json::to_vec_pretty(&statement(m))?;
    let sig: Signature = key.sign(&pae(PAYLOAD_TYPE, &payload));
    let der: DerSignature = sig.to_der();
    let b64 = base64::engine::general_purpose::STANDARD;
    let bundle = json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_hint(key.verifying_key())?},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": b64.encode(&payload),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": b64.encode(der.as_bytes()), "keyid": ""}],
        },
    });
    Ok(serde_json::to_string_pretty(&bundle)? + "\n")
}

/// The path of `sig` relative to the model directory, when it lies inside it (it is then
/// left out of the manifest, as `model-signing` does).
pub fn signature_ignore_path(model: &Path, sig: &Path) -> Option<String> {
    if !model.is_dir() {
        return None;
    }
    let root = model.canonicalize().ok()?;
    let parent = sig.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new(".")).canonicalize().ok()?;
    let full = parent.join(sig.file_name()?);
    let rel = full.strip_prefix(&root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Hash and sign a model; returns the manifest and the bundle JSON.
pub fn sign_model(
    model: &Path,
    key: &SigningKey,
    sig_path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<(Manifest, String)> {
    let mut opts = HashOptions::default();
    if let Some(rel) = signature_ignore_path(model, sig_path) {
        opts.ignore_paths.push(rel);
    }
    let m = hash_model(model, &opts, progress)?;
    let bundle = sign_manifest(&m, key)?;
    Ok((m, bundle))
}

/// What a valid signature says.
#[derive(Debug, serde::Serialize)]
pub struct Verified {
    pub model_name: String,
    pub root_digest: String,
    pub files: usize,
}

/// Check a bundle's signature with `key` and return the manifest it signs.
pub fn open_bundle(bundle_json: &[u8], key: &VerifyingKey) -> anyhow::Result<Manifest> {
    let b: Value = serde_json::from_slice(bundle_json)
        .map_err(|e| anyhow!("not a signature bundle (JSON: {e})"))?;
    let media = b.get("mediaType").and_then(Value::as_str).unwrap_or("");
    if media != BUNDLE_MEDIA_TYPE {
        bail!("not an OMS v1.0 signature: bundle media type {media:?}, expected {BUNDLE_MEDIA_TYPE:?}");
    }
    if let Some(hint) = b
        .pointer("/verificationMaterial/publicKey/hint")
        .and_then(Value::as_str)
    {
        if hint != key_hint(key)? {
            bail!("the signature was made with a different key (key hint {hint} does not match the given public key)");
        }
    }
    let env = b.get("dsseEnvelope").ok_or_else(|| {
        anyhow!("the bundle holds no DSSE envelope (only key-based signatures are supported)")
    })?;
    let ptype = env.get("payloadType").and_then(Value::as_str).unwrap_or("");
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(env.get("payload").and_then(Value::as_str).unwrap_or(""))
        .map_err(|_| anyhow!("the envelope's payload is not base64"))?;
    let sigs = env
        .get("signatures")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the envelope holds no signatures"))?;
    let sig_b64 = sigs
        .first()
        .and_then(|s| s.get("sig"))
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the envelope holds no signatures"))?;
    let sig_bytes = b64
        .decode(sig_b64)
        .map_err(|_| anyhow!("the signature is not base64"))?;
    let sig = Signature::from_der(&sig_bytes)
        .or_else(|_| Signature::from_slice(&sig_bytes))
        .map_err(|_| anyhow!("the signature is not an ECDSA P-256 signature"))?;
    let msg = pae(ptype, &payload);
    let ok = key.verify(&msg, &sig).is_ok()
        || sig
            .normalize_s()
            .is_some_and(|s| key.verify(&msg, &s).is_ok());
    if !ok {
        bail!("signature verification failed: the statement was not signed by this key, or was altered");
    }
    if ptype != PAYLOAD_TYPE {
        bail!("unexpected DSSE payload type {ptype:?}, expected {PAYLOAD_TYPE:?}");
    }
    parse_statement(&payload)
}

/// The manifest an (already authenticated) in-toto statement describes.
pub fn parse_statement(payload: &[u8]) -> anyhow::Result<Manifest> {
    let s: Value = serde_json::from_slice(payload)
        .map_err(|e| anyhow!("the signed statement is not JSON: {e}"))?;
    let t = s.get("_type").and_then(Value::as_str).unwrap_or("");
    if t != STATEMENT_TYPE {
        bail!("the signed payload is not an in-toto v1 statement ({t:?})");
    }
    let pt = s.get("predicateType").and_then(Value::as_str).unwrap_or("");
    if pt != PREDICATE_TYPE {
        bail!("unsupported predicate type {pt:?} (verity reads {PREDICATE_TYPE})");
    }
    let subjects = s
        .get("subject")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let [subject] = subjects else {
        bail!(
            "the statement must have exactly one subject, has {}",
            subjects.len()
        );
    };
    let model_name = subject
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let root = subject
        .pointer("/digest/sha256")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the statement's subject has no sha256 digest"))?;
    let pred = s
        .get("predicate")
        .ok_or_else(|| anyhow!("the statement has no predicate"))?;
    let ser = pred
        .get("serialization")
        .ok_or_else(|| anyhow!("the predicate has no serialization"))?;
    let method = ser.get("method").and_then(Value::as_str).unwrap_or("");
    let hash_type = ser.get("hash_type").and_then(Value::as_str).unwrap_or("");
    if method != "files" || hash_type != "sha256" {
        bail!("unsupported serialization (method {method:?}, hash {hash_type:?}); verity verifies \"files\" with sha256");
    }
    let ignore_paths: Vec<String> = ser
        .get("ignore_paths")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let resources = pred
        .get("resources")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("the predicate lists no resources"))?;
    let mut files = Vec::with_capacity(resources.len());
    for r in resources {
        let name = r.get("name").and_then(Value::as_str);
        let alg = r.get("algorithm").and_then(Value::as_str);
        let digest = r.get("digest").and_then(Value::as_str);
        let (Some(name), Some("sha256"), Some(digest)) = (name, alg, digest) else {
            bail!("a resource in the statement is malformed");
        };
        files.push(FileDigest {
            name: name.to_string(),
            sha256: digest.to_ascii_lowercase(),
            size: 0,
        });
    }
    // The root digest covers the resources in the order the statement lists them.
    let computed = root_of(files.iter().map(|f| f.sha256.as_str()));
    if computed != root {
        bail!("the statement is inconsistent: its root digest is {root}, its resources hash to {computed}");
    }
    Ok(Manifest::new(model_name, files, ignore_paths))
}

/// How a model on disk differs from a signed manifest.
#[derive(Debug, Default, serde::Serialize)]
pub struct Mismatch {
    pub changed: Vec<String>,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
}

impl Mismatch {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.missing.is_empty() && self.extra.is_empty()
    }
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("'{}'", verity_formats::printable(s)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !self.changed.is_empty() {
            parts.push(format!("content changed: {}", q(&self.changed)));
        }
        if !self.missing.is_empty() {
            parts.push(format!("signed but missing: {}", q(&self.missing)));
        }
        if !self.extra.is_empty() {
            parts.push(format!("not covered by the signature: {}", q(&self.extra)));
        }
        write!(f, "{}", parts.join("; "))
    }
}

pub fn compare(signed: &Manifest, actual: &Manifest) -> Mismatch {
    use std::collections::BTreeMap;
    let s: BTreeMap<&str, &str> = signed
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.sha256.as_str()))
        .collect();
    let a: BTreeMap<&str, &str> = actual
        .files
        .iter()
        .map(|f| (f.name.as_str(), f.sha256.as_str()))
        .collect();
    let mut m = Mismatch::default();
    for (name, d) in &s {
        match a.get(name) {
            None => m.missing.push(name.to_string()),
            Some(ad) if ad != d => m.changed.push(name.to_string()),
            _ => {}
        }
    }
    m.extra = a
        .keys()
        .filter(|n| !s.contains_key(*n))
        .map(|n| n.to_string())
        .collect();
    m
}

/// Verify a model against a signature bundle and a public key.
pub fn verify_model(
    model: &Path,
    sig_path: &Path,
    key: &VerifyingKey,
    progress: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Verified> {
    let bundle = read_small(sig_path, MAX_BUNDLE_BYTES)?;
    let signed = open_bundle(&bundle, key).with_context(|| sig_path.display().to_string())?;
    let mut opts = HashOptions {
        ignore_paths: signed.ignore_paths.clone(),
        ignore_git_paths: true,
    };
    if let Some(rel) = signature_ignore_path(model, sig_path) {
        opts.ignore_paths.push(rel);
    }
    let actual = hash_model(model, &opts, progress)?;
    let mm = compare(&signed, &actual);
    if !mm.is_empty() {
        bail!(
            "{}: the model does not match its signature: {mm}",
            model.display()
        );
    }
    Ok(Verified {
        model_name: signed.model_name.clone(),
        root_digest: signed.root_digest(),
        files: signed.files.len(),
    })
}
