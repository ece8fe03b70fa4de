//! A streamed answer split as it arrives: content is sent at once, while what may be a
//! tool call is held back; a call is sent as OpenAI streams one (its name first, then its
//! arguments in fragments as the model writes them), and the whole answer is parsed
//! again at the end to check and finish what was sent.

use super::parse::{minify, parse_calls, ToolCall};
use super::{ToolFormat, Tools};

/// What a stream sends next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Content(String),
    /// More of the model's reasoning (harmony's `analysis` channel), shown apart from
    /// the answer.
    Reasoning(String),
    /// A call begins: its index among the answer's calls, and the tool's name.
    CallStart {
        index: usize,
        name: String,
    },
    /// More of a call's arguments.
    Arguments {
        index: usize,
        fragment: String,
    },
}

pub struct StreamSplitter {
    format: ToolFormat,
    tools: Tools,
    text: String,
    /// Bytes of `text` already sent as content.
    sent: usize,
    /// Bytes of harmony reasoning already sent.
    reasoning_sent: usize,
    /// A call started (or, for whole-answer formats, may have): hold everything.
    holding: bool,
    /// Calls begun: name, and the argument text sent so far.
    started: Vec<(String, String)>,
}

impl StreamSplitter {
    pub fn new(format: ToolFormat, tools: Tools) -> Self {
        StreamSplitter {
            format,
            tools,
            text: String::new(),
            sent: 0,
            reasoning_sent: 0,
            holding: false,
            started: Vec::new(),
        }
    }

    /// Add generated text; returns what can be sent now.
    pub fn push(&mut self, delta: &str) -> Vec<Piece> {
        self.text.push_str(delta);
        if self.format == ToolFormat::Harmony {
            return self.harmony_pieces(false);
        }
        let mut out = Vec::new();
        if !self.holding {
            let content = self.release_content();
            if !content.is_empty() {
                out.push(Piece::Content(content));
            }
        }
        if self.holding {
            self.stream_calls(&mut out);
        }
        out
    }

    /// The answer is complete: what is left to send, and the answer's calls.
    pub fn finish(mut self) -> (Vec<Piece>, Vec<ToolCall>) {
        let (content, calls) = parse_calls(self.format, &self.text, &self.tools);
        if self.format == ToolFormat::Harmony {
            let keep = if self.tools.parallel { calls.len() } else { 1 };
            let calls = calls.into_iter().take(keep).collect();
            return (self.harmony_pieces(true), calls);
        }
        let mut out = Vec::new();
        let rest = if calls.is_empty() {
            // No call after all: what was held is content. (For the generic format the
            // content is the "response" field, none of which was sent.)
            if self.format == ToolFormat::Generic {
                content
            } else {
                self.text[self.sent..].to_string()
            }
        } else {
            // Content not sent yet: text after the calls.
            let sent = self.text[..self.sent].trim_end();
            content.strip_prefix(sent).unwrap_or("").to_string()
        };
        if !rest.is_empty() {
            out.push(Piece::Content(rest));
        }
        let keep = if self.tools.parallel { calls.len() } else { 1 };
        for (index, call) in calls.iter().take(keep).enumerate() {
            let sent = match self.started.get_mut(index) {
                Some((_, sent)) => std::mem::take(sent),
                None => {
                    out.push(Piece::CallStart {
                        index,
                        name: call.name.clone(),
                    });
                    String::new()
                }
            };
            match call.arguments.strip_prefix(sent.as_str()) {
                Some("") => {}
                Some(fragment) => out.push(Piece::Arguments {
                    index,
                    fragment: fragment.to_string(),
                }),
                // Cannot happen for text that parsed: the fragments are prefixes of it.
                None => tracing::warn!("streamed arguments differ from the parsed call"),
            }
        }
        (out, calls)
    }

