//! LoRA adapters: low-rank updates `ΔW = scale · B·A` to a base model's projections,
//! read from PEFT directories (`adapter_config.json` + `adapter_model.safetensors`) or
//! llama.cpp's GGUF LoRA files, checked against a base and bound to it for the engine.
//!
//! Two stages: [`AdapterFile`] is what a file says (f32 matrices per layer and projection,
//! the scale PEFT or llama.cpp would apply, q/k rows in the file's order); [`Adapter`] is
//! that file bound to one base model (every shape checked, q/k rows in the base's RoPE
//! layout), which is what the forward pass reads. Adapter weights never change a base
//! weight: the engine adds `scale · B·(A·x)` next to `W·x`.

mod gguf;
mod peft;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use verity_formats::TensorType;

use crate::arch::{Arch, HParams, LayerTensor};
use crate::{Model, RopeStyle, Tensor};

pub use gguf::{gguf_tensor_name, write_gguf};
pub use peft::{write_peft, PeftConfig};

/// The projections an adapter can target, in the order the engine indexes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The base weight this projection updates.
    pub fn layer_tensor(self) -> LayerTensor {
        match self {
            Proj::Q => LayerTensor::Q,
            Proj::K => LayerTensor::K,
            Proj::V => LayerTensor::V,
            Proj::O => LayerTensor::Output,
            Proj::Gate => LayerTensor::Gate,
            Proj::Up => LayerTensor::Up,
            Proj::Down => LayerTensor::Down,
        }
    }

    /// PEFT's module name inside a decoder layer (`self_attn.q_proj`).
    pub fn hf_module(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The last part of the module name (`q_proj`), what `target_modules` lists.
    pub fn short_name(self) -> &'static str {
        self.hf_module().rsplit('.').next().unwrap_or("")
    }

    /// llama.cpp's tensor base name (`attn_q`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    pub fn from_short_name(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.short_name() == name)
    }

    pub fn from_gguf_name(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.gguf_name() == name)
    }
}

/// A fused module: one LoRA pair over the stacked rows of several projections (Phi-3's
/// `qkv_proj` and `gate_up_proj`). Files store it whole; binding splits it into its
/// projections (one shared A, B cut by rows), and writers for a fused base join them again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fused {
    Qkv,
    GateUp,
}

impl Fused {
    pub const ALL: [Fused; 2] = [Fused::Qkv, Fused::GateUp];

    /// The projections whose rows it stacks, in order.
    pub fn parts(self) -> &'static [Proj] {
        match self {
            Fused::Qkv => &[Proj::Q, Proj::K, Proj::V],
            Fused::GateUp => &[Proj::Gate, Proj::Up],
        }
    }

    /// The fused module a projection belongs to in `arch`, if `arch` fuses it.
    pub fn of(proj: Proj, arch: Arch) -> Option<Fused> {
        Fused::ALL
            .into_iter()
            .find(|f| f.parts().contains(&proj) && f.used_by(arch))
    }

    /// Whether `arch` stores these projections as one matrix.
    pub fn used_by(self, arch: Arch) -> bool {
        match self {
            Fused::Qkv => arch.spec().fused_qkv,
            Fused::GateUp => arch.spec().fused_gate_up,
        }
    }

    /// PEFT's module name inside a decoder layer.
    pub fn hf_module(self) -> &'static str {
        match self {
            Fused::Qkv => "self_attn.qkv_proj",
            Fused::GateUp => "mlp.gate_up_proj",
        }
    }

    pub fn short_name(self) -> &'static str {
        self.hf_module().rsplit('.').next().unwrap_or("")
    }

    /// llama.cpp's tensor base name (its Phi-3 keeps gate and up in `ffn_up`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Fused::Qkv => "attn_qkv",
            Fused::GateUp => "ffn_up",
        }
    }

    /// The fused module `arch`'s GGUF files call `module` (`ffn_up` is fused only in
    /// architectures that fuse gate and up).
    pub fn from_gguf_name(module: &str, arch: Arch) -> Option<Fused> {
        Fused::ALL
            .into_iter()
            .find(|f| f.gguf_name() == module && f.used_by(arch))
    }
}

