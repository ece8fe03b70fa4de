//! The one place per architecture: hyperparameter keys and tensor names, for GGUF and
//! for Hugging Face checkpoints.

use serde_json::Value as Json;
use verity_formats::gguf::{Gguf, Value};

/// Architectures verity runs. Each has one [`ArchSpec`] in [`ARCHS`]: everything the
/// loader and the forward pass need to know about it. Mistral and SmolLM2 are `Llama`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
    Phi3,
    SmolLM3,
    Qwen3Moe,
    GptOss,
}

/// Where a block normalizes its sublayers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before attention and before the FFN (Llama).
    Pre,
    /// Before and after each (Gemma 2/3): the sublayer's output is normalized again
    /// before the residual add.
    PreAndPost,
}

/// The gated FFN's activation: `down(act(gate(x)) * up(x))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FfnActivation {
    /// SwiGLU.
    Silu,
    /// GeGLU with the tanh approximation of GELU.
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: `g = min(gate, 7)`, `u = clamp(up, -7, 7)`,
    /// `g · σ(1.702 g) · (u + 1)`.
    SwigluOai,
}

/// How a mixture-of-experts router turns its logits into the picked experts' weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoeGating {
    /// Softmax over every expert, the top k kept as they are.
    Softmax,
    /// Softmax over every expert, the top k renormalised to sum to 1 (Qwen3-MoE).
    SoftmaxNormalized,
    /// The top k logits picked first, softmax over those alone (gpt-oss).
    TopKSoftmax,
}

/// Which layers attend over a sliding window (when the file gives a window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowLayers {
    /// All layers attend to the whole context, whatever window the file gives.
    None,
    /// Every layer attends over the window (Mistral's `sliding_window`; see
    /// [`ArchSpec::hf_windowed_type`]).
    All,
    /// In every run of `n` layers, all but the last are windowed (Gemma 3: 5 local, 1
    /// global); the file may override `n` (`attention.sliding_window_pattern`).
    AllButLastOf(usize),
}

/// One architecture, described: names in both formats and the features the forward pass
/// composes. Adding an architecture adds an entry to [`ARCHS`]; only an operation the
/// engine does not have yet needs engine code.
#[derive(Debug)]
pub struct ArchSpec {
    pub arch: Arch,
    /// GGUF `general.architecture` values.
    pub gguf_names: &'static [&'static str],
    /// `config.json` `model_type` values; the first is written by `convert`.
    pub hf_model_types: &'static [&'static str],
    /// `config.json` `architectures[0]` written by `convert`.
    pub hf_class: &'static str,
    /// A `config.json` `model_type` whose `sliding_window` windows every layer, and its
    /// class, which `convert` writes for a model windowed so (Mistral's, of the Llama
    /// family). The architecture's other files have no window: transformers' Llama and
    /// llama.cpp's `llama` ignore one.
    pub hf_windowed_type: Option<(&'static str, &'static str)>,
    /// For error messages and `inspect`.
    pub description: &'static str,
    /// Biases on the q, k and v projections.
    pub qkv_bias: bool,
    /// RMSNorm over each query and key head.
    pub qk_norm: bool,
    pub norm: NormPlacement,
    /// Added to every norm weight read from a Hugging Face checkpoint: Gemma stores
    /// `w - 1` (its RMSNorm multiplies by `1 + w`); GGUF converters add the 1.
    pub hf_norm_offset: f32,
    pub ffn: FfnActivation,
    /// Token embeddings are multiplied by √n_embd (Gemma).
    pub embed_scale_sqrt_dim: bool,
    /// RoPE layout of the GGUF tensors (Hugging Face checkpoints are always NeoX).
    pub gguf_rope: RopeStyle,
    pub window_layers: WindowLayers,
    /// RoPE base of windowed layers when the file does not give one
    /// (`rope.freq_base_swa`); `None`: the same base as the other layers.
    pub window_rope_base: Option<f32>,
    /// Hugging Face name of the norm before the FFN (Llama calls it
    /// `post_attention_layernorm`; Gemma uses that name for the norm after attention).
    pub hf_ffn_norm: &'static str,
    /// q, k and v are one matrix in the file (rows q, then k, then v): Phi-3.
    pub fused_qkv: bool,
    /// gate and up are one matrix of `2 * n_ff` rows (gate first): Phi-3.
    pub fused_gate_up: bool,
    /// Layers that skip RoPE: every `n`-th (SmolLM3: 4, NoPE layers); 0: none.
    pub no_rope_every: usize,
    /// Every layer's FFN is a mixture of experts: a router picks `expert_used_count`
    /// of `expert_count` experts per token.
    pub moe: bool,
    /// How the router weighs the experts it picks.
    pub moe_gating: MoeGating,
    /// The router and every expert's gate, up and down products carry biases (gpt-oss).
    pub moe_biases: bool,
    /// A bias on attention's output projection (gpt-oss).
    pub attn_out_bias: bool,
    /// Attention sinks: one learned logit per head joins every softmax, taking
    /// probability from the keys without adding a value (gpt-oss).
    pub attn_sinks: bool,
    /// GGUF name of the norm before the FFN (`ffn_norm`; gpt-oss's converter calls it
    /// `post_attention_norm`).
    pub gguf_ffn_norm: &'static str,
    /// Windowed layers rotate with the global layers' RoPE scaling (gpt-oss's YaRN,
    /// Mistral's); otherwise they are unscaled (Gemma 3).
    pub window_rope_scaled: bool,
}

