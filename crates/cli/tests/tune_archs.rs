//! LoRA gradients of the tuner (`verity_tune::step::Trainer`) against PyTorch autograd
//! (transformers + PEFT, CPU, fp32, eager attention) on the random-weight test models of
//! the architectures whose training graph differs from Llama's: Qwen3 (per-head q/k RMS
//! norms), SmolLM3 (NoPE layers) and Gemma 3 (GeGLU with tanh-GELU, post-attention and
//! post-FFN norms, embeddings scaled by √hidden, sliding-window layers with their own RoPE
//! base); Llama (q/k rows permuted in the GGUF) and Qwen2 (biases) as controls.
//!
//! For each F32 GGUF: `verity convert --to hf --dtype f32` writes the directory transformers
//! loads; clients/lora_grads.py (the PEFT venv's Python) makes a non-zero PEFT adapter
//! (rank 8, q/k/v/o/gate/up/down), a batch of 2 × 48 random tokens and the gradient of the
//! mean causal-LM loss; verity computes the same from the GGUF, with and without activation
//! checkpointing (bit-identical), and every tensor's relative RMS error must be ≤ 1e-3,
//! the loss within 1e-4. Skips, saying so, without the test models or the PEFT venv
//! (scripts/make-test-models, scripts/setup-peft-venv). VERITY_GRAD_DEBUG=1 prints every
//! tensor's error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use verity_model::AdapterFile;
use verity_tune::data::Packed;
use verity_tune::lora::LoraParams;
use verity_tune::step::{Batch, Trainer};

const SEED: u64 = 7;
const GRAD_BOUND: f64 = 1e-3;
const LOSS_BOUND: f64 = 1e-4;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn assets_dir() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        })
}

