//! `verity serve`: an OpenAI-compatible HTTP API over the engine.
//!
//! Handlers validate requests and turn them into scheduler jobs; the [`scheduler`] thread
//! runs every job in one continuously batched loop and streams events back; handlers turn
//! events into OpenAI's JSON or server-sent events.

mod api;
mod chat;
mod completions;
mod constraint;
mod lazy;
mod lora;
mod lora_routes;
mod metrics;
mod prompt;
mod responses;
mod routes;
mod scheduler;
mod tools;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

pub use lora::{AdapterLoader, NewAdapter};
pub use routes::router;

/// The prompt text `/v1/chat/completions` gives the model for `request` (an OpenAI chat
/// request body: `messages`, `tools`, `tool_choice`) through `template`: the server's own
/// path, for tests and tools that check what a model is shown.
pub fn render_chat_request(
    template: &verity_tokenizer::ChatTemplate,
    request: &serde_json::Value,
) -> Result<String, String> {
    let messages: Vec<api::Message> = serde_json::from_value(request["messages"].clone())
        .map_err(|e| format!("messages: {e}"))?;
    let tools = tools::parse_tools(
        request.get("tools"),
        request.get("tool_choice"),
        request.get("parallel_tool_calls").and_then(|v| v.as_bool()),
    )
    .map_err(|e| e.message)?;
    prompt::render_template(template, &messages, tools.as_ref())
        .map(|(text, _)| text)
        .map_err(|e| e.message)
}

/// How to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// Sequences decoded together (slots).
    pub parallel: usize,
    /// Context per slot, tokens.
    pub n_ctx: usize,
    /// How slots' KV caches store keys and values.
    pub kv_type: verity_engine::KvType,
    /// Requests allowed to wait for a slot before new ones get 429.
    pub max_queue: usize,
    /// Largest request body, bytes.
    pub max_body: usize,
}

/// What `/v1/models` reports about the loaded model.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub id: String,
    /// Other names a request's `model` may give for the base (the `--model` argument, the
    /// store's names for it); any other name must be an adapter's.
    pub aliases: Vec<String>,
    /// Identity of the weights actually loaded (see `verity hash`).
    pub digest: String,
    pub metadata: serde_json::Value,
}

/// Shared by all handlers. The model arrives after startup; until then `/health` is 503.
pub struct AppState {
    pub config: ServerConfig,
    pub loaded: OnceLock<Loaded>,
    pub metrics: Arc<metrics::Metrics>,
    pub started: std::time::Instant,
    /// Responses kept for `previous_response_id`.
    pub responses: responses::ResponseStore,
}

pub struct Loaded {
    pub model: Arc<verity_model::Model>,
    pub info: ModelInfo,
    scheduler: scheduler::Scheduler,
    adapters: Arc<lora::Registry>,
    /// Compiles grammars for constrained decoding; built on first use (`constraint.rs`).
    constraints: OnceLock<Result<Arc<verity_constraint::ConstraintFactory>, String>>,
    /// The vocabulary's control-token ids when it spells harmony's markers as tokens;
    /// computed on the first harmony tool request.
    harmony_control: OnceLock<Option<Vec<u32>>>,
}

impl Loaded {
    /// [`verity_tokenizer::harmony::control_ids`] of the model's vocabulary, computed once.
    pub(crate) fn harmony_control_ids(&self) -> Option<&[u32]> {
        self.harmony_control
            .get_or_init(|| verity_tokenizer::harmony::control_ids(&self.model.tokenizer))
            .as_deref()
    }
}

