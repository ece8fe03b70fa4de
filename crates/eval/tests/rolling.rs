//! `loglikelihood_rolling` on the real model: lm-eval's metrics from the documents'
//! loglikelihoods and word / byte counts, windows that cover every token once and score
//! what lm-eval's windows score, and results independent of the batch size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use verity_engine::Session;
use verity_eval::backend::token_logprob;
use verity_eval::run::Report;
use verity_eval::{evaluate, resolve_tasks, LocalBackend, Options};
use verity_model::Model;

/// Documents with their word and byte counts as Python gives them
/// (`len(re.split(r"\s+", d))`, `len(d.encode("utf-8"))`), checked by hand.
const DOCS: &[(&str, usize, usize)] = &[
    ("The quick brown fox jumps over the lazy dog. It was a sunny day, and the dog did not mind at all; it simply rolled over and went back to sleep in the warm grass by the river.", 38, 174),
    (" Leading space, two  spaces,\ta tab and a trailing newline\n", 12, 58),
    ("Café au lait, naïve résumé — déjà vu. Über straße: 東京 is a city.", 14, 78),
    ("Short.", 1, 6),
    // No tokens, no windows: loglikelihood 0, one "word", no bytes (as lm-eval).
    ("", 1, 0),
];

fn write_task(dir: &Path) -> PathBuf {
    let mut data = String::new();
    for (i, (t, _, _)) in DOCS.iter().enumerate() {
        data += &serde_json::json!({"id": i, "page": t}).to_string();
        data.push('\n');
    }
    std::fs::write(dir.join("docs.jsonl"), data).unwrap();
    let yaml = "task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: \"\"
doc_to_target: \"{{page}}\"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
";
    let p = dir.join("tiny_rolling.yaml");
    std::fs::write(&p, yaml).unwrap();
    p
}

fn model() -> (Arc<Model>, PathBuf) {
    let path = verity_store::resolve(None).expect("default model");
    (Arc::new(verity_model::load(&path).expect("load")), path)
}

fn run(
    model: &Arc<Model>,
    path: &Path,
    task: &Path,
    bs: usize,
    max_length: Option<usize>,
) -> Report {
    let (specs, groups) = resolve_tasks(&[task.display().to_string()]).unwrap();
    let mut b = LocalBackend::new(model.clone(), path.to_path_buf(), None);
    let opts = Options {
        batch_size: bs,
        max_length,
        ..Options::default()
    };
    evaluate(&mut b, &specs, &groups, &opts).unwrap()
}

