//! LoRA adapters end to end through the binary: PEFT ↔ GGUF conversion, merging, bad
//! adapter files, inspect, and receipts that name a changed adapter. The adapters are
//! random but real files (written by verity's PEFT writer) for the default model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use verity_engine::{KvType, LoraSet, Session};
use verity_model::adapter::{write_peft, LoraTensor};
use verity_model::{Adapter, AdapterFile, AdapterFormat, Model, Proj};

fn verity() -> Command {
    Command::new(env!("CARGO_BIN_EXE_verity"))
}

fn default_model() -> PathBuf {
    verity_store::resolve(None).expect("default model")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// xorshift-based normal-ish values (sum of uniforms), deterministic.
fn values(n: usize, seed: u64, std: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            let mut acc = 0f32;
            for _ in 0..4 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                acc += (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            }
            acc * std * 1.7
        })
        .collect()
}

/// A random rsLoRA adapter on every projection of every layer, rank 4 (down_proj rank 2
/// when `mixed`).
fn random_adapter(model: &Model, b_std: f32, mixed: bool) -> AdapterFile {
    let hp = &model.hparams;
    let mut tensors = BTreeMap::new();
    for l in 0..hp.n_layer {
        for (i, proj) in Proj::ALL.into_iter().enumerate() {
            let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
            let rank = if mixed && proj == Proj::Down { 2 } else { 4 };
            let seed = (l * 7 + i) as u64 + 1;
            tensors.insert(
                (l, proj),
                LoraTensor {
                    a: values(rank * in_dim, seed, 1.0 / (in_dim as f32).sqrt()),
                    b: values(out_dim * rank, seed + 1000, b_std),
                    rank,
                    in_dim,
                    out_dim,
                    scale: 8.0 / (rank as f32).sqrt(),
                    file_type: verity_formats::TensorType::F32,
                },
            );
        }
    }
    AdapterFile {
        path: PathBuf::new(),
        format: AdapterFormat::Peft,
        arch: None,
        base_model: Some("SmolLM2-135M-Instruct".into()),
        rank: 4,
        alpha: 8.0,
        use_rslora: true,
        tensors,
        config: None,
        qk_permuted: false,
        fused: Default::default(),
    }
}

fn write_adapter(file: &AdapterFile, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_peft(file, dir, &Default::default()).unwrap();
    dir.to_path_buf()
}

const TOKENS: [u32; 12] = [1, 504, 3575, 282, 4649, 314, 7042, 28, 284, 260, 3575, 282];

fn logits(model: &Arc<Model>, adapter: Option<&Path>) -> Vec<f32> {
    logits_kv(model, adapter, KvType::F16)
}

fn logits_kv(model: &Arc<Model>, adapter: Option<&Path>, kv: KvType) -> Vec<f32> {
    let mut s = Session::with_kv_type(model.clone(), 64, kv);
    if let Some(p) = adapter {
        let a = Adapter::load(p, model).unwrap();
        s.set_lora(Some(LoraSet::new(vec![(Arc::new(a), 1.0)])));
    }
    s.eval_all(&TOKENS).unwrap()
}

