//! `verity keygen`, `verity sign`, `verity verify`: OpenSSF Model Signing v1.0 signatures.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::json;
use verity_audit::hash::HashOptions;
use verity_audit::sign;

use crate::hash::progress_bar;

/// Make an ECDSA P-256 key pair for signing models.
///
/// Writes the private key (PKCS#8 PEM, mode 0600) and the public key (SubjectPublicKeyInfo
/// PEM). Keys made with `openssl ecparam -name prime256v1 -genkey` work as well.
///
/// Examples:
///   verity keygen                          # writes key.pem and key.pub.pem
///   verity keygen --out signing/release.pem
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes beside it as NAME.pub.pem.
    #[arg(long, default_value = "key.pem")]
    pub out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Sign a model: write an OMS v1.0 signature (a Sigstore bundle holding an in-toto statement
/// in a DSSE envelope) over the SHA-256 of every file of the model, with an ECDSA P-256 key.
/// `model_signing verify key` accepts it.
///
/// A signature written inside the model directory is left out of what it signs.
///
/// Examples:
///   verity sign ./my-model/ --key key.pem --signature ./my-model/model.sig
///   verity sign model.gguf --key key.pem            # writes model.sig
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct SignArgs {
    /// A model file or directory (or a model name in the store).
    pub model: String,
    /// Private key, PEM (PKCS#8 or SEC1 "EC PRIVATE KEY"), P-256.
    #[arg(long)]
    pub key: PathBuf,
    /// Where to write the signature.
    #[arg(long, default_value = "model.sig")]
    pub signature: PathBuf,
}

/// Verify a model against an OMS v1.0 signature and a public key: the signature must be
/// valid for the key, and every file must have the digest it signs, with none missing or
/// added. Names the files that differ. Signatures made by `model_signing sign key` verify.
///
/// Examples:
///   verity verify ./my-model/ --signature ./my-model/model.sig --key key.pub.pem
///   verity verify model.gguf --signature model.sig --key pub.pem --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// A model file or directory (or a model name in the store).
    pub model: String,
    /// The signature (Sigstore bundle JSON).
    #[arg(long, default_value = "model.sig")]
    pub signature: PathBuf,
    /// Public key, PEM (SubjectPublicKeyInfo), P-256.
    #[arg(long)]
    pub key: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let private = &args.out;
    let stem = private
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    let public = private.with_file_name(format!("{stem}.pub.pem"));
    for p in [private, &public] {
        if p.exists() && !args.force {
            bail!("{}: exists; use --force to replace it", p.display());
        }
    }
    let (sk, pk) = sign::keygen()?;
    write_private(private, sk.as_bytes())?;
    std::fs::write(&public, pk).with_context(|| public.display().to_string())?;
    println!("private key: {}", private.display());
    println!("public key:  {}", public.display());
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path).with_context(|| path.display().to_string())?;
    f.write_all(bytes)
        .with_context(|| path.display().to_string())
}

pub fn sign(args: SignArgs) -> anyhow::Result<()> {
    let path = verity_store::resolve(Some(&args.model))?;
    let key = sign::read_private_key(&args.key)?;
    let mut opts = HashOptions::default();
    if let Some(rel) = sign::signature_ignore_path(&path, &args.signature) {
        opts.ignore_paths.push(rel);
    }
    let pb = progress_bar(&path, &opts);
    let (m, bundle) = sign::sign_model(&path, &key, &args.signature, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    std::fs::write(&args.signature, bundle)
        .with_context(|| args.signature.display().to_string())?;
    println!(
        "signed {} ({} file{}, root digest {}) -> {}",
        path.display(),
        m.files.len(),
        if m.files.len() == 1 { "" } else { "s" },
        m.root_digest(),
        args.signature.display()
    );
    Ok(())
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let path = verity_store::resolve(Some(&args.model))?;
    let key = sign::read_public_key(&args.key)?;
    let mut opts = HashOptions::default();
    if let Some(rel) = sign::signature_ignore_path(&path, &args.signature) {
        opts.ignore_paths.push(rel);
    }
    let pb = progress_bar(&path, &opts);
    let result = sign::verify_model(&path, &args.signature, &key, &|n| pb.inc(n));
    pb.finish_and_clear();
    let v = result?;
    if args.json {
        let out = json!({
            "verified": true,
            "model": path.display().to_string(),
            "model_name": v.model_name,
            "root_digest": v.root_digest,
            "files": v.files,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "verified: {} ({} file{}, root digest {}) was signed by this key and is unchanged",
            path.display(),
            v.files,
            if v.files == 1 { "" } else { "s" },
            v.root_digest
        );
    }
    Ok(())
}