    /// Harmony: the answer read again as far as it is written; what grew since is sent
    /// (`sent` counts the bytes of content sent). Each read of a prefix is a prefix of
    /// the next ([`harmony::split`]).
    fn harmony_pieces(&mut self, done: bool) -> Vec<Piece> {
        let s = verity_tokenizer::harmony::split(&self.text, done);
        let mut out = Vec::new();
        if let Some(new) = s
            .reasoning
            .get(self.reasoning_sent..)
            .filter(|c| !c.is_empty())
        {
            out.push(Piece::Reasoning(new.to_string()));
            self.reasoning_sent = s.reasoning.len();
        }
        if let Some(new) = s.content.get(self.sent..).filter(|c| !c.is_empty()) {
            out.push(Piece::Content(new.to_string()));
            self.sent = s.content.len();
        }
        let keep = if self.tools.parallel { usize::MAX } else { 1 };
        let callable = self.tools.callable();
        let known = s
            .calls
            .into_iter()
            .filter(|(name, _)| callable.iter().any(|t| &t.name == name))
            .take(keep);
        for (index, (name, arguments)) in known.enumerate() {
            let arguments = minify(&arguments);
            if index == self.started.len() {
                out.push(Piece::CallStart {
                    index,
                    name: name.clone(),
                });
                self.started.push((name, String::new()));
            }
            let sent = &mut self.started[index].1;
            if let Some(fragment) = arguments.strip_prefix(sent.as_str()) {
                if !fragment.is_empty() {
                    out.push(Piece::Arguments {
                        index,
                        fragment: fragment.to_string(),
                    });
                    sent.push_str(fragment);
                }
            }
        }
        out
    }

    /// Content that cannot be part of a call; starts holding at a call's first sign.
    fn release_content(&mut self) -> String {
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

    /// Send the names and new argument text of the calls in the held text.
    fn stream_calls(&mut self, out: &mut Vec<Piece>) {
        let keep = if self.tools.parallel { usize::MAX } else { 1 };
        let known = |n: &str| self.tools.callable().iter().any(|t| t.name == n);
        for (index, call) in partial_calls(&self.text[self.sent..])
            .into_iter()
            .take(keep)
            .enumerate()
        {
            if index == self.started.len() {
                if !known(&call.name) {
                    return;
                }
                out.push(Piece::CallStart {
                    index,
                    name: call.name.clone(),
                });
                self.started.push((call.name, String::new()));
            }
            let sent = &mut self.started[index].1;
            if let Some(fragment) = call.arguments.strip_prefix(sent.as_str()) {
                if !fragment.is_empty() {
                    out.push(Piece::Arguments {
                        index,
                        fragment: fragment.to_string(),
                    });
                    sent.push_str(fragment);
                }
            }
        }
    }
}

/// A call as far as it has been written.
struct PartialCall {
    name: String,
    /// The arguments object so far, minified.
    arguments: String,
}

/// The calls in `text` whose name is complete and whose arguments object has begun:
/// `"name": "...", "arguments"|"parameters": {` in any of the families' layouts.
fn partial_calls(text: &str) -> Vec<PartialCall> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(rel) = text[pos..].find("\"name\"") {
        let head = pos + rel;
        match call_head(&text[head..]) {
            Head::Incomplete => break,
            Head::NoMatch => pos = head + 1,
            Head::Call { name, value_at } => {
                let value = &text[head + value_at..];
                let (len, done) = value_extent(value);
                out.push(PartialCall {
                    name,
                    arguments: minify(&value[..len]),
                });
                if !done {
                    break;
                }
                pos = head + value_at + len;
            }
        }
    }
    out
}

enum Head {
    Call { name: String, value_at: usize },
    Incomplete,
    NoMatch,
}

/// `"name": "NAME", "arguments": ` at the start of `s`, up to an object's `{`.
fn call_head(s: &str) -> Head {
    let b = s.as_bytes();
    let mut i = "\"name\"".len();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Consume `lit` at `i`: Some(true) if there, Some(false) if the text ends inside it.
    let expect = |i: &mut usize, lit: &[u8]| -> Option<bool> {
        let rest = &b[*i..];
        if rest.starts_with(lit) {
            *i += lit.len();
            Some(true)
        } else if lit.starts_with(rest) {
            Some(false)
        } else {
            None
        }
    };
    macro_rules! step {
        ($lit:expr) => {
            skip_ws(&mut i);
            match expect(&mut i, $lit) {
                Some(true) => {}
                Some(false) => return Head::Incomplete,
                None => return Head::NoMatch,
            }
        };
    }
    step!(b":");
    step!(b"\"");
    let start = i - 1;
    let mut escaped = false;
    loop {
        let Some(&c) = b.get(i) else {
            return Head::Incomplete;
        };
        i += 1;
        match c {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => break,
            _ => {}
        }
    }
    let Ok(name) = serde_json::from_str::<String>(&s[start..i]) else {
        return Head::NoMatch;
    };
    step!(b",");
    skip_ws(&mut i);
    let key = if b[i..].starts_with(b"\"p") {
        &b"\"parameters\""[..]
    } else {
        &b"\"arguments\""[..]
    };
    step!(key);
    step!(b":");
    step!(b"{");
    Head::Call {
        name,
        value_at: i - 1,
    }
}

