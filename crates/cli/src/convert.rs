use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use serde_json::json;
use verity_formats::TensorType;
use verity_model::adapter::permute_rows;
use verity_model::arch::{FfnActivation, GlobalTensor, LayerTensor, MoeGating};
use verity_model::{Model, Proj, RopeStyle, Tensor};

use crate::merge::Merge;

use crate::common::{load_model, ModelArgs};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Target {
    /// A Hugging Face directory: config.json, tokenizer files, model.safetensors.
    Hf,
    /// A llama.cpp GGUF LoRA file (for adapters).
    Gguf,
    /// A PEFT adapter directory (for adapters).
    Peft,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Hf => "hf",
            Target::Gguf => "gguf",
            Target::Peft => "peft",
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

/// Convert a model or a LoRA adapter to another format.
///
/// Models: writes a Hugging Face directory (config.json, tokenizer.json,
/// tokenizer_config.json with the chat template, generation_config.json,
/// model.safetensors) from a GGUF file. Quantized weights are dequantized.
///
/// Adapters (with --base, the model they were made for): a PEFT directory to a llama.cpp
/// GGUF LoRA file (--to gguf) or back (--to peft). q/k rows are permuted for llama.cpp's
/// RoPE layout where the architecture needs it; rsLoRA and per-module ranks or alphas
/// are folded into the file so that llama.cpp's alpha/r scale gives the same update.
///
/// The output appears only when complete.
///
/// Examples:
///   verity convert SmolLM2-135M-Instruct.Q4_1.gguf --to hf smollm2-hf/
///   verity convert model.gguf --to hf out/ --dtype bf16 --json
///   verity convert ./my-adapter/ --to gguf --base smollm2 my-adapter.gguf
///   verity convert my-adapter.gguf --to peft --base smollm2 ./my-adapter-peft/
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ConvertArgs {
    /// The model to convert (a GGUF file, or a name in the store).
    pub input: String,
    /// The output directory (must not exist, or be empty).
    pub output: PathBuf,
    /// Target format.
    #[arg(long, value_enum, default_value_t = Target::Hf)]
    pub to: Target,
    /// Element type of the written weights.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// The base model an adapter belongs to (needed to convert adapters).
    #[arg(long)]
    pub base: Option<String>,
    /// Split the weights into shards of at most this size (e.g. 50MB, 5GB), with a
    /// model.safetensors.index.json, as the Hub's large models are.
    #[arg(long, value_parser = parse_size)]
    pub max_shard_size: Option<u64>,
    /// Write MXFP4 experts (gpt-oss) in --dtype too. Without it they stay MXFP4, in
    /// transformers' `mxfp4` layout as OpenAI ships gpt-oss: lossless and a quarter the size.
    #[arg(long)]
    pub dequantize: bool,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// `50MB`, `5GB`, `1.5GiB`, `1000` (bytes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 50MB or 5GB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1048576.0,
        "gib" => 1073741824.0,
        _ => {
            return Err(format!(
                "'{s}': unknown unit (use B, kB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = (n * mult) as u64;
    if v == 0 {
        return Err("the shard size must be positive".into());
    }
    Ok(v)
}

pub fn convert(args: ConvertArgs) -> anyhow::Result<()> {
    if crate::convert_adapter::is_adapter(Path::new(&args.input)) {
        return crate::convert_adapter::convert_adapter(&args);
    }
    if args.to != Target::Hf {
        bail!(
            "{} is a model; models convert to --to hf (GGUF and PEFT outputs are for LoRA adapters)",
            args.input
        );
    }
    let model = load_model(&ModelArgs {
        model: Some(args.input.clone()),
        ctx: 0,
        threads: 0,
        cache_type: Default::default(),
    })?;
    let out = &args.output;
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty; choose a new directory",
            out.display()
        );
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new()
        .prefix(".verity-convert-")
        .tempdir_in(parent)?;
    let n_tensors = write_hf(
        &model,
        staging.path(),
        args.dtype,
        args.max_shard_size,
        !args.dequantize,
    )?;
    if out.exists() {
        std::fs::remove_dir(out)?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, out)
        .with_context(|| format!("moving the result to {}", out.display()))?;
    if args.json {
        let v = json!({ "input": model.path, "output": out, "format": "hf", "dtype": format!("{:?}", args.dtype).to_lowercase(), "tensors": n_tensors });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!("verity: wrote {} ({n_tensors} tensors)", out.display());
    }
    Ok(())
}

/// Write the HF files into `dir`; returns the number of tensors.
fn write_hf(
    model: &Model,
    dir: &Path,
    dtype: Dtype,
    max_shard: Option<u64>,
    keep_mxfp4: bool,
) -> anyhow::Result<usize> {
    write_hf_merged(
        model,
        dir,
        dtype,
        None,
        &serde_json::Value::Null,
        max_shard,
        keep_mxfp4,
    )
}

/// [`write_hf`] with adapters merged into the projections they update; `provenance`
/// (when not null) goes into the safetensors metadata as `verity.merge`. `keep_mxfp4`:
/// gpt-oss experts that are MXFP4 are written as such (see [`gpt_oss_mxfp4_experts`]).
pub fn write_hf_merged(
    model: &Model,
    dir: &Path,
    dtype: Dtype,
    merge: Option<&Merge>,
    provenance: &serde_json::Value,
    max_shard: Option<u64>,
    keep_mxfp4: bool,
) -> anyhow::Result<usize> {
    let hp = &model.hparams;
    let w = &model.weights;
    let (model_type, class) = hp.arch.hf_names(hp.windowed.contains(&true));
    let tok = &model.tokenizer;

    let mut config = json!({
        "architectures": [class],
        "model_type": model_type,
        "hidden_size": hp.n_embd,
        "intermediate_size": hp.n_ff,
        "num_hidden_layers": hp.n_layer,
        "num_attention_heads": hp.n_head,
        "num_key_value_heads": hp.n_head_kv,
        "head_dim": hp.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": hp.rms_eps,
        "rope_theta": hp.rope_theta,
        "max_position_embeddings": hp.n_ctx_train,
        "vocab_size": hp.n_vocab,
        "tie_word_embeddings": hp.tied_embeddings,
        "attention_bias": hp.arch.has_qkv_bias(),
        "torch_dtype": match dtype {
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::Bf16 => "bfloat16",
        },
        "bos_token_id": tok.bos_id(),
        "eos_token_id": tok.eos_id(),
        // Some classes default to an id past a small vocabulary (Phi-3: 32000).
        "pad_token_id": null,
    });
    if hp.rope_freq_scale != 1.0 {
        config["rope_scaling"] =
            json!({ "rope_type": "linear", "factor": 1.0 / hp.rope_freq_scale });
    }
    match (&w.rope_freqs, &w.rope_freqs_long) {
        (Some(short), Some(long)) => {
            config["rope_scaling"] = json!({
                "rope_type": "longrope", "type": "longrope",
                "short_factor": short, "long_factor": long,
                "attention_factor": hp.rope_attn_factor,
            });
            config["original_max_position_embeddings"] = json!(hp.n_ctx_orig);
        }
        (Some(freqs), None) => {
            config["rope_scaling"] = llama3_scaling_for(freqs, hp.head_dim, hp.rope_theta)?;
        }
        _ => {}
    }
    arch_config(model, &mut config);
    let mxfp4 = keep_mxfp4
        && hp.arch.spec().moe_biases
        && w.layers.iter().all(|l| {
            l.moe.as_ref().is_some_and(|m| {
                [&m.gate, &m.up, &m.down]
                    .iter()
                    .all(|v| v.iter().all(|t| t.ty == TensorType::MXFP4))
            })
        });
    if mxfp4 {
        // As OpenAI's gpt-oss config.json has it: everything but the experts in float.
        config["quantization_config"] = json!({
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router",
                "model.embed_tokens", "lm_head"
            ],
        });
    }
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({ "bos_token_id": tok.bos_id(), "eos_token_id": tok.eos_id() }),
    )?;
    std::fs::write(dir.join("tokenizer.json"), tok.to_tokenizer_json()?)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tok.to_tokenizer_config(),
    )?;

    // GGUF `llama` q/k rows are permuted for interleaved RoPE; HF expects the halves layout.
    let unpermute = hp.rope_style == RopeStyle::Interleaved;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    // Tensors of raw bytes (safetensors U8): MXFP4 blocks and scales.
    let mut byte_tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let matrix = |t: &Tensor| (vec![t.rows, t.cols], t.to_f32());
    let (s, d) = matrix(&w.token_embd);
    tensors.push((GlobalTensor::TokenEmbedding.hf_name().into(), s, d));
    if let Some(o) = &w.output {
        let (s, d) = matrix(o);
        tensors.push((GlobalTensor::Output.hf_name().into(), s, d));
    }
    let norm_offset = hp.arch.spec().hf_norm_offset;
    tensors.push((
        GlobalTensor::OutputNorm.hf_name().into(),
        vec![hp.n_embd],
        w.output_norm.iter().map(|x| x - norm_offset).collect(),
    ));
    for (l, layer) in w.layers.iter().enumerate() {
        let entry = |kind: LayerTensor, t: &Tensor, heads: Option<usize>| {
            let (s, mut d) = matrix(t);
            if let (Some(m), Some(proj)) = (
                merge,
                Proj::ALL.into_iter().find(|p| p.layer_tensor() == kind),
            ) {
                m.apply(l, proj, &mut d, t.cols);
            }
            if let (true, Some(h)) = (unpermute, heads) {
                d = permute_rows(&d, t.cols, h, t.rows / h, true);
            }
            (kind.hf_name(l), s, d)
        };
        let spec = hp.arch.spec();
        if spec.fused_qkv {
            // One matrix, rows q then k then v, as the checkpoint has it.
            let (mut rows, mut data) = (0, Vec::new());
            for t in [&layer.wq, &layer.wk, &layer.wv] {
                rows += t.rows;
                data.extend(t.to_f32());
            }
            tensors.push((LayerTensor::Qkv.hf_name(l), vec![rows, hp.n_embd], data));
        } else {
            tensors.push(entry(LayerTensor::Q, &layer.wq, Some(hp.n_head)));
            tensors.push(entry(LayerTensor::K, &layer.wk, Some(hp.n_head_kv)));
            tensors.push(entry(LayerTensor::V, &layer.wv, None));
        }
        tensors.push(entry(LayerTensor::Output, &layer.wo, None));
        if let (Some(moe), true) = (&layer.moe, spec.moe_biases) {
            tensors.extend(gpt_oss_experts(l, moe, hp, mxfp4));
            if mxfp4 {
                byte_tensors.extend(gpt_oss_mxfp4_experts(l, moe, hp));
            }
        } else if let Some(moe) = &layer.moe {
            let p = format!("model.layers.{l}.mlp");
            tensors.push((
                format!("{p}.gate.weight"),
                vec![moe.router.rows, moe.router.cols],
                moe.router.to_f32(),
            ));
            for (e, ((g, u), d)) in moe.gate.iter().zip(&moe.up).zip(&moe.down).enumerate() {
                for (name, t) in [("gate_proj", g), ("up_proj", u), ("down_proj", d)] {
                    tensors.push((
                        format!("{p}.experts.{e}.{name}.weight"),
                        vec![t.rows, t.cols],
                        t.to_f32(),
                    ));
                }
            }
        } else if spec.fused_gate_up {
            let mut data = layer.w_gate.to_f32();
            data.extend(layer.w_up.to_f32());
            tensors.push((
                LayerTensor::GateUp.hf_name(l),
                vec![2 * hp.n_ff, hp.n_embd],
                data,
            ));
            tensors.push(entry(LayerTensor::Down, &layer.w_down, None));
        } else {
            tensors.push(entry(LayerTensor::Gate, &layer.w_gate, None));
            tensors.push(entry(LayerTensor::Up, &layer.w_up, None));
            tensors.push(entry(LayerTensor::Down, &layer.w_down, None));
        }
        let vectors = [
            (LayerTensor::AttnNorm, Some(&layer.attn_norm)),
            (LayerTensor::FfnNorm, Some(&layer.ffn_norm)),
            (LayerTensor::QBias, layer.bq.as_ref()),
            (LayerTensor::KBias, layer.bk.as_ref()),
            (LayerTensor::VBias, layer.bv.as_ref()),
            (LayerTensor::QNorm, layer.q_norm.as_ref()),
            (LayerTensor::KNorm, layer.k_norm.as_ref()),
            (LayerTensor::PostAttnNorm, layer.post_attn_norm.as_ref()),
            (LayerTensor::PostFfnNorm, layer.post_ffn_norm.as_ref()),
            (LayerTensor::OutputBias, layer.bo.as_ref()),
            (LayerTensor::AttnSinks, layer.sinks.as_ref()),
        ];
        for (kind, v) in vectors {
            if let Some(v) = v {
                // Gemma's checkpoints store norms as `w - 1`.
                let offset = if kind.is_norm() {
                    spec.hf_norm_offset
                } else {
                    0.0
                };
                let v: Vec<f32> = v.iter().map(|x| x - offset).collect();
                tensors.push((kind.hf_name_in(hp.arch, l), vec![v.len()], v));
            }
        }
    }

    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            let b: Vec<u8> = match dtype {
                Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Dtype::F16 => data
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                Dtype::Bf16 => data
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            (name, shape, b)
        })
        .collect();
    let st_dtype = match dtype {
        Dtype::F32 => safetensors::Dtype::F32,
        Dtype::F16 => safetensors::Dtype::F16,
        Dtype::Bf16 => safetensors::Dtype::BF16,
    };
    let n_float = bytes.len();
    let bytes: Vec<_> = bytes.into_iter().chain(byte_tensors).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .enumerate()
        .map(|(i, (n, s, b))| {
            let ty = if i < n_float {
                st_dtype
            } else {
                safetensors::Dtype::U8
            };
            Ok((
                n.clone(),
                safetensors::tensor::TensorView::new(ty, s.clone(), b)?,
            ))
        })
        .collect::<Result<_, safetensors::SafeTensorError>>()?;
    let n = views.len();
    let mut metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    if !provenance.is_null() {
        metadata.insert("verity.merge".to_string(), provenance.to_string());
    }
    let Some(max) = max_shard else {
        safetensors::serialize_to_file(views, Some(metadata), &dir.join("model.safetensors"))?;
        return Ok(n);
    };
    // Shards in tensor order, each at most `max` bytes (a bigger tensor gets its own).
    let mut shards: Vec<Vec<(String, safetensors::tensor::TensorView)>> = vec![Vec::new()];
    let mut filled = 0u64;
    for (name, view) in views {
        let len = view.data().len() as u64;
        if filled > 0 && filled + len > max {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += len;
        shards.last_mut().expect("one shard").push((name, view));
    }
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    let total: u64 = bytes.iter().map(|(_, _, b)| b.len() as u64).sum();
    for (i, shard) in shards.into_iter().enumerate() {
        let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        for (name, _) in &shard {
            weight_map.insert(name.clone(), json!(file));
        }
        safetensors::serialize_to_file(shard, Some(metadata.clone()), &dir.join(&file))?;
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    )?;
    Ok(n)
}

