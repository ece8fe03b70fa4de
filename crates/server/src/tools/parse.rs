//! A model's output back into OpenAI tool calls, whole or as it streams.

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
    let parsed = match format {
        ToolFormat::Hermes => hermes(text),
        ToolFormat::Mistral => mistral(text),
        ToolFormat::Llama3 => llama3(text),
        ToolFormat::Generic => generic(text),
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

/// One JSON value at the start of `s` (after whitespace), and the rest.
fn json_prefix(s: &str) -> Option<(Value, &str)> {
    let trimmed = s.trim_start();
    let mut it = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
    let v = it.next()?.ok()?;
    Some((v, &trimmed[it.byte_offset()..]))
}

/// `{"name": .., "arguments"|"parameters": ..}` as a call.
fn call_of(v: &Value) -> Option<ToolCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let arguments = match args {
        // Some models write the arguments as a JSON string already.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok() => s,
        other => other.to_string(),
    };
    Some(ToolCall { name, arguments })
}

fn hermes(text: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let first = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(at) = rest.find(OPEN) {
        let (v, after) = json_prefix(&rest[at + OPEN.len()..])?;
        calls.push(call_of(&v)?);
        let after = after.trim_start();
        rest = after.strip_prefix(CLOSE).unwrap_or(after);
    }
    if !rest.trim().is_empty() {
        return None;
    }
    Some((text[..first].trim_end().to_string(), calls))
}

fn mistral(text: &str) -> Option<(String, Vec<ToolCall>)> {
    const OPEN: &str = "[TOOL_CALLS]";
    let first = text.find(OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(body) = rest.trim_start().strip_prefix(OPEN) {
        if body.trim_start().starts_with('[') {
            // [TOOL_CALLS][{"name": .., "arguments": ..}, ..]
            let (v, after) = json_prefix(body)?;
            for c in v.as_array()? {
                calls.push(call_of(c)?);
            }
            rest = after;
        } else {
            // [TOOL_CALLS]name[ARGS]{..}
            let (name, args) = body.split_once("[ARGS]")?;
            let (v, after) = json_prefix(args)?;
            calls.push(ToolCall {
                name: name.trim().to_string(),
                arguments: v.to_string(),
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
        let (v, after) = json_prefix(rest)?;
        v.get("parameters").or_else(|| v.get("arguments"))?;
        calls.push(call_of(&v)?);
        let after = after.trim_start();
        rest = after.strip_prefix(';').unwrap_or(after);
        if rest.trim().is_empty() || rest.trim() == "<|eom_id|>" {
            break;
        }
    }
    Some((String::new(), calls))
}

fn generic(text: &str) -> Option<(String, Vec<ToolCall>)> {
    let Some((v, rest)) = json_prefix(text) else {
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
    let calls = v
        .get("tool_calls")?
        .as_array()?
        .iter()
        .map(call_of)
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
    while let Some((v, after)) = json_prefix(rest) {
        calls.push(call_of(&v)?);
        rest = after.trim_start().strip_prefix(',').unwrap_or("");
    }
    (!calls.is_empty()).then_some((String::new(), calls))
}

/// Streams an answer's content while holding back what may be a tool call, which is
/// parsed once the answer is complete.
pub struct StreamSplitter {
    format: ToolFormat,
    text: String,
    /// Bytes of `text` already sent as content.
    sent: usize,
    /// A call started (or, for whole-answer formats, may have): hold everything.
    holding: bool,
}

impl StreamSplitter {
    pub fn new(format: ToolFormat) -> Self {
        StreamSplitter {
            format,
            text: String::new(),
            sent: 0,
            holding: false,
        }
    }

    /// Add generated text; returns the content that can be sent now.
    pub fn push(&mut self, delta: &str) -> String {
        self.text.push_str(delta);
        if self.holding {
            return String::new();
        }
        let safe_end = match self.format.marker() {
            Some(marker) => match self.text[self.sent..].find(marker) {
                Some(at) => {
                    self.holding = true;
                    self.sent + at
                }
                // Hold a tail that could be the start of the marker.
                None => {
                    let tail = (1..marker.len())
                        .rev()
                        .find(|&k| self.text.ends_with(&marker[..k]))
                        .unwrap_or(0);
                    self.text.len() - tail
                }
            },
            None => {
                // The whole answer is the call (Llama 3) or JSON (generic): decide at the
                // first non-space character.
                match self.text.trim_start().chars().next() {
                    None => self.sent,
                    Some('{') | Some('<') | Some('[') => {
                        self.holding = true;
                        self.sent
                    }
                    Some(_) if self.format == ToolFormat::Generic => {
                        self.holding = true;
                        self.sent
                    }
                    Some(_) => self.text.len(),
                }
            }
        };
        let safe_end = floor_char_boundary(&self.text, safe_end);
        let out = self.text[self.sent..safe_end].to_string();
        self.sent = safe_end;
        out
    }

    /// The answer is complete: the content not yet sent, and the calls.
    pub fn finish(self, tools: &Tools) -> (String, Vec<ToolCall>) {
        let (content, calls) = parse_calls(self.format, &self.text, tools);
        if calls.is_empty() {
            // No call after all: what was held is content. (For the generic format the
            // content is the "response" field, none of which was sent.)
            if self.format == ToolFormat::Generic {
                return (content, calls);
            }
            return (self.text[self.sent..].to_string(), calls);
        }
        // Content before the call that is still unsent.
        let rest = content.get(self.sent..).unwrap_or("").to_string();
        (rest, calls)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{parse_tools, ToolChoice};

    fn tools() -> Tools {
        let v = serde_json::json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
        ]);
        parse_tools(Some(&v), None, None).unwrap().unwrap()
    }

    fn call(name: &str, args: &str) -> ToolCall {
        ToolCall {
            name: name.into(),
            arguments: args.into(),
        }
    }

    /// Each family's output, written as its model writes it.
    const CASES: &[(ToolFormat, &str, &str)] = &[
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
            // Streamed in every split of 3 characters: the same content, the same calls.
            let mut s = StreamSplitter::new(format);
            let mut streamed = String::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(3) {
                streamed.push_str(&s.push(&piece.iter().collect::<String>()));
            }
            let (rest, calls) = s.finish(&t);
            streamed.push_str(&rest);
            assert_eq!(
                (streamed.trim_end(), &calls),
                (content, &want),
                "{format:?} streamed"
            );
        }
    }

    #[test]
    fn plain_answers_stay_content() {
        let t = tools();
        for format in [ToolFormat::Hermes, ToolFormat::Mistral, ToolFormat::Llama3] {
            let text = "The weather is <b>fine</b> [today].";
            assert_eq!(parse_calls(format, text, &t), (text.to_string(), vec![]));
            let mut s = StreamSplitter::new(format);
            let mut out = s.push(text);
            out.push_str(&s.finish(&t).0);
            assert_eq!(out, text);
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
