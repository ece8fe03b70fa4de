//! One record to one [`Example`]: recognizing its shape, checking its fields, rendering
//! conversations with the chat template and tokenizing with the loss mask.

use std::path::Path;

use serde_json::{Map, Value};
use verity_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

use super::read::kind;
use super::{DataError, DataOptions, Example, Loc, Shape};

/// The roles a message may have. `tool` messages are passed to the template as they are.
const ROLES: &[&str] = &["system", "user", "assistant", "tool"];

/// A record's content, checked.
pub(super) enum Record {
    Messages(Vec<ChatMessage>),
    PromptCompletion { prompt: String, completion: String },
    Text(String),
}

/// A short, printable rendering of a record's keys: `{"a", "b"}`.
fn keys_of(obj: &Map<String, Value>) -> String {
    const MAX_KEYS: usize = 8;
    const MAX_LEN: usize = 40;
    // Sorted: the message must not depend on how serde_json orders a map.
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    let mut parts: Vec<String> = keys
        .into_iter()
        .take(MAX_KEYS)
        .map(|k| {
            if k.chars().count() > MAX_LEN {
                let cut: String = k.chars().take(MAX_LEN).collect();
                format!("{:?}…", cut)
            } else {
                format!("{k:?}")
            }
        })
        .collect();
    if obj.len() > MAX_KEYS {
        parts.push(format!("… {} more", obj.len() - MAX_KEYS));
    }
    format!("{{{}}}", parts.join(", "))
}

/// The shape of a record: the one of `messages`, `prompt`+`completion`, `text` present
/// (keys whose value is null count as absent; other keys are ignored). `Err` is the
/// description of what the record has instead.
pub(super) fn shape_of(value: &Value) -> Result<Shape, String> {
    let Value::Object(obj) = value else {
        return Err(format!("this record is {}, not an object", kind(value)));
    };
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let (m, p, c, t) = (
        has("messages"),
        has("prompt"),
        has("completion"),
        has("text"),
    );
    match (m, p, c, t) {
        (true, false, false, false) => Ok(Shape::Messages),
        (false, true, true, false) => Ok(Shape::PromptCompletion),
        (false, false, false, true) => Ok(Shape::Text),
        (false, true, false, false) => {
            Err("this record has \"prompt\" but no \"completion\"".into())
        }
        (false, false, true, false) => {
            Err("this record has \"completion\" but no \"prompt\"".into())
        }
        (false, false, false, false) => Err(format!("this record has keys {}", keys_of(obj))),
        _ => Err(format!(
            "this record has keys of more than one shape ({}); keep one",
            keys_of(obj)
        )),
    }
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v) => Err(format!("{key:?} must be a string, found {}", kind(v))),
        None => Err(format!("{key:?} is missing")),
    }
}

fn not_a_list(v: &Value) -> String {
    format!(
        "\"messages\" must be an array of {{\"role\", \"content\"}} objects, found {}",
        kind(v)
    )
}

/// Check and extract a record of a known shape.
pub(super) fn parse(value: &Value, shape: Shape) -> Result<Record, String> {
    let Value::Object(obj) = value else {
        return Err(format!("this record is {}, not an object", kind(value)));
    };
    match shape {
        Shape::Text => Ok(Record::Text(string_field(obj, "text")?)),
        Shape::PromptCompletion => Ok(Record::PromptCompletion {
            prompt: string_field(obj, "prompt")?,
            completion: string_field(obj, "completion")?,
        }),
        Shape::Messages => {
            let list = match obj.get("messages") {
                Some(Value::Array(list)) => list,
                Some(v) => return Err(not_a_list(v)),
                None => return Err("\"messages\" is missing".into()),
            };
            let mut out = Vec::with_capacity(list.len());
            for (j, m) in list.iter().enumerate() {
                let n = j + 1;
                let Value::Object(m) = m else {
                    return Err(format!(
                        "message {n} is {}; each message is an object {{\"role\": ..., \"content\": \"...\"}}",
                        kind(m)
                    ));
                };
                let role = string_field(m, "role").map_err(|e| format!("message {n}: {e}"))?;
                if !ROLES.contains(&role.as_str()) {
                    let shown: String = role.chars().take(40).collect();
                    return Err(format!(
                        "message {n}: unknown role {shown:?}; use \"system\", \"user\", \"assistant\" or \"tool\""
                    ));
                }
                let content =
                    string_field(m, "content").map_err(|e| format!("message {n}: {e}"))?;
                out.push(ChatMessage { role, content });
            }
            Ok(Record::Messages(out))
        }
    }
}

/// What tokenizing needs besides the record.
pub(super) struct Ctx<'a> {
    pub path: &'a Path,
    pub tok: &'a Tokenizer,
    pub opts: &'a DataOptions,
    /// The compiled chat template, for messages data.
    pub template: Option<&'a ChatTemplate>,
}

impl Ctx<'_> {
    fn err_tok(&self, at: Loc, e: impl std::fmt::Display) -> DataError {
        DataError::Tokenize {
            path: self.path.to_path_buf(),
            at,
            msg: e.to_string(),
        }
    }

    fn nothing(&self, at: Loc, why: &str) -> DataError {
        DataError::NothingToLearn {
            path: self.path.to_path_buf(),
            at,
            why: why.to_string(),
        }
    }

    /// Encode without added special tokens (special tokens written in the text are parsed).
    fn encode(&self, at: Loc, text: &str) -> Result<Vec<u32>, DataError> {
        self.tok
            .encode(text, false)
            .map_err(|e| self.err_tok(at, e))
    }

    /// BOS, when the model's tokenizer adds one.
    fn bos(&self) -> Option<u32> {
        if self.tok.add_bos() {
            self.tok.bos_id()
        } else {
            None
        }
    }
}

