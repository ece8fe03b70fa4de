//! Serving for agents: tool calling, structured output and the Responses API with the real
//! `openai` and `openai-agents` clients (`clients/tools_client.py`), bad tool requests, and
//! a hostile chat template that must neither hang a request nor take the server down.

mod common;

use common::client_python;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, Server};
use serde_json::{json, Value};

#[test]
fn openai_and_agents_clients_call_tools() {
    let s = Server::start(&["--parallel", "2"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tools_client.py");
    let out = Command::new(client_python())
        .arg(&script)
        .arg(format!("http://127.0.0.1:{}", s.port))
        .env("OPENAI_AGENTS_DISABLE_TRACING", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tools_client.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    eprintln!("{stdout}");
}

fn chat(port: u16, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[],
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn weather_tool(parameters: Value) -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": parameters}})
}

#[test]
fn bad_tool_requests_are_clear_4xx_and_the_server_keeps_serving() {
    let s = Server::start(&[]);
    let user = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"messages": user, "tools": [weather_tool(json!("a string"))]}),
            "JSON Schema",
        ),
        (
            json!({"messages": user, "tools": [weather_tool(json!({"type": "string"}))]}),
            "for an object",
        ),
        (
            json!({"messages": user, "tools": [{"type": "retrieval"}]}),
            "only 'function'",
        ),
        (
            json!({"messages": user, "tools": (0..10_000).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect::<Vec<_>>()}),
            "at most 128",
        ),
        (
            json!({"messages": user, "tools": [weather_tool(json!({"type": "object", "properties": {"x": {"type": "string", "description": "y".repeat(1 << 20)}}}))]}),
            "bytes",
        ),
        (
            json!({"messages": user, "tools": [weather_tool(json!({"type": "object"}))], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "not among the tools",
        ),
        (
            json!({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "22C"}]}),
            "no earlier assistant message",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]}),
            "not valid JSON",
        ),
    ];
    for (body, want) in cases {
        let (status, v) = chat(s.port, &body);
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            (400..500).contains(&status) && msg.contains(want),
            "{status} {msg} (wanted '{want}')"
        );
    }
    // A recursive $ref: either generated to the schema, or refused with a 4xx; never a hang.
    let recursive = json!({"type": "object", "$defs": {"node": {"type": "object", "properties": {"name": {"type": "string"}, "next": {"$ref": "#/$defs/node"}}, "required": ["name"]}},
                          "properties": {"head": {"$ref": "#/$defs/node"}}, "required": ["head"]});
    let (status, v) = chat(
        s.port,
        &json!({"messages": user, "tools": [weather_tool(recursive)], "tool_choice": "required", "max_tokens": 64}),
    );
    assert!(
        status == 200 || (400..500).contains(&status),
        "{status} {v}"
    );
    let (status, body) = http(s.port, "GET", "/health", None, &[]);
    assert_eq!(status, 200, "{body}");
}

/// The default model with its chat template replaced by two nested `range(100000)` loops
/// (written with the reference's gguf-py): a chat request gets a 4xx quickly, and
/// meanwhile `/health` and a plain completion are answered.
#[test]
fn a_template_that_loops_forever_cannot_take_the_server_down() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("loop.jinja");
    std::fs::write(
        &template,
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    )
    .unwrap();
    let model = set_template(tmp.path(), &template);
    let s = Server::start(&["--model", model.to_str().unwrap(), "--parallel", "2"]);
    let port = s.port;
    let started = Instant::now();
    let chat_thread = std::thread::spawn(move || {
        let r = chat(
            port,
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        );
        (r, started.elapsed())
    });
    // While the template runs: health and a plain completion.
    std::thread::sleep(Duration::from_millis(50));
    let (status, _) = http(port, "GET", "/health", None, &[]);
    assert_eq!(status, 200);
    let (status, text) = http(
        port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt": "The capital of France is", "max_tokens": 4}"#),
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let ((status, v), took) = chat_thread.join().unwrap();
    assert!((400..500).contains(&status), "{status} {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too long"),
        "{v}"
    );
    // No timing assertion (machines are shared): the fuel bound, not a timeout, ended it.
    eprintln!("the looping template was refused after {took:?}");
    let (status, _) = http(port, "GET", "/health", None, &[]);
    assert_eq!(status, 200);
    // And /v1/models shows no local path.
    let (_, models) = http(port, "GET", "/v1/models", None, &[]);
    assert!(!models.contains(tmp.path().to_str().unwrap()), "{models}");
}

/// The default model with `template` (a file of the reference's template collection)
/// as its chat template.
fn with_template(dir: &Path, template: &str) -> std::path::PathBuf {
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        });
    set_template(dir, &assets.join("chat-templates").join(template))
}