/// A gpt-oss layer's router and experts as transformers' `GptOssExperts` holds them:
/// `gate_up_proj` `[experts, hidden, 2 ff]` multiplied from the left, gate and up in
/// alternate columns, `down_proj` `[experts, ff, hidden]`, biases alike. With `mxfp4`, only
/// the router and the biases (the experts go to [`gpt_oss_mxfp4_experts`]).
fn gpt_oss_experts(
    l: usize,
    moe: &verity_model::Moe,
    hp: &verity_model::HParams,
    mxfp4: bool,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let (e, d, f) = (hp.n_expert, hp.n_embd, hp.n_ff_exp);
    let b = moe.biases.as_ref().expect("gpt-oss experts have biases");
    // Gate and up alternate, in the bias as in the matrix.
    let gate_up_bias: Vec<f32> = (0..e * 2 * f)
        .map(|i| {
            let (x, j) = (i / (2 * f), i % (2 * f) / 2);
            if i % 2 == 0 {
                b.gate[x * f + j]
            } else {
                b.up[x * f + j]
            }
        })
        .collect();
    let p = format!("model.layers.{l}.mlp");
    let mut out = vec![
        (
            format!("{p}.router.weight"),
            vec![e, d],
            moe.router.to_f32(),
        ),
        (format!("{p}.router.bias"), vec![e], b.router.clone()),
        (
            format!("{p}.experts.gate_up_proj_bias"),
            vec![e, 2 * f],
            gate_up_bias,
        ),
        (
            format!("{p}.experts.down_proj_bias"),
            vec![e, d],
            b.down.clone(),
        ),
    ];
    if mxfp4 {
        return out;
    }
    let mut gate_up = vec![0f32; e * d * 2 * f];
    let mut down = vec![0f32; e * f * d];
    for x in 0..e {
        let (g, u, dn) = (
            moe.gate[x].to_f32(),
            moe.up[x].to_f32(),
            moe.down[x].to_f32(),
        );
        let m = &mut gate_up[x * d * 2 * f..(x + 1) * d * 2 * f];
        for j in 0..f {
            for k in 0..d {
                m[k * 2 * f + 2 * j] = g[j * d + k];
                m[k * 2 * f + 2 * j + 1] = u[j * d + k];
            }
        }
        let m = &mut down[x * f * d..(x + 1) * f * d];
        for i in 0..d {
            for j in 0..f {
                m[j * d + i] = dn[i * f + j];
            }
        }
    }
    out.push((
        format!("{p}.experts.gate_up_proj"),
        vec![e, d, 2 * f],
        gate_up,
    ));
    out.push((format!("{p}.experts.down_proj"), vec![e, f, d], down));
    out
}

