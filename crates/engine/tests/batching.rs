//! Sequences evaluated together in one batch give exactly the logits they give alone,
//! whatever else is in the batch and however prompts are chunked.

use std::sync::Arc;

use verity_engine::{BatchItem, KvCache, Logits, Runner, Session};

fn smollm2() -> Arc<verity_model::Model> {
    let path = verity_store::resolve(None).expect("default model");
    Arc::new(verity_model::load(&path).expect("load"))
}

#[test]
fn batched_sequences_equal_separate_ones() {
    let model = smollm2();
    let n_vocab = model.hparams.n_vocab;
    let prompts: Vec<Vec<u32>> = vec![
        model
            .tokenizer
            .encode("The capital of France is", false)
            .unwrap(),
        model
            .tokenizer
            .encode("Once upon a time, in a small village, there lived", false)
            .unwrap(),
        model.tokenizer.encode("def fibonacci(n):", false).unwrap(),
    ];
    // Alone: all logits of each prompt, then one more token.
    let alone: Vec<(Vec<f32>, Vec<f32>)> = prompts
        .iter()
        .map(|p| {
            let mut s = Session::new(model.clone(), 128);
            let all = s.eval_all(p).unwrap();
            let next = s.eval(&[42]).unwrap().to_vec();
            (all, next)
        })
        .collect();

    // Together: prompts in one pass (the first in two chunks), then one decode step for all.
    let mut runner = Runner::new(model.clone());
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(&model, 128)).collect();
    let split = 2;
    let first = runner
        .forward(&mut [BatchItem {
            cache: &mut caches[0],
            tokens: &prompts[0][..split],
            logits: Logits::All,
        }])
        .unwrap()
        .to_vec();
    let (c0, rest) = caches.split_first_mut().unwrap();
    let (c1, c2) = rest.split_at_mut(1);
    let together = runner
        .forward(&mut [
            BatchItem {
                cache: c0,
                tokens: &prompts[0][split..],
                logits: Logits::All,
            },
            BatchItem {
                cache: &mut c1[0],
                tokens: &prompts[1],
                logits: Logits::All,
            },
            BatchItem {
                cache: &mut c2[0],
                tokens: &prompts[2],
                logits: Logits::All,
            },
        ])
        .unwrap()
        .to_vec();
    let mut expected = alone[0].0[split * n_vocab..].to_vec();
    expected.extend_from_slice(&alone[1].0);
    expected.extend_from_slice(&alone[2].0);
    assert_eq!(first, alone[0].0[..split * n_vocab]);
    assert_eq!(together, expected);

    let mut items: Vec<BatchItem> = caches
        .iter_mut()
        .map(|c| BatchItem {
            cache: c,
            tokens: &[42],
            logits: Logits::Last,
        })
        .collect();
    let step = runner.forward(&mut items).unwrap().to_vec();
    for (i, (_, next)) in alone.iter().enumerate() {
        assert_eq!(
            &step[i * n_vocab..(i + 1) * n_vocab],
            &next[..],
            "sequence {i}"
        );
    }
}

#[test]
fn context_overflow_is_an_error_not_a_panic() {
    let model = smollm2();
    let mut s = Session::new(model, 8);
    let err = s.eval(&[1; 9]).unwrap_err();
    assert!(err.to_string().contains("context holds 8"), "{err}");
    assert_eq!(s.n_past(), 0, "a refused batch leaves the cache untouched");
    s.eval(&[1; 8]).unwrap();
    assert!(s.eval(&[1]).is_err());
    let err = s.eval(&[]).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
