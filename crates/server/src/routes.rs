//! The router, authentication, and the small routes (models, tokenize, health, metrics);
//! what the endpoint modules share.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::*;
use crate::lora_routes;
use crate::scheduler::{Event, JobSpec, SubmitError, TokenLogprob};
use crate::{AppState, Loaded};

pub(crate) type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body;
    Router::new()
        .route("/v1/chat/completions", post(crate::chat::chat))
        .route("/v1/completions", post(crate::completions::completions))
        .route("/v1/responses", post(crate::responses::create))
        .route(
            "/v1/responses/{id}",
            get(crate::responses::retrieve).delete(crate::responses::delete),
        )
        .route("/v1/models", get(models))
        .route("/v1/load_lora_adapter", post(lora_routes::load))
        .route("/v1/unload_lora_adapter", post(lora_routes::unload))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth_and_count,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such endpoint; see /v1/chat/completions, /v1/completions, /v1/models",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed for this endpoint",
    )
}

/// Bearer-token check (constant time) and request counting.
async fn auth_and_count(State(state): St, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let endpoint = match path.as_str() {
        "/v1/chat/completions"
        | "/v1/completions"
        | "/v1/models"
        | "/v1/load_lora_adapter"
        | "/v1/unload_lora_adapter"
        | "/tokenize"
        | "/detokenize"
        | "/health"
        | "/metrics" => path.clone(),
        _ => "other".to_string(),
    };
    let response = if path != "/health" && !authorized(&state, &req) {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or incorrect API key: send it as 'Authorization: Bearer KEY'".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
        .into_response()
    } else {
        next.run(req).await
    };
    state
        .metrics
        .count_request(&endpoint, response.status().as_u16());
    response
}

fn authorized(state: &AppState, req: &Request) -> bool {
    let Some(key) = &state.config.api_key else {
        return true;
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    given.as_bytes().ct_eq(key.as_bytes()).into()
}

pub(crate) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body is larger than {limit} bytes"),
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {e}"), None)
        }
    })
}

pub(crate) fn loaded(state: &AppState) -> Result<&Loaded, ApiError> {
    state.loaded.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is still loading; retry shortly",
        )
    })
}

async fn health(State(state): St) -> Response {
    match state.loaded.get() {
        Some(_) => Json(json!({ "status": "ok" })).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): St) -> Response {
    let loaded = state.loaded.get();
    let adapters_loaded = loaded.map_or(0, |l| l.adapters.len());
    let scrape = crate::metrics::Scrape {
        waiting: loaded.map_or(0, |l| l.scheduler.queue_depth()),
        adapters_loaded,
        model: loaded.map(|l| l.info.id.as_str()),
        lora: loaded.is_some_and(|l| adapters_loaded > 0 || l.adapters.loader().is_some()),
    };
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(&scrape),
    )
        .into_response()
}

async fn models(State(state): St) -> Result<Json<Value>, ApiError> {
    let l = loaded(&state)?;
    let created = state.started.elapsed().as_secs();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() - created)
        .unwrap_or(0);
    let mut data = vec![json!({
        "id": l.info.id,
        "object": "model",
        "created": created,
        "owned_by": "verity",
        "root_digest": l.info.digest,
        "meta": l.info.metadata,
    })];
    data.extend(lora_routes::model_entries(l, created));
    Ok(Json(json!({ "object": "list", "data": data })))
}

async fn tokenize(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let l = loaded(&state)?;
    let v: Value = parse_body(&bytes)?;
    let content = v
        .get("content")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("'content' must be a string", Some("content")))?;
    let add_special = v
        .get("add_special")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tokens = l
        .model
        .tokenizer
        .encode(content, add_special)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("content")))?;
    Ok(Json(json!({ "tokens": tokens })))
}

async fn detokenize(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let l = loaded(&state)?;
    let v: Value = parse_body(&bytes)?;
    let ids = token_ids(v.get("tokens").unwrap_or(&Value::Null), l, "tokens")?;
    let content = l
        .model
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({ "content": content })))
}