/// The default model with the chat template in file `template`, written into `dir` with
/// the reference's gguf-py (`scripts/set-chat-template.py`).
fn set_template(dir: &Path, template: &Path) -> std::path::PathBuf {
    let model = dir.join("with-template.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/set-chat-template.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(verity_store::resolve(None).unwrap())
        .arg(&model)
        .arg(template)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    model
}

/// `auto` mode with a Hermes-format template (Qwen2.5's): the model writes free text, or
/// opens `<tool_call>` itself, from which point the call is held to the schema (an enum
/// the model would not pick: it wants "Paris"). `logit_bias` on `<` (token 44) is what
/// makes this small model open a call; it has no say once the grammar holds the output.
#[test]
fn auto_mode_holds_a_call_to_its_schema_once_the_model_opens_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = with_template(tmp.path(), "Qwen-Qwen2.5-7B-Instruct.jinja");
    let s = Server::start(&["--model", model.to_str().unwrap()]);
    let tool = weather_tool(json!({
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Lyon", "Nice"]},
                       "unit": {"type": "string", "enum": ["c", "f"]}},
        "required": ["city"], "additionalProperties": false,
    }));
    let request = |bias: i64, stream: bool| {
        json!({
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [tool], "temperature": 0, "max_tokens": 60, "stream": stream,
            "parallel_tool_calls": false, "logit_bias": {"44": bias},
        })
    };
    let valid = |args: &str| {
        let v: Value = serde_json::from_str(args).unwrap_or_else(|e| panic!("{args}: {e}"));
        let o = v.as_object().unwrap();
        assert!(o.keys().all(|k| k == "city" || k == "unit"), "{args}");
        assert!(
            ["Lyon", "Nice"].contains(&o["city"].as_str().unwrap()),
            "{args}"
        );
        if let Some(u) = o.get("unit") {
            assert!(["c", "f"].contains(&u.as_str().unwrap()), "{args}");
        }
    };

    // Free text stays free: without the nudge the model answers in prose.
    let (status, v) = chat(s.port, &request(0, false));
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert!(choice["message"]["tool_calls"].is_null(), "{v}");
    assert!(
        choice["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{v}"
    );

    // Nudged, it opens a call; the call obeys the schema.
    let (status, v) = chat(s.port, &request(5, false));
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "parallel_tool_calls: false: {v}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = calls[0]["function"]["arguments"]
        .as_str()
        .unwrap()
        .to_string();
    valid(&args);

    // Streamed: id and name first, then the arguments in fragments that add up to the same.
    let (body, deltas) = streamed_tool_deltas(s.port, &request(5, true));
    assert_eq!(deltas[0]["function"]["name"], "get_weather", "{body}");
    assert!(deltas[0]["id"].as_str().is_some_and(|id| !id.is_empty()));
    let fragments: Vec<&str> = deltas[1..]
        .iter()
        .map(|d| d["function"]["arguments"].as_str().unwrap())
        .collect();
    assert!(
        fragments.len() >= 3,
        "arguments in fragments: {fragments:?}"
    );
    assert_eq!(fragments.concat(), args);
}

