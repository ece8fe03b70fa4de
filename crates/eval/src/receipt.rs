//! Receipts: a JSON statement binding every score to the model's root digest, the data
//! files, the task configs, the settings, the engine and machine, and a hash chain over
//! every sample; and re-running one to confirm or refute it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::backend::{AdapterIdentity, Backend, ModelIdentity};
use crate::hash::sha256_hex;
use crate::pyrandom::PyRandom;
use crate::run::{self, Options, Report, TaskSpec};

pub const RECEIPT_TYPE: &str = "verity.eval.receipt/v1";

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    json!({
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
    })
}

fn engine() -> Value {
    json!({
        "name": "verity",
        "version": env!("CARGO_PKG_VERSION"),
        "build": {
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "git": option_env!("VERITY_GIT_HASH"),
        },
    })
}

/// Hash of a receipt's content (everything but `receipt_sha256`).
fn self_digest(v: &Value) -> String {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("receipt_sha256");
    }
    sha256_hex(c.to_string().as_bytes())
}

/// Build the receipt for a finished evaluation.
pub fn make(report: &Report, model: &ModelIdentity) -> Value {
    let results = report.results_json(model);
    let tasks: Vec<Value> = report
        .tasks
        .iter()
        .map(|t| {
            json!({
                "task": t.spec.config.task,
                "source": t.spec.source,
                "config_sha256": t.spec.config.digest(),
                "config": t.spec.config,
                "num_fewshot": t.num_fewshot,
                "data_files": t.data_files.iter().map(|(p, d)| json!({"file": p.display().to_string(), "sha256": d})).collect::<Vec<_>>(),
                "n_samples": t.samples.len(),
                "samples": t.samples.iter().map(|s| json!({
                    "doc_id": s.doc_id, "doc_hash": s.doc_hash, "prompt_hash": s.prompt_hash,
                    "target_hash": s.target_hash, "sample_hash": s.hash(),
                })).collect::<Vec<_>>(),
                "chain": t.chain,
                "results": results["results"][&t.spec.config.task],
            })
        })
        .collect();
    let mut v = json!({
        "_type": RECEIPT_TYPE,
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "model": model,
        "chat_template_sha256": model.chat_template_sha256,
        "settings": {
            "batch_size": report.options.batch_size,
            "limit": report.options.limit,
            "num_fewshot": report.options.num_fewshot,
            "fewshot_seed": report.options.fewshot_seed,
            "max_length": report.options.max_length,
            "prefix_token_id": report.options.prefix_token_id,
            "chat_template_applied": false,
        },
        "engine": engine(),
        "machine": machine(),
        "tasks": tasks,
        "groups": report.groups.iter().map(|g| json!({"group": g.name, "members": g.members})).collect::<Vec<_>>(),
        "results": results["results"],
    });
    let d = self_digest(&v);
    v["receipt_sha256"] = json!(d);
    v
}

/// One thing that did not match, with its cause.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Mismatch {
    pub task: Option<String>,
    pub doc_id: Option<usize>,
    pub cause: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Verification {
    pub ok: bool,
    pub samples_checked: usize,
    pub samples_differing: usize,
    pub mismatches: Vec<Mismatch>,
}

