//! HTTP routes: OpenAI's chat and legacy completions, models, tokenize, health, metrics.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc::UnboundedReceiver;
use verity_tokenizer::ChatMessage;

use crate::api::*;
use crate::lora_routes::{self, select_model};
use crate::scheduler::{Event, JobSpec, SubmitError, TokenLogprob};
use crate::{AppState, Loaded};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.max_body;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
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
    let depth = state
        .loaded
        .get()
        .map(|l| l.scheduler.queue_depth())
        .unwrap_or(0);
    let adapters = state.loaded.get().map(|l| l.adapters.len()).unwrap_or(0);
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(depth, adapters),
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

fn token_ids(v: &Value, l: &Loaded, param: &str) -> Result<Vec<u32>, ApiError> {
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

fn check_ids(ids: &[i64], l: &Loaded) -> Result<Vec<u32>, ApiError> {
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
fn check_context(prompt: &[u32], l: &Loaded, param: &str) -> Result<(), ApiError> {
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

fn submit(l: &Loaded, spec: JobSpec) -> Result<UnboundedReceiver<Event>, ApiError> {
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

fn new_id(prefix: &str) -> String {
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

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Everything one choice produced.
#[derive(Default)]
struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    prompt_logprobs: Vec<TokenLogprob>,
    finish_reason: &'static str,
    prompt_tokens: usize,
    cached_tokens: usize,
    completion_tokens: usize,
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
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

fn usage(prompt_tokens: usize, cached: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

fn piece(l: &Loaded, id: u32) -> String {
    l.model.tokenizer.decode(&[id], false).unwrap_or_default()
}

// ------------------------------------------------------------------ chat

async fn chat(State(state): St, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let req: ChatRequest = parse_request(&bytes, CHAT_FIELDS)?;
    let l = loaded(&state)?;
    let (model_id, adapter) = select_model(l, req.common.model.as_deref())?;
    if req.messages.is_empty() {
        return Err(ApiError::bad_request(
            "'messages' must contain at least one message",
            Some("messages"),
        ));
    }
    if req
        .tools
        .as_ref()
        .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
    {
        return Err(ApiError::bad_request(
            "tools are not supported by this server",
            Some("tools"),
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(ApiError::bad_request(
                    format!("unknown message role '{shown}'"),
                    Some("messages"),
                ));
            }
        };
        messages.push(ChatMessage {
            role: role.into(),
            content: m.text()?,
        });
    }
    let settings = req.common.settings(req.max_completion_tokens)?;
    let top_logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                "top_logprobs requires logprobs: true",
                Some("top_logprobs"),
            ))
        }
        (true, None) => Some(0),
        (true, Some(k)) if (0..=20).contains(&k) => Some(k as usize),
        (true, Some(k)) => {
            return Err(ApiError::bad_request(
                format!("top_logprobs must be between 0 and 20, got {k}"),
                Some("top_logprobs"),
            ))
        }
    };
    let json_mode = match req.response_format.as_ref().map(|r| r.kind.as_str()) {
        None | Some("text") => false,
        Some("json_object") => true,
        Some(other) => {
            let shown: String = other.chars().take(32).collect();
            return Err(ApiError::bad_request(
                format!(
                    "response_format type '{shown}' is not supported (use 'text' or 'json_object')"
                ),
                Some("response_format"),
            ));
        }
    };

    let tok = &l.model.tokenizer;
    let template = tok
        .chat()
        .ok_or_else(|| {
            ApiError::bad_request(
                "this model has no chat template; use /v1/completions",
                Some("messages"),
            )
        })?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                format!("the model's chat template is invalid: {e}"),
            )
        })?;
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::bad_request(format!("chat template: {e}"), Some("messages")))?;
    let has_bos = tok
        .bos_token_str()
        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    let prompt = tok
        .encode(&text, !has_bos)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    check_context(&prompt, l, "messages")?;
    let room = l.scheduler.n_ctx - prompt.len();
    let max_tokens = settings.max_tokens.unwrap_or(room).min(room);

    let mut receivers = Vec::new();
    for i in 0..settings.n {
        let mut sampling = settings.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
        let spec = JobSpec {
            prompt: prompt.clone(),
            max_tokens,
            sampling,
            stop: settings.stop.clone(),
            logprobs: top_logprobs,
            prompt_logprobs: false,
            json_mode,
            ignore_eos: req.common.ignore_eos,
            adapter: adapter.clone(),
        };
        receivers.push(submit(l, spec)?);
    }
    lora_routes::count_request(adapter.as_deref());
    let id = new_id("chatcmpl");
    if req.common.stream {
        let include_usage = req
            .common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(chat_stream(
            l.model.clone(),
            id,
            model_id,
            receivers,
            include_usage,
            top_logprobs.is_some(),
        )
        .into_response());
    }
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut cached, mut completion) = (0, 0, 0);
    for (i, rx) in receivers.into_iter().enumerate() {
        let c = collect(rx).await?;
        prompt_tokens = c.prompt_tokens;
        cached = cached.max(c.cached_tokens);
        completion += c.completion_tokens;
        let logprobs = top_logprobs.map(|_| json!({ "content": c.logprobs.iter().map(|lp| chat_logprob(l, lp)).collect::<Vec<_>>() }));
        choices.push(json!({
            "index": i,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": logprobs,
            "finish_reason": c.finish_reason,
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model_id,
        "choices": choices,
        "usage": usage(prompt_tokens, cached, completion),
    }))
    .into_response())
}

