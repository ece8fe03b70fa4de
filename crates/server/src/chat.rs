//! `POST /v1/chat/completions`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::api::*;
use crate::lora_routes;
use crate::routes::*;
use crate::scheduler::{Event, JobSpec, TokenLogprob};
use crate::Loaded;

use crate::lora_routes::select_model;
use verity_tokenizer::ChatMessage;

pub(crate) async fn chat(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
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