/// The PEFT venv's Python (scripts/setup-peft-venv: $VERITY_PEFT_VENV or
/// $VERITY_ASSETS/peft-venv).
fn peft_python() -> PathBuf {
    std::env::var_os("VERITY_PEFT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets_dir().join("peft-venv"))
        .join("bin/python")
}

fn f32s(t: &safetensors::tensor::TensorView) -> Vec<f32> {
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// What one architecture measured.
struct Outcome {
    loss: f64,
    torch_loss: f64,
    worst: f64,
    worst_name: String,
    /// Per layer: the worst tensor's error and name.
    per_layer: Vec<(f64, String)>,
}

/// Convert `arch`'s tiny F32 GGUF, have PyTorch compute the reference, and compare
/// verity's loss and gradients with it. None (after saying why) when the inputs are missing.
fn check(arch: &str) -> Option<Outcome> {
    check_file(
        arch,
        &assets_dir().join(format!("test-models/{arch}-tiny-F32.gguf")),
    )
}

fn check_file(arch: &str, gguf: &Path) -> Option<Outcome> {
    let python = peft_python();
    if !gguf.exists() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/make-test-models)",
            gguf.display()
        );
        return None;
    }
    if !python.exists() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/setup-peft-venv)",
            python.display()
        );
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("hf");
    let out = tmp.path().join("ref");
    let c = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["convert", "--to", "hf", "--dtype", "f32"])
        .arg(gguf)
        .arg(&hf)
        .output()
        .unwrap();
    assert!(
        c.status.success(),
        "{arch}: verity convert failed:\n{}",
        String::from_utf8_lossy(&c.stderr)
    );
    let o = Command::new(&python)
        .arg(repo_root().join("crates/cli/tests/clients/lora_grads.py"))
        .arg(&hf)
        .arg(&out)
        .arg(SEED.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success(),
        "{arch}: lora_grads.py failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&o.stdout)
    );
    eprintln!("{arch}: {}", stderr.trim());

    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("batch.json")).unwrap()).unwrap();
    let model = Arc::new(verity_model::load(gguf).unwrap());
    let seqs: Vec<Packed> = reference["tokens"]
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
            let n = tokens.len();
            let mut target = vec![true; n];
            target[0] = false;
            Packed {
                tokens,
                target,
                segments: vec![(0, n)],
            }
        })
        .collect();
    let hp = &model.hparams;
    // What each model is here to exercise is there.
    match arch {
        "gemma3" => assert!(
            hp.windowed.contains(&true) && hp.windowed.contains(&false),
            "{arch}: windowed layers {:?}",
            hp.windowed
        ),
        "smollm3" => assert!(
            hp.no_rope.contains(&true) && hp.no_rope.contains(&false),
            "{arch}: NoPE layers {:?}",
            hp.no_rope
        ),
        "llama" => assert_eq!(hp.rope_style, verity_model::RopeStyle::Interleaved),
        "mistral" => assert!(hp.windowed.iter().all(|&w| w), "{arch}: {:?}", hp.windowed),
        _ => {}
    }
    if hp.windowed.iter().any(|&w| w) {
        // The windowed layers must matter: every sequence runs past the window, and
        // opening the windows changes transformers' logits clearly.
        let w = hp.window;
        assert!(
            w > 0 && seqs.iter().all(|s| s.tokens.len() > w),
            "{arch}: window {w}"
        );
        let effect = reference["window_effect"].as_f64().unwrap();
        assert!(
            effect > 0.05,
            "{arch}: the windows move the logits by {effect}"
        );
    }
    let file = AdapterFile::open(&out.join("adapter")).unwrap();
    let params = LoraParams::from_file(&file, &model.hparams, 0.0).unwrap();
    assert_eq!(params.mats.len(), 7 * model.hparams.n_layer, "{arch}");
    let refs: Vec<&Packed> = seqs.iter().collect();
    let batch = Batch::new(&refs);
    let n_targets = batch.targets.len();
    assert_eq!(n_targets as u64, reference["n_targets"].as_u64().unwrap());
    let torch_loss = reference["loss"].as_f64().unwrap();

    let mut runs = Vec::new();
    for checkpointing in [false, true] {
        let mut tr = Trainer::new(model.clone());
        tr.checkpointing = checkpointing;
        let mut grads = vec![0f32; params.n_params()];
        let loss = tr.run(
            &params,
            &batch,
            1.0 / n_targets as f32,
            None,
            Some(&mut grads),
        );
        assert_eq!(loss.targets, n_targets);
        runs.push((loss.sum / n_targets as f64, grads));
    }
    assert!(
        runs[0].0.to_bits() == runs[1].0.to_bits() && runs[0].1 == runs[1].1,
        "{arch}: activation checkpointing changed the loss or the gradient"
    );
    let (loss, grads) = runs.swap_remove(0);

    // The gradients in Hugging Face's layout (q/k rows un-permuted for llama GGUFs), and
    // as PEFT's modules (Phi-3's fused qkv_proj and gate_up_proj: one A each).
    let hf_grads = params
        .to_adapter_file(&grads, &model.hparams, out.join("adapter"))
        .join_fused(&model.hparams)
        .unwrap_or_else(|e| panic!("{arch}: {e}"));
    let bytes = std::fs::read(out.join("grads.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.len(),
        2 * hf_grads.modules().count(),
        "{arch}: tensor count"
    );
    let debug = std::env::var_os("VERITY_GRAD_DEBUG").is_some();
    let mut per_layer = vec![(0f64, String::new()); model.hparams.n_layer];
    for (layer, module, t) in hf_grads.modules() {
        let block = if module.starts_with(['q', 'k', 'v', 'o']) {
            "self_attn"
        } else {
            "mlp"
        };
        let module = format!("{block}.{module}");
        for (which, got) in [("lora_A", &t.a), ("lora_B", &t.b)] {
            let name = format!("base_model.model.model.layers.{layer}.{module}.{which}.weight");
            let want = f32s(
                &st.tensor(&name)
                    .unwrap_or_else(|_| panic!("{arch}: no {name}")),
            );
            assert_eq!(want.len(), got.len(), "{arch}: {name}");
            let (mut num, mut den) = (0f64, 0f64);
            for (&g, &w) in got.iter().zip(&want) {
                num += (g as f64 - w as f64).powi(2);
                den += (w as f64).powi(2);
            }
            let rel = (num / den.max(1e-300)).sqrt();
            if debug {
                eprintln!("{arch}: {rel:.3e} {name} norm {:.3e}", den.sqrt());
            }
            // NaN counts as the worst.
            if rel.is_nan() || rel > per_layer[layer].0 {
                per_layer[layer] = (rel, format!("{module}.{which}"));
            }
        }
    }
    let mut l = 0;
    for (i, e) in per_layer.iter().enumerate() {
        if e.0.is_nan() || e.0 > per_layer[l].0 {
            l = i;
        }
    }
    let (worst, w) = per_layer[l].clone();
    Some(Outcome {
        loss,
        torch_loss,
        worst,
        worst_name: format!("layers.{l}.{w}"),
        per_layer,
    })
}

