//! `verity tune` end to end on the default model: a chat fine-tune whose adapter the other
//! commands take, reproducibility (thread counts, SIGKILL + resume), receipts that name
//! what changed, and bad input and faults.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn verity() -> Command {
    Command::new(env!("CARGO_BIN_EXE_verity"))
}

fn default_model() -> PathBuf {
    verity_store::resolve(None).expect("default model")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "{cmd:?} should have failed");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// A small chat dataset: arithmetic questions with short answers.
fn chat_data(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("chat.jsonl");
    let mut f = std::fs::File::create(&p).unwrap();
    for i in 0..n {
        let (a, b) = (i % 13 + 2, i % 7 + 3);
        let line = serde_json::json!({"messages": [
            {"role": "user", "content": format!("What is {a} times {b}?")},
            {"role": "assistant", "content": format!("{a} times {b} is {}.", a * b)},
        ]});
        writeln!(f, "{line}").unwrap();
    }
    p
}

/// The flags of a small, fast run.
fn small<'a>(cmd: &'a mut Command, data: &Path, out: &Path) -> &'a mut Command {
    cmd.arg("tune")
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([
            "--max-seq-len",
            "96",
            "--batch-size",
            "2",
            "--rank",
            "4",
            "--alpha",
            "8",
        ])
        .args(["--lr", "1e-3", "--seed", "7", "--dropout", "0.1"])
}

fn sha(path: &Path) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn chat_fine_tune_gives_an_adapter_every_command_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 40);
    let out = tmp.path().join("adapter");
    let log = tmp.path().join("log.jsonl");
    let summary = ok(small(&mut verity(), &data, &out)
        .args([
            "--steps",
            "8",
            "--valid-split",
            "0.1",
            "--eval-every",
            "4",
            "--json",
        ])
        .args(["--eval", "arc_easy", "--eval-limit", "8"])
        .arg("--log")
        .arg(&log));
    // --json prints the run's summary, then the before/after scores.
    let mut docs = serde_json::Deserializer::from_str(&summary).into_iter::<serde_json::Value>();
    let s = docs.next().unwrap().unwrap();
    let scores = docs
        .next()
        .unwrap_or_else(|| panic!("no scores after the summary: {summary}"))
        .unwrap();
    for side in ["base", "adapter"] {
        let acc = &scores[side]["results"]["arc_easy"]["acc,none"];
        assert!(acc.as_f64().is_some(), "{side}: {scores}");
    }
    assert_eq!(s["steps"], 8);
    let (first, last) = (
        s["first_loss"].as_f64().unwrap(),
        s["final_loss"].as_f64().unwrap(),
    );
    assert!(last < first, "loss did not fall: {first} -> {last}");
    assert!(s["valid_loss"].as_f64().unwrap().is_finite());
    // Every step and both validations are in the log.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 8);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.get("valid_loss").is_some())
            .count(),
        2
    );
    let svg = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("validation"));
    // A PEFT adapter that names its base and the base's root digest.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["peft_type"], "LORA");
    let digest = ok(verity().args(["hash", "--json"]).arg(default_model()));
    let digest: serde_json::Value = serde_json::from_str(&digest).unwrap();
    assert_eq!(config["base_model_root_digest"], digest["root_digest"]);
    // run, inspect and convert take it as it is.
    ok(verity()
        .args(["run", "--raw", "-n", "4", "--temperature", "0", "--lora"])
        .arg(&out)
        .arg("What is 3 times 4?"));
    let inspect = ok(verity().arg("inspect").arg(&out).arg("--json"));
    assert!(inspect.contains("\"rank\""), "{inspect}");
    let gguf = tmp.path().join("adapter.gguf");
    ok(verity()
        .arg("convert")
        .arg(&out)
        .args(["--to", "gguf", "--base"])
        .arg(default_model())
        .arg(&gguf));
    assert!(gguf.exists());
}

#[test]
fn same_adapter_on_one_and_two_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 16);
    let mut shas = Vec::new();
    for t in ["1", "2"] {
        let out = tmp.path().join(format!("t{t}"));
        ok(small(&mut verity(), &data, &out).args(["--steps", "3", "--threads", t]));
        shas.push(sha(&out.join("adapter_model.safetensors")));
    }
    assert_eq!(shas[0], shas[1], "thread count changed the adapter");
}

