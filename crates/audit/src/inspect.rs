//! What a model file is: format, architecture, parameters, types, memory, tokenizer,
//! provenance, and findings where the file contradicts itself or holds broken values.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use serde_json::{json, Value as Json};
use verity_formats::gguf::Value;
use verity_model::arch::{Arch, GlobalTensor, HParams, LayerTensor};

use crate::source::{Entry, ModelFile};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Short machine-readable kind: nan, inf, all-zero, shape, missing, unexpected, metadata, load.
    pub kind: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tensor: Option<String>,
}

/// Value statistics of one tensor (over dequantized values).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    pub min: f32,
    pub max: f32,
    pub mean: f64,
    pub std: f64,
    pub nan: u64,
    pub inf: u64,
    pub zeros: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorRow {
    pub name: String,
    /// ggml order (row length first).
    pub shape: Vec<usize>,
    #[serde(rename = "type")]
    pub ty: String,
    pub params: u64,
    pub bytes: Option<usize>,
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub component: &'static str,
    /// `None` when the type cannot be decoded.
    pub stats: Option<Stats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TypeMix {
    #[serde(rename = "type")]
    pub ty: String,
    pub tensors: usize,
    pub params: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Memory {
    pub context: usize,
    pub weights_bytes: u64,
    /// K and V, f16, every layer: the whole context, or twice the window of a windowed
    /// layer.
    pub kv_cache_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub path: String,
    /// "GGUF" or "safetensors".
    pub format: String,
    pub format_version: Option<u32>,
    pub file_bytes: u64,
    pub architecture: Option<String>,
    /// Every architecture hyperparameter the file declares (GGUF `{arch}.*` keys without the
    /// prefix, or `config.json`).
    pub hyperparameters: BTreeMap<String, Json>,
    /// Parameters by component: embeddings, attention, mlp, norms, output, other.
    pub parameters: BTreeMap<String, u64>,
    pub total_parameters: u64,
    /// Mixture of experts: (experts per layer, experts used per token).
    pub experts: Option<(u64, u64)>,
    /// Parameters one token runs through: all but the unused experts' (mixture of
    /// experts only).
    pub active_parameters: Option<u64>,
    pub tensor_count: usize,
    pub types: Vec<TypeMix>,
    pub bits_per_weight: f64,
    pub memory: Option<Memory>,
    pub tokenizer: Json,
    pub chat_template: Option<String>,
    /// Family the template follows (ChatML, Llama 3, ...), when recognised.
    pub chat_template_kind: Option<String>,
    pub provenance: BTreeMap<String, Json>,
    pub findings: Vec<Finding>,
    /// Every tensor (always computed; printed with --tensors).
    pub tensors: Vec<TensorRow>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Which part of a transformer a tensor belongs to, by its name (GGUF or HF scheme).
pub fn component(name: &str) -> &'static str {
    let n = name;
    if n.starts_with("token_embd") || n.contains("embed_tokens") || n.contains("wte") {
        "embeddings"
    } else if n.starts_with("output.") || n.starts_with("lm_head") {
        "output"
    } else if n.contains("norm") {
        "norms"
    } else if n.contains("attn") {
        "attention"
    } else if n.contains("ffn") || n.contains("mlp") {
        "mlp"
    } else {
        "other"
    }
}

/// Recognise a chat template's family by its markers.
pub fn template_kind(t: &str) -> Option<&'static str> {
    if t.contains("<|im_start|>") {
        Some("ChatML")
    } else if t.contains("<|start_header_id|>") {
        Some("Llama 3")
    } else if t.contains("<start_of_turn>") {
        Some("Gemma")
    } else if t.contains("[INST]") {
        Some("Llama 2 / Mistral [INST]")
    } else if t.contains("<|user|>") {
        Some("Zephyr / Phi")
    } else {
        None
    }
}

fn gguf_to_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        // Shortest decimal of the f32 (1e-5, not 9.99999974e-6).
        Value::F32(x) => json!(x.to_string().parse::<f64>().unwrap_or(*x as f64)),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::Str(s) => json!(s),
        Value::Array(a) if a.len() <= 64 => Json::Array(a.iter().map(gguf_to_json).collect()),
        Value::Array(a) => json!(format!(
            "[{} × {}]",
            a.len(),
            a.first().map_or("?", |v| v.type_name())
        )),
    }
}