/// What the loader hands the server: the base, its adapters, and how to load more.
pub struct Loadout {
    pub model: Arc<verity_model::Model>,
    pub info: ModelInfo,
    /// Adapters to serve from the start.
    pub adapters: Vec<NewAdapter>,
    /// Loads adapters named by `POST /v1/load_lora_adapter`; without one that endpoint
    /// refuses.
    pub loader: Option<AdapterLoader>,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(AppState {
            config,
            loaded: OnceLock::new(),
            metrics: Arc::new(metrics::Metrics::new()),
            started: std::time::Instant::now(),
            responses: Default::default(),
        })
    }

    /// Install the loaded model and its adapters and start the scheduler. Fails (serving
    /// nothing) if two adapters share a name or one takes a base model's name.
    pub fn set_model(&self, loadout: Loadout) -> anyhow::Result<()> {
        let Loadout {
            model,
            mut info,
            adapters,
            loader,
        } = loadout;
        let mut base_names = vec![info.id.clone()];
        base_names.extend(info.aliases.iter().cloned());
        let registry = Arc::new(lora::Registry::new(
            loader,
            base_names,
            self.metrics.clone(),
        ));
        for a in adapters {
            let name = a.name.clone();
            registry
                .insert(a)
                .map_err(|e| anyhow::anyhow!("--lora {name}: {e}"))?;
        }
        let n_ctx = if self.config.n_ctx == 0 {
            model.hparams.n_ctx_train.min(4096)
        } else {
            self.config.n_ctx
        };
        // What a client needs to size and start its prompts (lm-eval's `max_length` and
        // `prefix_token_id`): the context each request actually gets, and the special tokens.
        if let Some(meta) = info.metadata.as_object_mut() {
            meta.insert("n_ctx".into(), n_ctx.into());
            meta.insert("bos_token_id".into(), model.tokenizer.bos_id().into());
            meta.insert("eos_token_id".into(), model.tokenizer.eos_id().into());
        }
        let scheduler = scheduler::Scheduler::start(
            model.clone(),
            self.config.parallel,
            (n_ctx, self.config.kv_type),
            self.config.max_queue,
            self.metrics.clone(),
            registry.clone(),
        );
        let _ = self.loaded.set(Loaded {
            model,
            info,
            scheduler,
            adapters: registry,
            constraints: OnceLock::new(),
            harmony_control: OnceLock::new(),
        });
        Ok(())
    }

    /// Stop taking new generation requests (for shutdown).
    pub fn drain(&self) {
        if let Some(l) = self.loaded.get() {
            l.scheduler.drain();
        }
    }
}

/// Serve until SIGINT/SIGTERM; `load` runs on a blocking thread after the port is bound.
pub async fn serve<F>(state: Arc<AppState>, load: F) -> anyhow::Result<()>
where
    F: FnOnce() -> anyhow::Result<Loadout> + Send + 'static,
{
    let addr: SocketAddr = format!("{}:{}", state.config.host, state.config.port)
        .parse()
        .map_err(|e| anyhow::anyhow!("bad --host/--port: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    eprintln!(
        "verity: listening on http://{local} (loading the model; /health answers 503 until ready)"
    );

    let loader_state = state.clone();
    tokio::task::spawn_blocking(move || match load() {
        Ok(loadout) => {
            let info = &loadout.info;
            let key = if loader_state.config.api_key.is_some() {
                " -H \"Authorization: Bearer $KEY\""
            } else {
                ""
            };
            for a in &loadout.adapters {
                eprintln!(
                    "verity: adapter {} = {} (digest {})",
                    a.name,
                    a.path.display(),
                    a.digest
                );
            }
            let (id, digest) = (info.id.clone(), info.digest.clone());
            if let Err(e) = loader_state.set_model(loadout) {
                eprintln!("verity: error: {e:#}");
                std::process::exit(1);
            }
            eprintln!("verity: ready, serving {id} (digest {digest})");
            eprintln!(
                "verity: try  curl http://{local}/v1/chat/completions{key} -H 'Content-Type: application/json' \\\n        -d '{{\"messages\":[{{\"role\":\"user\",\"content\":\"Hello!\"}}]}}'"
            );
        }
        Err(e) => {
            // Nothing can be served without the model.
            eprintln!("verity: error: {e:#}");
            std::process::exit(1);
        }
    });

    let app = router(state.clone());
    let shutdown_state = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            eprintln!("verity: shutting down: finishing running requests, refusing new ones");
            shutdown_state.drain();
        })
        .await
        .map_err(|e| anyhow::anyhow!("server error: {e}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