fn nrmse(x: &[f32], reference: &[f32]) -> f64 {
    let num: f64 = x
        .iter()
        .zip(reference)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn conversions_agree_and_merge_matches_unmerged() {
    let tmp = tempfile::tempdir().unwrap();
    let base = default_model();
    let q4 = Arc::new(verity_model::load(&base).unwrap());
    // Uniform rank: the GGUF file holds the very same numbers (alpha/r = alpha/√r·√r/r
    // exactly for a power-of-two rank), so logits are bit-identical. Mixed ranks fold the
    // per-module scale into lora_B (llama.cpp has one alpha per file): the same update
    // up to rounding, checked on the bound matrices below.
    let peft = write_adapter(&random_adapter(&q4, 0.02, false), &tmp.path().join("peft"));
    let mixed = write_adapter(&random_adapter(&q4, 0.02, true), &tmp.path().join("mixed"));
    let mixed_gguf = tmp.path().join("mixed.gguf");
    ok(verity()
        .args(["convert", mixed.to_str().unwrap(), "--to", "gguf", "--base"])
        .arg(&base)
        .arg(&mixed_gguf));
    let (x, y) = (
        Adapter::load(&mixed, &q4).unwrap(),
        Adapter::load(&mixed_gguf, &q4).unwrap(),
    );
    for l in 0..q4.hparams.n_layer {
        for proj in Proj::ALL {
            let (p, q) = (x.pair(l, proj).unwrap(), y.pair(l, proj).unwrap());
            assert_eq!(p.a.bytes(), q.a.bytes(), "layer {l} {proj:?} lora_A");
            let (b0, b1) = (p.b.to_f32(), q.b.to_f32());
            for (u, v) in b0.iter().zip(&b1) {
                let (u, v) = (p.scale * u, q.scale * v);
                assert!(
                    (u - v).abs() <= 1e-6 * u.abs().max(1e-3),
                    "layer {l} {proj:?}: {u} vs {v}"
                );
            }
        }
    }
    let gguf = tmp.path().join("a.gguf");
    let back = tmp.path().join("back");
    ok(verity()
        .args(["convert", peft.to_str().unwrap(), "--to", "gguf", "--base"])
        .arg(&base)
        .arg(&gguf));
    ok(verity()
        .args(["convert", gguf.to_str().unwrap(), "--to", "peft", "--base"])
        .arg(&base)
        .arg(&back));

    // The same adapter in three files gives the same logits on the Q4_1 base.
    let bare = logits(&q4, None);
    let with_peft = logits(&q4, Some(&peft));
    let change = nrmse(&with_peft, &bare);
    assert!(
        change > 0.01,
        "the adapter barely changes the logits ({change:.2e})"
    );
    for (name, p) in [("gguf", &gguf), ("peft round trip", &back)] {
        let other = logits(&q4, Some(p));
        let e = nrmse(&other, &with_peft);
        eprintln!("{name}: NRMSE vs the PEFT directory {e:.2e}");
        assert_eq!(e, 0.0, "{name}: NRMSE {e:.2e}");
    }

    // Merged into F32 weights, the model computes what base + un-merged adapter computes.
    let hf = tmp.path().join("hf");
    ok(verity()
        .args(["convert"])
        .arg(&base)
        .args(["--to", "hf"])
        .arg(&hf));
    let merged = tmp.path().join("merged");
    ok(verity()
        .arg("merge")
        .arg(&hf)
        .arg(&peft)
        .arg("--out")
        .arg(&merged));
    let hf_model = Arc::new(verity_model::load(&hf).unwrap());
    // With the f32 KV cache: the default f16 one rounds in attention, which turns the
    // ~1e-7 relative difference between W + ΔW (rounded once) and W·x + B·(A·x) into f16
    // flips that grow through the layers (~7e-4, printed for the record).
    let merged_model = Arc::new(verity_model::load(&merged).unwrap());
    let unmerged = logits_kv(&hf_model, Some(&peft), KvType::F32);
    let m = logits_kv(&merged_model, None, KvType::F32);
    let e = nrmse(&m, &unmerged);
    let e16 = nrmse(
        &logits(&merged_model, None),
        &logits(&hf_model, Some(&peft)),
    );
    eprintln!("merged F32 vs un-merged adapter: NRMSE {e:.2e} (f32 cache), {e16:.2e} (f16 cache)");
    assert!(e <= 1e-5, "merged vs un-merged NRMSE {e:.2e}");
    // Provenance is in the safetensors metadata.
    let st = verity_formats::safetensors_file::SafetensorsFile::open(
        &merged.join("model.safetensors"),
        0,
    )
    .unwrap();
    let prov: serde_json::Value =
        serde_json::from_str(st.metadata.get("verity.merge").expect("provenance")).unwrap();
    assert_eq!(
        prov["adapters"][0]["root_digest"].as_str().map(str::len),
        Some(64)
    );

    // diff sees a derivative with rank-r changes on the targets.
    let d: serde_json::Value = serde_json::from_str(&ok(verity()
        .arg("diff")
        .arg(&hf)
        .arg(&merged)
        .arg("--json")))
    .unwrap();
    assert_eq!(d["verdict"], "derives", "{}", d["explanation"]);
    for t in d["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if t["status"] == "changed" {
            assert_eq!(t["rank"]["effective_rank"], 4, "{name}");
        }
    }
}

/// Run `verity run --lora PATH`; the error must be one line naming the file.
fn expect_refused(adapter: &Path, needle: &str) {
    let out = verity()
        .args(["run", "--raw", "-n", "1", "--lora"])
        .arg(adapter)
        .arg("hi")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}: {stderr}",
        adapter.display()
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        lines[0].contains(&adapter.display().to_string()),
        "does not name the file: {}",
        lines[0]
    );
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "expected '{needle}' in: {}",
        lines[0]
    );
}