fn metric(r: &Report, name: &str) -> f64 {
    r.tasks[0]
        .aggregates
        .iter()
        .find(|a| a.metric == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .value
}

#[test]
fn metrics_are_lm_evals_formulas() {
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(dir.path());
    let (m, path) = model();
    let r = run(&m, &path, &task, 8, None);
    let t = &r.tasks[0];
    assert_eq!(t.samples.len(), DOCS.len());
    let (mut ll, mut words, mut bytes) = (0.0f64, 0usize, 0usize);
    for (s, (text, w, b)) in t.samples.iter().zip(DOCS) {
        assert_eq!(s.results.len(), 1);
        let res = &s.results[0];
        // Every token of the document is scored once, BOS-free tokenization.
        let n = m.tokenizer.encode(text, false).unwrap().len();
        assert_eq!(res.token_logprobs.len(), n, "doc {}", s.doc_id);
        let sum: f64 = res.token_logprobs.iter().map(|&x| x as f64).sum();
        assert_eq!(res.loglikelihood, sum);
        assert!(n == 0 || res.loglikelihood < 0.0);
        // lm-eval's prompt hash for a rolling request is the hash of the text itself.
        assert_eq!(
            s.prompt_hash,
            verity_eval::hash::sha256_hex(text.as_bytes())
        );
        // Per-sample values as lm-eval logs them: [loglikelihood, words or bytes].
        let j = s.to_json(&[]);
        assert_eq!(
            j["word_perplexity"],
            serde_json::json!([res.loglikelihood, w])
        );
        assert_eq!(
            j["byte_perplexity"],
            serde_json::json!([res.loglikelihood, b])
        );
        assert_eq!(
            j["bits_per_byte"],
            serde_json::json!([res.loglikelihood, b])
        );
        assert_eq!(j["resps"], serde_json::json!([[res.loglikelihood]]));
        assert_eq!(j["filtered_resps"], serde_json::json!([res.loglikelihood]));
        assert!(j["arguments"]["gen_args_0"]["arg_1"].is_null());
        ll += res.loglikelihood;
        words += w;
        bytes += b;
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    let (wp, bp, bpb) = (
        metric(&r, "word_perplexity"),
        metric(&r, "byte_perplexity"),
        metric(&r, "bits_per_byte"),
    );
    assert!(close(wp, (-ll / words as f64).exp()), "{wp}");
    assert!(close(bp, (-ll / bytes as f64).exp()), "{bp}");
    assert!(close(bpb, -ll / bytes as f64 / 2f64.ln()), "{bpb}");
    // Sanity of scale for a 135M model on plain English.
    assert!(wp > 5.0 && wp < 5000.0 && bp > 1.2 && bp < 6.0, "{wp} {bp}");
    for a in &t.aggregates {
        assert_eq!(a.stderr, None, "{}: lm-eval reports N/A", a.metric);
        assert!(!a.higher_is_better);
    }
    let res = r.results_json(&Default::default());
    assert_eq!(
        res["results"]["tiny_rolling"]["bits_per_byte_stderr,none"],
        "N/A"
    );
    assert_eq!(
        res["higher_is_better"]["tiny_rolling"]["word_perplexity"],
        false
    );
}

#[test]
fn windows_cover_the_document_and_score_what_lm_eval_scores() {
    const MAX: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(dir.path());
    let (m, path) = model();
    let whole = run(&m, &path, &task, 4, None);
    let windowed = run(&m, &path, &task, 4, Some(MAX));
    let bos = m.tokenizer.bos_id().unwrap();
    let n_vocab = m.hparams.n_vocab;
    for ((a, b), (text, _, _)) in whole.tasks[0]
        .samples
        .iter()
        .zip(&windowed.tasks[0].samples)
        .zip(DOCS)
    {
        let tokens = m.tokenizer.encode(text, false).unwrap();
        let (x, y) = (&a.results[0].token_logprobs, &b.results[0].token_logprobs);
        assert_eq!(x.len(), tokens.len());
        assert_eq!(y.len(), tokens.len(), "doc {}: every token once", a.doc_id);
        // The first window is the start of the unwindowed sequence.
        let k = tokens.len().min(MAX);
        assert_eq!(
            x[..k].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y[..k].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "doc {}",
            a.doc_id
        );
        // Each window, recomputed on its own: lm-eval's windows (context_len 1) read
        // [BOS] + tokens[..MAX-1], then full windows of MAX tokens predicting the next MAX,
        // and a last window reaching back MAX tokens from the document's end.
        let mut expect: Vec<f32> = Vec::new();
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + MAX).min(tokens.len());
            let (input, from): (Vec<u32>, usize) = if start == 0 {
                let mut v = vec![bos];
                v.extend_from_slice(&tokens[..end - 1]);
                (v, 0)
            } else {
                // tokens[end-MAX-1 .. end-1]: row j predicts token end-MAX+j.
                let s0 = end - MAX - 1;
                (tokens[s0..end - 1].to_vec(), start - s0 - 1)
            };
            let mut sess = Session::new(m.clone(), input.len());
            let logits = sess.eval_all(&input).unwrap();
            for (row, pos) in (from..input.len()).zip(start..end) {
                let l = &logits[row * n_vocab..(row + 1) * n_vocab];
                expect.push(token_logprob(l, tokens[pos]).0);
            }
            start = end;
        }
        assert_eq!(
            expect.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "doc {}: windows",
            a.doc_id
        );
        if tokens.len() > MAX + 1 {
            assert_ne!(
                x, y,
                "doc {}: a shorter context changes the scores",
                a.doc_id
            );
        }
    }
}

#[test]
fn batch_sizes_1_and_8_give_identical_samples() {
    let dir = tempfile::tempdir().unwrap();
    let task = write_task(dir.path());
    let (m, path) = model();
    for max_length in [None, Some(10)] {
        let a = run(&m, &path, &task, 1, max_length);
        let b = run(&m, &path, &task, 8, max_length);
        let (x, y) = (&a.tasks[0], &b.tasks[0]);
        for (s, t) in x.samples.iter().zip(&y.samples) {
            let bits = |s: &verity_eval::run::Sample| -> Vec<u32> {
                s.results[0]
                    .token_logprobs
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            };
            assert_eq!(
                bits(s),
                bits(t),
                "doc {} max_length {max_length:?}",
                s.doc_id
            );
            assert_eq!(s.hash(), t.hash());
        }
        assert_eq!(x.chain, y.chain);
        assert_eq!(x.aggregates, y.aggregates);
    }
}
