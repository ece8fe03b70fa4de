//! Constrained decoding end to end: `verity serve` samples 200 generated JSON Schemas at
//! temperature 1.0 and every answer validates (checked by Python's `jsonschema`, an
//! independent validator, from the clients venv of `scripts/setup-client-venv`); JSON
//! object, Lark and regex grammars; unsupported keywords and huge schemas are 4xx at once;
//! a constrained row's tokens do not depend on its batch; `verity run --json-schema`.

mod common;

use common::client_python;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{http, Server};
use serde_json::{json, Map, Value};

/// xorshift64*: the schema generator's randomness, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

const NAMES: &[&str] = &[
    "name", "id", "color", "size", "tags", "owner", "count", "city", "kind", "level", "score",
    "code", "items", "parent", "note", "active",
];
const PATTERNS: &[&str] = &[
    "^[a-z]{2,6}$",
    "^[A-Z][a-z]{1,5}$",
    "^[0-9]{3}-[0-9]{4}$",
    "^(red|green|blue)$",
    "^#[0-9a-f]{6}$",
    "^[a-z]{1,8}_[0-9]{1,2}$",
];

/// Random schemas whose instances are small: every string, array and object is bounded,
/// objects are closed (`additionalProperties: false`).
struct SchemaGen {
    rng: Rng,
    defs: Map<String, Value>,
}

impl SchemaGen {
    fn leaf(&mut self) -> Value {
        match self.rng.below(7) {
            0 => {
                let lo = self.rng.range(-50, 50);
                json!({"type": "integer", "minimum": lo, "maximum": lo + self.rng.range(0, 200)})
            }
            1 => json!({"type": "string", "pattern": self.rng.pick(PATTERNS)}),
            2 => {
                let min = self.rng.range(0, 3);
                json!({"type": "string", "minLength": min, "maxLength": min + self.rng.range(1, 10)})
            }
            3 => {
                let mut vals = Vec::new();
                for _ in 0..self.rng.range(2, 4) {
                    vals.push(match self.rng.below(3) {
                        0 => json!(self.rng.range(-9, 99)),
                        1 => json!(*self.rng.pick(&["alpha", "beta", "gamma", "delta", "x y"])),
                        _ => json!(*self.rng.pick(&[true, false])),
                    });
                }
                vals.dedup();
                json!({"enum": vals})
            }
            4 => json!({"type": "boolean"}),
            5 => json!({"type": "null"}),
            _ => json!({"const": *self.rng.pick(&["fixed", "v1", "ok"])}),
        }
    }

