//! Hostile files of the architectures issue 16 added (gemma3, phi3, smollm3, qwen3moe, gpt-oss): each
//! tiny valid test model (`scripts/make-test-models`) rewritten with one key or tensor wrong
//! fails to load with a one-line error naming the file and the problem, at once, without a
//! panic. Rewrites that are odd but harmless (a per-layer array with one value, a window Phi-3
//! ignores) still load.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use verity_formats::gguf::{Gguf, Value};
use verity_formats::gguf_write::{GgufWriter, OutTensor};

fn test_model(name: &str) -> PathBuf {
    let assets = std::env::var_os("VERITY_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/assets")
        });
    let p = assets.join("test-models").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/make-test-models",
        p.display()
    );
    p
}

/// A GGUF's metadata and tensors, to change and write again.
struct Edit {
    meta: Vec<(String, Value)>,
    tensors: Vec<OutTensor>,
}

impl Edit {
    fn of(model: &str) -> Self {
        let g = Gguf::open(&test_model(model)).unwrap();
        let tensors = g
            .tensors
            .iter()
            .map(|t| OutTensor {
                name: t.name.clone(),
                ty: t.ty.expect("a supported type"),
                shape: t.shape.clone(),
                data: g.tensor_data(t).unwrap().to_vec(),
            })
            .collect();
        Edit {
            meta: g.metadata.clone(),
            tensors,
        }
    }

    fn set(mut self, key: &str, v: Value) -> Self {
        match self.meta.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.meta.push((key.into(), v)),
        }
        self
    }

    fn remove(mut self, key: &str) -> Self {
        self.meta.retain(|(k, _)| k != key);
        self
    }

    fn tensor(&mut self, name: &str) -> &mut OutTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// A tensor given a new shape: its bytes cut, or padded with zeros, to fit (F32).
    fn reshape(mut self, name: &str, shape: &[usize]) -> Self {
        let t = self.tensor(name);
        t.shape = shape.to_vec();
        t.data.resize(4 * shape.iter().product::<usize>(), 0);
        self
    }

    /// One element of an F32 tensor.
    fn poke(mut self, name: &str, i: usize, v: f32) -> Self {
        self.tensor(name).data[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        self
    }

    fn drop_tensor(mut self, name: &str) -> Self {
        self.tensors.retain(|t| t.name != name);
        self
    }

    fn write(self, dir: &Path, file: &str) -> PathBuf {
        let mut w = GgufWriter::new();
        for (k, v) in self.meta {
            w.set(&k, v);
        }
        for t in self.tensors {
            w.add_tensor(t);
        }
        let p = dir.join(file);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        w.write(&mut f).unwrap();
        drop(f);
        p
    }
}

fn bools(v: &[bool]) -> Value {
    Value::Array(v.iter().map(|&b| Value::Bool(b)).collect())
}

fn u32s(v: &[u32]) -> Value {
    Value::Array(v.iter().map(|&n| Value::U32(n)).collect())
}

/// Load `path`; the error must be one short line naming the file and containing `needle`.
fn expect_error(path: &Path, needle: &str) {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| verity_model::load(path).map(|_| ()));
    let elapsed = start.elapsed();
    let what = path.file_name().unwrap().to_string_lossy();
    let msg = match result {
        Err(_) => panic!("{what}: the loader panicked"),
        Ok(Ok(())) => panic!("{what}: loaded, expected an error containing '{needle}'"),
        Ok(Err(e)) => e.to_string(),
    };
    println!("{what}: {msg}");
    assert!(!msg.contains('\n'), "{what}: multi-line error: {msg}");
    assert!(msg.len() < 500, "{what}: {}-byte error: {msg}", msg.len());
    assert!(
        msg.starts_with(&format!("{}: ", path.display())),
        "{what}: error does not name the file: {msg}"
    );
    assert!(
        msg.contains(needle),
        "{what}: expected '{needle}' in: {msg}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "{what}: took {elapsed:?} to fail"
    );
}

fn expect_load(path: &Path) -> verity_model::Model {
    let what = path.file_name().unwrap().to_string_lossy().into_owned();
    verity_model::load(path).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// No rewrite made the test process allocate wildly (its peak resident memory).
fn assert_peak_memory_bounded() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    assert!(kib < 2 << 20, "peak resident memory {kib} KiB");
}

