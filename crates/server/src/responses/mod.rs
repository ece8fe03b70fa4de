//! `POST /v1/responses` (OpenAI's Responses API) and `GET`/`DELETE /v1/responses/{id}`:
//! input as a string or items (messages, function calls and their outputs), instructions,
//! function tools, `text.format`, streaming with the Responses event types, and
//! `previous_response_id` over responses kept in memory (bounded in count and age;
//! `store: false` keeps none).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

mod stream;

use crate::api::*;
use crate::lora_routes::{self, select_model};
use crate::prompt::{chat_prompt, ChatPrompt};
use crate::routes::*;
use crate::scheduler::JobSpec;
use crate::tools::{self, ToolChoice, ToolFormat, Tools};

/// Responses kept for `previous_response_id`.
const MAX_STORED: usize = 1024;
const MAX_AGE: Duration = Duration::from_secs(3600);

/// A stored response: the conversation up to and including its output.
struct Stored {
    id: String,
    at: Instant,
    conversation: Vec<Message>,
    response: Value,
}

/// The in-memory response store.
#[derive(Default)]
pub struct ResponseStore {
    items: Mutex<VecDeque<Stored>>,
}

impl ResponseStore {
    fn put(&self, s: Stored) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        q.retain(|x| x.at.elapsed() < MAX_AGE);
        while q.len() >= MAX_STORED {
            q.pop_front();
        }
        q.push_back(s);
    }

    fn get(&self, id: &str) -> Option<(Vec<Message>, Value)> {
        let q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .find(|x| x.id == id && x.at.elapsed() < MAX_AGE)
            .map(|x| (x.conversation.clone(), x.response.clone()))
    }

    fn remove(&self, id: &str) -> bool {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        let before = q.len();
        q.retain(|x| x.id != id);
        q.len() != before
    }
}

const RESPONSE_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "max_output_tokens",
    "temperature",
    "top_p",
    "stream",
    "previous_response_id",
    "store",
    "metadata",
    "user",
    "truncation",
    "include",
    "service_tier",
    "reasoning",
    "seed",
    "stream_options",
    "prompt_cache_key",
    "safety_identifier",
    "top_logprobs",
    "background",
];

#[derive(Deserialize)]
struct ResponsesRequest {
    model: Option<String>,
    input: Option<Value>,
    instructions: Option<String>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    text: Option<Value>,
    max_output_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    stream: bool,
    previous_response_id: Option<String>,
    store: Option<bool>,
    metadata: Option<Value>,
    seed: Option<i64>,
    #[serde(default)]
    background: bool,
}

fn bad(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(msg, Some(param))
}

/// Text of a message's `content` (a string, or `input_text`/`output_text` parts).
fn content_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        out.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some(other) => {
                        return Err(bad(
                            format!(
                            "{at}: content parts of type '{other}' are not supported (text only)"
                        ),
                            "input",
                        ))
                    }
                    None => {
                        return Err(bad(format!("{at}: a content part needs a 'type'"), "input"))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            format!("{at}: 'content' must be a string or a list of parts"),
            "input",
        )),
    }
}

fn message(role: &str, text: String) -> Message {
    Message {
        role: role.to_string(),
        content: Some(MessageContent::Text(text)),
        name: None,
        tool_calls: None,
        tool_call_id: None,
        refusal: None,
    }
}

/// `input` as chat messages: function calls join the assistant message they follow,
/// their outputs become tool messages.
fn input_messages(input: &Value) -> Result<Vec<Message>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![message("user", s.clone())]),
        Value::Array(a) => a,
        _ => return Err(bad("'input' must be a string or a list of items", "input")),
    };
    let mut out: Vec<Message> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item
                    .get("role")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}: a message needs a 'role'"), "input"))?;
                if !["user", "system", "developer", "assistant"].contains(&role) {
                    return Err(bad(
                        format!(
                            "{at}: unknown role '{}'",
                            role.chars().take(32).collect::<String>()
                        ),
                        "input",
                    ));
                }
                let text = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                out.push(message(role, text));
            }
            "function_call" => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    bad(format!("{at}: a function_call needs a 'call_id'"), "input")
                })?;
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(format!("{at}: a function_call needs a 'name'"), "input"))?;
                let arguments = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}");
                let call = json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    Some(m) if m.role == "assistant" => {
                        let mut calls = m
                            .tool_calls
                            .take()
                            .and_then(|c| c.as_array().cloned())
                            .unwrap_or_default();
                        calls.push(call);
                        m.tool_calls = Some(Value::Array(calls));
                    }
                    _ => {
                        let mut m = message("assistant", String::new());
                        m.content = None;
                        m.tool_calls = Some(json!([call]));
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                    bad(
                        format!("{at}: a function_call_output needs a 'call_id'"),
                        "input",
                    )
                })?;
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => content_text(v, &at)?,
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                let mut m = message("tool", output);
                m.tool_call_id = Some(call_id.to_string());
                out.push(m);
            }
            // Reasoning items carry nothing this server made; the Agents SDK sends them back.
            "reasoning" => {}
            other => {
                return Err(bad(
                    format!(
                        "{at}: items of type '{}' are not supported",
                        other.chars().take(32).collect::<String>()
                    ),
                    "input",
                ))
            }
        }
    }
    Ok(out)
}