    fn def(&mut self) -> Value {
        let (name, schema) = match self.rng.below(3) {
            0 => (
                "point",
                json!({"type": "object", "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100}, "y": {"type": "integer", "minimum": -100, "maximum": 100}}, "required": ["x", "y"], "additionalProperties": false}),
            ),
            1 => ("color", json!({"enum": ["red", "green", "blue", "black"]})),
            _ => (
                "label",
                json!({"type": "string", "pattern": "^[a-z]{1,8}$"}),
            ),
        };
        self.defs.insert(name.into(), schema);
        json!({"$ref": format!("#/$defs/{name}")})
    }

    fn schema(&mut self, depth: usize) -> Value {
        let choice = if depth >= 2 {
            self.rng.below(3)
        } else {
            self.rng.below(7)
        };
        match choice {
            0 | 1 => self.leaf(),
            2 => self.def(),
            3 => self.object(depth + 1, 1, 3),
            4 => {
                let min = self.rng.range(0, 1);
                json!({"type": "array", "items": self.schema(depth + 1), "minItems": min, "maxItems": min + self.rng.range(0, 2)})
            }
            5 => json!({"anyOf": [self.schema(depth + 1), self.schema(depth + 1)]}),
            _ => self.leaf(),
        }
    }

    fn object(&mut self, depth: usize, min_props: usize, max_props: usize) -> Value {
        let n = self.rng.range(min_props as i64, max_props as i64) as usize;
        let mut props = Map::new();
        let mut required = Vec::new();
        while props.len() < n {
            let name = *self.rng.pick(NAMES);
            if props.contains_key(name) {
                continue;
            }
            props.insert(name.into(), self.schema(depth));
            if self.rng.below(4) != 0 {
                required.push(name);
            }
        }
        json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
    }

    /// A top-level object schema, with `$defs` if any reference was made.
    fn top(seed: u64) -> Value {
        let mut g = SchemaGen {
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            defs: Map::new(),
        };
        let mut s = g.object(0, 2, 4);
        if !g.defs.is_empty() {
            s["$defs"] = Value::Object(g.defs);
        }
        s
    }
}

/// Validate each (schema, text) pair with Python's jsonschema (Draft 2020-12); returns the
/// failures, one line each.
fn python_validate(cases: &[(Value, String)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cases.json");
    let list: Vec<Value> = cases
        .iter()
        .map(|(s, t)| json!({"schema": s, "text": t}))
        .collect();
    std::fs::write(&path, serde_json::to_string(&list).unwrap()).unwrap();
    let script = r#"
import json, sys
import jsonschema
bad = []
cases = json.load(open(sys.argv[1]))
for i, c in enumerate(cases):
    try:
        v = json.loads(c["text"])
    except Exception as e:
        bad.append(f"case {i}: not JSON ({e}): {c['text']!r}")
        continue
    jsonschema.Draft202012Validator.check_schema(c["schema"])
    errors = list(jsonschema.Draft202012Validator(c["schema"]).iter_errors(v))
    if errors:
        bad.append(f"case {i}: {errors[0].message}: {c['text']!r} against {json.dumps(c['schema'])}")
print(json.dumps({"checked": len(cases), "bad": bad}))
"#;
    let out = Command::new(client_python())
        .args(["-c", script])
        .arg(&path)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "jsonschema check failed to run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checked"], cases.len());
    v["bad"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn chat(port: u16, body: &Value) -> (u16, Value) {
    let (status, text) = http(
        port,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[],
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

fn schema_request(schema: &Value, seed: u64) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Give an example of JSON data for a small record."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "record", "strict": true, "schema": schema}},
        "temperature": 1.0,
        "seed": seed,
        "max_tokens": 300,
    })
}

#[test]
fn two_hundred_generated_schemas_all_validate() {
    let schemas: Vec<Value> = (0..200).map(SchemaGen::top).collect();
    // The generator covers what it should.
    let all = serde_json::to_string(&schemas).unwrap();
    for feature in [
        "\"anyOf\"",
        "\"$ref\"",
        "\"pattern\"",
        "\"enum\"",
        "\"minItems\"",
        "\"maxItems\"",
        "\"minimum\"",
        "\"maximum\"",
        "\"items\"",
    ] {
        assert!(
            all.matches(feature).count() >= 20,
            "{feature} is rare: {}",
            all.matches(feature).count()
        );
    }
    let nested = schemas
        .iter()
        .filter(|s| s["properties"].to_string().contains("\"properties\""))
        .count();
    assert!(nested >= 40, "{nested} schemas nest objects");

    let s = Server::start(&["--parallel", "8", "--ctx", "1024"]);
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, String, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= schemas.len() {
                    return;
                }
                let (status, v) = chat(s.port, &schema_request(&schemas[i], i as u64));
                assert_eq!(status, 200, "case {i}: {v}");
                let content = v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let finish = v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string();
                results.lock().unwrap().push((i, content, finish));
            });
        }
    });
    let took = t0.elapsed();
    let mut results = results.into_inner().unwrap();
    results.sort();
    let unfinished: Vec<_> = results.iter().filter(|r| r.2 != "stop").collect();
    assert!(unfinished.is_empty(), "not finished: {unfinished:?}");
    let cases: Vec<(Value, String)> = results
        .iter()
        .map(|(i, text, _)| (schemas[*i].clone(), text.clone()))
        .collect();
    // Our own parser agrees that each is JSON.
    for (i, (_, text)) in cases.iter().enumerate() {
        serde_json::from_str::<Value>(text).unwrap_or_else(|e| panic!("case {i}: {e}: {text}"));
    }
    let bad = python_validate(&cases);
    assert!(bad.is_empty(), "{} invalid:\n{}", bad.len(), bad.join("\n"));
    eprintln!("200 schemas sampled and validated in {took:?}");
}

