//! `verity eval` end to end: local vs endpoint, receipts, resume, YAML tasks.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn verity(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run verity")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn samples(dir: &Path, task: &str) -> Vec<Value> {
    std::fs::read_to_string(dir.join(format!("samples_{task}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The fields that must be identical between two runs.
fn essence(s: &Value) -> Value {
    let mut v = s.clone();
    let m = v.as_object_mut().unwrap();
    m.retain(|k, _| !matches!(k.as_str(), "doc"));
    v
}

#[test]
fn help_has_examples() {
    let o = verity(&["eval", "--help"]);
    assert!(o.status.success());
    let t = text(&o);
    assert!(
        t.contains("Examples:") && t.contains("--tasks") && t.contains("--receipt"),
        "{t}"
    );
    let o = verity(&["eval", "verify", "--help"]);
    assert!(text(&o).contains("Examples:"));
}

#[test]
fn unknown_task_is_one_line_error() {
    let o = verity(&["eval", "--tasks", "no_such_task"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("unknown task 'no_such_task'") && e.trim().lines().count() == 1,
        "{e}"
    );
}

#[test]
fn local_and_endpoint_give_identical_samples() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("local"), dir.path().join("endpoint"));
    let o = verity(&[
        "eval",
        "--tasks",
        "arc_easy,winogrande",
        "--limit",
        "12",
        "--quiet",
        "--output",
        a.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let server = common::Server::start(&[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    let o = verity(&[
        "eval",
        "--tasks",
        "arc_easy,winogrande",
        "--limit",
        "12",
        "--quiet",
        "--output",
        b.to_str().unwrap(),
        "--endpoint",
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    for task in ["arc_easy", "winogrande"] {
        let (x, y) = (samples(&a, task), samples(&b, task));
        assert_eq!(x.len(), 12);
        for (s, t) in x.iter().zip(&y) {
            assert_eq!(essence(s), essence(t), "{task} doc {}", s["doc_id"]);
        }
    }
    // The endpoint's root digest is recorded.
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        r["config"]["model_root_digest"].as_str().map(str::len),
        Some(64),
        "{}",
        r["config"]
    );
    let r2: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("results.json")).unwrap()).unwrap();
    assert_eq!(
        r["config"]["model_root_digest"],
        r2["config"]["model_root_digest"]
    );
    assert_eq!(r["results"], r2["results"]);
}

const DATA: &str = r#"{"id": "q1", "question": "Which is a mammal?", "choices": {"text": ["shark", "whale", "trout"], "label": ["A", "B", "C"]}, "answerKey": "B"}
{"id": "q2", "question": "What do plants need to make food?", "choices": {"text": ["sunlight", "sand", "plastic"], "label": ["A", "B", "C"]}, "answerKey": "A"}
{"id": "q3", "question": "Water freezes at what temperature in Celsius?", "choices": {"text": ["100 degrees", "0 degrees", "50 degrees"], "label": ["A", "B", "C"]}, "answerKey": "B"}
{"id": "q4", "question": "Which planet is closest to the Sun?", "choices": {"text": ["Mars", "Venus", "Mercury"], "label": ["A", "B", "C"]}, "answerKey": "C"}
"#;

const TASK: &str = "task: tiny_arc
dataset_path: json
data_files:
  test: data.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: \"Question: {{question}}\\nAnswer:\"
doc_to_target: \"{{choices.label.index(answerKey)}}\"
doc_to_choice: \"{{choices.text}}\"
metric_list:
  - metric: acc
  - metric: acc_norm
metadata:
  version: 1.0
";

#[test]
fn receipt_verifies_and_names_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("model.gguf");
    std::fs::copy(verity_store::resolve(None).unwrap(), &model).unwrap();
    std::fs::write(d.join("data.jsonl"), DATA).unwrap();
    std::fs::write(d.join("task.yaml"), TASK).unwrap();
    let task = d.join("task.yaml");
    let receipt = d.join("r.json");
    let o = verity(&[
        "eval",
        "-m",
        model.to_str().unwrap(),
        "--tasks",
        task.to_str().unwrap(),
        "--receipt",
        receipt.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    assert_eq!(r["tasks"][0]["samples"].as_array().unwrap().len(), 4);
    assert_eq!(r["model"]["root_digest"].as_str().unwrap().len(), 64);

    let verify = || verity(&["eval", "verify", receipt.to_str().unwrap(), "--quiet"]);
    let o = verify();
    assert!(o.status.success(), "untouched: {}", text(&o));
    assert!(text(&o).contains("MATCH"));
    let o = verity(&[
        "eval",
        "verify",
        receipt.to_str().unwrap(),
        "--sample",
        "2",
        "--json",
        "--quiet",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["samples_checked"].as_u64()),
        (Some(true), Some(2)),
        "{v}"
    );

    // One dataset row.
    std::fs::write(
        d.join("data.jsonl"),
        DATA.replace("Which planet is closest", "Which planet is nearest"),
    )
    .unwrap();
    let o = verify();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("dataset file") && t.contains("doc 3: dataset row changed"),
        "{t}"
    );
    std::fs::write(d.join("data.jsonl"), DATA).unwrap();

    // The prompt template.
    std::fs::write(
        &task,
        TASK.replace("Question: {{question}}", "Q: {{question}}"),
    )
    .unwrap();
    let o = verify();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("task config changed (doc_to_text)") && t.contains("prompt changed"),
        "{t}"
    );
    std::fs::write(&task, TASK).unwrap();

    // One byte of the weights.
    let mut bytes = std::fs::read(&model).unwrap();
    let n = bytes.len();
    bytes[n - 1000] ^= 0x01;
    std::fs::write(&model, &bytes).unwrap();
    let o = verify();
    let t = text(&o);
    assert!(!o.status.success());
    assert!(t.contains("model weights changed"), "{t}");
    bytes[n - 1000] ^= 0x01;
    std::fs::write(&model, &bytes).unwrap();
    assert!(verify().status.success());
}

#[test]
fn resume_reuses_finished_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args = [
        "eval",
        "--tasks",
        "hellaswag",
        "--limit",
        "10",
        "--batch-size",
        "4",
        "--quiet",
        "--json",
        "--output",
        out.to_str().unwrap(),
    ];
    let o = verity(&args);
    assert!(o.status.success(), "{}", text(&o));
    let full = samples(&out, "hellaswag");
    // An interruption: six samples written, the seventh cut short.
    let f = out.join("samples_hellaswag.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    std::fs::write(
        &f,
        format!("{}\n{}", lines[..6].join("\n"), &lines[6][..40]),
    )
    .unwrap();
    let mut resumed_args = args.to_vec();
    resumed_args.push("--resume");
    let o = verity(&resumed_args);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(samples(&out, "hellaswag"), full);
}

const ROLLING_DATA: &str = r#"{"text": "The quick brown fox jumps over the lazy dog. It was a sunny day, and the dog did not mind at all; it simply rolled over and went back to sleep."}
{"text": "Café au lait, naïve résumé — déjà vu. Über straße: 東京 is a city with many trains."}
{"text": "Short one."}
"#;

const ROLLING_TASK: &str = "task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: rolling.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: \"\"
doc_to_target: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
";

/// A loglikelihood_rolling task split into windows (--max-length 16): the local engine and
/// `verity serve` give identical samples and results; the receipt verifies.
#[test]
fn rolling_local_endpoint_and_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("rolling.jsonl"), ROLLING_DATA).unwrap();
    let task = d.join("rolling.yaml");
    std::fs::write(&task, ROLLING_TASK).unwrap();
    let (a, b) = (d.join("local"), d.join("endpoint"));
    let receipt = d.join("r.json");
    let o = verity(&[
        "eval",
        "--tasks",
        task.to_str().unwrap(),
        "--max-length",
        "16",
        "--quiet",
        "--output",
        a.to_str().unwrap(),
        "--receipt",
        receipt.to_str().unwrap(),
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("word_perplexity") && t.contains("bits_per_byte") && t.contains("N/A"),
        "{t}"
    );
    let server = common::Server::start(&[]);
    let url = format!("http://127.0.0.1:{}", server.port);
    // The server adds no BOS of its own for this model, but `/v1/models` names its BOS
    // token, which the endpoint backend then puts before each window as the local one does.
    let o = verity(&[
        "eval",
        "--tasks",
        task.to_str().unwrap(),
        "--max-length",
        "16",
        "--quiet",
        "--output",
        b.to_str().unwrap(),
        "--endpoint",
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let (x, y) = (samples(&a, "tiny_rolling"), samples(&b, "tiny_rolling"));
    assert_eq!(x.len(), 3);
    for (s, t) in x.iter().zip(&y) {
        assert_eq!(essence(s), essence(t), "doc {}", s["doc_id"]);
        let ll = s["resps"][0][0].as_f64().unwrap();
        assert_eq!(s["word_perplexity"][0].as_f64(), Some(ll));
        assert!(s["token_logprobs"][0].as_array().unwrap().len() > 1);
    }
    // The first document has more than 16 tokens: windows were used.
    assert!(x[0]["token_logprobs"][0].as_array().unwrap().len() > 16);
    let res = |p: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("results.json")).unwrap()).unwrap()
    };
    let (ra, rb) = (res(&a), res(&b));
    assert_eq!(ra["results"], rb["results"]);
    assert_eq!(ra["config"]["max_length"], 16);
    assert_eq!(
        ra["results"]["tiny_rolling"]["word_perplexity_stderr,none"],
        "N/A"
    );
    // --resume reuses a rolling sample only if it was cut at the same max_length.
    let o = verity(&[
        "eval",
        "--tasks",
        task.to_str().unwrap(),
        "--max-length",
        "8",
        "--quiet",
        "--output",
        a.to_str().unwrap(),
        "--resume",
        "--threads",
        "2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let z = samples(&a, "tiny_rolling");
    assert_eq!(x[0]["max_length"], 16);
    assert_eq!(z[0]["max_length"], 8);
    assert_ne!(z[0]["token_logprobs"], x[0]["token_logprobs"]);
    // The receipt re-runs with the recorded max_length and prefix token.
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    assert_eq!(r["settings"]["max_length"], 16);
    assert_eq!(r["settings"]["prefix_token_id"], 1);
    let o = verity(&["eval", "verify", receipt.to_str().unwrap(), "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("MATCH"));
    // Same receipt, scored by the endpoint: still a match.
    let o = verity(&[
        "eval",
        "verify",
        receipt.to_str().unwrap(),
        "--endpoint",
        &url,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}
