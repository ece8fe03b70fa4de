//! `verity serve` end to end over real HTTP on a free local port: protocol details,
//! hostile requests, auth, queue limits, cancellation and graceful shutdown. The
//! official `openai` client and lm-evaluation-harness are exercised by
//! `tests/clients/*.py`, driven from `serve_clients.rs`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{gauge, http, metrics_until, sample, OpenStream, Server};
use serde_json::{json, Value};

#[test]
fn health_models_tokenize() {
    let s = Server::start(&[]);
    let (status, body) = http(s.port, "GET", "/health", None, &[]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(s.port, "GET", "/v1/models", None, &[]);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    // The same identity `verity hash` reports (OMS root digest of the model file).
    assert_eq!(
        v["data"][0]["root_digest"],
        "16399c58348341f1727030d1fc312a7fb25819f69fcbb6d15fd0687f698a49c4"
    );
    let (_, body) = http(
        s.port,
        "POST",
        "/tokenize",
        Some(r#"{"content":"The capital of France is"}"#),
        &[],
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tokens"], json!([504, 3575, 282, 4649, 314]));
    let (_, body) = http(
        s.port,
        "POST",
        "/detokenize",
        Some(r#"{"tokens":[504, 3575, 282, 4649, 314]}"#),
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["content"],
        "The capital of France is"
    );
    let (status, body) = http(s.port, "GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    assert!(
        body.contains("verity_requests_total") && body.contains("verity_queue_depth"),
        "{body}"
    );
}

/// The load gauges routers read, under verity's names and vLLM's (the Gateway API
/// Inference Extension's endpoint picker reads vLLM's by default): with four long requests
/// on two slots, two run and two wait; KV cache use is the tokens the running requests
/// hold over slots × context, so it rises with prompt length, and it is 0 again once they
/// end, though the idle slots keep their prefixes for reuse.
#[test]
fn metrics_report_waiting_running_and_kv_cache_use() {
    let s = Server::start(&["--parallel", "2", "--ctx", "1024"]);
    let port = s.port;
    let capacity = 2.0 * 1024.0;
    let both = |m: &str, verity: &str, vllm: &str| -> f64 {
        let v = gauge(m, verity).unwrap_or_else(|| panic!("no {verity}:\n{m}"));
        let (labels, w) = sample(m, vllm).unwrap_or_else(|| panic!("no {vllm}:\n{m}"));
        assert_eq!(v, w, "{verity} and {vllm} differ:\n{m}");
        assert!(
            labels.starts_with("model_name=\"") && labels.ends_with(",engine=\"0\""),
            "{labels}"
        );
        for name in [verity, vllm] {
            assert!(
                m.contains(&format!("# TYPE {name} gauge\n")),
                "{name}:\n{m}"
            );
        }
        v
    };
    // (waiting, running, KV cache use)
    let state = |m: &str| {
        (
            both(m, "verity_queue_depth", "vllm:num_requests_waiting"),
            both(m, "verity_active_slots", "vllm:num_requests_running"),
            both(m, "verity_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
        )
    };
    let (status, m) = http(port, "GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    assert_eq!(state(&m), (0.0, 0.0, 0.0), "{m}");
    assert_eq!(gauge(&m, "verity_kv_cache_capacity_tokens"), Some(capacity));
    assert!(
        !m.contains("lora_requests_info"),
        "LoRA info without adapters (vLLM reports it only with LoRA on):\n{m}"
    );

    // "The capital of France is" (5 tokens) `repeat` times; long enough to be running
    // when the metrics are read, cancelled by dropping the stream.
    let request = |repeat: usize| {
        let prompt: Vec<u32> = [504u32, 3575, 282, 4649, 314].repeat(repeat);
        json!({ "prompt": prompt, "max_tokens": 300, "ignore_eos": true, "stream": true, "temperature": 0.8, "seed": 1 }).to_string()
    };
    let open = |repeat: usize| OpenStream::start(port, "/v1/completions", &request(repeat));

    // Two short prompts in the slots, two more waiting.
    let mut running: Vec<OpenStream> = (0..2).map(|_| open(1)).collect();
    for r in &mut running {
        r.wait_first_token();
    }
    let waiting: Vec<OpenStream> = (0..2).map(|_| open(1)).collect();
    let m = metrics_until(port, "two requests waiting", |m| {
        gauge(m, "verity_queue_depth") == Some(2.0)
    });
    let (_, slots, short_use) = state(&m);
    assert_eq!(slots, 2.0, "{m}");
    // Each running request holds its 5 prompt tokens and at most 300 generated ones.
    let tokens = gauge(&m, "verity_kv_cache_tokens").unwrap();
    assert!((10.0..=610.0).contains(&tokens), "{m}");
    assert_eq!(short_use, tokens / capacity, "{m}");
    assert!(short_use > 0.0 && short_use <= 1.0, "{m}");

    drop(running);
    drop(waiting);
    let m = metrics_until(port, "the cancelled requests gone", |m| {
        gauge(m, "verity_active_slots") == Some(0.0) && gauge(m, "verity_queue_depth") == Some(0.0)
    });
    assert_eq!(state(&m), (0.0, 0.0, 0.0), "{m}");

    // Two 600-token prompts: each holds at least its prompt.
    let mut long: Vec<OpenStream> = (0..2).map(|_| open(120)).collect();
    for r in &mut long {
        r.wait_first_token();
    }
    let (_, m) = http(port, "GET", "/metrics", None, &[]);
    let (waiting, slots, long_use) = state(&m);
    assert_eq!((waiting, slots), (0.0, 2.0), "{m}");
    assert!(
        long_use >= 1200.0 / capacity && long_use <= 1.0,
        "{long_use}:\n{m}"
    );
    assert!(long_use > short_use, "{long_use} <= {short_use}");
}

#[test]
fn greedy_completion_matches_verity_run() {
    let s = Server::start(&[]);
    let req = json!({ "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0 });
    let (status, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&req.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let served = v["choices"][0]["text"].as_str().unwrap().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_verity"))
        .args([
            "run",
            "--raw",
            "--temperature",
            "0",
            "-n",
            "12",
            "--json",
            "The capital of France is",
        ])
        .output()
        .unwrap();
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(served, local["text"].as_str().unwrap());
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 12);
}

/// `echo` + `logprobs` + `max_tokens: 0`: the prompt's own token log-probabilities, as
/// lm-evaluation-harness's loglikelihood requests need; they equal the engine's.
#[test]
fn echo_logprobs_score_the_prompt() {
    let s = Server::start(&[]);
    let req = json!({ "prompt": [504, 3575, 282, 4649, 314, 7042], "max_tokens": 0, "echo": true, "logprobs": 3, "temperature": 0 });
    let (status, body) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(&req.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 6);
    assert!(lp["token_logprobs"][0].is_null());
    assert_eq!(v["choices"][0]["text"], "The capital of France is Paris");
    // " Paris" after "The capital of France is" is the model's top choice.
    let paris = lp["token_logprobs"][5].as_f64().unwrap();
    let top = lp["top_logprobs"][5].as_object().unwrap();
    assert_eq!(top.len(), 3);
    let best = top
        .values()
        .map(|x| x.as_f64().unwrap())
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(paris, best);
    assert!(paris > -0.5 && paris < 0.0, "{paris}");
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![0, 3, 11, 14, 21, 24]);
}

#[test]
fn json_mode_gives_valid_json() {
    let s = Server::start(&[]);
    let req = json!({
        "messages": [{ "role": "user", "content": "Describe a cat as a JSON object with name and age." }],
        "response_format": { "type": "json_object" },
        "max_tokens": 80,
        "seed": 7,
    });
    let (status, body) = http(
        s.port,
        "POST",
        "/v1/chat/completions",
        Some(&req.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    if v["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(parsed.is_object(), "{content}");
    } else {
        assert!(content.trim_start().starts_with('{'), "{content}");
    }
}

/// Malformed and hostile requests each get a 4xx in OpenAI's error shape, and the server
/// keeps serving.
#[test]
fn hostile_requests_get_clear_4xx() {
    let s = Server::start(&["--ctx", "256"]);
    let long_prompt = "word ".repeat(400);
    let cases: Vec<(&str, &str, String, u16)> = vec![
        ("POST", "/v1/chat/completions", "{".into(), 400),
        ("POST", "/v1/chat/completions", "[]".into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": "hi"}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": []}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": 5}]}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "wizard", "content": "x"}]}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e300}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 99999999999999999999}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "temperature": 9}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "n": 1000}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "frobnicate": true}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#.into(), 400),
        ("POST", "/v1/chat/completions", r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}"#.into(), 400),
        ("POST", "/v1/chat/completions", format!(r#"{{"messages": [{{"role": "user", "content": "{long_prompt}"}}]}}"#), 400),
        ("POST", "/v1/completions", r#"{"prompt": [1, 2, 99999999]}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": [-5]}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": []}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": {"a": 1}}"#.into(), 400),
        ("POST", "/v1/completions", r#"{"prompt": "x", "logprobs": 100}"#.into(), 400),
        ("POST", "/v1/completions", format!(r#"{{"prompt": "{long_prompt}"}}"#), 400),
        ("POST", "/tokenize", r#"{"content": 3}"#.into(), 400),
        ("POST", "/detokenize", r#"{"tokens": ["a"]}"#.into(), 400),
        ("GET", "/v1/chat/completions", String::new(), 405),
        ("GET", "/v2/everything", String::new(), 404),
    ];
    for (method, path, body, want) in &cases {
        let (status, resp) = http(s.port, method, path, Some(body), &[]);
        assert_eq!(status, *want, "{method} {path} {body:.80}: {resp}");
        let v: Value = serde_json::from_str(&resp).unwrap_or_else(|_| panic!("not JSON: {resp}"));
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.message: {resp}"));
        assert!(!msg.is_empty() && v["error"]["type"].is_string(), "{resp}");
    }
    let (status, resp) = http(
        s.port,
        "POST",
        "/v1/chat/completions",
        Some(&format!(
            r#"{{"messages": [{{"role": "user", "content": "{long_prompt}"}}]}}"#
        )),
        &[],
    );
    assert_eq!(status, 400);
    assert!(resp.contains("context_length_exceeded"), "{resp}");

    // Invalid UTF-8 and a 10 MB body.
    let (status, _) = raw_request(s.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{\"prompt\":\"\xff\xfe\"}");
    assert_eq!(status, 400);
    let big = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(10 << 20));
    let (status, _) = http(s.port, "POST", "/v1/completions", Some(&big), &[]);
    assert_eq!(status, 413);

    // Random corruptions of a valid body: never a 5xx, never a dead server.
    let valid = r#"{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0.5, "stop": ["\n"]}"#;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200 {
        let mut b = valid.as_bytes().to_vec();
        for _ in 0..1 + rng % 4 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = (rng as usize) % b.len();
            let palette = b"{}[]\":,0-9ez \\";
            b[at] = palette[(rng >> 32) as usize % palette.len()];
        }
        let body = String::from_utf8_lossy(&b).into_owned();
        let (status, resp) = http(s.port, "POST", "/v1/chat/completions", Some(&body), &[]);
        assert!(
            status == 200 || (400..500).contains(&status),
            "{status} for {body}: {resp}"
        );
    }
    assert_eq!(http(s.port, "GET", "/health", None, &[]).0, 200);
}

fn raw_request(port: u16, bytes: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

#[test]
fn api_key_is_required_when_set() {
    let s = Server::start(&["--api-key", "s3cret"]);
    let body = r#"{"prompt": "Hi", "max_tokens": 1}"#;
    let (status, resp) = http(s.port, "POST", "/v1/completions", Some(body), &[]);
    assert_eq!(status, 401, "{resp}");
    assert!(resp.contains("invalid_api_key"));
    let (status, _) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(body),
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(body),
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200);
    assert_eq!(
        http(s.port, "GET", "/health", None, &[]).0,
        200,
        "health needs no key"
    );
}

#[test]
fn full_queue_answers_429_with_retry_after() {
    let s = Server::start(&["--parallel", "1", "--max-queue", "1"]);
    let port = s.port;
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 200, "temperature": 0, "stop": ["zzzz"]}"#;
    let handles: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || http(port, "POST", "/v1/completions", Some(body), &[])))
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<&(u16, String)> = results.iter().filter(|(st, _)| *st == 429).collect();
    assert!(
        !busy.is_empty(),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(st, _)| *st == 200 || *st == 429));
    assert!(busy[0].1.contains("rate_limit_error"));
    let (status, raw) = raw_request(port, format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes());
    assert_eq!(status, 200, "{raw}");
}

#[test]
fn client_disconnect_cancels_generation() {
    let s = Server::start(&["--parallel", "1"]);
    let body =
        r#"{"prompt": "Once upon a time", "max_tokens": 4000, "stream": true, "stop": ["zzzz"]}"#;
    {
        let mut stream = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
        let req = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 2048];
        let _ = stream.read(&mut buf).unwrap();
    } // dropped: the client went away
      // The single slot must free up: a new request completes promptly.
    let start = std::time::Instant::now();
    let (status, _) = http(
        s.port,
        "POST",
        "/v1/completions",
        Some(r#"{"prompt": "Hi", "max_tokens": 2}"#),
        &[],
    );
    assert_eq!(status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the abandoned generation kept the slot"
    );
}

#[test]
fn sigterm_finishes_running_requests() {
    let mut s = Server::start(&[]);
    let port = s.port;
    let h = std::thread::spawn(move || {
        http(
            port,
            "POST",
            "/v1/completions",
            Some(r#"{"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0}"#),
            &[],
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    s.terminate();
    let (status, body) = h.join().unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 48);
    assert_eq!(s.wait(), Some(0));
}

/// A prompt that shares a prefix with an earlier one reuses its cached keys and values.
#[test]
fn shared_prefixes_come_from_the_cache() {
    let s = Server::start(&["--parallel", "2"]);
    let system =
        "You are a helpful assistant who answers questions about geography in one short sentence.";
    let ask = |q: &str| {
        let req = json!({
            "messages": [{ "role": "system", "content": system }, { "role": "user", "content": q }],
            "max_tokens": 4,
            "temperature": 0,
        });
        let (status, body) = http(
            s.port,
            "POST",
            "/v1/chat/completions",
            Some(&req.to_string()),
            &[],
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let first = ask("What is the capital of France?");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = ask("What is the capital of Spain?");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(
        cached >= 20 && cached < prompt,
        "cached {cached} of {prompt}"
    );
}

/// A request that reuses nothing (prompt log-probabilities need every position's logits)
/// takes the slot with the least in it, so another slot's cached prefix survives it.
#[test]
fn scoring_a_prompt_leaves_other_caches_warm() {
    let s = Server::start(&["--parallel", "2"]);
    let post = |path: &str, req: Value| {
        let (status, body) = http(s.port, "POST", path, Some(&req.to_string()), &[]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let system =
        "You are a helpful assistant who answers questions about geography in one short sentence.";
    let ask = |q: &str| {
        let messages =
            json!([{ "role": "system", "content": system }, { "role": "user", "content": q }]);
        let req = json!({ "messages": messages, "max_tokens": 4, "temperature": 0 });
        post("/v1/chat/completions", req)["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(ask("What is the capital of France?"), 0);
    // Both slots are idle, one holding the conversation, one empty.
    let req = json!({ "prompt": system, "max_tokens": 0, "echo": true, "logprobs": 1 });
    let scored = post("/v1/completions", req);
    assert!(scored["choices"][0]["logprobs"]["token_logprobs"][1].is_number());
    let cached = ask("What is the capital of Spain?");
    assert!(
        cached >= 20,
        "the conversation's slot was taken: cached {cached}"
    );
}

/// A model with sliding-window layers (the tiny gpt-oss: window 8) asked the same long
/// prompt again: its slot holds the prompt, but the windows have moved past the position
/// one short of it, so the prompt is computed again, and the answer is the first one's.
/// (A scheduler that counted the offered prefix as kept answered from an empty cache.)
#[test]
fn a_windowed_model_answers_a_repeated_prompt_the_same() {
    let model = std::env::var_os("VERITY_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        })
        .join("test-models/gpt-oss-tiny-Q8_0.gguf");
    let s = Server::start(&["--model", model.to_str().unwrap(), "--parallel", "1"]);
    let prompt = "the license grants you the right to copy ".repeat(30);
    let ask = |prompt: &str| {
        let req = json!({"prompt": prompt, "max_tokens": 40, "temperature": 0});
        let (status, body) = http(
            s.port,
            "POST",
            "/v1/completions",
            Some(&req.to_string()),
            &[],
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let first = ask(&prompt);
    for _ in 0..2 {
        let again = ask(&prompt);
        assert_eq!(again["choices"][0]["text"], first["choices"][0]["text"]);
        assert_eq!(
            again["usage"], first["usage"],
            "nothing reusable: nothing reported cached"
        );
    }
    // A longer prompt that extends what the slot holds does resume: the windows reach
    // the position after the first answer's last token.
    let text = first["choices"][0]["text"].as_str().unwrap();
    let longer = format!("{prompt}{text} and");
    let resumed = ask(&longer);
    let cached = resumed["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    let fresh = Server::start(&["--model", model.to_str().unwrap(), "--parallel", "1"]);
    let req = json!({"prompt": longer, "max_tokens": 40, "temperature": 0});
    let (_, body) = http(
        fresh.port,
        "POST",
        "/v1/completions",
        Some(&req.to_string()),
        &[],
    );
    let expected: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        resumed["choices"][0]["text"], expected["choices"][0]["text"],
        "resumed from {cached}"
    );
    eprintln!("resumed from {cached} cached tokens");
}
