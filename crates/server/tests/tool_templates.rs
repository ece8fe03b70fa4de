//! Tools reach the prompt through the model's own chat template exactly as transformers
//! renders them: for the real templates of Qwen2.5, Qwen3, Llama 3.1 and 3.2, Mistral
//! (Nemo) and Hermes 3 (llama.cpp's `models/templates`, as fetched into the test assets),
//! the server's rendering of a request with tools, parallel tool calls and tool results is
//! byte for byte what `transformers` renders (`render_reference.py`, run with the clients
//! venv's Python at test time, so date-dependent templates agree).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use verity_tokenizer::ChatTemplate;

fn assets() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        })
}

fn client_python() -> PathBuf {
    let venv = std::env::var_os("VERITY_CLIENT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("clients-venv"));
    let py = venv.join("bin/python");
    assert!(
        py.exists(),
        "{} is missing: run scripts/setup-client-venv",
        py.display()
    );
    py
}

/// (template file, BOS, EOS, call-id style)
const TEMPLATES: &[(&str, &str, &str)] = &[
    ("Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"),
    ("Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"),
    (
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    (
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        "<|begin_of_text|>",
        "<|im_end|>",
    ),
    // gpt-oss's "harmony" format, as shipped in its GGUF.
    ("openai-gpt-oss-120b.jinja", "<|startoftext|>", "<|return|>"),
];

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"},
                                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                         "required": ["city"]}}},
        {"type": "function", "function": {"name": "add", "description": "Add two integers.",
          "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    ])
}

fn requests() -> Vec<Value> {
    vec![
        // Tools offered, first turn.
        json!({"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What's the weather in Paris, and what is 2+3?"}],
            "tools": tools()}),
        // A full round trip: two parallel calls, their results, a follow-up.
        json!({"messages": [
            {"role": "user", "content": "What's the weather in Paris, and what is 2+3?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "abcDEF123", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}},
                {"id": "ghiJKL456", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}}]},
            {"role": "tool", "tool_call_id": "abcDEF123", "content": "{\"temperature\": 22, \"sky\": \"clear\"}"},
            {"role": "tool", "tool_call_id": "ghiJKL456", "content": "5"},
            {"role": "assistant", "content": "It is 22 °C and clear in Paris; 2+3 is 5."},
            {"role": "user", "content": "Thanks! And in Rome?"}],
            "tools": tools()}),
        // One call, no parallel.
        json!({"messages": [
            {"role": "user", "content": "Add 40 and 2."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "xyzXYZ789", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 40, \"b\": 2}"}}]},
            {"role": "tool", "tool_call_id": "xyzXYZ789", "content": "42"}],
            "tools": tools()}),
    ]
}

#[test]
fn tools_render_as_transformers_renders_them() {
    let dir = assets().join("chat-templates");
    let mut cases = Vec::new();
    for (file, bos, eos) in TEMPLATES {
        let path = dir.join(file);
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-vocab-vectors",
            path.display()
        );
        for r in requests() {
            cases.push(json!({"template": path, "bos": bos, "eos": eos, "request": r}));
        }
    }
    let mut child = Command::new(client_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/render_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        child.stdin.as_mut().unwrap(),
        json!(cases).to_string().as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut compared = 0;
    for (case, want) in cases.iter().zip(&expected) {
        let src = std::fs::read_to_string(case["template"].as_str().unwrap()).unwrap();
        let t = ChatTemplate::new(
            &src,
            case["bos"].as_str().unwrap(),
            case["eos"].as_str().unwrap(),
        )
        .unwrap();
        let got = verity_server::render_chat_request(&t, &case["request"]);
        match (got, want.get("text").and_then(Value::as_str)) {
            (Ok(g), Some(w)) => {
                assert_eq!(g, w, "{}\nrequest: {}", case["template"], case["request"]);
                compared += 1;
            }
            // Both refuse (Llama 3's templates take one call at a time).
            (Err(e), None) => eprintln!(
                "both refuse {}: verity: {e}; transformers: {}",
                case["template"], want["error"]
            ),
            (g, _) => panic!("{}: verity {g:?}, transformers {want}", case["template"]),
        }
    }
    assert!(
        compared >= TEMPLATES.len() * 2,
        "only {compared} renderings compared"
    );
    eprintln!("{compared} renderings identical");
}