/// Scan a tensor's dequantized values, row by row.
fn scan(mf: &ModelFile, e: &Entry) -> Option<Stats> {
    let ty = e.ty?;
    let data = mf.data(e)?;
    let (rows, cols) = e.rows_cols();
    let rb = ty.row_bytes(cols)?;
    if rb.checked_mul(rows)? != data.len() {
        return None;
    }
    let mut buf = vec![0f32; cols];
    let mut s = Stats {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        ..Stats::default()
    };
    let (mut sum, mut sumsq, mut finite) = (0f64, 0f64, 0u64);
    for r in 0..rows {
        verity_kernels::dequantize_row(ty, &data[r * rb..(r + 1) * rb], &mut buf);
        let (mut rs, mut rq) = (0f64, 0f64);
        for &x in &buf {
            if x.is_nan() {
                s.nan += 1;
            } else if x.is_infinite() {
                s.inf += 1;
            } else {
                if x == 0.0 {
                    s.zeros += 1;
                }
                s.min = s.min.min(x);
                s.max = s.max.max(x);
                rs += x as f64;
                rq += (x as f64) * (x as f64);
                finite += 1;
            }
        }
        sum += rs;
        sumsq += rq;
    }
    if finite > 0 {
        s.mean = sum / finite as f64;
        s.std = (sumsq / finite as f64 - s.mean * s.mean).max(0.0).sqrt();
    } else {
        s.min = f32::NAN;
        s.max = f32::NAN;
    }
    Some(s)
}

