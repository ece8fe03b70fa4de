use std::path::{Path, PathBuf};
use std::sync::Arc;

use verity_formats::gguf::Gguf;
use verity_formats::hf::HfDir;
use verity_formats::{FormatError, Residency, TensorType};
use verity_tokenizer::Tokenizer;

use crate::arch::{GlobalTensor, HParams, LayerTensor};
use crate::split::{self, GgufParts};
use crate::Tensor;

/// Why a model could not be loaded. Displays as one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct LoadError {
    pub path: PathBuf,
    pub kind: LoadErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadErrorKind {
    #[error("{0}")]
    Format(#[from] FormatError),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] verity_tokenizer::TokenizerError),
    #[error("{0}")]
    Invalid(String),
}

/// Which kind of file a model came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Gguf,
    HfSafetensors,
}

/// A mixture-of-experts FFN: the router, and each expert's gate, up and down matrices
/// (views into the file's 3-D tensors, one expert after another).
pub struct Moe {
    /// `[n_expert][n_embd]`: one logit per expert.
    pub router: Tensor,
    pub gate: Vec<Tensor>,
    pub up: Vec<Tensor>,
    pub down: Vec<Tensor>,
    /// The biases of [`ArchSpec::moe_biases`](crate::arch::ArchSpec::moe_biases): the
    /// router's (`[n_expert]`) and each expert's, expert after expert.
    pub biases: Option<MoeBiases>,
}

/// A mixture-of-experts layer's biases (gpt-oss).
pub struct MoeBiases {
    /// `[n_expert]`, added to the router's logits.
    pub router: Vec<f32>,
    /// `[n_expert][n_ff_exp]`.
    pub gate: Vec<f32>,
    /// `[n_expert][n_ff_exp]`.
    pub up: Vec<f32>,
    /// `[n_expert][n_embd]`.
    pub down: Vec<f32>,
}

/// One transformer block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Tensor,
    pub wk: Tensor,
    pub wv: Tensor,
    pub wo: Tensor,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Bias of the attention output projection (gpt-oss).
    pub bo: Option<Vec<f32>>,
    /// Per query head, the sink logit that joins its softmax (gpt-oss).
    pub sinks: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Normalizes attention's output before the residual add (Gemma).
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    /// Normalizes the FFN's output before the residual add (Gemma).
    pub post_ffn_norm: Option<Vec<f32>>,
    /// The dense FFN (empty, zero rows, in a mixture-of-experts layer).
    pub w_gate: Tensor,
    pub w_up: Tensor,
    pub w_down: Tensor,
    /// The experts, in a mixture-of-experts layer.
    pub moe: Option<Moe>,
}

pub struct Weights {
    pub token_embd: Tensor,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// `None` when tied to `token_embd`.
    pub output: Option<Tensor>,
    /// Per-pair RoPE frequency divisors (Llama 3 scaling, or LongRoPE's short factors),
    /// length n_rot / 2.
    pub rope_freqs: Option<Vec<f32>>,
    /// LongRoPE's factors for contexts beyond `HParams::n_ctx_orig`.
    pub rope_freqs_long: Option<Vec<f32>>,
}

impl Weights {
    /// The RoPE frequency divisors for a context of `n_ctx` positions (llama.cpp's rule:
    /// LongRoPE's long factors only beyond the original context).
    pub fn rope_freqs_for(&self, hp: &HParams, n_ctx: usize) -> Option<&[f32]> {
        match &self.rope_freqs_long {
            Some(long) if n_ctx > hp.n_ctx_orig => Some(long),
            _ => self.rope_freqs.as_deref(),
        }
    }
}

impl Weights {
    /// The output projection (the embedding when tied).
    pub fn output(&self) -> &Tensor {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// A loaded model: hyperparameters, weights (memory-mapped) and tokenizer.
pub struct Model {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub hparams: HParams,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// The parsed GGUF, when the model is one (metadata for inspect and convert); the first
    /// part of a split model.
    pub gguf: Option<Arc<Gguf>>,
    /// The parsed directory, when the model is one.
    pub hf: Option<Arc<HfDir>>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.path)
            .field("hparams", &self.hparams)
            .finish()
    }
}

impl Model {
    /// A short name for display: the file or directory name.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }

    /// Total bytes of weights.
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let mut n = w.token_embd.bytes().len() + w.output.as_ref().map_or(0, |t| t.bytes().len());
        for l in &w.layers {
            for t in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                n += t.bytes().len();
            }
            if let Some(m) = &l.moe {
                n += m.router.bytes().len();
                for t in m.gate.iter().chain(&m.up).chain(&m.down) {
                    n += t.bytes().len();
                }
            }
        }
        n
    }
}

/// Load a GGUF file (any part of a split one) or a Hugging Face directory (or a `.safetensors`
/// file inside one), to compute with: its weights are read into memory on huge pages when
/// they fit ([`Residency::Compute`]).
pub fn load(path: &Path) -> Result<Model, LoadError> {
    load_with(path, Residency::Compute)
}

/// [`load`], the files' bytes held as `residency` asks: [`Residency::Mapped`] to check
/// that a model loads without reading all of it.
pub fn load_with(path: &Path, residency: Residency) -> Result<Model, LoadError> {
    let err = |kind: LoadErrorKind| LoadError {
        path: path.to_path_buf(),
        kind,
    };
    if !path.exists() {
        return Err(err(LoadErrorKind::Invalid(
            "no such file or directory".into(),
        )));
    }
    verity_formats::refuse_pickle(path).map_err(|e| err(e.into()))?;
    if path.is_dir() {
        return load_hf(path, residency).map_err(err);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        let dir = path.parent().unwrap_or(Path::new("."));
        return load_hf(dir, residency).map_err(|kind| LoadError {
            path: dir.to_path_buf(),
            kind,
        });
    }
    load_gguf(path, residency).map_err(err)
}

/// A tensor as found in a file: type, shape in ggml order (row length first), bytes.
type Found<'a> = Option<(TensorType, Vec<usize>, &'a [u8])>;

/// Abstracts over where tensors come from.
trait Source {
    fn find(&self, name: &str) -> Result<Found<'_>, LoadErrorKind>;
    /// A tensor of raw bytes (safetensors `U8`), shape outermost first; GGUF has none.
    fn find_bytes(&self, _name: &str) -> Option<(Vec<usize>, &[u8])> {
        None
    }
    fn owner(&self) -> Arc<dyn Send + Sync>;
}

impl Source for Arc<GgufParts> {
    fn find(&self, name: &str) -> Result<Found<'_>, LoadErrorKind> {
        let Some((part, info)) = self.tensor(name) else {
            return Ok(None);
        };
        let ty = info.supported_type()?;
        if matches!(ty, TensorType::Q8_1 | TensorType::Q8_K) {
            return Err(FormatError::UnsupportedTensorType {
                name: name.into(),
                ty: ty.to_string(),
            }
            .into());
        }
        Ok(Some((ty, info.shape.clone(), part.tensor_data(info)?)))
    }
    fn owner(&self) -> Arc<dyn Send + Sync> {
        self.clone()
    }
}

impl Source for Arc<HfDir> {
    fn find(&self, name: &str) -> Result<Found<'_>, LoadErrorKind> {
        let Some(info) = self.tensor(name) else {
            return Ok(None);
        };
        let shape: Vec<usize> = info.shape.iter().rev().copied().collect();
        Ok(Some((info.ty, shape, self.tensor_data(info))))
    }
    fn find_bytes(&self, name: &str) -> Option<(Vec<usize>, &[u8])> {
        self.byte_tensor(name)
            .map(|(info, bytes)| (info.shape.clone(), bytes))
    }
    fn owner(&self) -> Arc<dyn Send + Sync> {
        self.clone()
    }
}

/// Open a GGUF file; for a part of a split model (`PREFIX-00002-of-00003.gguf`), every
/// part from its directory, in order: the first holds the metadata and tokenizer.
pub fn open_gguf_parts(path: &Path) -> Result<Vec<Arc<Gguf>>, LoadError> {
    split::open(path, Residency::Mapped)
        .map(|p| p.0)
        .map_err(|kind| LoadError {
            path: path.to_path_buf(),
            kind,
        })
}