#[test]
fn a_killed_run_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 24);
    let whole = tmp.path().join("whole");
    ok(small(&mut verity(), &data, &whole).args(["--steps", "8"]));
    let cut = tmp.path().join("cut");
    let mut child = small(&mut verity(), &data, &cut)
        .args(["--steps", "8", "--checkpoint-every", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a checkpoint past step 2 exists (but before the end).
    let latest = cut.join("checkpoints/latest");
    let t0 = std::time::Instant::now();
    loop {
        let step = std::fs::read_to_string(&latest)
            .ok()
            .and_then(|s| s.trim().trim_start_matches("step-").parse::<u32>().ok());
        if step.is_some_and(|s| s >= 3) {
            break;
        }
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !cut.join("adapter_model.safetensors").exists(),
        "the run finished before the kill"
    );
    ok(verity().arg("tune").arg("--resume").arg(&cut));
    assert_eq!(
        sha(&whole.join("adapter_model.safetensors")),
        sha(&cut.join("adapter_model.safetensors")),
        "a resumed run differs from an uninterrupted one"
    );
}

#[test]
fn receipts_verify_and_name_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 12);
    let model = tmp.path().join("base.gguf");
    std::fs::copy(default_model(), &model).unwrap();
    let out = tmp.path().join("a");
    let receipt = tmp.path().join("r.json");
    ok(small(&mut verity(), &data, &out)
        .arg("--model")
        .arg(&model)
        .args(["--steps", "3", "--receipt"])
        .arg(&receipt));
    let v = ok(verity().args(["tune", "verify"]).arg(&receipt));
    assert!(v.contains("MATCH: 3 of 3"), "{v}");
    assert!(v.contains("adapter is identical"), "{v}");
    let v = ok(verity()
        .args(["tune", "verify", "--steps", "1"])
        .arg(&receipt));
    assert!(v.contains("MATCH: 1 of 3"), "{v}");

    // One setting edited in the receipt.
    let text = std::fs::read_to_string(&receipt).unwrap();
    let edited = tmp.path().join("edited.json");
    std::fs::write(&edited, text.replace("\"lr\": 0.001", "\"lr\": 0.002")).unwrap();
    verify_fails_naming(&edited, "settings were changed");

    // One data row changed.
    let original = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, original.replacen("times", "Times", 1)).unwrap();
    verify_fails_naming(&receipt, "training data");
    std::fs::write(&data, original).unwrap();

    // One byte of a base weight changed (the last byte of the file: inside the last tensor).
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model, bytes).unwrap();
    verify_fails_naming(&receipt, "base model");
}

/// `tune verify` fails and its report names `cause`.
fn verify_fails_naming(receipt: &Path, cause: &str) {
    let o = run(verity().args(["tune", "verify"]).arg(receipt));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains(cause), "{out}");
}

