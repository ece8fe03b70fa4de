//! Mixture-of-experts FFN: a router scores the experts for each row, the top k are
//! picked (softmax gating, weights optionally renormalised), and each expert runs once
//! per step over all the rows that picked it, so its weights are read once per step
//! and a decode step reads only the picked experts' bytes.
//!
//! A row's result is the same whatever else is in the batch: each expert's product is
//! computed row by row by [`matmul`], and a row's k expert outputs are weighted and
//! summed in the order of its own ranking (as llama.cpp sums them).
//!
//! A prompt runs expert after expert, each product split over the threads ([`serial`]). A
//! decode step (a few rows per expert) runs all its picked experts in one parallel region,
//! one expert a task, when they share out evenly over the threads ([`experts_as_tasks`]),
//! else every gate and up product in one region and every down product in a second
//! ([`products_as_tasks`]): one or two regions a layer instead of three per picked expert.

use verity_kernels::{matmul, prefetch_head, WeightView};
use verity_model::arch::MoeGating;
use verity_model::{HParams, Moe};

use crate::ops::{add_bias_rows, glu, par_rows};

/// Up to this many rows per picked expert, a step runs its experts' products side by side,
/// one product (or expert) a task; above it, expert after expert, each product parallel
/// inside ([`serial`]).
const SIDE_BY_SIDE_MAX_ROWS: usize = 4;

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct MoeScratch {
    logits: Vec<f32>,
    /// Per row, its k picks: (expert, weight), best first.
    picks: Vec<(usize, f32)>,
    /// Per expert: the (row, rank) pairs that picked it.
    by_expert: Vec<Vec<(usize, usize)>>,
    /// The experts some row picked, in expert order, with the offset of their rows in the
    /// packed buffers (in rows).
    active: Vec<(usize, usize)>,
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
    let max_rows = route(moe, hp, h, n, s);
    let threads = verity_pool::num_threads().max(1);
    let n_act = s.active.len();
    if max_rows > SIDE_BY_SIDE_MAX_ROWS {
        serial(moe, hp, h, s);
    } else if n_act.is_multiple_of(threads) || n_act >= 4 * threads {
        experts_as_tasks(moe, hp, h, s);
    } else {
        products_as_tasks(moe, hp, h, s, threads);
    }
    combine(hp, n, out, s);
}

/// The router's picks for the `n` rows of `h`, grouped by expert; returns the most rows
/// an expert got.
fn route(moe: &Moe, hp: &HParams, h: &[f32], n: usize, s: &mut MoeScratch) -> usize {
    let (d, n_exp, k) = (hp.n_embd, hp.n_expert, hp.n_expert_used);
    s.logits.resize(n * n_exp, 0.0);
    matmul(&moe.router.view(), h, n, &mut s.logits);
    add_bias_rows(
        &mut s.logits,
        n_exp,
        moe.biases.as_ref().map(|b| &b.router[..]),
    );
    s.picks.clear();
    for row in s.logits.chunks_exact(n_exp) {
        pick(row, k, hp.arch.spec().moe_gating, &mut s.picks);
    }
    s.by_expert.resize_with(n_exp, Vec::new);
    s.by_expert.iter_mut().for_each(Vec::clear);
    for (i, &(e, _)) in s.picks.iter().enumerate() {
        s.by_expert[e].push((i / k, i % k));
    }
    s.active.clear();
    let mut total = 0;
    let mut max_rows = 0;
    for (e, rows) in s.by_expert.iter().enumerate() {
        if !rows.is_empty() {
            s.active.push((e, total));
            total += rows.len();
            max_rows = max_rows.max(rows.len());
        }
    }
    s.outs.resize(n * k * d, 0.0);
    max_rows
}