#[test]
fn json_object_lark_and_regex() {
    let s = Server::start(&["--parallel", "4"]);
    // json_object, two choices, one streamed request.
    let (status, v) = chat(
        s.port,
        &json!({
            "messages": [{"role": "user", "content": "Describe a dog."}],
            "response_format": {"type": "json_object"},
            "temperature": 1.0, "seed": 5, "n": 2, "max_tokens": 200,
        }),
    );
    assert_eq!(status, 200, "{v}");
    for c in v["choices"].as_array().unwrap() {
        let text = c["message"]["content"].as_str().unwrap();
        if c["finish_reason"] == "stop" {
            let parsed: Value =
                serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(parsed.is_object(), "{text}");
        } else {
            assert!(text.starts_with('{'), "{text}");
        }
    }
    let body = json!({
        "messages": [{"role": "user", "content": "Pick a color."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {"enum": ["red", "green", "blue"]}}},
        "temperature": 1.0, "seed": 2, "stream": true,
    });
    let (status, text) = http(
        s.port,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        &[],
    );
    assert_eq!(status, 200, "{text}");
    let mut content = String::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            content.push_str(t);
        }
    }
    assert!(
        ["\"red\"", "\"green\"", "\"blue\""].contains(&content.as_str()),
        "{content}"
    );

    // Lark on chat: the answer is one of the grammar's words, and ends there.
    let (status, v) = chat(
        s.port,
        &json!({
            "messages": [{"role": "user", "content": "Is water wet?"}],
            "grammar": {"type": "lark", "value": "start: (\"Yes\" | \"No\") \", because \" /[a-z ]{1,30}/ \".\""},
            "temperature": 1.0, "seed": 1, "max_tokens": 60,
        }),
    );
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{text}");
    let rest = text
        .strip_prefix("Yes, because ")
        .or_else(|| text.strip_prefix("No, because "))
        .unwrap_or_else(|| panic!("{text}"));
    let middle = rest.strip_suffix('.').unwrap_or_else(|| panic!("{text}"));
    assert!(
        (1..=30).contains(&middle.len())
            && middle.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()),
        "{text}"
    );

    // Regex on completions, several seeds.
    for seed in 0..4 {
        let body = json!({
            "prompt": "Call me at",
            "grammar": {"type": "regex", "value": " \\([0-9]{3}\\) [0-9]{3}-[0-9]{4}"},
            "temperature": 1.0, "seed": seed, "max_tokens": 40,
        });
        let (status, text) = http(
            s.port,
            "POST",
            "/v1/completions",
            Some(&body.to_string()),
            &[],
        );
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let out = v["choices"][0]["text"].as_str().unwrap();
        let b = out.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        assert!(
            b.len() == 15
                && out.starts_with(" (")
                && digits(2..5)
                && &out[5..7] == ") "
                && digits(7..10)
                && b[10] == b'-'
                && digits(11..15),
            "{out:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
}

#[test]
fn bad_constraints_are_400s_naming_the_problem() {
    let s = Server::start(&[]);
    let msg = |content: &str| json!([{"role": "user", "content": content}]);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array", "uniqueItems": true}}}}),
            "response_format",
            "uniqueItems",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object", "properties": {"a": {"if": {"type": "string"}, "then": {"minLength": 3}}}}}}}),
            "response_format",
            "\\\"if\\\"",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "format": "credit-card"}}}}),
            "response_format",
            "credit-card",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"$ref": "http://example.com/s.json"}}}}),
            "response_format",
            "http://example.com/s.json",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema"}}),
            "response_format",
            "json_schema",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {}, "stric": true}}}),
            "response_format",
            "stric",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "yaml"}}),
            "response_format",
            "yaml",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "response_format": {"type": "json_object"}, "grammar": {"type": "regex", "value": "a+"}}),
            "grammar",
            "not both",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": msg("x"), "grammar": {"type": "gbnf", "value": "root ::= \"a\""}}),
            "grammar",
            "gbnf",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "grammar": {"type": "lark", "value": "start: undefined_rule"}}),
            "grammar",
            "undefined_rule",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "grammar": {"type": "regex", "value": "[0-9"}}),
            "grammar",
            "unclosed",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "response_format": {"type": "json_object"}}),
            "response_format",
            "response_format",
        ),
    ];
    for (path, body, param, needle) in cases {
        let (status, text) = http(s.port, "POST", path, Some(&body.to_string()), &[]);
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{body}: {text}");
        assert!(text.contains(needle), "{body}: {text}");
        assert!(
            v["error"]["message"].as_str().unwrap().len() < 600,
            "{text}"
        );
    }
    // The server still answers.
    let (status, _) = chat(
        s.port,
        &json!({"messages": msg("hi"), "max_tokens": 2, "response_format": {"type": "text"}}),
    );
    assert_eq!(status, 200);
}

