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
    let model = tmp.path().join("hostile.gguf");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/set-chat-template.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(verity_store::resolve(None).unwrap())
        .arg(&model)
        .arg(&template)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
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
