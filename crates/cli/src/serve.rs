use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use verity_model::{Adapter, Model};
use verity_server::{AdapterLoader, AppState, Loadout, ModelInfo, NewAdapter, ServerConfig};

use crate::common::{split_scale, CacheType};

/// Serve a model over an OpenAI-compatible HTTP API.
///
/// POST /v1/chat/completions, POST /v1/completions (with echo + logprobs, as
/// lm-evaluation-harness needs), GET /v1/models (with the digest of the loaded weights),
/// POST /tokenize, POST /detokenize, GET /health, GET /metrics. Requests are decoded
/// together (continuous batching) in --parallel slots; prompt prefixes are reused.
///
/// LoRA adapters (--lora NAME=PATH, or POST /v1/load_lora_adapter and
/// /v1/unload_lora_adapter at run time) are selected by a request's "model" field;
/// requests on different adapters and on the base are decoded in the same batch.
///
/// Examples:
///   verity serve
///   verity serve -m ./qwen2.5-0.5b-instruct-q4_k_m.gguf --port 8000 --parallel 8
///   verity serve --api-key-file ~/.config/verity/key --host 0.0.0.0
///   verity serve --lora sql=./sql-lora --lora chat=./chat-lora.gguf:0.5
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    /// A GGUF file, a Hugging Face directory, or a model name in the store (default: SmolLM2-135M-Instruct).
    #[arg(short, long)]
    pub model: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require this key as `Authorization: Bearer KEY`.
    #[arg(long, conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the required key from a file (keeps it out of the process list).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Requests decoded together.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Context per request in tokens (default: the model's, at most 4096).
    #[arg(long, default_value_t = 0)]
    pub ctx: usize,
    /// How the KV cache stores keys and values: f16 (llama.cpp's default and numerics)
    /// or f32 (twice the memory; attention without rounding, matching float references).
    #[arg(long, value_enum, default_value_t = CacheType::F16)]
    pub cache_type: CacheType,
    /// Requests that may wait for a free slot; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Serve a LoRA adapter (a PEFT directory or a GGUF LoRA file) under NAME, which
    /// requests give as "model"; SCALE multiplies its alpha/r scale (default 1). Repeatable.
    #[arg(long = "lora", value_name = "NAME=PATH[:SCALE]")]
    pub lora: Vec<String>,
    /// Enable POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's run-time
    /// adapter API). Off by default: a client could name any path on this machine.
    #[arg(long)]
    pub allow_lora_loading: bool,
}

/// `NAME=PATH[:SCALE]`.
fn parse_lora(spec: &str) -> anyhow::Result<(String, PathBuf, f32)> {
    let Some((name, rest)) = spec.split_once('=') else {
        anyhow::bail!(
            "--lora {spec}: expected NAME=PATH[:SCALE] (the name requests give as \"model\")"
        );
    };
    anyhow::ensure!(
        !name.is_empty() && !rest.is_empty(),
        "--lora {spec}: expected NAME=PATH[:SCALE]"
    );
    let (path, scale) = split_scale(rest)?;
    Ok((name.to_string(), path, scale))
}

/// Names a request's "model" may give for the base besides its id: what --model said,
/// the file's name with and without extension, and the store's names for a known model.
fn base_aliases(spec: Option<&str>, path: &Path) -> Vec<String> {
    let mut names: Vec<String> = spec.map(str::to_string).into_iter().collect();
    if let Some(stem) = path.file_stem() {
        names.push(stem.to_string_lossy().into_owned());
    }
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    for known in verity_store::KNOWN_MODELS {
        if file.as_deref() == Some(known.file) {
            names.extend(known.names.iter().map(|n| n.to_string()));
        }
    }
    names.dedup();
    names
}

/// Reads adapters for the served model and computes their root digest (what
/// `/v1/models` reports, as for the base).
fn adapter_loader(model: Arc<Model>) -> AdapterLoader {
    Arc::new(move |path: &Path| {
        let adapter = Adapter::load(path, &model).map_err(|e| e.to_string())?;
        let digest =
            verity_audit::root_digest(path).map_err(|e| format!("{}: {e:#}", path.display()))?;
        Ok((adapter, digest))
    })
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(k), _) => Some(k.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    if api_key.as_deref() == Some("") {
        anyhow::bail!("the API key is empty");
    }
    if args.parallel == 0 || args.parallel > 256 {
        anyhow::bail!("--parallel must be between 1 and 256");
    }
    // Syntax errors fail now, before the port is bound; files are read with the model.
    let loras = args
        .lora
        .iter()
        .map(|s| parse_lora(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    verity_engine::init_threads(args.threads);
    let config = ServerConfig {
        kv_type: args.cache_type.kv_type(),
        host: args.host.clone(),
        port: args.port,
        api_key,
        parallel: args.parallel,
        n_ctx: args.ctx,
        max_queue: args.max_queue,
        max_body: 4 << 20,
    };
    let state = AppState::new(config);
    let spec = args.model.clone();
    let allow_loading = args.allow_lora_loading;
    let load = move || -> anyhow::Result<Loadout> {
        let path = verity_store::resolve(spec.as_deref())?;
        let model = Arc::new(verity_model::load(&path)?);
        let digest = verity_audit::root_digest(&path)?;
        let hp = &model.hparams;
        let metadata = json!({
            "architecture": hp.arch.gguf_name(),
            // The file's name only: clients never see the server's paths.
            "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
            "n_ctx_train": hp.n_ctx_train,
            "n_vocab": hp.n_vocab,
            "n_layer": hp.n_layer,
            "n_embd": hp.n_embd,
            "weight_bytes": model.weight_bytes(),
        });
        let loader = adapter_loader(model.clone());
        let mut adapters = Vec::new();
        for (name, lora_path, scale) in loras {
            let (adapter, digest) =
                loader(&lora_path).map_err(|e| anyhow::anyhow!("--lora {name}: {e}"))?;
            adapters.push(NewAdapter {
                name,
                path: lora_path,
                digest,
                adapter: Arc::new(adapter),
                scale,
            });
        }
        Ok(Loadout {
            info: ModelInfo {
                id: model.name(),
                aliases: base_aliases(spec.as_deref(), &path),
                digest,
                metadata,
            },
            model,
            adapters,
            // Run-time loading reads any path a client names on this machine: opt in.
            loader: allow_loading.then_some(loader),
        })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(verity_server::serve(state, load))
}