fn load_gguf(path: &Path, residency: Residency) -> Result<Model, LoadErrorKind> {
    let parts = Arc::new(split::open(path, residency)?);
    let gguf = parts.0[0].clone();
    let hparams = HParams::from_gguf(&gguf).map_err(LoadErrorKind::Invalid)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    let weights = load_weights(
        &parts,
        &hparams,
        |t| t.gguf_name(),
        |t, l| t.gguf_name_in(hparams.arch, l),
        0.0,
    )?;
    check_vocab(&hparams, &tokenizer)?;
    Ok(Model {
        path: path.to_path_buf(),
        format: ModelFormat::Gguf,
        hparams,
        weights,
        tokenizer,
        gguf: Some(gguf),
        hf: None,
    })
}

fn load_hf(dir: &Path, residency: Residency) -> Result<Model, LoadErrorKind> {
    let hf = Arc::new(HfDir::open_with(dir, residency)?);
    let hparams = HParams::from_hf_config(&hf.config).map_err(LoadErrorKind::Invalid)?;
    let tokenizer = Tokenizer::from_hf_dir(&hf)?;
    let arch = hparams.arch;
    let mut weights = load_weights(
        &hf,
        &hparams,
        |t| t.hf_name(),
        |t, l| t.hf_name_in(arch, l),
        arch.spec().hf_norm_offset,
    )?;
    if let Some(s) = hparams.llama3_rope {
        weights.rope_freqs = Some(s.freq_factors(hparams.head_dim, hparams.rope_theta));
    }
    if let Some((short, long)) = &hparams.longrope {
        for f in [short, long] {
            if f.len() != hparams.n_rot / 2 || f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(LoadErrorKind::Invalid(format!(
                    "config.json: rope_scaling factors must be {} positive numbers",
                    hparams.n_rot / 2
                )));
            }
        }
        weights.rope_freqs = Some(short.clone());
        weights.rope_freqs_long = Some(long.clone());
    }
    check_vocab(&hparams, &tokenizer)?;
    Ok(Model {
        path: dir.to_path_buf(),
        format: ModelFormat::HfSafetensors,
        hparams,
        weights,
        tokenizer,
        gguf: None,
        hf: Some(hf),
    })
}

fn check_vocab(hp: &HParams, tok: &Tokenizer) -> Result<(), LoadErrorKind> {
    // Embedding tables are often padded beyond the tokenizer's vocabulary; the reverse is an error.
    if tok.vocab_size() > hp.n_vocab {
        return Err(LoadErrorKind::Invalid(format!(
            "tokenizer has {} tokens but the embedding has only {} rows",
            tok.vocab_size(),
            hp.n_vocab
        )));
    }
    Ok(())
}

