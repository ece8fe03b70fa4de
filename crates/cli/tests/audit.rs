//! The audit commands end to end: help with examples, exit status, one-line errors.

use std::process::Command;

fn verity() -> Command {
    Command::new(env!("CARGO_BIN_EXE_verity"))
}

#[test]
fn every_audit_command_has_help_with_an_example() {
    for cmd in ["inspect", "hash", "sign", "verify", "keygen", "diff"] {
        let out = verity().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Examples:") && text.contains(&format!("verity {cmd}")),
            "{cmd}: {text}"
        );
    }
}

#[test]
fn inspect_hash_sign_verify_on_the_default_model() {
    let model = verity_store::resolve(None).unwrap();
    let out = verity()
        .arg("inspect")
        .arg(&model)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["total_parameters"], 134515008);
    assert_eq!(r["chat_template_kind"], "ChatML");

    let out = verity()
        .arg("hash")
        .arg(&model)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        h["root_digest"],
        "16399c58348341f1727030d1fc312a7fb25819f69fcbb6d15fd0687f698a49c4"
    );

    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(
        m.join("weights.gguf"),
        b"not really a model, but signed all the same",
    )
    .unwrap();
    let key = dir.path().join("k.pem");
    assert!(verity()
        .arg("keygen")
        .arg("--out")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let sig = m.join("model.sig");
    let st = verity()
        .arg("sign")
        .arg(&m)
        .arg("--key")
        .arg(&key)
        .arg("--signature")
        .arg(&sig)
        .status()
        .unwrap();
    assert!(st.success());
    let public = dir.path().join("k.pub.pem");
    let ok = verity()
        .arg("verify")
        .arg(&m)
        .arg("--signature")
        .arg(&sig)
        .arg("--key")
        .arg(&public)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(
        m.join("weights.gguf"),
        b"not really a model, but signed all the samE",
    )
    .unwrap();
    let bad = verity()
        .arg("verify")
        .arg(&m)
        .arg("--signature")
        .arg(&sig)
        .arg("--key")
        .arg(&public)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("verity: error:") && err.contains("'weights.gguf'"),
        "{err}"
    );
}

#[test]
fn inspect_exits_1_on_error_findings_and_diff_says_identical() {
    let model = verity_store::resolve(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // output_norm.weight is F32: make one value NaN.
    let g = verity_formats::gguf::Gguf::open(&model).unwrap();
    let t = g.tensor("output_norm.weight").unwrap();
    let at = (g.data_offset + t.offset) as usize;
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let bad = dir.path().join("nan.gguf");
    std::fs::write(&bad, bytes).unwrap();
    let out = verity().arg("inspect").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("output_norm.weight") && stdout.contains("NaN"),
        "{stdout}"
    );
    let out = verity()
        .arg("diff")
        .arg(&model)
        .arg(&model)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["verdict"], "identical");
}

/// `diff` of a GGUF against a Hugging Face directory pairs the tensors by the
/// architecture's names in each format: the default model (SmolLM2, q/k rows in llama.cpp's
/// interleaved order) against its `convert --to hf` copies in f32 (the Q4_1 values exactly:
/// identical) and bf16 (every value rounded: "re-encoded", no tensor changed); the tiny Gemma 3
/// (norms stored as `w - 1` in the directory) likewise; and across architectures there is
/// nothing to pair.
#[test]
fn diff_pairs_gguf_and_hugging_face_names() {
    let model = verity_store::resolve(None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let convert = |src: &std::path::Path, name: &str, dtype: &str| {
        let out = dir.path().join(name);
        let o = verity()
            .args(["convert", "--to", "hf", "--dtype", dtype])
            .arg(src)
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    };
    let diff = |a: &std::path::Path, b: &std::path::Path| -> serde_json::Value {
        let o = verity()
            .arg("diff")
            .arg(a)
            .arg(b)
            .arg("--json")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let f32_copy = convert(&model, "f32", "f32");
    let d = diff(&model, &f32_copy);
    assert_eq!(d["verdict"], "identical", "{}", d["explanation"]);
    let s = &d["summary"];
    assert_eq!(
        (&s["added"], &s["removed"], &s["changed"]),
        (&0.into(), &0.into(), &0.into())
    );
    let q = d["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.3.attn_q.weight")
        .unwrap();
    assert_eq!(q["name_b"], "model.layers.3.self_attn.q_proj.weight");
    assert_eq!(q["status"], "equivalent", "{q}");

    // The other way round, in bf16.
    let bf16_copy = convert(&model, "bf16", "bf16");
    let d = diff(&bf16_copy, &model);
    assert_eq!(d["verdict"], "re-encoded", "{}", d["explanation"]);
    assert_eq!(d["summary"]["changed"], 0, "{}", d["explanation"]);
    assert!(
        d["summary"]["rounded"].as_u64().unwrap() > 200,
        "{}",
        d["summary"]
    );
    assert!(d["explanation"].as_str().unwrap().contains("re-encoded"));

    let assets = std::env::var_os("VERITY_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/verity/assets")
        });
    let gemma = assets.join("test-models/gemma3-tiny-F32.gguf");
    let gemma_hf = convert(&gemma, "gemma", "f32");
    let d = diff(&gemma, &gemma_hf);
    assert_eq!(d["verdict"], "identical", "{}", d["explanation"]);

    let d = diff(&model, &gemma_hf);
    assert_eq!(d["summary"]["removed"], 272, "{}", d["summary"]);
    assert_ne!(d["verdict"], "identical");
}
