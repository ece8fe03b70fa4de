//! Causal attention forward and backward for training (LoRA fine-tuning), in f32 (no f16
//! rounding anywhere).
//!
//! A micro-batch is `n` rows (tokens) of packed examples: `segments` lists each example's
//! `(start, len)`, and a row attends causally to the rows of its own segment only (with a
//! sliding window, to the last `window` of them). Query
//! and key rows arrive already rotated (RoPE is the caller's). Query head `h` uses KV head
//! `h / (n_head / n_head_kv)`.
//!
//! The engine's f32-cache attention (`attention::attention_f32_seqs`) computes each of its
//! rows with `row` below, which gives the bits the forward pass gives that row: inference
//! and training compute the same function, to the last bit.
//!
//! The backward pass is FlashAttention's: it recomputes the probabilities from the saved
//! log-sum-exp instead of storing an `n × n` matrix, block by block (64 × 64). Each
//! thread keeps a scratch buffer that grows to about `9 · len · head_dim` floats for the
//! longest segment seen (4.5 MiB at 2048 × 64); only blocks on or below the diagonal are
//! computed.
//!
//! # Determinism
//!
//! The work is split into one task per (segment, KV head). A task handles all the query
//! heads of its KV head, in ascending order, so it alone writes the `dk`/`dv` of that
//! head and segment, and every sum inside it has a fixed order that depends only on the
//! segment's length (blocks are laid out from the segment's start). Hence results are
//! bit-identical whatever the thread count, and a segment's results do not depend on the
//! other segments in the batch.
//!
//! There are no SIMD intrinsics: the loops are written so the compiler vectorises them
//! without reassociating anything (a dot product is a sum over `d` in order; lanes are
//! independent outputs). The same source is compiled for the baseline target and, chosen
//! at run time from [`crate::simd_level`], with AVX2 or AVX-512 enabled. IEEE arithmetic
//! without contraction into FMA gives the same bits on every path, only faster.

use std::cell::RefCell;

use crate::SimdLevel;