/// Inspect a model file or directory. `ctx`: context for the memory estimate (0: the
/// model's training context).
pub fn inspect(path: &Path, ctx: usize) -> anyhow::Result<Report> {
    let mf = ModelFile::open(path)?;
    let mut findings = Vec::new();
    let file_bytes = match mf.hf() {
        Some(h) => h
            .shards
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum(),
        None => mf
            .gguf_parts()
            .iter()
            .map(|g| g.file_bytes().len() as u64)
            .sum(),
    };

    // Values: every tensor, in parallel.
    let stats: Vec<Option<Stats>> = mf.tensors.par_iter().map(|e| scan(&mf, e)).collect();
    let mut tensors = Vec::with_capacity(mf.tensors.len());
    let mut parameters: BTreeMap<String, u64> = BTreeMap::new();
    let mut expert_parameters = 0u64;
    let mut types: BTreeMap<String, TypeMix> = BTreeMap::new();
    for (e, st) in mf.tensors.iter().zip(stats) {
        let comp = component(&e.name);
        let n = e.n_elements();
        *parameters.entry(comp.to_string()).or_default() += n;
        if e.name.contains("_exps.") || e.name.contains(".experts.") {
            expert_parameters += n;
        }
        let tm = types.entry(e.type_name.clone()).or_insert(TypeMix {
            ty: e.type_name.clone(),
            tensors: 0,
            params: 0,
            bytes: 0,
        });
        tm.tensors += 1;
        tm.params += n;
        tm.bytes += e.bytes.unwrap_or(0) as u64;
        let name = verity_formats::printable(&e.name);
        match &st {
            None => findings.push(Finding {
                severity: Severity::Warning,
                kind: "unchecked",
                message: format!("tensor '{name}' has type {} that verity cannot decode: its values were not checked", e.type_name),
                tensor: Some(e.name.clone()),
            }),
            Some(s) => {
                if s.nan > 0 || s.inf > 0 {
                    findings.push(Finding {
                        severity: Severity::Error,
                        kind: if s.nan > 0 { "nan" } else { "inf" },
                        message: format!(
                            "tensor '{name}' holds {} NaN and {} infinite values (of {n})",
                            s.nan, s.inf
                        ),
                        tensor: Some(e.name.clone()),
                    });
                } else if s.zeros == n {
                    let matrix = e.shape.iter().filter(|&&d| d > 1).count() >= 2;
                    findings.push(Finding {
                        severity: if matrix { Severity::Error } else { Severity::Warning },
                        kind: "all-zero",
                        message: format!("tensor '{name}' is all zeros ({n} values)"),
                        tensor: Some(e.name.clone()),
                    });
                }
            }
        }
        tensors.push(TensorRow {
            name: e.name.clone(),
            shape: e.shape.clone(),
            ty: e.type_name.clone(),
            params: n,
            bytes: e.bytes,
            offset: e.offset,
            file: e.file.clone(),
            component: comp,
            stats: st,
        });
    }
    let total_parameters: u64 = parameters.values().sum();
    let total_bytes: u64 = mf.tensors.iter().map(|e| e.bytes.unwrap_or(0) as u64).sum();
    let bits_per_weight = if total_parameters > 0 {
        total_bytes as f64 * 8.0 / total_parameters as f64
    } else {
        0.0
    };
    let mut types: Vec<TypeMix> = types.into_values().collect();
    types.sort_by_key(|t| std::cmp::Reverse(t.params));

    // Architecture and hyperparameters.
    let mut hyperparameters = BTreeMap::new();
    let mut provenance = BTreeMap::new();
    let (format, format_version, architecture, hparams, tokenizer, chat_template);
    match (mf.gguf(), mf.hf()) {
        (Some(g), _) => {
            format = "GGUF".to_string();
            format_version = Some(g.version);
            architecture = g.architecture().map(str::to_string);
            let prefix = architecture.as_deref().map(|a| format!("{a}."));
            for (k, v) in &g.metadata {
                if let Some(rest) = prefix.as_deref().and_then(|p| k.strip_prefix(p)) {
                    hyperparameters.insert(rest.to_string(), gguf_to_json(v));
                } else if k.starts_with("general.") {
                    provenance.insert(k.clone(), gguf_to_json(v));
                }
            }
            hparams = match HParams::from_gguf(g) {
                Ok(h) => Some(h),
                Err(e) => {
                    findings.push(Finding {
                        severity: if architecture
                            .as_deref()
                            .and_then(Arch::from_gguf_name)
                            .is_some()
                        {
                            Severity::Error
                        } else {
                            Severity::Warning
                        },
                        kind: "metadata",
                        message: format!("hyperparameters: {e}"),
                        tensor: None,
                    });
                    None
                }
            };
            tokenizer = gguf_tokenizer(g, &mut findings, &mf);
            chat_template = g.get_str("tokenizer.chat_template").map(str::to_string);
            gguf_metadata_checks(g, &mf, total_parameters, &mut findings);
        }
        (None, Some(h)) => {
            format = "safetensors".to_string();
            format_version = None;
            architecture = h
                .config
                .get("model_type")
                .and_then(Json::as_str)
                .map(str::to_string);
            if let Some(o) = h.config.as_object() {
                for (k, v) in o {
                    hyperparameters.insert(k.clone(), v.clone());
                }
            }
            for k in [
                "architectures",
                "model_type",
                "torch_dtype",
                "transformers_version",
                "_name_or_path",
            ] {
                if let Some(v) = h.config.get(k) {
                    provenance.insert(format!("config.{k}"), v.clone());
                }
            }
            model_card(&h.dir, &mut provenance);
            hparams = match HParams::from_hf_config(&h.config) {
                Ok(hp) => Some(hp),
                Err(e) => {
                    findings.push(Finding {
                        severity: Severity::Warning,
                        kind: "metadata",
                        message: format!("hyperparameters: {e}"),
                        tensor: None,
                    });
                    None
                }
            };
            let tc = h.tokenizer_config.clone().unwrap_or(Json::Null);
            chat_template = tc
                .get("chat_template")
                .and_then(Json::as_str)
                .map(str::to_string);
            tokenizer = json!({
                "source": if h.tokenizer_json().is_some() { "tokenizer.json" } else { "none" },
                "bos_token": tc.get("bos_token"),
                "eos_token": tc.get("eos_token"),
                "tokenizer_class": tc.get("tokenizer_class"),
            });
            if let Some(dt) = h.config.get("torch_dtype").and_then(Json::as_str) {
                let main = types
                    .first()
                    .map(|t| t.ty.to_lowercase())
                    .unwrap_or_default();
                let want = match dt {
                    "float32" => "f32",
                    "float16" => "f16",
                    "bfloat16" => "bf16",
                    _ => "",
                };
                if !want.is_empty() && want != main {
                    findings.push(Finding {
                        severity: Severity::Info,
                        kind: "metadata",
                        message: format!(
                            "config.json says torch_dtype {dt}, most weights are {}",
                            main.to_uppercase()
                        ),
                        tensor: None,
                    });
                }
            }
        }
        _ => unreachable!("a model file is GGUF or a directory"),
    }

    // Tensors against the architecture's table.
    if let Some(hp) = &hparams {
        check_tensors(&mf, hp, &mut findings);
    }
    // Can verity run it?
    if !findings.iter().any(|f| f.severity == Severity::Error) {
        // Mapped: this only checks that it loads, and must not read a large file whole.
        if let Err(e) = verity_model::load_with(&mf.path, verity_formats::Residency::Mapped) {
            findings.push(Finding {
                severity: Severity::Warning,
                kind: "load",
                message: format!("verity cannot run this model: {}", e.kind),
                tensor: None,
            });
        }
    }

    let memory = hparams.as_ref().map(|hp| {
        let context = if ctx > 0 { ctx } else { hp.n_ctx_train };
        // Saturating: a hostile file's context length can be any u64. A windowed layer
        // keeps room for twice its window (the engine's KvCache), not the whole context.
        let kv = (0..hp.n_layer)
            .map(|l| {
                let rows = hp.layer_window(l).map_or(context, |w| (2 * w).min(context));
                (rows as u64)
                    .saturating_mul(hp.kv_dim() as u64)
                    .saturating_mul(4)
            })
            .fold(0u64, u64::saturating_add);
        Memory {
            context,
            weights_bytes: total_bytes,
            kv_cache_bytes: kv,
            total_bytes: total_bytes.saturating_add(kv),
        }
    });
    let chat_template_kind = chat_template
        .as_deref()
        .and_then(template_kind)
        .map(str::to_string);
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));

    let count = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| hyperparameters.get(*k).and_then(Json::as_u64))
    };
    let experts = count(&["expert_count", "num_experts", "num_local_experts"])
        .zip(count(&["expert_used_count", "num_experts_per_tok"]));
    let active_parameters = experts
        .filter(|&(n, used)| n > 0 && used <= n)
        .map(|(n, used)| total_parameters - expert_parameters + expert_parameters / n * used);

    Ok(Report {
        path: mf.path.display().to_string(),
        format,
        format_version,
        file_bytes,
        architecture,
        hyperparameters,
        parameters,
        total_parameters,
        experts,
        active_parameters,
        tensor_count: mf.tensors.len(),
        types,
        bits_per_weight,
        memory,
        tokenizer,
        chat_template,
        chat_template_kind,
        provenance,
        findings,
        tensors,
    })
}