fn chat_logprob(l: &Loaded, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, logprob: f32| {
        let p = piece(l, id);
        json!({ "token": p, "logprob": logprob, "bytes": p.as_bytes() })
    };
    let mut v = entry(lp.token, lp.logprob);
    v["top_logprobs"] = Value::Array(lp.top.iter().map(|&(t, p)| entry(t, p)).collect());
    v
}

type BoxedEvents = std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>;
type SseStream = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;

/// Events of all choices, tagged with their index, as one stream.
fn merged(receivers: Vec<UnboundedReceiver<Event>>) -> impl Stream<Item = (usize, Event)> + Send {
    stream::select_all(receivers.into_iter().enumerate().map(|(i, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .map(move |e| (i, e))
            .boxed()
    }))
}

fn sse_json(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

fn chat_stream(
    model: Arc<verity_model::Model>,
    id: String,
    model_id: String,
    receivers: Vec<UnboundedReceiver<Event>>,
    include_usage: bool,
    with_logprobs: bool,
) -> SseStream {
    let created = now();
    let n = receivers.len();
    let chunk = {
        let (id, model_id) = (id.clone(), model_id.clone());
        move |choices: Value| json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model_id, "choices": choices })
    };
    let first: Vec<Result<SseEvent, Infallible>> = (0..n)
        .map(|i| sse_json(&chunk(json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]))))
        .collect();
    let tokenizer_model = model.clone();
    let totals = Arc::new(std::sync::Mutex::new((0usize, 0usize, 0usize, 0usize)));
    let totals_end = totals.clone();
    let body = merged(receivers).filter_map(move |(i, ev)| {
        let chunk = chunk.clone();
        let totals = totals.clone();
        let model = tokenizer_model.clone();
        async move {
            match ev {
                Event::Token { text, logprob } => {
                    if text.is_empty() && logprob.is_none() {
                        return None;
                    }
                    let lp = match (with_logprobs, logprob) {
                        (true, Some(lp)) => {
                            let p = model.tokenizer.decode(&[lp.token], false).unwrap_or_default();
                            let top: Vec<Value> = lp
                                .top
                                .iter()
                                .map(|&(t, v)| {
                                    let tp = model.tokenizer.decode(&[t], false).unwrap_or_default();
                                    json!({ "token": tp, "logprob": v, "bytes": tp.as_bytes() })
                                })
                                .collect();
                            json!({ "content": [{ "token": p, "logprob": lp.logprob, "bytes": p.as_bytes(), "top_logprobs": top }] })
                        }
                        _ => Value::Null,
                    };
                    Some(sse_json(&chunk(json!([{ "index": i, "delta": { "content": text }, "logprobs": lp, "finish_reason": null }]))))
                }
                Event::Done { finish_reason, prompt_tokens, cached_tokens, completion_tokens } => {
                    let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                    t.0 = prompt_tokens;
                    t.1 = t.1.max(cached_tokens);
                    t.2 += completion_tokens;
                    t.3 += 1;
                    Some(sse_json(&chunk(json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": finish_reason }]))))
                }
                Event::Error(e) => Some(sse_json(&json!({ "error": { "message": e, "type": "server_error", "param": null, "code": null } }))),
                Event::PromptLogprobs(_) => None,
            }
        }
    });
    let tail = stream::once(async move {
        let mut out = Vec::new();
        if include_usage {
            let t = *totals_end.lock().unwrap_or_else(|e| e.into_inner());
            out.push(sse_json(&json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                "choices": [], "usage": usage(t.0, t.1, t.2),
            })));
        }
        out.push(Ok(SseEvent::default().data("[DONE]")));
        stream::iter(out)
    })
    .flatten();
    let s = stream::iter(first).chain(body).chain(tail);
    Sse::new(Box::pin(s) as BoxedEvents).keep_alive(KeepAlive::default())
}