/// How much of `s` (which starts with `{`) belongs to the object, and whether it closed.
fn value_extent(s: &str) -> (usize, bool) {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in s.char_indices() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return (i + 1, true);
                }
            }
            _ => {}
        }
    }
    (s.len(), false)
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
    use crate::tools::parse::tests::{call, tools, CASES};

    /// Feed `text` in pieces of `n` characters; returns the content, each call's name and
    /// concatenated arguments, and how many argument fragments were sent before the end.
    fn stream(format: ToolFormat, text: &str, n: usize) -> (String, Vec<ToolCall>, usize) {
        let mut s = StreamSplitter::new(format, tools());
        let (mut content, mut calls, mut early) = (String::new(), Vec::<ToolCall>::new(), 0);
        let mut take = |pieces: Vec<Piece>, early_ok: bool, early: &mut usize| {
            for p in pieces {
                match p {
                    Piece::Content(c) => content.push_str(&c),
                    // Reasoning is checked in `harmony_streams_the_final_channel_alone`.
                    Piece::Reasoning(_) => {}
                    Piece::CallStart { index, name } => {
                        assert_eq!(index, calls.len(), "calls start in order");
                        calls.push(call(&name, ""));
                    }
                    Piece::Arguments { index, fragment } => {
                        calls[index].arguments.push_str(&fragment);
                        *early += early_ok as usize;
                    }
                }
            }
        };
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(n) {
            take(s.push(&piece.iter().collect::<String>()), true, &mut early);
        }
        let (rest, parsed) = s.finish();
        take(rest, false, &mut early);
        assert_eq!(
            calls, parsed,
            "{format:?}: the fragments add up to the parsed calls"
        );
        (content, calls, early)
    }

    #[test]
    fn every_family_streams_the_same_calls_in_fragments() {
        let want = vec![
            call("get_weather", r#"{"city":"Paris"}"#),
            call("add", r#"{"a":1,"b":2}"#),
        ];
        for &(format, text, content) in CASES {
            for n in [1, 3, 7, 1000] {
                let (c, calls, early) = stream(format, text, n);
                assert_eq!(
                    (c.trim_end(), &calls),
                    (content, &want),
                    "{format:?} by {n}"
                );
                let incremental = !text.contains("[ARGS]") && n < 1000;
                if incremental {
                    // Arguments go out as they are written, not at the end.
                    assert!(early >= 4, "{format:?} by {n}: {early} early fragments");
                }
            }
        }
    }

    #[test]
    fn plain_answers_stream_as_content() {
        for format in [
            ToolFormat::Hermes,
            ToolFormat::Mistral,
            ToolFormat::Llama3,
            ToolFormat::Harmony,
        ] {
            let text = "The weather is <b>fine</b> [today].";
            let (c, calls, _) = stream(format, text, 4);
            assert_eq!((c.as_str(), calls), (text, vec![]));
        }
    }

    /// gpt-oss without tools: only the final channel streams, as it is written.
    #[test]
    fn harmony_streams_the_final_channel_alone() {
        let text = "<|channel|>analysis<|message|>Think <about> it.<|end|><|start|>assistant<|channel|>final<|message|>Paris is <b>sunny</b>.<|return|>";
        for n in [1, 2, 5, 1000] {
            let (c, calls, _) = stream(ToolFormat::Harmony, text, n);
            assert_eq!(
                (c.as_str(), calls),
                ("Paris is <b>sunny</b>.", vec![]),
                "by {n}"
            );
            let mut s = StreamSplitter::new(ToolFormat::Harmony, tools());
            let chars: Vec<char> = text.chars().collect();
            let mut pieces: Vec<Piece> = chars
                .chunks(n)
                .flat_map(|p| s.push(&p.iter().collect::<String>()))
                .collect();
            pieces.extend(s.finish().0);
            let reasoning: String = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Reasoning(r) => Some(r.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(reasoning, "Think <about> it.", "by {n}");
        }
    }

    #[test]
    fn strings_keep_their_spelling_and_whitespace() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"S\\u00e3o  Paulo, \\\"SP\\\"\"}}\n</tool_call>";
        let (_, calls, _) = stream(ToolFormat::Hermes, text, 2);
        assert_eq!(
            calls,
            vec![call("get_weather", r#"{"city":"S\u00e3o  Paulo, \"SP\""}"#)]
        );
    }
}