fn load_weights<S: Source>(
    src: &S,
    hp: &HParams,
    global_name: impl Fn(GlobalTensor) -> &'static str,
    layer_name: impl Fn(LayerTensor, usize) -> String,
    norm_offset: f32,
) -> Result<Weights, LoadErrorKind> {
    let norm = |mut w: Vec<f32>| {
        if norm_offset != 0.0 {
            w.iter_mut().for_each(|x| *x += norm_offset);
        }
        w
    };
    let matrix = |name: &str, rows: usize, cols: usize| -> Result<Option<Tensor>, LoadErrorKind> {
        let Some((ty, shape, bytes)) = src.find(name)? else {
            return Ok(None);
        };
        let (c, r) = (shape[0], shape.get(1).copied().unwrap_or(1));
        if c != cols || r != rows || shape.iter().skip(2).any(|&d| d != 1) {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' has shape {shape:?}, expected [{cols}, {rows}] from the hyperparameters"
            )));
        }
        Ok(Some(Tensor::mapped(ty, rows, cols, bytes, src.owner())))
    };
    let required = |name: &str, rows: usize, cols: usize| -> Result<Tensor, LoadErrorKind> {
        matrix(name, rows, cols)?
            .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{name}'")))
    };

    let token_embd = required(
        global_name(GlobalTensor::TokenEmbedding),
        hp.n_vocab,
        hp.n_embd,
    )?;
    let output_norm = norm(required(global_name(GlobalTensor::OutputNorm), 1, hp.n_embd)?.to_f32());
    let output = if hp.tied_embeddings {
        None
    } else {
        matrix(global_name(GlobalTensor::Output), hp.n_vocab, hp.n_embd)?
    };
    // Each divides a pair's rotation frequency: a positive number.
    let factors = |name: &str| -> Result<Option<Vec<f32>>, LoadErrorKind> {
        let Some(f) = matrix(name, 1, hp.n_rot / 2)?.map(|t| t.to_f32()) else {
            return Ok(None);
        };
        if f.iter().any(|x| !(x.is_finite() && *x > 0.0)) {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' holds a RoPE factor that is not a positive number"
            )));
        }
        Ok(Some(f))
    };
    // Llama 3's factors, or LongRoPE's for contexts up to the original length (verity's
    // contexts are: see ARCHITECTURE.md).
    let mut rope_freqs = None;
    for t in [GlobalTensor::RopeFreqs, GlobalTensor::RopeFactorsShort] {
        let name = global_name(t);
        if rope_freqs.is_none() && !name.is_empty() {
            rope_freqs = factors(name)?;
        }
    }
    let long_name = global_name(GlobalTensor::RopeFactorsLong);
    let rope_freqs_long = if long_name.is_empty() {
        None
    } else {
        factors(long_name)?
    };
    let spec = hp.arch.spec();

    let norm_if = |t: LayerTensor, w: Vec<f32>| if t.is_norm() { norm(w) } else { w };
    let mut layers = Vec::with_capacity(hp.n_layer);
    for l in 0..hp.n_layer {
        let get = |t: LayerTensor| -> Result<Tensor, LoadErrorKind> {
            let (r, c) = t.shape(hp);
            required(&layer_name(t, l), r, c)
        };
        let opt_vec = |t: LayerTensor| -> Result<Option<Vec<f32>>, LoadErrorKind> {
            if t.present_in(hp.arch) {
                Ok(Some(norm_if(t, get(t)?.to_f32())))
            } else {
                Ok(None)
            }
        };
        let (wq, wk, wv) = if spec.fused_qkv {
            let mut p = get(LayerTensor::Qkv)?
                .split_rows(&[hp.q_dim(), hp.kv_dim(), hp.kv_dim()])
                .into_iter();
            let mut next = || p.next().expect("three parts");
            (next(), next(), next())
        } else {
            (
                get(LayerTensor::Q)?,
                get(LayerTensor::K)?,
                get(LayerTensor::V)?,
            )
        };
        let moe = if spec.moe {
            Some(load_moe(src, hp, l, &layer_name)?)
        } else {
            None
        };
        let empty = || Tensor::owned(verity_formats::TensorType::F32, 0, hp.n_embd, Vec::new());
        let (w_gate, w_up) = if spec.moe {
            (empty(), empty())
        } else if spec.fused_gate_up {
            let mut p = get(LayerTensor::GateUp)?
                .split_rows(&[hp.n_ff, hp.n_ff])
                .into_iter();
            let gate = p.next().expect("two parts");
            (gate, p.next().expect("two parts"))
        } else {
            (get(LayerTensor::Gate)?, get(LayerTensor::Up)?)
        };
        layers.push(Layer {
            attn_norm: norm(get(LayerTensor::AttnNorm)?.to_f32()),
            wq,
            wk,
            wv,
            wo: get(LayerTensor::Output)?,
            bq: opt_vec(LayerTensor::QBias)?,
            bk: opt_vec(LayerTensor::KBias)?,
            bv: opt_vec(LayerTensor::VBias)?,
            bo: opt_vec(LayerTensor::OutputBias)?,
            sinks: opt_vec(LayerTensor::AttnSinks)?,
            q_norm: opt_vec(LayerTensor::QNorm)?,
            k_norm: opt_vec(LayerTensor::KNorm)?,
            post_attn_norm: opt_vec(LayerTensor::PostAttnNorm)?,
            ffn_norm: norm(get(LayerTensor::FfnNorm)?.to_f32()),
            post_ffn_norm: opt_vec(LayerTensor::PostFfnNorm)?,
            w_gate,
            w_up,
            w_down: if spec.moe {
                empty()
            } else {
                get(LayerTensor::Down)?
            },
            moe,
        });
    }
    Ok(Weights {
        token_embd,
        layers,
        output_norm,
        output,
        rope_freqs,
        rope_freqs_long,
    })
}

