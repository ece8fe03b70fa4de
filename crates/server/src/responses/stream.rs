//! `stream: true` for `/v1/responses`: the Responses API's numbered events. Text goes out
//! as `response.output_text.delta` while a possible call is held back; a call gets its
//! own output item as soon as the model names its tool, then its arguments in
//! `response.function_call_arguments.delta` fragments as the model writes them.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::{new_item_id, Base, Finish};
use crate::routes::BoxedEvents;
use crate::scheduler::Event;
use crate::tools::{self, Piece, StreamSplitter};

type Events = Vec<Result<SseEvent, Infallible>>;

/// Numbered server-sent events of the Responses API.
struct Emitter {
    seq: u64,
    out: Events,
}

impl Emitter {
    fn ev(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.out
            .push(Ok(SseEvent::default().event(kind).data(data.to_string())));
    }
}

/// A message item being streamed.
struct OpenMessage {
    id: String,
    index: usize,
    text: String,
}

/// A function-call item being streamed.
struct OpenCall {
    item: Value,
    index: usize,
}

/// One streamed response's state.
struct Streaming {
    em: Emitter,
    splitter: Option<StreamSplitter>,
    message: Option<OpenMessage>,
    calls: Vec<OpenCall>,
    /// Finished items, in output order.
    output: Vec<Value>,
}

impl Streaming {
    fn next_index(&self) -> usize {
        self.output.len() + self.message.is_some() as usize + self.calls.len()
    }

    fn content(&mut self, delta: &str) {
        if self.message.is_none() {
            let (id, index) = (new_item_id("msg"), self.next_index());
            self.em.ev("response.output_item.added", json!({"output_index": index, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
            self.em.ev("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            self.message = Some(OpenMessage {
                id,
                index,
                text: String::new(),
            });
        }
        let m = self.message.as_mut().expect("opened above");
        m.text.push_str(delta);
        let (id, index) = (m.id.clone(), m.index);
        self.em.ev("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}));
    }

    /// Close the open message (its text trimmed at the end, as the parsed content is).
    fn close_message(&mut self) {
        let Some(m) = self.message.take() else {
            return;
        };
        let text = m.text.trim_end();
        let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
        self.em.ev("response.output_text.done", json!({"item_id": m.id, "output_index": m.index, "content_index": 0, "text": text, "logprobs": []}));
        self.em.ev(
            "response.content_part.done",
            json!({"item_id": m.id, "output_index": m.index, "content_index": 0, "part": part}),
        );
        let item = json!({"type": "message", "id": m.id, "status": "completed", "role": "assistant", "content": [part]});
        self.em.ev(
            "response.output_item.done",
            json!({"output_index": m.index, "item": item}),
        );
        self.output.push(item);
    }

    fn piece(&mut self, format: tools::ToolFormat, p: Piece) {
        match p {
            // Reasoning is not part of a Responses answer's output text.
            Piece::Reasoning(_) => {}
            Piece::Content(c) => {
                if !self.calls.is_empty() {
                    // Text after the calls: a message of its own, after them.
                    self.close_calls();
                }
                self.content(&c);
            }
            Piece::CallStart { index, name } => {
                self.close_message();
                let item = json!({
                    "type": "function_call", "id": new_item_id("fc"), "call_id": tools::call_id(format, index as u64),
                    "name": name, "arguments": "", "status": "in_progress",
                });
                let at = self.next_index();
                self.em.ev(
                    "response.output_item.added",
                    json!({"output_index": at, "item": item}),
                );
                self.calls.push(OpenCall { item, index: at });
            }
            Piece::Arguments { index, fragment } => {
                let Some(c) = self.calls.get_mut(index) else {
                    return;
                };
                let args = format!("{}{fragment}", c.item["arguments"].as_str().unwrap_or(""));
                c.item["arguments"] = json!(args);
                let (id, at) = (c.item["id"].clone(), c.index);
                self.em.ev(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": at, "delta": fragment}),
                );
            }
        }
    }

    fn close_calls(&mut self) {
        for mut c in std::mem::take(&mut self.calls) {
            c.item["status"] = json!("completed");
            self.em.ev("response.function_call_arguments.done", json!({"item_id": c.item["id"], "output_index": c.index, "name": c.item["name"], "arguments": c.item["arguments"]}));
            self.em.ev(
                "response.output_item.done",
                json!({"output_index": c.index, "item": c.item}),
            );
            self.output.push(c.item);
        }
    }
}

pub(super) fn stream_response(
    base: Base,
    finish: Finish,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> Sse<axum::response::sse::KeepAliveStream<BoxedEvents>> {
    let mut st = Streaming {
        em: Emitter {
            seq: 0,
            out: Vec::new(),
        },
        splitter: finish
            .tool_mode
            .as_ref()
            .map(|t| StreamSplitter::new(finish.format, t.clone())),
        message: None,
        calls: Vec::new(),
        output: Vec::new(),
    };
    let created = base.object("in_progress", Vec::new(), Value::Null, Value::Null);
    st.em.ev("response.created", json!({"response": created}));
    st.em
        .ev("response.in_progress", json!({"response": created}));
    let first = std::mem::take(&mut st.em.out);
    let state = Arc::new(Mutex::new(st));
    let base = Arc::new(base);
    let finish = Arc::new(finish);
    let body = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
        .flat_map(move |ev| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let format = finish.format;
            match ev {
                Event::Token { text, .. } => {
                    let pieces = match &mut s.splitter {
                        Some(sp) => sp.push(&text),
                        None => vec![Piece::Content(text)],
                    };
                    for p in pieces {
                        s.piece(format, p);
                    }
                }
                Event::Done {
                    finish_reason,
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                } => {
                    if let Some(sp) = s.splitter.take() {
                        let (pieces, _) = sp.finish();
                        for p in pieces {
                            s.piece(format, p);
                        }
                    }
                    if s.message.is_none() && s.calls.is_empty() && s.output.is_empty() {
                        // An empty answer is still one (empty) message.
                        s.content("");
                    }
                    s.close_message();
                    s.close_calls();
                    let output = std::mem::take(&mut s.output);
                    let response = finish.done(
                        &base,
                        output,
                        finish_reason,
                        prompt_tokens,
                        cached_tokens,
                        completion_tokens,
                    );
                    let kind = if response["status"] == "incomplete" {
                        "response.incomplete"
                    } else {
                        "response.completed"
                    };
                    s.em.ev(kind, json!({"response": response}));
                }
                Event::Error(e) => {
                    let mut failed = base.object("failed", Vec::new(), Value::Null, Value::Null);
                    s.em.ev(
                        "error",
                        json!({"code": "server_error", "message": e, "param": null}),
                    );
                    failed["error"] = json!({"code": "server_error", "message": e});
                    s.em.ev("response.failed", json!({"response": failed}));
                }
                Event::PromptLogprobs(_) => {}
            }
            stream::iter(std::mem::take(&mut s.em.out))
        });
    let s = stream::iter(first).chain(body);
    Sse::new(Box::pin(s) as BoxedEvents).keep_alive(KeepAlive::default())
}