/// Each row's k weighted expert outputs summed in the order of its ranking.
fn combine(hp: &HParams, n: usize, out: &mut [f32], s: &MoeScratch) {
    let (d, k) = (hp.n_embd, hp.n_expert_used);
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

/// Expert after expert: gate and up over the rows that picked it, SwiGLU, down, each
/// product split over the threads by [`matmul`]. For prompts, where an expert has many rows.
fn serial(moe: &Moe, hp: &HParams, h: &[f32], s: &mut MoeScratch) {
    let (d, k, ff) = (hp.n_embd, hp.n_expert_used, hp.n_ff_exp);
    for &(e, _) in &s.active {
        let rows = &s.by_expert[e];
        let m = rows.len();
        s.x.resize(m * d, 0.0);
        for (dst, &(r, _)) in s.x.chunks_exact_mut(d).zip(rows) {
            dst.copy_from_slice(&h[r * d..(r + 1) * d]);
        }
        s.gate.resize(m * ff, 0.0);
        s.up.resize(m * ff, 0.0);
        matmul(&moe.gate[e].view(), &s.x, m, &mut s.gate);
        matmul(&moe.up[e].view(), &s.x, m, &mut s.up);
        add_bias_rows(&mut s.gate, ff, expert_bias(moe, Part::Gate, e, ff));
        add_bias_rows(&mut s.up, ff, expert_bias(moe, Part::Up, e, ff));
        let (up, act) = (&s.up, hp.arch.spec().ffn);
        par_rows(&mut s.gate, ff, &|r, g| {
            glu(act, g, &up[r * ff..(r + 1) * ff])
        });
        s.y.resize(m * d, 0.0);
        matmul(&moe.down[e].view(), &s.gate, m, &mut s.y);
        add_bias_rows(&mut s.y, d, expert_bias(moe, Part::Down, e, d));
        weigh(&s.y, rows, &s.picks, k, d, &mut s.outs);
    }
}

/// Each picked expert's rows of `h`, packed expert after expert into `s.x`; returns the
/// number of rows.
fn gather(h: &[f32], d: usize, s: &mut MoeScratch) -> usize {
    let total: usize = s.active.iter().map(|&(e, _)| s.by_expert[e].len()).sum();
    s.x.resize(total * d, 0.0);
    for &(e, off) in &s.active {
        let rows = &s.by_expert[e];
        let x = &mut s.x[off * d..(off + rows.len()) * d];
        for (dst, &(r, _)) in x.chunks_exact_mut(d).zip(rows) {
            dst.copy_from_slice(&h[r * d..(r + 1) * d]);
        }
    }
    total
}

/// All picked experts at once, one a task (gate, up, SwiGLU, down on that thread), in one
/// parallel region; for decoding when the experts share out evenly over the threads.
/// Inside a task [`matmul`] runs on that thread alone; its result for a row does not
/// depend on the thread count, the batch or the rows it is given, so this gives exactly
/// what [`serial`] gives.
fn experts_as_tasks(moe: &Moe, hp: &HParams, h: &[f32], s: &mut MoeScratch) {
    let (d, k, ff) = (hp.n_embd, hp.n_expert_used, hp.n_ff_exp);
    let total = gather(h, d, s);
    s.gate.resize(total * ff, 0.0);
    s.up.resize(total * ff, 0.0);
    s.y.resize(total * d, 0.0);
    {
        let mut tasks = Vec::with_capacity(s.active.len());
        let (mut gate, mut up, mut y) = (&mut s.gate[..], &mut s.up[..], &mut s.y[..]);
        for &(e, off) in &s.active {
            let m = s.by_expert[e].len();
            let (g, rest) = std::mem::take(&mut gate).split_at_mut(m * ff);
            gate = rest;
            let (u, rest) = std::mem::take(&mut up).split_at_mut(m * ff);
            up = rest;
            let (o, rest) = std::mem::take(&mut y).split_at_mut(m * d);
            y = rest;
            tasks.push((e, &s.x[off * d..(off + m) * d], g, u, o));
        }
        let act = hp.arch.spec().ffn;
        verity_pool::for_each_chunk_mut(&mut tasks, 1, &|_, t| {
            for (e, x, g, u, o) in t {
                let m = x.len() / d;
                // The up and down matrices start coming while gate computes.
                prefetch_head(moe.up[*e].view().data);
                prefetch_head(moe.down[*e].view().data);
                matmul(&moe.gate[*e].view(), x, m, g);
                matmul(&moe.up[*e].view(), x, m, u);
                add_bias_rows(g, ff, expert_bias(moe, Part::Gate, *e, ff));
                add_bias_rows(u, ff, expert_bias(moe, Part::Up, *e, ff));
                glu(act, g, u);
                matmul(&moe.down[*e].view(), g, m, o);
                add_bias_rows(o, d, expert_bias(moe, Part::Down, *e, d));
            }
        });
    }
    for &(e, off) in &s.active {
        let rows = &s.by_expert[e];
        let y = &s.y[off * d..(off + rows.len()) * d];
        weigh(y, rows, &s.picks, k, d, &mut s.outs);
    }
}

/// All picked experts at once, for decoding: one parallel region for every expert's gate
/// and up products, one for every down product, the tasks being whole products (or row
/// ranges of them, when there are too few products for the threads). Exactly what
/// [`serial`] gives, as [`experts_as_tasks`]; `threads` only sets how finely the products
/// are split.
fn products_as_tasks(moe: &Moe, hp: &HParams, h: &[f32], s: &mut MoeScratch, threads: usize) {
    let (d, k, ff) = (hp.n_embd, hp.n_expert_used, hp.n_ff_exp);
    let total = gather(h, d, s);
    let threads = threads.max(1);
    let n_act = s.active.len();

    // gate and up: output of expert i, matrix w, row range c as [m][len] at its own place;
    // with one range per matrix that is the expert's [m][ff] block of `gate` / `up`.
    let parts = (2 * threads).div_ceil(2 * n_act).clamp(1, ff.div_ceil(16));
    s.gate.resize(total * ff, 0.0);
    s.up.resize(total * ff, 0.0);
    {
        let mut tasks = Vec::with_capacity(2 * n_act * parts);
        for (out, mats) in [(&mut s.gate, &moe.gate), (&mut s.up, &moe.up)] {
            let mut rest: &mut [f32] = out;
            for &(e, off) in &s.active {
                let m = s.by_expert[e].len();
                for (r0, r1) in ranges(ff, parts) {
                    let (y, tail) = std::mem::take(&mut rest).split_at_mut(m * (r1 - r0));
                    rest = tail;
                    tasks.push(Task {
                        w: rows_of(mats[e].view(), r0, r1),
                        x: &s.x[off * d..(off + m) * d],
                        m,
                        y,
                    });
                }
            }
        }
        run(&mut tasks);
    }
    if parts > 1 {
        // [range][m][len] -> [m][ff] per expert (gate and up alike)
        for buf in [&mut s.gate, &mut s.up] {
            s.y.resize(total * ff, 0.0);
            s.y.copy_from_slice(buf);
            for &(e, off) in &s.active {
                let m = s.by_expert[e].len();
                let src = &s.y[off * ff..(off + m) * ff];
                let dst = &mut buf[off * ff..(off + m) * ff];
                let mut at = 0;
                for (r0, r1) in ranges(ff, parts) {
                    let len = r1 - r0;
                    for b in 0..m {
                        dst[b * ff + r0..b * ff + r1].copy_from_slice(&src[at..at + len]);
                        at += len;
                    }
                }
            }
        }
    }
    for &(e, off) in &s.active {
        let rows = off * ff..(off + s.by_expert[e].len()) * ff;
        add_bias_rows(
            &mut s.gate[rows.clone()],
            ff,
            expert_bias(moe, Part::Gate, e, ff),
        );
        add_bias_rows(&mut s.up[rows], ff, expert_bias(moe, Part::Up, e, ff));
    }
    let (up, act) = (&s.up, hp.arch.spec().ffn);
    par_rows(&mut s.gate, ff, &|r, g| {
        glu(act, g, &up[r * ff..(r + 1) * ff])
    });

    // down: [range][m][len] per expert, then weighted into `outs`.
    let parts = (2 * threads).div_ceil(n_act).clamp(1, d.div_ceil(16));
    s.y.resize(total * d, 0.0);
    {
        let mut tasks = Vec::with_capacity(n_act * parts);
        let mut rest: &mut [f32] = &mut s.y;
        for &(e, off) in &s.active {
            let m = s.by_expert[e].len();
            for (r0, r1) in ranges(d, parts) {
                let (y, tail) = std::mem::take(&mut rest).split_at_mut(m * (r1 - r0));
                rest = tail;
                tasks.push(Task {
                    w: rows_of(moe.down[e].view(), r0, r1),
                    x: &s.gate[off * ff..(off + m) * ff],
                    m,
                    y,
                });
            }
        }
        run(&mut tasks);
    }
    for &(e, off) in &s.active {
        let rows = &s.by_expert[e];
        let src = &s.y[off * d..(off + rows.len()) * d];
        let bias = expert_bias(moe, Part::Down, e, d);
        let mut at = 0;
        for (r0, r1) in ranges(d, parts) {
            for &(r, j) in rows {
                let w = s.picks[r * k + j].1;
                let dst = &mut s.outs[(r * k + j) * d + r0..(r * k + j) * d + r1];
                let src = &src[at..at + (r1 - r0)];
                match bias {
                    Some(b) => {
                        for ((o, &v), &b) in dst.iter_mut().zip(src).zip(&b[r0..r1]) {
                            *o = (v + b) * w;
                        }
                    }
                    None => {
                        for (o, &v) in dst.iter_mut().zip(src) {
                            *o = v * w;
                        }
                    }
                }
                at += r1 - r0;
            }
        }
    }
}

/// Which product of an expert a bias belongs to.
#[derive(Clone, Copy)]
enum Part {
    Gate,
    Up,
    Down,
}

/// Expert `e`'s bias on `part` (`width` values), when the layer has biases.
fn expert_bias(moe: &Moe, part: Part, e: usize, width: usize) -> Option<&[f32]> {
    let b = moe.biases.as_ref()?;
    let all = match part {
        Part::Gate => &b.gate,
        Part::Up => &b.up,
        Part::Down => &b.down,
    };
    Some(&all[e * width..(e + 1) * width])
}

/// One product of [`products_as_tasks`]: `y = w · x` for `m` rows.
struct Task<'a> {
    w: WeightView<'a>,
    x: &'a [f32],
    m: usize,
    y: &'a mut [f32],
}