#[test]
fn qwen3moe_hostile_expert_counts_and_shapes() {
    let m = "qwen3moe-tiny-F32.gguf";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect_load(&Edit::of(m).write(d, "roundtrip.gguf"));

    let key = "qwen3moe.expert_count";
    for (file, v, needle) in [
        (
            "experts-0.gguf",
            Value::U32(0),
            "expert count = 0 is out of range (1..=512)",
        ),
        (
            "experts-2-31.gguf",
            Value::U32(1 << 31),
            "expert count = 2147483648 is out of range",
        ),
        (
            "experts-u64-max.gguf",
            Value::U64(u64::MAX),
            "expert count = 18446744073709551615",
        ),
        (
            "experts-negative.gguf",
            Value::I32(-8),
            "metadata qwen3moe.expert_count is i32 -8, not a count",
        ),
        (
            "experts-string.gguf",
            Value::Str("8".into()),
            "qwen3moe.expert_count is a string, not a count",
        ),
        // The router is checked first: it disagrees with the count.
        (
            "experts-4.gguf",
            Value::U32(4),
            "tensor 'blk.0.ffn_gate_inp.weight' has shape [256, 8], expected [256, 4] (4 experts)",
        ),
        (
            "experts-16.gguf",
            Value::U32(16),
            "expected [256, 16] (16 experts)",
        ),
    ] {
        expect_error(&Edit::of(m).set(key, v).write(d, file), needle);
    }
    expect_error(
        &Edit::of(m).remove(key).write(d, "experts-missing.gguf"),
        "missing metadata qwen3moe.expert_count",
    );
    for (file, n) in [("used-9.gguf", 9), ("used-0.gguf", 0)] {
        expect_error(
            &Edit::of(m)
                .set("qwen3moe.expert_used_count", Value::U32(n))
                .write(d, file),
            &format!("experts used per token = {n} is out of range (1..=8, the expert count)"),
        );
    }
    expect_error(
        &Edit::of(m)
            .set("qwen3moe.expert_used_count", u32s(&[2, 4]))
            .write(d, "used-vary.gguf"),
        "qwen3moe.expert_used_count differs between layers",
    );
    let model = expect_load(
        &Edit::of(m)
            .set("qwen3moe.expert_used_count", u32s(&[2, 2]))
            .write(d, "used-per-layer.gguf"),
    );
    assert_eq!(model.hparams.n_expert_used, 2);
    expect_error(
        &Edit::of(m)
            .set("qwen3moe.expert_feed_forward_length", Value::U32(128))
            .write(d, "expert-ff.gguf"),
        "tensor 'blk.0.ffn_gate_exps.weight' has shape [256, 256, 8], expected [256, 128, 8]",
    );
    // The 3-D tensors disagree with the count.
    expect_error(
        &Edit::of(m)
            .reshape("blk.1.ffn_up_exps.weight", &[256, 256, 4])
            .write(d, "exps-4.gguf"),
        "tensor 'blk.1.ffn_up_exps.weight' has shape [256, 256, 4], expected [256, 256, 8] from the hyperparameters (8 experts)",
    );
    expect_error(
        &Edit::of(m)
            .reshape("blk.0.ffn_down_exps.weight", &[256, 2048])
            .write(d, "exps-2d.gguf"),
        "tensor 'blk.0.ffn_down_exps.weight' has shape [256, 2048], expected [256, 256, 8]",
    );
    expect_error(
        &Edit::of(m)
            .drop_tensor("blk.1.ffn_gate_exps.weight")
            .write(d, "exps-missing.gguf"),
        "missing tensor 'blk.1.ffn_gate_exps.weight'",
    );
    // Routers of the wrong shape.
    for (file, shape, needle) in [
        (
            "router-7.gguf",
            &[256, 7][..],
            "tensor 'blk.0.ffn_gate_inp.weight' has shape [256, 7], expected [256, 8]",
        ),
        (
            "router-transposed.gguf",
            &[8, 256],
            "has shape [8, 256], expected [256, 8]",
        ),
        (
            "router-3d.gguf",
            &[256, 4, 2],
            "has shape [256, 4, 2], expected [256, 8]",
        ),
    ] {
        expect_error(
            &Edit::of(m)
                .reshape("blk.0.ffn_gate_inp.weight", shape)
                .write(d, file),
            needle,
        );
    }
    expect_error(
        &Edit::of(m)
            .drop_tensor("blk.1.ffn_gate_inp.weight")
            .write(d, "router-missing.gguf"),
        "missing tensor 'blk.1.ffn_gate_inp.weight'",
    );
    assert_peak_memory_bounded();
}