// ------------------------------------------------------------------ legacy completions

async fn completions(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let req: CompletionRequest = parse_request(&bytes, COMPLETION_FIELDS)?;
    let l = loaded(&state)?;
    let (model_id, adapter) = select_model(l, req.common.model.as_deref())?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::bad_request(
            "suffix is not supported",
            Some("suffix"),
        ));
    }
    let settings = req.common.settings(None)?;
    if req.best_of.is_some_and(|b| b != settings.n as i64) && req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::bad_request(
            "best_of is not supported",
            Some("best_of"),
        ));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("logprobs must be between 0 and 20, got {k}"),
                Some("logprobs"),
            ))
        }
    };
    let tok = &l.model.tokenizer;
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Text(s) => vec![tok
            .encode(s, true)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?],
        Prompt::Texts(v) => v
            .iter()
            .map(|s| {
                tok.encode(s, true)
                    .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))
            })
            .collect::<Result<_, _>>()?,
        Prompt::Tokens(ids) => vec![check_ids(ids, l)?],
        Prompt::TokenLists(lists) => lists
            .iter()
            .map(|ids| check_ids(ids, l))
            .collect::<Result<_, _>>()?,
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request(
            "the prompt list is empty",
            Some("prompt"),
        ));
    }
    if prompts.len() * settings.n > 64 {
        return Err(ApiError::bad_request(
            "at most 64 completions (prompts times n) per request",
            Some("prompt"),
        ));
    }
    for p in &prompts {
        check_context(p, l, "prompt")?;
    }
    let mut receivers = Vec::new();
    for p in &prompts {
        let room = l.scheduler.n_ctx - p.len();
        for i in 0..settings.n {
            let mut sampling = settings.sampling.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            receivers.push(submit(
                l,
                JobSpec {
                    prompt: p.clone(),
                    max_tokens: settings.max_tokens.unwrap_or(16).min(room),
                    sampling,
                    stop: settings.stop.clone(),
                    logprobs,
                    prompt_logprobs: req.echo && logprobs.is_some(),
                    json_mode: false,
                    ignore_eos: req.common.ignore_eos,
                    adapter: adapter.clone(),
                },
            )?);
        }
    }
    lora_routes::count_request(adapter.as_deref());
    let id = new_id("cmpl");
    let n = settings.n;
    if req.common.stream {
        let include_usage = req
            .common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let echo_texts: Vec<String> = prompts
            .iter()
            .map(|p| tok.decode(p, false).unwrap_or_default())
            .collect();
        return Ok(completion_stream(
            id,
            model_id,
            receivers,
            n,
            req.echo.then_some(echo_texts),
            include_usage,
        )
        .into_response());
    }
    let mut choices = Vec::new();
    let (mut prompt_total, mut cached, mut completion) = (0, 0, 0);
    for (i, rx) in receivers.into_iter().enumerate() {
        let prompt = &prompts[i / n];
        let c = collect(rx).await?;
        if i % n == 0 {
            prompt_total += c.prompt_tokens;
        }
        cached += c.cached_tokens;
        completion += c.completion_tokens;
        let prompt_text = if req.echo {
            tok.decode(prompt, false).unwrap_or_default()
        } else {
            String::new()
        };
        let lp = logprobs.map(|_| legacy_logprobs(l, prompt, &c, req.echo));
        choices.push(json!({
            "index": i,
            "text": format!("{prompt_text}{}", c.text),
            "logprobs": lp,
            "finish_reason": c.finish_reason,
        }));
    }
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": now(),
        "model": model_id,
        "choices": choices,
        "usage": usage(prompt_total, cached, completion),
    }))
    .into_response())
}