#[test]
fn a_huge_schema_is_refused_at_once_and_the_server_keeps_serving() {
    let s = Server::start(&[]);
    let mut props = Map::new();
    for i in 0..20_000 {
        props.insert(
            format!("property_number_{i}"),
            json!({"type": "string", "description": "padding padding padding"}),
        );
    }
    let schema = json!({"type": "object", "properties": props});
    let body = schema_request(&schema, 1).to_string();
    assert!(body.len() > 1 << 20);
    let port = s.port;
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let health = scope.spawn(|| {
            let mut worst = Duration::ZERO;
            while !done.load(Ordering::SeqCst) {
                let t = Instant::now();
                assert_eq!(http(port, "GET", "/health", None, &[]).0, 200);
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        });
        let t = Instant::now();
        let (status, text) = http(port, "POST", "/v1/chat/completions", Some(&body), &[]);
        let took = t.elapsed();
        done.store(true, Ordering::SeqCst);
        assert!((400..500).contains(&status), "{status}: {text}");
        assert!(text.contains("at most"), "{text}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        let worst = health.join().unwrap();
        assert!(worst < Duration::from_secs(1), "/health took {worst:?}");
    });
    // A thousand-branch schema within the size limit compiles (or is refused) quickly.
    let many = json!({"anyOf": (0..1000).map(|i| json!({
        "type": "object",
        "properties": {"name": {"const": format!("tool_{i}")}, "arguments": {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": false}},
        "required": ["name", "arguments"], "additionalProperties": false
    })).collect::<Vec<_>>()});
    let mut req = schema_request(&many, 3);
    req["max_tokens"] = json!(40);
    let t = Instant::now();
    let (status, v) = chat(s.port, &req);
    assert!(status == 200 || status == 400, "{v}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    let (status, v) = chat(
        s.port,
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    );
    assert_eq!(status, 200, "{v}");
}

/// A constrained row's tokens are its own: the same seeded request gives the same answer
/// alone and in a batch with other constrained and unconstrained requests.
#[test]
fn constrained_rows_do_not_depend_on_the_batch() {
    let s = Server::start(&["--parallel", "4"]);
    let schema = SchemaGen::top(7);
    let req = schema_request(&schema, 42);
    let (status, alone) = chat(s.port, &req);
    assert_eq!(status, 200, "{alone}");
    let alone = alone["choices"][0]["message"]["content"].clone();
    let port = s.port;
    let batched = std::thread::scope(|scope| {
        let others: Vec<_> = (0..3)
            .map(|k| {
                scope.spawn(move || {
                    let body = if k == 0 {
                        json!({"messages": [{"role": "user", "content": "Tell a story."}], "max_tokens": 120, "temperature": 1.0, "seed": k})
                    } else {
                        schema_request(&SchemaGen::top(100 + k), k)
                    };
                    chat(port, &body)
                })
            })
            .collect();
        let mine = chat(port, &req);
        for o in others {
            assert_eq!(o.join().unwrap().0, 200);
        }
        mine
    });
    assert_eq!(batched.0, 200);
    assert_eq!(batched.1["choices"][0]["message"]["content"], alone);
}

#[test]
fn run_with_a_json_schema_file() {
    let dir = tempfile::tempdir().unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog", "fish"]}, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    });
    let path = dir.path().join("person.json");
    std::fs::write(&path, schema.to_string()).unwrap();
    let mut cases = Vec::new();
    for seed in 0..3 {
        let out = Command::new(env!("CARGO_BIN_EXE_verity"))
            .args([
                "run",
                "--threads",
                "2",
                "--json",
                "--temperature",
                "1.0",
                "--seed",
            ])
            .arg(seed.to_string())
            .arg("--json-schema")
            .arg(&path)
            .arg("Invent a person.")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["finish_reason"], "stop", "{v}");
        cases.push((schema.clone(), v["text"].as_str().unwrap().to_string()));
    }
    let bad = python_validate(&cases);
    assert!(bad.is_empty(), "{bad:?}");

    // Streaming to the terminal gives the same kind of answer.
    let out = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args([
            "run",
            "--threads",
            "2",
            "--temperature",
            "1.0",
            "--seed",
            "9",
        ])
        .arg("--json-schema")
        .arg(&path)
        .arg("Invent a person.")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(v["age"].is_number(), "{text}");

    // A schema the engine cannot enforce is refused, naming the keyword.
    let bad_path = dir.path().join("bad.json");
    std::fs::write(&bad_path, r#"{"type": "array", "uniqueItems": true}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["run", "--json-schema"])
        .arg(&bad_path)
        .arg("x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uniqueItems"), "{err}");
}

/// The official `openai` package's structured outputs (`chat.completions.parse` with a
/// Pydantic model, a raw `json_schema`, the Responses API's `text.format`), unchanged.
#[test]
fn openai_client_structured_outputs() {
    let s = Server::start(&["--parallel", "2"]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let out = Command::new(client_python())
        .arg(dir.join("structured_client.py"))
        .arg(format!("http://127.0.0.1:{}", s.port))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
