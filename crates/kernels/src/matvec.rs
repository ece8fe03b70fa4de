//! Several batch-1 products of one activation vector in one parallel region.
//!
//! Decoding a token runs a few dozen matrix-vector products a layer, and each
//! [`crate::matmul`] call is a parallel region that ends when its slowest thread does. The
//! query, key and value projections (or an FFN's gate and up) read the same input, so
//! their rows can be shared out as one set of tasks: one wait instead of three, and the
//! activation is quantized once per vec-dot type instead of once per product.

use std::cell::RefCell;

use crate::{
    act_scales, activation_quantizer, batch1_rows, batch1_rows_per_task, dot_kernel, effective,
    scratch_slice, simd_level, vec_dot_type, TensorType, WeightView,
};

/// Most products one call takes.
pub const MAX_PRODUCTS: usize = 8;

/// The input quantized for one vec-dot type, kept between calls so decoding allocates
/// nothing.
#[derive(Default)]
struct Quantized {
    ty: Option<TensorType>,
    act: Vec<u8>,
    scl: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Vec<Quantized>> = const { RefCell::new(Vec::new()) };
}

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint ranges of the outputs (see `matvec_many`).
unsafe impl Sync for OutPtr {}

/// `ys[i] = ws[i] · x` for one activation row `x`, in one parallel region. Each result is
/// bit for bit what [`crate::matmul`] gives for that product alone (the same row dot
/// products on the same quantized activation).
///
/// Panics if a length does not match its matrix, as [`crate::matmul`] does, or given more
/// than [`MAX_PRODUCTS`] products.
pub fn matvec_many(ws: &[WeightView], x: &[f32], ys: &mut [&mut [f32]]) {
    let n = ws.len();
    assert!(
        n == ys.len() && n <= MAX_PRODUCTS,
        "matvec_many: {n} matrices, {} outputs",
        ys.len()
    );
    let level = effective(simd_level());
    SCRATCH.with(|cell| {
        let mut owned = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let quantized = match &mut borrowed {
            Ok(q) => &mut **q,
            Err(_) => &mut owned,
        };
        quantized.iter_mut().for_each(|q| q.ty = None);
        // Which quantized input each product reads.
        let mut input = [0usize; MAX_PRODUCTS];
        for (i, w) in ws.iter().enumerate() {
            w.check();
            assert!(
                crate::matmul_supported(w.ty),
                "matmul: {} is not a weight type",
                w.ty
            );
            assert_eq!(
                x.len(),
                w.cols,
                "matmul: x has {} elements, want 1x{}",
                x.len(),
                w.cols
            );
            assert_eq!(
                ys[i].len(),
                w.rows,
                "matmul: y has {} elements, want 1x{}",
                ys[i].len(),
                w.rows
            );
            let vdt = vec_dot_type(w.ty);
            if let Some(j) = quantized.iter().position(|q| q.ty == Some(vdt)) {
                input[i] = j;
                continue;
            }
            let j = quantized
                .iter()
                .position(|q| q.ty.is_none())
                .unwrap_or_else(|| {
                    quantized.push(Quantized::default());
                    quantized.len() - 1
                });
            let q = &mut quantized[j];
            q.ty = Some(vdt);
            let act = scratch_slice(
                &mut q.act,
                vdt.row_bytes(w.cols).expect("activation row size"),
            );
            q.scl.clear();
            if !x.is_empty() {
                activation_quantizer(vdt).expect("vec-dot type is an activation type")(x, act);
                act_scales(vdt, act, &mut q.scl);
            }
            input[i] = j;
        }
        // Tasks: product i's rows in runs of `per_task[i]`, as `matmul` splits one product.
        let threads = verity_pool::num_threads().max(1);
        let mut per_task = [0usize; MAX_PRODUCTS];
        let mut first_task = [0usize; MAX_PRODUCTS + 1];
        for (i, w) in ws.iter().enumerate() {
            per_task[i] = batch1_rows_per_task(w.rows, w.row_bytes(), threads);
            first_task[i + 1] = first_task[i] + w.rows.div_ceil(per_task[i]);
        }
        let outs: [OutPtr; MAX_PRODUCTS] = std::array::from_fn(|i| {
            OutPtr(
                ys.get_mut(i)
                    .map_or(std::ptr::null_mut(), |y| y.as_mut_ptr()),
            )
        });
        let quantized = &*quantized;
        verity_pool::for_each(first_task[n], &|t| {
            let i = first_task[..n].partition_point(|&f| f <= t) - 1;
            let w = &ws[i];
            let r0 = (t - first_task[i]) * per_task[i];
            let r1 = (r0 + per_task[i]).min(w.rows);
            // SAFETY: task t alone writes rows r0..r1 of product i's output, which has
            // w.rows elements (checked above) and outlives this call.
            let y = unsafe { std::slice::from_raw_parts_mut(outs[i].0.add(r0), r1 - r0) };
            if w.cols == 0 {
                y.fill(0.0);
                return;
            }
            let q = &quantized[input[i]];
            let act = &q.act[..vec_dot_type(w.ty).row_bytes(w.cols).expect("row size")];
            batch1_rows(dot_kernel(w.ty, level), w, r0, act, &q.scl, y);
        });
    });
}