/// OpenAI's legacy logprobs object: parallel lists over the returned tokens.
fn legacy_logprobs(l: &Loaded, prompt: &[u32], c: &Collected, echo: bool) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = 0usize;
    let top_map = |lp: &TokenLogprob| {
        let mut m = serde_json::Map::new();
        for &(t, v) in &lp.top {
            m.entry(piece(l, t)).or_insert(json!(v));
        }
        Value::Object(m)
    };
    let mut push = |text: String, lp: Option<&TokenLogprob>| {
        offsets.push(offset);
        offset += text.chars().count();
        tokens.push(text);
        token_logprobs.push(lp.map_or(Value::Null, |lp| json!(lp.logprob)));
        top_logprobs.push(lp.map_or(Value::Null, top_map));
    };
    if echo {
        for (i, &t) in prompt.iter().enumerate() {
            let lp = if i == 0 {
                None
            } else {
                c.prompt_logprobs.get(i - 1)
            };
            push(piece(l, t), lp);
        }
    }
    for lp in &c.logprobs {
        push(piece(l, lp.token), Some(lp));
    }
    json!({ "tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets })
}

fn completion_stream(
    id: String,
    model_id: String,
    receivers: Vec<UnboundedReceiver<Event>>,
    n: usize,
    echo: Option<Vec<String>>,
    include_usage: bool,
) -> SseStream {
    let created = now();
    let chunk = {
        let (id, model_id) = (id.clone(), model_id.clone());
        move |choices: Value| json!({ "id": id, "object": "text_completion", "created": created, "model": model_id, "choices": choices })
    };
    let count = receivers.len();
    let first: Vec<Result<SseEvent, Infallible>> = match &echo {
        Some(texts) => (0..count).map(|i| sse_json(&chunk(json!([{ "index": i, "text": texts[i / n], "logprobs": null, "finish_reason": null }])))).collect(),
        None => Vec::new(),
    };
    let totals = Arc::new(std::sync::Mutex::new((0usize, 0usize, 0usize)));
    let totals_end = totals.clone();
    let body = merged(receivers).filter_map(move |(i, ev)| {
        let chunk = chunk.clone();
        let totals = totals.clone();
        async move {
            match ev {
                Event::Token { text, .. } if !text.is_empty() => {
                    Some(sse_json(&chunk(json!([{ "index": i, "text": text, "logprobs": null, "finish_reason": null }]))))
                }
                Event::Done { finish_reason, prompt_tokens, cached_tokens, completion_tokens } => {
                    let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                    if i % n == 0 {
                        t.0 += prompt_tokens;
                    }
                    t.1 += cached_tokens;
                    t.2 += completion_tokens;
                    Some(sse_json(&chunk(json!([{ "index": i, "text": "", "logprobs": null, "finish_reason": finish_reason }]))))
                }
                Event::Error(e) => Some(sse_json(&json!({ "error": { "message": e, "type": "server_error", "param": null, "code": null } }))),
                _ => None,
            }
        }
    });
    let tail = stream::once(async move {
        let mut out = Vec::new();
        if include_usage {
            let t = *totals_end.lock().unwrap_or_else(|e| e.into_inner());
            out.push(sse_json(&json!({ "id": id, "object": "text_completion", "created": created, "model": model_id, "choices": [], "usage": usage(t.0, t.1, t.2) })));
        }
        out.push(Ok(SseEvent::default().data("[DONE]")));
        stream::iter(out)
    })
    .flatten();
    Sse::new(Box::pin(stream::iter(first).chain(body).chain(tail)) as BoxedEvents)
        .keep_alive(KeepAlive::default())
}
