//! OpenAI request bodies, their validation into scheduler jobs, and OpenAI's error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use verity_engine::SamplingParams;

/// An error in OpenAI's JSON shape with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: None,
        }
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Parse a JSON body into `T`, with messages that say which field is wrong.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::bad_request(
            "the request body is not valid UTF-8",
            None,
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).map(str::to_string);
        let mut err = ApiError::bad_request(format!("invalid request body: {msg}"), None);
        if msg.contains("unknown field") {
            err.param = param;
            err.message = format!("unrecognized request argument: {msg}");
        }
        err
    })
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields every generation request shares (`user`, `metadata`, `store` and
/// `service_tier` are accepted and ignored).
#[derive(Deserialize, Debug, Default, Clone)]
pub struct Common {
    /// The base model's id (or another of its names) or a served adapter's name.
    pub model: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub n: Option<i64>,
    pub logit_bias: Option<serde_json::Map<String, Value>>,
    /// Extension (as llama-server): keep generating past end-of-generation tokens.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    pub content: Option<MessageContent>,
    /// The speaker's name (passed to the template).
    pub name: Option<String>,
    /// An assistant message's calls: `[{"id", "type": "function", "function": {"name",
    /// "arguments"}}]`.
    pub tool_calls: Option<Value>,
    /// A tool message's answer to the call with this id.
    pub tool_call_id: Option<String>,
    /// Accepted and ignored (OpenAI's assistant refusals).
    #[allow(dead_code)]
    pub refusal: Option<Value>,
}

/// Fields of `Common`, allowed in every generation request.
const COMMON_FIELDS: &[&str] = &[
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
    "seed",
    "stop",
    "n",
    "user",
    "logit_bias",
    "metadata",
    "store",
    "service_tier",
    "ignore_eos",
];
pub const CHAT_FIELDS: &[&str] = &[
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "response_format",
    "grammar",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];
pub const COMPLETION_FIELDS: &[&str] =
    &["prompt", "echo", "logprobs", "best_of", "suffix", "grammar"];

/// Parse a request body, refusing fields the endpoint does not know (as OpenAI does:
/// a misspelt parameter should not be silently ignored).
pub fn parse_request<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    own_fields: &[&str],
) -> Result<T, ApiError> {
    let value: Value = parse_body(bytes)?;
    let Some(obj) = value.as_object() else {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
            None,
        ));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !COMMON_FIELDS.contains(&k.as_str()) && !own_fields.contains(&k.as_str()))
    {
        let shown: String = k.chars().take(64).collect();
        return Err(ApiError::bad_request(
            format!("unrecognized request argument supplied: {shown}"),
            Some(&shown),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<i64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// `{"type": "text" | "json_object" | "json_schema", ...}` (checked in constraint.rs).
    pub response_format: Option<Value>,
    /// Extension: `{"type": "lark" | "regex", "value": "..."}` (checked in constraint.rs).
    pub grammar: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(default)]
    pub echo: bool,
    pub logprobs: Option<i64>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    /// Extension: `{"type": "lark" | "regex", "value": "..."}` (checked in constraint.rs).
    pub grammar: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

/// Validated generation settings shared by both endpoints.
pub struct Settings {
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub max_tokens: Option<usize>,
    /// (token id, bias); ids are checked against the vocabulary on submit.
    pub logit_bias: Vec<(u32, f32)>,
}

fn range(v: Option<f64>, name: &str, lo: f64, hi: f64, default: f64) -> Result<f32, ApiError> {
    match v {
        None => Ok(default as f32),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x as f32),
        Some(x) => Err(ApiError::bad_request(
            format!("{name} must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
    }
}

/// Largest `n` (choices per request).
pub const MAX_N: usize = 16;
/// Most stop sequences, as OpenAI allows.
const MAX_STOPS: usize = 4;

impl Common {
    pub fn settings(&self, max_tokens_override: Option<i64>) -> Result<Settings, ApiError> {
        let logit_bias = logit_bias(self.logit_bias.as_ref())?;
        let temperature = range(self.temperature, "temperature", 0.0, 2.0, 1.0)?;
        let top_p = range(self.top_p, "top_p", 0.0, 1.0, 1.0)?;
        if top_p == 0.0 {
            return Err(ApiError::bad_request(
                "top_p must be greater than 0",
                Some("top_p"),
            ));
        }
        let min_p = range(self.min_p, "min_p", 0.0, 1.0, 0.0)?;
        let presence_penalty = range(self.presence_penalty, "presence_penalty", -2.0, 2.0, 0.0)?;
        let frequency_penalty = range(self.frequency_penalty, "frequency_penalty", -2.0, 2.0, 0.0)?;
        let repeat_penalty = range(self.repeat_penalty, "repeat_penalty", 0.01, 10.0, 1.0)?;
        let top_k = match self.top_k {
            None => 0,
            Some(k) if (0..=1_000_000).contains(&k) => k as usize,
            Some(k) => {
                return Err(ApiError::bad_request(
                    format!("top_k must be between 0 and 1000000, got {k}"),
                    Some("top_k"),
                ))
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::bad_request(
                    format!("n must be between 1 and {MAX_N}, got {n}"),
                    Some("n"),
                ))
            }
        };
        let max_tokens = match max_tokens_override.or(self.max_tokens) {
            None => None,
            Some(m) if (0..=1 << 24).contains(&m) => Some(m as usize),
            Some(m) => {
                return Err(ApiError::bad_request(
                    format!("max_tokens must be a non-negative integer, got {m}"),
                    Some("max_tokens"),
                ))
            }
        };
        let stop = self
            .stop
            .clone()
            .map(OneOrMany::into_vec)
            .unwrap_or_default();
        if stop.len() > MAX_STOPS {
            return Err(ApiError::bad_request(
                format!("at most {MAX_STOPS} stop sequences are allowed"),
                Some("stop"),
            ));
        }
        if stop.iter().any(|s| s.len() > 1024) {
            return Err(ApiError::bad_request(
                "stop sequences must be at most 1024 bytes",
                Some("stop"),
            ));
        }
        let seed = self.seed.map(|s| s as u64);
        Ok(Settings {
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                repeat_penalty,
                repeat_last_n: 64,
                presence_penalty,
                frequency_penalty,
                seed,
            },
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            n,
            max_tokens,
            logit_bias,
        })
    }
}

/// Most tokens `logit_bias` may name, as OpenAI allows.
const MAX_LOGIT_BIAS: usize = 300;

/// OpenAI's `logit_bias`: token ids (as strings) to a bias in [-100, 100] added to the
/// token's logit before sampling; -100 bans a token, 100 all but forces it.
fn logit_bias(map: Option<&serde_json::Map<String, Value>>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    let bad = |msg: String| ApiError::bad_request(msg, Some("logit_bias"));
    if map.len() > MAX_LOGIT_BIAS {
        return Err(bad(format!(
            "logit_bias names {} tokens; at most {MAX_LOGIT_BIAS} are allowed",
            map.len()
        )));
    }
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let id: u32 = k
            .parse()
            .map_err(|_| bad(format!("logit_bias keys are token ids, got {k:?}")))?;
        let bias = v
            .as_f64()
            .filter(|b| (-100.0..=100.0).contains(b))
            .ok_or_else(|| {
                bad(format!(
                    "logit_bias[{k}] must be a number from -100 to 100, got {v}"
                ))
            })?;
        out.push((id, bias as f32));
    }
    Ok(out)
}

impl Message {
    /// The text of the message (text parts concatenated).
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(MessageContent::Text(s)) => Ok(s.clone()),
            Some(MessageContent::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    if p.kind != "text" {
                        return Err(ApiError::bad_request(
                            format!(
                                "content parts of type '{}' are not supported (text only)",
                                p.kind
                            ),
                            Some("messages"),
                        ));
                    }
                    out.push_str(p.text.as_deref().unwrap_or(""));
                }
                Ok(out)
            }
        }
    }
}
