//! gpt-oss's "harmony" output: after the prompt's `<|start|>assistant`, the model writes
//! messages, each a header (`<|channel|>analysis`, `<|channel|>final`, or a recipient such
//! as ` to=functions.get_weather<|channel|>commentary json`), `<|message|>`, a body, and an
//! end (`<|end|>`, `<|call|>` or `<|return|>`); later messages open with `<|start|>assistant`.
//!
//! What a user sees: the `final` channel (and recipient-less `commentary`, which harmony
//! shows the user) as content, a message to `functions.NAME` as a call of NAME with the
//! body as its arguments, and the `analysis` channel (the model's reasoning) left out.
//! The server and `verity chat` both read answers this way.

/// Opens a message after the first.
const START: &str = "<|start|>";
/// Ends a message's header.
const MESSAGE: &str = "<|message|>";
/// End a message's body.
const ENDS: [&str; 3] = ["<|end|>", "<|call|>", "<|return|>"];

/// Harmony's markers, each one control token in gpt-oss's vocabulary.
pub const MARKERS: [&str; 7] = [
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
];

/// When `tok` has every one of [`MARKERS`] as a control token (gpt-oss's vocabulary):
/// the ids of all its control tokens, which no message body contains. `None` when the
/// markers would be written as text.
pub fn control_ids(tok: &crate::Tokenizer) -> Option<Vec<u32>> {
    let added = tok.hf().get_added_tokens_decoder();
    let is_control = |m: &&str| {
        tok.token_to_id(m)
            .and_then(|id| added.get(&id))
            .is_some_and(|t| t.special)
    };
    if !MARKERS.iter().all(is_control) {
        return None;
    }
    let mut ids: Vec<u32> = added
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&id, _)| id)
        .collect();
    ids.sort_unstable();
    Some(ids)
}

/// Is `template` a harmony template?
pub fn is_harmony(template: &str) -> bool {
    template.contains("<|channel|>") && template.contains(MESSAGE)
}

/// An answer split into what the client sees, read as far as it has been written.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub content: String,
    /// The `analysis` channel: the model's reasoning, not part of the answer.
    pub reasoning: String,
    /// Calls whose header is complete: the tool's name and its arguments as written so
    /// far.
    pub calls: Vec<(String, String)>,
}

/// Split `text`, the answer so far (`done`: all of it). A body not yet ended keeps back a
/// tail that may be the start of an end marker, so the content and arguments of a prefix
/// are prefixes of the whole's. Text without any harmony header is all content.
pub fn split(text: &str, done: bool) -> Split {
    let mut out = Split::default();
    if !text.contains(MESSAGE) {
        if done || !could_open_header(text) {
            out.content = text.to_string();
        }
        return out;
    }
    for segment in text.split(START) {
        let Some(at) = segment.find(MESSAGE) else {
            continue;
        };
        let (header, rest) = (&segment[..at], &segment[at + MESSAGE.len()..]);
        let body = match ENDS.iter().filter_map(|e| rest.find(e)).min() {
            Some(end) => &rest[..end],
            None if done => rest,
            None => &rest[..rest.len() - held_tail(rest)],
        };
        match recipient(header) {
            Some(r) => {
                if let Some(name) = r.strip_prefix("functions.") {
                    out.calls.push((name.to_string(), body.to_string()));
                }
            }
            None => match channel(header) {
                Some("final") | Some("commentary") | None => out.content.push_str(body),
                Some("analysis") => out.reasoning.push_str(body),
                _ => {}
            },
        }
    }
    out
}

/// Text that may still turn into a harmony header (`<|channel|>` not yet written): the
/// first characters of the answer are held until it is clear.
fn could_open_header(text: &str) -> bool {
    let t = text.trim_start();
    t.is_empty()
        || ["<|channel|>", "to="]
            .iter()
            .any(|h| h.starts_with(t) || t.starts_with(h))
}

/// Bytes at the end of `body` that could begin an end marker or the next message.
fn held_tail(body: &str) -> usize {
    let markers = ENDS.iter().chain(std::iter::once(&START));
    (1..=body.len().min(12))
        .rev()
        .find(|&k| {
            body.is_char_boundary(body.len() - k)
                && markers
                    .clone()
                    .any(|m| m.starts_with(&body[body.len() - k..]))
        })
        .unwrap_or(0)
}

/// The header's `<|channel|>` name.
fn channel(header: &str) -> Option<&str> {
    let at = header.find("<|channel|>")? + "<|channel|>".len();
    word(&header[at..])
}

/// The header's `to=` recipient.
fn recipient(header: &str) -> Option<&str> {
    let at = header.find("to=")? + 3;
    word(&header[at..])
}

/// Up to the next space or special token.
fn word(s: &str) -> Option<&str> {
    let end = s.find([' ', '<']).unwrap_or(s.len());
    (end > 0).then_some(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "<|channel|>analysis<|message|>The user wants weather.<|end|><|start|>assistant<|channel|>final<|message|>It is sunny in Paris.<|return|>";
    const CALL: &str = "<|channel|>analysis<|message|>Need the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>";
    const CALL_TEMPLATE_ORDER: &str =
        " to=functions.add<|channel|>commentary json<|message|>{\"a\":1,\"b\":2}<|call|>";

    #[test]
    fn final_channel_is_content_and_reasoning_is_left_out() {
        let s = split(ANSWER, true);
        assert_eq!(s.content, "It is sunny in Paris.");
        assert_eq!(s.reasoning, "The user wants weather.");
        assert!(s.calls.is_empty());
    }

    #[test]
    fn messages_to_functions_are_calls() {
        let s = split(CALL, true);
        assert_eq!(s.content, "");
        assert_eq!(
            s.calls,
            vec![("get_weather".into(), "{\"city\": \"Paris\"}".into())]
        );
        let s = split(CALL_TEMPLATE_ORDER, true);
        assert_eq!(s.calls, vec![("add".into(), "{\"a\":1,\"b\":2}".into())]);
    }

    #[test]
    fn plain_text_is_content() {
        assert_eq!(split("Hello there.", true).content, "Hello there.");
        assert_eq!(split("Hello there.", false).content, "Hello there.");
    }

    /// Every prefix's content and arguments are prefixes of the whole's, whatever the cut.
    #[test]
    fn prefixes_grow_monotonically() {
        for text in [ANSWER, CALL, CALL_TEMPLATE_ORDER, "Plain answer"] {
            let whole = split(text, true);
            let mut last = Split::default();
            for cut in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                let s = split(&text[..cut], false);
                assert!(
                    whole.content.starts_with(&s.content),
                    "{text:?} at {cut}: {s:?}"
                );
                assert!(s.content.starts_with(&last.content), "{text:?} at {cut}");
                assert!(
                    whole.reasoning.starts_with(&s.reasoning),
                    "{text:?} at {cut}"
                );
                assert!(s.calls.len() <= whole.calls.len());
                for (c, w) in s.calls.iter().zip(&whole.calls) {
                    assert_eq!(c.0, w.0);
                    assert!(w.1.starts_with(&c.1), "{text:?} at {cut}: {c:?}");
                }
                last = s;
            }
        }
    }
}