/// A module name in a file: one projection or a fused one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Module {
    One(Proj),
    Fused(Fused),
}

/// Which file format an adapter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterFormat {
    /// A PEFT directory: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
    /// A llama.cpp GGUF LoRA file.
    Gguf,
}

impl AdapterFormat {
    pub fn name(self) -> &'static str {
        match self {
            AdapterFormat::Peft => "peft",
            AdapterFormat::Gguf => "gguf",
        }
    }
}

/// One low-rank update as a file stores it, widened to f32.
#[derive(Clone, Debug)]
pub struct LoraTensor {
    /// `[rank][in_dim]`, row-major.
    pub a: Vec<f32>,
    /// `[out_dim][rank]`, row-major, q/k rows in the file's order.
    pub b: Vec<f32>,
    pub rank: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    /// `alpha / rank` (or `alpha / sqrt(rank)` with rsLoRA): what the file's own runtime applies.
    pub scale: f32,
    /// Element type in the file.
    pub file_type: TensorType,
}

/// What an adapter file holds, before it is bound to a base.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    pub path: PathBuf,
    pub format: AdapterFormat,
    /// The base architecture the file declares (GGUF's `general.architecture`).
    pub arch: Option<String>,
    /// The base the file names (PEFT's `base_model_name_or_path`, GGUF's `general.base_model...`).
    pub base_model: Option<String>,
    /// The rank and alpha the file declares for modules without a pattern.
    pub rank: usize,
    pub alpha: f32,
    pub use_rslora: bool,
    /// The low-rank pairs, by (layer, projection).
    pub tensors: BTreeMap<(usize, Proj), LoraTensor>,
    /// Pairs of fused modules, as the file stores them ([`AdapterFile::split_fused`]).
    pub fused: BTreeMap<(usize, Fused), LoraTensor>,
    /// `adapter_config.json` as read (PEFT only).
    pub config: Option<serde_json::Value>,
    /// q/k `lora_B` rows are in llama.cpp's permuted order (GGUF `llama` files), not
    /// Hugging Face's.
    pub qk_permuted: bool,
}

/// Why an adapter cannot be used. Displays as one line naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct AdapterError {
    pub path: PathBuf,
    pub msg: String,
}

impl AdapterFile {
    /// Read a PEFT directory (or its `adapter_model.safetensors`) or a GGUF LoRA file.
    pub fn open(path: &Path) -> Result<Self, AdapterError> {
        let err = |msg: String| AdapterError {
            path: path.to_path_buf(),
            msg,
        };
        if !path.exists() {
            return Err(err("no such file or directory".into()));
        }
        verity_formats::refuse_pickle(path).map_err(|e| err(e.to_string()))?;
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        if path.is_dir() || is_safetensors {
            let dir = if is_safetensors {
                path.parent().unwrap_or(Path::new("."))
            } else {
                path
            };
            return peft::read(dir).map_err(|msg| AdapterError {
                path: dir.to_path_buf(),
                msg,
            });
        }
        gguf::read(path).map_err(err)
    }

    /// The same adapter with q/k rows in Hugging Face's order (`hp`: the base's shape).
    pub fn into_hf_order(mut self, hp: &HParams) -> Self {
        if self.qk_permuted {
            for (&(_, proj), t) in self.tensors.iter_mut() {
                let heads = match proj {
                    Proj::Q => hp.n_head,
                    Proj::K => hp.n_head_kv,
                    _ => continue,
                };
                t.b = permute_rows(&t.b, t.rank, heads, hp.head_dim, true);
            }
            self.qk_permuted = false;
        }
        self
    }

    /// Trainable parameters: every element of every A and B.
    pub fn n_params(&self) -> usize {
        self.modules().map(|(_, _, t)| t.a.len() + t.b.len()).sum()
    }

