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

/// The worst per-tensor relative error of verity's gradient against the reference in
/// `dir` (made on an F32 directory) for `model`, with and without activation checkpointing;
/// asserts both give the same bits and the loss within `loss_tol`.
fn worst_error(
    dir: &std::path::Path,
    model: Arc<verity_model::Model>,
    loss_tol: f64,
) -> (f64, String) {
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
    let file = AdapterFile::open(&dir.join("adapter")).unwrap();
    let params = LoraParams::from_file(&file, &model.hparams, 0.0).unwrap();
    let refs: Vec<&Packed> = seqs.iter().collect();
    let b = Batch::new(&refs);
    let n_targets = b.targets.len();
    assert_eq!(n_targets as u64, batch["n_targets"].as_u64().unwrap());
    let mut all = Vec::new();
    for checkpointing in [false, true] {
        let mut tr = Trainer::new(model.clone());
        tr.checkpointing = checkpointing;
        let mut grads = vec![0f32; params.n_params()];
        let loss = tr.run(&params, &b, 1.0 / n_targets as f32, None, Some(&mut grads));
        let loss = loss.sum / n_targets as f64;
        let ref_loss = batch["loss_f64"].as_f64().unwrap();
        eprintln!("loss {loss} torch {ref_loss}");
        assert!(
            (loss - ref_loss).abs() <= loss_tol * ref_loss,
            "loss {loss} vs {ref_loss}"
        );
        all.push(grads);
    }
    assert!(
        all[0] == all[1],
        "activation checkpointing changed the gradient"
    );
    // The gradients in Hugging Face's layout (q/k rows un-permuted for GGUF bases).
    let hf = params.to_adapter_file(&all[0], &model.hparams, dir.to_path_buf());
    let bytes = std::fs::read(dir.join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut worst = (0f64, String::new());
    for (&(layer, proj), t) in &hf.tensors {
        for (which, got) in [("lora_A", &t.a), ("lora_B", &t.b)] {
            let name = format!(
                "base_model.model.model.layers.{layer}.{}.{which}.weight",
                proj.hf_module()
            );
            let want = f32s(&st.tensor(&name).unwrap_or_else(|_| panic!("no {name}")));
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
        }
    }
    assert_eq!(hf.tensors.len() * 2, 420);
    worst
}

#[test]
fn lora_gradients_match_pytorch_autograd() {
    let dir = assets().join("tune-ref/grad");
    let model_dir = assets().join("smollm2-f32-hf");
    if !dir.join("grads.safetensors").exists() || !model_dir.exists() {
        eprintln!("SKIPPED: no reference gradients; run scripts/tune-grad-reference.py with the PEFT venv");
        return;
    }
    let model = Arc::new(verity_model::load(&model_dir).unwrap());
    let (worst, name) = worst_error(&dir, model, 1e-4);
    eprintln!("F32 directory: 420 tensors, worst relative error {worst:.3e} ({name})");
    assert!(worst <= 1e-3, "gradient {name} off by {worst:.3e}");
}

/// The Q4_1 GGUF base against PyTorch on its dequantized weights: the F32 directory is
/// `verity convert --to hf` of that very file, so the reference is the same. Not parity: verity's forward quantizes activations to Q8_1 before
/// every product with a Q4_1 weight, as llama.cpp does, so it differentiates a slightly
/// different function than PyTorch's float one. The figure is reported; the bound only
/// catches a broken backward pass.
#[test]
fn q4_1_gradients_against_pytorch_on_dequantized_weights() {
    let dir = assets().join("tune-ref/grad");
    if !dir.join("grads.safetensors").exists() {
        eprintln!("SKIPPED: no reference gradients; run scripts/tune-grad-reference.py with the PEFT venv");
        return;
    }
    let path = verity_store::resolve(None).unwrap();
    let model = Arc::new(verity_model::load(&path).unwrap());
    let (worst, name) = worst_error(&dir, model, 2e-2);
    eprintln!("Q4_1 GGUF vs PyTorch on its dequantized weights: worst relative error {worst:.3e} ({name})");
    assert!(worst <= 0.5, "gradient {name} off by {worst:.3e}");
}

/// The F32 GGUF of the same weights (q/k rows in llama.cpp's permuted order, RoPE
/// interleaved): the gradient must be PyTorch's too once turned back into Hugging Face's
/// order, which checks the permuted layout end to end.
#[test]
fn f32_gguf_gradients_match_pytorch_in_hf_order() {
    let dir = assets().join("tune-ref/grad");
    let gguf = assets().join("SmolLM2-135M-Instruct.F32.gguf");
    if !dir.join("grads.safetensors").exists() || !gguf.exists() {
        eprintln!("SKIPPED: no reference gradients or F32 GGUF (scripts/make-f32-model)");
        return;
    }
    let model = Arc::new(verity_model::load(&gguf).unwrap());
    let (worst, name) = worst_error(&dir, model, 1e-4);
    eprintln!("F32 GGUF: worst relative error {worst:.3e} ({name})");
    assert!(worst <= 1e-3, "gradient {name} off by {worst:.3e}");
}