#[test]
fn bad_adapters_are_refused_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let q4 = verity_model::load(&default_model()).unwrap();
    let good = random_adapter(&q4, 0.02, true);
    let dir = |n: &str| tmp.path().join(n);

    expect_refused(&dir("missing"), "no such file");

    let p = write_adapter(&good, &dir("truncated"));
    let st = p.join("adapter_model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    expect_refused(&p, "safetensors");

    let p = dir("garbage.gguf");
    std::fs::write(&p, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    expect_refused(&p, "truncated");

    // A model is not an adapter.
    expect_refused(&default_model(), "general.type");

    // Shapes of another model.
    let mut other = good.clone();
    let t = other.tensors.get_mut(&(0, Proj::Q)).unwrap();
    t.in_dim = 100;
    t.a = values(t.rank * 100, 1, 0.1);
    expect_refused(&write_adapter(&other, &dir("shape")), "another model");

    // A rank larger than the matrix (k_proj is 192 × 576).
    let mut big = AdapterFile {
        tensors: BTreeMap::new(),
        rank: 193,
        ..good.clone()
    };
    big.tensors.insert(
        (0, Proj::K),
        LoraTensor {
            a: values(193 * 576, 1, 0.01),
            b: values(192 * 193, 2, 0.01),
            rank: 193,
            in_dim: 576,
            out_dim: 192,
            scale: 1.0,
            file_type: verity_formats::TensorType::F32,
        },
    );
    expect_refused(&write_adapter(&big, &dir("rank")), "exceeds");

    // A fused qkv_proj (Phi-3's) on a base that keeps q, k and v apart.
    let mut fused = good.clone();
    let q = fused.tensors.remove(&(1, Proj::Q)).unwrap();
    fused.fused.insert(
        (1, verity_model::adapter::Fused::Qkv),
        LoraTensor {
            b: values((576 + 2 * 192) * q.rank, 3, 0.01),
            out_dim: 576 + 2 * 192,
            ..q
        },
    );
    expect_refused(&write_adapter(&fused, &dir("fused")), "no fused qkv_proj");

    let mut nan = good.clone();
    nan.tensors.get_mut(&(3, Proj::V)).unwrap().b[5] = f32::NAN;
    let nan_dir = write_adapter(&nan, &dir("nan"));
    expect_refused(&nan_dir, "NaN");

    let p = write_adapter(&good, &dir("rank0"));
    let cfg = p.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"r\": 4", "\"r\": 0")).unwrap();
    expect_refused(&p, "rank");

    let p = write_adapter(&good, &dir("dora"));
    let cfg = p.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    expect_refused(&p, "use_dora");

    let p = dir("pickle");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::copy(cfg, p.join("adapter_config.json")).unwrap();
    std::fs::write(p.join("adapter_model.bin"), b"\x80\x02pickle").unwrap();
    expect_refused(&p, "pickle");

    // inspect: NaN is an error finding (exit 1); an all-zero B is a warning (exit 0).
    let out = verity().arg("inspect").arg(&nan_dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NaN"));
    let mut zero = good.clone();
    zero.tensors
        .values_mut()
        .for_each(|t| t.b.iter_mut().for_each(|v| *v = 0.0));
    let zero_dir = write_adapter(&zero, &dir("zero"));
    let r: serde_json::Value =
        serde_json::from_str(&ok(verity().arg("inspect").arg(&zero_dir).arg("--json"))).unwrap();
    assert_eq!(r["rank"], 4);
    assert_eq!(r["use_rslora"], true);
    assert!(r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["kind"] == "all-zero"));
}

#[test]
fn receipts_record_adapters_and_verify_names_a_changed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let q4 = verity_model::load(&default_model()).unwrap();
    let peft = write_adapter(&random_adapter(&q4, 0.02, true), &tmp.path().join("peft"));
    let receipt = tmp.path().join("r.json");
    let spec = format!("{}:0.5", peft.display());
    ok(verity()
        .args([
            "eval", "--tasks", "arc_easy", "--limit", "8", "--quiet", "--lora", &spec,
        ])
        .arg("--receipt")
        .arg(&receipt));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    let a = &r["model"]["adapters"][0];
    assert_eq!(a["scale"], 0.5);
    assert_eq!(a["root_digest"].as_str().map(str::len), Some(64));
    // Unchanged: the receipt re-runs (its adapters are taken from the receipt).
    ok(verity().args(["eval", "verify", "--quiet"]).arg(&receipt));
    // One byte of the adapter changed: verify names it.
    let st = peft.join("adapter_model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&st, bytes).unwrap();
    let out = verity()
        .args(["eval", "verify", "--quiet"])
        .arg(&receipt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("adapter") && text.contains(&peft.display().to_string()),
        "{text}"
    );
}

#[test]
fn receipts_record_an_f32_cache_and_verify_uses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let receipt = tmp.path().join("r.json");
    ok(verity()
        .args([
            "eval",
            "--tasks",
            "arc_easy",
            "--limit",
            "4",
            "--quiet",
            "--cache-type",
            "f32",
        ])
        .arg("--receipt")
        .arg(&receipt));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    assert_eq!(r["model"]["kv_cache"], "f32");
    ok(verity().args(["eval", "verify", "--quiet"]).arg(&receipt));
    let out = verity()
        .args(["eval", "verify", "--quiet", "--cache-type", "f16"])
        .arg(&receipt)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("KV cache is f16 now"), "{text}");
}