/// A layer's experts from GGUF's 3-D tensors (`ffn_{gate,up,down}_exps.weight`, ggml shape
/// `[cols, rows, n_expert]`) and its router (`ffn_gate_inp.weight`).
fn load_moe<S: Source>(
    src: &S,
    hp: &HParams,
    l: usize,
    layer_name: &impl Fn(LayerTensor, usize) -> String,
) -> Result<Moe, LoadErrorKind> {
    let prefix = layer_name(LayerTensor::AttnNorm, l);
    let (e, d, f) = (hp.n_expert, hp.n_embd, hp.n_ff_exp);
    let Some(blk) = prefix.strip_suffix("attn_norm.weight") else {
        if hp.arch.spec().moe_biases {
            return load_hf_gpt_oss_moe(src, hp, l);
        }
        // A Hugging Face checkpoint: one tensor per expert, the router as `mlp.gate`.
        let p = format!("model.layers.{l}.mlp");
        let matrix = |name: String, rows: usize, cols: usize| -> Result<Tensor, LoadErrorKind> {
            let (ty, shape, bytes) = src
                .find(&name)?
                .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{name}'")))?;
            if shape != [cols, rows] {
                return Err(LoadErrorKind::Invalid(format!(
                    "tensor '{name}' has shape {shape:?}, expected [{cols}, {rows}] ({e} experts)"
                )));
            }
            Ok(Tensor::mapped(ty, rows, cols, bytes, src.owner()))
        };
        let experts = |what: &str, rows: usize, cols: usize| {
            (0..e)
                .map(|x| matrix(format!("{p}.experts.{x}.{what}.weight"), rows, cols))
                .collect::<Result<Vec<_>, _>>()
        };
        return Ok(Moe {
            router: matrix(format!("{p}.gate.weight"), e, d)?,
            gate: experts("gate_proj", f, d)?,
            up: experts("up_proj", f, d)?,
            down: experts("down_proj", d, f)?,
            biases: None,
        });
    };
    let experts = |what: &str, rows: usize, cols: usize| -> Result<Vec<Tensor>, LoadErrorKind> {
        let name = format!("{blk}ffn_{what}_exps.weight");
        let (ty, shape, bytes) = src
            .find(&name)?
            .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{name}'")))?;
        if shape.len() != 3 || shape[0] != cols || shape[1] != rows || shape[2] != e {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' has shape {shape:?}, expected [{cols}, {rows}, {e}] from the hyperparameters ({e} experts)"
            )));
        }
        Ok(Tensor::mapped(ty, rows * e, cols, bytes, src.owner()).split_rows(&vec![rows; e]))
    };
    let router_name = format!("{blk}ffn_gate_inp.weight");
    let (ty, shape, bytes) = src
        .find(&router_name)?
        .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{router_name}'")))?;
    if shape.len() != 2 || shape[0] != d || shape[1] != e {
        return Err(LoadErrorKind::Invalid(format!(
            "tensor '{router_name}' has shape {shape:?}, expected [{d}, {e}] ({e} experts)"
        )));
    }
    // gpt-oss: ggml shapes [n_expert] and [rows, n_expert].
    let bias = |name: String, rows: usize| -> Result<Vec<f32>, LoadErrorKind> {
        let (ty, shape, bytes) = src
            .find(&name)?
            .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{name}'")))?;
        let want = if rows == 1 { vec![e] } else { vec![rows, e] };
        if shape != want {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' has shape {shape:?}, expected {want:?} from the hyperparameters ({e} experts)"
            )));
        }
        let (r, c) = if rows == 1 { (1, e) } else { (e, rows) };
        Ok(Tensor::mapped(ty, r, c, bytes, src.owner()).to_f32())
    };
    let biases = if hp.arch.spec().moe_biases {
        Some(MoeBiases {
            router: bias(format!("{blk}ffn_gate_inp.bias"), 1)?,
            gate: bias(format!("{blk}ffn_gate_exps.bias"), f)?,
            up: bias(format!("{blk}ffn_up_exps.bias"), f)?,
            down: bias(format!("{blk}ffn_down_exps.bias"), d)?,
        })
    } else {
        None
    };
    Ok(Moe {
        router: Tensor::mapped(ty, e, d, bytes, src.owner()),
        gate: experts("gate", f, d)?,
        up: experts("up", f, d)?,
        down: experts("down", d, f)?,
        biases,
    })
}