/// The defaults of the Llama-like entries; each entry says only where it differs.
const LLAMA_LIKE: ArchSpec = ArchSpec {
    arch: Arch::Llama,
    gguf_names: &["llama", "mistral"],
    hf_model_types: &["llama", "mistral"],
    hf_class: "LlamaForCausalLM",
    hf_windowed_type: None,
    description: "llama (Llama 2/3.x, Mistral, SmolLM2)",
    qkv_bias: false,
    qk_norm: false,
    norm: NormPlacement::Pre,
    hf_norm_offset: 0.0,
    ffn: FfnActivation::Silu,
    embed_scale_sqrt_dim: false,
    gguf_rope: RopeStyle::Interleaved,
    window_layers: WindowLayers::None,
    window_rope_base: None,
    hf_ffn_norm: "post_attention_layernorm",
    fused_qkv: false,
    fused_gate_up: false,
    no_rope_every: 0,
    moe: false,
    moe_gating: MoeGating::Softmax,
    moe_biases: false,
    attn_out_bias: false,
    attn_sinks: false,
    gguf_ffn_norm: "ffn_norm",
    window_rope_scaled: false,
};

/// The architecture table.
pub static ARCHS: &[ArchSpec] = &[
    ArchSpec {
        // Mistral's `sliding_window` applies to every layer, rotated as the rest.
        hf_windowed_type: Some(("mistral", "MistralForCausalLM")),
        window_rope_scaled: true,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::Qwen2,
        gguf_names: &["qwen2"],
        hf_model_types: &["qwen2"],
        hf_class: "Qwen2ForCausalLM",
        description: "qwen2 (Qwen2/2.5)",
        qkv_bias: true,
        gguf_rope: RopeStyle::NeoX,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::Qwen3,
        gguf_names: &["qwen3"],
        hf_model_types: &["qwen3"],
        hf_class: "Qwen3ForCausalLM",
        description: "qwen3",
        qk_norm: true,
        gguf_rope: RopeStyle::NeoX,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::Gemma3,
        gguf_names: &["gemma3"],
        hf_model_types: &["gemma3_text"],
        hf_class: "Gemma3ForCausalLM",
        description: "gemma3 (Gemma 3 text)",
        qk_norm: true,
        norm: NormPlacement::PreAndPost,
        hf_norm_offset: 1.0,
        ffn: FfnActivation::GeluTanh,
        embed_scale_sqrt_dim: true,
        gguf_rope: RopeStyle::NeoX,
        window_layers: WindowLayers::AllButLastOf(6),
        window_rope_base: Some(10000.0),
        hf_ffn_norm: "pre_feedforward_layernorm",
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::Phi3,
        gguf_names: &["phi3"],
        hf_model_types: &["phi3"],
        hf_class: "Phi3ForCausalLM",
        description: "phi3 (Phi-3, Phi-4-mini)",
        gguf_rope: RopeStyle::NeoX,
        // llama.cpp ignores Phi-3's `sliding_window` (its converters wrote it wrongly);
        // the reference's behaviour is what its files are made for.
        window_layers: WindowLayers::None,
        fused_qkv: true,
        fused_gate_up: true,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::SmolLM3,
        gguf_names: &["smollm3"],
        hf_model_types: &["smollm3"],
        hf_class: "SmolLM3ForCausalLM",
        description: "smollm3",
        no_rope_every: 4,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::Qwen3Moe,
        gguf_names: &["qwen3moe"],
        hf_model_types: &["qwen3_moe"],
        hf_class: "Qwen3MoeForCausalLM",
        description: "qwen3moe (Qwen3 mixture of experts)",
        qk_norm: true,
        gguf_rope: RopeStyle::NeoX,
        moe: true,
        moe_gating: MoeGating::SoftmaxNormalized,
        ..LLAMA_LIKE
    },
    ArchSpec {
        arch: Arch::GptOss,
        gguf_names: &["gpt-oss"],
        hf_model_types: &["gpt_oss"],
        hf_class: "GptOssForCausalLM",
        description: "gpt-oss (GGUF)",
        qkv_bias: true,
        ffn: FfnActivation::SwigluOai,
        gguf_rope: RopeStyle::NeoX,
        // Even layers attend over the window, odd ones over everything.
        window_layers: WindowLayers::AllButLastOf(2),
        moe: true,
        moe_gating: MoeGating::TopKSoftmax,
        moe_biases: true,
        attn_out_bias: true,
        attn_sinks: true,
        gguf_ffn_norm: "post_attention_norm",
        window_rope_scaled: true,
        ..LLAMA_LIKE
    },
];