/// Run the products in parallel, one per task.
fn run(tasks: &mut [Task]) {
    verity_pool::for_each_chunk_mut(tasks, 1, &|_, t| {
        for t in t {
            matmul(&t.w, t.x, t.m, t.y);
        }
    });
}

/// Rows `r0..r1` of a weight matrix.
fn rows_of(w: WeightView<'_>, r0: usize, r1: usize) -> WeightView<'_> {
    let rb = w.row_bytes();
    WeightView {
        rows: r1 - r0,
        data: &w.data[r0 * rb..r1 * rb],
        ..w
    }
}

/// `0..n` in `parts` ranges of nearly equal length.
fn ranges(n: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..parts).map(move |p| (p * n / parts, (p + 1) * n / parts))
}

/// Each pick's output, weighted, to its place in `outs`.
fn weigh(
    y: &[f32],
    rows: &[(usize, usize)],
    picks: &[(usize, f32)],
    k: usize,
    d: usize,
    outs: &mut [f32],
) {
    for (y, &(r, j)) in y.chunks_exact(d).zip(rows) {
        let w = picks[r * k + j].1;
        let dst = &mut outs[(r * k + j) * d..(r * k + j + 1) * d];
        for (o, &v) in dst.iter_mut().zip(y) {
            *o = v * w;
        }
    }
}