/// A gpt-oss layer's experts from its Hugging Face checkpoint, where transformers'
/// `GptOssExperts` multiplies them from the left: `gate_up_proj` `[experts, hidden, 2 ff]`
/// with gate and up in alternate columns, `down_proj` `[experts, ff, hidden]`. They are
/// copied once into verity's rows (the one place weights are copied at load); the router
/// (`mlp.router`, with its bias) is mapped as it is. OpenAI's own release ships the
/// experts in transformers' `mxfp4` quantization instead (see [`hf_mxfp4_experts`]).
fn load_hf_gpt_oss_moe<S: Source>(src: &S, hp: &HParams, l: usize) -> Result<Moe, LoadErrorKind> {
    let (e, d, f) = (hp.n_expert, hp.n_embd, hp.n_ff_exp);
    let p = format!("model.layers.{l}.mlp");
    let find = |name: &str, want: &[usize]| -> Result<(TensorType, &[u8]), LoadErrorKind> {
        let (ty, shape, bytes) = src
            .find(name)?
            .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{name}'")))?;
        // `shape` is in ggml order (fastest first).
        let want_rev: Vec<usize> = want.iter().rev().copied().collect();
        if shape != want_rev {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' has shape {:?}, expected {want:?} ({e} experts)",
                shape.iter().rev().collect::<Vec<_>>()
            )));
        }
        if ty.block_size() != 1 {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{name}' is {ty}; gpt-oss experts are read in F32, F16 or BF16"
            )));
        }
        Ok((ty, bytes))
    };
    let vector = |name: &str, want: &[usize]| -> Result<Vec<f32>, LoadErrorKind> {
        let (ty, bytes) = find(name, want)?;
        let n: usize = want.iter().product();
        Ok(Tensor::owned(ty, 1, n, bytes.to_vec()).to_f32())
    };
    let gate_up_name = format!("{p}.experts.gate_up_proj");
    let (gate, up, down) = if src.find(&gate_up_name)?.is_none()
        && src.find_bytes(&format!("{gate_up_name}_blocks")).is_some()
    {
        let (gate, up) = hf_mxfp4_experts(src, &gate_up_name, e, 2 * f, d, true)?;
        let (down, _) = hf_mxfp4_experts(src, &format!("{p}.experts.down_proj"), e, d, f, false)?;
        (gate, up, down)
    } else {
        hf_float_experts(&find, &p, e, d, f)?
    };
    let gate_up_bias = vector(&format!("{p}.experts.gate_up_proj_bias"), &[e, 2 * f])?;
    let router_name = format!("{p}.router.weight");
    let (rty, rshape, rbytes) = src
        .find(&router_name)?
        .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{router_name}'")))?;
    if rshape != [d, e] {
        return Err(LoadErrorKind::Invalid(format!(
            "tensor '{router_name}' has shape {:?}, expected [{e}, {d}] ({e} experts)",
            rshape.iter().rev().collect::<Vec<_>>()
        )));
    }
    Ok(Moe {
        router: Tensor::mapped(rty, e, d, rbytes, src.owner()),
        gate,
        up,
        down,
        biases: Some(MoeBiases {
            router: vector(&format!("{p}.router.bias"), &[e])?,
            gate: gate_up_bias.iter().step_by(2).copied().collect(),
            up: gate_up_bias.iter().skip(1).step_by(2).copied().collect(),
            down: vector(&format!("{p}.experts.down_proj_bias"), &[e, d])?,
        }),
    })
}

/// Gate, up and down matrices, one per expert.
type Experts = (Vec<Tensor>, Vec<Tensor>, Vec<Tensor>);
/// Look a float tensor up by name and expected shape (outermost first).
type FindFloat<'f, 'a> =
    &'f dyn Fn(&str, &[usize]) -> Result<(TensorType, &'a [u8]), LoadErrorKind>;

