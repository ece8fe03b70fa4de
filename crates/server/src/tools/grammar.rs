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
        // A harmony call opens with a header of several control tokens; in `auto` mode it
        // is parsed, not held to the schemas (forced calls are: see `harmony_call`).
        ToolFormat::Harmony | ToolFormat::Generic => None,
    }
}

/// A call forced in harmony (gpt-oss): reasoning on the analysis channel if the model
/// wants it, then one commentary message to `functions.NAME` whose body is the arguments,
/// ended by `<|call|>` (which ends the turn, so one call per answer). `control`: the
/// vocabulary's control tokens when harmony's markers are among them (gpt-oss's); the
/// grammar then names the markers as tokens and keeps every control token out of the
/// reasoning. Otherwise the markers are text.
fn harmony_call(tools: &Tools, control: Option<&[u32]>) -> String {
    let m = |name: &str| match control {
        Some(_) => format!("<|{name}|>"),
        None => format!("\"<|{name}|>\""),
    };
    let reasoning = match control {
        Some(ids) => format!("<[^{}]>*", id_ranges(ids)),
        None => "REASONING\nREASONING: /[^<]*/".to_string(),
    };
    let mut g = format!(
        "start: analysis? call\ncall: {} \"commentary to=functions.\" (",
        m("channel")
    );
    for (i, t) in tools.callable().iter().enumerate() {
        if i > 0 {
            g.push_str(" | ");
        }
        g.push_str(&format!(
            "\"{} \" {} \"json\" {} args{i}",
            t.name,
            m("constrain"),
            m("message")
        ));
    }
    g.push_str(&format!(") {}\n", m("call")));
    for (i, t) in tools.callable().iter().enumerate() {
        g.push_str(&format!("args{i}: {}\n", lark_json(&t.parameters)));
    }
    // The reasoning rule last: in the text case it ends with its terminal's definition.
    g.push_str(&format!(
        "analysis: {} \"analysis\" {} reasoning {} {} \"assistant\"\nreasoning: {reasoning}\n",
        m("channel"),
        m("message"),
        m("end"),
        m("start"),
    ));
    g
}

/// Sorted ids as llguidance's token ranges: `3-7,9`.
fn id_ranges(ids: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ids[i].to_string()
        } else {
            format!("{}-{}", ids[i], ids[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The grammar for this request, if its output is to be constrained. `harmony_control`:
/// see [`harmony_call`].
pub fn tool_grammar(
    format: ToolFormat,
    tools: &Tools,
    harmony_control: Option<&[u32]>,
) -> Option<ToolGrammar> {
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
        ToolFormat::Harmony => Some(ToolGrammar::Lark(harmony_call(tools, harmony_control))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_merge_runs() {
        assert_eq!(id_ranges(&[]), "");
        assert_eq!(id_ranges(&[5]), "5");
        assert_eq!(id_ranges(&[1, 2, 3, 7, 9, 10]), "1-3,7,9-10");
    }
}