#[test]
fn gemma3_hostile_windows_and_per_layer_arrays() {
    let m = "gemma3-tiny-F32.gguf"; // 6 layers, context 512, window 8
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect_load(&Edit::of(m).write(d, "roundtrip.gguf"));

    let win = "gemma3.attention.sliding_window";
    for (file, v, needle) in [
        (
            "window-513.gguf",
            Value::U32(513),
            "sliding window 513 is larger than the context (512)",
        ),
        (
            "window-2-40.gguf",
            Value::U64(1 << 40),
            "sliding window 1099511627776 is larger than the context (512)",
        ),
        (
            "window-negative.gguf",
            Value::I32(-1),
            "metadata gemma3.attention.sliding_window is i32 -1, not a count",
        ),
    ] {
        expect_error(&Edit::of(m).set(win, v).write(d, file), needle);
    }
    expect_error(
        &Edit::of(m)
            .set("gemma3.context_length", Value::U32(4))
            .write(d, "context-4.gguf"),
        "sliding window 8 is larger than the context (4)",
    );
    expect_error(
        &Edit::of(m)
            .set("gemma3.context_length", Value::U32(0))
            .write(d, "context-0.gguf"),
        "context length is 0",
    );

    let pat = "gemma3.attention.sliding_window_pattern";
    let mut strings = vec![Value::Str("true".into()); 6];
    // GGUF arrays hold one type.
    let mut floats = vec![Value::F32(0.5); 6];
    for (file, v, needle) in [
        ("pattern-5.gguf", bools(&[true; 5]), "gemma3.attention.sliding_window_pattern has 5 entries for 6 layers"),
        ("pattern-7.gguf", bools(&[true; 7]), "has 7 entries for 6 layers"),
        ("pattern-empty.gguf", bools(&[]), "has 0 entries for 6 layers"),
        ("pattern-strings.gguf", Value::Array(std::mem::take(&mut strings)), "entry 0 of gemma3.attention.sliding_window_pattern is a string, not a bool"),
        ("pattern-float.gguf", Value::Array(std::mem::take(&mut floats)), "entry 0 of gemma3.attention.sliding_window_pattern is f32 0.5, not a bool"),
        ("pattern-string.gguf", Value::Str("6".into()), "gemma3.attention.sliding_window_pattern is a string, not a layer count or one bool per layer"),
        ("pattern-negative.gguf", Value::I32(-6), "is i32 -6, not a layer count"),
    ] {
        expect_error(&Edit::of(m).set(pat, v).write(d, file), needle);
    }

    // Per-layer arrays of counts (llama.cpp reads these keys either way).
    let kv = "gemma3.attention.head_count_kv";
    for (file, key, v, needle) in [
        ("kv-heads-5.gguf", kv, u32s(&[1; 5]), "gemma3.attention.head_count_kv has 5 entries for 6 layers"),
        ("kv-heads-vary.gguf", kv, u32s(&[1, 1, 1, 1, 1, 2]), "gemma3.attention.head_count_kv differs between layers; verity needs one value for every layer"),
        ("heads-strings.gguf", "gemma3.attention.head_count", Value::Array(vec![Value::Str("4".into()); 6]), "gemma3.attention.head_count is not a list of counts"),
        ("ff-vary.gguf", "gemma3.feed_forward_length", u32s(&[512, 512, 256, 512, 512, 512]), "gemma3.feed_forward_length differs between layers"),
        ("value-length.gguf", "gemma3.attention.value_length", Value::U32(64), "gemma3.attention.value_length differs from the key length 128"),
        ("swa-base-nan.gguf", "gemma3.rope.freq_base_swa", Value::F32(f32::NAN), "the windowed layers' rope theta is not a positive number"),
    ] {
        expect_error(&Edit::of(m).set(key, v).write(d, file), needle);
    }
    expect_error(
        &Edit::of(m)
            .reshape("blk.2.post_attention_norm.weight", &[255])
            .write(d, "post-norm-255.gguf"),
        "tensor 'blk.2.post_attention_norm.weight' has shape [255], expected [256, 1]",
    );
    expect_error(
        &Edit::of(m)
            .drop_tensor("blk.5.post_ffw_norm.weight")
            .write(d, "post-norm-missing.gguf"),
        "missing tensor 'blk.5.post_ffw_norm.weight'",
    );

    // Odd but consistent: these load, as llama.cpp reads them.
    let model = expect_load(
        &Edit::of(m)
            .set(kv, u32s(&[1; 6]))
            .write(d, "kv-heads-6.gguf"),
    );
    assert_eq!(model.hparams.n_head_kv, 1);
    let pattern = [false, true, false, true, true, false];
    let model = expect_load(
        &Edit::of(m)
            .set(pat, bools(&pattern))
            .write(d, "pattern-6.gguf"),
    );
    assert_eq!(model.hparams.windowed, pattern);
    let model = expect_load(
        &Edit::of(m)
            .set(pat, Value::U32(u32::MAX))
            .write(d, "pattern-huge.gguf"),
    );
    assert_eq!(model.hparams.windowed, [true; 6]);
    assert_peak_memory_bounded();
}