/// A gpt-oss layer's MXFP4 experts in transformers' `mxfp4` layout, as OpenAI ships them:
/// `gate_up_proj_blocks` `[experts, 2 ff, hidden / 32, 16]` (rows alternating gate, up)
/// with `gate_up_proj_scales` `[experts, 2 ff, hidden / 32]`, and `down_proj_*` alike.
/// The same codes and E8M0 scales as the GGUF blocks (`verity_formats::mxfp4`).
fn gpt_oss_mxfp4_experts(
    l: usize,
    moe: &verity_model::Moe,
    hp: &verity_model::HParams,
) -> Vec<(String, Vec<usize>, Vec<u8>)> {
    let (e, d, f) = (hp.n_expert, hp.n_embd, hp.n_ff_exp);
    // Rows `pick(x)` of each expert, in order, to blocks and scales.
    let pack = |mats: &[&[verity_model::Tensor]], rows: usize, cols: usize| {
        let nb = cols / 32;
        let (mut blocks, mut scales) = (Vec::new(), Vec::new());
        for x in 0..e {
            for r in 0..rows {
                let t = &mats[r % mats.len()][x];
                let rb = TensorType::MXFP4.row_bytes(cols).expect("MXFP4 rows");
                let row = &t.bytes()[(r / mats.len()) * rb..][..rb];
                for blk in row.chunks_exact(verity_formats::mxfp4::GGUF_BLOCK_BYTES) {
                    let (codes, scale) = verity_formats::mxfp4::transformers_block(blk);
                    blocks.extend(codes);
                    scales.push(scale);
                }
            }
        }
        (blocks, scales, nb)
    };
    let p = format!("model.layers.{l}.mlp.experts");
    let (gu_blocks, gu_scales, nb_d) = pack(&[&moe.gate, &moe.up], 2 * f, d);
    let (dn_blocks, dn_scales, nb_f) = pack(&[&moe.down], d, f);
    vec![
        (
            format!("{p}.gate_up_proj_blocks"),
            vec![e, 2 * f, nb_d, 16],
            gu_blocks,
        ),
        (
            format!("{p}.gate_up_proj_scales"),
            vec![e, 2 * f, nb_d],
            gu_scales,
        ),
        (
            format!("{p}.down_proj_blocks"),
            vec![e, d, nb_f, 16],
            dn_blocks,
        ),
        (format!("{p}.down_proj_scales"), vec![e, d, nb_f], dn_scales),
    ]
}

