//! Adapters in the forward pass: a [`LoraSet`] is the adapters one sequence runs with
//! (each with its own strength), kept on the sequence's [`crate::KvCache`] so that cached
//! keys and values are never reused under another set.

use std::sync::{Arc, Mutex};

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
    let mut parts: Vec<Mutex<&mut [f32]>> = Vec::with_capacity(groups.len());
    let (mut rest, mut at) = (y, 0);
    for (r0, n, _) in groups {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut((r0 - at) * out_dim);
        let (mine, tail) = tail.split_at_mut(n * out_dim);
        (rest, at) = (tail, r0 + n);
        parts.push(Mutex::new(mine));
    }
    verity_pool::for_each(groups.len(), &|g| {
        let (r0, n, set) = &groups[g];
        let xs = &x[r0 * in_dim..(r0 + n) * in_dim];
        let mut ys = parts[g].lock().unwrap_or_else(|e| e.into_inner());
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => group_update(set, l, proj, xs, *n, &mut ys, out_dim, &mut s),
            Err(_) => group_update(
                set,
                l,
                proj,
                xs,
                *n,
                &mut ys,
                out_dim,
                &mut LoraScratch::default(),
            ),
        });
    });
}

thread_local! {
    static SCRATCH: std::cell::RefCell<LoraScratch> = std::cell::RefCell::new(LoraScratch::default());
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
