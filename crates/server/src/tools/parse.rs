//! A model's output back into OpenAI tool calls, whole or as it streams.

use std::collections::HashMap;

use serde_json::value::RawValue;
use serde_json::Value;

use super::{ToolFormat, Tools};

/// One call, as OpenAI reports it: the arguments are a JSON string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// Split `text` into the answer's content and its tool calls. Calls naming tools the
/// request did not offer are not calls; what cannot be parsed stays content.
pub fn parse_calls(format: ToolFormat, text: &str, tools: &Tools) -> (String, Vec<ToolCall>) {
    let known = |n: &str| tools.callable().iter().any(|t| t.name == n);
    if format == ToolFormat::Harmony {
        // The channels are always read: the content is the final channel's, whatever
        // the calls.
        let s = verity_tokenizer::harmony::split(text, true);
        let calls = s
            .calls
            .into_iter()
            .filter(|(name, _)| known(name))
            .map(|(name, arguments)| ToolCall {
                name,
                arguments: minify(&arguments),
            })
            .collect();
        return (s.content, calls);
    }
    let parsed = match format {
        ToolFormat::Hermes => hermes(text),
        ToolFormat::Mistral => mistral(text),
        ToolFormat::Llama3 => llama3(text),
        ToolFormat::Generic => generic(text),
        ToolFormat::Harmony => None, // read above
    };
    match parsed {
        Some((content, calls)) if !calls.is_empty() && calls.iter().all(|c| known(&c.name)) => {
            (content, calls)
        }
        Some((content, calls)) if calls.is_empty() && format == ToolFormat::Generic => {
            (content, calls)
        }
        _ => (text.to_string(), Vec::new()),
    }
}

/// One JSON value at the start of `s` (after whitespace), its text, and the rest.
fn json_prefix(s: &str) -> Option<(Value, &str, &str)> {
    let trimmed = s.trim_start();
    let mut it = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
    let v = it.next()?.ok()?;
    let end = it.byte_offset();
    Some((v, &trimmed[..end], &trimmed[end..]))
}

/// `{"name": .., "arguments"|"parameters": ..}` (its text) as a call. The arguments keep
/// the model's own spelling of numbers and strings, with the whitespace between tokens
/// removed, so the streamed fragments (see [`StreamSplitter`]) add up to them exactly.
fn call_of(raw: &str) -> Option<ToolCall> {
    let fields: HashMap<String, Box<RawValue>> = serde_json::from_str(raw).ok()?;
    let name: String = serde_json::from_str(fields.get("name")?.get()).ok()?;
    let args = fields
        .get("arguments")
        .or_else(|| fields.get("parameters"))
        .map_or("{}", |a| a.get());
    Some(ToolCall {
        name,
        arguments: arguments_text(args),
    })
}

fn arguments_text(raw: &str) -> String {
    // Some models write the arguments as a JSON string already.
    if let Ok(s) = serde_json::from_str::<String>(raw) {
        if serde_json::from_str::<Value>(&s).is_ok() {
            return s;
        }
    }
    minify(raw)
}