impl Arch {
    /// This architecture's description.
    pub fn spec(self) -> &'static ArchSpec {
        ARCHS
            .iter()
            .find(|s| s.arch == self)
            .expect("every Arch has an entry in ARCHS")
    }

    /// From GGUF's `general.architecture`.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        ARCHS
            .iter()
            .find(|s| s.gguf_names.contains(&name))
            .map(|s| s.arch)
    }

    /// From `config.json`'s `model_type`.
    pub fn from_hf_model_type(name: &str) -> Option<Self> {
        ARCHS
            .iter()
            .find(|s| s.hf_model_types.contains(&name))
            .map(|s| s.arch)
    }

    /// Name in GGUF (`general.architecture`).
    pub fn gguf_name(self) -> &'static str {
        self.spec().gguf_names[0]
    }

    /// `model_type` and `architectures[0]` for config.json; `windowed`: some layer
    /// attends over a sliding window.
    pub fn hf_names(self, windowed: bool) -> (&'static str, &'static str) {
        let s = self.spec();
        match s.hf_windowed_type {
            Some(names) if windowed => names,
            _ => (s.hf_model_types[0], s.hf_class),
        }
    }

    pub fn has_qkv_bias(self) -> bool {
        self.spec().qkv_bias
    }

    pub fn has_qk_norm(self) -> bool {
        self.spec().qk_norm
    }

    /// Supported architectures, for error messages.
    pub fn supported() -> String {
        ARCHS
            .iter()
            .map(|s| s.description)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How RoPE pairs the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF `llama`, whose q/k rows the converter permuted.
    Interleaved,
    /// Halves (i, i + d/2): Hugging Face checkpoints and Qwen GGUFs.
    NeoX,
}

/// Llama 3's frequency-dependent RoPE scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_context: f32,
}

impl Llama3RopeScaling {
    /// Per-pair divisors of the rotation frequency, as GGUF's `rope_freqs.weight` stores them.
    pub fn freq_factors(&self, head_dim: usize, theta: f32) -> Vec<f32> {
        let low_wavelen = self.original_context / self.low_freq_factor;
        let high_wavelen = self.original_context / self.high_freq_factor;
        (0..head_dim / 2)
            .map(|i| {
                let freq = 1.0 / theta.powf(2.0 * i as f32 / head_dim as f32);
                let wavelen = 2.0 * std::f32::consts::PI / freq;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_context / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                }
            })
            .collect()
    }
}

/// YaRN's RoPE scaling (`rope.scaling.type = yarn`), as llama.cpp applies it: positions
/// interpolated by `1 / factor` in the low-frequency dimensions, extrapolated in the high
/// ones with a linear ramp between, and cos and sin scaled by `1 + 0.1 ln(factor)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f32,
    /// The context the model was trained at before scaling.
    pub original_context: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// The ramp's ends rounded out to whole pairs (llama.cpp always; transformers unless
    /// the config says `truncate: false`, as gpt-oss's does).
    pub truncate: bool,
}

impl Yarn {
    /// The ramp's first and last pair index for `n_rot` rotated dimensions and base
    /// `theta` (ggml's `ggml_rope_yarn_corr_dims`).
    pub fn correction_dims(&self, n_rot: usize, theta: f32) -> (f32, f32) {
        let dim = |beta: f32| {
            n_rot as f32 * (self.original_context as f32 / (beta * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * theta.ln())
        };
        let (start, end) = (dim(self.beta_fast), dim(self.beta_slow));
        let (start, end) = if self.truncate {
            (start.floor(), end.ceil())
        } else {
            (start, end)
        };
        (start.max(0.0), end.min(n_rot as f32 - 1.0))
    }
}

/// Hyperparameters of a model, whatever file it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_vocab: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    pub rope_theta: f32,
    /// Multiplies positions (linear RoPE scaling); 1.0 when unscaled.
    pub rope_freq_scale: f32,
    pub rope_style: RopeStyle,
    /// Llama 3 scaling given as parameters (HF); GGUF stores the factors as a tensor instead.
    pub llama3_rope: Option<Llama3RopeScaling>,
    /// LongRoPE's (short, long) factors given in `config.json`; GGUF stores them as tensors.
    pub longrope: Option<(Vec<f32>, Vec<f32>)>,
    pub rms_eps: f32,
    /// Output projection shares the token embedding.
    pub tied_embeddings: bool,
    /// Sliding-window length of the windowed layers (0: none is windowed).
    pub window: usize,
    /// Per layer: whether it attends over the window only.
    pub windowed: Vec<bool>,
    /// RoPE base of the windowed layers.
    pub rope_theta_window: f32,
    /// Per layer: whether it skips RoPE (SmolLM3's NoPE layers).
    pub no_rope: Vec<bool>,
    /// Multiplies RoPE's cos and sin (`rope.scaling.attn_factor`: LongRoPE models).
    pub rope_attn_factor: f32,
    /// Dimensions of each head that RoPE rotates (the first ones; Phi-4-mini: 3/4).
    pub n_rot: usize,
    /// LongRoPE: contexts longer than this use the long factors
    /// (`rope.scaling.original_context_length`).
    pub n_ctx_orig: usize,
    /// Experts per MoE layer (0: dense).
    pub n_expert: usize,
    /// Experts each token uses.
    pub n_expert_used: usize,
    /// Feed-forward length of one expert.
    pub n_ff_exp: usize,
    /// YaRN scaling, when the model has it (its `rope_freq_scale` is then `1 / factor`).
    pub yarn: Option<Yarn>,
}

/// LongRoPE's attention factor: as given, or as transformers derives it from how far the
/// context was stretched (`sqrt(1 + ln(s) / ln(original))`).
fn longrope_attn_factor(given: Option<f64>, max_pos: Option<usize>, orig: Option<usize>) -> f32 {
    if let Some(f) = given {
        return f as f32;
    }
    match (max_pos, orig) {
        (Some(m), Some(o)) if m > o && o > 1 => {
            let s = m as f64 / o as f64;
            (1.0 + s.ln() / (o as f64).ln()).sqrt() as f32
        }
        _ => 1.0,
    }
}

/// Which of `n_layer` layers skip RoPE.
fn no_rope_layers(spec: &ArchSpec, n_layer: usize) -> Vec<bool> {
    let n = spec.no_rope_every;
    (0..n_layer).map(|l| n > 0 && (l + 1) % n == 0).collect()
}

