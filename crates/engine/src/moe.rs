//! Mixture-of-experts FFN: a router scores the experts for each row, the top k are
//! picked (softmax gating, weights optionally renormalised), and each expert runs once
//! per step over all the rows that picked it, so its weights are read once per step
//! and a decode step reads only the picked experts' bytes.
//!
//! A row's result is the same whatever else is in the batch: each expert's product is
//! computed row by row by [`matmul`], and a row's k expert outputs are weighted and
//! summed in the order of its own ranking (as llama.cpp sums them).

use verity_kernels::matmul;
use verity_model::{HParams, Moe};

use crate::ops::swiglu;

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct MoeScratch {
    logits: Vec<f32>,
    /// Per row, its k picks: (expert, weight), best first.
    picks: Vec<(usize, f32)>,
    /// Per expert: the (row, rank) pairs that picked it.
    by_expert: Vec<Vec<(usize, usize)>>,
    x: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    y: Vec<f32>,
    /// `[row][rank][n_embd]`: each pick's weighted output.
    outs: Vec<f32>,
}

/// `out[r] = Σ_j w_j · expert_j(h[r])` for the `n` rows of `h`.
pub(crate) fn moe_ffn(
    moe: &Moe,
    hp: &HParams,
    h: &[f32],
    n: usize,
    out: &mut [f32],
    s: &mut MoeScratch,
) {
    let (d, n_exp, k, ff) = (hp.n_embd, hp.n_expert, hp.n_expert_used, hp.n_ff_exp);
    s.logits.resize(n * n_exp, 0.0);
    matmul(&moe.router.view(), h, n, &mut s.logits);
    s.picks.clear();
    for row in s.logits.chunks_exact(n_exp) {
        pick(row, k, hp.arch.spec().moe_norm_weights, &mut s.picks);
    }
    s.by_expert.resize_with(n_exp, Vec::new);
    s.by_expert.iter_mut().for_each(Vec::clear);
    for (i, &(e, _)) in s.picks.iter().enumerate() {
        s.by_expert[e].push((i / k, i % k));
    }
    s.outs.resize(n * k * d, 0.0);
    for (e, rows) in s.by_expert.iter().enumerate() {
        let m = rows.len();
        if m == 0 {
            continue;
        }
        s.x.resize(m * d, 0.0);
        for (dst, &(r, _)) in s.x.chunks_exact_mut(d).zip(rows) {
            dst.copy_from_slice(&h[r * d..(r + 1) * d]);
        }
        s.gate.resize(m * ff, 0.0);
        s.up.resize(m * ff, 0.0);
        matmul(&moe.gate[e].view(), &s.x, m, &mut s.gate);
        matmul(&moe.up[e].view(), &s.x, m, &mut s.up);
        for (g, u) in s.gate.chunks_exact_mut(ff).zip(s.up.chunks_exact(ff)) {
            swiglu(g, u);
        }
        s.y.resize(m * d, 0.0);
        matmul(&moe.down[e].view(), &s.gate, m, &mut s.y);
        for (y, &(r, j)) in s.y.chunks_exact(d).zip(rows) {
            let w = s.picks[r * k + j].1;
            let dst = &mut s.outs[(r * k + j) * d..(r * k + j + 1) * d];
            for (o, &v) in dst.iter_mut().zip(y) {
                *o = v * w;
            }
        }
    }
    for (r, dst) in out.chunks_exact_mut(d).enumerate().take(n) {
        let row = &s.outs[r * k * d..(r + 1) * k * d];
        dst.copy_from_slice(&row[..d]);
        for j in 1..k {
            for (o, &v) in dst.iter_mut().zip(&row[j * d..(j + 1) * d]) {
                *o += v;
            }
        }
    }
}

/// Softmax over the router's logits, the `k` best experts (ties: the lower index), their
/// probabilities (renormalised to sum to 1 with `norm`); appended to `picks`.
fn pick(logits: &[f32], k: usize, norm: bool, picks: &mut Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    let inv = (1.0 / sum) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    let first = picks.len();
    for &e in &order[..k] {
        picks.push((e, (logits[e] - max).exp() * inv));
    }
    if norm {
        let total: f32 = picks[first..].iter().map(|p| p.1).sum();
        // As llama.cpp: the sum is clamped to f16's smallest normal.
        let total = total.max(6.103_515_6e-5);
        for p in &mut picks[first..] {
            p.1 /= total;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_best_and_renormalises() {
        let mut picks = Vec::new();
        pick(&[0.0, 2.0, 1.0, 2.0], 2, true, &mut picks);
        assert_eq!(picks.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((picks[0].1 - 0.5).abs() < 1e-6 && (picks[1].1 - 0.5).abs() < 1e-6);
        picks.clear();
        pick(&[0.0, 1.0], 1, false, &mut picks);
        let p = 1f32.exp() / (1.0 + 1f32.exp());
        assert!((picks[0].1 - p).abs() < 1e-6);
    }
}