/// llama.cpp's `llama` graph has no window, whatever the file says; so a `llama` GGUF
/// with `attention.sliding_window` (of any size) keeps every layer global in verity too.
/// (Mistral's window comes from its `config.json`: `mistral_sliding_window_matches_transformers`.)
#[test]
fn llama_gguf_window_is_ignored() {
    let m = "llama-tiny-F32.gguf";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let win = "llama.attention.sliding_window";
    for (file, v) in [
        ("window-8.gguf", Value::U32(8)),
        ("window-huge.gguf", Value::U64(1 << 40)),
    ] {
        let model = expect_load(&Edit::of(m).set(win, v).write(d, file));
        assert!(model.hparams.windowed.iter().all(|&w| !w), "{file}");
    }
}

#[test]
fn phi3_hostile_rope_and_fused_matrices() {
    let m = "phi3-tiny-F32.gguf"; // head 64, fused q/k/v 768 rows, fused gate/up 1024 rows
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    expect_load(&Edit::of(m).write(d, "roundtrip.gguf"));

    expect_error(
        &Edit::of(m)
            .reshape("blk.0.attn_qkv.weight", &[256, 704])
            .write(d, "qkv-704.gguf"),
        "tensor 'blk.0.attn_qkv.weight' has shape [256, 704], expected [256, 768] from the hyperparameters",
    );
    expect_error(
        &Edit::of(m)
            .reshape("blk.1.ffn_up.weight", &[256, 512])
            .write(d, "gate-up-512.gguf"),
        "tensor 'blk.1.ffn_up.weight' has shape [256, 512], expected [256, 1024]",
    );
    for (file, v, needle) in [
        (
            "rot-63.gguf",
            Value::U32(63),
            "RoPE dimension count 63 must be even, positive and at most the head dimension 64",
        ),
        (
            "rot-128.gguf",
            Value::U32(128),
            "RoPE dimension count 128 must be even",
        ),
        (
            "rot-0.gguf",
            Value::U32(0),
            "RoPE dimension count 0 must be even, positive",
        ),
        (
            "rot-float.gguf",
            Value::F32(64.0),
            "metadata phi3.rope.dimension_count is f32 64, not a count",
        ),
    ] {
        expect_error(
            &Edit::of(m)
                .set("phi3.rope.dimension_count", v)
                .write(d, file),
            needle,
        );
    }
    expect_error(
        &Edit::of(m)
            .set("phi3.rope.scaling.type", Value::Str("linear".into()))
            .set("phi3.rope.scaling.factor", Value::F32(0.0))
            .write(d, "rope-scale-0.gguf"),
        "rope.scaling.factor is not a positive number",
    );
    // llama.cpp ignores Phi-3's sliding_window, however large; so does verity.
    expect_load(
        &Edit::of(m)
            .set("phi3.attention.sliding_window", Value::U64(1 << 40))
            .write(d, "window-ignored.gguf"),
    );

    // LongRoPE with partial rotary: 48 of 64 dimensions, 24 factors each.
    let m = "phi3-longrope-partial-tiny-F32.gguf";
    expect_load(&Edit::of(m).write(d, "longrope-roundtrip.gguf"));
    for (file, name, len) in [
        ("short-23.gguf", "rope_factors_short.weight", 23),
        ("long-32.gguf", "rope_factors_long.weight", 32),
    ] {
        expect_error(
            &Edit::of(m).reshape(name, &[len]).write(d, file),
            &format!("tensor '{name}' has shape [{len}], expected [24, 1]"),
        );
    }
    expect_error(
        &Edit::of(m)
            .set("phi3.rope.dimension_count", Value::U32(64))
            .write(d, "rot-64-factors-24.gguf"),
        "tensor 'rope_factors_short.weight' has shape [24], expected [32, 1]",
    );
    for (file, name, v) in [
        ("long-nan.gguf", "rope_factors_long.weight", f32::NAN),
        ("short-zero.gguf", "rope_factors_short.weight", 0.0),
        ("short-negative.gguf", "rope_factors_short.weight", -1.0),
        ("long-inf.gguf", "rope_factors_long.weight", f32::INFINITY),
    ] {
        expect_error(
            &Edit::of(m).poke(name, 5, v).write(d, file),
            &format!("tensor '{name}' holds a RoPE factor that is not a positive number"),
        );
    }
    let af = "phi3.rope.scaling.attn_factor";
    for (file, v, shown) in [
        ("attn-factor-nan.gguf", f32::NAN, "NaN"),
        ("attn-factor-negative.gguf", -1.0, "-1"),
        ("attn-factor-zero.gguf", 0.0, "0"),
        ("attn-factor-inf.gguf", f32::INFINITY, "inf"),
    ] {
        expect_error(
            &Edit::of(m).set(af, Value::F32(v)).write(d, file),
            &format!("rope.scaling.attn_factor = {shown} is not a positive number"),
        );
    }
    expect_error(
        &Edit::of(m)
            .set(
                "phi3.rope.scaling.original_context_length",
                Value::Str("4k".into()),
            )
            .write(d, "orig-ctx-string.gguf"),
        "metadata phi3.rope.scaling.original_context_length is a string, not a count",
    );
    assert_peak_memory_bounded();
}