fn gguf_tokenizer(
    g: &verity_formats::gguf::Gguf,
    findings: &mut Vec<Finding>,
    mf: &ModelFile,
) -> Json {
    let tokens = g.get_array("tokenizer.ggml.tokens");
    let n = tokens.map_or(0, |t| t.len());
    let text = |id: Option<u64>| -> Json {
        match id {
            Some(i) => {
                json!({"id": i, "text": tokens.and_then(|t| t.get(i as usize)).and_then(Value::as_str)})
            }
            None => Json::Null,
        }
    };
    let control = g
        .get_array("tokenizer.ggml.token_type")
        .map_or(0, |t| t.iter().filter(|v| v.as_i64() == Some(3)).count());
    let mut special = serde_json::Map::new();
    for k in [
        "bos", "eos", "eot", "eom", "unknown", "padding", "sep", "cls", "mask",
    ] {
        let key = format!("tokenizer.ggml.{k}_token_id");
        if let Some(id) = g.get_u64(&key) {
            if id as usize >= n {
                findings.push(Finding {
                    severity: Severity::Error,
                    kind: "metadata",
                    message: format!("{key} = {id} but the vocabulary has {n} tokens"),
                    tensor: None,
                });
            }
            special.insert(k.to_string(), text(Some(id)));
        }
    }
    if let Some(e) = mf.entry("token_embd.weight") {
        let rows = e.shape.get(1).copied().unwrap_or(0);
        if n > rows {
            findings.push(Finding {
                severity: Severity::Error,
                kind: "metadata",
                message: format!(
                    "the tokenizer has {n} tokens but token_embd.weight has only {rows} rows"
                ),
                tensor: Some(e.name.clone()),
            });
        }
    }
    json!({
        "model": g.get_str("tokenizer.ggml.model"),
        "pre": g.get_str("tokenizer.ggml.pre"),
        "vocab_size": n,
        "merges": g.get_array("tokenizer.ggml.merges").map(|m| m.len()),
        "control_tokens": control,
        "special_tokens": special,
        "add_bos_token": g.get_bool("tokenizer.ggml.add_bos_token"),
        "add_eos_token": g.get_bool("tokenizer.ggml.add_eos_token"),
    })
}

