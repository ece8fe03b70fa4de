//! Parity with the reference implementation (llama.cpp), from golden files in
//! `tests/golden/` made by `scripts/gen-goldens.py` and `scripts/make-test-models`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use verity_engine::{generate, GenerateParams, SamplingParams, Session};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden(name: &str) -> Value {
    let p = repo_root().join("tests/golden").join(name);
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn assets_dir() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        })
}

/// Gemma 3 270M Q4_K_M (`scripts/fetch-models`): `$VERITY_MODEL_GEMMA3` or the store.
fn gemma3() -> Arc<verity_model::Model> {
    let path = std::env::var_os("VERITY_MODEL_GEMMA3")
        .map(PathBuf::from)
        .unwrap_or_else(|| verity_store::store_dir().join("gemma-3-270m-q4_k_m.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models",
        path.display()
    );
    Arc::new(verity_model::load(&path).expect("load Gemma 3"))
}

fn smollm2() -> Arc<verity_model::Model> {
    let path =
        verity_store::resolve(None).expect("default model (fetched by the store on first use)");
    Arc::new(verity_model::load(&path).expect("load SmolLM2"))
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// SmolLM2 Q4_1 over a 1,104-token English text: mean KL(reference || verity) of the
/// next-token distributions and top-1 agreement. The reference keeps its top 32 tokens;
/// the rest of its mass is one bucket compared with the rest of ours.
#[test]
fn smollm2_logits_match_reference() {
    logits_match_reference(
        "SmolLM2 Q4_1",
        "smollm2-logits.json",
        smollm2(),
        0.005,
        0.95,
    );
}

/// Gemma 3 270M Q4_K_M over the same text (1,104 Gemma tokens: twice its 512-token
/// sliding window), as for SmolLM2, held to issue 16's mean KL of 0.005. That is below
/// llama.cpp's own noise on this model: its two attention paths (flash attention off / on)
/// differ by mean KL 0.0066 with 95.1 % top-1 agreement
/// (`scripts/reference-self-consistency.py gemma3`). Meeting it took every rounding of the
/// reference's path: the GELU table, f16 queries and probabilities, f64 norm sums, and the
/// softmax's exponential and grouped sum (`verity_kernels::activation::exp_sum`).
#[test]
fn gemma3_logits_match_reference() {
    let model = gemma3();
    logits_match_reference(
        "Gemma 3 270M Q4_K_M",
        "gemma3-logits.json",
        model,
        0.005,
        0.945,
    );
}

fn logits_match_reference(
    name: &str,
    golden_file: &str,
    model: Arc<verity_model::Model>,
    max_kl: f64,
    min_top1: f64,
) {
    let g = golden(golden_file);
    let tokens = ids(&g["tokens"]);
    assert!(tokens.len() >= 1000);
    let text = std::fs::read_to_string(repo_root().join("tests/golden/text.txt")).unwrap();
    assert_eq!(
        model
            .tokenizer
            .encode(&text, g["add_bos"].as_bool().unwrap())
            .unwrap(),
        tokens,
        "tokenization of text.txt"
    );

    let mut session = Session::new(model.clone(), 2048);
    let logits = session.eval_all(&tokens).unwrap();
    let n_vocab = model.hparams.n_vocab;
    let positions = g["positions"].as_array().unwrap();
    let (mut kl_sum, mut agree, mut worst_gap) = (0.0f64, 0usize, 0.0f64);
    for (t, pos) in positions.iter().enumerate() {
        let ours = log_softmax(&logits[t * n_vocab..(t + 1) * n_vocab]);
        let ref_ids = ids(&pos["ids"]);
        let ref_lp: Vec<f64> = pos["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut kl = 0.0;
        let (mut p_rest, mut q_rest) = (1.0f64, 1.0f64);
        for (&id, &lp) in ref_ids.iter().zip(&ref_lp) {
            let p = lp.exp();
            kl += p * (lp - ours[id as usize]);
            p_rest -= p;
            q_rest -= ours[id as usize].exp();
        }
        if p_rest > 1e-9 {
            kl += p_rest * (p_rest / q_rest.max(1e-12)).ln();
        }
        kl_sum += kl;
        let our_top = (0..n_vocab)
            .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
            .unwrap();
        if our_top as u32 == ref_ids[0] {
            agree += 1;
        } else {
            worst_gap = worst_gap.max(ref_lp[0] - ref_lp[1]);
        }
    }
    let n = positions.len() as f64;
    let (mean_kl, top1) = (kl_sum / n, agree as f64 / n);
    eprintln!(
        "{name} vs llama.cpp over {} tokens: mean KL {mean_kl:.6}, top-1 agreement {:.2}%, \
         largest reference top-2 gap where top-1 differs: {worst_gap:.3}",
        positions.len(),
        top1 * 100.0
    );
    assert!(mean_kl <= max_kl, "mean KL {mean_kl}");
    // llama.cpp's own two attention paths (flash attention on / off) agree on 96.0 % of
    // these positions (KL 0.0040): quantizing activations turns last-bit differences into
    // flipped roundings. So disagreement is allowed only where the reference's choice was
    // a near-tie, and the overall rate must stay at that level.
    assert!(top1 >= min_top1, "top-1 agreement {top1}");
    assert!(
        worst_gap < NEAR_TIE,
        "top-1 differs where the reference's top-2 gap is {worst_gap}"
    );
}

/// Gap in logits (or log-probabilities) between the reference's two best tokens below which
/// a different choice is within the noise of quantized activations.
const NEAR_TIE: f64 = 0.5;

/// Greedy continuations of three prompts, 64 tokens each, identical to llama.cpp's.
#[test]
fn smollm2_greedy_matches_reference() {
    greedy_matches_reference("smollm2-greedy.json", smollm2());
}

/// Gemma 3's greedy continuations: identical, or parting only at the reference's near-ties.
#[test]
fn gemma3_greedy_matches_reference() {
    greedy_matches_reference("gemma3-greedy.json", gemma3());
}

fn greedy_matches_reference(golden_file: &str, model: Arc<verity_model::Model>) {
    let mut session = Session::new(model.clone(), 512);
    let mut identical = 0;
    for case in golden(golden_file).as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let prompt_tokens = model
            .tokenizer
            .encode(prompt, case["add_bos"].as_bool().unwrap())
            .unwrap();
        assert_eq!(
            prompt_tokens,
            ids(&case["prompt_tokens"]),
            "tokens of {prompt:?}"
        );
        let expected = ids(&case["output_tokens"]);
        let params = GenerateParams {
            max_tokens: 64,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let gen = generate(&mut session, &prompt_tokens, &params, &mut |_| true).unwrap();
        let margins: Vec<f64> = case["output_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let same = gen
            .tokens
            .iter()
            .zip(&expected)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{prompt:?}: {same} of {} greedy tokens identical",
            expected.len()
        );
        if same < expected.len() {
            // The paths may part only where llama.cpp itself was choosing between near-equals.
            assert!(
                margins[same] < NEAR_TIE,
                "greedy output leaves the reference at token {same} where its top-2 gap is {}:\n ours: {:?}\n ref:  {:?}",
                margins[same],
                gen.text,
                case["output_text"]
            );
            eprintln!(
                "  (parts at a near-tie: reference top-2 gap {:.3})",
                margins[same]
            );
        } else {
            assert_eq!(gen.text, case["output_text"].as_str().unwrap());
        }
        identical += (same == expected.len()) as usize;
    }
    eprintln!("{identical} of 3 greedy continuations identical to llama.cpp's");
}

fn nrmse(ours: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = ours
        .iter()
        .zip(reference)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Random-weight Qwen2 / Qwen3 / Llama 3 models in every tensor type, and Gemma 3 / Phi-3
/// (plain and LongRoPE) / SmolLM3 / Qwen3-MoE ones, quantized by llama-quantize: logits within
/// 2 % normalised RMS error of llama.cpp's.
#[test]
fn random_models_match_reference() {
    let dir = repo_root().join("tests/golden/random");
    let models = assets_dir().join("test-models");
    let mut checked = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
    {
        let g: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        if g.get("logits_file").is_none() {
            continue; // manifest.json
        }
        let file = models.join(g["model"].as_str().unwrap());
        assert!(
            file.exists(),
            "{} is missing: run scripts/make-test-models",
            file.display()
        );
        let model = Arc::new(verity_model::load(&file).unwrap_or_else(|e| panic!("{e}")));
        let tokens = ids(&g["tokens"]);
        let reference: Vec<f32> = std::fs::read(dir.join(g["logits_file"].as_str().unwrap()))
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let mut session = Session::new(model, 64);
        let ours = session.eval_all(&tokens).unwrap();
        assert_eq!(ours.len(), reference.len());
        let e = nrmse(&ours, &reference);
        checked.push(format!(
            "{}-{}: {:.4}%",
            // "variant" names the model (phi3, phi3-longrope, ...); older goldens lack it
            g.get("variant").unwrap_or(&g["arch"]).as_str().unwrap(),
            g["type"].as_str().unwrap(),
            e * 100.0
        ));
        assert!(e <= 0.02, "{}: normalised RMS error {e}", path.display());
    }
    eprintln!(
        "normalised RMS error vs llama.cpp:\n  {}",
        checked.join("\n  ")
    );
    assert!(
        checked.len() >= 10,
        "expected the goldens of at least 10 models, found {}",
        checked.len()
    );
}