fn new_item_id(prefix: &str) -> String {
    new_id(prefix).replace('-', "_")
}

/// Output items for an answer: a message (when there is text) and function calls.
fn output_items(
    format: ToolFormat,
    text: &str,
    tool_mode: Option<&Tools>,
) -> (Vec<Value>, Vec<Value>) {
    let (content, calls) = match tool_mode {
        Some(t) => {
            let (c, calls) = tools::parse_calls(format, text, t);
            let keep = if t.parallel {
                calls.len()
            } else {
                calls.len().min(1)
            };
            (c, calls.into_iter().take(keep).collect())
        }
        None => (text.to_string(), Vec::new()),
    };
    let mut items = Vec::new();
    if !content.is_empty() || calls.is_empty() {
        items.push(json!({
            "type": "message", "id": new_item_id("msg"), "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": content, "annotations": [], "logprobs": []}],
        }));
    }
    let mut call_items = Vec::new();
    for (k, c) in calls.into_iter().enumerate() {
        call_items.push(json!({
            "type": "function_call", "id": new_item_id("fc"), "call_id": tools::call_id(format, k as u64),
            "name": c.name, "arguments": c.arguments, "status": "completed",
        }));
    }
    (items, call_items)
}

/// The conversation after a response: its output as assistant messages and calls.
fn with_output(mut conv: Vec<Message>, output: &[Value]) -> Vec<Message> {
    let as_input: Vec<Value> = output
        .iter()
        .map(|o| match o["type"].as_str() {
            Some("message") => {
                json!({"type": "message", "role": "assistant", "content": o["content"]})
            }
            _ => o.clone(),
        })
        .collect();
    if let Ok(ms) = input_messages(&Value::Array(as_input)) {
        conv.extend(ms);
    }
    conv
}

pub(crate) async fn create(
    State(state): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body_bytes(body, state.config.max_body)?;
    let req: ResponsesRequest = parse_request(&bytes, RESPONSE_FIELDS)?;
    if req.background {
        return Err(bad("background responses are not supported", "background"));
    }
    let l = loaded(&state)?;
    let (model_id, adapter) = select_model(l, req.model.as_deref())?;
    let tool_set = tools::parse_tools(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let mut conversation = match &req.previous_response_id {
        Some(prev) => state
            .responses
            .get(prev)
            .map(|(c, _)| c)
            .ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", format!("no stored response '{}' (responses are kept for an hour, and not at all with store: false)", prev.chars().take(64).collect::<String>()))
                    .with_param("previous_response_id")
            })?,
        None => Vec::new(),
    };
    // Instructions apply to this response only (as OpenAI's do): they are not part of the
    // stored conversation.
    let empty = json!("");
    conversation.extend(input_messages(req.input.as_ref().unwrap_or(&empty))?);
    let mut messages = conversation.clone();
    if let Some(ins) = &req.instructions {
        messages.insert(0, message("system", ins.clone()));
    }
    if messages.is_empty() {
        return Err(bad("'input' is empty", "input"));
    }
    let text_format = req.text.as_ref().and_then(|t| t.get("format")).cloned();
    let constraint = crate::constraint::constraint_for_text_format(l, text_format.as_ref()).await?;
    let common = Common {
        model: req.model.clone(),
        stream: req.stream,
        max_tokens: req.max_output_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        ..Common::default()
    };
    let settings = common.settings(None)?;
    let ChatPrompt {
        tokens: prompt,
        format,
    } = chat_prompt(&l.model, messages, tool_set.clone()).await?;
    check_context(&prompt, l, "input")?;
    let room = l.scheduler.n_ctx - prompt.len();
    let max_tokens = settings.max_tokens.unwrap_or(room).min(room);
    // Harmony answers are read for their channels even without tools.
    let tool_mode = tool_set
        .clone()
        .filter(|t| t.choice != ToolChoice::None)
        .or_else(|| (format == ToolFormat::Harmony).then(Tools::none));
    let with_format = tool_mode.clone().map(|t| (format, t));
    let (constraint, lazy) =
        crate::chat::with_tool_constraint(l, with_format.as_ref(), constraint).await?;
    let spec = JobSpec {
        prompt,
        max_tokens,
        sampling: settings.sampling.clone(),
        stop: Vec::new(),
        logprobs: None,
        prompt_logprobs: false,
        constraint,
        lazy,
        logit_bias: Vec::new(),
        ignore_eos: false,
        adapter: adapter.clone(),
    };
    let rx = submit(l, spec)?;
    lora_routes::count_request(adapter.as_deref());
    let base = Base {
        id: new_item_id("resp"),
        created_at: now(),
        model: model_id,
        req_tools: tool_set.as_ref().map(responses_tools).unwrap_or_default(),
        tool_choice: req.tool_choice.clone().unwrap_or(json!("auto")),
        parallel: req.parallel_tool_calls.unwrap_or(true),
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        previous: req.previous_response_id.clone(),
        text: req
            .text
            .clone()
            .unwrap_or(json!({"format": {"type": "text"}})),
        metadata: req.metadata.clone().unwrap_or(json!({})),
        store: req.store.unwrap_or(true),
    };
    let finish = Finish {
        store: state.clone(),
        conversation,
        format,
        tool_mode,
    };
    if req.stream {
        return Ok(stream::stream_response(base, finish, rx).into_response());
    }
    let c = collect(rx).await?;
    let response = finish.complete(
        &base,
        &c.text,
        c.finish_reason,
        c.prompt_tokens,
        c.cached_tokens,
        c.completion_tokens,
    );
    Ok(Json(response).into_response())
}

