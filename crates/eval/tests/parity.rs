//! Parity with lm-evaluation-harness 0.4.13 (its own task definitions and metrics) scoring
//! the same GGUF through the reference implementation (llama.cpp): the golden file is
//! made by `scripts/lm-eval-parity.py` (see crates/eval/README.md).
//!
//! Checked: every prompt is byte-identical (lm-eval's prompt_hash); per-request
//! loglikelihoods and aggregate acc / acc_norm agree within the bounds below.
//!
//! The bounds are set by the reference's own noise on this model, not by verity: llama.cpp
//! against itself (flash attention on vs off, `scripts/lm-eval-parity.py --flash-attn`)
//! differs per request by a mean |dll| of the same order (crates/eval/README.md has the
//! figures). SmolLM2-135M Q4_1 is numerically sensitive: activations are quantized to Q8_1
//! before every product, so one flipped rounding upstream moves a token's logprob by ~0.1.

use std::sync::Arc;

use serde_json::Value;
use verity_eval::{evaluate, resolve_tasks, LocalBackend, Options};

/// Mean absolute per-request loglikelihood difference allowed (nats).
const MEAN_LL_TOL: f64 = 0.45;
/// Aggregate acc / acc_norm difference allowed, in points (percent). The reference against
/// itself differs by up to 2.7 points on 150 winogrande documents.
const ACC_TOL_POINTS: f64 = 3.0;