/// Head counts and size of one attention layer.
#[derive(Clone, Copy, Debug)]
pub struct TrainShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` is a multiple of it).
    pub n_head_kv: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Sliding window: a row attends to itself and the `window − 1` rows before it
    /// (Gemma's and Mistral's windowed layers); 0 attends to the whole segment.
    pub window: usize,
}

/// Rows (queries) and columns (keys) of a block.
const BLK: usize = 64;

/// The widest micro-tile (`NR`) of any instruction set.
const MAX_NR: usize = 16;

/// Head dimension padded to a whole number of micro-tile columns.
fn padded_hd(hd: usize) -> usize {
    hd.div_ceil(MAX_NR) * MAX_NR
}

/// `out[n][n_head*hd] = softmax(scale·q·kᵀ + causal segment mask)·v`, and
/// `lse[n][n_head]` = the log-sum-exp of each row's scaled scores (saved for [`backward`]).
///
/// `q`: `[n][n_head*head_dim]`; `k`, `v`: `[n][n_head_kv*head_dim]`; `segments` covers
/// `0..n` in order. Runs on the `verity_pool` workers. Panics if sizes do not match.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segments: &[(usize, usize)],
    shape: TrainShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    forward_with(
        crate::simd_level(),
        q,
        k,
        v,
        segments,
        shape,
        scale,
        out,
        lse,
    )
}

/// [`forward`] compiled for an explicit SIMD level (for tests and benchmarks); every level
/// gives the same bits.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    level: SimdLevel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    segments: &[(usize, usize)],
    shape: TrainShape,
    scale: f32,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let d = Dims::new(shape, q.len(), k.len(), v.len(), segments);
    d.check("out", out.len(), d.qd);
    d.check("lse", lse.len(), d.nh);
    let ctx = Ctx { d, q, k, v, scale };
    let (out, lse) = (Ptr(out.as_mut_ptr()), Ptr(lse.as_mut_ptr()));
    let isa = Isa::of(level);
    run_tasks(segments, d.nkv, &|seg, kvh| {
        with_scratch(|sc| fwd(isa, &ctx, Task { seg, kvh }, &out, &lse, sc))
    });
}

/// Gradients of [`forward`]: given `d_out`, fills `dq` (`[n][n_head*hd]`), `dk` and `dv`
/// (`[n][n_head_kv*hd]`). They are overwritten, not accumulated into.
///
/// `out` and `lse` are what [`forward`] returned for the same inputs. With
/// `P_ij = exp(scale·q_i·k_j − lse_i)` and `D_i = dout_i·out_i`:
/// `dS_ij = P_ij (dout_i·v_j − D_i)`, `dv_j = Σ_i P_ij dout_i`,
/// `dq_i = scale Σ_j dS_ij k_j`, `dk_j = scale Σ_i dS_ij q_i`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    segments: &[(usize, usize)],
    shape: TrainShape,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    backward_with(
        crate::simd_level(),
        q,
        k,
        v,
        out,
        lse,
        d_out,
        segments,
        shape,
        scale,
        dq,
        dk,
        dv,
    )
}

/// [`backward`] compiled for an explicit SIMD level (for tests and benchmarks); every
/// level gives the same bits.
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn backward_with(
    level: SimdLevel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    segments: &[(usize, usize)],
    shape: TrainShape,
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let d = Dims::new(shape, q.len(), k.len(), v.len(), segments);
    d.check("out", out.len(), d.qd);
    d.check("d_out", d_out.len(), d.qd);
    d.check("lse", lse.len(), d.nh);
    d.check("dq", dq.len(), d.qd);
    d.check("dk", dk.len(), d.kvd);
    d.check("dv", dv.len(), d.kvd);
    let ctx = Ctx { d, q, k, v, scale };
    let bin = BwdIn { out, lse, d_out };
    let bout = BwdOut {
        dq: Ptr(dq.as_mut_ptr()),
        dk: Ptr(dk.as_mut_ptr()),
        dv: Ptr(dv.as_mut_ptr()),
    };
    let isa = Isa::of(level);
    run_tasks(segments, d.nkv, &|seg, kvh| {
        with_scratch(|sc| bwd(isa, &ctx, &bin, Task { seg, kvh }, &bout, sc))
    });
}

// ---------------------------------------------------------------- set-up

/// Sizes derived from the shape and the inputs (checked).
#[derive(Clone, Copy)]
struct Dims {
    n: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    hdp: usize,
    group: usize,
    qd: usize,
    kvd: usize,
    /// Keys a row sees, itself included (`usize::MAX`: the whole segment).
    win: usize,
}

impl Dims {
    fn new(s: TrainShape, nq: usize, nk: usize, nv: usize, segments: &[(usize, usize)]) -> Self {
        assert!(
            s.n_head_kv > 0 && s.head_dim > 0 && s.n_head.is_multiple_of(s.n_head_kv),
            "attention_train: bad shape {s:?}"
        );
        let (qd, kvd) = (s.n_head * s.head_dim, s.n_head_kv * s.head_dim);
        assert!(
            qd > 0 && nq.is_multiple_of(qd),
            "attention_train: q is not whole rows"
        );
        let n = nq / qd;
        assert_eq!(nk, n * kvd, "attention_train: k has the wrong size");
        assert_eq!(nv, n * kvd, "attention_train: v has the wrong size");
        let mut end = 0;
        for &(start, len) in segments {
            assert_eq!(
                start, end,
                "attention_train: segments must cover 0..n in order"
            );
            end += len;
        }
        assert_eq!(end, n, "attention_train: segments must cover 0..n");
        Dims {
            n,
            nh: s.n_head,
            nkv: s.n_head_kv,
            hd: s.head_dim,
            hdp: padded_hd(s.head_dim),
            group: s.n_head / s.n_head_kv,
            qd,
            kvd,
            win: if s.window == 0 { usize::MAX } else { s.window },
        }
    }

    /// Panics unless the array `name` of `len` elements is `n` rows of `width`.
    #[track_caller]
    fn check(&self, name: &str, len: usize, width: usize) {
        assert_eq!(
            len,
            self.n * width,
            "attention_train: {name} has the wrong size"
        );
    }
}

/// The inputs every task reads.
struct Ctx<'a> {
    d: Dims,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
}

/// The extra inputs of the backward pass.
struct BwdIn<'a> {
    out: &'a [f32],
    lse: &'a [f32],
    d_out: &'a [f32],
}

/// The gradients, written by the tasks in disjoint (row, head) pieces.
struct BwdOut {
    dq: Ptr,
    dk: Ptr,
    dv: Ptr,
}

/// One task: a segment `(start, len)` and a KV head.
#[derive(Clone, Copy)]
struct Task {
    seg: (usize, usize),
    kvh: usize,
}

/// An output array shared by the tasks, each writing its own rows × heads.
struct Ptr(*mut f32);
// SAFETY: tasks only write disjoint parts of the array (see `Ptr::slice`), and the `&mut`
// it came from outlives the parallel region.
unsafe impl Sync for Ptr {}
unsafe impl Send for Ptr {}

impl Ptr {
    /// `len` elements from `off`.
    ///
    /// # Safety
    /// In bounds of the original slice, and no other live reference overlaps them.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, off: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Run `body(segment, kv_head)` for every non-empty segment and KV head on the pool.
/// Longest segments first (a task costs ~len²), so the last tasks to start are short.
fn run_tasks(
    segments: &[(usize, usize)],
    n_head_kv: usize,
    body: &(dyn Fn((usize, usize), usize) + Sync),
) {
    let mut order: Vec<usize> = (0..segments.len()).filter(|&s| segments[s].1 > 0).collect();
    order.sort_by_key(|&s| std::cmp::Reverse(segments[s].1));
    verity_pool::for_each(order.len() * n_head_kv, &|t| {
        body(segments[order[t / n_head_kv]], t % n_head_kv)
    });
}

thread_local! {
    /// Per-thread task scratch, kept between calls (it grows to the longest segment).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn with_scratch(f: impl FnOnce(&mut Vec<f32>)) {
    SCRATCH.with(|c| match c.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Split the first `sizes.iter().sum()` elements of `buf` (grown if needed) into pieces.
fn carve<const N: usize>(buf: &mut Vec<f32>, sizes: [usize; N]) -> [&mut [f32]; N] {
    let total: usize = sizes.iter().sum();
    if buf.len() < total {
        buf.resize(total, 0.0);
    }
    let mut rest = &mut buf[..total];
    sizes.map(|s| {
        let (a, b) = std::mem::take(&mut rest).split_at_mut(s);
        rest = b;
        a
    })
}

/// Which compilation of the task bodies to run.
#[derive(Clone, Copy)]
enum Isa {
    Base,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    fn of(level: SimdLevel) -> Isa {
        #[cfg(target_arch = "x86_64")]
        match crate::effective(level) {
            SimdLevel::Avx512 => return Isa::Avx512,
            SimdLevel::Avx2 => return Isa::Avx2,
            _ => {}
        }
        let _ = level;
        Isa::Base
    }
}

/// `fn $name(isa: Isa, args)`: `$task::<consts>(args)` compiled for `isa`, with the const
/// parameters given for each: the same source inlined (`$task` is `#[inline(always)]`)
/// into a function with the instruction set's target features, so it vectorises for it.
macro_rules! per_isa {
    (
        $(#[$meta:meta])*
        fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $task:ident
            { base: [$($base:literal),*], avx2: [$($avx2:literal),*], avx512: [$($avx512:literal),*] }
    ) => {
        $(#[$meta])*
        fn $name(isa: Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) {
                $task::<$($avx2),*>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                $task::<$($avx512),*>($($arg),*)
            }
            match isa {
                Isa::Base => $task::<$($base),*>($($arg),*),
                // SAFETY: `Isa::of` only picks these after run-time feature detection.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => unsafe { avx2($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}

// The task bodies, compiled once per instruction set (same source, same bits). Each
// micro-tile is eight vector accumulators (xmm, ymm, zmm): enough independent adds to
// hide their latency without spilling. Measured alternatives (AVX2 8×8, AVX-512 4×32 and
// 8×32) were slower; 8×32 was not even vectorised.

per_isa! {
    /// [`fwd_task`] for one task, tiles `<MR, NR>` per instruction set.
    fn fwd(c: &Ctx, t: Task, out: &Ptr, lse: &Ptr, sc: &mut Vec<f32>) => fwd_task
        { base: [4, 8], avx2: [4, 16], avx512: [8, 16] }
}

per_isa! {
    /// [`bwd_task`] for one task, tiles `<MR, NR>` per instruction set.
    fn bwd(c: &Ctx, b: &BwdIn, t: Task, o: &BwdOut, sc: &mut Vec<f32>) => bwd_task
        { base: [4, 8], avx2: [4, 16], avx512: [8, 16] }
}

// ---------------------------------------------------------------- forward

/// One (segment, KV head): for each of its query heads and each block of 64 queries,
/// the scores against all keys up to the block's end, a max-subtracted softmax per row,
/// then the probabilities times V.
#[inline(always)]
fn fwd_task<const MR: usize, const NR: usize>(
    c: &Ctx,
    t: Task,
    out: &Ptr,
    lse: &Ptr,
    sc: &mut Vec<f32>,
) {
    let Dims {
        nh,
        hd,
        hdp,
        group,
        qd,
        kvd,
        ..
    } = c.d;
    let ((s0, len), kvh) = (t.seg, t.kvh);
    let lp = len.div_ceil(BLK) * BLK;
    // kt: Kᵀ [hdp][lp]; vv: V [lp][hdp]; qb: a query block [BLK][hdp]; s: scores, then
    // probabilities [BLK][lp]; ob: the block's output [BLK][hdp]; inv: 1 / row sums.
    let [kt, vv, qb, s, ob, inv, pk] = carve(
        sc,
        [
            hdp * lp,
            lp * hdp,
            BLK * hdp,
            BLK * lp,
            BLK * hdp,
            BLK,
            lp.max(hdp) * NR,
        ],
    );
    // Zero padding (rows past the segment, columns past hd) keeps every block whole.
    kt.fill(0.0);
    vv.fill(0.0);
    qb.fill(0.0);
    for j in 0..len {
        let kr = &c.k[(s0 + j) * kvd + kvh * hd..][..hd];
        for (dd, &x) in kr.iter().enumerate() {
            kt[dd * lp + j] = x;
        }
        vv[j * hdp..][..hd].copy_from_slice(&c.v[(s0 + j) * kvd + kvh * hd..][..hd]);
    }
    for g in 0..group {
        let h = kvh * group + g;
        for i0 in (0..len).step_by(BLK) {
            let rows = BLK.min(len - i0);
            for r in 0..rows {
                qb[r * hdp..][..hd].copy_from_slice(&c.q[(s0 + i0 + r) * qd + h * hd..][..hd]);
            }
            for r in rows..BLK {
                qb[r * hdp..][..hd].fill(0.0);
            }
            // Keys 0..kend: the causal mask never reaches past the block's last row.
            let kend = i0 + BLK;
            gemm::<MR, NR>(BLK, kend, hdp, qb, hdp, kt, lp, s, lp, false, pk);
            for r in 0..BLK {
                let row = &mut s[r * lp..][..kend];
                if r >= rows {
                    row.fill(0.0);
                    inv[r] = 0.0;
                    continue;
                }
                let i = i0 + r;
                let (seen, masked) = row.split_at_mut(i + 1);
                masked.fill(0.0);
                // Keys before the sliding window are masked like the future ones.
                let (before, live) = seen.split_at_mut((i + 1).saturating_sub(c.d.win));
                before.fill(0.0);
                for x in live.iter_mut() {
                    *x *= c.scale;
                }
                let m = max_of(live);
                let sum = exp_shift_sum(live, m);
                // SAFETY: row s0+i0+r, head h belongs to this task alone; in bounds.
                unsafe { lse.slice((s0 + i0 + r) * nh + h, 1)[0] = m + sum.ln() as f32 };
                inv[r] = (1.0 / sum) as f32;
            }
            gemm::<MR, NR>(BLK, hdp, kend, s, lp, vv, hdp, ob, hdp, false, pk);
            for r in 0..rows {
                // SAFETY: as above, `hd` elements of head h in row s0+i0+r.
                let o = unsafe { out.slice((s0 + i0 + r) * qd + h * hd, hd) };
                for (o, &x) in o.iter_mut().zip(&ob[r * hdp..][..hd]) {
                    *o = x * inv[r];
                }
            }
        }
    }
}

// ---------------------------------------------------------------- one row (inference)

/// One query row against the keys before it, for the engine's f32-cache attention
/// ([`crate::attention::attention_f32_seqs`]): `q` holds the `group` query heads of one KV
/// head (`group · hd`), `k` and `v` the rows `0..n_keys` of the cache (`kvd` apart, this
/// KV head at `off`), and `out` receives `group · hd`.
pub(crate) struct Row<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub n_keys: usize,
    pub kvd: usize,
    pub off: usize,
    pub hd: usize,
    pub scale: f32,
    /// Each of the `group` heads' sink logit, counted in its softmax (gpt-oss).
    pub sinks: Option<&'a [f32]>,
}

/// Keys per tile of [`row_task`], in `NR`-wide columns: independent sums to hide the
/// latency of each add.
const ROW_COLS: usize = 4;

/// What [`forward`] gives the row at position `n_keys − 1` of its segment, bit for bit:
/// each score summed over the head dimension in order from zero, then scaled; the same
/// [`max_of`], [`exp_shift_sum`] and `1 / sum`; the output summed over keys in order from
/// zero, then scaled by `1 / sum`. (The tiles of [`forward`] add only exact zeros beyond
/// that: padded head columns and masked probabilities.) So the engine's f32 path computes
/// what the training forward pass computes, for any batch: a row never depends on others.
pub(crate) fn row(level: SimdLevel, r: &Row, out: &mut [f32], sc: &mut Vec<f32>) {
    row_isa(Isa::of(level), r, out, sc)
}

per_isa! {
    /// [`row_task`] with `NR` columns per instruction set.
    fn row_isa(r: &Row, out: &mut [f32], sc: &mut Vec<f32>) => row_task
        { base: [8], avx2: [8], avx512: [16] }
}

#[inline(always)]
fn row_task<const NR: usize>(r: &Row, out: &mut [f32], sc: &mut Vec<f32>) {
    let Row {
        q,
        k,
        v,
        n_keys,
        kvd,
        off,
        hd,
        scale,
        sinks,
    } = *r;
    let group = q.len() / hd;
    assert!(n_keys > 0 && k.len() >= n_keys * kvd && v.len() >= n_keys * kvd);
    assert!(off + hd <= kvd && out.len() == group * hd);
    let w = ROW_COLS * NR;
    // s: scores, then probabilities [group][n_keys]; kt: a tile of keys, transposed
    // [hd][w]; inv: 1 / row sums.
    let [s, kt, inv] = carve(sc, [group * n_keys, hd * w, group]);
    for j0 in (0..n_keys).step_by(w) {
        let nk = w.min(n_keys - j0);
        // Columns past `nk` keep stale values: each column is its own sum, and theirs are
        // never read.
        for l in 0..nk {
            let kr = &k[(j0 + l) * kvd + off..][..hd];
            for (dd, &x) in kr.iter().enumerate() {
                kt[dd * w + l] = x;
            }
        }
        for g in 0..group {
            let mut t = [[0f32; NR]; ROW_COLS];
            for (&x, kr) in q[g * hd..][..hd].iter().zip(kt.chunks_exact(w)) {
                for (tc, kc) in t.iter_mut().zip(kr.chunks_exact(NR)) {
                    let kc: &[f32; NR] = kc.try_into().unwrap();
                    for (y, &z) in tc.iter_mut().zip(kc) {
                        *y += x * z;
                    }
                }
            }
            let dst = &mut s[g * n_keys + j0..][..nk];
            for (o, &y) in dst.iter_mut().zip(t.iter().flatten()) {
                *o = y * scale;
            }
        }
    }
    for (g, iv) in inv.iter_mut().enumerate() {
        let p = &mut s[g * n_keys..][..n_keys];
        let sink = sinks.map(|s| s[g]);
        let m = sink.map_or(max_of(p), |s| max_of(p).max(s));
        let mut sum = exp_shift_sum(p, m);
        if let Some(s) = sink {
            sum += exp(s - m) as f64;
        }
        *iv = (1.0 / sum) as f32;
    }
    out.fill(0.0);
    for j in 0..n_keys {
        let vr = &v[j * kvd + off..][..hd];
        for (g, o) in out.chunks_exact_mut(hd).enumerate() {
            let p = s[g * n_keys + j];
            for (o, &x) in o.iter_mut().zip(vr) {
                *o += p * x;
            }
        }
    }
    for (o, &iv) in out.chunks_exact_mut(hd).zip(inv.iter()) {
        for o in o {
            *o *= iv;
        }
    }
}

// ---------------------------------------------------------------- backward

/// One (segment, KV head). For each query head in ascending order, for each key block `jb`
/// and each query block `ib ≥ jb` (both ascending), with keys as rows of the 64×64 tiles:
/// `Sᵀ = K·Qᵀ`, `Pᵀ`, `dPᵀ = V·dOᵀ`, `dSᵀ = scale·Pᵀ∘(dPᵀ − D)`, then `dV += Pᵀ·dO`,
/// `dK += dSᵀ·Q`, `dQ += dS·K`. So dK/dV sum over heads, then query blocks, then rows;
/// dQ over key blocks, then keys — a fixed order.
#[inline(always)]
fn bwd_task<const MR: usize, const NR: usize>(
    c: &Ctx,
    b: &BwdIn,
    t: Task,
    o: &BwdOut,
    sc: &mut Vec<f32>,
) {
    let Dims {
        nh,
        hd,
        hdp,
        group,
        qd,
        kvd,
        ..
    } = c.d;
    let ((s0, len), kvh) = (t.seg, t.kvh);
    let lp = len.div_ceil(BLK) * BLK;
    let nb = lp / BLK;
    let m = lp * hdp;
    // Row-major [lp][hdp]: kk, vv (this KV head), qq, dd (this query head's q and
    // d_out), dka, dva, dqa (gradient accumulators); transposed [hdp][lp]: qt, dt;
    // per row: ls (lse), dsum (D); tiles [BLK][BLK]: pt, dpt, ds.
    let [kk, vv, qq, dd, dka, dva, dqa, qt, dt, ls, dsum, pt, dpt, ds, pk] = carve(
        sc,
        [
            m,
            m,
            m,
            m,
            m,
            m,
            m,
            m,
            m,
            lp,
            lp,
            BLK * BLK,
            BLK * BLK,
            BLK * BLK,
            BLK.max(hdp) * NR,
        ],
    );
    for buf in [&mut *kk, &mut *vv, &mut *qq, &mut *dd, &mut *dka, &mut *dva] {
        buf.fill(0.0);
    }
    qt.fill(0.0);
    dt.fill(0.0);
    ls.fill(0.0);
    dsum.fill(0.0);
    for j in 0..len {
        let off = (s0 + j) * kvd + kvh * hd;
        kk[j * hdp..][..hd].copy_from_slice(&c.k[off..][..hd]);
        vv[j * hdp..][..hd].copy_from_slice(&c.v[off..][..hd]);
    }
    let (scale, kk, vv) = (c.scale, &*kk, &*vv);
    for g in 0..group {
        let h = kvh * group + g;
        dqa.fill(0.0);
        for i in 0..len {
            let off = (s0 + i) * qd + h * hd;
            let (qr, dr) = (&c.q[off..][..hd], &b.d_out[off..][..hd]);
            qq[i * hdp..][..hd].copy_from_slice(qr);
            dd[i * hdp..][..hd].copy_from_slice(dr);
            for dim in 0..hd {
                qt[dim * lp + i] = qr[dim];
                dt[dim * lp + i] = dr[dim];
            }
            ls[i] = b.lse[(s0 + i) * nh + h];
            dsum[i] = dot_lanes(dr, &b.out[off..][..hd]);
        }
        for jb in 0..nb {
            let (j0, kb) = (jb * BLK, &kk[jb * BLK * hdp..][..BLK * hdp]);
            for ib in jb..nb {
                let i0 = ib * BLK;
                if i0 >= (j0 + BLK - 1).saturating_add(c.d.win) {
                    break; // every query of this block and after is past the keys' window
                }
                gemm::<MR, NR>(BLK, BLK, hdp, kb, hdp, &qt[i0..], lp, pt, BLK, false, pk);
                let vb = &vv[j0 * hdp..][..BLK * hdp];
                gemm::<MR, NR>(BLK, BLK, hdp, vb, hdp, &dt[i0..], lp, dpt, BLK, false, pk);
                // Live queries of key row j: i0 + i ≥ j0 + j (causal), i0 + i < len and
                // i0 + i < j0 + j + win (the sliding window).
                let rows = BLK.min(len - i0);
                for j in 0..BLK {
                    let hi = rows.min((j0 + j).saturating_add(c.d.win).saturating_sub(i0));
                    let lo = (j0 + j).saturating_sub(i0).min(hi);
                    let (p, dp) = (&mut pt[j * BLK..][..BLK], &mut dpt[j * BLK..][..BLK]);
                    let (l, d) = (&ls[i0..][..BLK], &dsum[i0..][..BLK]);
                    for i in lo..hi {
                        let pij = exp(p[i] * scale - l[i]);
                        p[i] = pij;
                        dp[i] = pij * (dp[i] - d[i]) * scale;
                    }
                    p[..lo].fill(0.0);
                    p[hi..].fill(0.0);
                    dp[..lo].fill(0.0);
                    dp[hi..].fill(0.0);
                }
                let dvb = &mut dva[j0 * hdp..][..BLK * hdp];
                gemm::<MR, NR>(
                    BLK,
                    hdp,
                    BLK,
                    pt,
                    BLK,
                    &dd[i0 * hdp..],
                    hdp,
                    dvb,
                    hdp,
                    true,
                    pk,
                );
                let dkb = &mut dka[j0 * hdp..][..BLK * hdp];
                gemm::<MR, NR>(
                    BLK,
                    hdp,
                    BLK,
                    dpt,
                    BLK,
                    &qq[i0 * hdp..],
                    hdp,
                    dkb,
                    hdp,
                    true,
                    pk,
                );
                for j in 0..BLK {
                    for i in 0..BLK {
                        ds[i * BLK + j] = dpt[j * BLK + i];
                    }
                }
                let dqb = &mut dqa[i0 * hdp..][..BLK * hdp];
                gemm::<MR, NR>(BLK, hdp, BLK, ds, BLK, kb, hdp, dqb, hdp, true, pk);
            }
        }
        for i in 0..len {
            // SAFETY: head h of row s0+i belongs to this task alone; in bounds.
            let dst = unsafe { o.dq.slice((s0 + i) * qd + h * hd, hd) };
            dst.copy_from_slice(&dqa[i * hdp..][..hd]);
        }
    }
    for j in 0..len {
        let off = (s0 + j) * kvd + kvh * hd;
        // SAFETY: KV head kvh of row s0+j belongs to this task alone; in bounds.
        unsafe {
            o.dk.slice(off, hd).copy_from_slice(&dka[j * hdp..][..hd]);
            o.dv.slice(off, hd).copy_from_slice(&dva[j * hdp..][..hd]);
        }
    }
}

// ---------------------------------------------------------------- inner loops

/// `c[i][j] (+)= Σ_k a[i][k]·b[k][j]` for `i < m`, `j < n`, with `k` summed in order from
/// the old `c` (`acc`) or from zero. `m` and `n` are multiples of `MR` and `NR`; `pb` is
/// space for `k × NR` elements.
///
/// Each `MR × NR` tile of `c` lives in registers over the whole `k` loop: lanes are
/// independent outputs, so the compiler vectorises without reordering any sum, and every
/// element gets the same bits whatever the tile size. Each `NR`-column panel of `b` is
/// first copied to contiguous memory: `b`'s row stride is often a large power of two,
/// which would make the panel's rows collide in a few cache sets.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gemm<const MR: usize, const NR: usize>(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    acc: bool,
    pb: &mut [f32],
) {
    assert!(m.is_multiple_of(MR) && n.is_multiple_of(NR) && NR <= MAX_NR);
    if k == 0 || m == 0 || n == 0 {
        return;
    }
    assert!(a.len() >= (m - 1) * lda + k && b.len() >= (k - 1) * ldb + n);
    assert!(c.len() >= (m - 1) * ldc + n);
    let pb = &mut pb[..k * NR];
    for j0 in (0..n).step_by(NR) {
        for (dst, src) in pb.chunks_exact_mut(NR).zip(b[j0..].chunks(ldb)) {
            // Fixed-size copies: a slice copy of unknown length is a `memmove` call.
            let dst: &mut [f32; NR] = dst.try_into().unwrap();
            *dst = src[..NR].try_into().unwrap();
        }
        for i0 in (0..m).step_by(MR) {
            let mut t = [[0f32; NR]; MR];
            if acc {
                for (r, tr) in t.iter_mut().enumerate() {
                    *tr = c[(i0 + r) * ldc + j0..][..NR].try_into().unwrap();
                }
            }
            let ap = a[i0 * lda..].as_ptr();
            for (kk, bv) in pb.chunks_exact(NR).enumerate() {
                let bv: &[f32; NR] = bv.try_into().unwrap();
                for (r, tr) in t.iter_mut().enumerate() {
                    // SAFETY: (i0 + r) * lda + kk ≤ (m - 1) * lda + k - 1 < a.len()
                    // (asserted above). Unchecked because the checks, one per row and
                    // step, cost as much as the arithmetic.
                    let x = unsafe { *ap.add(r * lda + kk) };
                    for (y, &z) in tr.iter_mut().zip(bv) {
                        *y += x * z;
                    }
                }
            }
            for (r, tr) in t.iter().enumerate() {
                let dst: &mut [f32; NR] = (&mut c[(i0 + r) * ldc + j0..][..NR]).try_into().unwrap();
                *dst = *tr;
            }
        }
    }
}

/// `Σ a[d]·b[d]` in eight lanes (`d mod 8`), added lane 0 to 7, then the tail: a fixed
/// order that vectorises (a single running sum would wait on each add).
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0f32;
    for a in acc {
        s += a;
    }
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The largest element (lane-wise, then across lanes: `max` is exact, so the grouping
/// cannot change the result).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 8];
    let mut chunks = x.chunks_exact(8);
    for ch in &mut chunks {
        for (m, &v) in m.iter_mut().zip(ch) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut r = f32::NEG_INFINITY;
    for &v in m.iter().chain(chunks.remainder()) {
        r = if v > r { v } else { r };
    }
    r
}

/// `x[j] = exp(x[j] − m)` and their sum, in f64 (eight lanes in a fixed order).
#[inline(always)]
fn exp_shift_sum(x: &mut [f32], m: f32) -> f64 {
    let mut acc = [0f64; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for ch in &mut chunks {
        for (a, v) in acc.iter_mut().zip(ch.iter_mut()) {
            *v = exp(*v - m);
            *a += *v as f64;
        }
    }
    let mut s = 0f64;
    for a in acc {
        s += a;
    }
    for v in chunks.into_remainder() {
        *v = exp(*v - m);
        s += *v as f64;
    }
    s
}

/// `e^x` for the softmax (x ≤ ~0 here), within ~2 ulp, in plain f32 arithmetic so that it
/// vectorises and gives the same bits everywhere: `e^x = 2^n · e^f` with `n` the nearest
/// integer to `x / ln 2` and `|f| ≤ ln 2 / 2`, `e^f` by Cephes' `expf` polynomial. Inputs
/// below −87 give `e^−87` (≈ 1.6e-38) rather than smaller values, which is harmless beside
/// a softmax's largest term of 1.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // 1.5 · 2^23: adding it rounds to an integer that sits in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    const MAGIC_BITS: i32 = 0x4B40_0000;
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let r = x * std::f32::consts::LOG2_E + MAGIC;
    let n = r - MAGIC;
    let ni = r.to_bits() as i32 - MAGIC_BITS;
    // ln 2 split in two (the high part, 0.693359375, has 9 bits, so n · hi is exact).
    let f = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let z = f * f;
    let p = ((((1.987_569_1e-4 * f + 1.398_199_9e-3) * f + 8.333_452e-3) * f + 4.166_579_6e-2) * f
        + 0.166_666_66)
        * f
        + 0.5;
    let e = p * z + f + 1.0;
    e * f32::from_bits(((ni + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 10.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
    }
}
