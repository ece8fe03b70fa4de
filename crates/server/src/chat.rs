//! `POST /v1/chat/completions`.

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
use crate::lazy::LazyConstraint;
use crate::lora_routes;
use crate::routes::*;
use crate::scheduler::{Event, JobSpec, TokenLogprob};
use crate::Loaded;

use crate::lora_routes::select_model;
use crate::prompt::{chat_prompt, ChatPrompt};
use crate::tools::{self, ToolChoice, ToolFormat, Tools};

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
    let tools = tools::parse_tools(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
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
    let constraint =
        crate::constraint::constraint_for(l, req.response_format.as_ref(), req.grammar.as_ref())
            .await?;

    let ChatPrompt {
        tokens: prompt,
        format,
    } = chat_prompt(&l.model, req.messages.clone(), tools.clone()).await?;
    // Harmony answers are read for their channels even without tools.
    let tool_mode = tools
        .filter(|t| t.choice != ToolChoice::None)
        .or_else(|| (format == ToolFormat::Harmony).then(Tools::none))
        .map(|t| (format, t));
    let (constraint, lazy) = with_tool_constraint(l, tool_mode.as_ref(), constraint).await?;
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
            constraint: constraint.clone(),
            lazy: lazy.clone(),
            logit_bias: settings.logit_bias.clone(),
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
            tool_mode,
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
        let (message, finish_reason) = match &tool_mode {
            Some((format, tools)) => {
                let (content, calls) = tools::parse_calls(*format, &c.text, tools);
                let calls = calls_json(*format, tools, calls);
                let (mut message, reason) = if calls.is_empty() {
                    (
                        json!({ "role": "assistant", "content": content }),
                        c.finish_reason,
                    )
                } else {
                    let content = if content.is_empty() {
                        Value::Null
                    } else {
                        json!(content)
                    };
                    // A call cut off by max_tokens is reported as cut off, as OpenAI
                    // and llama.cpp's server do.
                    let reason = match c.finish_reason {
                        "length" => "length",
                        _ => "tool_calls",
                    };
                    (
                        json!({ "role": "assistant", "content": content, "tool_calls": calls }),
                        reason,
                    )
                };
                // Harmony's reasoning, as llama.cpp's server reports it.
                if *format == ToolFormat::Harmony {
                    let r = verity_tokenizer::harmony::split(&c.text, true).reasoning;
                    if !r.is_empty() {
                        message["reasoning_content"] = json!(r);
                    }
                }
                (message, reason)
            }
            None => (
                json!({ "role": "assistant", "content": c.text }),
                c.finish_reason,
            ),
        };
        choices.push(json!({
            "index": i,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
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

/// The constraint of a request with tools: the call format (arguments held to their
/// schemas) when the model must call a tool or its template has no tool support; in
/// `auto` mode a lazy one that holds a call to the schemas once the model opens it;
/// otherwise `constraint` (from `response_format` or `grammar`).
pub(crate) async fn with_tool_constraint(
    l: &Loaded,
    tool_mode: Option<&(ToolFormat, Tools)>,
    constraint: Option<Arc<verity_constraint::Grammar>>,
) -> Result<
    (
        Option<Arc<verity_constraint::Grammar>>,
        Option<LazyConstraint>,
    ),
    ApiError,
> {
    let Some((format, tools)) = tool_mode else {
        return Ok((constraint, None));
    };
    let control = (*format == ToolFormat::Harmony)
        .then(|| l.harmony_control_ids())
        .flatten();
    let Some(grammar) = tools::tool_grammar(*format, tools, control) else {
        if constraint.is_some() {
            return Ok((constraint, None));
        }
        let Some(lazy) = tools::lazy_tool_grammar(*format, tools) else {
            return Ok((None, None));
        };
        let source = lazy.lark;
        let compiled = crate::constraint::compile(l, "tools", move |f| f.lark(&source)).await?;
        return Ok((
            None,
            Some(LazyConstraint {
                trigger: lazy.trigger.as_bytes().to_vec(),
                at_start: lazy.at_start,
                grammar: compiled,
                max_calls: lazy.max_calls,
            }),
        ));
    };
    if constraint.is_some() {
        return Err(ApiError::bad_request(
            "a response format or grammar cannot be combined with tool calls the model must make (or with tools on a model whose template has no tool support); send tool_choice: none to use it",
            Some("response_format"),
        ));
    }
    let compiled = crate::constraint::compile(l, "tools", move |f| match grammar {
        tools::ToolGrammar::JsonSchema(s) => f.json_schema(&s),
        tools::ToolGrammar::Lark(src) => f.lark(&src),
    })
    .await?;
    Ok((Some(compiled), None))
}

/// Calls as OpenAI reports them, each with a fresh id; one only when the client asked
/// for no parallel calls.
fn calls_json(format: ToolFormat, tools: &Tools, calls: Vec<tools::ToolCall>) -> Vec<Value> {
    let keep = if tools.parallel { calls.len() } else { 1 };
    calls
        .into_iter()
        .take(keep)
        .enumerate()
        .map(|(k, c)| {
            json!({
                "id": tools::call_id(format, k as u64),
                "type": "function",
                "function": { "name": c.name, "arguments": c.arguments },
            })
        })
        .collect()
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
    tool_mode: Option<(ToolFormat, Tools)>,
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
    // Per choice: content streams while a possible tool call is held back.
    let fresh = |t: &(ToolFormat, Tools)| tools::StreamSplitter::new(t.0, t.1.clone());
    let splitters: Arc<std::sync::Mutex<Vec<tools::StreamSplitter>>> =
        Arc::new(std::sync::Mutex::new(
            tool_mode
                .iter()
                .flat_map(|t| (0..n).map(|_| fresh(t)))
                .collect(),
        ));
    let tool_mode = Arc::new(tool_mode);
    let body = merged(receivers).flat_map(move |(i, ev)| {
        let chunk = chunk.clone();
        let totals = totals.clone();
        let model = tokenizer_model.clone();
        let splitters = splitters.clone();
        let tool_mode = tool_mode.clone();
        let events: Vec<Result<SseEvent, Infallible>> = match (ev, tool_mode.as_ref()) {
            (Event::Token { text, .. }, Some((format, _))) => {
                let mut s = splitters.lock().unwrap_or_else(|e| e.into_inner());
                let pieces = s[i].push(&text);
                piece_chunks(i, *format, pieces, &chunk)
            }
            (
                Event::Done {
                    finish_reason,
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                },
                Some(t),
            ) => {
                {
                    let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                    t.0 = prompt_tokens;
                    t.1 = t.1.max(cached_tokens);
                    t.2 += completion_tokens;
                    t.3 += 1;
                }
                let splitter = std::mem::replace(
                    &mut splitters.lock().unwrap_or_else(|e| e.into_inner())[i],
                    fresh(t),
                );
                let (pieces, calls) = splitter.finish();
                let mut out = piece_chunks(i, t.0, pieces, &chunk);
                let reason = if calls.is_empty() || finish_reason == "length" {
                    finish_reason
                } else {
                    "tool_calls"
                };
                out.push(sse_json(&chunk(
                    json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": reason }]),
                )));
                out
            }
            (ev, _) => plain_event(i, ev, &chunk, &totals, &model, with_logprobs)
                .into_iter()
                .collect(),
        };
        stream::iter(events)
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

/// Pieces of a choice with tools as chunks; as OpenAI streams calls: index, id, type and
/// name first, then the arguments in fragments.
fn piece_chunks(
    i: usize,
    format: ToolFormat,
    pieces: Vec<tools::Piece>,
    chunk: &dyn Fn(Value) -> Value,
) -> Vec<Result<SseEvent, Infallible>> {
    let delta = |d: Value| {
        sse_json(&chunk(
            json!([{ "index": i, "delta": d, "logprobs": null, "finish_reason": null }]),
        ))
    };
    pieces
        .into_iter()
        .map(|p| match p {
            tools::Piece::Content(c) => delta(json!({ "content": c })),
            tools::Piece::Reasoning(r) => delta(json!({ "reasoning_content": r })),
            tools::Piece::CallStart { index, name } => {
                let id = tools::call_id(format, index as u64);
                delta(json!({ "tool_calls": [{ "index": index, "id": id, "type": "function", "function": { "name": name, "arguments": "" } }] }))
            }
            tools::Piece::Arguments { index, fragment } => {
                delta(json!({ "tool_calls": [{ "index": index, "function": { "arguments": fragment } }] }))
            }
        })
        .collect()
}

/// One event of a choice without tools, as a chunk.
fn plain_event(
    i: usize,
    ev: Event,
    chunk: &dyn Fn(Value) -> Value,
    totals: &std::sync::Mutex<(usize, usize, usize, usize)>,
    model: &verity_model::Model,
    with_logprobs: bool,
) -> Option<Result<SseEvent, Infallible>> {
    {
        match ev {
            Event::Token { text, logprob } => {
                if text.is_empty() && logprob.is_none() {
                    return None;
                }
                let lp = match (with_logprobs, logprob) {
                    (true, Some(lp)) => {
                        let p = model
                            .tokenizer
                            .decode(&[lp.token], false)
                            .unwrap_or_default();
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
                Some(sse_json(&chunk(
                    json!([{ "index": i, "delta": { "content": text }, "logprobs": lp, "finish_reason": null }]),
                )))
            }
            Event::Done {
                finish_reason,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                let mut t = totals.lock().unwrap_or_else(|e| e.into_inner());
                t.0 = prompt_tokens;
                t.1 = t.1.max(cached_tokens);
                t.2 += completion_tokens;
                t.3 += 1;
                Some(sse_json(&chunk(
                    json!([{ "index": i, "delta": {}, "logprobs": null, "finish_reason": finish_reason }]),
                )))
            }
            Event::Error(e) => Some(sse_json(
                &json!({ "error": { "message": e, "type": "server_error", "param": null, "code": null } }),
            )),
            Event::PromptLogprobs(_) => None,
        }
    }
}
