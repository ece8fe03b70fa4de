use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use verity_server::{AppState, ModelInfo, ServerConfig};

/// Serve a model over an OpenAI-compatible HTTP API.
///
/// POST /v1/chat/completions, POST /v1/completions (with echo + logprobs, as
/// lm-evaluation-harness needs), GET /v1/models (with the digest of the loaded weights),
/// POST /tokenize, POST /detokenize, GET /health, GET /metrics. Requests are decoded
/// together (continuous batching) in --parallel slots; prompt prefixes are reused.
///
/// Examples:
///   verity serve
///   verity serve -m ./qwen2.5-0.5b-instruct-q4_k_m.gguf --port 8000 --parallel 8
///   verity serve --api-key-file ~/.config/verity/key --host 0.0.0.0
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
    /// Requests that may wait for a free slot; more get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
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
    verity_engine::init_threads(args.threads);
    let config = ServerConfig {
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
    let load = move || -> anyhow::Result<(Arc<verity_model::Model>, ModelInfo)> {
        let path = verity_store::resolve(spec.as_deref())?;
        let model = Arc::new(verity_model::load(&path)?);
        let digest = verity_audit::root_digest(&path)?;
        let hp = &model.hparams;
        let metadata = json!({
            "architecture": hp.arch.gguf_name(),
            "path": path,
            "n_ctx_train": hp.n_ctx_train,
            "n_vocab": hp.n_vocab,
            "n_layer": hp.n_layer,
            "n_embd": hp.n_embd,
            "weight_bytes": model.weight_bytes(),
        });
        Ok((
            model.clone(),
            ModelInfo {
                id: model.name(),
                digest,
                metadata,
            },
        ))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(verity_server::serve(state, load))
}