/// Tokens and targets built piece by piece.
#[derive(Default)]
struct Builder {
    tokens: Vec<u32>,
    target: Vec<bool>,
}

impl Builder {
    fn push(&mut self, ids: &[u32], target: bool) {
        self.tokens.extend_from_slice(ids);
        self.target.extend(std::iter::repeat_n(target, ids.len()));
    }
}

/// Tokenize one record. The result is not yet truncated; position 0 is never a target.
pub(super) fn tokenize(cx: &Ctx, at: Loc, record: &Record) -> Result<Example, DataError> {
    let train_all = cx.opts.train_on_prompt;
    let eos = cx.tok.eos_id();
    let mut b = Builder::default();
    match record {
        Record::Text(text) => {
            if text.is_empty() {
                return Err(cx.nothing(at, "the text is empty"));
            }
            b.push(cx.bos().as_slice(), false);
            b.push(&cx.encode(at, text)?, true);
            if let Some(e) = eos {
                if b.tokens.last() != Some(&e) {
                    b.push(&[e], true);
                }
            }
        }
        Record::PromptCompletion { prompt, completion } => {
            if completion.is_empty() {
                return Err(cx.nothing(at, "the completion is empty"));
            }
            b.push(cx.bos().as_slice(), train_all);
            b.push(&cx.encode(at, prompt)?, train_all);
            b.push(&cx.encode(at, completion)?, true);
            if let Some(e) = eos {
                if b.tokens.last() != Some(&e) {
                    b.push(&[e], true);
                }
            }
        }
        Record::Messages(messages) => messages_tokens(cx, at, messages, &mut b)?,
    }
    if let Some(t) = b.target.first_mut() {
        *t = false;
    }
    Ok(Example {
        tokens: b.tokens,
        target: b.target,
    })
}

/// Byte ranges of the assistant turns in `full` (the whole conversation rendered), found by
/// rendering prefixes: turn `i` is what `messages[..=i]` adds to `messages[..i]` rendered
/// with the generation prompt.
fn assistant_spans(
    cx: &Ctx,
    at: Loc,
    template: &ChatTemplate,
    messages: &[ChatMessage],
    full: &str,
) -> Result<Vec<(usize, usize)>, DataError> {
    let render = |m: &[ChatMessage], gen: bool| {
        template.render(m, gen).map_err(|e| DataError::Template {
            path: cx.path.to_path_buf(),
            at,
            msg: e.to_string(),
        })
    };
    let mut spans = Vec::new();
    let mut prev_end = 0;
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let p = render(&messages[..i], true)?;
        let q = render(&messages[..=i], false)?;
        if !q.starts_with(&p) || !full.starts_with(&q) || p.len() < prev_end {
            return Err(DataError::NotIncremental {
                path: cx.path.to_path_buf(),
                at,
                message: i + 1,
            });
        }
        spans.push((p.len(), q.len()));
        prev_end = q.len();
    }
    Ok(spans)
}

fn messages_tokens(
    cx: &Ctx,
    at: Loc,
    messages: &[ChatMessage],
    b: &mut Builder,
) -> Result<(), DataError> {
    let train_all = cx.opts.train_on_prompt;
    if messages.is_empty() {
        return Err(cx.nothing(at, "the conversation has no messages"));
    }
    if !train_all && !messages.iter().any(|m| m.role == "assistant") {
        return Err(cx.nothing(
            at,
            "the conversation has no assistant message (the loss is on assistant turns; --train-on-prompt trains on every token)",
        ));
    }
    let Some(template) = cx.template else {
        return Err(DataError::NoChatTemplate {
            path: cx.path.to_path_buf(),
        });
    };
    let full = template
        .render(messages, false)
        .map_err(|e| DataError::Template {
            path: cx.path.to_path_buf(),
            at,
            msg: e.to_string(),
        })?;
    // Templates that write the BOS token themselves must not get a second one.
    let has_bos = cx
        .tok
        .bos_token_str()
        .is_some_and(|s| !s.is_empty() && full.starts_with(s));
    if !has_bos {
        b.push(cx.bos().as_slice(), false);
    }
    if train_all {
        b.push(&cx.encode(at, &full)?, true);
        return Ok(());
    }
    let spans = assistant_spans(cx, at, template, messages, &full)?;
    let piece = |a: usize, z: usize| {
        full.get(a..z).ok_or_else(|| DataError::Template {
            path: cx.path.to_path_buf(),
            at,
            msg: "an assistant turn does not start or end on a character boundary".into(),
        })
    };
    let mut cursor = 0;
    for (start, end) in spans {
        b.push(&cx.encode(at, piece(cursor, start)?)?, false);
        // The turn's tokens are targets up to and including its last end-of-generation
        // token (`<|im_end|>`, `<|eot_id|>`, ...): what follows it in the turn (a newline
        // before the next `<|im_start|>`) is never generated, so it is not learned.
        let ids = cx.encode(at, piece(start, end)?)?;
        let learn = ids
            .iter()
            .rposition(|&id| cx.tok.is_end_of_generation(id))
            .map_or(ids.len(), |k| k + 1);
        b.push(&ids[..learn], true);
        b.push(&ids[learn..], false);
        cursor = end;
    }
    b.push(&cx.encode(at, piece(cursor, full.len())?)?, false);
    Ok(())
}
