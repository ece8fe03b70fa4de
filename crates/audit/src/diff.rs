//! Tensor-by-tensor comparison of two models on dequantized values, and a verdict on lineage.
//!
//! Tensors are matched by name, or between a GGUF file and a Hugging Face directory by the
//! architecture's two names for each ([`crate::naming`]; the Hugging Face values are
//! brought into GGUF's layout first). Same bytes and type: identical. Otherwise both are
//! dequantized to f32 and compared: relative norm of the difference ‖B−A‖/‖A‖, cosine
//! similarity, and for matrices the effective rank of ΔW = B−A (a LoRA merge shows a few
//! singular values standing out of the noise; a requantization shows noise only).
//!
//! Verdict: identical; "B derives from A" when the parameter-weighted cosine similarity of
//! the shared tensors is high (fine-tunes, LoRA merges and requantizations keep it near 1,
//! independently trained or random weights have it near 0); "unrelated" when it is low.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;

use crate::linalg::{rank_info, RankInfo};
use crate::naming::{pairing, Fix};
use crate::source::{Entry, ModelFile};

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Same type and bytes.
    Identical,
    /// Different encoding, same values.
    Equivalent,
    /// One side is the other's values rounded to nearest in its float type (F16, BF16),
    /// value by value: a re-encoding, not a change of the weights.
    Rounded,
    Changed,
    Added,
    Removed,
    /// Same name, different shape: values not compared.
    Reshaped,
    /// A type verity cannot decode: compared by bytes only.
    Uncompared,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorDiff {
    /// A's name for the tensor (B's for an added one).
    pub name: String,
    /// B's name, where it differs (a GGUF file against a Hugging Face directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_b: Option<String>,
    pub status: Status,
    pub shape_a: Option<Vec<usize>>,
    pub shape_b: Option<Vec<usize>>,
    pub type_a: Option<String>,
    pub type_b: Option<String>,
    pub params: u64,
    /// ‖B − A‖ / ‖A‖.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine: Option<f64>,
    /// Effective rank of B − A (matrices only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rank: Option<RankInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub identical: usize,
    pub equivalent: usize,
    pub rounded: usize,
    pub changed: usize,
    pub added: usize,
    pub removed: usize,
    pub reshaped: usize,
    pub uncompared: usize,
    /// Cosine similarity over all compared tensors, weighted by their parameter counts.
    pub weighted_cosine: Option<f64>,
    /// Share of A's parameters that B holds in tensors of the same name and shape.
    pub shared_fraction: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Diff {
    pub a: String,
    pub b: String,
    pub tensors: Vec<TensorDiff>,
    pub summary: Summary,
    /// "identical", "re-encoded" (every difference a float rounding, in either
    /// direction), "derives", "unrelated" or "inconclusive".
    pub verdict: &'static str,
    /// The verdict in a sentence, with the evidence.
    pub explanation: String,
}

/// Cosine above which shared tensors count as the same weights, modified.
const DERIVED_COSINE: f64 = 0.8;
/// Cosine below which models are unrelated.
const UNRELATED_COSINE: f64 = 0.3;

/// A's tensor `ea` against B's `eb`, each side's values passed through its fix first.
fn compare(a: &ModelFile, ea: &Entry, fa: Fix, b: &ModelFile, eb: &Entry, fb: Fix) -> TensorDiff {
    let mut d = TensorDiff {
        name: ea.name.clone(),
        name_b: (eb.name != ea.name).then(|| eb.name.clone()),
        status: Status::Identical,
        shape_a: Some(ea.shape.clone()),
        shape_b: Some(eb.shape.clone()),
        type_a: Some(ea.type_name.clone()),
        type_b: Some(eb.type_name.clone()),
        params: ea.n_elements(),
        relative_norm: None,
        cosine: None,
        rank: None,
    };
    if ea.shape != eb.shape {
        d.status = Status::Reshaped;
        return d;
    }
    let (da, db) = (a.data(ea), b.data(eb));
    let unfixed = fa == Fix::None && fb == Fix::None;
    if unfixed && ea.type_name == eb.type_name && da.is_some() && da == db {
        d.relative_norm = Some(0.0);
        d.cosine = Some(1.0);
        return d;
    }
    let cols = ea.rows_cols().1;
    let (Some(va), Some(vb)) = (
        a.dequantize(ea).map(|v| fa.apply(v, cols)),
        b.dequantize(eb).map(|v| fb.apply(v, cols)),
    ) else {
        d.status = if unfixed && ea.type_name == eb.type_name && da == db {
            Status::Identical
        } else {
            Status::Uncompared
        };
        return d;
    };
    let (mut dot, mut na, mut nb, mut nd) = (0f64, 0f64, 0f64, 0f64);
    let mut delta = vec![0f32; va.len()];
    for ((x, y), o) in va.iter().zip(&vb).zip(delta.iter_mut()) {
        let (x, y) = (*x as f64, *y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
        nd += (y - x) * (y - x);
        *o = (y - x) as f32;
    }
    let finite = dot.is_finite() && na.is_finite() && nb.is_finite();
    d.relative_norm = Some(if na > 0.0 {
        (nd / na).sqrt()
    } else if nd > 0.0 {
        f64::INFINITY
    } else {
        0.0
    });
    d.cosine = Some(if na > 0.0 && nb > 0.0 && finite {
        dot / (na.sqrt() * nb.sqrt())
    } else if na == nb {
        1.0
    } else {
        0.0
    });
    if nd == 0.0 {
        d.status = Status::Equivalent;
        return d;
    }
    if rounded_to(&va, &vb, &eb.type_name) || rounded_to(&vb, &va, &ea.type_name) {
        d.status = Status::Rounded;
        return d;
    }
    d.status = Status::Changed;
    let (rows, cols) = ea.rows_cols();
    if rows > 1 && cols > 1 && finite {
        d.rank = Some(rank_info(&delta, rows, cols));
    }
    d
}

/// Whether `to` is `from` rounded to nearest (ties to even) in the float type named `ty`,
/// value by value.
fn rounded_to(from: &[f32], to: &[f32], ty: &str) -> bool {
    let round: fn(f32) -> f32 = match ty {
        "F16" => |x| half::f16::from_f32(x).to_f32(),
        "BF16" => |x| half::bf16::from_f32(x).to_f32(),
        _ => return false,
    };
    from.len() == to.len()
        && from
            .iter()
            .zip(to)
            .all(|(&x, &y)| round(x).to_bits() == y.to_bits())
}

/// Compare model B against model A.
pub fn diff(path_a: &Path, path_b: &Path) -> anyhow::Result<Diff> {
    let a = ModelFile::open(path_a)?;
    let b = ModelFile::open(path_b)?;
    let bnames: BTreeMap<&str, &Entry> = b.tensors.iter().map(|e| (e.name.as_str(), e)).collect();
    let pair = pairing(&a, &b);
    // B's counterpart of A's tensor `name`, and the fixes for both sides' values.
    let counterpart = |name: &str| -> Option<(&Entry, Fix, Fix)> {
        let (nb, fa, fb) =
            pair.as_ref()
                .and_then(|p| p.counterpart(name))
                .unwrap_or((name, Fix::None, Fix::None));
        bnames.get(nb).map(|&eb| (eb, fa, fb))
    };
    let matched: std::collections::HashSet<&str> = a
        .tensors
        .iter()
        .filter_map(|ea| counterpart(&ea.name).map(|(eb, _, _)| eb.name.as_str()))
        .collect();

    let mut tensors: Vec<TensorDiff> = a
        .tensors
        .par_iter()
        .map(|ea| match counterpart(&ea.name) {
            Some((eb, fa, fb)) => compare(&a, ea, fa, &b, eb, fb),
            None => TensorDiff {
                name: ea.name.clone(),
                name_b: None,
                status: Status::Removed,
                shape_a: Some(ea.shape.clone()),
                shape_b: None,
                type_a: Some(ea.type_name.clone()),
                type_b: None,
                params: ea.n_elements(),
                relative_norm: None,
                cosine: None,
                rank: None,
            },
        })
        .collect();
    for eb in &b.tensors {
        if !matched.contains(eb.name.as_str()) {
            tensors.push(TensorDiff {
                name: eb.name.clone(),
                name_b: None,
                status: Status::Added,
                shape_a: None,
                shape_b: Some(eb.shape.clone()),
                type_a: None,
                type_b: Some(eb.type_name.clone()),
                params: eb.n_elements(),
                relative_norm: None,
                cosine: None,
                rank: None,
            });
        }
    }

    let count = |f: fn(&Status) -> bool| tensors.iter().filter(|t| f(&t.status)).count();
    let total_a: u64 = a.tensors.iter().map(Entry::n_elements).sum();
    let (mut wsum, mut wcos, mut shared) = (0f64, 0f64, 0u64);
    for t in &tensors {
        if let Some(c) = t.cosine {
            wsum += t.params as f64;
            wcos += t.params as f64 * c;
        }
        if matches!(
            t.status,
            Status::Identical
                | Status::Equivalent
                | Status::Rounded
                | Status::Changed
                | Status::Uncompared
        ) {
            shared += t.params;
        }
    }
    let summary = Summary {
        identical: count(|s| matches!(s, Status::Identical)),
        equivalent: count(|s| matches!(s, Status::Equivalent)),
        rounded: count(|s| matches!(s, Status::Rounded)),
        changed: count(|s| matches!(s, Status::Changed)),
        added: count(|s| matches!(s, Status::Added)),
        removed: count(|s| matches!(s, Status::Removed)),
        reshaped: count(|s| matches!(s, Status::Reshaped)),
        uncompared: count(|s| matches!(s, Status::Uncompared)),
        weighted_cosine: (wsum > 0.0).then(|| wcos / wsum),
        shared_fraction: if total_a > 0 {
            shared as f64 / total_a as f64
        } else {
            0.0
        },
    };
    let (verdict, explanation) = verdict(&summary, &tensors);
    Ok(Diff {
        a: a.path.display().to_string(),
        b: b.path.display().to_string(),
        tensors,
        summary,
        verdict,
        explanation,
    })
}

fn verdict(s: &Summary, tensors: &[TensorDiff]) -> (&'static str, String) {
    let n = tensors.len();
    if s.changed + s.added + s.removed + s.reshaped + s.uncompared == 0 && s.rounded > 0 {
        return (
            "re-encoded",
            format!(
                "the same weights, re-encoded: {} tensors identical, {} with equal values in another type or layout, {} rounded to nearest in one side's float type (F16 or BF16), value by value",
                s.identical, s.equivalent, s.rounded
            ),
        );
    }
    if s.changed + s.added + s.removed + s.reshaped + s.uncompared == 0 {
        return if s.equivalent == 0 {
            ("identical", format!("all {n} tensors are identical"))
        } else {
            (
                "identical",
                format!(
                    "same values: {} tensors identical, {} with equal values in another type or layout",
                    s.identical, s.equivalent
                ),
            )
        };
    }
    let Some(cos) = s.weighted_cosine else {
        return (
            "inconclusive",
            "no tensor could be compared by value".into(),
        );
    };
    let shared = format!(
        "{:.0}% of A's parameters are in tensors B shares by name (or its format's name for them) and shape",
        100.0 * s.shared_fraction
    );
    if s.shared_fraction < 0.5 {
        return (
            "inconclusive",
            format!("{shared}: too few to judge lineage (weighted cosine {cos:.3})"),
        );
    }
    if cos >= DERIVED_COSINE {
        let changed: Vec<&TensorDiff> = tensors
            .iter()
            .filter(|t| matches!(t.status, Status::Changed))
            .collect();
        let ranks: Vec<&RankInfo> = changed.iter().filter_map(|t| t.rank.as_ref()).collect();
        let low_rank: Vec<&&RankInfo> = ranks
            .iter()
            .filter(|r| r.spikes > 0 && r.spikes <= r.max_rank / 4)
            .collect();
        let mut why = format!(
            "B derives from A: {} of {n} tensors identical, {} rounded, {} changed; parameter-weighted cosine similarity {cos:.4}; {shared}",
            s.identical + s.equivalent,
            s.rounded,
            s.changed
        );
        if !ranks.is_empty() {
            if low_rank.len() * 2 > ranks.len() {
                let mut rs: Vec<usize> = low_rank.iter().map(|r| r.spikes).collect();
                rs.sort_unstable();
                why += &format!(
                    "; the changes are low-rank (median effective rank {} in {} of {} changed matrices): a LoRA merge or adapter-style fine-tune",
                    rs[rs.len() / 2],
                    low_rank.len(),
                    ranks.len()
                );
            } else {
                let mut rel: Vec<f64> = changed.iter().filter_map(|t| t.relative_norm).collect();
                rel.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                let med = rel.get(rel.len() / 2).copied().unwrap_or(0.0);
                let types_differ = changed.iter().any(|t| t.type_a != t.type_b);
                why +=
                    &format!("; the changes are full-rank (median relative difference {med:.3})");
                if types_differ {
                    why += ", with different tensor types: consistent with requantization";
                } else {
                    why += ": consistent with full fine-tuning or requantization";
                }
            }
        }
        ("derives", why)
    } else if cos <= UNRELATED_COSINE {
        (
            "unrelated",
            format!(
                "unrelated: the shared tensors have parameter-weighted cosine similarity {cos:.3} (independent weights score near 0; a fine-tune or requantization near 1); {shared}"
            ),
        )
    } else {
        (
            "inconclusive",
            format!("weakly related: parameter-weighted cosine similarity {cos:.3} is between {UNRELATED_COSINE} (unrelated) and {DERIVED_COSINE} (derived); {shared}"),
        )
    }
}