#[test]
fn smollm3_hostile_layer_counts() {
    let m = "smollm3-tiny-F32.gguf"; // 8 layers, head 64
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = expect_load(&Edit::of(m).write(d, "roundtrip.gguf"));
    assert_eq!(
        model.hparams.no_rope,
        [false, false, false, true, false, false, false, true]
    );

    let blocks = "smollm3.block_count";
    for (file, v, needle) in [
        (
            "blocks-9.gguf",
            Value::U32(9),
            "missing tensor 'blk.8.attn_q.weight'",
        ),
        (
            "blocks-0.gguf",
            Value::U32(0),
            "layer count = 0 is out of range (1..=1024)",
        ),
        (
            "blocks-2-40.gguf",
            Value::U64(1 << 40),
            "layer count = 1099511627776 is out of range (1..=1024)",
        ),
    ] {
        expect_error(&Edit::of(m).set(blocks, v).write(d, file), needle);
    }
    for (file, key, v, needle) in [
        (
            "rot-65.gguf",
            "smollm3.rope.dimension_count",
            Value::U32(65),
            "RoPE dimension count 65 must be even",
        ),
        (
            "kv-heads-vary.gguf",
            "smollm3.attention.head_count_kv",
            u32s(&[2, 2, 2, 4, 2, 2, 2, 4]),
            "smollm3.attention.head_count_kv differs between layers",
        ),
        (
            "ff-7.gguf",
            "smollm3.feed_forward_length",
            u32s(&[512; 7]),
            "smollm3.feed_forward_length has 7 entries for 8 layers",
        ),
        (
            "heads-9.gguf",
            "smollm3.attention.head_count",
            u32s(&[4; 9]),
            "smollm3.attention.head_count has 9 entries for 8 layers",
        ),
    ] {
        expect_error(&Edit::of(m).set(key, v).write(d, file), needle);
    }
    assert_peak_memory_bounded();
}

