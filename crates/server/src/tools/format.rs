//! How a model family writes tool calls, read off its chat template, and the conversation
//! in the shape its template expects.

use serde_json::{json, Value};

use super::Tools;
use crate::api::{ApiError, Message};

/// The call formats verity parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// Hermes, Qwen2.5, Qwen3: `<tool_call>{"name": .., "arguments": {..}}</tool_call>`.
    Hermes,
    /// Llama 3.1-3.3: the answer is `{"name": .., "parameters": {..}}` (optionally after
    /// `<|python_tag|>`).
    Llama3,
    /// Mistral: `[TOOL_CALLS][{"name": .., "arguments": {..}}]`, or the newer
    /// `[TOOL_CALLS]name[ARGS]{..}`.
    Mistral,
    /// gpt-oss's harmony: channels, and calls as messages to `functions.NAME` (see
    /// `harmony`).
    Harmony,
    /// A template without tool support: the schemas go in a system message and the answer
    /// is JSON, `{"tool_calls": [{"name": .., "arguments": {..}}]}` or `{"response": ".."}`.
    Generic,
}

impl ToolFormat {
    /// The format a chat template's model writes.
    pub fn detect(template: &str) -> ToolFormat {
        if verity_tokenizer::harmony::is_harmony(template) {
            ToolFormat::Harmony
        } else if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if template.contains("<|python_tag|>")
            || (template.contains("ipython") && template.contains("parameters"))
        {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }

    /// Text that opens a call, for formats that mark calls inside free text.
    pub fn marker(self) -> Option<&'static str> {
        match self {
            ToolFormat::Hermes => Some("<tool_call>"),
            ToolFormat::Mistral => Some("[TOOL_CALLS]"),
            ToolFormat::Llama3 | ToolFormat::Harmony | ToolFormat::Generic => None,
        }
    }

    /// Does the template render `tools` itself?
    pub fn template_takes_tools(self) -> bool {
        self != ToolFormat::Generic
    }
}

/// The system text that tells a model without tool support about the tools.
pub fn generic_instructions(tools: &Tools) -> String {
    let mut s = String::from(
        "You can call tools. Each tool's name, purpose and a JSON Schema of its arguments:\n",
    );
    for t in tools.callable() {
        let line =
            json!({"name": t.name, "description": t.description, "parameters": t.parameters});
        s.push_str(&line.to_string());
        s.push('\n');
    }
    s.push_str("To call tools, answer with only this JSON: {\"tool_calls\": [{\"name\": \"<tool name>\", \"arguments\": {<arguments>}}]}");
    if !tools.forced() {
        s.push_str(
            ". To answer without a tool, answer with only {\"response\": \"<your answer>\"}",
        );
    }
    s.push('.');
    s
}

/// The conversation as the chat template receives it: OpenAI messages with tool calls'
/// `arguments` as objects (templates print them with `tojson`), tool results checked
/// against the calls they answer. With the generic format, calls and results become
/// text the model can read, and the tool instructions lead the system message.
pub fn conversation(
    format: ToolFormat,
    messages: &[Message],
    tools: Option<&Tools>,
    tool_role_as_user: bool,
) -> Result<Vec<Value>, ApiError> {
    let bad =
        |i: usize, m: &str| ApiError::bad_request(format!("messages[{i}]: {m}"), Some("messages"));
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    let mut call_ids: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                let shown: String = other.chars().take(32).collect();
                return Err(bad(i, &format!("unknown message role '{shown}'")));
            }
        };
        let text = m.text()?;
        let mut msg = serde_json::Map::new();
        msg.insert("role".into(), json!(role));
        match role {
            "assistant" if m.tool_calls.as_ref().is_some_and(|c| !c.is_null()) => {
                let calls = m
                    .tool_calls
                    .as_ref()
                    .and_then(Value::as_array)
                    .ok_or_else(|| bad(i, "'tool_calls' must be an array"))?;
                let mut rendered = Vec::with_capacity(calls.len());
                for (k, c) in calls.iter().enumerate() {
                    let id = c
                        .get("id")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad(i, &format!("tool_calls[{k}] needs an 'id'")))?;
                    let f = c
                        .get("function")
                        .ok_or_else(|| bad(i, &format!("tool_calls[{k}] needs a 'function'")))?;
                    let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                        bad(i, &format!("tool_calls[{k}].function needs a 'name'"))
                    })?;
                    let args = match f.get("arguments") {
                        None | Some(Value::Null) => json!({}),
                        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
                            bad(
                                i,
                                &format!(
                                    "tool_calls[{k}].function.arguments is not valid JSON: {e}"
                                ),
                            )
                        })?,
                        Some(v) => v.clone(),
                    };
                    call_ids.push((id.to_string(), name.to_string()));
                    rendered.push(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}));
                }
                if format == ToolFormat::Generic {
                    let calls: Vec<Value> = rendered.iter().map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]})).collect();
                    msg.insert(
                        "content".into(),
                        json!(json!({"tool_calls": calls}).to_string()),
                    );
                } else {
                    // Null content becomes "" (as llama.cpp passes it): templates such as
                    // Qwen3's test `'</think>' in content`, which fails on null.
                    msg.insert("content".into(), json!(text));
                    msg.insert("tool_calls".into(), Value::Array(rendered));
                }
            }
            "tool" => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    bad(
                        i,
                        "a tool message needs the 'tool_call_id' of the call it answers",
                    )
                })?;
                let Some((_, name)) = call_ids.iter().find(|(c, _)| c == id) else {
                    return Err(bad(i, &format!("tool message answers call '{id}', but no earlier assistant message made that call")));
                };
                if format == ToolFormat::Generic || tool_role_as_user {
                    let body = json!({"tool_response": {"name": name, "tool_call_id": id, "content": text}}).to_string();
                    msg.insert(
                        "role".into(),
                        json!(if tool_role_as_user { "user" } else { "tool" }),
                    );
                    msg.insert("content".into(), json!(body));
                } else {
                    msg.insert("content".into(), json!(text));
                    msg.insert("tool_call_id".into(), json!(id));
                    msg.insert("name".into(), json!(name));
                }
            }
            _ => {
                msg.insert("content".into(), json!(text));
            }
        }
        if let Some(n) = &m.name {
            if role != "tool" {
                msg.insert("name".into(), json!(n));
            }
        }
        out.push(Value::Object(msg));
    }
    if format == ToolFormat::Generic {
        if let Some(t) = tools.filter(|t| !t.callable().is_empty()) {
            let instructions = generic_instructions(t);
            match out.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let old = first["content"].as_str().unwrap_or("").to_string();
                    first["content"] = json!(format!("{old}\n\n{instructions}"));
                }
                _ => out.insert(0, json!({"role": "system", "content": instructions})),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_families() {
        assert_eq!(
            ToolFormat::detect("{{ '<tool_call>' }}"),
            ToolFormat::Hermes
        );
        assert_eq!(ToolFormat::detect("[TOOL_CALLS]"), ToolFormat::Mistral);
        assert_eq!(ToolFormat::detect("<|python_tag|>"), ToolFormat::Llama3);
        assert_eq!(ToolFormat::detect("{{ messages }}"), ToolFormat::Generic);
    }
}