/// Which of `n_layer` layers are windowed (none when there is no window).
fn window_layers(kind: WindowLayers, n_layer: usize, window: usize) -> Result<Vec<bool>, String> {
    Ok(match kind {
        _ if window == 0 => vec![false; n_layer],
        WindowLayers::None => vec![false; n_layer],
        WindowLayers::All | WindowLayers::AllButLastOf(0) => vec![true; n_layer],
        WindowLayers::AllButLastOf(n) => (0..n_layer).map(|l| l % n < n - 1).collect(),
    })
}

/// A metadata value for an error message: its type, and its value when that is short.
fn describe(v: &Value) -> String {
    match v {
        Value::Str(_) => "a string".into(),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Bool(b) => format!("bool {b}"),
        Value::F32(x) => format!("f32 {x}"),
        Value::F64(x) => format!("f64 {x}"),
        _ => format!("{} {}", v.type_name(), v.as_i64().unwrap_or(i64::MAX)),
    }
}

/// Largest sizes we accept from a file, so a hostile header cannot make us allocate wildly.
const MAX_LAYERS: usize = 1024;
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 22;
const MAX_EXPERTS: usize = 512;

/// The layer count, checked before anything is allocated per layer.
fn layer_count(n: usize) -> Result<usize, String> {
    if n == 0 || n > MAX_LAYERS {
        return Err(format!(
            "layer count = {n} is out of range (1..={MAX_LAYERS})"
        ));
    }
    Ok(n)
}

