//! Gradients against PyTorch autograd (transformers + PEFT, CPU, fp32) on the F32 Hugging
//! Face directory of the default model, with a PEFT-made non-zero adapter (rank 8,
//! all-linear) and a fixed batch of 4 × 128 tokens. Reference data:
//! scripts/tune-grad-reference.py (run by scripts/test), under
//! $VERITY_ASSETS/tune-ref/grad/. Skips, saying so, when the data is missing.

use std::path::PathBuf;
use std::sync::Arc;

use verity_model::AdapterFile;
use verity_tune::data::Packed;
use verity_tune::lora::LoraParams;
use verity_tune::step::{Batch, Trainer};

fn assets() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/verity/assets")
        })
}

fn f32s(t: &safetensors::tensor::TensorView) -> Vec<f32> {
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn lora_gradients_match_pytorch_autograd() {
    let dir = assets().join("tune-ref/grad");
    let model_dir = assets().join("smollm2-f32-hf");
    if !dir.join("grads.safetensors").exists() || !model_dir.exists() {
        eprintln!("SKIPPED: no reference gradients; run scripts/tune-grad-reference.py with the PEFT venv");
        return;
    }
    let batch: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("batch.json")).unwrap()).unwrap();
    let seqs: Vec<Packed> = batch["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let tokens: Vec<u32> = row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut target = vec![true; tokens.len()];
            target[0] = false;
            let n = tokens.len();
            Packed {
                tokens,
                target,
                segments: vec![(0, n)],
            }
        })
        .collect();
    let model = Arc::new(verity_model::load(&model_dir).unwrap());
    let file = AdapterFile::open(&dir.join("adapter")).unwrap();
    let params = LoraParams::from_file(&file, &model.hparams, 0.0).unwrap();
    let refs: Vec<&Packed> = seqs.iter().collect();
    let b = Batch::new(&refs);
    let n_targets = b.targets.len();
    assert_eq!(n_targets as u64, batch["n_targets"].as_u64().unwrap());
    for checkpointing in [false, true] {
        let mut tr = Trainer::new(model.clone());
        tr.checkpointing = checkpointing;
        let mut grads = vec![0f32; params.n_params()];
        let loss = tr.run(&params, &b, 1.0 / n_targets as f32, None, Some(&mut grads));
        let loss = loss.sum / n_targets as f64;
        let ref_loss = batch["loss_f64"].as_f64().unwrap();
        eprintln!("loss {loss} torch {ref_loss}");
        assert!(
            (loss - ref_loss).abs() < 1e-4 * ref_loss,
            "loss {loss} vs {ref_loss}"
        );

        let bytes = std::fs::read(dir.join("grads.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut worst = (0f64, String::new());
        let mut checked = 0;
        for m in &params.mats {
            for (which, range) in [("lora_A", m.a_range()), ("lora_B", m.b_range())] {
                let name = format!(
                    "base_model.model.model.layers.{}.{}.{which}.weight",
                    m.layer,
                    m.proj.hf_module()
                );
                let want = f32s(&st.tensor(&name).unwrap_or_else(|_| panic!("no {name}")));
                let got = &grads[range];
                assert_eq!(want.len(), got.len(), "{name}");
                let (mut num, mut den) = (0f64, 0f64);
                for (&g, &w) in got.iter().zip(&want) {
                    num += (g as f64 - w as f64).powi(2);
                    den += (w as f64).powi(2);
                }
                let rel = (num / den.max(1e-300)).sqrt();
                if std::env::var_os("VERITY_GRAD_DEBUG").is_some() {
                    eprintln!("{rel:.3e} {name} norm {:.3e}", den.sqrt());
                }
                if rel > worst.0 {
                    worst = (rel, name.clone());
                }
                checked += 1;
            }
        }
        eprintln!(
            "checkpointing={checkpointing}: {checked} tensors, worst relative error {:.3e} ({})",
            worst.0, worst.1
        );
        assert!(
            worst.0 <= 1e-3,
            "gradient {} off by {:.3e}",
            worst.1,
            worst.0
        );
    }
}