    /// Every pair the file holds: (layer, PEFT's short module name, pair), fused ones
    /// included.
    pub fn modules(&self) -> impl Iterator<Item = (usize, &'static str, &LoraTensor)> {
        let one = self
            .tensors
            .iter()
            .map(|(&(l, p), t)| (l, p.short_name(), t));
        let fused = self.fused.iter().map(|(&(l, f), t)| (l, f.short_name(), t));
        one.chain(fused)
    }

    /// The same adapter with every fused pair split over its projections (`hp`: the base's
    /// shape): each part keeps the shared A and takes its rows of B.
    pub fn split_fused(mut self, hp: &HParams) -> Result<Self, String> {
        for ((l, f), t) in std::mem::take(&mut self.fused) {
            let name = format!("layer {l} {}", f.short_name());
            if !f.used_by(hp.arch) {
                return Err(format!(
                    "{name}: the base ({}) has no fused {}; the adapter was made for a model that fuses them (Phi-3)",
                    hp.arch.gguf_name(),
                    f.short_name()
                ));
            }
            let rows: Vec<usize> = f
                .parts()
                .iter()
                .map(|p| p.layer_tensor().shape(hp).0)
                .collect();
            let total: usize = rows.iter().sum();
            if t.out_dim != total || t.b.len() != t.out_dim * t.rank {
                return Err(format!(
                    "{name}: lora_B has {} rows; the base's fused projection has {total}",
                    t.out_dim
                ));
            }
            let mut row = 0;
            for (&proj, &n) in f.parts().iter().zip(&rows) {
                if self.tensors.contains_key(&(l, proj)) {
                    return Err(format!(
                        "{name}: the file also updates {} of this layer on its own",
                        proj.short_name()
                    ));
                }
                let part = LoraTensor {
                    a: t.a.clone(),
                    b: t.b[row * t.rank..(row + n) * t.rank].to_vec(),
                    out_dim: n,
                    ..t.clone()
                };
                self.tensors.insert((l, proj), part);
                row += n;
            }
        }
        Ok(self)
    }

    /// The same adapter with the pairs of projections that `hp`'s architecture fuses
    /// joined into one (what PEFT and llama.cpp name for such a base): the parts must all
    /// be there, with one A, rank and scale, as [`AdapterFile::split_fused`] and training
    /// leave them.
    pub fn join_fused(mut self, hp: &HParams) -> Result<Self, String> {
        for f in Fused::ALL.into_iter().filter(|f| f.used_by(hp.arch)) {
            for l in 0..hp.n_layer {
                let parts: Vec<Option<LoraTensor>> = f
                    .parts()
                    .iter()
                    .map(|&p| self.tensors.remove(&(l, p)))
                    .collect();
                if parts.iter().all(Option::is_none) {
                    continue;
                }
                let names = f.parts().iter().map(|p| p.short_name()).collect::<Vec<_>>();
                let mismatch = || {
                    format!(
                        "layer {l}: {} stores {} as one matrix ({}); an adapter for it updates all of them with one lora_A",
                        hp.arch.gguf_name(),
                        names.join(", "),
                        f.short_name()
                    )
                };
                let parts: Vec<LoraTensor> = parts
                    .into_iter()
                    .collect::<Option<_>>()
                    .ok_or_else(mismatch)?;
                let first = &parts[0];
                if parts
                    .iter()
                    .any(|t| t.a != first.a || t.rank != first.rank || t.scale != first.scale)
                {
                    return Err(mismatch());
                }
                let joined = LoraTensor {
                    b: parts.iter().flat_map(|t| t.b.iter().copied()).collect(),
                    out_dim: parts.iter().map(|t| t.out_dim).sum(),
                    ..first.clone()
                };
                self.fused.insert((l, f), joined);
            }
        }
        Ok(self)
    }

    /// Ranks, alphas and scales differ between modules.
    pub fn is_uniform(&self) -> bool {
        let mut it = self.tensors.values();
        let Some(first) = it.next() else { return true };
        it.all(|t| t.rank == first.rank && t.scale == first.scale)
    }
}