#[test]
fn matches_lm_eval_with_the_reference() {
    let golden: Value = serde_json::from_str(include_str!("data/lm-eval-golden.json")).unwrap();
    let path = verity_store::resolve(None).expect("default model");
    let model = Arc::new(verity_model::load(&path).expect("load"));
    let quick = std::env::var("VERITY_PARITY_FULL").is_err();
    let mut report = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (task, g) in golden["tasks"].as_object().unwrap() {
        let mut limit = g["limit"].as_u64().unwrap() as usize;
        if quick {
            limit = limit.min(150);
        }
        let (specs, _) = resolve_tasks(std::slice::from_ref(task)).unwrap();
        let mut b = LocalBackend::new(model.clone(), path.clone(), None);
        let opts = Options {
            limit: Some(limit),
            batch_size: 32,
            ..Options::default()
        };
        let r = evaluate(&mut b, &specs, &[], &opts).unwrap();
        let t = &r.tasks[0];
        let docs = g["docs"].as_array().unwrap();
        let (mut n, mut sum_abs, mut max_abs) = (0usize, 0.0f64, 0.0f64);
        let (mut acc_v, mut acc_g, mut norm_v, mut norm_g) = (0.0, 0.0, 0.0, 0.0);
        for (s, d) in t.samples.iter().zip(docs) {
            assert_eq!(s.doc_id as u64, d["doc_id"].as_u64().unwrap());
            assert_eq!(
                s.prompt_hash,
                d["prompt_hash"].as_str().unwrap(),
                "{task} doc {}: prompt differs from lm-eval's",
                s.doc_id
            );
            let lls = d["lls"].as_array().unwrap();
            assert_eq!(
                lls.len(),
                s.results.len(),
                "{task} doc {}: number of requests",
                s.doc_id
            );
            for (r, l) in s.results.iter().zip(lls) {
                let diff = (r.loglikelihood - l.as_f64().unwrap()).abs();
                sum_abs += diff;
                max_abs = max_abs.max(diff);
                n += 1;
            }
            let m = |name: &str| s.metrics.iter().find(|(k, _, _)| k == name).map(|x| x.2);
            acc_v += m("acc").unwrap_or(0.0);
            acc_g += d["acc"].as_f64().unwrap_or(0.0);
            norm_v += m("acc_norm").unwrap_or(0.0);
            norm_g += d["acc_norm"].as_f64().unwrap_or(0.0);
        }
        let k = t.samples.len() as f64;
        let mean = sum_abs / n as f64;
        let (dacc, dnorm) = (100.0 * (acc_v - acc_g) / k, 100.0 * (norm_v - norm_g) / k);
        report.push(format!(
            "{task}: {} docs, {n} requests, mean |dll| {mean:.4}, max {max_abs:.4}, acc {:.2} vs {:.2} ({dacc:+.2} pts), acc_norm {:.2} vs {:.2} ({dnorm:+.2} pts)",
            t.samples.len(), 100.0 * acc_v / k, 100.0 * acc_g / k, 100.0 * norm_v / k, 100.0 * norm_g / k
        ));
        if mean >= MEAN_LL_TOL || dacc.abs() > ACC_TOL_POINTS || dnorm.abs() > ACC_TOL_POINTS {
            failures.push(report.last().unwrap().clone());
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "outside the bounds:\n{}",
        failures.join("\n")
    );
}

/// Rolling loglikelihood: mean absolute per-token difference allowed (nats), and relative
/// difference of word perplexity, byte perplexity and bits per byte.
const MEAN_TOKEN_TOL: f64 = 0.1;
const ROLLING_REL_TOL: f64 = 0.01;

/// `loglikelihood_rolling` against lm-eval 0.4.13 (its ConfigurableTask, metrics and
/// aggregations; windows from its own `get_rolling_token_windows`) with the reference LM,
/// on the task YAMLs in tests/data (LAMBADA passages; the `_long` documents are 300-340
/// tokens, split into 3 windows each at the golden's max_length of 128). Golden:
/// `scripts/lm-eval-parity.py --task-yaml ... --max-length 128` (crates/eval/README.md).
#[test]
fn rolling_matches_lm_eval_with_the_reference() {
    let golden: Value =
        serde_json::from_str(include_str!("data/lm-eval-rolling-golden.json")).unwrap();
    let max_length = golden["max_length"].as_u64().unwrap() as usize;
    let path = verity_store::resolve(None).expect("default model");
    let model = Arc::new(verity_model::load(&path).expect("load"));
    let bos = model.tokenizer.bos_id().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut report = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for (task, g) in golden["tasks"].as_object().unwrap() {
        let yaml = dir.join(format!("{task}.yaml")).display().to_string();
        let (specs, _) = resolve_tasks(&[yaml]).unwrap();
        let mut b = LocalBackend::new(model.clone(), path.clone(), None);
        let opts = Options {
            max_length: Some(max_length),
            ..Options::default()
        };
        let r = evaluate(&mut b, &specs, &[], &opts).unwrap();
        let t = &r.tasks[0];
        let docs = g["docs"].as_array().unwrap();
        assert_eq!(t.samples.len(), docs.len());
        let (mut n_tok, mut sum_tok, mut max_tok) = (0usize, 0.0f64, 0.0f64);
        let (mut sum_doc, mut max_doc, mut n_windows) = (0.0f64, 0.0f64, 0usize);
        for (s, d) in t.samples.iter().zip(docs) {
            let id = s.doc_id;
            assert_eq!(s.doc_id as u64, d["doc_id"].as_u64().unwrap());
            assert_eq!(
                s.prompt_hash,
                d["prompt_hash"].as_str().unwrap(),
                "{task} doc {id}: request differs from lm-eval's"
            );
            // lm-eval's word and byte counts.
            let j = s.to_json(&[]);
            assert_eq!(
                j["word_perplexity"][1], d["word_perplexity"][1],
                "{task} doc {id}"
            );
            assert_eq!(
                j["byte_perplexity"][1], d["byte_perplexity"][1],
                "{task} doc {id}"
            );
            // Same tokens, same windows.
            let text = s.arguments[0].0.clone();
            let tokens = model.tokenizer.encode(&text, false).unwrap();
            let w = verity_eval::rolling::windows(&tokens, bos, max_length).len();
            assert_eq!(
                w as u64,
                d["windows"].as_u64().unwrap(),
                "{task} doc {id}: windows"
            );
            n_windows += w;
            let ours = &s.results[0].token_logprobs;
            let theirs = d["token_lps"].as_array().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{task} doc {id}: scored tokens");
            for (a, b) in ours.iter().zip(theirs) {
                let diff = (*a as f64 - b.as_f64().unwrap()).abs();
                sum_tok += diff;
                max_tok = max_tok.max(diff);
                n_tok += 1;
            }
            let dd = (s.results[0].loglikelihood - d["ll"].as_f64().unwrap()).abs();
            sum_doc += dd;
            max_doc = max_doc.max(dd);
        }
        let mean_tok = sum_tok / n_tok as f64;
        let mut line = format!(
            "{task}: {} docs, {n_windows} windows, {n_tok} tokens; per token mean |dlp| {mean_tok:.4}, max {max_tok:.4}; per doc mean |dll| {:.4}, max {max_doc:.4}",
            t.samples.len(),
            sum_doc / t.samples.len() as f64,
        );
        let mut bad = mean_tok >= MEAN_TOKEN_TOL;
        for m in ["word_perplexity", "byte_perplexity", "bits_per_byte"] {
            let ours = t.aggregates.iter().find(|a| a.metric == m).unwrap().value;
            let theirs = g["metrics"][format!("{m},none")].as_f64().unwrap();
            let rel = (ours - theirs) / theirs;
            line += &format!("; {m} {ours:.4} vs {theirs:.4} ({:+.3}%)", 100.0 * rel);
            bad |= rel.abs() > ROLLING_REL_TOL;
        }
        if bad {
            failures.push(line.clone());
        }
        report.push(line);
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "outside the bounds:\n{}",
        failures.join("\n")
    );
}