/// The `config.json` fields of the architecture's features beyond Llama's.
fn arch_config(model: &Model, config: &mut serde_json::Value) {
    let hp = &model.hparams;
    let spec = hp.arch.spec();
    if spec.ffn == FfnActivation::GeluTanh {
        config["hidden_act"] = json!("gelu_pytorch_tanh");
        config["hidden_activation"] = json!("gelu_pytorch_tanh");
    }
    if spec.embed_scale_sqrt_dim {
        // Gemma: queries scaled by 1/sqrt(head_dim), as verity computes it.
        config["query_pre_attn_scalar"] = json!(hp.head_dim);
    }
    // Mistral's config has the window alone: it applies to every layer.
    let window_alone = spec.hf_windowed_type.is_some() && !hp.windowed.contains(&false);
    if hp.window > 0 {
        config["sliding_window"] = json!(hp.window);
    }
    if hp.window > 0 && !window_alone {
        let types: Vec<&str> = hp
            .windowed
            .iter()
            .map(|&w| {
                if w {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        config["layer_types"] = json!(types);
        config["rope_local_base_freq"] = json!(hp.rope_theta_window);
    }
    if hp.no_rope.iter().any(|&n| n) {
        // SmolLM3: 1 = the layer uses RoPE.
        let v: Vec<u8> = hp.no_rope.iter().map(|&n| u8::from(!n)).collect();
        config["no_rope_layers"] = json!(v);
    }
    if hp.n_rot != hp.head_dim {
        config["partial_rotary_factor"] = json!(hp.n_rot as f64 / hp.head_dim as f64);
    }
    if let Some(y) = &hp.yarn {
        // From a GGUF `truncate` is true: the ramp's ends rounded out to whole pairs, as
        // llama.cpp rounds them (gpt-oss's own config says false).
        config["rope_scaling"] = json!({
            "rope_type": "yarn", "factor": y.factor, "beta_fast": y.beta_fast,
            "beta_slow": y.beta_slow, "original_max_position_embeddings": y.original_context,
            "truncate": y.truncate,
        });
    }
    if spec.ffn == FfnActivation::SwigluOai {
        config["swiglu_limit"] = json!(7.0);
        config["swiglu_alpha"] = json!(1.702);
        config["intermediate_size"] = json!(hp.n_ff_exp);
        config["num_local_experts"] = json!(hp.n_expert);
    }
    if spec.moe {
        config["num_experts"] = json!(hp.n_expert);
        config["num_experts_per_tok"] = json!(hp.n_expert_used);
        config["moe_intermediate_size"] = json!(hp.n_ff_exp);
        config["norm_topk_prob"] = json!(spec.moe_gating == MoeGating::SoftmaxNormalized);
        config["decoder_sparse_step"] = json!(1);
        config["mlp_only_layers"] = json!([]);
    }
}

/// config.json `rope_scaling` that reproduces GGUF's `rope_freqs` factors.
fn llama3_scaling_for(
    freqs: &[f32],
    head_dim: usize,
    theta: f32,
) -> anyhow::Result<serde_json::Value> {
    let factor = freqs.iter().copied().fold(1.0f32, f32::max);
    for original in [8192.0f32, 4096.0, 2048.0, 16384.0, 32768.0] {
        for (low, high) in [(1.0f32, 4.0f32), (1.0, 2.0), (1.0, 8.0), (2.0, 4.0)] {
            let s = verity_model::arch::Llama3RopeScaling {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_context: original,
            };
            let f = s.freq_factors(head_dim, theta);
            if f.iter()
                .zip(freqs)
                .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1.0))
            {
                return Ok(
                    json!({ "rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high, "original_max_position_embeddings": original as u32 }),
                );
            }
        }
    }
    bail!("this model's rope_freqs.weight matches no Llama 3 rope_scaling parameters; config.json cannot express it")
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llamacpp_permutation() {
        // llama.cpp: reshape(heads, 2, half, cols).swapaxes(1, 2): HF row j*half+i -> GGUF row 2i+j.
        let (heads, head_rows, cols) = (2, 4, 1);
        let hf: Vec<f32> = (0..heads * head_rows).map(|i| i as f32).collect();
        let mut gguf = vec![0f32; hf.len()];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..head_rows / 2 {
                    gguf[h * head_rows + 2 * i + j] = hf[h * head_rows + j * (head_rows / 2) + i];
                }
            }
        }
        assert_eq!(permute_rows(&gguf, cols, heads, head_rows, true), hf);
    }
}
