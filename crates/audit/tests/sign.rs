//! `hash`, `sign` and `verify` against the reference OMS v1.0 client, `model-signing` 1.1.1
//! (installed by scripts/setup-model-signing): same root digest, signatures verify both ways,
//! and a flipped byte fails verification naming the file.

mod common;

use std::path::Path;
use std::process::Command;

use verity_audit::sign;

/// The root digest model-signing 1.1.1 records for a directory holding only SmolLM2 (ASSETS.md).
const SMOLLM2_ROOT: &str = "16399c58348341f1727030d1fc312a7fb25819f69fcbb6d15fd0687f698a49c4";

fn model_dir(dir: &Path) -> std::path::PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(m.join("sub")).unwrap();
    std::fs::copy(
        common::test_model("qwen2-tiny-Q8_0.gguf"),
        m.join("model.gguf"),
    )
    .unwrap();
    std::fs::write(m.join("config.json"), b"{\"a\": 1}\n").unwrap();
    std::fs::write(m.join("sub/notes.txt"), b"notes").unwrap();
    std::fs::write(m.join("a.b"), b"sorts after a/ in PurePosixPath order").unwrap();
    std::fs::create_dir_all(m.join("a")).unwrap();
    std::fs::write(m.join("a/x"), b"x").unwrap();
    std::fs::create_dir_all(m.join(".git")).unwrap();
    std::fs::write(m.join(".git/HEAD"), b"ignored").unwrap();
    m
}

fn ms(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = Command::new(common::model_signing())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn openssl_keys(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    // A SEC1 key as `openssl ecparam -genkey` writes, made here without openssl: keygen
    // writes PKCS#8, which model-signing reads as well.
    let (sk, pk) = sign::keygen().unwrap();
    let (k, p) = (dir.join("key.pem"), dir.join("pub.pem"));
    std::fs::write(&k, sk).unwrap();
    std::fs::write(&p, pk).unwrap();
    (k, p)
}

#[test]
fn root_digest_of_smollm2_matches_model_signing() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("smollm2");
    std::fs::create_dir(&m).unwrap();
    std::fs::hard_link(common::smollm2(), m.join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .or_else(|_| {
            std::fs::copy(common::smollm2(), m.join("SmolLM2-135M-Instruct.Q4_1.gguf")).map(|_| ())
        })
        .unwrap();
    assert_eq!(verity_audit::root_digest(&m).unwrap(), SMOLLM2_ROOT);
    // A single file has the same root (the digest does not depend on names).
    assert_eq!(
        verity_audit::root_digest(&common::smollm2()).unwrap(),
        SMOLLM2_ROOT
    );
}

#[test]
fn signed_by_model_signing_verifies_in_verity_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let (key, public) = openssl_keys(dir.path());
    let sig = m.join("model.sig");

    // model-signing signs, verity verifies.
    let (ok, out) = ms(&[
        "sign".as_ref(),
        "key".as_ref(),
        m.as_os_str(),
        "--private_key".as_ref(),
        key.as_os_str(),
        "--signature".as_ref(),
        sig.as_os_str(),
    ]);
    assert!(ok, "{out}");
    let vk = sign::read_public_key(&public).unwrap();
    let v = sign::verify_model(&m, &sig, &vk, &|_| {}).unwrap();
    assert_eq!(v.files, 5);
    // The statement's root digest is verity's hash of the directory (signature and .git left out).
    let opts = verity_audit::HashOptions {
        ignore_paths: vec!["model.sig".into()],
        ..Default::default()
    };
    let mine = verity_audit::hash_model(&m, &opts, &|_| {}).unwrap();
    assert_eq!(v.root_digest, mine.root_digest());
    let names: Vec<&str> = mine.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["a/x", "a.b", "config.json", "model.gguf", "sub/notes.txt"]
    );

    // verity signs, model-signing verifies.
    std::fs::remove_file(&sig).unwrap();
    let sk = sign::read_private_key(&key).unwrap();
    let (_, bundle) = sign::sign_model(&m, &sk, &sig, &|_| {}).unwrap();
    std::fs::write(&sig, bundle).unwrap();
    let (ok, out) = ms(&[
        "verify".as_ref(),
        "key".as_ref(),
        m.as_os_str(),
        "--signature".as_ref(),
        sig.as_os_str(),
        "--public_key".as_ref(),
        public.as_os_str(),
    ]);
    assert!(ok, "model-signing rejected verity's signature: {out}");

    // One flipped byte: both reject, verity names the file.
    let f = m.join("model.gguf");
    let mut bytes = std::fs::read(&f).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let err = format!(
        "{:#}",
        sign::verify_model(&m, &sig, &vk, &|_| {}).unwrap_err()
    );
    assert!(
        err.contains("'model.gguf'") && err.contains("content changed"),
        "{err}"
    );
    let (ok, _) = ms(&[
        "verify".as_ref(),
        "key".as_ref(),
        m.as_os_str(),
        "--signature".as_ref(),
        sig.as_os_str(),
        "--public_key".as_ref(),
        public.as_os_str(),
    ]);
    assert!(!ok);
}