fn responses_tools(t: &Tools) -> Vec<Value> {
    t.tools
        .iter()
        .map(|x| json!({"type": "function", "name": x.name, "description": x.description, "parameters": x.parameters, "strict": x.strict}))
        .collect()
}

/// What every response object repeats from its request.
struct Base {
    id: String,
    created_at: u64,
    model: String,
    req_tools: Vec<Value>,
    tool_choice: Value,
    parallel: bool,
    instructions: Option<String>,
    max_output_tokens: Option<i64>,
    temperature: f64,
    top_p: f64,
    previous: Option<String>,
    text: Value,
    metadata: Value,
    store: bool,
}

impl Base {
    fn object(&self, status: &str, output: Vec<Value>, usage: Value, incomplete: Value) -> Value {
        json!({
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "error": null, "incomplete_details": incomplete, "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens, "model": self.model, "output": output,
            "parallel_tool_calls": self.parallel, "previous_response_id": self.previous,
            "reasoning": {"effort": null, "summary": null}, "store": self.store,
            "temperature": self.temperature, "text": self.text, "tool_choice": self.tool_choice,
            "tools": self.req_tools, "top_p": self.top_p, "truncation": "disabled",
            "usage": usage, "user": null, "metadata": self.metadata,
        })
    }
}

fn usage_of(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    })
}

/// How a generation becomes a stored response.
struct Finish {
    store: Arc<crate::AppState>,
    conversation: Vec<Message>,
    format: ToolFormat,
    tool_mode: Option<Tools>,
}

impl Finish {
    fn complete(
        &self,
        base: &Base,
        text: &str,
        finish_reason: &str,
        prompt: usize,
        cached: usize,
        completion: usize,
    ) -> Value {
        let (mut output, calls) = output_items(self.format, text, self.tool_mode.as_ref());
        output.extend(calls);
        self.done(base, output, finish_reason, prompt, cached, completion)
    }

    fn done(
        &self,
        base: &Base,
        output: Vec<Value>,
        finish_reason: &str,
        prompt: usize,
        cached: usize,
        completion: usize,
    ) -> Value {
        let (status, incomplete) = if finish_reason == "length" {
            ("incomplete", json!({"reason": "max_output_tokens"}))
        } else {
            ("completed", Value::Null)
        };
        let response = base.object(
            status,
            output.clone(),
            usage_of(prompt, cached, completion),
            incomplete,
        );
        if base.store {
            self.store.responses.put(Stored {
                id: base.id.clone(),
                at: Instant::now(),
                conversation: with_output(self.conversation.clone(), &output),
                response: response.clone(),
            });
        }
        response
    }
}

pub(crate) async fn retrieve(
    State(state): St,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .responses
        .get(&id)
        .map(|(_, r)| Json(r))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such response",
            )
        })
}

pub(crate) async fn delete(
    State(state): St,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.responses.remove(&id) {
        Ok(Json(
            json!({"id": id, "object": "response", "deleted": true}),
        ))
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "no such response",
        ))
    }
}
