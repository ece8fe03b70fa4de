//! The one place per architecture: hyperparameter keys and tensor names, for GGUF and
//! for Hugging Face checkpoints.

use serde_json::Value as Json;
use verity_formats::gguf::Gguf;

/// Architectures verity runs. Mistral and SmolLM2 are `Llama` (same graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2 / 3.x, Mistral, SmolLM2 and other `LlamaForCausalLM` models.
    Llama,
    /// Qwen2 / Qwen2.5: biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: per-head RMSNorm on queries and keys.
    Qwen3,
}

impl Arch {
    /// From GGUF's `general.architecture`.
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    /// From `config.json`'s `model_type`.
    pub fn from_hf_model_type(name: &str) -> Option<Self> {
        match name {
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            "qwen3" => Some(Arch::Qwen3),
            _ => None,
        }
    }

    /// Name in GGUF (`general.architecture`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// `model_type` and `architectures[0]` for config.json.
    pub fn hf_names(self) -> (&'static str, &'static str) {
        match self {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        }
    }

    pub fn has_qkv_bias(self) -> bool {
        self == Arch::Qwen2
    }

    pub fn has_qk_norm(self) -> bool {
        self == Arch::Qwen3
    }

    /// Supported names, for error messages.
    pub const SUPPORTED: &'static str =
        "llama (Llama 2/3.x, Mistral, SmolLM2), qwen2 (Qwen2/2.5), qwen3";
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
    pub rms_eps: f32,
    /// Output projection shares the token embedding.
    pub tied_embeddings: bool,
}

/// Largest sizes we accept from a file, so a hostile header cannot make us allocate wildly.
const MAX_LAYERS: usize = 1024;
const MAX_DIM: usize = 1 << 20;
const MAX_VOCAB: usize = 1 << 22;

impl HParams {
    /// Read from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(g: &Gguf) -> Result<Self, String> {
        let arch_name = g
            .architecture()
            .ok_or("no general.architecture in metadata")?;
        let arch = Arch::from_gguf_name(arch_name).ok_or_else(|| {
            format!(
                "unsupported architecture '{arch_name}' (supported: {})",
                Arch::SUPPORTED
            )
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let req = |k: &str| -> Result<usize, String> {
            let v = g
                .get_u64(&key(k))
                .ok_or_else(|| format!("missing or non-integer metadata {}", key(k)))?;
            usize::try_from(v).map_err(|_| format!("{} = {v} is too large", key(k)))
        };
        let n_embd = req("embedding_length")?;
        let n_head = req("attention.head_count")?;
        let n_head_kv = g
            .get_u64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let head_dim = match g.get_u64(&key("attention.key_length")) {
            Some(v) => v as usize,
            None if n_head > 0 => n_embd / n_head,
            None => 0,
        };
        let token_embd_rows = g
            .tensor("token_embd.weight")
            .and_then(|t| t.shape.get(1).copied());
        let n_vocab = match g.get_u64(&key("vocab_size")) {
            Some(v) => v as usize,
            None => token_embd_rows.ok_or("no vocab_size and no token_embd.weight")?,
        };
        let rope_freq_scale = match g.get_str(&key("rope.scaling.type")) {
            Some("linear") => {
                1.0 / g
                    .get_f64(&key("rope.scaling.factor"))
                    .unwrap_or(1.0)
                    .max(1e-6) as f32
            }
            Some("none") | None => 1.0,
            // Llama 3 scaling arrives as the rope_freqs tensor; YaRN at these lengths is off by default.
            Some(_) => 1.0,
        };
        let hp = HParams {
            arch,
            n_layer: req("block_count")?,
            n_embd,
            n_ff: req("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            n_vocab,
            n_ctx_train: g.get_u64(&key("context_length")).unwrap_or(4096) as usize,
            rope_theta: g.get_f64(&key("rope.freq_base")).unwrap_or(10000.0) as f32,
            rope_freq_scale,
            rope_style: if arch == Arch::Llama {
                RopeStyle::Interleaved
            } else {
                RopeStyle::NeoX
            },
            llama3_rope: None,
            rms_eps: g
                .get_f64(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f32,
            tied_embeddings: g.tensor("output.weight").is_none(),
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
                Arch::SUPPORTED
            )
        })?;
        let int = |k: &str| c.get(k).and_then(Json::as_u64).map(|v| v as usize);
        let req = |k: &str| int(k).ok_or_else(|| format!("config.json: missing integer '{k}'"));
        let float = |k: &str| c.get(k).and_then(Json::as_f64);
        let n_embd = req("hidden_size")?;
        let n_head = req("num_attention_heads")?;
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
            .unwrap_or(1.0);
        let hp = HParams {
            arch,
            n_layer: req("num_hidden_layers")?,
            n_embd,
            n_ff: req("intermediate_size")?,
            n_head,
            n_head_kv: int("num_key_value_heads").unwrap_or(n_head),
            head_dim: int("head_dim").unwrap_or(n_embd.checked_div(n_head).unwrap_or(0)),
            n_vocab: req("vocab_size")?,
            n_ctx_train: int("max_position_embeddings").unwrap_or(4096),
            rope_theta: float("rope_theta").unwrap_or(10000.0) as f32,
            rope_freq_scale,
            rope_style: RopeStyle::NeoX,
            llama3_rope,
            rms_eps: float("rms_norm_eps").unwrap_or(1e-6) as f32,
            tied_embeddings: c
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
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
        check("embedding length", self.n_embd, MAX_DIM)?;
        check("feed-forward length", self.n_ff, MAX_DIM)?;
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
        Ok(())
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
        };
        format!("blk.{layer}.{n}")
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
        };
        format!("model.layers.{layer}.{n}")
    }

    /// Expected (rows, cols); vectors are (1, n).
    pub fn shape(self, hp: &HParams) -> (usize, usize) {
        match self {
            Self::AttnNorm | Self::FfnNorm => (1, hp.n_embd),
            Self::Q => (hp.q_dim(), hp.n_embd),
            Self::K | Self::V => (hp.kv_dim(), hp.n_embd),
            Self::QBias => (1, hp.q_dim()),
            Self::KBias | Self::VBias => (1, hp.kv_dim()),
            Self::QNorm | Self::KNorm => (1, hp.head_dim),
            Self::Output => (hp.n_embd, hp.q_dim()),
            Self::Gate | Self::Up => (hp.n_ff, hp.n_embd),
            Self::Down => (hp.n_embd, hp.n_ff),
        }
    }

    /// Whether `arch` has this tensor.
    pub fn present_in(self, arch: Arch) -> bool {
        match self {
            Self::QBias | Self::KBias | Self::VBias => arch.has_qkv_bias(),
            Self::QNorm | Self::KNorm => arch.has_qk_norm(),
            _ => true,
        }
    }

    pub const ALL: [LayerTensor; 14] = [
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
    ];
}

/// Model-level tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalTensor {
    TokenEmbedding,
    OutputNorm,
    Output,
    RopeFreqs,
}

impl GlobalTensor {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Self::TokenEmbedding => "token_embd.weight",
            Self::OutputNorm => "output_norm.weight",
            Self::Output => "output.weight",
            Self::RopeFreqs => "rope_freqs.weight",
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            Self::TokenEmbedding => "model.embed_tokens.weight",
            Self::OutputNorm => "model.norm.weight",
            Self::Output => "lm_head.weight",
            Self::RopeFreqs => "",
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
