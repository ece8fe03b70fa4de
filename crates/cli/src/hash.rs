//! `verity hash`: the OpenSSF Model Signing v1.0 manifest of a model.

use std::path::Path;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use verity_audit::hash::{hash_model, total_size, HashOptions, Manifest};

/// Print a model's OpenSSF Model Signing (OMS v1.0) manifest: the SHA-256 of every file of
/// the model and the root digest over them. The root digest is the model's identity in
/// verity (the same value `model_signing` puts in its signatures).
///
/// Git metadata (.git, .gitattributes, ...) is left out, as model-signing does.
///
/// Examples:
///   verity hash SmolLM2-135M-Instruct.Q4_1.gguf
///   verity hash ./Llama-3.2-1B-Instruct/ --json
///   verity hash ./model-dir --ignore-paths README.md
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct HashArgs {
    /// A model file or directory (or a model name in the store).
    pub model: String,
    /// Print the manifest (and the in-toto statement a signature would hold) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Paths inside the model directory to leave out (repeatable).
    #[arg(long = "ignore-paths", num_args = 1..)]
    pub ignore_paths: Vec<String>,
}

/// A byte progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(model: &Path, opts: &HashOptions) -> ProgressBar {
    let total = total_size(model, opts).unwrap_or(0);
    let pb = ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = ProgressStyle::with_template(
        "hashing {bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style);
    }
    pb
}

pub fn hash(args: HashArgs) -> anyhow::Result<()> {
    let path = verity_store::resolve(Some(&args.model))?;
    let opts = HashOptions {
        ignore_paths: args.ignore_paths.clone(),
        ..HashOptions::default()
    };
    let pb = progress_bar(&path, &opts);
    let start = std::time::Instant::now();
    let m = hash_model(&path, &opts, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    print_manifest(&m, args.json, secs)
}

fn print_manifest(m: &Manifest, json: bool, secs: f64) -> anyhow::Result<()> {
    if json {
        let v = json!({
            "model_name": m.model_name,
            "root_digest": m.root_digest(),
            "hash_type": "sha256",
            "serialization": "files",
            "files": m.files,
            "ignore_paths": m.ignore_paths,
            "total_bytes": m.total_bytes(),
            "seconds": secs,
            "statement": verity_audit::sign::statement(m),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for f in &m.files {
        println!("{}  {}", f.sha256, verity_formats::printable(&f.name));
    }
    println!(
        "root {}  {}",
        m.root_digest(),
        verity_formats::printable(&m.model_name)
    );
    let mb = m.total_bytes() as f64 / 1e6;
    eprintln!(
        "{} file{}, {:.1} MB in {:.2} s ({:.0} MB/s)",
        m.files.len(),
        if m.files.len() == 1 { "" } else { "s" },
        mb,
        secs,
        mb / secs.max(1e-9)
    );
    Ok(())
}
