//! Tool calling on `/v1/chat/completions` (and `/v1/responses`): the request's `tools`
//! and `tool_choice` checked, the conversation turned into what the model's chat template
//! expects, and the model's output parsed back into OpenAI's `tool_calls`.
//!
//! Each model family writes calls its own way ([`ToolFormat`]); the format is read off the
//! chat template, so tools reach the prompt through the model's own template, as
//! transformers passes them. A template without tool support gets a generic format: the
//! schemas in a system message and the output constrained to a JSON call.

mod format;
mod grammar;
mod parse;
mod stream;

pub use format::{conversation, ToolFormat};
pub use grammar::{lazy_tool_grammar, tool_grammar, ToolGrammar};
pub use parse::{parse_calls, ToolCall};
pub use stream::{Piece, StreamSplitter};

use serde_json::{json, Map, Value};

use crate::api::ApiError;

/// OpenAI's limit on tools per request.
pub const MAX_TOOLS: usize = 128;
/// Largest `parameters` schema of one tool, serialized.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// One function tool.
#[derive(Clone, Debug)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema for the arguments object.
    pub parameters: Value,
    /// The client asked for arguments that always match the schema.
    pub strict: bool,
}

/// What `tool_choice` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The tools of one request.
#[derive(Clone, Debug)]
pub struct Tools {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// More than one call in one answer.
    pub parallel: bool,
}

impl Tools {
    /// The tools as chat templates receive them (OpenAI's shape:
    /// `{"type": "function", "function": {...}}`).
    pub fn for_template(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    let mut f = Map::new();
                    f.insert("name".into(), json!(t.name));
                    if let Some(d) = &t.description {
                        f.insert("description".into(), json!(d));
                    }
                    f.insert("parameters".into(), t.parameters.clone());
                    json!({"type": "function", "function": f})
                })
                .collect(),
        )
    }

    /// The tools a call may name under `tool_choice`.
    pub fn callable(&self) -> Vec<&Tool> {
        match &self.choice {
            ToolChoice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            ToolChoice::None => Vec::new(),
            _ => self.tools.iter().collect(),
        }
    }

    /// No tools: for answers whose format is parsed even without them (harmony's
    /// channels).
    pub fn none() -> Self {
        Tools {
            tools: Vec::new(),
            choice: ToolChoice::Auto,
            parallel: false,
        }
    }

    /// Must the answer be a call?
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }
}

fn bad(msg: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(msg, Some(param))
}

/// Check `tools`, `tool_choice` and `parallel_tool_calls`. `None` when the request has no
/// tools (an empty list counts as none).
pub fn parse_tools(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(bad("'tools' must be an array of tools", "tools")),
    };
    if list.len() > MAX_TOOLS {
        return Err(bad(
            format!(
                "{} tools given; at most {MAX_TOOLS} are supported",
                list.len()
            ),
            "tools",
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        out.push(parse_tool(i, t)?);
    }
    for (i, t) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.name == t.name) {
            return Err(bad(
                format!("tools[{i}]: the name '{}' is used twice", t.name),
                "tools",
            ));
        }
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(bad(
                    format!("tool_choice '{shown}' is not one of 'auto', 'none', 'required' or a named function"),
                    "tool_choice",
                ));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        "tool_choice",
                    )
                })?;
            if !out.iter().any(|t| t.name == name) {
                return Err(bad(
                    format!("tool_choice names '{name}', which is not among the tools"),
                    "tool_choice",
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(bad(
                "tool_choice must be a string or an object",
                "tool_choice",
            ))
        }
    };
    if out.is_empty() {
        if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
            return Err(bad("tool_choice requires tools", "tool_choice"));
        }
        return Ok(None);
    }
    Ok(Some(Tools {
        tools: out,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

fn parse_tool(i: usize, t: &Value) -> Result<Tool, ApiError> {
    let at = |m: &str| bad(format!("tools[{i}]: {m}"), "tools");
    let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
    if kind != "function" {
        return Err(at(&format!(
            "type '{kind}' is not supported (only 'function')"
        )));
    }
    // Chat Completions nests the function; the Responses API does not.
    let f = t.get("function").unwrap_or(t);
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| at("a function needs a 'name'"))?;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(at(
            "a function name must be 1-64 letters, digits, '_' or '-'",
        ));
    }
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(at("'description' must be a string")),
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(o)) => {
            if let Some(ty) = o.get("type") {
                if ty != "object" {
                    return Err(at(
                        "'parameters' must be a JSON Schema for an object (\"type\": \"object\")",
                    ));
                }
            }
            let size = serde_json::to_string(p).map_or(0, |s| s.len());
            if size > MAX_SCHEMA_BYTES {
                return Err(at(&format!(
                    "the parameters schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}"
                )));
            }
            p.clone()
        }
        Some(_) => return Err(at("'parameters' must be a JSON Schema object")),
    };
    let strict = f.get("strict").and_then(Value::as_bool).unwrap_or(false);
    Ok(Tool {
        name: name.to_string(),
        description,
        parameters,
        strict,
    })
}

/// A call id in the shape the format needs (Mistral's templates insist on nine letters
/// and digits).
pub fn call_id(format: ToolFormat, seq: u64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut s = String::new();
    for _ in 0..9 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALNUM[(x % ALNUM.len() as u64) as usize] as char);
    }
    match format {
        ToolFormat::Mistral => s,
        _ => format!("call_{s}"),
    }
}