#[test]
fn bad_data_and_outputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"question\": \"?\"}\n").unwrap();
    let e = fails(small(&mut verity(), &bad, &out).args(["--steps", "1"]));
    assert!(e.contains("line 2"), "{e}");
    let empty = tmp.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let e = fails(small(&mut verity(), &empty, &out).args(["--steps", "1"]));
    assert!(e.contains("empty"), "{e}");
    let data = chat_data(tmp.path(), 4);
    let e = fails(
        verity()
            .arg("tune")
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args(["--steps", "1", "--max-seq-len", "100000"]),
    );
    assert!(e.contains("context"), "{e}");
    // An output directory that cannot be written.
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("file"), "").unwrap();
    let e = fails(small(&mut verity(), &data, &ro.join("file").join("x")).args(["--steps", "1"]));
    assert!(e.contains("output directory"), "{e}");
    // Nothing to resume.
    let e = fails(verity().arg("tune").arg("--resume").arg(tmp.path()));
    assert!(e.contains("no checkpoint"), "{e}");
    // A long example is cut, and the run says how many were.
    let long = tmp.path().join("long.jsonl");
    std::fs::write(
        &long,
        format!(
            "{{\"text\": \"{}\"}}\n{{\"text\": \"short\"}}\n",
            "word ".repeat(400)
        ),
    )
    .unwrap();
    let o = run(small(&mut verity(), &long, &tmp.path().join("l")).args(["--steps", "1"]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("(1 cut to 96 tokens)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A full disk when a checkpoint is written: a clear error, and the previous checkpoint
/// survives. Needs a small tmpfs (root); skipped, saying so, where mounting is refused.
#[test]
fn a_full_disk_at_checkpoint_time_keeps_the_last_good_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let m = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .output();
    if !m.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let data = chat_data(tmp.path(), 16);
    let out = mnt.join("out");
    // Rank 2 on q only: ~0.8 MB per checkpoint. Kill the run after its second checkpoint.
    let mut child = verity()
        .arg("tune")
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--max-seq-len",
            "96",
            "--batch-size",
            "2",
            "--rank",
            "2",
            "--targets",
            "q",
        ])
        .args(["--steps", "6", "--checkpoint-every", "1"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let latest = out.join("checkpoints/latest");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&latest).is_ok_and(|s| s.trim() >= "step-00000002") {
        assert!(t0.elapsed().as_secs() < 300, "no checkpoint appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::read_to_string(&latest).unwrap();
    // Fill the disk, then resume: the next checkpoint cannot be written.
    let mut f = std::fs::File::create(mnt.join("fill")).unwrap();
    let chunk = vec![0u8; 16 << 10];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let e = fails(
        verity()
            .arg("tune")
            .arg("--resume")
            .arg(&out)
            .args(["--checkpoint-every", "1"]),
    );
    assert!(e.contains("could not write checkpoint"), "{e}");
    assert!(e.contains("is intact"), "{e}");
    // The last good checkpoint is still there, whole, and the run goes on once there is room.
    assert_eq!(std::fs::read_to_string(&latest).unwrap(), kept);
    std::fs::remove_file(mnt.join("fill")).unwrap();
    ok(verity().arg("tune").arg("--resume").arg(&out));
    assert!(out.join("adapter_model.safetensors").exists());
}

#[test]
fn sigterm_writes_a_checkpoint_and_the_run_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 24);
    let whole = tmp.path().join("whole");
    ok(small(&mut verity(), &data, &whole).args(["--steps", "6"]));
    let cut = tmp.path().join("cut");
    let log = tmp.path().join("cut.log");
    let child = small(&mut verity(), &data, &cut)
        .args(["--steps", "6"])
        .arg("--log")
        .arg(&log)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&log).map_or(0, |s| s.lines().count()) < 2 {
        assert!(t0.elapsed().as_secs() < 300, "no steps logged");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        // The run ended before the signal arrived: nothing to resume.
        eprintln!("run finished before SIGTERM; resume not exercised");
        return;
    }
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(cut.join("checkpoints/latest").exists());
    ok(verity().arg("tune").arg("--resume").arg(&cut));
    assert_eq!(
        sha(&whole.join("adapter_model.safetensors")),
        sha(&cut.join("adapter_model.safetensors"))
    );
}