#[test]
fn verify_rejects_other_keys_added_files_and_altered_statements() {
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let (key, public) = openssl_keys(dir.path());
    let sig = dir.path().join("model.sig");
    let sk = sign::read_private_key(&key).unwrap();
    let vk = sign::read_public_key(&public).unwrap();
    let (_, bundle) = sign::sign_model(&m, &sk, &sig, &|_| {}).unwrap();
    std::fs::write(&sig, &bundle).unwrap();
    sign::verify_model(&m, &sig, &vk, &|_| {}).unwrap();

    // Another key.
    let (_, other_pub) = sign::keygen().unwrap();
    let op = dir.path().join("other.pem");
    std::fs::write(&op, other_pub).unwrap();
    let other = sign::read_public_key(&op).unwrap();
    let e = format!(
        "{:#}",
        sign::verify_model(&m, &sig, &other, &|_| {}).unwrap_err()
    );
    assert!(e.contains("different key"), "{e}");

    // A statement altered after signing (hint kept): the signature no longer verifies.
    let mut b: serde_json::Value = serde_json::from_str(&bundle).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
        .unwrap();
    let forged = String::from_utf8(payload)
        .unwrap()
        .replace("config.json", "config.jsoN");
    b["dsseEnvelope"]["payload"] = b64.encode(forged).into();
    let fs = dir.path().join("forged.sig");
    std::fs::write(&fs, b.to_string()).unwrap();
    let e = format!(
        "{:#}",
        sign::verify_model(&m, &fs, &vk, &|_| {}).unwrap_err()
    );
    assert!(e.contains("signature verification failed"), "{e}");

    // A file added after signing.
    std::fs::write(m.join("extra.bin"), b"x").unwrap();
    let e = format!(
        "{:#}",
        sign::verify_model(&m, &sig, &vk, &|_| {}).unwrap_err()
    );
    assert!(
        e.contains("not covered by the signature: 'extra.bin'"),
        "{e}"
    );
    std::fs::remove_file(m.join("extra.bin")).unwrap();
    // A file removed.
    std::fs::remove_file(m.join("a/x")).unwrap();
    let e = format!(
        "{:#}",
        sign::verify_model(&m, &sig, &vk, &|_| {}).unwrap_err()
    );
    assert!(e.contains("signed but missing: 'a/x'"), "{e}");
}

#[test]
fn key_hint_matches_model_signing() {
    // model-signing's hint is the SHA-256 of the public key PEM as `cryptography` writes it.
    let dir = tempfile::tempdir().unwrap();
    let m = model_dir(dir.path());
    let (key, _) = openssl_keys(dir.path());
    let sig = dir.path().join("py.sig");
    let (ok, out) = ms(&[
        "sign".as_ref(),
        "key".as_ref(),
        m.as_os_str(),
        "--private_key".as_ref(),
        key.as_os_str(),
        "--signature".as_ref(),
        sig.as_os_str(),
    ]);
    assert!(ok, "{out}");
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&sig).unwrap()).unwrap();
    let sk = sign::read_private_key(&key).unwrap();
    assert_eq!(
        b["verificationMaterial"]["publicKey"]["hint"]
            .as_str()
            .unwrap(),
        sign::key_hint(sk.verifying_key()).unwrap()
    );
}
