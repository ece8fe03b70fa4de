//! The trainable LoRA parameters: one flat vector holding every A and B (so the optimizer,
//! the gradient norm and checkpoints see one array), with an index by layer and
//! projection. B's q/k rows are kept in the base's layout (llama.cpp's permuted order for
//! GGUF `llama` bases) and turned into Hugging Face's order when written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use verity_formats::TensorType;
use verity_model::adapter::{check_values, Fused, LoraTensor};
use verity_model::{AdapterFile, AdapterFormat, HParams, Proj, RopeStyle};

use crate::rng::{purpose, Stream};

/// What to train: PEFT's `LoraConfig` fields that matter here.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f32,
    #[serde(with = "proj_names")]
    pub targets: Vec<Proj>,
    pub rslora: bool,
    pub dropout: f32,
}

impl LoraSpec {
    /// PEFT's scale for a module of rank `r`.
    pub fn scale(&self, r: usize) -> f32 {
        if self.rslora {
            self.alpha / (r as f32).sqrt()
        } else {
            self.alpha / r as f32
        }
    }
}

/// Targets as PEFT's module names (`q_proj`) in settings files.
mod proj_names {
    use serde::{Deserialize, Deserializer, Serializer};
    use verity_model::Proj;

    pub fn serialize<S: Serializer>(v: &[Proj], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.short_name()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Proj>, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        names
            .iter()
            .map(|n| {
                Proj::from_short_name(n)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown target {n}")))
            })
            .collect()
    }
}

/// Parse `--targets`: projection names (`q`, `q_proj`, ...), the fused modules of Phi-3
/// (`qkv_proj`, `gate_up_proj`), `attn` (q,k,v,o), `mlp` (gate,up,down) or `all-linear`,
/// comma-separated.
pub fn parse_targets(s: &str) -> Result<Vec<Proj>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let add: Vec<Proj> = match part {
            "all-linear" | "all" => Proj::ALL.to_vec(),
            "attn" => vec![Proj::Q, Proj::K, Proj::V, Proj::O],
            "mlp" | "ffn" => vec![Proj::Gate, Proj::Up, Proj::Down],
            "qkv" | "qkv_proj" => Fused::Qkv.parts().to_vec(),
            "gate_up" | "gate_up_proj" => Fused::GateUp.parts().to_vec(),
            p => {
                let short = if p.ends_with("_proj") {
                    p.to_string()
                } else {
                    format!("{p}_proj")
                };
                vec![Proj::from_short_name(&short).ok_or_else(|| {
                    format!("unknown target '{p}': use q, k, v, o, gate, up, down, qkv, gate_up, attn, mlp or all-linear")
                })?]
            }
        };
        for p in add {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    if out.is_empty() {
        return Err("no targets: use q, k, v, o, gate, up, down, attn, mlp or all-linear".into());
    }
    out.sort();
    Ok(out)
}

/// One low-rank pair inside [`LoraParams::values`].
#[derive(Clone, Debug)]
pub struct LoraMat {
    pub layer: usize,
    pub proj: Proj,
    /// The projection whose A this one uses: itself, or the first part of the fused
    /// module it belongs to (Phi-3's q/k/v share one A, as PEFT's `qkv_proj` has one).
    pub a_owner: Proj,
    pub rank: usize,
    pub in_dim: usize,
    pub out_dim: usize,
    pub scale: f32,
    /// Offsets of A (`[rank][in_dim]`) and B (`[out_dim][rank]`) in the flat vector.
    pub a_off: usize,
    pub b_off: usize,
}

impl LoraMat {
    pub fn a_range(&self) -> std::ops::Range<usize> {
        self.a_off..self.a_off + self.rank * self.in_dim
    }
    pub fn b_range(&self) -> std::ops::Range<usize> {
        self.b_off..self.b_off + self.out_dim * self.rank
    }
}

/// Every trainable matrix, flat.
#[derive(Clone, Debug)]
pub struct LoraParams {
    pub spec: LoraSpec,
    pub mats: Vec<LoraMat>,
    /// Per layer, per projection: index into `mats`.
    pub index: Vec<[Option<usize>; 7]>,
    pub values: Vec<f32>,
    /// q/k B rows are in llama.cpp's permuted order (the base is a GGUF `llama`).
    pub qk_permuted: bool,
}