#[test]
fn gpt_oss_hostile_sinks_biases_and_rope_scaling() {
    let m = "gpt-oss-tiny-F32.gguf";
    let ok = expect_load(&test_model(m));
    assert_eq!(ok.hparams.windowed, [true, false, true, false]);
    assert!(ok.hparams.yarn.is_some() && ok.weights.layers[0].sinks.is_some());
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let tensor_cases: Vec<(&str, Edit, &str)> = vec![
        (
            "sinks-3.gguf",
            Edit::of(m).reshape("blk.0.attn_sinks.weight", &[3]),
            "tensor 'blk.0.attn_sinks.weight' has shape [3], expected [4, 1]",
        ),
        (
            "no-sinks.gguf",
            Edit::of(m).drop_tensor("blk.1.attn_sinks.weight"),
            "missing tensor 'blk.1.attn_sinks.weight'",
        ),
        (
            "o-bias-short.gguf",
            Edit::of(m).reshape("blk.2.attn_output.bias", &[255]),
            "tensor 'blk.2.attn_output.bias' has shape [255]",
        ),
        (
            "router-bias-7.gguf",
            Edit::of(m).reshape("blk.0.ffn_gate_inp.bias", &[7]),
            "tensor 'blk.0.ffn_gate_inp.bias' has shape [7], expected [8]",
        ),
        (
            "down-bias-7-experts.gguf",
            Edit::of(m).reshape("blk.3.ffn_down_exps.bias", &[256, 7]),
            "tensor 'blk.3.ffn_down_exps.bias' has shape [256, 7], expected [256, 8]",
        ),
        (
            "no-up-bias.gguf",
            Edit::of(m).drop_tensor("blk.1.ffn_up_exps.bias"),
            "missing tensor 'blk.1.ffn_up_exps.bias'",
        ),
        (
            "no-ffn-norm.gguf",
            Edit::of(m).drop_tensor("blk.0.post_attention_norm.weight"),
            "missing tensor 'blk.0.post_attention_norm.weight'",
        ),
    ];
    for (file, edit, needle) in tensor_cases {
        expect_error(&edit.write(d, file), needle);
    }
    for (file, key, v, needle) in [
        (
            "yarn-negative.gguf",
            "gpt-oss.rope.scaling.factor",
            Value::F32(-32.0),
            "rope.scaling.factor is not a positive number",
        ),
        (
            "yarn-nan.gguf",
            "gpt-oss.rope.scaling.factor",
            Value::F32(f32::NAN),
            "rope.scaling.factor is not a positive number",
        ),
        (
            "yarn-orig-0.gguf",
            "gpt-oss.rope.scaling.original_context_length",
            Value::U32(0),
            "YaRN scaling needs",
        ),
        (
            "window-too-big.gguf",
            "gpt-oss.attention.sliding_window",
            Value::U32(1 << 20),
            "sliding window 1048576 is larger than the context (131072)",
        ),
        (
            "experts-used-9.gguf",
            "gpt-oss.expert_used_count",
            Value::U32(9),
            "experts used per token = 9 is out of range (1..=8",
        ),
        (
            "experts-12.gguf",
            "gpt-oss.expert_count",
            Value::U32(12),
            "expected [256, 12] (12 experts)",
        ),
    ] {
        expect_error(&Edit::of(m).set(key, v).write(d, file), needle);
    }
    assert_peak_memory_bounded();
}

/// The gguf fuzz target's seeds of these architectures (scripts/make-fuzz-seeds.py) are valid
/// models, so the fuzzer's mutations start from files that reach every check.
#[test]
fn fuzz_seeds_load() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/gguf");
    for (file, arch) in [
        ("gemma3.gguf", verity_model::Arch::Gemma3),
        ("phi3-longrope.gguf", verity_model::Arch::Phi3),
        ("smollm3.gguf", verity_model::Arch::SmolLM3),
        ("qwen3moe.gguf", verity_model::Arch::Qwen3Moe),
        ("gpt-oss.gguf", verity_model::Arch::GptOss),
    ] {
        let m = expect_load(&seeds.join(file));
        assert_eq!(m.hparams.arch, arch, "{file}");
        match arch {
            verity_model::Arch::Gemma3 => assert_eq!(m.hparams.windowed, [true, false]),
            verity_model::Arch::Phi3 => {
                assert_eq!(m.hparams.n_rot, 12);
                assert!(m.weights.rope_freqs.is_some() && m.weights.rope_freqs_long.is_some());
            }
            verity_model::Arch::SmolLM3 => {
                assert_eq!(m.hparams.no_rope, [false, false, false, true])
            }
            verity_model::Arch::GptOss => {
                assert_eq!(m.hparams.windowed, [true, false]);
                assert!(m.hparams.yarn.is_some());
                assert!(m.weights.layers[1].moe.as_ref().unwrap().biases.is_some());
            }
            _ => assert_eq!((m.hparams.n_expert, m.hparams.n_expert_used), (4, 2)),
        }
    }
}