/// Static checks before any re-run: the receipt's own integrity, the model's root digest
/// (`current` is what the local files hash to now, or what the endpoint reports) and each
/// adapter's (`current_adapters`: the adapters applied now, in order).
pub fn check_static(
    receipt: &Value,
    current_root_digest: Option<&str>,
    current_adapters: &[AdapterIdentity],
    current_kv_cache: Option<&str>,
) -> anyhow::Result<Vec<Mismatch>> {
    if receipt["_type"] != RECEIPT_TYPE {
        bail!("not a verity eval receipt (expected _type {RECEIPT_TYPE})");
    }
    let mut out = Vec::new();
    if receipt["receipt_sha256"].as_str() != Some(self_digest(receipt).as_str()) {
        out.push(Mismatch {
            task: None,
            doc_id: None,
            cause: "the receipt itself was edited (receipt_sha256 does not match its content)"
                .into(),
        });
    }
    let recorded = receipt["model"]["root_digest"].as_str();
    if recorded.is_some() && recorded != current_root_digest {
        out.push(Mismatch {
            task: None,
            doc_id: None,
            cause: format!(
                "model weights changed: root digest is {} now, the receipt records {}",
                current_root_digest.unwrap_or("unknown"),
                recorded.unwrap_or_default()
            ),
        });
    }
    let recorded_kv = receipt["model"]["kv_cache"].as_str();
    if recorded_kv != current_kv_cache {
        out.push(Mismatch {
            task: None,
            doc_id: None,
            cause: format!(
                "the KV cache is {} now, the receipt records {}",
                current_kv_cache.unwrap_or("f16"),
                recorded_kv.unwrap_or("f16")
            ),
        });
    }
    let recorded: Vec<AdapterIdentity> =
        serde_json::from_value(receipt["model"]["adapters"].clone()).unwrap_or_default();
    if recorded.len() != current_adapters.len() {
        out.push(Mismatch {
            task: None,
            doc_id: None,
            cause: format!(
                "the receipt records {} adapter(s), {} are applied now",
                recorded.len(),
                current_adapters.len()
            ),
        });
    }
    for (i, (r, c)) in recorded.iter().zip(current_adapters).enumerate() {
        let label = r
            .path
            .as_ref()
            .map(|p| p.display().to_string())
            .or(r.name.clone())
            .unwrap_or_else(|| format!("#{}", i + 1));
        if r.root_digest != c.root_digest {
            out.push(Mismatch {
                task: None,
                doc_id: None,
                cause: format!(
                    "adapter {label} changed: root digest is {} now, the receipt records {}",
                    c.root_digest.as_deref().unwrap_or("unknown"),
                    r.root_digest.as_deref().unwrap_or("unknown")
                ),
            });
        }
        if r.scale != c.scale {
            out.push(Mismatch {
                task: None,
                doc_id: None,
                cause: format!(
                    "adapter {label} is applied at scale {} now, the receipt records {}",
                    c.scale, r.scale
                ),
            });
        }
    }
    Ok(out)
}