/// The experts as transformers holds them in float types, copied into verity's rows.
fn hf_float_experts<'a>(
    find: FindFloat<'_, 'a>,
    p: &str,
    e: usize,
    d: usize,
    f: usize,
) -> Result<Experts, LoadErrorKind> {
    let (ty, gate_up) = find(&format!("{p}.experts.gate_up_proj"), &[e, d, 2 * f])?;
    let (dty, down) = find(&format!("{p}.experts.down_proj"), &[e, f, d])?;
    // Element (i, j) of expert x's [rows][cols] source, copied to (j, i) of its output.
    let transpose = |ty: TensorType,
                     src: &[u8],
                     rows: usize,
                     cols: usize,
                     pick: &dyn Fn(usize) -> Option<usize>,
                     out_rows: usize| {
        let es = ty.row_bytes(1).expect("a float type");
        (0..e)
            .map(|x| {
                let m = &src[x * rows * cols * es..(x + 1) * rows * cols * es];
                let mut out = vec![0u8; out_rows * rows * es];
                for c in 0..cols {
                    let Some(r_out) = pick(c) else { continue };
                    for r in 0..rows {
                        let (from, to) = ((r * cols + c) * es, (r_out * rows + r) * es);
                        out[to..to + es].copy_from_slice(&m[from..from + es]);
                    }
                }
                Tensor::owned(ty, out_rows, rows, out)
            })
            .collect::<Vec<_>>()
    };
    let gate = transpose(ty, gate_up, d, 2 * f, &|c| (c % 2 == 0).then_some(c / 2), f);
    let up = transpose(ty, gate_up, d, 2 * f, &|c| (c % 2 == 1).then_some(c / 2), f);
    let down = transpose(dty, down, f, d, &|c| Some(c), d);
    Ok((gate, up, down))
}

/// Experts in transformers' `mxfp4` quantization (OpenAI's gpt-oss release): `NAME_blocks`
/// `[experts, rows, cols / 32, 16]` (two FP4 codes a byte, element `2i` in the low nibble)
/// and `NAME_scales` `[experts, rows, cols / 32]` (E8M0 exponents), rows being the product's
/// outputs, repacked into GGUF `MXFP4` rows without loss (`verity_formats::mxfp4`).
/// `split`: rows alternate between two matrices (gate and up), returned as the pair; else
/// all rows form the first.
fn hf_mxfp4_experts<S: Source>(
    src: &S,
    name: &str,
    e: usize,
    rows: usize,
    cols: usize,
    split: bool,
) -> Result<(Vec<Tensor>, Vec<Tensor>), LoadErrorKind> {
    let nb = cols / 32;
    let get = |suffix: &str, want: &[usize]| -> Result<&[u8], LoadErrorKind> {
        let full = format!("{name}_{suffix}");
        let (shape, bytes) = src
            .find_bytes(&full)
            .ok_or_else(|| LoadErrorKind::Invalid(format!("missing tensor '{full}'")))?;
        if shape != want || !cols.is_multiple_of(32) {
            return Err(LoadErrorKind::Invalid(format!(
                "tensor '{full}' has shape {shape:?}, expected {want:?} ({e} experts of {rows} x {cols} in MXFP4 blocks of 32)"
            )));
        }
        Ok(bytes)
    };
    let blocks = get("blocks", &[e, rows, nb, 16])?;
    let scales = get("scales", &[e, rows, nb])?;
    let row_bytes = TensorType::MXFP4.row_bytes(cols).expect("a multiple of 32");
    let out_rows = if split { rows / 2 } else { rows };
    let mut first = Vec::with_capacity(e);
    let mut second = Vec::with_capacity(e);
    for x in 0..e {
        let mut mats = [
            vec![0u8; out_rows * row_bytes],
            vec![0u8; if split { out_rows * row_bytes } else { 0 }],
        ];
        for r in 0..rows {
            let (m, r_out) = if split { (r % 2, r / 2) } else { (0, r) };
            let out = &mut mats[m][r_out * row_bytes..(r_out + 1) * row_bytes];
            let at = (x * rows + r) * nb;
            out.copy_from_slice(&verity_formats::mxfp4::gguf_rows(
                &blocks[at * 16..(at + nb) * 16],
                &scales[at..at + nb],
            ));
        }
        let [a, b] = mats;
        first.push(Tensor::owned(TensorType::MXFP4, out_rows, cols, a));
        if split {
            second.push(Tensor::owned(TensorType::MXFP4, out_rows, cols, b));
        }
    }
    Ok((first, second))
}