/// A streamed chat completion's body and its `tool_calls` deltas, in order.
fn streamed_tool_deltas(port: u16, request: &Value) -> (String, Vec<Value>) {
    let (status, body) = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&request.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let deltas = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .flat_map(|c| {
            c["choices"][0]["delta"]["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    (body, deltas)
}

#[test]
fn logit_bias_is_checked() {
    let s = Server::start(&[]);
    let user = json!([{"role": "user", "content": "hi"}]);
    for (bias, want) in [
        (json!({"99999999": 1}), "vocabulary"),
        (json!({"x": 1}), "token ids"),
        (json!({"5": 101}), "-100 to 100"),
    ] {
        let (status, v) = chat(
            s.port,
            &json!({"messages": user, "logit_bias": bias, "max_tokens": 2}),
        );
        assert_eq!(status, 400, "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg}");
        assert_eq!(v["error"]["param"], "logit_bias");
    }
    // -100 bans a token: greedy "The capital of France is" no longer says " Paris".
    let (_, tok) = http(
        s.port,
        "POST",
        "/tokenize",
        Some(r#"{"content": " Paris"}"#),
        &[],
    );
    let id = serde_json::from_str::<Value>(&tok).unwrap()["tokens"][0].clone();
    let completion = |bias: Value| {
        let (_, text) = http(
            s.port,
            "POST",
            "/v1/completions",
            Some(&json!({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0, "logit_bias": bias}).to_string()),
            &[],
        );
        serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(completion(json!({})).starts_with(" Paris"));
    let mut ban = serde_json::Map::new();
    ban.insert(id.to_string(), json!(-100));
    assert!(!completion(Value::Object(ban)).contains("Paris"));
}

/// gpt-oss's harmony template (the real one, in the default model's file): an answer in
/// harmony's channels reaches the client as its final channel, whole and streamed, with the
/// reasoning apart (`reasoning_content`, as llama.cpp's server sends it). The small model does not speak harmony, so a `grammar`
/// makes it write the channels.
#[test]
fn harmony_answers_show_the_final_channel_only() {
    let tmp = tempfile::tempdir().unwrap();
    let model = with_template(tmp.path(), "openai-gpt-oss-120b.jinja");
    let s = Server::start(&["--model", model.to_str().unwrap()]);
    let grammar = r#"start: "<|channel|>analysis<|message|>" /[a-z ]{3,20}/ "<|end|><|start|>assistant<|channel|>final<|message|>" /[A-Za-z ]{3,30}/ "<|return|>""#;
    let request = |stream: bool| {
        json!({
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "temperature": 0, "max_tokens": 80, "stream": stream,
            "grammar": {"type": "lark", "value": grammar},
        })
    };
    let (status, v) = chat(s.port, &request(false));
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!content.is_empty(), "{v}");
    assert!(
        !content.contains("<|") && !content.contains("analysis"),
        "only the final channel is content: {v}"
    );
    assert!(
        content.chars().all(|c| c.is_ascii_alphabetic() || c == ' '),
        "{v}"
    );
    // The analysis channel comes back apart, as llama.cpp's server reports it.
    let reasoning = v["choices"][0]["message"]["reasoning_content"]
        .as_str()
        .unwrap_or_else(|| panic!("no reasoning_content: {v}"))
        .to_string();
    assert!(
        reasoning.len() >= 3
            && reasoning
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == ' '),
        "{v}"
    );

    let (status, body) = http(
        s.port,
        "POST",
        "/v1/chat/completions",
        Some(&request(true).to_string()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let chunks: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .collect();
    let field = |name: &str| -> String {
        chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"][name].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(
        field("content"),
        content,
        "streamed content adds up to the same"
    );
    assert_eq!(
        field("reasoning_content"),
        reasoning,
        "and so does the reasoning"
    );
    eprintln!("harmony answer: {content:?}, reasoning: {reasoning:?}");
}

/// A call forced by `tool_choice` on a harmony template is a harmony call whose arguments
/// obey the schema: with the markers as text (the default model under gpt-oss's template)
/// and as control tokens (the tiny gpt-oss model given gpt-oss's markers and template, as
/// gpt-oss's own vocabulary has them). Random or unrelated weights do not write harmony;
/// the grammar is what makes these answers calls. The random model, which takes the
/// analysis channel, gets a logit bias on `<|end|>` so that its reasoning (any text, no
/// control token) ends at once; the grammar allows `<|end|>` nowhere else.
#[test]
fn forced_harmony_calls_obey_the_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let text_markers = with_template(tmp.path(), "openai-gpt-oss-120b.jinja");
    let token_markers = harmony_vocab_model(tmp.path());
    // gpt-oss's template writes every tool's description.
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "description": "The forecast.", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Lyon", "Nice"]},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
            "required": ["city", "days"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": {
            "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"], "additionalProperties": false}}},
    ]);
    let end_id = verity_model::load(&token_markers)
        .unwrap()
        .tokenizer
        .token_to_id("<|end|>")
        .unwrap();
    for (model, bias) in [
        (&text_markers, json!({})),
        (&token_markers, json!({end_id.to_string(): 50})),
    ] {
        let s = Server::start(&["--model", model.to_str().unwrap()]);
        for (choice, want) in [
            (json!("required"), None),
            (
                json!({"type": "function", "function": {"name": "get_weather"}}),
                Some("get_weather"),
            ),
            (
                json!({"type": "function", "function": {"name": "add"}}),
                Some("add"),
            ),
        ] {
            let request = json!({
                "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                "tools": tools, "tool_choice": choice, "temperature": 0, "max_tokens": 200,
                "logit_bias": bias, "logprobs": true, "top_logprobs": 3,
            });
            let (status, v) = chat(s.port, &request);
            assert_eq!(status, 200, "{v}");
            let choice0 = &v["choices"][0];
            assert_eq!(
                choice0["finish_reason"],
                "tool_calls",
                "{}: {v}",
                model.display()
            );
            let calls = choice0["message"]["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "{v}");
            let name = calls[0]["function"]["name"].as_str().unwrap();
            if let Some(want) = want {
                assert_eq!(name, want, "{v}");
            }
            let args: Value =
                serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{v}: {e}"));
            let o = args.as_object().unwrap();
            match name {
                "get_weather" => {
                    assert!(
                        ["Lyon", "Nice"].contains(&o["city"].as_str().unwrap()),
                        "{v}"
                    );
                    assert!((1..=7).contains(&o["days"].as_i64().unwrap()), "{v}");
                    assert_eq!(o.len(), 2, "{v}");
                }
                "add" => {
                    assert!(o["a"].is_i64() && o["b"].is_i64() && o.len() == 2, "{v}");
                }
                other => panic!("call of an unknown tool {other}: {v}"),
            }
            if model == &token_markers {
                // The markers were written as the vocabulary's control tokens, through an
                // (empty) analysis message: the model takes that branch.
                // Alternatives the grammar ruled out are not listed (their logprob is -inf).
                for t in choice0["logprobs"]["content"].as_array().unwrap() {
                    for alt in t["top_logprobs"].as_array().unwrap() {
                        assert!(alt["logprob"].is_f64(), "{t}");
                    }
                }
                let tokens: Vec<&str> = choice0["logprobs"]["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["token"].as_str().unwrap())
                    .collect();
                for marker in [
                    "<|channel|>",
                    "<|end|>",
                    "<|start|>",
                    "<|constrain|>",
                    "<|message|>",
                ] {
                    assert!(
                        tokens.contains(&marker),
                        "{marker} not one token: {tokens:?}"
                    );
                }
            }
            let content = choice0["message"]["content"].as_str().unwrap_or("");
            assert!(
                !content.contains("<|"),
                "no harmony markers in the content: {v}"
            );
            // Streamed: the same call, its arguments in fragments.
            let mut streamed = request.clone();
            streamed["stream"] = json!(true);
            let (body, deltas) = streamed_tool_deltas(s.port, &streamed);
            assert_eq!(deltas[0]["function"]["name"], name, "{body}");
            let fragments: String = deltas
                .iter()
                .filter_map(|d| d["function"]["arguments"].as_str())
                .collect();
            assert_eq!(
                fragments,
                calls[0]["function"]["arguments"].as_str().unwrap()
            );
            // Cut off by max_tokens before the call ends: reported as cut off.
            let mut short = request.clone();
            let n = v["usage"]["completion_tokens"].as_u64().unwrap();
            short["max_tokens"] = json!(n - 2);
            let (status, cut) = chat(s.port, &short);
            assert_eq!(status, 200, "{cut}");
            assert_eq!(cut["choices"][0]["finish_reason"], "length", "{cut}");
            eprintln!(
                "{}: {name}({args}), reasoning {:?}",
                model.display(),
                choice0["message"]["reasoning_content"]
            );
        }
    }
}

/// The tiny gpt-oss test model with harmony's markers appended to its vocabulary as control
/// tokens (their embedding and output rows copied from token 0), `<|return|>` as its end of
/// text, and gpt-oss's chat template.
fn harmony_vocab_model(dir: &Path) -> std::path::PathBuf {
    use verity_formats::gguf::{Gguf, Value};
    use verity_formats::gguf_write::{GgufWriter, OutTensor};
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        });
    let g = Gguf::open(&assets.join("test-models/gpt-oss-tiny-F32.gguf")).unwrap();
    let template =
        std::fs::read_to_string(assets.join("chat-templates/openai-gpt-oss-120b.jinja")).unwrap();
    let markers = verity_tokenizer::harmony::MARKERS;
    let mut meta = g.metadata.clone();
    let mut n_vocab = 0;
    for (k, v) in meta.iter_mut() {
        match (k.as_str(), v) {
            ("tokenizer.ggml.tokens", Value::Array(a)) => {
                n_vocab = a.len();
                a.extend(markers.iter().map(|m| Value::Str(m.to_string())));
            }
            ("tokenizer.ggml.token_type", Value::Array(a)) => {
                a.extend(markers.iter().map(|_| Value::I32(3)));
            }
            ("tokenizer.chat_template", v) => *v = Value::Str(template.clone()),
            _ => {}
        }
    }
    let ret = markers.iter().position(|&m| m == "<|return|>").unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(&k, v);
    }
    w.set("tokenizer.chat_template", Value::Str(template));
    w.set(
        "tokenizer.ggml.eos_token_id",
        Value::U32((n_vocab + ret) as u32),
    );
    for t in &g.tensors {
        let mut data = g.tensor_data(t).unwrap().to_vec();
        let mut shape = t.shape.clone();
        if t.name == "token_embd.weight" || t.name == "output.weight" {
            assert_eq!(shape[1], n_vocab, "{}", t.name);
            let row = data[..4 * shape[0]].to_vec();
            for _ in markers {
                data.extend_from_slice(&row);
            }
            shape[1] += markers.len();
        }
        w.add_tensor(OutTensor {
            name: t.name.clone(),
            ty: t.ty.unwrap(),
            shape,
            data,
        });
    }
    let path = dir.join("gpt-oss-harmony-vocab.gguf");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    w.write(&mut f).unwrap();
    path
}