/// ggml's `general.file_type` to the type most matrices then have.
fn file_type_main(ft: u64) -> Option<&'static [&'static str]> {
    Some(match ft {
        0 => &["F32"],
        1 => &["F16"],
        2 => &["Q4_0"],
        3 => &["Q4_1"],
        7 => &["Q8_0"],
        8 => &["Q5_0"],
        9 => &["Q5_1"],
        14 | 15 => &["Q4_K"],
        16 | 17 => &["Q5_K"],
        18 => &["Q6_K"],
        32 => &["BF16"],
        _ => return None,
    })
}

fn gguf_metadata_checks(
    g: &verity_formats::gguf::Gguf,
    mf: &ModelFile,
    total: u64,
    findings: &mut Vec<Finding>,
) {
    if let Some(ft) = g.get_u64("general.file_type") {
        if let Some(want) = file_type_main(ft) {
            let present = mf
                .tensors
                .iter()
                .filter(|e| e.shape.iter().filter(|&&d| d > 1).count() >= 2)
                .any(|e| want.contains(&e.type_name.as_str()));
            if !present {
                findings.push(Finding {
                    severity: Severity::Warning,
                    kind: "metadata",
                    message: format!(
                        "general.file_type {ft} says {} weights, but no matrix has that type",
                        want[0]
                    ),
                    tensor: None,
                });
            }
        }
    }
    if let Some(label) = g.get_str("general.size_label") {
        if let Some(declared) = parse_size_label(label) {
            let ratio = total as f64 / declared;
            if !(0.7..=1.4).contains(&ratio) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    kind: "metadata",
                    message: format!(
                        "general.size_label '{}' but the tensors hold {} parameters",
                        verity_formats::printable(label),
                        human_count(total)
                    ),
                    tensor: None,
                });
            }
        }
    }
}

/// "135M" -> 135e6; labels like "8x7B" are not parsed.
fn parse_size_label(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, suffix) = s.split_at(s.len().checked_sub(1)?);
    let mult = match suffix {
        "K" | "k" => 1e3,
        "M" | "m" => 1e6,
        "B" | "b" => 1e9,
        "T" | "t" => 1e12,
        _ => return None,
    };
    num.parse::<f64>()
        .ok()
        .filter(|v| *v > 0.0)
        .map(|v| v * mult)
}

