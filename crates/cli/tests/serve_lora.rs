//! `verity serve` with LoRA adapters, over real HTTP: requests on different adapters and
//! on the base decoded in the same batches give what each gives alone; `/v1/models`,
//! run-time loading and unloading (vLLM's endpoints), refusals, metrics. The adapters are
//! PEFT directories written here with random weights for the default model
//! (SmolLM2-135M: 30 layers, hidden 576, k/v 192).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{gauge, http, metrics_until, sample, OpenStream, Server};
use serde_json::{json, Value};

const N_LAYER: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;

/// A small deterministic generator (xorshift64*), values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        v as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Write a PEFT LoRA directory (r = 8, alpha = 16) updating q_proj and v_proj of every
/// layer with random A and B of amplitude `amp`; `q_out` is q_proj's output size (576
/// fits the model; anything else makes an adapter for another model).
fn write_peft(dir: &Path, seed: u64, amp: f32, q_out: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let r = 8;
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for l in 0..N_LAYER {
        for (module, out) in [("q_proj", q_out), ("v_proj", KV)] {
            let prefix = format!("base_model.model.model.layers.{l}.self_attn.{module}");
            for (half, shape) in [("lora_A", [r, HIDDEN]), ("lora_B", [out, r])] {
                let bytes: Vec<u8> = (0..shape[0] * shape[1])
                    .flat_map(|_| (rng.next() * amp).to_le_bytes())
                    .collect();
                data.push((format!("{prefix}.{half}.weight"), shape.to_vec(), bytes));
            }
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, bytes)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "r": r,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": ["q_proj", "v_proj"],
    });
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
}

/// Adapters `names` in a temporary directory, each with its own weights.
fn adapters(names: &[&str]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let paths = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = tmp.path().join(n);
            write_peft(&p, 17 + i as u64, 0.08, HIDDEN);
            p
        })
        .collect();
    (tmp, paths)
}

fn lora_flags(names: &[&str], paths: &[PathBuf]) -> Vec<String> {
    names
        .iter()
        .zip(paths)
        .flat_map(|(n, p)| ["--lora".to_string(), format!("{n}={}", p.display())])
        .collect()
}