impl LoraParams {
    fn layout(
        spec: &LoraSpec,
        hp: &HParams,
        rank_of: &dyn Fn(usize, Proj) -> Option<(usize, f32)>,
    ) -> Self {
        let mut mats: Vec<LoraMat> = Vec::new();
        let mut index = vec![[None; 7]; hp.n_layer];
        let mut off = 0;
        for (l, slots) in index.iter_mut().enumerate() {
            for &proj in &Proj::ALL {
                let Some((rank, scale)) = rank_of(l, proj) else {
                    continue;
                };
                let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
                // A fused module's parts after the first read the first's A.
                let a_owner = Fused::of(proj, hp.arch).map_or(proj, |f| f.parts()[0]);
                let shared = (a_owner != proj)
                    .then(|| slots[a_owner as usize].map(|i: usize| mats[i].a_off))
                    .flatten();
                let a_off = shared.unwrap_or(off);
                if shared.is_none() {
                    off += rank * in_dim;
                }
                slots[proj as usize] = Some(mats.len());
                mats.push(LoraMat {
                    layer: l,
                    proj,
                    a_owner: if shared.is_some() { a_owner } else { proj },
                    rank,
                    in_dim,
                    out_dim,
                    scale,
                    a_off,
                    b_off: off,
                });
                off += rank * out_dim;
            }
        }
        LoraParams {
            spec: spec.clone(),
            mats,
            index,
            values: vec![0.0; off],
            qk_permuted: hp.rope_style == RopeStyle::Interleaved,
        }
    }

    /// A fresh adapter as PEFT initialises one: A Kaiming-uniform (PEFT's
    /// `kaiming_uniform_(a=√5)`, i.e. U(±1/√in)), B zero, drawn from `seed`.
    pub fn init(spec: &LoraSpec, hp: &HParams, seed: u64) -> Result<Self, String> {
        for f in Fused::ALL.into_iter().filter(|f| f.used_by(hp.arch)) {
            let n = f
                .parts()
                .iter()
                .filter(|p| spec.targets.contains(p))
                .count();
            if n != 0 && n != f.parts().len() {
                let names: Vec<&str> = f.parts().iter().map(|p| p.short_name()).collect();
                return Err(format!(
                    "{} stores {} as one matrix: target all of them ({}) or none",
                    hp.arch.gguf_name(),
                    names.join(", "),
                    f.short_name()
                ));
            }
        }
        for &proj in &spec.targets {
            let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
            if spec.rank == 0 || spec.rank > out_dim.min(in_dim) {
                return Err(format!(
                    "rank {} does not fit {} ([{out_dim}, {in_dim}]): use 1..={}",
                    spec.rank,
                    proj.short_name(),
                    out_dim.min(in_dim)
                ));
            }
        }
        let scale = spec.scale(spec.rank);
        let mut p = Self::layout(spec, hp, &|_, proj| {
            spec.targets.contains(&proj).then_some((spec.rank, scale))
        });
        for m in p.mats.clone().into_iter().filter(|m| m.a_owner == m.proj) {
            let bound = 1.0 / (m.in_dim as f32).sqrt();
            let mut s = Stream::new(seed, &[purpose::INIT, m.layer as u64, m.proj as u64]);
            for v in &mut p.values[m.a_range()] {
                *v = (2.0 * s.next_f32() - 1.0) * bound;
            }
        }
        Ok(p)
    }

