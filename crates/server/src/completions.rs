//! `POST /v1/completions` (the legacy completions API).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
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

pub(crate) async fn completions(
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
    let constraint = crate::constraint::constraint_for(l, None, req.grammar.as_ref()).await?;
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
                    constraint: constraint.clone(),
                    lazy: None,
                    logit_bias: settings.logit_bias.clone(),
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