fn start(flags: &[String], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn post(port: u16, path: &str, body: &Value) -> (u16, String) {
    http(port, "POST", path, Some(&body.to_string()), &[])
}

/// The text of a streamed completion or chat completion (server-sent events).
fn streamed_text(body: &str) -> String {
    let mut text = String::new();
    let mut done = false;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        assert!(v.get("error").is_none(), "{v}");
        let c = &v["choices"][0];
        if let Some(t) = c["text"].as_str() {
            text.push_str(t);
        }
        if let Some(t) = c["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert!(done, "stream did not finish: {body}");
    text
}

/// One sampled request: (endpoint, body).
fn request(model: &str, chat: bool, prompt: &str, seed: u64) -> (&'static str, Value) {
    let mut body = json!({
        "max_tokens": 24, "temperature": 0.8, "seed": seed, "stream": true, "ignore_eos": true,
    });
    if !model.is_empty() {
        body["model"] = json!(model);
    }
    if chat {
        body["messages"] = json!([{ "role": "user", "content": prompt }]);
        ("/v1/chat/completions", body)
    } else {
        body["prompt"] = json!(prompt);
        ("/v1/completions", body)
    }
}

fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Base and three adapters in one server: eight concurrent streams, each on the base or an
/// adapter, give exactly what the same request gives alone; adapters change the output;
/// metrics count per adapter.
#[test]
fn mixed_adapter_batches_match_requests_run_alone() {
    let names = ["alpha", "beta", "gamma"];
    let (_tmp, paths) = adapters(&names);
    let s = start(&lora_flags(&names, &paths), &["--parallel", "8"]);
    let (_, models) = http(s.port, "GET", "/v1/models", None, &[]);
    let base_id = serde_json::from_str::<Value>(&models).unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Two prompts, each on the base (by id, and by omitting `model`) and every adapter.
    let reqs: Vec<(&str, Value)> = [
        (
            base_id.as_str(),
            false,
            "Once upon a time, in a quiet village,",
            7,
        ),
        ("alpha", false, "Once upon a time, in a quiet village,", 7),
        ("beta", false, "Once upon a time, in a quiet village,", 7),
        ("gamma", false, "Once upon a time, in a quiet village,", 7),
        ("", true, "Name three colours of the rainbow.", 11),
        ("alpha", true, "Name three colours of the rainbow.", 11),
        ("beta", true, "Name three colours of the rainbow.", 11),
        ("gamma", true, "Name three colours of the rainbow.", 11),
    ]
    .iter()
    .map(|&(m, chat, p, seed)| request(m, chat, p, seed))
    .collect();

    let alone: Vec<String> = reqs
        .iter()
        .map(|(path, body)| {
            let (status, out) = post(s.port, path, body);
            assert_eq!(status, 200, "{out}");
            streamed_text(&out)
        })
        .collect();
    for i in [1, 2, 5, 6] {
        let base = if i < 4 { 0 } else { 4 };
        assert_ne!(
            alone[i], alone[base],
            "adapter request {i} gave the base's text: the adapter changed nothing"
        );
    }
    assert_ne!(
        alone[1], alone[2],
        "two different adapters gave the same text"
    );

    let barrier = Arc::new(Barrier::new(reqs.len()));
    let port = s.port;
    let handles: Vec<_> = reqs
        .iter()
        .cloned()
        .map(|(path, body)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                post(port, path, &body)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (status, out) = h.join().unwrap();
        assert_eq!(status, 200, "{out}");
        assert_eq!(
            streamed_text(&out),
            alone[i],
            "request {i} ({}) changed when batched with others",
            reqs[i].1["model"]
        );
    }

    let (status, m) = http(s.port, "GET", "/metrics", None, &[]);
    assert_eq!(status, 200);
    for name in names {
        // Two prompts, each alone and batched; 24 tokens each.
        assert_eq!(
            metric(
                &m,
                &format!("verity_lora_requests_total{{adapter=\"{name}\"}}")
            ),
            Some(4.0),
            "{m}"
        );
        assert_eq!(
            metric(
                &m,
                &format!("verity_lora_tokens_total{{adapter=\"{name}\"}}")
            ),
            Some(96.0),
            "{m}"
        );
    }
    assert_eq!(metric(&m, "verity_lora_adapters_loaded"), Some(3.0), "{m}");
    assert_eq!(metric(&m, "verity_lora_adapters_running"), Some(0.0), "{m}");
}

/// `lora_requests_info`, under verity's name and vLLM's: one series whose labels name the
/// adapters of running requests and of waiting ones, and `max_lora` (the slots), and
/// whose value is when it was last updated (Unix seconds), as vLLM reports it.
#[test]
fn lora_requests_info_lists_running_and_waiting_adapters() {
    let names = ["alpha", "beta"];
    let (_tmp, paths) = adapters(&names);
    let s = start(&lora_flags(&names, &paths), &["--parallel", "2"]);
    let port = s.port;
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let started = unix_now();
    let info = |m: &str| {
        let (labels, t) = sample(m, "verity_lora_requests_info")
            .unwrap_or_else(|| panic!("no verity_lora_requests_info:\n{m}"));
        assert_eq!(
            sample(m, "vllm:lora_requests_info"),
            Some((labels.clone(), t)),
            "{m}"
        );
        for name in ["verity_lora_requests_info", "vllm:lora_requests_info"] {
            assert!(m.contains(&format!("# TYPE {name} gauge\n")), "{m}");
            assert_eq!(m.matches(&format!("{name}{{")).count(), 1, "{m}");
        }
        (labels, t)
    };
    let idle = r#"max_lora="2",running_lora_adapters="",waiting_lora_adapters="""#;
    let (_, m) = http(port, "GET", "/metrics", None, &[]);
    assert_eq!(info(&m).0, idle);

    // Long streams, cancelled by dropping them.
    let open = |model: &str| {
        let mut body = json!({ "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true, "stream": true, "temperature": 0.8, "seed": 3 });
        if !model.is_empty() {
            body["model"] = json!(model);
        }
        OpenStream::start(port, "/v1/completions", &body.to_string())
    };
    // "alpha" and the base in the two slots, "beta" waiting.
    let mut running = vec![open("alpha"), open("")];
    for r in &mut running {
        r.wait_first_token();
    }
    let waiting = open("beta");
    let m = metrics_until(port, "beta waiting", |m| {
        gauge(m, "verity_queue_depth") == Some(1.0)
            && sample(m, "verity_lora_requests_info")
                .is_some_and(|(l, _)| l.contains(r#"waiting_lora_adapters="beta""#))
    });
    let (labels, t) = info(&m);
    assert_eq!(
        labels,
        r#"max_lora="2",running_lora_adapters="alpha",waiting_lora_adapters="beta""#
    );
    assert!(t >= started - 1.0 && t <= unix_now() + 1.0, "{t}");
    assert_eq!(gauge(&m, "verity_active_slots"), Some(2.0), "{m}");
    assert_eq!(gauge(&m, "verity_lora_adapters_running"), Some(1.0), "{m}");

    drop(running);
    drop(waiting);
    let m = metrics_until(port, "the cancelled requests gone", |m| {
        gauge(m, "verity_active_slots") == Some(0.0)
            && gauge(m, "verity_queue_depth") == Some(0.0)
            && sample(m, "verity_lora_requests_info").is_some_and(|(l, _)| l == idle)
    });
    let (_, later) = info(&m);
    assert!(later >= t, "{later} < {t}");
    assert_eq!(gauge(&m, "verity_lora_adapters_running"), Some(0.0), "{m}");
}

/// `/v1/models` lists adapters with their parent and the root digest of their path;
/// unknown names are 404 `model_not_found`; the base answers to its other names.
#[test]
fn models_list_adapters_and_unknown_models_are_404() {
    let names = ["sql", "poet"];
    let (_tmp, paths) = adapters(&names);
    let s = start(&lora_flags(&names, &paths), &["--parallel", "1"]);
    let (status, body) = http(s.port, "GET", "/v1/models", None, &[]);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    let base_id = data[0]["id"].as_str().unwrap();
    for (name, path) in names.iter().zip(&paths) {
        let e = data
            .iter()
            .find(|e| e["id"] == *name)
            .expect("adapter listed");
        assert_eq!(e["object"], "model");
        assert_eq!(e["owned_by"], "verity");
        assert_eq!(e["parent"], base_id);
        // No server paths in what clients see.
        assert_eq!(e["root"], e["id"]);
        assert_eq!(
            e["root_digest"],
            verity_audit::root_digest(path).unwrap(),
            "{e}"
        );
    }

    for path in ["/v1/completions", "/v1/chat/completions"] {
        let body = json!({ "model": "no-such-adapter", "prompt": "Hi", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2 });
        let mut body = body;
        if path == "/v1/completions" {
            body.as_object_mut().unwrap().remove("messages");
        } else {
            body.as_object_mut().unwrap().remove("prompt");
        }
        let (status, out) = post(s.port, path, &body);
        assert_eq!(status, 404, "{out}");
        let e: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(e["error"]["code"], "model_not_found", "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error");
    }
    // The base by id, by the store's name, and with no model; the answer names the model.
    for model in [json!(base_id), json!("smollm2"), Value::Null, json!("sql")] {
        let mut body = json!({ "prompt": "Hi", "max_tokens": 2, "temperature": 0 });
        if !model.is_null() {
            body["model"] = model.clone();
        }
        let (status, out) = post(s.port, "/v1/completions", &body);
        assert_eq!(status, 200, "{model}: {out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        let want = if model == "sql" { "sql" } else { base_id };
        assert_eq!(v["model"], want);
    }
}

/// A cached prefix computed under one adapter is never reused under another (or the base).
#[test]
fn prefix_cache_never_crosses_adapters() {
    let names = ["one"];
    let (_tmp, paths) = adapters(&names);
    let s = start(&lora_flags(&names, &paths), &["--parallel", "1"]);
    let cached = |model: &str| {
        let body = json!({ "model": model, "prompt": "The quick brown fox jumps over the lazy dog", "max_tokens": 1, "temperature": 0 });
        let (status, out) = post(s.port, "/v1/completions", &body);
        assert_eq!(status, 200, "{out}");
        serde_json::from_str::<Value>(&out).unwrap()["usage"]["prompt_tokens_details"]
            ["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cached(""), 0);
    assert!(cached("") > 0, "the base's prefix is reused");
    assert_eq!(cached("one"), 0, "the adapter reused the base's cache");
    assert!(cached("one") > 0, "the adapter's prefix is reused");
    assert_eq!(cached(""), 0, "the base reused the adapter's cache");
}

/// Run-time loading and unloading: bad files are a 400 naming the problem and the server
/// keeps serving; unloading waits for running requests; afterwards the name is a 404.
#[test]
fn load_and_unload_adapters_at_run_time() {
    let s = start(&[], &["--parallel", "2", "--allow-lora-loading"]);
    let port = s.port;
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    write_peft(&good, 5, 0.08, HIDDEN);
    let load = |name: &str, path: &Path| {
        post(
            port,
            "/v1/load_lora_adapter",
            &json!({ "lora_name": name, "lora_path": path.display().to_string() }),
        )
    };
    let greedy = |model: &str| {
        let body = json!({ "model": model, "prompt": "My favourite food is", "max_tokens": 12, "temperature": 0 });
        let (status, out) = post(port, "/v1/completions", &body);
        (status, out)
    };
    let (status, base_out) = greedy("");
    assert_eq!(status, 200, "{base_out}");
    let base_text = serde_json::from_str::<Value>(&base_out).unwrap()["choices"][0]["text"].clone();

    // Unknown adapter before loading.
    assert_eq!(greedy("good").0, 404);
    let (status, out) = load("good", &good);
    assert_eq!(status, 200, "{out}");
    let (status, out) = greedy("good");
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"], "good");
    assert_ne!(
        v["choices"][0]["text"], base_text,
        "the adapter changed nothing"
    );
    // Same name again: refused.
    let (status, out) = load("good", &good);
    assert_eq!(status, 400, "{out}");

    // Bad adapters: each a 400 in OpenAI's shape whose message names the path.
    let corrupt = tmp.path().join("corrupt");
    write_peft(&corrupt, 6, 0.08, HIDDEN);
    std::fs::write(
        corrupt.join("adapter_model.safetensors"),
        b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\": garbage",
    )
    .unwrap();
    let wrong_shape = tmp.path().join("wrong-shape");
    write_peft(&wrong_shape, 7, 0.08, 320);
    let pickle_dir = tmp.path().join("pickle");
    std::fs::create_dir_all(&pickle_dir).unwrap();
    std::fs::copy(
        good.join("adapter_config.json"),
        pickle_dir.join("adapter_config.json"),
    )
    .unwrap();
    std::fs::write(pickle_dir.join("adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let pickle_file = pickle_dir.join("adapter_model.bin");
    let base_model = verity_store::resolve(None).unwrap();
    let missing = tmp.path().join("missing");
    for (name, path) in [
        ("corrupt", &corrupt),
        ("wrong-shape", &wrong_shape),
        ("pickle-dir", &pickle_dir),
        ("pickle-file", &pickle_file),
        ("a-model", &base_model),
        ("missing", &missing),
    ] {
        let (status, out) = load(name, path);
        assert_eq!(status, 400, "{name}: {out}");
        let e: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains(&*tmp.path().to_string_lossy()) || name == "a-model",
            "{msg}"
        );
        // The server still serves, and the name was not taken.
        assert_eq!(greedy("").0, 200);
        assert_eq!(greedy(name).0, 404);
    }
    // Malformed bodies and names.
    for body in [
        json!({ "lora_name": "x" }),
        json!({ "lora_name": "x", "lora_path": "" }),
        json!({ "lora_name": "", "lora_path": good.display().to_string() }),
        json!({ "lora_name": "has space", "lora_path": good.display().to_string() }),
        json!({ "lora_name": "smollm2", "lora_path": good.display().to_string() }),
        json!({ "lora_name": "x", "lora_path": good.display().to_string(), "extra": 1 }),
    ] {
        let (status, out) = post(port, "/v1/load_lora_adapter", &body);
        assert_eq!(status, 400, "{body}: {out}");
    }

    // Unloading waits for the request running on the adapter; new ones get 404 at once.
    let long = std::thread::spawn(move || {
        let body = json!({ "model": "good", "prompt": "Once upon a time", "max_tokens": 160, "ignore_eos": true, "temperature": 0.7, "seed": 1 });
        let out = post(port, "/v1/completions", &body);
        (out, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(700));
    let unload = std::thread::spawn(move || {
        let out = post(
            port,
            "/v1/unload_lora_adapter",
            &json!({ "lora_name": "good" }),
        );
        (out, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, out) = greedy("good");
    assert_eq!(status, 404, "{out}");
    assert!(out.contains("model_not_found"), "{out}");
    let ((status, out), long_done) = long.join().unwrap();
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 160, "{v}");
    let ((status, out), unload_done) = unload.join().unwrap();
    assert_eq!(status, 200, "{out}");
    assert!(
        unload_done + Duration::from_millis(50) >= long_done,
        "the unload returned before the running request finished"
    );
    let (status, out) = post(
        port,
        "/v1/unload_lora_adapter",
        &json!({ "lora_name": "good" }),
    );
    assert_eq!(status, 404, "{out}");
    assert!(out.contains("model_not_found"), "{out}");
    assert_eq!(greedy("good").0, 404);
    // The name is free again.
    let (status, out) = load("good", &good);
    assert_eq!(status, 200, "{out}");
    assert_eq!(greedy("good").0, 200);
}

/// The API key guards the adapter endpoints like the rest of /v1.
#[test]
fn adapter_endpoints_need_the_api_key() {
    let s = start(
        &[],
        &[
            "--api-key",
            "sekrit",
            "--parallel",
            "1",
            "--allow-lora-loading",
        ],
    );
    let body = json!({ "lora_name": "x", "lora_path": "/nonexistent" }).to_string();
    let (status, _) = http(s.port, "POST", "/v1/load_lora_adapter", Some(&body), &[]);
    assert_eq!(status, 401);
    let (status, _) = http(
        s.port,
        "POST",
        "/v1/unload_lora_adapter",
        Some(r#"{"lora_name": "x"}"#),
        &[],
    );
    assert_eq!(status, 401);
    let auth = [("Authorization", "Bearer sekrit")];
    let (status, out) = http(s.port, "POST", "/v1/load_lora_adapter", Some(&body), &auth);
    assert_eq!(status, 400, "{out}");
}

/// Without --allow-lora-loading the run-time adapter API answers 403 and reads nothing.
#[test]
fn run_time_loading_is_opt_in() {
    let s = start(&[], &["--parallel", "1"]);
    let body = json!({ "lora_name": "x", "lora_path": "/etc/passwd" }).to_string();
    for path in ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"] {
        let (status, out) = http(s.port, "POST", path, Some(&body), &[]);
        assert_eq!(status, 403, "{path}: {out}");
        assert!(out.contains("--allow-lora-loading"), "{out}");
    }
}

/// A bad adapter at startup is a clear error and a non-zero exit.
#[test]
fn bad_adapter_at_startup_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let wrong = tmp.path().join("wrong");
    write_peft(&wrong, 3, 0.08, 320);
    let good = tmp.path().join("good");
    write_peft(&good, 4, 0.08, HIDDEN);
    let run = |lora: &[String]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_verity"))
            .args(["serve", "--port", "0", "--threads", "1"])
            .args(lora)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--lora".into(), format!("w={}", wrong.display())]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--lora w") && err.contains("wrong"), "{err}");
    let (code, err) = run(&[
        "--lora".into(),
        format!("m={}", tmp.path().join("nope").display()),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no such file"), "{err}");
    let (code, err) = run(&["--lora".into(), good.display().to_string()]);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("NAME=PATH"), "{err}");
    let dup = format!("d={}", good.display());
    let (code, err) = run(&["--lora".into(), dup.clone(), "--lora".into(), dup]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("already loaded"), "{err}");
}