    /// Start from an existing adapter (`--init-adapter`), e.g. one PEFT initialised.
    pub fn from_file(file: &AdapterFile, hp: &HParams, dropout: f32) -> Result<Self, String> {
        let file = file.clone().split_fused(hp)?.into_hf_order(hp);
        let mut targets: Vec<Proj> = file.tensors.keys().map(|&(_, p)| p).collect();
        targets.sort();
        targets.dedup();
        let spec = LoraSpec {
            rank: file.rank,
            alpha: file.alpha,
            targets,
            rslora: file.use_rslora,
            dropout,
        };
        for (&(l, proj), t) in &file.tensors {
            let name = format!("layer {l} {}", proj.short_name());
            if l >= hp.n_layer {
                return Err(format!("{name}: the base has {} layers", hp.n_layer));
            }
            let (out_dim, in_dim) = proj.layer_tensor().shape(hp);
            if (t.out_dim, t.in_dim) != (out_dim, in_dim) {
                return Err(format!(
                    "{name}: the adapter's matrix is [{}, {}], the base's [{out_dim}, {in_dim}]",
                    t.out_dim, t.in_dim
                ));
            }
            check_values(&name, t)?;
        }
        let mut p = Self::layout(&spec, hp, &|l, proj| {
            file.tensors.get(&(l, proj)).map(|t| (t.rank, t.scale))
        });
        for m in p.mats.clone() {
            let t = &file.tensors[&(m.layer, m.proj)];
            if m.a_owner != m.proj && p.values[m.a_range()] != t.a[..] {
                return Err(format!(
                    "layer {} {}: its lora_A differs from {}'s, but {} stores them as one matrix",
                    m.layer,
                    m.proj.short_name(),
                    m.a_owner.short_name(),
                    hp.arch.gguf_name()
                ));
            }
            p.values[m.a_range()].copy_from_slice(&t.a);
            let b = if p.qk_permuted && matches!(m.proj, Proj::Q | Proj::K) {
                permute(&t.b, &m, hp, false)
            } else {
                t.b.clone()
            };
            p.values[m.b_range()].copy_from_slice(&b);
        }
        Ok(p)
    }

    pub fn mat(&self, l: usize, proj: Proj) -> Option<&LoraMat> {
        self.index[l][proj as usize].map(|i| &self.mats[i])
    }

    pub fn n_params(&self) -> usize {
        self.values.len()
    }

    /// As an adapter file in Hugging Face's order (what [`verity_model::adapter::write_peft`]
    /// writes), with `values` in place of the current ones.
    pub fn to_adapter_file(&self, values: &[f32], hp: &HParams, path: PathBuf) -> AdapterFile {
        let mut tensors = BTreeMap::new();
        for m in &self.mats {
            let b = values[m.b_range()].to_vec();
            let b = if self.qk_permuted && matches!(m.proj, Proj::Q | Proj::K) {
                permute(&b, m, hp, true)
            } else {
                b
            };
            tensors.insert(
                (m.layer, m.proj),
                LoraTensor {
                    a: values[m.a_range()].to_vec(),
                    b,
                    rank: m.rank,
                    in_dim: m.in_dim,
                    out_dim: m.out_dim,
                    scale: m.scale,
                    file_type: TensorType::F32,
                },
            );
        }
        AdapterFile {
            path,
            format: AdapterFormat::Peft,
            arch: None,
            base_model: None,
            rank: self.spec.rank,
            alpha: self.spec.alpha,
            use_rslora: self.spec.rslora,
            tensors,
            fused: BTreeMap::new(),
            config: None,
            qk_permuted: false,
        }
    }
}

fn permute(b: &[f32], m: &LoraMat, hp: &HParams, to_hf: bool) -> Vec<f32> {
    let heads = if m.proj == Proj::Q {
        hp.n_head
    } else {
        hp.n_head_kv
    };
    verity_model::adapter::permute_rows(b, m.rank, heads, hp.head_dim, to_hf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_peft_names() {
        assert_eq!(parse_targets("all-linear").unwrap(), Proj::ALL.to_vec());
        assert_eq!(parse_targets("q_proj, v").unwrap(), vec![Proj::Q, Proj::V]);
        assert_eq!(parse_targets("attn").unwrap().len(), 4);
        assert!(parse_targets("lm_head")
            .unwrap_err()
            .contains("unknown target"));
        assert!(parse_targets("").is_err());
        assert_eq!(
            parse_targets("qkv_proj,gate_up").unwrap(),
            vec![Proj::Q, Proj::K, Proj::V, Proj::Gate, Proj::Up]
        );
    }
}
