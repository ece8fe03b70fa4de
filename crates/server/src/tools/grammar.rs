//! Grammars that hold a model to the tool-call format of its family, with each call's
//! arguments held to the tool's schema: when `tool_choice` is `required` or names a tool,
//! and always for the generic format (whose answers are JSON either way).

use serde_json::{json, Value};

use super::{ToolFormat, Tools};

/// Most calls in one answer: a small model asked for parallel calls may otherwise repeat
/// calls until it runs out of tokens.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// What to compile.
pub enum ToolGrammar {
    JsonSchema(Value),
    Lark(String),
}

/// JSON laid out compactly, one way: a small model cannot pad it with whitespace.
fn layout() -> Value {
    json!({"whitespace_flexible": false})
}

/// `{"name": NAME, <args_key>: <schema>}` for each tool a call may name.
fn call_schema(tools: &Tools, args_key: &str) -> Value {
    let one = |t: &super::Tool| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, args_key: t.parameters},
            "required": ["name", args_key],
            "additionalProperties": false,
        })
    };
    let callable = tools.callable();
    if callable.len() == 1 {
        one(callable[0])
    } else {
        json!({"anyOf": callable.into_iter().map(one).collect::<Vec<_>>()})
    }
}

/// JSON laid out as Python's `json.dumps` writes it (`", "` and `": "`), which is how the
/// templates show calls to the models: a call the model opened itself keeps its own style.
fn dumps_layout() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
}

/// Lark's `%json {...}` with the compact layout.
fn lark_json(schema: &Value) -> String {
    lark_json_with(schema, layout())
}

fn lark_json_with(schema: &Value, layout: Value) -> String {
    let mut s = schema.clone();
    if let Value::Object(o) = &mut s {
        o.insert("x-guidance".into(), layout);
    }
    format!("%json {s}")
}

/// A call the model may open in `auto` mode: held to the tools' schemas from its
/// trigger on.
pub struct LazyToolGrammar {
    pub trigger: &'static str,
    pub at_start: bool,
    /// One call (Hermes) or the whole call list (Mistral, Llama 3), trigger included.
    pub lark: String,
    pub max_calls: usize,
}

/// The lazy grammar for `auto` mode, for formats whose calls the model opens with a
/// marker; `None` when calls are forced (see [`tool_grammar`]) or the format has none.
pub fn lazy_tool_grammar(format: ToolFormat, tools: &Tools) -> Option<LazyToolGrammar> {
    if tools.callable().is_empty() || tools.forced() {
        return None;
    }
    let many = tools.parallel;
    match format {
        ToolFormat::Hermes => Some(LazyToolGrammar {
            trigger: "<tool_call>",
            at_start: false,
            lark: format!(
                "start: \"<tool_call>\" \"\\n\"? body \"\\n\"? \"</tool_call>\"\nbody: {}\n",
                lark_json_with(&call_schema(tools, "arguments"), dumps_layout())
            ),
            max_calls: if many { MAX_PARALLEL_CALLS } else { 1 },
        }),
        ToolFormat::Mistral => {
            let max = if many { MAX_PARALLEL_CALLS } else { 1 };
            let arr = json!({"type": "array", "items": call_schema(tools, "arguments"),
                               "minItems": 1, "maxItems": max});
            Some(LazyToolGrammar {
                trigger: "[TOOL_CALLS]",
                at_start: false,
                lark: format!(
                    "start: \"[TOOL_CALLS]\" \" \"? body\nbody: {}\n",
                    lark_json_with(&arr, dumps_layout())
                ),
                max_calls: 1,
            })
        }
        ToolFormat::Llama3 => {
            let body = lark_json_with(&call_schema(tools, "parameters"), dumps_layout());
            let start = if many {
                "body (\"; \" body){0,7}"
            } else {
                "body"
            };
            Some(LazyToolGrammar {
                trigger: "{",
                at_start: true,
                lark: format!("start: {start}\nbody: {body}\n"),
                max_calls: 1,
            })
        }
        // Harmony's markers are control tokens, which the grammars do not spell.
        ToolFormat::Harmony | ToolFormat::Generic => None,
    }
}

/// The grammar for this request, if its output is to be constrained.
pub fn tool_grammar(format: ToolFormat, tools: &Tools) -> Option<ToolGrammar> {
    if tools.callable().is_empty() {
        return None;
    }
    let many = tools.parallel;
    match format {
        ToolFormat::Generic => {
            let max = if many { MAX_PARALLEL_CALLS } else { 1 };
            let calls = json!({"type": "array", "items": call_schema(tools, "arguments"),
                               "minItems": 1, "maxItems": max});
            let call_obj = json!({
                "type": "object", "properties": {"tool_calls": calls},
                "required": ["tool_calls"], "additionalProperties": false,
            });
            let schema = if tools.forced() {
                call_obj
            } else {
                json!({"anyOf": [call_obj, {
                    "type": "object", "properties": {"response": {"type": "string"}},
                    "required": ["response"], "additionalProperties": false,
                }]})
            };
            Some(ToolGrammar::JsonSchema(schema))
        }
        _ if !tools.forced() => None,
        ToolFormat::Harmony => None,
        ToolFormat::Hermes => {
            let body = lark_json(&call_schema(tools, "arguments"));
            let start = if many {
                "call (\"\\n\" call){0,7}"
            } else {
                "call"
            };
            Some(ToolGrammar::Lark(format!(
                "start: {start}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: {body}\n"
            )))
        }
        ToolFormat::Llama3 => {
            let body = lark_json(&call_schema(tools, "parameters"));
            let start = if many {
                "body (\"; \" body){0,7}"
            } else {
                "body"
            };
            Some(ToolGrammar::Lark(format!("start: {start}\nbody: {body}\n")))
        }
        ToolFormat::Mistral => {
            let max = if many { MAX_PARALLEL_CALLS } else { 1 };
            let arr = json!({"type": "array", "items": call_schema(tools, "arguments"),
                               "minItems": 1, "maxItems": max});
            Some(ToolGrammar::Lark(format!(
                "start: \"[TOOL_CALLS]\" body\nbody: {}\n",
                lark_json(&arr)
            )))
        }
    }
}