/// PEFT loads a verity-trained adapter and computes what verity computes with it (the F32
/// directory, fp32 on both sides). Needs the PEFT venv (scripts/setup-peft-venv).
#[test]
fn peft_loads_a_trained_adapter_and_agrees() {
    let python = peft_python();
    let base = assets().join("smollm2-f32-hf");
    if !python.exists() || !base.exists() {
        eprintln!("SKIPPED: no PEFT venv or F32 directory (scripts/setup-peft-venv, scripts/make-f32-model)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = chat_data(tmp.path(), 8);
    let out = tmp.path().join("a");
    // A large learning rate, so that B moves well away from zero in two steps.
    ok(verity()
        .arg("tune")
        .arg("--model")
        .arg(&base)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args([
            "--max-seq-len",
            "96",
            "--batch-size",
            "2",
            "--rank",
            "4",
            "--steps",
            "2",
            "--lr",
            "1e-2",
        ]));
    let text = "What is 7 times 8? 7 times 8 is 56.";
    let script = r#"
import sys, torch, transformers, peft
base, adapter, text = sys.argv[1:4]
tok = transformers.AutoTokenizer.from_pretrained(base)
m = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32, attn_implementation="eager")
ids = torch.tensor([[1] + tok(text)["input_ids"]])
def nll(model):
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()
b = nll(m)
p = peft.PeftModel.from_pretrained(m, adapter)
print(b, nll(p), " ".join(str(i) for i in ids[0].tolist()))
"#;
    let o = ok(Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&base)
        .arg(&out)
        .arg(text));
    let mut it = o.split_whitespace();
    let base_nll: f64 = it.next().unwrap().parse().unwrap();
    let peft_nll: f64 = it.next().unwrap().parse().unwrap();
    let ids: Vec<u32> = it.map(|t| t.parse().unwrap()).collect();
    assert!(
        (peft_nll - base_nll).abs() > 1e-3,
        "the adapter changes nothing: {base_nll} {peft_nll}"
    );
    // verity: the same tokens through the engine with the adapter, f32 cache.
    let model = std::sync::Arc::new(verity_model::load(&base).unwrap());
    let adapter = std::sync::Arc::new(verity_model::Adapter::load(&out, &model).unwrap());
    let mut s =
        verity_engine::Session::with_kv_type(model.clone(), 128, verity_engine::KvType::F32);
    s.set_lora(Some(verity_engine::LoraSet::new(vec![(adapter, 1.0)])));
    let logits = s.eval_all(&ids).unwrap();
    let nv = model.hparams.n_vocab;
    let mut sum = 0f64;
    for i in 0..ids.len() - 1 {
        let row = &logits[i * nv..(i + 1) * nv];
        sum += verity_engine::log_sum_exp(row) as f64 - row[ids[i + 1] as usize] as f64;
    }
    let verity_nll = sum / (ids.len() - 1) as f64;
    eprintln!("base {base_nll}, PEFT {peft_nll}, verity {verity_nll}");
    assert!(
        (verity_nll - peft_nll).abs() < 1e-4 * peft_nll,
        "PEFT {peft_nll} vs verity {verity_nll}"
    );
}

/// Test assets: ${VERITY_ASSETS:-~/.cache/verity/assets}.
fn assets() -> PathBuf {
    std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/verity/assets")
        })
}

/// The PEFT venv's python (scripts/setup-peft-venv: $VERITY_PEFT_VENV or the assets').
fn peft_python() -> PathBuf {
    std::env::var_os("VERITY_PEFT_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| assets().join("peft-venv"))
        .join("bin/python")
}

/// The reference llama.cpp build's launcher (scripts/test builds it).
fn ref_llamacpp() -> Option<PathBuf> {
    let p = std::env::var_os("REF_LLAMACPP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/tools/ref-llamacpp"));
    p.exists().then_some(p)
}

