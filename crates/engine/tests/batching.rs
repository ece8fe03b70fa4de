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

/// A model with sliding-window layers (the tiny random Gemma 3 of `scripts/make-test-models`:
/// window 8, five windowed layers in six), whose KV cache keeps only what the windows reach:
/// one pass, token by token, odd chunks, a prefix resumed after `truncate` and a copied
/// prefix all give the same logits bit for bit, however often the windowed layers dropped
/// and shifted rows.
#[test]
fn windowed_layers_keep_only_their_window_and_the_same_logits() {
    let model = test_model("gemma3-tiny-Q8_0.gguf");
    assert!(model.hparams.layer_window(0) == Some(8) && model.hparams.layer_window(5).is_none());
    let n_vocab = model.hparams.n_vocab;
    let tokens: Vec<u32> = (0..60).map(|i| (i * 37 % 500) as u32 + 3).collect();
    let n_ctx = 64;

    let (whole, mut chunked) = same_whole_by_token_and_in_chunks(&model, &tokens, n_ctx, 7);

    // What a run of a prompt keeps: one short of the shared prefix (the last prompt token
    // is recomputed for its logits), or nothing where the windows have moved past it.
    assert_eq!(chunked.reusable_prefix(&tokens), 59);
    assert_eq!(chunked.reusable_prefix(&tokens[..58]), 57);
    assert_eq!(chunked.reusable_prefix(&tokens[..21]), 0);
    let mut other = tokens[..58].to_vec();
    other[57] = 1;
    assert_eq!(
        chunked.reusable_prefix(&other),
        57,
        "a prompt that differs at 57"
    );

    // Resume at a position the windows still reach (the last chunk, 56..60, made the
    // windowed layers drop every row before 49): the rest recomputed equals the rest.
    let at = chunked.common_prefix(&tokens[..57]);
    assert_eq!(at, 57);
    chunked.truncate(at);
    assert_eq!(chunked.n_past(), 57);
    let rest = chunked.eval_all(&tokens[57..]).unwrap();
    assert_eq!(rest, whole[57 * n_vocab..], "resumed at 57");
    // A position the windows have moved past cannot be resumed: nothing is kept, and
    // `truncate` says so (as when a caller keeps one short of the offered prefix).
    assert_eq!(chunked.common_prefix(&tokens[..20]), 0);
    assert_eq!(chunked.truncate(20), 0);
    assert_eq!(chunked.n_past(), 0);

    // A copied prefix continues exactly as the original.
    let mut src = KvCache::new(&model, n_ctx);
    let mut runner = Runner::new(model.clone());
    runner
        .forward(&mut [BatchItem {
            cache: &mut src,
            tokens: &tokens[..40],
            logits: Logits::None,
        }])
        .unwrap();
    let mut dst = KvCache::new(&model, n_ctx);
    dst.copy_prefix_from(&src, 40);
    let cont = runner
        .forward(&mut [BatchItem {
            cache: &mut dst,
            tokens: &tokens[40..],
            logits: Logits::All,
        }])
        .unwrap()
        .to_vec();
    assert_eq!(cont, whole[40 * n_vocab..], "copied prefix");
}

/// A mixture-of-experts model (the tiny random qwen3moe of `scripts/make-test-models`: 8
/// experts, 2 used): a prompt at once (each expert over many rows, one expert after
/// another), token by token and in small chunks (all picked experts together), and beside
/// other sequences in one batch give the same logits bit for bit. In Q8_0 and in F32 (whose
/// products do not quantize the activations, so the last bit of every expert output counts).
#[test]
fn moe_rows_do_not_depend_on_the_batch() {
    moe_rows_do_not_depend_on_the_batch_in("qwen3moe-tiny-Q8_0.gguf");
    moe_rows_do_not_depend_on_the_batch_in("qwen3moe-tiny-F32.gguf");
}

fn moe_rows_do_not_depend_on_the_batch_in(file: &str) {
    let model = test_model(file);
    assert!(model.hparams.n_expert == 8 && model.hparams.n_expert_used == 2);
    let n_vocab = model.hparams.n_vocab;
    let tokens: Vec<u32> = (0..48).map(|i| (i * 53 % 400) as u32 + 5).collect();
    let other: Vec<u32> = (0..20).map(|i| (i * 31 % 300) as u32 + 7).collect();
    let n_ctx = 64;

    let (whole, _) = same_whole_by_token_and_in_chunks(&model, &tokens, n_ctx, 3);

    // The last 8 tokens beside another sequence's prompt, then one decode step for both.
    let mut runner = Runner::new(model.clone());
    let mut a = KvCache::new(&model, n_ctx);
    let mut b = KvCache::new(&model, n_ctx);
    runner
        .forward(&mut [BatchItem {
            cache: &mut a,
            tokens: &tokens[..40],
            logits: Logits::None,
        }])
        .unwrap();
    let together = runner
        .forward(&mut [
            BatchItem {
                cache: &mut a,
                tokens: &tokens[40..],
                logits: Logits::All,
            },
            BatchItem {
                cache: &mut b,
                tokens: &other,
                logits: Logits::All,
            },
        ])
        .unwrap()
        .to_vec();
    assert_eq!(
        together[..8 * n_vocab],
        whole[40 * n_vocab..],
        "beside another prompt"
    );
    let other_alone = Session::new(model.clone(), n_ctx).eval_all(&other).unwrap();
    assert_eq!(together[8 * n_vocab..], other_alone[..], "the other prompt");
    let step = runner
        .forward(&mut [
            BatchItem {
                cache: &mut a,
                tokens: &[42],
                logits: Logits::Last,
            },
            BatchItem {
                cache: &mut b,
                tokens: &[43],
                logits: Logits::Last,
            },
        ])
        .unwrap()
        .to_vec();
    let mut s = Session::new(model.clone(), n_ctx);
    s.eval_all(&tokens).unwrap();
    assert_eq!(
        step[..n_vocab],
        s.eval(&[42]).unwrap()[..],
        "decode step, first"
    );
    let mut s = Session::new(model.clone(), n_ctx);
    s.eval_all(&other).unwrap();
    assert_eq!(
        step[n_vocab..],
        s.eval(&[43]).unwrap()[..],
        "decode step, second"
    );
}

/// A random-weight model of `scripts/make-test-models`.
fn test_model(file: &str) -> Arc<verity_model::Model> {
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        });
    let path = assets.join("test-models").join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/make-test-models",
        path.display()
    );
    Arc::new(verity_model::load(&path).unwrap())
}

/// Every logit of `tokens` in one pass; asserts that token by token and in chunks of
/// `chunk` give the same bits. Returns them and the chunked session (for more checks).
fn same_whole_by_token_and_in_chunks(
    model: &Arc<verity_model::Model>,
    tokens: &[u32],
    n_ctx: usize,
    chunk: usize,
) -> (Vec<f32>, Session) {
    let whole = Session::new(model.clone(), n_ctx).eval_all(tokens).unwrap();

    let mut one = Session::new(model.clone(), n_ctx);
    let mut by_token = Vec::new();
    for &t in tokens {
        by_token.extend_from_slice(&one.eval_all(&[t]).unwrap());
    }
    assert_eq!(by_token, whole, "token by token");

    let mut chunked = Session::new(model.clone(), n_ctx);
    let mut by_chunk = Vec::new();
    for c in tokens.chunks(chunk) {
        by_chunk.extend_from_slice(&chunked.eval_all(c).unwrap());
    }
    assert_eq!(by_chunk, whole, "chunks of {chunk}");
    (whole, chunked)
}
