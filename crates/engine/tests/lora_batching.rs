//! With adapters, a row's logits still do not depend on the batch: sequences on different
//! adapters (and on none) decoded together give exactly what each gives alone, for the
//! one-group path (a prompt) and the many-group path (a mixed decode step) alike, with
//! the f16 and the f32 KV cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use verity_engine::{BatchItem, KvCache, KvType, Logits, LoraSet, Runner, Session};
use verity_model::adapter::LoraTensor;
use verity_model::{Adapter, AdapterFile, AdapterFormat, Model, Proj};

fn random_set(model: &Model, seed: u64, rank: usize) -> Arc<LoraSet> {
    let hp = &model.hparams;
    let mut s = seed | 1;
    let mut next = move |scale: f32| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
    };
    let mut tensors = BTreeMap::new();
    for l in 0..hp.n_layer {
        for proj in Proj::ALL {
            let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
            tensors.insert(
                (l, proj),
                LoraTensor {
                    a: (0..rank * in_dim).map(|_| next(0.2)).collect(),
                    b: (0..out_dim * rank).map(|_| next(0.1)).collect(),
                    rank,
                    in_dim,
                    out_dim,
                    scale: 2.0,
                    file_type: verity_formats::TensorType::F32,
                },
            );
        }
    }
    let file = AdapterFile {
        path: "random".into(),
        format: AdapterFormat::Peft,
        arch: None,
        base_model: None,
        rank,
        alpha: 2.0 * rank as f32,
        use_rslora: false,
        tensors,
        config: None,
        qk_permuted: false,
        fused: Default::default(),
    };
    LoraSet::new(vec![(Arc::new(Adapter::bind(&file, model).unwrap()), 1.0)])
}

#[test]
fn mixed_adapter_batches_equal_separate_sequences() {
    for kv in [KvType::F16, KvType::F32] {
        mixed_batches(kv);
    }
}

fn mixed_batches(kv: KvType) {
    let model = Arc::new(verity_model::load(&verity_store::resolve(None).unwrap()).unwrap());
    let sets = [
        None,
        Some(random_set(&model, 7, 8)),
        Some(random_set(&model, 99, 4)),
    ];
    let prompt: Vec<u32> = model
        .tokenizer
        .encode("The capital of France is", false)
        .unwrap();
    let alone: Vec<(Vec<f32>, Vec<f32>)> = sets
        .iter()
        .map(|set| {
            let mut s = Session::with_kv_type(model.clone(), 64, kv);
            s.set_lora(set.clone());
            let all = s.eval_all(&prompt).unwrap();
            let next = s.eval(&[42]).unwrap().to_vec();
            (all, next)
        })
        .collect();
    assert_ne!(alone[0].1, alone[1].1, "the adapter changes nothing");
    assert_ne!(alone[1].1, alone[2].1, "two adapters agree");

    // Together: the prompts in one pass, then one decode step for all (three groups).
    let mut runner = Runner::new(model.clone());
    let mut caches: Vec<KvCache> = sets
        .iter()
        .map(|set| {
            let mut c = KvCache::with_type(&model, 64, kv);
            c.set_lora(set.clone());
            c
        })
        .collect();
    let v = model.hparams.n_vocab;
    let mut items: Vec<BatchItem> = caches
        .iter_mut()
        .map(|cache| BatchItem {
            cache,
            tokens: &prompt,
            logits: Logits::All,
        })
        .collect();
    let all = runner.forward(&mut items).unwrap().to_vec();
    for (i, (a, _)) in alone.iter().enumerate() {
        let got = &all[i * prompt.len() * v..(i + 1) * prompt.len() * v];
        assert!(
            got == &a[..],
            "sequence {i}: prompt logits differ in a batch"
        );
    }
    let step = [42u32];
    let mut items: Vec<BatchItem> = caches
        .iter_mut()
        .map(|cache| BatchItem {
            cache,
            tokens: &step,
            logits: Logits::Last,
        })
        .collect();
    let next = runner.forward(&mut items).unwrap().to_vec();
    for (i, (_, n)) in alone.iter().enumerate() {
        assert!(
            next[i * v..(i + 1) * v] == n[..],
            "sequence {i}: decode logits differ in a batch"
        );
    }
}
