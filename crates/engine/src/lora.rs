//! Adapters in the forward pass: a [`LoraSet`] is the adapters one sequence runs with
//! (each with its own strength), kept on the sequence's [`crate::KvCache`] so that cached
//! keys and values are never reused under another set.

use std::sync::Arc;

use verity_kernels::matmul;
use verity_model::{Adapter, HParams, Proj};

/// Adapters applied together, each `(adapter, strength)`; the strength multiplies the
/// adapter's own `alpha / r` scale (`--lora PATH:SCALE`).
#[derive(Debug)]
pub struct LoraSet {
    pub adapters: Vec<(Arc<Adapter>, f32)>,
}

impl LoraSet {
    pub fn new(adapters: Vec<(Arc<Adapter>, f32)>) -> Arc<Self> {
        Arc::new(LoraSet { adapters })
    }

    pub(crate) fn fits(&self, hp: &HParams) -> bool {
        self.adapters.iter().all(|(a, _)| a.fits(hp))
    }
}

/// Whether two sequences run with the same adapters (the same set object, or none).
pub fn same_lora(a: Option<&Arc<LoraSet>>, b: Option<&Arc<LoraSet>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// Buffers for the low-rank products.
#[derive(Default)]
pub(crate) struct LoraScratch {
    t: Vec<f32>,
    u: Vec<f32>,
}

/// Add every adapter's `scale · B·(A·x)` for projection `proj` of layer `l` to the rows
/// of `y` that run with adapters. `groups` lists `(first row, rows, set)` of contiguous
/// rows sharing a set; `x` has `in_dim` columns, `y` has `out_dim`. Each group's product
/// is computed on its rows alone, so a row's result does not depend on the batch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply(
    groups: &[(usize, usize, Arc<LoraSet>)],
    l: usize,
    proj: Proj,
    x: &[f32],
    in_dim: usize,
    y: &mut [f32],
    out_dim: usize,
    s: &mut LoraScratch,
) {
    let threads = verity_pool::num_threads();
    if let [(r0, n, set)] = groups {
        if *n <= SPLIT_MAX_ROWS && threads > 1 {
            let xs = &x[r0 * in_dim..(r0 + n) * in_dim];
            let ys = &mut y[r0 * out_dim..(r0 + n) * out_dim];
            return split_update(set, l, proj, xs, *n, ys, out_dim, threads);
        }
    }
    if groups.len() <= 1 {
        // One group (a prompt, or sequences sharing one adapter): its products go
        // parallel inside `matmul`, over the rows of A and B.
        for (r0, n, set) in groups {
            let xs = &x[r0 * in_dim..(r0 + n) * in_dim];
            let ys = &mut y[r0 * out_dim..(r0 + n) * out_dim];
            group_update(set, l, proj, xs, *n, ys, out_dim, s);
        }
        return;
    }
    // Several groups (a decode step mixing adapters): one parallel region over the groups,
    // each group's small products inline on its worker (nested pool calls run inline),
    // rather than two regions per group and adapter. The products are the same calls,
    // so the results are bit-identical to the one-group path.
    let y = YPtr(y.as_mut_ptr());
    verity_pool::for_each(groups.len(), &|g| {
        let (r0, n, set) = &groups[g];
        let xs = &x[r0 * in_dim..(r0 + n) * in_dim];
        // SAFETY: groups are disjoint row ranges of `y`, each written by its task alone.
        let ys = unsafe { std::slice::from_raw_parts_mut(y.get().add(r0 * out_dim), n * out_dim) };
        with_scratch(|s| group_update(set, l, proj, xs, *n, ys, out_dim, s));
    });
}

/// A group of at most this many rows (decode steps) runs as one parallel region split
/// over B's rows, instead of two regions (one per product) per adapter: the products are
/// tiny and the regions' start-up would dominate.
const SPLIT_MAX_ROWS: usize = 64;

/// `ys += Σ scale · B·(A·xs)` in one region of `tasks` tasks: each computes `A·xs` (small:
/// rank × n) and its own band of B's rows. Every output element is the same dot product
/// as in [`group_update`], so the result is bit-identical to it.
#[allow(clippy::too_many_arguments)]
fn split_update(
    set: &LoraSet,
    l: usize,
    proj: Proj,
    xs: &[f32],
    n: usize,
    ys: &mut [f32],
    out_dim: usize,
    tasks: usize,
) {
    let band = out_dim.div_ceil(tasks).next_multiple_of(16);
    let ys = YPtr(ys.as_mut_ptr());
    verity_pool::for_each(out_dim.div_ceil(band), &|task| {
        let (c0, c1) = (task * band, ((task + 1) * band).min(out_dim));
        with_scratch(|s| {
            for (adapter, strength) in &set.adapters {
                let Some(pair) = adapter.pair(l, proj) else {
                    continue;
                };
                let rank = pair.a.rows;
                s.t.resize(n * rank, 0.0);
                s.u.resize(n * (c1 - c0), 0.0);
                matmul(&pair.a.view(), xs, n, &mut s.t);
                let b = pair.b.view();
                let row_bytes = b.row_bytes();
                let band_view = verity_kernels::WeightView {
                    rows: c1 - c0,
                    data: &b.data[c0 * row_bytes..c1 * row_bytes],
                    ..b
                };
                matmul(&band_view, &s.t, n, &mut s.u);
                let scale = pair.scale * strength;
                for (r, u_row) in s.u.chunks_exact(c1 - c0).enumerate() {
                    // SAFETY: task `task` alone writes columns c0..c1 of every row of `ys`
                    // (`n × out_dim`, alive for the whole region).
                    let y_row = unsafe {
                        std::slice::from_raw_parts_mut(ys.get().add(r * out_dim + c0), c1 - c0)
                    };
                    for (dst, &src) in y_row.iter_mut().zip(u_row) {
                        *dst += scale * src;
                    }
                }
            }
        });
    });
}

/// An output shared by tasks that write disjoint parts of it.
struct YPtr(*mut f32);
// SAFETY: only used to write disjoint elements of one `&mut [f32]` during one region.
unsafe impl Sync for YPtr {}
unsafe impl Send for YPtr {}

impl YPtr {
    /// A method, so closures capture the whole (Sync) wrapper, not its raw field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<LoraScratch> = std::cell::RefCell::new(LoraScratch::default());
}

/// Run `f` with this thread's scratch (a fresh one if it is in use further up the stack).
fn with_scratch(f: impl FnOnce(&mut LoraScratch)) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut LoraScratch::default()),
    })
}

/// One group's update: `ys += Σ scale · B·(A·xs)` over the set's adapters, `n` rows.
#[allow(clippy::too_many_arguments)]
fn group_update(
    set: &LoraSet,
    l: usize,
    proj: Proj,
    xs: &[f32],
    n: usize,
    ys: &mut [f32],
    out_dim: usize,
    s: &mut LoraScratch,
) {
    for (adapter, strength) in &set.adapters {
        let Some(pair) = adapter.pair(l, proj) else {
            continue;
        };
        let rank = pair.a.rows;
        s.t.resize(n * rank, 0.0);
        s.u.resize(n * out_dim, 0.0);
        matmul(&pair.a.view(), xs, n, &mut s.t);
        matmul(&pair.b.view(), &s.t, n, &mut s.u);
        let scale = pair.scale * strength;
        for (dst, &src) in ys.iter_mut().zip(&s.u) {
            *dst += scale * src;
        }
    }
}