impl HParams {
    /// Read from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &Gguf) -> Result<Self, String> {
        let arch_name = g
            .architecture()
            .ok_or("no general.architecture in metadata")?;
        let arch = Arch::from_gguf_name(arch_name).ok_or_else(|| {
            format!(
                "unsupported architecture '{arch_name}' (supported: {})",
                Arch::supported()
            )
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        // A count: absent is `None`; present, it must be a non-negative integer.
        let count = |k: &str| -> Result<Option<usize>, String> {
            let Some(v) = g.get(&key(k)) else {
                return Ok(None);
            };
            let n = v
                .as_u64()
                .ok_or_else(|| format!("metadata {} is {}, not a count", key(k), describe(v)))?;
            usize::try_from(n)
                .map(Some)
                .map_err(|_| format!("{} = {n} is too large", key(k)))
        };
        let missing = |k: &str| format!("missing metadata {}", key(k));
        let req = |k: &str| -> Result<usize, String> { count(k)?.ok_or_else(|| missing(k)) };
        let n_layer = layer_count(req("block_count")?)?;
        // Counts llama.cpp also reads as per-layer arrays: verity needs one value for all.
        let per_layer = |k: &str| -> Result<Option<usize>, String> {
            let Some(a) = g.get_array(&key(k)) else {
                return count(k);
            };
            if a.len() != n_layer {
                return Err(format!(
                    "{} has {} entries for {n_layer} layers",
                    key(k),
                    a.len()
                ));
            }
            match a.first().and_then(Value::as_u64) {
                Some(n) if a.iter().all(|v| v.as_u64() == Some(n)) => Ok(Some(n as usize)),
                Some(_) => Err(format!(
                    "{} differs between layers; verity needs one value for every layer",
                    key(k)
                )),
                None => Err(format!("{} is not a list of counts", key(k))),
            }
        };
        let n_embd = req("embedding_length")?;
        let n_head =
            per_layer("attention.head_count")?.ok_or_else(|| missing("attention.head_count"))?;
        let n_head_kv = per_layer("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = match count("attention.key_length")? {
            Some(v) => v,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        if count("attention.value_length")?.is_some_and(|v| v != head_dim) {
            return Err(format!(
                "{} differs from the key length {head_dim}; verity needs them equal",
                key("attention.value_length")
            ));
        }
        let token_embd_rows = g
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied());
        let n_vocab = match count("vocab_size")? {
            Some(v) => v,
            None => token_embd_rows.ok_or("no vocab_size and no token_embd.weight")?,
        };
        let scaling_type = g.get_str(&key("rope.scaling.type"));
        let scaling_factor = g.get_f64(&key("rope.scaling.factor"));
        let rope_freq_scale = match scaling_type {
            // A factor that is not a positive number fails `validate`.
            Some("linear") | Some("yarn") => 1.0 / scaling_factor.unwrap_or(1.0) as f32,
            Some("none") | None => 1.0,
            // Llama 3 scaling arrives as the rope_freqs tensor, LongRoPE's as two.
            Some(_) => 1.0,
        };
        let n_ctx_train = count("context_length")?.unwrap_or(4096);
        let yarn = match (scaling_type, scaling_factor) {
            (Some("yarn"), Some(f)) if f > 1.0 => Some(Yarn {
                factor: f as f32,
                original_context: count("rope.scaling.original_context_length")?
                    .unwrap_or(n_ctx_train),
                beta_fast: g
                    .get_f64(&key("rope.scaling.yarn_beta_fast"))
                    .unwrap_or(32.0) as f32,
                beta_slow: g
                    .get_f64(&key("rope.scaling.yarn_beta_slow"))
                    .unwrap_or(1.0) as f32,
                truncate: true,
            }),
            _ => None,
        };
        let spec = arch.spec();
        let window = count("attention.sliding_window")?.unwrap_or(0);
        let pattern_key = key("attention.sliding_window_pattern");
        let windowed = match g.get(&pattern_key) {
            None => window_layers(spec.window_layers, n_layer, window)?,
            Some(Value::Array(a)) if a.len() == n_layer => {
                let mut v = Vec::with_capacity(n_layer);
                for (i, x) in a.iter().enumerate() {
                    v.push(x.as_bool().ok_or_else(|| {
                        format!("entry {i} of {pattern_key} is {}, not a bool", describe(x))
                    })?);
                }
                v
            }
            Some(Value::Array(a)) => {
                return Err(format!(
                    "{pattern_key} has {} entries for {n_layer} layers",
                    a.len()
                ))
            }
            Some(v) => match v.as_u64() {
                Some(n) => window_layers(
                    WindowLayers::AllButLastOf(usize::try_from(n).unwrap_or(usize::MAX)),
                    n_layer,
                    window,
                )?,
                None => {
                    return Err(format!(
                        "{pattern_key} is {}, not a layer count or one bool per layer",
                        describe(v)
                    ))
                }
            },
        };
        let rope_theta = g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32;
        let hp = HParams {
            arch,
            n_layer,
            n_embd,
            n_ff: per_layer("feed_forward_length")?
                .ok_or_else(|| missing("feed_forward_length"))?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train,
            rope_theta,
            rope_freq_scale,
            rope_style: spec.gguf_rope,
            llama3_rope: None,
            longrope: None,
            rms_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            tied_embeddings: g.tensor("output.weight").is_none(),
            window,
            windowed,
            rope_theta_window: g
                .get_f64(&key("rope.freq_base_swa"))
                .map(|v| v as f32)
                .or(spec.window_rope_base)
                .unwrap_or(rope_theta),
            no_rope: no_rope_layers(spec, n_layer),
            rope_attn_factor: g.get_f64(&key("rope.scaling.attn_factor")).unwrap_or(1.0) as f32,
            n_rot: count("rope.dimension_count")?.unwrap_or(head_dim),
            n_ctx_orig: count("rope.scaling.original_context_length")?.unwrap_or(usize::MAX),
            n_expert: if spec.moe { req("expert_count")? } else { 0 },
            n_expert_used: if spec.moe {
                per_layer("expert_used_count")?.ok_or_else(|| missing("expert_used_count"))?
            } else {
                0
            },
            n_ff_exp: if spec.moe {
                per_layer("expert_feed_forward_length")?
                    .ok_or_else(|| missing("expert_feed_forward_length"))?
            } else {
                0
            },
            yarn,
        };
        hp.validate()?;
        Ok(hp)
    }

    /// Read from a Hugging Face `config.json`.
    pub fn from_hf_config(c: &Json) -> Result<Self, String> {
        let model_type = c
            .get("model_type")
            .and_then(Json::as_str)
            .ok_or("config.json has no model_type")?;
        let arch = Arch::from_hf_model_type(model_type).ok_or_else(|| {
            format!(
                "unsupported model_type '{model_type}' (supported: {})",
                Arch::supported()
            )
        })?;

        let int = |k: &str| c.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let req = |k: &str| int(k).ok_or_else(|| format!("config.json: missing integer '{k}'"));
        let float = |k: &str| c.get(k).and_then(Json::as_f64);
        let n_embd = req("hidden_size")?;
        let n_head = req("num_attention_heads")?;
        let head_dim = int("head_dim").unwrap_or(n_embd.checked_div(n_head).unwrap_or(0));
        // transformers 5 writes `rope_parameters` (with `rope_theta` inside); older
        // configs, `rope_scaling`.
        let rope_block = c
            .get("rope_scaling")
            .filter(|r| !r.is_null())
            .or_else(|| c.get("rope_parameters").filter(|r| !r.is_null()));
        let rope_kind = rope_block.and_then(|r| {
            r.get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Json::as_str)
        });
        let yarn = match (rope_kind, rope_block) {
            (Some("yarn"), Some(r)) => {
                let num = |k: &str, d: f64| r.get(k).and_then(Json::as_f64).unwrap_or(d);
                Some(Yarn {
                    factor: num("factor", 1.0) as f32,
                    original_context: r
                        .get("original_max_position_embeddings")
                        .and_then(Json::as_u64)
                        .unwrap_or(4096) as usize,
                    beta_fast: num("beta_fast", 32.0) as f32,
                    beta_slow: num("beta_slow", 1.0) as f32,
                    truncate: r.get("truncate").and_then(Json::as_bool).unwrap_or(true),
                })
                .filter(|y| y.factor > 1.0)
            }
            _ => None,
        };
        let factors = |k: &str| -> Option<Vec<f32>> {
            let a = c.get("rope_scaling")?.get(k)?.as_array()?;
            a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect()
        };
        let is_longrope = c.get("rope_scaling").is_some_and(|r| {
            r.get("rope_type")
                .or_else(|| r.get("type"))
                .and_then(Json::as_str)
                == Some("longrope")
        });
        let longrope = if is_longrope {
            match (factors("short_factor"), factors("long_factor")) {
                (Some(s), Some(l)) => Some((s, l)),
                _ => {
                    return Err(
                        "config.json: rope_scaling longrope needs numeric short_factor and long_factor lists".into(),
                    )
                }
            }
        } else {
            None
        };
        let llama3_rope = c
            .get("rope_scaling")
            .filter(|r| !r.is_null())
            .and_then(|r| {
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Json::as_str)?;
                (kind == "llama3").then(|| Llama3RopeScaling {
                    factor: r.get("factor").and_then(Json::as_f64).unwrap_or(8.0) as f32,
                    low_freq_factor: r
                        .get("low_freq_factor")
                        .and_then(Json::as_f64)
                        .unwrap_or(1.0) as f32,
                    high_freq_factor: r
                        .get("high_freq_factor")
                        .and_then(Json::as_f64)
                        .unwrap_or(4.0) as f32,
                    original_context: r
                        .get("original_max_position_embeddings")
                        .and_then(Json::as_f64)
                        .unwrap_or(8192.0) as f32,
                })
            });
        let rope_freq_scale = c
            .get("rope_scaling")
            .filter(|r| {
                r.get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(Json::as_str)
                    == Some("linear")
            })
            .and_then(|r| r.get("factor").and_then(Json::as_f64))
            .map(|f| 1.0 / f.max(1e-6) as f32)
            .or(yarn.map(|y| 1.0 / y.factor))
            .unwrap_or(1.0);
        let spec = arch.spec();
        let n_layer = layer_count(req("num_hidden_layers")?)?;
        let window = int("sliding_window").unwrap_or(0);
        let windowed = match (
            c.get("layer_types").and_then(Json::as_array),
            int("sliding_window_pattern"),
        ) {
            (Some(types), _) if types.len() == n_layer => types
                .iter()
                .map(|t| t.as_str() == Some("sliding_attention"))
                .collect(),
            (Some(types), _) => {
                return Err(format!(
                    "config.json: layer_types has {} entries for {n_layer} layers",
                    types.len()
                ))
            }
            (None, Some(n)) => window_layers(WindowLayers::AllButLastOf(n), n_layer, window)?,
            (None, None) if spec.hf_windowed_type.is_some_and(|(t, _)| t == model_type) => {
                window_layers(WindowLayers::All, n_layer, window)?
            }
            (None, None) => window_layers(spec.window_layers, n_layer, window)?,
        };
        let windowed = if window == 0 {
            vec![false; n_layer]
        } else {
            windowed
        };
        let rope_theta = float("rope_theta")
            .or_else(|| c.get("rope_parameters")?.get("rope_theta")?.as_f64())
            .unwrap_or(10000.0) as f32;
        let hp = HParams {
            arch,
            n_layer,
            n_embd,
            n_ff: req("intermediate_size")?,
            n_head,
            n_head_kv: int("num_key_value_heads").unwrap_or(n_head),
            head_dim,
            n_vocab: req("vocab_size")?,
            n_ctx_train: int("max_position_embeddings").unwrap_or(4096),
            rope_theta,
            rope_freq_scale,
            rope_style: RopeStyle::NeoX,
            llama3_rope,
            longrope: longrope.clone(),
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
            tied_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(arch == Arch::Gemma3),
            window,
            windowed,
            rope_theta_window: float("rope_local_base_freq")
                .map(|v| v as f32)
                .or(spec.window_rope_base)
                .unwrap_or(rope_theta),
            no_rope: match c.get("no_rope_layers").and_then(Json::as_array) {
                // SmolLM3: 1 = the layer uses RoPE.
                Some(v) if v.len() == n_layer => v.iter().map(|x| x.as_u64() == Some(0)).collect(),
                Some(v) => {
                    return Err(format!(
                        "config.json: no_rope_layers has {} entries for {n_layer} layers",
                        v.len()
                    ))
                }
                None => no_rope_layers(spec, n_layer),
            },
            rope_attn_factor: match (&longrope, c.get("original_max_position_embeddings")) {
                (None, _) => 1.0,
                (Some(_), orig) => longrope_attn_factor(
                    c["rope_scaling"]
                        .get("attention_factor")
                        .and_then(Json::as_f64),
                    int("max_position_embeddings"),
                    orig.and_then(Json::as_u64).map(|v| v as usize),
                ),
            },
            n_ctx_orig: c
                .get("original_max_position_embeddings")
                .and_then(Json::as_u64)
                .map_or(usize::MAX, |v| v as usize),
            n_rot: float("partial_rotary_factor")
                .map_or(head_dim, |f| (f * head_dim as f64) as usize),
            n_expert: if spec.moe {
                int("num_experts")
                    .or(int("num_local_experts"))
                    .ok_or("config.json: missing integer 'num_experts'")?
            } else {
                0
            },
            n_expert_used: if spec.moe {
                req("num_experts_per_tok")?
            } else {
                0
            },
            // gpt-oss calls its experts' FFN length `intermediate_size`.
            n_ff_exp: if spec.moe {
                int("moe_intermediate_size")
                    .or(int("intermediate_size"))
                    .ok_or("config.json: missing integer 'moe_intermediate_size'")?
            } else {
                0
            },
            yarn,
        };
        hp.validate()?;
        Ok(hp)
    }

    fn validate(&self) -> Result<(), String> {
        let check = |name: &str, v: usize, max: usize| {
            if v == 0 || v > max {
                Err(format!("{name} = {v} is out of range (1..={max})"))
            } else {
                Ok(())
            }
        };
        check("layer count", self.n_layer, MAX_LAYERS)?;
        if self.n_ctx_train == 0 {
            return Err("context length is 0".into());
        }
        check("embedding length", self.n_embd, MAX_DIM)?;
        check("feed-forward length", self.n_ff, MAX_DIM)?;
        if self.arch.spec().moe {
            check("expert count", self.n_expert, MAX_EXPERTS)?;
            if self.n_expert_used == 0 || self.n_expert_used > self.n_expert {
                return Err(format!(
                    "experts used per token = {} is out of range (1..={}, the expert count)",
                    self.n_expert_used, self.n_expert
                ));
            }
            check("expert feed-forward length", self.n_ff_exp, MAX_DIM)?;
        }
        check("head count", self.n_head, MAX_DIM)?;
        check("KV head count", self.n_head_kv, MAX_DIM)?;
        // RoPE keeps one head's angles on the stack.
        check("head dimension", self.head_dim, 512)?;
        check("vocabulary size", self.n_vocab, MAX_VOCAB)?;
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(format!(
                "{} heads cannot be grouped over {} KV heads",
                self.n_head, self.n_head_kv
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head dimension {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        let valid = self.rope_theta.is_finite()
            && self.rope_theta > 0.0
            && self.rms_eps.is_finite()
            && self.rms_eps >= 0.0;
        if !valid {
            return Err("rope theta or RMS epsilon is not a positive number".into());
        }
        // Only windowed layers use the window (Phi-3 files carry one llama.cpp ignores).
        if self.windowed.iter().any(|&w| w) && self.window > self.n_ctx_train {
            return Err(format!(
                "sliding window {} is larger than the context ({})",
                self.window, self.n_ctx_train
            ));
        }
        if self.n_rot == 0 || self.n_rot > self.head_dim || !self.n_rot.is_multiple_of(2) {
            return Err(format!(
                "RoPE dimension count {} must be even, positive and at most the head dimension {}",
                self.n_rot, self.head_dim
            ));
        }
        if !(self.rope_attn_factor.is_finite() && self.rope_attn_factor > 0.0) {
            return Err(format!(
                "rope.scaling.attn_factor = {} is not a positive number",
                self.rope_attn_factor
            ));
        }
        if !(self.rope_freq_scale.is_finite() && self.rope_freq_scale > 0.0) {
            return Err("rope.scaling.factor is not a positive number".into());
        }
        if let Some(y) = &self.yarn {
            let ok = y.factor.is_finite()
                && y.original_context > 0
                && y.beta_fast.is_finite()
                && y.beta_slow.is_finite()
                && y.beta_fast > 0.0
                && y.beta_slow > 0.0;
            if !ok {
                return Err(
                    "YaRN scaling needs a finite factor, an original context and positive betas"
                        .into(),
                );
            }
        }
        if !(self.rope_theta_window.is_finite() && self.rope_theta_window > 0.0) {
            return Err("the windowed layers' rope theta is not a positive number".into());
        }
        Ok(())
    }

    /// The window layer `l` attends over, if it is windowed.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        (self.window > 0 && self.windowed.get(l).copied().unwrap_or(false)).then_some(self.window)
    }

    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// The weights of one kind a transformer block holds, with both naming schemes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    AttnNorm,
    Q,
    K,
    V,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    Output,
    FfnNorm,
    Gate,
    Up,
    Down,
    /// After attention, before the residual add ([`NormPlacement::PreAndPost`]).
    PostAttnNorm,
    /// After the FFN, before the residual add.
    PostFfnNorm,
    /// q, k and v in one matrix ([`ArchSpec::fused_qkv`]); split into Q, K, V at load.
    Qkv,
    /// gate and up in one matrix ([`ArchSpec::fused_gate_up`]); split at load.
    GateUp,
    /// One sink logit per query head ([`ArchSpec::attn_sinks`]).
    AttnSinks,
    /// Attention output projection's bias ([`ArchSpec::attn_out_bias`]).
    OutputBias,
}

impl LayerTensor {
    pub fn gguf_name(self, layer: usize) -> String {
        let n = match self {
            Self::AttnNorm => "attn_norm.weight",
            Self::Q => "attn_q.weight",
            Self::K => "attn_k.weight",
            Self::V => "attn_v.weight",
            Self::QBias => "attn_q.bias",
            Self::KBias => "attn_k.bias",
            Self::VBias => "attn_v.bias",
            Self::QNorm => "attn_q_norm.weight",
            Self::KNorm => "attn_k_norm.weight",
            Self::Output => "attn_output.weight",
            Self::FfnNorm => "ffn_norm.weight",
            Self::Gate => "ffn_gate.weight",
            Self::Up => "ffn_up.weight",
            Self::Down => "ffn_down.weight",
            Self::PostAttnNorm => "post_attention_norm.weight",
            Self::PostFfnNorm => "post_ffw_norm.weight",
            Self::Qkv => "attn_qkv.weight",
            Self::GateUp => "ffn_up.weight",
            Self::AttnSinks => "attn_sinks.weight",
            Self::OutputBias => "attn_output.bias",
        };
        format!("blk.{layer}.{n}")
    }

    /// The GGUF name in `arch`'s files (the FFN's norm is named per architecture).
    pub fn gguf_name_in(self, arch: Arch, layer: usize) -> String {
        match self {
            Self::FfnNorm => format!("blk.{layer}.{}.weight", arch.spec().gguf_ffn_norm),
            _ => self.gguf_name(layer),
        }
    }

    pub fn hf_name(self, layer: usize) -> String {
        let n = match self {
            Self::AttnNorm => "input_layernorm.weight",
            Self::Q => "self_attn.q_proj.weight",
            Self::K => "self_attn.k_proj.weight",
            Self::V => "self_attn.v_proj.weight",
            Self::QBias => "self_attn.q_proj.bias",
            Self::KBias => "self_attn.k_proj.bias",
            Self::VBias => "self_attn.v_proj.bias",
            Self::QNorm => "self_attn.q_norm.weight",
            Self::KNorm => "self_attn.k_norm.weight",
            Self::Output => "self_attn.o_proj.weight",
            Self::FfnNorm => "post_attention_layernorm.weight",
            Self::Gate => "mlp.gate_proj.weight",
            Self::Up => "mlp.up_proj.weight",
            Self::Down => "mlp.down_proj.weight",
            Self::PostAttnNorm => "post_attention_layernorm.weight",
            Self::PostFfnNorm => "post_feedforward_layernorm.weight",
            Self::Qkv => "self_attn.qkv_proj.weight",
            Self::GateUp => "mlp.gate_up_proj.weight",
            Self::AttnSinks => "self_attn.sinks",
            Self::OutputBias => "self_attn.o_proj.bias",
        };
        format!("model.layers.{layer}.{n}")
    }

    /// The Hugging Face name in `arch`'s checkpoints (the FFN's norm is named per
    /// architecture).
    pub fn hf_name_in(self, arch: Arch, layer: usize) -> String {
        match self {
            Self::FfnNorm => format!("model.layers.{layer}.{}.weight", arch.spec().hf_ffn_norm),
            _ => self.hf_name(layer),
        }
    }

    /// A norm's weight (Gemma checkpoints store these as `w - 1`).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Self::AttnNorm
                | Self::FfnNorm
                | Self::QNorm
                | Self::KNorm
                | Self::PostAttnNorm
                | Self::PostFfnNorm
        )
    }

    /// Expected (rows, cols); vectors are (1, n).
    pub fn shape(self, hp: &HParams) -> (usize, usize) {
        match self {
            Self::AttnNorm | Self::FfnNorm | Self::PostAttnNorm | Self::PostFfnNorm => {
                (1, hp.n_embd)
            }
            Self::Q => (hp.q_dim(), hp.n_embd),
            Self::K | Self::V => (hp.kv_dim(), hp.n_embd),
            Self::QBias => (1, hp.q_dim()),
            Self::KBias | Self::VBias => (1, hp.kv_dim()),
            Self::QNorm | Self::KNorm => (1, hp.head_dim),
            Self::Output => (hp.n_embd, hp.q_dim()),
            Self::Gate | Self::Up => (hp.n_ff, hp.n_embd),
            Self::Qkv => (hp.q_dim() + 2 * hp.kv_dim(), hp.n_embd),
            Self::GateUp => (2 * hp.n_ff, hp.n_embd),
            Self::Down => (hp.n_embd, hp.n_ff),
            Self::AttnSinks => (1, hp.n_head),
            Self::OutputBias => (1, hp.n_embd),
        }
    }

    /// Whether `arch` has this tensor.
    pub fn present_in(self, arch: Arch) -> bool {
        match self {
            Self::QBias | Self::KBias | Self::VBias => arch.has_qkv_bias(),
            Self::QNorm | Self::KNorm => arch.has_qk_norm(),
            Self::PostAttnNorm | Self::PostFfnNorm => arch.spec().norm == NormPlacement::PreAndPost,
            Self::Qkv => arch.spec().fused_qkv,
            Self::Q | Self::K | Self::V => !arch.spec().fused_qkv,
            // A mixture-of-experts layer has no dense FFN (its experts are not LayerTensors).
            Self::GateUp => arch.spec().fused_gate_up && !arch.spec().moe,
            Self::Gate | Self::Up => !arch.spec().fused_gate_up && !arch.spec().moe,
            Self::Down => !arch.spec().moe,
            Self::AttnSinks => arch.spec().attn_sinks,
            Self::OutputBias => arch.spec().attn_out_bias,
            _ => true,
        }
    }

    pub const ALL: [LayerTensor; 20] = [
        Self::AttnNorm,
        Self::Q,
        Self::K,
        Self::V,
        Self::QBias,
        Self::KBias,
        Self::VBias,
        Self::QNorm,
        Self::KNorm,
        Self::Output,
        Self::FfnNorm,
        Self::Gate,
        Self::Up,
        Self::Down,
        Self::PostAttnNorm,
        Self::PostFfnNorm,
        Self::Qkv,
        Self::GateUp,
        Self::AttnSinks,
        Self::OutputBias,
    ];
}

/// Model-level tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalTensor {
    TokenEmbedding,
    OutputNorm,
    Output,
    RopeFreqs,
    /// LongRoPE's per-pair divisors for contexts up to the original length (Phi-3).
    RopeFactorsShort,
    /// LongRoPE's divisors for longer contexts.
    RopeFactorsLong,
}

impl GlobalTensor {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::TokenEmbedding => "token_embd.weight",
            Self::OutputNorm => "output_norm.weight",
            Self::Output => "output.weight",
            Self::RopeFreqs => "rope_freqs.weight",
            Self::RopeFactorsShort => "rope_factors_short.weight",
            Self::RopeFactorsLong => "rope_factors_long.weight",
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::TokenEmbedding => "model.embed_tokens.weight",
            Self::OutputNorm => "model.norm.weight",
            Self::Output => "lm_head.weight",
            Self::RopeFreqs | Self::RopeFactorsShort | Self::RopeFactorsLong => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_span_one_to_factor() {
        let s = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        let f = s.freq_factors(128, 500000.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }
}