/// 134515008 -> "134.5M".
pub fn human_count(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n}")
    }
}

pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// Expected tensors (name, ggml shape, required) of an architecture at these hyperparameters.
/// `mxfp4`: a Hugging Face checkpoint whose experts are MXFP4 blocks.
fn expected(hp: &HParams, gguf_names: bool, mxfp4: bool) -> Vec<(String, Vec<usize>, bool)> {
    let g = |t: GlobalTensor| {
        if gguf_names {
            t.gguf_name().to_string()
        } else {
            t.hf_name().to_string()
        }
    };
    let mut v = vec![
        (
            g(GlobalTensor::TokenEmbedding),
            vec![hp.n_embd, hp.n_vocab],
            true,
        ),
        (g(GlobalTensor::OutputNorm), vec![hp.n_embd], true),
        (g(GlobalTensor::Output), vec![hp.n_embd, hp.n_vocab], false),
    ];
    if gguf_names {
        for t in [
            GlobalTensor::RopeFreqs,
            GlobalTensor::RopeFactorsShort,
            GlobalTensor::RopeFactorsLong,
        ] {
            v.push((g(t), vec![hp.n_rot / 2], false));
        }
    }
    for l in 0..hp.n_layer {
        for t in LayerTensor::ALL {
            if !t.present_in(hp.arch) {
                continue;
            }
            let name = if gguf_names {
                t.gguf_name_in(hp.arch, l)
            } else {
                t.hf_name(l)
            };
            let (r, c) = t.shape(hp);
            let shape = if r == 1 { vec![c] } else { vec![c, r] };
            v.push((name, shape, true));
        }
        // A mixture-of-experts layer: its router and its experts' 3-D tensors (GGUF only).
        if hp.arch.spec().moe && gguf_names {
            let (d, e, f) = (hp.n_embd, hp.n_expert, hp.n_ff_exp);
            for (n, shape) in [
                ("ffn_gate_inp", vec![d, e]),
                ("ffn_gate_exps", vec![d, f, e]),
                ("ffn_up_exps", vec![d, f, e]),
                ("ffn_down_exps", vec![f, d, e]),
            ] {
                v.push((format!("blk.{l}.{n}.weight"), shape, true));
            }
            if hp.arch.spec().moe_biases {
                for (n, shape) in [
                    ("ffn_gate_inp", vec![e]),
                    ("ffn_gate_exps", vec![f, e]),
                    ("ffn_up_exps", vec![f, e]),
                    ("ffn_down_exps", vec![d, e]),
                ] {
                    v.push((format!("blk.{l}.{n}.bias"), shape, true));
                }
            }
        }
        if hp.arch.spec().moe && !gguf_names {
            v.extend(hf_experts(hp, l, mxfp4));
        }
    }
    v
}

/// A mixture-of-experts layer's router and experts in a Hugging Face checkpoint (ggml
/// order): one tensor per expert (Qwen3-MoE), or gpt-oss's 3-D ones, in float or as
/// transformers' MXFP4 blocks (listed under the blocks' name, as `ModelFile` lists them).
fn hf_experts(hp: &HParams, l: usize, mxfp4: bool) -> Vec<(String, Vec<usize>, bool)> {
    let (d, e, f) = (hp.n_embd, hp.n_expert, hp.n_ff_exp);
    let p = format!("model.layers.{l}.mlp");
    if !hp.arch.spec().moe_biases {
        let mut v = vec![(format!("{p}.gate.weight"), vec![d, e], true)];
        for x in 0..e {
            for (n, shape) in [
                ("gate_proj", [d, f]),
                ("up_proj", [d, f]),
                ("down_proj", [f, d]),
            ] {
                v.push((format!("{p}.experts.{x}.{n}.weight"), shape.to_vec(), true));
            }
        }
        return v;
    }
    let suffix = if mxfp4 { "_blocks" } else { "" };
    // transformers multiplies the float experts from the left ([experts, in, out]); the
    // blocks are stored [experts, out, in].
    let (gate_up, down) = if mxfp4 {
        (vec![d, 2 * f, e], vec![f, d, e])
    } else {
        (vec![2 * f, d, e], vec![d, f, e])
    };
    vec![
        (format!("{p}.router.weight"), vec![d, e], true),
        (format!("{p}.router.bias"), vec![e], true),
        (format!("{p}.experts.gate_up_proj{suffix}"), gate_up, true),
        (
            format!("{p}.experts.gate_up_proj_bias"),
            vec![2 * f, e],
            true,
        ),
        (format!("{p}.experts.down_proj{suffix}"), down, true),
        (format!("{p}.experts.down_proj_bias"), vec![d, e], true),
    ]
}