/// The `k` best experts by the router's logits (ties: the lower index), best first, with
/// their weights as `gating` makes them; appended to `picks`.
fn pick(logits: &[f32], k: usize, gating: MoeGating, picks: &mut Vec<(usize, f32)>) {
    // The k best, best first, by insertion: a later index goes after an equal logit.
    let first = picks.len();
    for (e, &l) in logits.iter().enumerate() {
        let top = &picks[first..];
        let at = top.partition_point(|&(p, _)| logits[p].total_cmp(&l).is_ge());
        if at < k {
            if top.len() == k {
                picks.pop();
            }
            picks.insert(first + at, (e, 0.0));
        }
    }
    // Softmax over every expert, or over the picked ones alone.
    let (max, sum) = match gating {
        MoeGating::TopKSoftmax => softmax_terms(picks[first..].iter().map(|p| logits[p.0])),
        _ => softmax_terms(logits.iter().copied()),
    };
    let inv = (1.0 / sum) as f32;
    for p in &mut picks[first..] {
        p.1 = (logits[p.0] - max).exp() * inv;
    }
    if gating == MoeGating::SoftmaxNormalized {
        let total: f32 = picks[first..].iter().map(|p| p.1).sum();
        // As llama.cpp: the sum is clamped to f16's smallest normal.
        let total = total.max(6.103_515_6e-5);
        for p in &mut picks[first..] {
            p.1 /= total;
        }
    }
}