/// One bound low-rank pair: `y += scale · B·(A·x)`.
pub struct LoraPair {
    /// `rank` rows of `in_dim` f32.
    pub a: Tensor,
    /// `out_dim` rows of `rank` f32, q/k rows in the base's layout.
    pub b: Tensor,
    pub scale: f32,
}

/// An adapter bound to a base model: every shape checked against it.
pub struct Adapter {
    pub path: PathBuf,
    pub format: AdapterFormat,
    /// Per layer, per [`Proj`] (indexed by `Proj as usize`).
    pub layers: Vec<[Option<LoraPair>; 7]>,
    /// Largest rank of any pair.
    pub max_rank: usize,
    pub n_params: usize,
    /// (n_layer, n_embd, n_ff, q_dim, kv_dim) of the base it was bound to.
    dims: (usize, usize, usize, usize, usize),
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("path", &self.path)
            .field("max_rank", &self.max_rank)
            .finish()
    }
}

fn dims_of(hp: &HParams) -> (usize, usize, usize, usize, usize) {
    (hp.n_layer, hp.n_embd, hp.n_ff, hp.q_dim(), hp.kv_dim())
}

impl Adapter {
    /// Read an adapter and bind it to `base`.
    pub fn load(path: &Path, base: &Model) -> Result<Self, AdapterError> {
        Self::bind(&AdapterFile::open(path)?, base)
    }

    /// Check `file` against `base` and lay its weights out for the forward pass.
    pub fn bind(file: &AdapterFile, base: &Model) -> Result<Self, AdapterError> {
        let hp = &base.hparams;
        let err = |msg: String| AdapterError {
            path: file.path.clone(),
            msg,
        };
        if let Some(arch) = &file.arch {
            if Arch::from_gguf_name(arch) != Some(hp.arch) {
                return Err(err(format!(
                    "the adapter is for architecture '{}', the base model is '{}'",
                    verity_formats::printable(arch),
                    hp.arch.gguf_name()
                )));
            }
        }
        // Counted as the file stores them (a fused pair's A once).
        let n_params = file.n_params();
        let split;
        let file = if file.fused.is_empty() {
            file
        } else {
            split = file.clone().split_fused(hp).map_err(err)?;
            &split
        };
        if file.tensors.is_empty() {
            return Err(err("the adapter holds no LoRA tensors".into()));
        }
        let base_permuted = hp.rope_style == RopeStyle::Interleaved;
        let permute = base_permuted != file.qk_permuted;
        let mut layers: Vec<[Option<LoraPair>; 7]> =
            (0..hp.n_layer).map(|_| Default::default()).collect();
        let mut max_rank = 0;
        for (&(l, proj), t) in &file.tensors {
            let name = format!("layer {l} {}", proj.short_name());
            if l >= hp.n_layer {
                return Err(err(format!(
                    "{name}: the base model has only {} layers",
                    hp.n_layer
                )));
            }
            let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
            if t.in_dim != in_dim || t.out_dim != out_dim {
                return Err(err(format!(
                    "{name}: the adapter updates a [{}, {}] matrix (lora_B rows, lora_A columns) but the base's {} is [{out_dim}, {in_dim}]; the adapter was made for another model",
                    t.out_dim,
                    t.in_dim,
                    proj.layer_tensor().hf_name(l)
                )));
            }
            check_values(&name, t).map_err(err)?;
            let b = if permute && matches!(proj, Proj::Q | Proj::K) {
                let heads = if proj == Proj::Q {
                    hp.n_head
                } else {
                    hp.n_head_kv
                };
                permute_rows(&t.b, t.rank, heads, hp.head_dim, !base_permuted)
            } else {
                t.b.clone()
            };
            max_rank = max_rank.max(t.rank);
            layers[l][proj as usize] = Some(LoraPair {
                a: f32_tensor(t.rank, in_dim, &t.a),
                b: f32_tensor(out_dim, t.rank, &b),
                scale: t.scale,
            });
        }
        Ok(Adapter {
            path: file.path.clone(),
            format: file.format,
            layers,
            max_rank,
            n_params,
            dims: dims_of(hp),
        })
    }