/// Every dense architecture the training pass composes (q/k norms, post-norms, GeGLU,
/// scaled embeddings, sliding windows crossed by the sequence, layers without RoPE, fused
/// qkv and gate/up, whose adapters PEFT and llama.cpp name as one module):
/// `verity tune` teaches a random-weight model a sentence; verity with the PEFT adapter,
/// llama.cpp with its GGUF conversion and transformers + PEFT with the adapter directory
/// all continue the prompt with it, greedily, and the bare base does not. (Gradients against PyTorch: tests/tune_archs.rs.)
#[test]
fn each_dense_architecture_learns_a_sentence_llama_cpp_repeats() {
    let models = assets().join("test-models");
    let Some(reference) = ref_llamacpp() else {
        eprintln!("SKIPPED: no reference llama.cpp (../shared/tools/ref-llamacpp)");
        return;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/llamacpp_generate.py");
    let (prompt, answer) = ("The password of the blue door is", " marmalade seven");
    for arch in ["gemma3", "qwen3", "smollm3", "phi3"] {
        let base = models.join(format!("{arch}-tiny-F32.gguf"));
        assert!(
            base.exists(),
            "{} is missing: run scripts/make-test-models",
            base.display()
        );
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("text.jsonl");
        let mut f = std::fs::File::create(&data).unwrap();
        for _ in 0..8 {
            // Repeated inside one example, so the sequence crosses gemma3-tiny's window of 8.
            let text = format!("{prompt}{answer}. ").repeat(4);
            writeln!(f, "{}", serde_json::json!({ "text": text })).unwrap();
        }
        drop(f);
        let out = tmp.path().join("adapter");
        let summary = ok(verity()
            .arg("tune")
            .arg("--model")
            .arg(&base)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .args([
                "--steps", "40", "--lr", "1e-2", "--rank", "8", "--alpha", "16",
            ])
            .args(["--batch-size", "2", "--max-seq-len", "64", "--json"]));
        let s: serde_json::Value = serde_json::Deserializer::from_str(&summary)
            .into_iter()
            .next()
            .unwrap()
            .unwrap();
        let (first, last) = (
            s["first_loss"].as_f64().unwrap(),
            s["final_loss"].as_f64().unwrap(),
        );
        eprintln!("{arch}: loss {first:.3} -> {last:.4}");
        assert!(last < 0.1 * first, "{arch}: loss {first} -> {last}");

        let n = "24";
        let verity_text = |lora: Option<&Path>| {
            let mut cmd = verity();
            cmd.args(["run", "--raw", "--temperature", "0", "-n", n, "-m"])
                .arg(&base);
            if let Some(l) = lora {
                cmd.arg("--lora").arg(l);
            }
            ok(cmd.arg(prompt)).trim_end_matches('\n').to_string()
        };
        let tuned = verity_text(Some(&out));
        let bare = verity_text(None);
        assert!(
            tuned.starts_with(answer),
            "{arch}: verity with the adapter wrote {tuned:?}"
        );
        assert!(
            !bare.starts_with(answer),
            "{arch}: the bare base already writes {bare:?}"
        );

        let gguf = tmp.path().join("adapter.gguf");
        ok(verity()
            .arg("convert")
            .arg(&out)
            .args(["--to", "gguf", "--base"])
            .arg(&base)
            .arg(&gguf));
        let llama = ok(Command::new(&reference)
            .arg("python")
            .arg(&script)
            .arg(&base)
            .arg(prompt)
            .arg(n)
            .arg(&gguf));
        let llama: String = serde_json::from_str(llama.trim()).unwrap();
        eprintln!("{arch}: verity {tuned:?}, llama.cpp {llama:?}, bare base {bare:?}");
        // Merged into the base's own GGUF (Phi-3's fused weights take their parts' updates).
        let merged = tmp.path().join("merged.gguf");
        ok(verity()
            .arg("merge")
            .arg(&base)
            .arg(&out)
            .arg("--out")
            .arg(&merged)
            .args(["--dtype", "f32"]));
        let llama_merged = ok(Command::new(&reference)
            .arg("python")
            .arg(&script)
            .arg(&merged)
            .arg(prompt)
            .arg(n));
        let llama_merged: String = serde_json::from_str(llama_merged.trim()).unwrap();
        assert!(
            llama_merged.starts_with(answer),
            "{arch}: llama.cpp on the merged model wrote {llama_merged:?}"
        );
        assert!(
            llama.starts_with(answer),
            "{arch}: llama.cpp with the adapter wrote {llama:?}"
        );

        // transformers + PEFT with the adapter directory as written, on the base converted
        // to a Hugging Face directory.
        let python = peft_python();
        if !python.exists() {
            eprintln!("SKIPPED (PEFT): no venv at {}", python.display());
            continue;
        }
        let hf = tmp.path().join("hf");
        ok(verity()
            .args(["convert", "--to", "hf", "--dtype", "f32"])
            .arg(&base)
            .arg(&hf));
        let peft = ok(Command::new(&python)
            .arg(script.with_file_name("peft_generate.py"))
            .arg(&hf)
            .arg(&out)
            .arg(prompt)
            .arg("12"));
        let peft: String = serde_json::from_str(peft.trim()).unwrap();
        eprintln!("{arch}: transformers + PEFT {peft:?}");
        assert!(
            peft.starts_with(answer),
            "{arch}: PEFT with the adapter wrote {peft:?}"
        );
    }
}