/// A softmax's maximum and its sum of `exp(x - max)` (in f64, as ggml sums).
fn softmax_terms(x: impl Iterator<Item = f32> + Clone) -> (f32, f64) {
    let max = x.clone().fold(f32::NEG_INFINITY, f32::max);
    (max, x.map(|l| (l - max).exp() as f64).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decoding paths give what the prompt path gives, bit for bit, however finely they
    /// split the products; a row gives the same alone as in a batch.
    #[test]
    fn decoding_and_prompt_paths_agree() {
        let assets = std::env::var_os("VERITY_ASSETS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap())
                    .join(".cache/verity/assets")
            });
        let path = assets.join("test-models/qwen3moe-tiny-Q8_0.gguf");
        assert!(
            path.exists(),
            "{} is missing: run scripts/make-test-models",
            path.display()
        );
        let model = verity_model::load(&path).unwrap();
        let hp = &model.hparams;
        let moe = model.weights.layers[0].moe.as_ref().unwrap();
        let d = hp.n_embd;
        let h: Vec<f32> = (0..5 * d)
            .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut s = MoeScratch::default();
        for n in 1..=5 {
            let h = &h[..n * d];
            route(moe, hp, h, n, &mut s);
            serial(moe, hp, h, &mut s);
            let want = s.outs.clone();
            for threads in [1, 2, 3, 8, 64] {
                route(moe, hp, h, n, &mut s);
                products_as_tasks(moe, hp, h, &mut s, threads);
                assert!(s.outs == want, "{n} rows, {threads} threads");
            }
            route(moe, hp, h, n, &mut s);
            experts_as_tasks(moe, hp, h, &mut s);
            assert!(s.outs == want, "{n} rows, experts as tasks");
            // each row alone
            for r in 0..n {
                let k = hp.n_expert_used;
                let row = &h[r * d..(r + 1) * d];
                route(moe, hp, row, 1, &mut s);
                products_as_tasks(moe, hp, row, &mut s, 2);
                assert!(
                    s.outs[..k * d] == want[r * k * d..(r + 1) * k * d],
                    "row {r} of {n}"
                );
                route(moe, hp, row, 1, &mut s);
                experts_as_tasks(moe, hp, row, &mut s);
                assert!(
                    s.outs[..k * d] == want[r * k * d..(r + 1) * k * d],
                    "row {r} of {n}"
                );
            }
        }
    }

    #[test]
    fn picks_the_best_and_renormalises() {
        let mut picks = Vec::new();
        pick(
            &[0.0, 2.0, 1.0, 2.0],
            2,
            MoeGating::SoftmaxNormalized,
            &mut picks,
        );
        assert_eq!(picks.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((picks[0].1 - 0.5).abs() < 1e-6 && (picks[1].1 - 0.5).abs() < 1e-6);
        picks.clear();
        pick(&[0.0, 1.0], 1, MoeGating::Softmax, &mut picks);
        let p = 1f32.exp() / (1.0 + 1f32.exp());
        assert!((picks[0].1 - p).abs() < 1e-6);
        // gpt-oss: softmax over the picked logits alone.
        picks.clear();
        pick(&[3.0, 0.0, 1.0, 5.0], 2, MoeGating::TopKSoftmax, &mut picks);
        assert_eq!(picks.iter().map(|p| p.0).collect::<Vec<_>>(), vec![3, 0]);
        let p = 1.0 / (1.0 + (-2f32).exp());
        assert!((picks[0].1 - p).abs() < 1e-6 && (picks[1].1 - (1.0 - p)).abs() < 1e-6);
    }
}
