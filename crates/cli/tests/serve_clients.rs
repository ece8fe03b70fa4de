//! Real clients, unchanged, against `verity serve`: the official `openai` Python package,
//! lm-evaluation-harness's `local-completions` model, and a concurrent streaming soak.
//! The clients live in a venv made by `scripts/setup-client-venv`.

mod common;

use common::client_python;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

fn run_python(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> String {
    let out = Command::new(client_python())
        .args(args)
        .current_dir(cwd)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[test]
fn openai_python_client() {
    let s = Server::start(&[]);
    let url = format!("http://127.0.0.1:{}", s.port);
    let out = run_python(
        &[
            clients_dir().join("openai_client.py").to_str().unwrap(),
            &url,
        ],
        &clients_dir(),
        &[],
    );
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn lm_eval_local_completions() {
    let s = Server::start(&[]);
    // lm-eval tokenizes requests itself; it gets the model's tokenizer as a HF directory.
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let gguf = verity_store::resolve(None).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["convert", "--to", "hf"])
        .arg(&gguf)
        .arg(&hf)
        .status()
        .unwrap();
    assert!(status.success());
    let out_dir = tmp.path().join("results");
    let model_args = format!(
        "model=smollm2,base_url=http://127.0.0.1:{}/v1/completions,tokenizer={},tokenizer_backend=huggingface,tokenized_requests=True,num_concurrent=4,max_retries=1",
        s.port,
        hf.display()
    );
    let tasks = clients_dir().join("lm_eval_tasks");
    let lm_eval = client_python().with_file_name("lm_eval");
    let out = Command::new(&lm_eval)
        .args([
            "--model",
            "local-completions",
            "--model_args",
            &model_args,
            "--tasks",
            "verity_tiny_mc",
            "--include_path",
        ])
        .arg(&tasks)
        .arg("--output_path")
        .arg(&out_dir)
        .current_dir(&tasks)
        .envs([
            ("HF_DATASETS_OFFLINE", "1"),
            ("HF_HUB_OFFLINE", "1"),
            ("TRANSFORMERS_OFFLINE", "1"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lm_eval failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
    let results = find_results(&out_dir)
        .unwrap_or_else(|| panic!("no results JSON under {}:\n{stdout}", out_dir.display()));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let r = &v["results"]["verity_tiny_mc"];
    let acc = r["acc,none"].as_f64().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(v["n-samples"]["verity_tiny_mc"]["effective"], 10);
    // Ten easy questions with four choices each: a working model beats chance (25 %).
    assert!(acc >= 0.5, "acc {acc}");
}

fn find_results(dir: &Path) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let p = entry.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_results(&p) {
                return Some(f);
            }
        } else if p.file_name()?.to_str()?.starts_with("results") && p.extension()? == "json" {
            return Some(p);
        }
    }
    None
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// 16 concurrent streaming clients for 60 s: every stream equals its request run alone
/// with the same seed, no request fails, and memory stays flat after warm-up.
#[test]
fn sixteen_streaming_clients_for_a_minute() {
    let s = Server::start(&["--parallel", "8"]);
    let url = format!("http://127.0.0.1:{}", s.port);
    let script = clients_dir().join("soak.py");
    // Warm-up: fills every slot's cache and the allocator's pools.
    run_python(
        &[script.to_str().unwrap(), &url, "16", "5"],
        &clients_dir(),
        &[],
    );
    let before = rss_kib(s.pid());
    let out = run_python(
        &[script.to_str().unwrap(), &url, "16", "60"],
        &clients_dir(),
        &[],
    );
    let after = rss_kib(s.pid());
    eprintln!("{out}server RSS after warm-up {before} KiB, after the soak {after} KiB");
    assert!(
        after <= before + before / 10,
        "memory grew from {before} KiB to {after} KiB"
    );
}
