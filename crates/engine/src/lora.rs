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
    for (r0, n, set) in groups {
        let (r0, n) = (*r0, *n);
        let xs = &x[r0 * in_dim..(r0 + n) * in_dim];
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
            for (dst, &src) in y[r0 * out_dim..(r0 + n) * out_dim].iter_mut().zip(&s.u) {
                *dst += scale * src;
            }
        }
    }
}