pub(crate) fn token_ids(v: &Value, l: &Loaded, param: &str) -> Result<Vec<u32>, ApiError> {
    let n_vocab = l.model.hparams.n_vocab as i64;
    let arr = v.as_array().ok_or_else(|| {
        ApiError::bad_request(
            format!("'{param}' must be a list of token ids"),
            Some(param),
        )
    })?;
    arr.iter()
        .map(|t| match t.as_i64() {
            Some(id) if (0..n_vocab).contains(&id) => Ok(id as u32),
            _ => Err(ApiError::bad_request(
                format!("token ids must be integers in 0..{n_vocab}, got {t}"),
                Some(param),
            )),
        })
        .collect()
}

pub(crate) fn check_ids(ids: &[i64], l: &Loaded) -> Result<Vec<u32>, ApiError> {
    let n_vocab = l.model.hparams.n_vocab as i64;
    ids.iter()
        .map(|&id| {
            if (0..n_vocab).contains(&id) {
                Ok(id as u32)
            } else {
                Err(ApiError::bad_request(
                    format!("token id {id} is outside the vocabulary (0..{n_vocab})"),
                    Some("prompt"),
                ))
            }
        })
        .collect()
}

/// Refuse prompts that leave no room to answer.
pub(crate) fn check_context(prompt: &[u32], l: &Loaded, param: &str) -> Result<(), ApiError> {
    let n_ctx = l.scheduler.n_ctx;
    if prompt.is_empty() {
        return Err(ApiError::bad_request("the prompt is empty", Some(param)));
    }
    if prompt.len() >= n_ctx {
        return Err(ApiError::bad_request(
            format!(
                "this model's context holds {n_ctx} tokens and the prompt has {}; shorten the prompt (or start the server with a larger --ctx)",
                prompt.len()
            ),
            Some(param),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

pub(crate) fn submit(l: &Loaded, spec: JobSpec) -> Result<UnboundedReceiver<Event>, ApiError> {
    let n_vocab = l.model.hparams.n_vocab;
    if let Some((id, _)) = spec
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= n_vocab)
    {
        return Err(ApiError::bad_request(
            format!("logit_bias names token {id}, but the vocabulary has {n_vocab} tokens"),
            Some("logit_bias"),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    l.scheduler.submit(spec, tx).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server is busy: too many requests are waiting; retry shortly",
        ),
        SubmitError::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ),
    })?;
    Ok(rx)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn new_id(prefix: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{:x}{:04x}",
        t & 0xffff_ffff_ffff,
        NEXT_ID.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything one choice produced.
#[derive(Default)]
pub(crate) struct Collected {
    pub(crate) text: String,
    pub(crate) logprobs: Vec<TokenLogprob>,
    pub(crate) prompt_logprobs: Vec<TokenLogprob>,
    pub(crate) finish_reason: &'static str,
    pub(crate) prompt_tokens: usize,
    pub(crate) cached_tokens: usize,
    pub(crate) completion_tokens: usize,
}

pub(crate) async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::PromptLogprobs(lp) => c.prompt_logprobs = lp,
            Event::Token { text, logprob } => {
                c.text.push_str(&text);
                c.logprobs.extend(logprob);
            }
            Event::Done {
                finish_reason,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                c.finish_reason = finish_reason;
                c.prompt_tokens = prompt_tokens;
                c.cached_tokens = cached_tokens;
                c.completion_tokens = completion_tokens;
                return Ok(c);
            }
            Event::Error(e) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    e,
                ))
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "generation ended unexpectedly",
    ))
}

pub(crate) fn usage(prompt_tokens: usize, cached: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

pub(crate) fn piece(l: &Loaded, id: u32) -> String {
    l.model.tokenizer.decode(&[id], false).unwrap_or_default()
}

pub(crate) type BoxedEvents =
    std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>;
pub(crate) type SseStream = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;

/// Events of all choices, tagged with their index, as one stream.
pub(crate) fn merged(
    receivers: Vec<UnboundedReceiver<Event>>,
) -> impl Stream<Item = (usize, Event)> + Send {
    stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .map(move |e| (i, e))
            .boxed()
    }))
}

pub(crate) fn sse_json(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}
