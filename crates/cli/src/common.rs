//! Flags shared by the commands that run a model, and loading it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use verity_engine::{GenerateParams, LoraSet, SamplingParams};
use verity_model::{Adapter, Model};
use verity_tokenizer::ChatMessage;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face model directory, a model name in the store
    /// (~/.cache/verity/models or $VERITY_MODELS), a Hub model (ORG/REPO[:QUANT], fetched
    /// on first use; see `verity pull`) or ollama:NAME[:TAG]. Default: SmolLM2-135M-Instruct,
    /// fetched on first use.
    #[arg(short, long)]
    pub model: Option<String>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long, default_value_t = 0)]
    pub ctx: usize,
    /// Worker threads (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// How the KV cache stores keys and values: f16 (llama.cpp's default and numerics)
    /// or f32 (twice the memory; attention without rounding, matching float references).
    #[arg(long, value_enum, default_value_t = CacheType::F16)]
    pub cache_type: CacheType,
}

/// `--cache-type`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    #[default]
    F16,
    F32,
}

impl CacheType {
    pub fn kv_type(self) -> verity_engine::KvType {
        match self {
            CacheType::F16 => verity_engine::KvType::F16,
            CacheType::F32 => verity_engine::KvType::F32,
        }
    }
}

#[derive(Args, Clone, Debug, Default)]
pub struct LoraArgs {
    /// Apply a LoRA adapter: a PEFT directory or a GGUF LoRA file, optionally with a
    /// strength that multiplies its alpha/r scale (PATH:SCALE, default 1). Repeatable.
    #[arg(long = "lora", value_name = "PATH[:SCALE]")]
    pub lora: Vec<String>,
}

impl LoraArgs {
    /// Load and bind every adapter to `model`; `None` when there are none.
    pub fn load(&self, model: &Model) -> anyhow::Result<Option<Arc<LoraSet>>> {
        if self.lora.is_empty() {
            return Ok(None);
        }
        let mut adapters = Vec::new();
        for spec in &self.lora {
            let (path, scale) = split_scale(spec)?;
            let adapter = Adapter::load(&path, model)?;
            adapters.push((Arc::new(adapter), scale));
        }
        Ok(Some(LoraSet::new(adapters)))
    }

    /// `(path, scale)` of each adapter, for reports.
    pub fn specs(&self) -> anyhow::Result<Vec<(PathBuf, f32)>> {
        self.lora.iter().map(|s| split_scale(s)).collect()
    }
}

/// `PATH[:SCALE]`: the part after the last colon is a scale only if it parses as one.
pub fn split_scale(spec: &str) -> anyhow::Result<(PathBuf, f32)> {
    if let Some((path, scale)) = spec.rsplit_once(':') {
        if let Ok(v) = scale.parse::<f32>() {
            anyhow::ensure!(
                v.is_finite(),
                "--lora {spec}: the scale must be a finite number"
            );
            return Ok((PathBuf::from(path), v));
        }
    }
    Ok((PathBuf::from(spec), 1.0))
}

#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(short = 'n', long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 always picks the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample from the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Sample from the smallest set of tokens whose probability reaches p.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalise recently generated tokens (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Penalise tokens already present (OpenAI's presence_penalty).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Penalise tokens by how often they appeared (OpenAI's frequency_penalty).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Random seed: the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> anyhow::Result<GenerateParams> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        };
        sampling.validate().map_err(anyhow::Error::msg)?;
        Ok(GenerateParams {
            max_tokens: self.max_tokens,
            sampling,
            stop: self.stop.clone(),
            ignore_eos: false,
        })
    }
}

/// Resolve (fetching if needed) and load a model; set up threads.
pub fn load_model(args: &ModelArgs) -> anyhow::Result<Arc<Model>> {
    verity_engine::init_threads(args.threads);
    let path: PathBuf = verity_store::resolve(args.model.as_deref())?;
    let model = verity_model::load(&path)?;
    Ok(Arc::new(model))
}

/// Tokens for a conversation through the model's chat template.
pub fn chat_prompt(model: &Model, messages: &[ChatMessage]) -> anyhow::Result<Vec<u32>> {
    let tok = &model.tokenizer;
    let template = tok
        .chat_template()
        .context("the model has no chat template; use --raw")?;
    let t = verity_tokenizer::ChatTemplate::new(
        template,
        tok.bos_token_str().unwrap_or(""),
        tok.eos_token_str().unwrap_or(""),
    )?;
    let text = t.render(messages, true)?;
    // Templates that write the BOS token themselves must not get a second one.
    let has_bos = tok
        .bos_token_str()
        .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    Ok(tok.encode(&text, !has_bos)?)
}