/// Re-run the receipt's tasks (all samples, or `sample` of them chosen with `seed`) and
/// compare everything it records.
pub fn verify(
    receipt: &Value,
    backend: &mut dyn Backend,
    sample: Option<usize>,
    seed: u64,
    progress: bool,
) -> anyhow::Result<Verification> {
    let current = backend.identity().root_digest.clone();
    let adapters = backend.identity().adapters.clone();
    let kv = backend.identity().kv_cache.clone();
    let mut mismatches = check_static(receipt, current.as_deref(), &adapters, kv.as_deref())?;
    let settings = &receipt["settings"];
    let tasks = receipt["tasks"]
        .as_array()
        .context("receipt has no tasks")?;
    let mut specs: Vec<TaskSpec> = Vec::new();
    let mut only: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut rng = PyRandom::new(seed);
    for t in tasks {
        let name = t["task"]
            .as_str()
            .context("task without a name")?
            .to_string();
        let source = t["source"].as_str().unwrap_or("builtin");
        // The task as this setup defines it now (built-in, or the YAML file).
        let spec = if source == "builtin" {
            run::resolve_tasks(std::slice::from_ref(&name))?
                .0
                .into_iter()
                .find(|s| s.config.task == name)
        } else {
            Some(crate::yaml::load_task_file(std::path::Path::new(source))?)
        }
        .with_context(|| format!("task {name} no longer exists"))?;
        let recorded_cfg = t["config"].clone();
        if spec.config.digest() != t["config_sha256"].as_str().unwrap_or_default() {
            let now = serde_json::to_value(&spec.config).unwrap_or(Value::Null);
            let mut fields: Vec<String> = Vec::new();
            if let (Some(a), Some(b)) = (now.as_object(), recorded_cfg.as_object()) {
                for k in a.keys().chain(b.keys()) {
                    if a.get(k) != b.get(k) && !fields.contains(k) {
                        fields.push(k.clone());
                    }
                }
            }
            mismatches.push(Mismatch {
                task: Some(name.clone()),
                doc_id: None,
                cause: format!("task config changed ({})", fields.join(", ")),
            });
        }
        for f in t["data_files"].as_array().into_iter().flatten() {
            let file = f["file"].as_str().unwrap_or_default();
            let want = f["sha256"].as_str().unwrap_or_default();
            match verity_store::sha256_file(std::path::Path::new(file)) {
                Ok(d) if d == want => {}
                Ok(d) => mismatches.push(Mismatch {
                    task: Some(name.clone()),
                    doc_id: None,
                    cause: format!("dataset file {file} changed (SHA-256 {d}, receipt {want})"),
                }),
                Err(e) => mismatches.push(Mismatch {
                    task: Some(name.clone()),
                    doc_id: None,
                    cause: format!("dataset file {file}: {e}"),
                }),
            }
        }
        let ids: Vec<usize> = t["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["doc_id"].as_u64().map(|x| x as usize))
            .collect();
        let chosen: BTreeSet<usize> = match sample {
            Some(n) if n < ids.len() => rng
                .sample(ids.len(), n)
                .into_iter()
                .map(|i| ids[i])
                .collect(),
            _ => ids.iter().copied().collect(),
        };
        only.insert(name.clone(), chosen);
        specs.push(spec);
    }
    let limit = settings["limit"].as_u64().map(|x| x as usize);
    let opts = Options {
        limit,
        batch_size: settings["batch_size"].as_u64().unwrap_or(32) as usize,
        num_fewshot: settings["num_fewshot"].as_u64().map(|x| x as usize),
        fewshot_seed: settings["fewshot_seed"]
            .as_u64()
            .unwrap_or(run::DEFAULT_FEWSHOT_SEED),
        output: None,
        resume: false,
        progress,
        only_docs: Some(only.clone()),
        // Older receipts lack these: the backend's defaults then.
        max_length: settings["max_length"].as_u64().map(|x| x as usize),
        prefix_token_id: settings["prefix_token_id"].as_u64().map(|x| x as u32),
    };
    let report = run::evaluate(backend, &specs, &[], &opts)?;
    let mut checked = 0;
    let mut differing = BTreeSet::new();
    for (t, tr) in tasks.iter().zip(&report.tasks) {
        let name = tr.spec.config.task.clone();
        let recorded: BTreeMap<usize, &Value> = t["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["doc_id"].as_u64()? as usize, s)))
            .collect();
        let wanted = &only[&name];
        let mut seen = BTreeSet::new();
        for s in &tr.samples {
            seen.insert(s.doc_id);
            let Some(r) = recorded.get(&s.doc_id) else {
                continue;
            };
            checked += 1;
            let mut causes = Vec::new();
            if r["doc_hash"] != s.doc_hash.as_str() {
                causes.push("dataset row changed (doc_hash)");
            }
            if r["prompt_hash"] != s.prompt_hash.as_str() {
                causes.push("prompt changed (prompt_hash)");
            }
            if r["target_hash"] != s.target_hash.as_str() {
                causes.push("target changed (target_hash)");
            }
            if r["sample_hash"] != s.hash().as_str() && causes.is_empty() {
                causes.push("same prompt, different log-probabilities or output (model or engine)");
            }
            if !causes.is_empty() {
                differing.insert((name.clone(), s.doc_id));
                mismatches.push(Mismatch {
                    task: Some(name.clone()),
                    doc_id: Some(s.doc_id),
                    cause: causes.join("; "),
                });
            }
        }
        for id in wanted.difference(&seen) {
            differing.insert((name.clone(), *id));
            mismatches.push(Mismatch {
                task: Some(name.clone()),
                doc_id: Some(*id),
                cause: "document no longer in the dataset".into(),
            });
        }
        if sample.is_none()
            && t["chain"].as_str() != Some(tr.chain.as_str())
            && !mismatches.iter().any(|m| m.task.as_deref() == Some(&name))
        {
            mismatches.push(Mismatch {
                task: Some(name.clone()),
                doc_id: None,
                cause: "sample hash chain differs".into(),
            });
        }
    }
    Ok(Verification {
        ok: mismatches.is_empty(),
        samples_checked: checked,
        samples_differing: differing.len(),
        mismatches,
    })
}
