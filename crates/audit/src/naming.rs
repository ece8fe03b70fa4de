//! One model's tensors under both naming schemes: a GGUF file and a Hugging Face directory
//! of the same architecture pair up through the architecture table, and their values are
//! brought into one layout before they are compared: the Hugging Face q/k rows of an
//! interleaved-RoPE architecture permuted as llama.cpp's converter permutes them, and the
//! GGUF norms of Gemma less the 1 its converter adds (checkpoints store `w - 1`; comparing
//! there keeps verity's converted copies exact, while a converter that adds the 1 in
//! another precision leaves a last-bit change).
//!
//! Mixture-of-experts expert tensors have no one-to-one counterpart (GGUF stacks the
//! experts, checkpoints differ in how they store them) and keep their own names.

use std::collections::HashMap;

use verity_model::adapter::permute_rows;
use verity_model::arch::{GlobalTensor, HParams, LayerTensor};
use verity_model::RopeStyle;

use crate::source::{Container, ModelFile};

/// What to do to one side's values to bring them into the other's layout.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fix {
    None,
    /// Add this to every value (Gemma's norms).
    Add(f32),
    /// Rows of `heads` heads from the halves layout to llama.cpp's interleaved one.
    PermuteRows {
        heads: usize,
    },
}

impl Fix {
    /// `v` (rows of `cols` values) in GGUF's layout.
    pub fn apply(self, v: Vec<f32>, cols: usize) -> Vec<f32> {
        match self {
            Fix::None => v,
            Fix::Add(x) => v.into_iter().map(|w| w + x).collect(),
            Fix::PermuteRows { heads } => {
                let rows = v.len() / cols.max(1);
                if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                    return v;
                }
                permute_rows(&v, cols, heads, rows / heads, false)
            }
        }
    }
}

/// Which side of a comparison is the Hugging Face one, and the name map.
pub struct Pairing {
    /// A is the Hugging Face directory (B the GGUF file); otherwise the reverse.
    pub hf_is_a: bool,
    /// Hugging Face name → GGUF name, the fix for the Hugging Face values and the one for
    /// the GGUF values.
    hf_to_gguf: HashMap<String, (String, Fix, Fix)>,
    gguf_to_hf: HashMap<String, String>,
}

impl Pairing {
    /// The name in B of A's tensor `name`, and the fixes for A's and B's values.
    pub fn counterpart(&self, name: &str) -> Option<(&str, Fix, Fix)> {
        if self.hf_is_a {
            let (g, fix_hf, fix_gguf) = self.hf_to_gguf.get(name)?;
            Some((g.as_str(), *fix_hf, *fix_gguf))
        } else {
            let h = self.gguf_to_hf.get(name)?;
            let (_, fix_hf, fix_gguf) = &self.hf_to_gguf[h];
            Some((h.as_str(), *fix_gguf, *fix_hf))
        }
    }
}

fn hparams(m: &ModelFile) -> Option<HParams> {
    match &m.container {
        Container::Gguf(g) => HParams::from_gguf(g).ok(),
        Container::Hf(h) => HParams::from_hf_config(&h.config).ok(),
    }
}

/// The pairing of a GGUF file with a Hugging Face directory of the same architecture and
/// shape; `None` for two files of one kind, or models that differ in architecture or size
/// (their tensors are then matched by name).
pub fn pairing(a: &ModelFile, b: &ModelFile) -> Option<Pairing> {
    let hf_is_a = match (&a.container, &b.container) {
        (Container::Hf(_), Container::Gguf(_)) => true,
        (Container::Gguf(_), Container::Hf(_)) => false,
        _ => return None,
    };
    let (ha, hb) = (hparams(a)?, hparams(b)?);
    let same = ha.arch == hb.arch
        && ha.n_layer == hb.n_layer
        && ha.n_head == hb.n_head
        && ha.n_head_kv == hb.n_head_kv;
    if !same {
        return None;
    }
    let hp = if hf_is_a { &hb } else { &ha };
    let arch = hp.arch;
    let spec = arch.spec();
    // Applied to the GGUF side.
    let norm_fix = if spec.hf_norm_offset != 0.0 {
        Fix::Add(-spec.hf_norm_offset)
    } else {
        Fix::None
    };
    let interleaved = spec.gguf_rope == RopeStyle::Interleaved;
    let mut hf_to_gguf = HashMap::new();
    for t in [
        GlobalTensor::TokenEmbedding,
        GlobalTensor::OutputNorm,
        GlobalTensor::Output,
    ] {
        let fix = if t == GlobalTensor::OutputNorm {
            norm_fix
        } else {
            Fix::None
        };
        hf_to_gguf.insert(
            t.hf_name().to_string(),
            (t.gguf_name().to_string(), Fix::None, fix),
        );
    }
    for l in 0..hp.n_layer {
        for t in LayerTensor::ALL.into_iter().filter(|t| t.present_in(arch)) {
            let (fix_hf, fix_gguf) = match t {
                _ if t.is_norm() => (Fix::None, norm_fix),
                LayerTensor::Q if interleaved => (Fix::PermuteRows { heads: hp.n_head }, Fix::None),
                LayerTensor::K if interleaved => (
                    Fix::PermuteRows {
                        heads: hp.n_head_kv,
                    },
                    Fix::None,
                ),
                _ => (Fix::None, Fix::None),
            };
            hf_to_gguf.insert(
                t.hf_name_in(arch, l),
                (t.gguf_name_in(arch, l), fix_hf, fix_gguf),
            );
        }
    }
    let gguf_to_hf = hf_to_gguf
        .iter()
        .map(|(h, (g, _, _))| (g.clone(), h.clone()))
        .collect();
    Some(Pairing {
        hf_is_a,
        hf_to_gguf,
        gguf_to_hf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_the_converters() {
        // 2 heads of 4 rows, 1 column: halves [0 1 | 2 3] become pairs [0 2 1 3].
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let gguf = Fix::PermuteRows { heads: 2 }.apply(hf, 1);
        assert_eq!(gguf, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(Fix::Add(1.0).apply(vec![0.5], 1), [1.5]);
    }
}