    /// Whether this adapter was bound to a model of `hp`'s shape.
    pub fn fits(&self, hp: &HParams) -> bool {
        self.dims == dims_of(hp)
    }

    /// The pair for `proj` of layer `l`, if the adapter targets it.
    pub fn pair(&self, l: usize, proj: Proj) -> Option<&LoraPair> {
        self.layers.get(l).and_then(|p| p[proj as usize].as_ref())
    }
}

/// Rank, shape and value checks: what binding refuses (readers keep such files
/// readable, so `inspect` can report what is wrong with them).
pub fn check_values(name: &str, t: &LoraTensor) -> Result<(), String> {
    if t.rank == 0 {
        return Err(format!("{name}: rank 0 (lora_A has no rows)"));
    }
    if t.rank > t.in_dim.min(t.out_dim) {
        return Err(format!(
            "{name}: rank {} exceeds the matrix's smaller side ({}); a LoRA rank must be at most min(in, out)",
            t.rank,
            t.in_dim.min(t.out_dim)
        ));
    }
    if t.a.len() != t.rank * t.in_dim || t.b.len() != t.out_dim * t.rank {
        return Err(format!("{name}: lora_A/lora_B sizes do not match the rank"));
    }
    if let Some(i) = t.a.iter().position(|v| !v.is_finite()) {
        return Err(format!("{name}: lora_A element {i} is {}", t.a[i]));
    }
    if let Some(i) = t.b.iter().position(|v| !v.is_finite()) {
        return Err(format!("{name}: lora_B element {i} is {}", t.b[i]));
    }
    if !t.scale.is_finite() {
        return Err(format!("{name}: scale {} is not a number", t.scale));
    }
    Ok(())
}

/// Reorder the rows of a q/k `lora_B` between Hugging Face's head layout (halves rotated
/// together) and llama.cpp's (adjacent pairs), as llama.cpp's converter permutes q/k
/// weights: within a head, HF row `j·d/2 + i` is GGUF row `2i + j`. `to_hf` inverts it.
pub fn permute_rows(
    b: &[f32],
    cols: usize,
    heads: usize,
    head_dim: usize,
    to_hf: bool,
) -> Vec<f32> {
    let mut out = vec![0f32; b.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * head_dim + j * half + i;
                let gg = h * head_dim + 2 * i + j;
                let (src, dst) = if to_hf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&b[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn f32_tensor(rows: usize, cols: usize, v: &[f32]) -> Tensor {
    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Tensor::owned(TensorType::F32, rows, cols, bytes)
}

/// Widen `n_rows` rows of `cols` elements of type `ty` to f32, checking the byte count.
pub(crate) fn widen(
    ty: TensorType,
    bytes: &[u8],
    n_rows: usize,
    cols: usize,
) -> Result<Vec<f32>, String> {
    let row_bytes = ty
        .row_bytes(cols)
        .ok_or_else(|| format!("{cols} columns is not a whole number of {ty} blocks"))?;
    if row_bytes.checked_mul(n_rows) != Some(bytes.len()) {
        return Err(format!(
            "{} bytes do not hold {n_rows}×{cols} {ty} elements",
            bytes.len()
        ));
    }
    let mut out = vec![0f32; n_rows * cols];
    for (r, dst) in out.chunks_mut(cols.max(1)).enumerate() {
        verity_kernels::dequantize_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], dst);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_round_trips_and_matches_llama_cpp() {
        // 2 heads of dim 4, one column: HF rows [0..8].
        let b: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let g = permute_rows(&b, 1, 2, 4, false);
        // llama.cpp: reshape(heads, 2, d/2).swapaxes(1, 2): per head [0, 2, 1, 3].
        assert_eq!(g, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&g, 1, 2, 4, true), b);
    }
}
