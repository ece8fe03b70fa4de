//! Scores and per-sample log-probabilities do not depend on the batch size.

use std::sync::Arc;

use verity_eval::{evaluate, resolve_tasks, LocalBackend, Options};

#[test]
fn batch_sizes_1_8_32_give_identical_samples() {
    let path = verity_store::resolve(None).expect("default model");
    let model = Arc::new(verity_model::load(&path).expect("load"));
    let tasks: Vec<String> = ["arc_easy", "winogrande", "hellaswag"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (specs, groups) = resolve_tasks(&tasks).unwrap();
    let mut runs = Vec::new();
    for bs in [1, 8, 32] {
        let mut b = LocalBackend::new(model.clone(), path.clone(), None);
        let opts = Options {
            limit: Some(24),
            batch_size: bs,
            ..Options::default()
        };
        let r = evaluate(&mut b, &specs, &groups, &opts).unwrap();
        runs.push((bs, r));
    }
    let (_, base) = &runs[0];
    for (bs, r) in &runs[1..] {
        for (a, b) in base.tasks.iter().zip(&r.tasks) {
            assert_eq!(a.samples.len(), b.samples.len());
            for (x, y) in a.samples.iter().zip(&b.samples) {
                let bits = |s: &verity_eval::run::Sample| -> Vec<Vec<u32>> {
                    s.results
                        .iter()
                        .map(|r| r.token_logprobs.iter().map(|v| v.to_bits()).collect())
                        .collect()
                };
                assert_eq!(
                    bits(x),
                    bits(y),
                    "{} doc {}: batch 1 vs {bs}",
                    a.spec.config.task,
                    x.doc_id
                );
                assert_eq!(x.hash(), y.hash());
            }
            assert_eq!(
                a.chain, b.chain,
                "{}: hash chain, batch 1 vs {bs}",
                a.spec.config.task
            );
            assert_eq!(a.aggregates, b.aggregates);
        }
    }
}