fn check_tensors(mf: &ModelFile, hp: &HParams, findings: &mut Vec<Finding>) {
    let gguf_names = mf.gguf().is_some();
    let mxfp4 = mf.hf().is_some_and(|h| {
        h.byte_tensors
            .keys()
            .any(|n| n.ends_with("experts.gate_up_proj_blocks"))
    });
    let exp = expected(hp, gguf_names, mxfp4);
    let known: HashSet<&str> = exp.iter().map(|(n, _, _)| n.as_str()).collect();
    for (name, shape, required) in &exp {
        match mf.entry(name) {
            None if *required => findings.push(Finding {
                severity: Severity::Error,
                kind: "missing",
                message: format!("tensor '{name}' is missing (expected shape {shape:?})"),
                tensor: Some(name.clone()),
            }),
            None => {}
            Some(e) => {
                let mut s = e.shape.clone();
                while s.len() > shape.len() && s.last() == Some(&1) {
                    s.pop();
                }
                if &s != shape {
                    findings.push(Finding {
                        severity: Severity::Error,
                        kind: "shape",
                        message: format!(
                            "tensor '{name}' has shape {:?}, the hyperparameters say {shape:?}",
                            e.shape
                        ),
                        tensor: Some(name.clone()),
                    });
                }
            }
        }
    }
    for e in &mf.tensors {
        if !known.contains(e.name.as_str()) {
            findings.push(Finding {
                severity: Severity::Warning,
                kind: "unexpected",
                message: format!(
                    "tensor '{}' is not part of the {} architecture (ignored when running)",
                    verity_formats::printable(&e.name),
                    hp.arch.gguf_name()
                ),
                tensor: Some(e.name.clone()),
            });
        }
    }
}

/// Fields of a Hugging Face model card's YAML front matter (simple `key: value` and lists).
fn model_card(dir: &Path, out: &mut BTreeMap<String, Json>) {
    let p = dir.join("README.md");
    let Ok(meta) = std::fs::metadata(&p) else {
        return;
    };
    if meta.len() > 4 << 20 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(&p) else {
        return;
    };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("---") {
        return;
    }
    let mut key: Option<String> = None;
    for line in lines.take(500) {
        if line.trim() == "---" {
            break;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            if let Some(k) = &key {
                let e = out.entry(format!("card.{k}")).or_insert_with(|| json!([]));
                if let Some(a) = e.as_array_mut() {
                    a.push(json!(item.trim()));
                }
            }
        } else if let Some((k, v)) = line.split_once(':') {
            if line.starts_with(' ') {
                continue;
            }
            let (k, v) = (k.trim().to_string(), v.trim());
            if matches!(
                k.as_str(),
                "license"
                    | "base_model"
                    | "datasets"
                    | "language"
                    | "library_name"
                    | "pipeline_tag"
                    | "tags"
                    | "license_name"
                    | "model_creator"
            ) {
                if !v.is_empty() {
                    out.insert(format!("card.{k}"), json!(v));
                }
                key = Some(k);
            } else {
                key = None;
            }
        }
    }
}
