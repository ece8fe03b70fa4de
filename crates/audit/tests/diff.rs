//! `diff` on real and rewritten models: itself, one perturbed tensor, a LoRA merge (rank 8
//! on q and v), requantization, and random weights of the same shape.

mod common;

use verity_audit::diff::{diff, Status};

#[test]
fn smollm2_against_itself_is_identical() {
    let p = common::smollm2();
    let d = diff(&p, &p).unwrap();
    assert_eq!(d.verdict, "identical", "{}", d.explanation);
    assert_eq!(d.summary.identical, 272);
}

#[test]
fn split_copy_is_identical() {
    let parts = common::smollm2_split();
    let d = diff(&common::smollm2(), &parts[0]).unwrap();
    assert_eq!(d.verdict, "identical", "{}", d.explanation);
    assert_eq!(d.summary.identical, 272);
}

#[test]
fn one_perturbed_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("perturbed.gguf");
    let mut rng = common::Rng::new(1);
    common::rewrite(&common::smollm2(), &b, |t, v| {
        if t.name != "blk.7.ffn_down.weight" {
            return false;
        }
        for x in v.iter_mut().step_by(97) {
            *x += 0.05 * rng.normal();
        }
        true
    });
    let d = diff(&common::smollm2(), &b).unwrap();
    let changed: Vec<&str> = d
        .tensors
        .iter()
        .filter(|t| matches!(t.status, Status::Changed))
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(changed, ["blk.7.ffn_down.weight"]);
    assert_eq!(d.summary.identical, 271);
    assert_eq!(d.verdict, "derives", "{}", d.explanation);
}

#[test]
fn lora_merge_is_low_rank_and_derived() {
    // On SmolLM2 itself, stored back in Q4_1: the requantization noise is full-rank, the
    // LoRA product stands out of it.
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("lora.gguf");
    let mut rng = common::Rng::new(2);
    common::rewrite(&common::smollm2(), &b, |t, v| {
        let lora = t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_v.weight");
        let layer_ok = ["blk.0.", "blk.9.", "blk.20."]
            .iter()
            .any(|p| t.name.starts_with(p));
        if !(lora && layer_ok) {
            return false;
        }
        let (cols, rows) = (t.shape[0], t.shape[1]);
        common::add_low_rank(v, rows, cols, 8, 0.2, &mut rng);
        true
    });
    let d = diff(&common::smollm2(), &b).unwrap();
    let changed: Vec<_> = d
        .tensors
        .iter()
        .filter(|t| matches!(t.status, Status::Changed))
        .collect();
    assert_eq!(changed.len(), 6, "{changed:?}");
    for t in &changed {
        let r = t.rank.as_ref().unwrap();
        assert!((7..=9).contains(&r.effective_rank), "{}: {r:?}", t.name);
        assert!(t.cosine.unwrap() > 0.9);
    }
    assert_eq!(d.verdict, "derives", "{}", d.explanation);
    assert!(d.explanation.contains("low-rank"), "{}", d.explanation);
}

#[test]
fn lora_merge_in_f32_has_exact_rank() {
    let dir = tempfile::tempdir().unwrap();
    let a = common::test_model("llama-tiny-F32.gguf");
    let b = dir.path().join("lora.gguf");
    let mut rng = common::Rng::new(3);
    common::rewrite(&a, &b, |t, v| {
        if !(t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_v.weight")) {
            return false;
        }
        let (cols, rows) = (t.shape[0], t.shape[1]);
        common::add_low_rank(v, rows, cols, 8, 0.05, &mut rng);
        true
    });
    let d = diff(&a, &b).unwrap();
    let changed: Vec<_> = d
        .tensors
        .iter()
        .filter(|t| matches!(t.status, Status::Changed))
        .collect();
    assert_eq!(changed.len(), 4);
    for t in &changed {
        assert_eq!(
            t.rank.as_ref().unwrap().effective_rank,
            8,
            "{}: {:?}",
            t.name,
            t.rank
        );
    }
    assert_eq!(d.verdict, "derives", "{}", d.explanation);
}

#[test]
fn requantized_copy_derives_across_types() {
    let a = common::test_model("llama-tiny-F32.gguf");
    let b = common::test_model("llama-tiny-Q8_0.gguf");
    let d = diff(&a, &b).unwrap();
    assert_eq!(d.verdict, "derives", "{}", d.explanation);
    assert!(d.summary.weighted_cosine.unwrap() > 0.99);
    assert!(
        d.explanation.contains("requantization"),
        "{}",
        d.explanation
    );
}

#[test]
fn random_weights_of_the_same_shape_are_unrelated() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("random.gguf");
    let mut rng = common::Rng::new(4);
    common::rewrite(&common::smollm2(), &b, |_, v| {
        for x in v.iter_mut() {
            *x = 0.05 * rng.normal();
        }
        true
    });
    let d = diff(&common::smollm2(), &b).unwrap();
    assert_eq!(d.verdict, "unrelated", "{}", d.explanation);
    assert_eq!(d.summary.changed, 272);
}