/// JSON text without whitespace between tokens. Works on a prefix too: the result for a
/// prefix is a prefix of the result for the whole.
pub(super) fn minify(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in raw.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !c.is_whitespace() {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

fn hermes(text: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let first = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(OPEN) {
        let (_, raw, after) = json_prefix(&rest[at + OPEN.len()..])?;
        calls.push(call_of(raw)?);
        let after = after.trim_start();
        rest = after.strip_prefix(CLOSE).unwrap_or(after);
    }
    // Text after the calls (the model went on after its last call) is content too.
    let content = [text[..first].trim_end(), rest.trim()]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Some((content, calls))
}

fn mistral(text: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "[TOOL_CALLS]";
    let first = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(body) = rest.trim_start().strip_prefix(OPEN) {
        if body.trim_start().starts_with('[') {
            // [TOOL_CALLS][{"name": .., "arguments": ..}, ..]
            let (_, raw, after) = json_prefix(body)?;
            let items: Vec<Box<RawValue>> = serde_json::from_str(raw).ok()?;
            for c in items {
                calls.push(call_of(c.get())?);
            }
            rest = after;
        } else {
            // [TOOL_CALLS]name[ARGS]{..}
            let (name, args) = body.split_once("[ARGS]")?;
            let (_, raw, after) = json_prefix(args)?;
            calls.push(ToolCall {
                name: name.trim().to_string(),
                arguments: arguments_text(raw),
            });
            rest = after;
        }
    }
    let rest = rest.trim().trim_end_matches("</s>").trim();
    if !rest.is_empty() {
        return None;
    }
    Some((text[..first].trim_end().to_string(), calls))
}

fn llama3(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let body = text.trim_start();
    let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
    let mut rest = body;
    let mut calls = Vec::new();
    loop {
        let (v, raw, after) = json_prefix(rest)?;
        v.get("parameters").or_else(|| v.get("arguments"))?;
        calls.push(call_of(raw)?);
        let after = after.trim_start();
        rest = after.strip_prefix(';').unwrap_or(after);
        if rest.trim().is_empty() || rest.trim() == "<|eom_id|>" {
            break;
        }
    }
    Some((String::new(), calls))
}

fn generic(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let Some((v, _, rest)) = json_prefix(text) else {
        return generic_cut(text);
    };
    if !rest.trim().is_empty() {
        return None;
    }
    if let Some(r) = v.get("response") {
        return Some((
            r.as_str().map_or_else(|| r.to_string(), str::to_string),
            Vec::new(),
        ));
    }
    v.get("tool_calls")?.as_array()?;
    let outer: HashMap<String, Box<RawValue>> = serde_json::from_str(text.trim()).ok()?;
    let items: Vec<Box<RawValue>> = serde_json::from_str(outer.get("tool_calls")?.get()).ok()?;
    let calls = items
        .iter()
        .map(|c| call_of(c.get()))
        .collect::<Option<Vec<_>>>()?;
    Some((String::new(), calls))
}

/// `{"tool_calls": [call, call, ...` cut off (the answer ran out of tokens): the calls
/// that are complete.
fn generic_cut(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let t = text.trim_start().strip_prefix('{')?.trim_start();
    let t = t
        .strip_prefix("\"tool_calls\"")?
        .trim_start()
        .strip_prefix(':')?;
    let mut rest = t.trim_start().strip_prefix('[')?;
    let mut calls = Vec::new();
    while let Some((_, raw, after)) = json_prefix(rest) {
        calls.push(call_of(raw)?);
        rest = after.trim_start().strip_prefix(',').unwrap_or("");
    }
    (!calls.is_empty()).then_some((String::new(), calls))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tools::{parse_tools, ToolChoice};

    pub(crate) fn tools() -> Tools {
        let v = serde_json::json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
        ]);
        parse_tools(Some(&v), None, None).unwrap().unwrap()
    }

    pub(crate) fn call(name: &str, args: &str) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    /// Each family's output, written as its model writes it.
    pub(crate) const CASES: &[(ToolFormat, &str, &str)] = &[
        // gpt-oss: reasoning, a preamble to the user, then two calls as harmony messages.
        (ToolFormat::Harmony, "<|channel|>analysis<|message|>Two tools needed.<|end|><|start|>assistant<|channel|>commentary<|message|>Let me check.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|><|start|>assistant to=functions.add<|channel|>commentary json<|message|>{\"a\": 1, \"b\": 2}<|call|>", "Let me check."),
        (ToolFormat::Hermes, "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>", "Let me check."),
        (ToolFormat::Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": 2}}", ""),
        (ToolFormat::Llama3, "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"add\", \"parameters\": {\"a\": 1, \"b\": 2}}<|eom_id|>", ""),
        (ToolFormat::Mistral, "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcdef123\"}, {\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}, \"id\": \"abcdef124\"}]</s>", ""),
        (ToolFormat::Mistral, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]add[ARGS]{\"a\": 1, \"b\": 2}", ""),
        (ToolFormat::Generic, "{\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]}", ""),
    ];

    #[test]
    fn every_family_parses_to_the_same_calls_whole_and_streamed() {
        let t = tools();
        let want = vec![
            call("get_weather", r#"{"city":"Paris"}"#),
            call("add", r#"{"a":1,"b":2}"#),
        ];
        for &(format, text, content) in CASES {
            let (c, calls) = parse_calls(format, text, &t);
            assert_eq!((c.as_str(), &calls), (content, &want), "{format:?}: {text}");
        }
    }

    #[test]
    fn plain_answers_stay_content() {
        let t = tools();
        for format in [ToolFormat::Hermes, ToolFormat::Mistral, ToolFormat::Llama3] {
            let text = "The weather is <b>fine</b> [today].";
            assert_eq!(parse_calls(format, text, &t), (text.to_string(), vec![]));
        }
        assert_eq!(
            parse_calls(ToolFormat::Generic, "{\"response\": \"hi\"}", &t),
            ("hi".into(), vec![])
        );
        // A call to a tool that was not offered is not a call.
        let unknown = "<tool_call>{\"name\": \"rm_rf\", \"arguments\": {}}</tool_call>";
        assert!(parse_calls(ToolFormat::Hermes, unknown, &t).1.is_empty());
        let mut named = t.clone();
        named.choice = ToolChoice::Named("add".into());
        assert!(parse_calls(
            ToolFormat::Hermes,
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>",
            &named
        )
        .1
        .is_empty());
    }
}