fn assert_parity(arch: &str) {
    report(arch, check(arch));
}

fn report(arch: &str, o: Option<Outcome>) {
    let Some(o) = o else { return };
    eprintln!(
        "{arch}: loss {:.7} torch {:.7} (relative {:.2e}); worst gradient relative error {:.3e} ({})",
        o.loss,
        o.torch_loss,
        (o.loss - o.torch_loss).abs() / o.torch_loss,
        o.worst,
        o.worst_name
    );
    for (l, (e, name)) in o.per_layer.iter().enumerate() {
        eprintln!("{arch}:   layer {l}: worst {e:.3e} ({name})");
    }
    assert!(
        (o.loss - o.torch_loss).abs() <= LOSS_BOUND * o.torch_loss,
        "{arch}: loss {} vs PyTorch {}",
        o.loss,
        o.torch_loss
    );
    assert!(
        o.worst <= GRAD_BOUND,
        "{arch}: gradient {} off by {:.3e}",
        o.worst_name,
        o.worst
    );
}

#[test]
fn qwen3_lora_gradients_match_pytorch() {
    assert_parity("qwen3");
}

#[test]
fn gemma3_lora_gradients_match_pytorch() {
    assert_parity("gemma3");
}

#[test]
fn smollm3_lora_gradients_match_pytorch() {
    assert_parity("smollm3");
}

/// Fused qkv_proj and gate_up_proj: one A shared by the parts, B stacked.
#[test]
fn phi3_lora_gradients_match_pytorch() {
    assert_parity("phi3");
}

/// LongRoPE's short factors and attention factor (original context 4096).
#[test]
fn phi3_longrope_lora_gradients_match_pytorch() {
    assert_parity("phi3-longrope");
}

/// LongRoPE with a partial rotary dimension and an original context (32) shorter than the
/// sequences (48), so both sides rotate with the long factors.
#[test]
fn phi3_longrope_partial_lora_gradients_match_pytorch() {
    assert_parity("phi3-longrope-partial");
}

/// Control: Llama 3 style, q/k rows permuted in the GGUF (un-permuted by to_adapter_file).
#[test]
fn llama_lora_gradients_match_pytorch() {
    assert_parity("llama");
}

/// Control: Qwen2, q/k/v biases.
#[test]
fn qwen2_lora_gradients_match_pytorch() {
    assert_parity("qwen2");
}

/// Mistral's sliding window on every layer: the Llama test model converted to a Hugging
/// Face directory and relabelled `mistral` with a window of 16 (the sequences are 48);
/// verity trains from that directory.
#[test]
fn mistral_window_lora_gradients_match_pytorch() {
    let src = assets_dir().join("test-models/llama-tiny-F32.gguf");
    if !src.exists() {
        eprintln!(
            "SKIPPED: {} is missing (scripts/make-test-models)",
            src.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mistral");
    let c = Command::new(env!("CARGO_BIN_EXE_verity"))
        .args(["convert", "--to", "hf", "--dtype", "f32"])
        .arg(&src)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["model_type"] = serde_json::json!("mistral");
    config["architectures"] = serde_json::json!(["MistralForCausalLM"]);
    config["sliding_window"] = serde_json::json!(16);
    std::fs::write(&path, config.to_string()).unwrap();
    report("mistral", check_file("mistral", &dir));
}
