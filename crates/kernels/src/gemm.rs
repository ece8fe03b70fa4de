//! Matrix-matrix product for batches (prompt processing) with AVX-512 VNNI.
//!
//! Weights are repacked, one panel of 16 rows at a time, into unsigned bytes laid out
//! `[k / 4][row][k % 4]`, so that one `vpdpbusd` with a broadcast of 4 activation bytes
//! advances 16 rows' exact integer dot products at once, with no horizontal reduction.
//! A panel is unpacked once per call and reused for every activation row of the batch
//! (unpacking is in `gemm_unpack.rs`).
//!
//! The numerics are those of the scalar dot products, bit for bit: each (sub-)block's
//! integer sum is exact (integer arithmetic in any order), the block's float term is
//! computed with the same operations in the same order, and block terms go to the same
//! four accumulators (`Acc4`: block `ib` to lane `ib % 4`, result `(a0 + a1) + (a2 + a3)`),
//! here one 16-row vector per lane. So a row's result does not depend on the batch size or
//! on which path computed it.

use crate::blocks::*;
use crate::TensorType;
use std::arch::x86_64::*;
use std::cell::RefCell;

#[path = "gemm_lowbit.rs"]
mod lowbit;
#[path = "gemm_unpack.rs"]
mod unpack;
use unpack::unpack_panel;

/// Rows per panel (one zmm of i32 / f32 lanes).
pub const PR: usize = 16;
/// Activation rows processed together against one panel: eight independent `vpdpbusd`
/// chains per weight load. Four were enough on AMD Zen 4 (one `vpdpbusd` a cycle, latency
/// 4); Intel's server cores issue two a cycle with latency 5 and need the eight (+10-12 %
/// on the kernel benchmark there, unchanged on Zen 4).
const C: usize = 8;
/// The 32-element block types take four: their float work per block and row is eight
/// times the K-quants' per element, and eight rows' accumulators spill (Q8_0 lost 5 %).
const C_B32: usize = 4;

/// Whether the CPU has what this module needs.
pub fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    })
}

/// Weight types this module handles.
pub fn supported(ty: TensorType) -> bool {
    use TensorType::*;
    matches!(
        ty,
        Q8_0 | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q4_K
            | Q5_K
            | Q6_K
            | Q2_K
            | Q3_K
            | IQ4_NL
            | IQ4_XS
            | MXFP4
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// 32-element blocks; `off` is subtracted from the unsigned quants (times sum(y)),
    /// `min` adds `m * s` (Q4_1 / Q5_1 against Q8_1).
    B32 { off: i32, min: bool },
    /// Q4_K / Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins.
    K4,
    /// IQ4_XS: 8 sub-blocks of 32 with signed scales (in `sc`); quants
    /// stored + 128.
    KX,
    /// Q6_K, Q3_K: 16 groups of 16 with signed scales; quants stored + `1 << shift`.
    K6 { shift: u32 },
    /// Q2_K: 16 groups of 16 with scales (`sc`) and mins (paired, in `sc_pairs`).
    K2,
}

fn kind(ty: TensorType) -> Kind {
    use TensorType::*;
    match ty {
        Q8_0 => Kind::B32 {
            off: 128,
            min: false,
        },
        Q4_0 => Kind::B32 { off: 8, min: false },
        Q5_0 => Kind::B32 {
            off: 16,
            min: false,
        },
        Q4_1 | Q5_1 => Kind::B32 { off: 0, min: true },
        IQ4_NL | MXFP4 => Kind::B32 {
            off: 128,
            min: false,
        },
        Q4_K | Q5_K => Kind::K4,
        IQ4_XS => Kind::KX,
        Q6_K => Kind::K6 { shift: 5 },
        Q3_K => Kind::K6 { shift: 2 },
        Q2_K => Kind::K2,
        _ => unreachable!("gemm: unsupported type {ty}"),
    }
}

/// One panel of up to 16 weight rows, unpacked.
#[derive(Default)]
struct Panel {
    /// `[k / 4][16][4]` unsigned quants.
    q: Vec<u8>,
    /// Per block, 16 rows: the block scale `d` (f16 widened).
    d: Vec<f32>,
    /// Per block, 16 rows: the min `m` (B32 with min) or `dmin` (K4).
    m: Vec<f32>,
    /// K-quants, per block, per sub-block, 16 rows: integer scales.
    sc: Vec<i32>,
    /// K4: per block, per pair of sub-blocks, 16 rows: the two mins as i16 pairs.
    mn: Vec<i32>,
    /// K2: per block, per pair of groups, 16 rows: the two mins as i16 pairs.
    sc_pairs: Vec<i32>,
    /// B32: the raw f16 bits of `d` and `m`, gathered before widening them all at once.
    d16: Vec<u16>,
    m16: Vec<u16>,
}

/// Per activation row, per block: what the float terms need.
struct Act<'a> {
    /// The quantized activations, `arb` bytes per row.
    q: &'a [u8],
    arb: usize,
    /// The quants of each group of [`C`] consecutive rows (the last partial group left
    /// out), interleaved 4 bytes at a time: `[group][k / 4][row in group][k % 4]`, so that
    /// one pointer and constant offsets reach all the group's broadcasts.
    qi: Vec<u8>,
    cols: usize,
    /// Byte offset of the quants in a block, and block size in bytes / elements.
    qoff: usize,
    bbytes: usize,
    belems: usize,
    /// `[row][block]`: activation scale.
    d: Vec<f32>,
    /// `[row][block]`: B32 min term `s` (Q8_1).
    s: Vec<f32>,
    /// `[row][block]`: B32 offset correction `off * sum(y)`.
    offsum: Vec<i32>,
    /// K4: `[row][block][4]` sums of pairs of bsums, two (sub-blocks 2j, 2j + 1) packed as
    /// i16x2; K2: `[row][block][8]` bsum pairs packed as i16x2.
    bs: Vec<i32>,
    /// KX: `[row][block][8]` the weight offset's share of each 32-element sub-block's sum,
    /// `128 * sum(y)`; K6: `[row][block][16]`, per group of 16, `sum(y) << shift`. It is
    /// taken out of the integer sum before the sub-block scale multiplies it, which costs
    /// one subtraction instead of a separate scaled correction sum.
    corr: Vec<i32>,
    /// `corr` for the interleaved groups: `[group][block][sub-block][row in group]`.
    corr_i: Vec<i32>,
}

thread_local! {
    static PANELS: RefCell<Vec<Panel>> = const { RefCell::new(Vec::new()) };
}

/// Unpacked panels kept at once per thread (bytes): they share one pass over the
/// activations. Half of a 2 MiB L2, leaving room for the activations streaming past.
const PASS_BYTES: usize = 512 * 1024;
/// At most this many panels per pass: past it the activations' reads are already few.
const MAX_PASS_PANELS: usize = 8;
/// Tasks a product is split into, per thread.
const TASKS_PER_THREAD: usize = 8;

/// `y[b * rows + r]` for the rows `0..rows / 16 * 16` (whole panels); the caller does the
/// rest. `act` holds `batch` activation rows quantized to the vec-dot type, `arb` bytes each.
///
/// A prompt's activations (up to 512 rows of `cols` bytes) outgrow L2, and beyond L2 is
/// memory on a shared machine, so several panels are unpacked and each group of activation
/// rows runs against all of them before the next group is read: the activations are read
/// once per pass rather than once per panel.
///
/// # Safety
/// [`available`] must be true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_panels(
    ty: TensorType,
    w: &[u8],
    wrb: usize,
    rows: usize,
    cols: usize,
    act: &[u8],
    arb: usize,
    batch: usize,
    y: &mut [f32],
) {
    let kind = kind(ty);
    let a = prepare_act(kind, act, arb, batch, cols);
    let npanels = rows / PR;
    let yp = SyncPtr(y.as_mut_ptr());
    let threads = verity_pool::num_threads().max(1);
    let pass = (PASS_BYTES / (PR * cols)).clamp(1, MAX_PASS_PANELS);
    // Each task takes whole passes of consecutive panels, about eight tasks per thread: few
    // enough that most passes have a next one to prefetch, many enough that a thread slowed
    // by other work on its core leaves the rest to the others instead of finishing last.
    let per_task = npanels
        .div_ceil(threads * TASKS_PER_THREAD)
        .next_multiple_of(pass);
    verity_pool::for_each(npanels.div_ceil(per_task), &|t| {
        let yp = &yp;
        PANELS.with(|cell| {
            let panels = &mut *cell.borrow_mut();
            let end = ((t + 1) * per_task).min(npanels);
            let mut first = t * per_task;
            while first < end {
                let n = pass.min(end - first);
                if panels.len() < n {
                    panels.resize_with(n, Panel::default);
                }
                for (j, p) in panels[..n].iter_mut().enumerate() {
                    let r0 = (first + j) * PR;
                    unpack_panel(ty, kind, &w[r0 * wrb..(r0 + PR) * wrb], wrb, cols, p);
                }
                // Fetch the next pass's weights while this one computes, a slice per group
                // of activation rows, so the loads spread over the pass instead of stalling
                // it; beyond L2 is memory, and the panel walk alone keeps too few in flight.
                let next = &w[(first + n) * PR * wrb..(first + n + pass).min(end) * PR * wrb];
                let lines_per_row = next.len().div_ceil(64 * batch.max(1));
                let mut line = 0;
                let mut fetch = |rows: usize| {
                    for _ in 0..lines_per_row * rows {
                        if line * 64 < next.len() {
                            _mm_prefetch::<_MM_HINT_T1>(next.as_ptr().add(line * 64) as *const i8);
                        }
                        line += 1;
                    }
                };
                // SAFETY: each task writes only its own panels' rows of every batch row,
                // and those ranges are disjoint between tasks.
                let this_pass = (&panels[..n], first * PR);
                let mut b = 0;
                if a.qi.is_empty() {
                    while b + C_B32 <= batch {
                        fetch(C_B32);
                        run_pass::<C_B32>(kind, this_pass, &a, b, cols, yp.0, rows);
                        b += C_B32;
                    }
                } else {
                    while b + C <= batch {
                        fetch(C);
                        run_pass::<C>(kind, this_pass, &a, b, cols, yp.0, rows);
                        b += C;
                    }
                }
                while b < batch {
                    fetch(1);
                    run_pass::<1>(kind, this_pass, &a, b, cols, yp.0, rows);
                    b += 1;
                }
                first += n;
            }
        });
    });
}

struct SyncPtr(*mut f32);
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

fn prepare_act<'a>(kind: Kind, q: &'a [u8], arb: usize, batch: usize, cols: usize) -> Act<'a> {
    let (qoff, bbytes, belems) = match kind {
        Kind::B32 { min: false, .. } => (2, Q8_0_BYTES, QK),
        Kind::B32 { min: true, .. } => (4, Q8_1_BYTES, QK),
        _ => (Q8_K_QS, Q8_K_BYTES, QK_K),
    };
    let nb = cols / belems;
    let mut a = Act {
        q,
        arb,
        qi: Vec::new(),
        cols,
        qoff,
        bbytes,
        belems,
        d: Vec::with_capacity(batch * nb),
        s: Vec::new(),
        offsum: Vec::new(),
        bs: Vec::new(),
        corr: Vec::new(),
        corr_i: Vec::new(),
    };
    for b in 0..batch {
        let row = &q[b * arb..(b + 1) * arb];
        for ib in 0..nb {
            let blk = &row[ib * bbytes..(ib + 1) * bbytes];
            match kind {
                Kind::B32 { off, min } => {
                    a.d.push(rd_f16(blk, 0));
                    if min {
                        a.s.push(rd_f16(blk, 2));
                    }
                    if off != 0 {
                        let s: i32 = blk[qoff..qoff + QK].iter().map(|&v| v as i8 as i32).sum();
                        a.offsum.push(off * s);
                    }
                }
                Kind::K4 => {
                    a.d.push(rd_f32(blk, 0));
                    // Sums of pairs of bsums (|s| <= 32 * 127, an i16), two per i32.
                    let s = |j: usize| {
                        (rd_i16(blk, Q8_K_BSUMS + 4 * j) as i32
                            + rd_i16(blk, Q8_K_BSUMS + 4 * j + 2) as i32)
                            as u16 as u32
                    };
                    for jp in 0..4 {
                        a.bs.push((s(2 * jp) | (s(2 * jp + 1) << 16)) as i32);
                    }
                }
                Kind::KX => {
                    a.d.push(rd_f32(blk, 0));
                    for j in 0..8 {
                        let s = rd_i16(blk, Q8_K_BSUMS + 4 * j) as i32
                            + rd_i16(blk, Q8_K_BSUMS + 4 * j + 2) as i32;
                        a.corr.push(128 * s);
                    }
                }
                Kind::K6 { shift } => {
                    a.d.push(rd_f32(blk, 0));
                    for g in 0..16 {
                        a.corr
                            .push((rd_i16(blk, Q8_K_BSUMS + 2 * g) as i32) << shift);
                    }
                }
                Kind::K2 => {
                    a.d.push(rd_f32(blk, 0));
                    for j in 0..8 {
                        let lo = rd_i16(blk, Q8_K_BSUMS + 4 * j) as u16 as u32;
                        let hi = rd_i16(blk, Q8_K_BSUMS + 4 * j + 2) as u16 as u32;
                        a.bs.push((lo | (hi << 16)) as i32);
                    }
                }
            }
        }
    }
    // Only the sub-block kinds take C rows at a time (see `C_B32`).
    let groups = if matches!(kind, Kind::B32 { .. }) {
        0
    } else {
        batch / C
    };
    a.qi.resize(groups * cols * C, 0);
    verity_pool::for_each_chunk_mut(&mut a.qi, cols * C, &|g, out| {
        for c in 0..C {
            let row = &q[(g * C + c) * arb..(g * C + c + 1) * arb];
            for ib in 0..nb {
                let quants = &row[ib * bbytes + qoff..][..belems];
                for (i, v) in quants.chunks_exact(4).enumerate() {
                    let at = (ib * belems + 4 * i) * C + 4 * c;
                    out[at..at + 4].copy_from_slice(v);
                }
            }
        }
    });
    if !a.corr.is_empty() {
        let per_row = a.corr.len() / batch;
        a.corr_i.resize(groups * per_row * C, 0);
        for g in 0..groups {
            for c in 0..C {
                let src = &a.corr[(g * C + c) * per_row..][..per_row];
                for (i, &v) in src.iter().enumerate() {
                    a.corr_i[(g * per_row + i) * C + c] = v;
                }
            }
        }
    }
    a
}

#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m512i {
    _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
}

/// Where `N` activation rows' quants are: one pointer per row, or (`N` = [`C`]) one
/// pointer into [`Act::qi`], row `c`'s 4 bytes of element `k` at `k * C + 4 c`.
type Rows<const N: usize> = [*const u8; N];

/// Exact dot products of 16 rows with `L` (multiple of 4) activation bytes of each of `N`
/// rows at `a`, for the panel quants starting at element `k0`: each weight vector is loaded
/// once for all `N` activation rows.
#[inline(always)]
unsafe fn dotn<const N: usize, const L: usize>(
    pq: *const u8,
    k0: usize,
    a: &Rows<N>,
) -> [__m512i; N] {
    let mut s = [_mm512_setzero_si512(); N];
    let mut k = 0;
    while k < L {
        let w = _mm512_loadu_si512(pq.add((k0 + k) * PR) as *const _);
        for c in 0..N {
            let p = if N == C {
                a[0].add(k * C + 4 * c)
            } else {
                a[c].add(k)
            };
            s[c] = _mm512_dpbusd_epi32(s[c], w, bcast4(p));
        }
        k += 4;
    }
    s
}

/// [`run`] for each panel of a pass: `(panels, first weight row)`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run_pass<const N: usize>(
    kind: Kind,
    (panels, r0): (&[Panel], usize),
    a: &Act,
    b0: usize,
    cols: usize,
    y: *mut f32,
    rows: usize,
) {
    for (j, p) in panels.iter().enumerate() {
        run::<N>(kind, p, a, b0, cols, y, rows, r0 + j * PR);
    }
}

/// Activation rows `b0..b0 + N` against panel `p`, rows `r0..r0 + 16` of `y`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run<const N: usize>(
    kind: Kind,
    p: &Panel,
    a: &Act,
    b0: usize,
    cols: usize,
    y: *mut f32,
    rows: usize,
    r0: usize,
) {
    let nb = cols / a.belems;
    let pq = p.q.as_ptr();
    let mut acc = [[_mm512_setzero_ps(); 4]; N];
    let ai = |c: usize, ib: usize| (b0 + c) * nb + ib;
    let aptr = |ib: usize, add: usize| -> Rows<N> {
        if N == C {
            let group = a.qi.as_ptr().add(b0 / C * a.cols * C);
            [group.add((ib * a.belems + add) * C); N]
        } else {
            std::array::from_fn(|c| {
                a.q.as_ptr()
                    .add((b0 + c) * a.arb + ib * a.bbytes + a.qoff + add)
            })
        }
    };
    match kind {
        Kind::B32 { off, min } => {
            for ib in 0..nb {
                let dw = _mm512_loadu_ps(p.d.as_ptr().add(ib * PR));
                let mw = _mm512_loadu_ps(p.m.as_ptr().add(ib * PR));
                let lane = ib & 3;
                let s = dotn::<N, QK>(pq, ib * QK, &aptr(ib, 0));
                for c in 0..N {
                    let mut s = s[c];
                    if off != 0 {
                        let o = *a.offsum.get_unchecked(ai(c, ib));
                        s = _mm512_sub_epi32(s, _mm512_set1_epi32(o));
                    }
                    let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*a.d.get_unchecked(ai(c, ib))));
                    let mut v = _mm512_mul_ps(dd, _mm512_cvtepi32_ps(s));
                    if min {
                        let t = _mm512_mul_ps(mw, _mm512_set1_ps(*a.s.get_unchecked(ai(c, ib))));
                        v = _mm512_add_ps(v, t);
                    }
                    acc[c][lane] = _mm512_add_ps(acc[c][lane], v);
                }
            }
        }
        Kind::K4 => {
            for ib in 0..nb {
                let dw = _mm512_loadu_ps(p.d.as_ptr().add(ib * PR));
                let mw = _mm512_loadu_ps(p.m.as_ptr().add(ib * PR));
                let lane = ib & 3;
                let mut isum = [_mm512_setzero_si512(); N];
                for j in 0..8 {
                    let s = dotn::<N, 32>(pq, ib * QK_K + 32 * j, &aptr(ib, 32 * j));
                    let sc = _mm512_loadu_si512(p.sc.as_ptr().add((ib * 8 + j) * PR) as *const _);
                    for c in 0..N {
                        isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(s[c], sc));
                    }
                }
                let mut summ = [_mm512_setzero_si512(); N];
                for jp in 0..4 {
                    let mn = _mm512_loadu_si512(p.mn.as_ptr().add((ib * 4 + jp) * PR) as *const _);
                    for (c, sm) in summ.iter_mut().enumerate() {
                        let bs = _mm512_set1_epi32(*a.bs.get_unchecked(ai(c, ib) * 4 + jp));
                        *sm = _mm512_dpwssd_epi32(*sm, mn, bs);
                    }
                }
                for c in 0..N {
                    let yd = _mm512_set1_ps(*a.d.get_unchecked(ai(c, ib)));
                    let v1 = _mm512_mul_ps(_mm512_mul_ps(dw, yd), _mm512_cvtepi32_ps(isum[c]));
                    let v2 = _mm512_mul_ps(_mm512_mul_ps(mw, yd), _mm512_cvtepi32_ps(summ[c]));
                    acc[c][lane] = _mm512_add_ps(acc[c][lane], _mm512_sub_ps(v1, v2));
                }
            }
        }
        Kind::KX | Kind::K6 { .. } => {
            // Sub-blocks of 32 (KX) or groups of 16 (K6), each with its own signed scale.
            let (len, nsub) = if kind == Kind::KX { (32, 8) } else { (16, 16) };
            for ib in 0..nb {
                let dw = _mm512_loadu_ps(p.d.as_ptr().add(ib * PR));
                let lane = ib & 3;
                let mut isum = [_mm512_setzero_si512(); N];
                for j in 0..nsub {
                    let s = if len == 32 {
                        dotn::<N, 32>(pq, ib * QK_K + 32 * j, &aptr(ib, 32 * j))
                    } else {
                        dotn::<N, 16>(pq, ib * QK_K + 16 * j, &aptr(ib, 16 * j))
                    };
                    let sc =
                        _mm512_loadu_si512(p.sc.as_ptr().add((ib * nsub + j) * PR) as *const _);
                    let corr = if N == C {
                        a.corr_i.as_ptr().add(((b0 / C * nb + ib) * nsub + j) * C)
                    } else {
                        a.corr.as_ptr().add(ai(0, ib) * nsub + j)
                    };
                    // Row c's correction: interleaved, or a row (nb * nsub entries) apart.
                    let stride = if N == C { 1 } else { nb * nsub };
                    for c in 0..N {
                        let o = _mm512_set1_epi32(*corr.add(c * stride));
                        let t = _mm512_sub_epi32(s[c], o);
                        isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(t, sc));
                    }
                }
                for c in 0..N {
                    let yd = _mm512_set1_ps(*a.d.get_unchecked(ai(c, ib)));
                    let v = _mm512_mul_ps(_mm512_mul_ps(dw, yd), _mm512_cvtepi32_ps(isum[c]));
                    acc[c][lane] = _mm512_add_ps(acc[c][lane], v);
                }
            }
        }
        Kind::K2 => {
            for ib in 0..nb {
                let dw = _mm512_loadu_ps(p.d.as_ptr().add(ib * PR));
                let mw = _mm512_loadu_ps(p.m.as_ptr().add(ib * PR));
                let lane = ib & 3;
                let mut isum = [_mm512_setzero_si512(); N];
                for g in 0..16 {
                    let s = dotn::<N, 16>(pq, ib * QK_K + 16 * g, &aptr(ib, 16 * g));
                    let sc = _mm512_loadu_si512(p.sc.as_ptr().add((ib * 16 + g) * PR) as *const _);
                    for c in 0..N {
                        isum[c] = _mm512_add_epi32(isum[c], _mm512_mullo_epi32(s[c], sc));
                    }
                }
                for c in 0..N {
                    // `corr` is the mins' sum, sum_g m_g * bsum_g.
                    let mut corr = _mm512_setzero_si512();
                    for j in 0..8 {
                        let scp = _mm512_loadu_si512(
                            p.sc_pairs.as_ptr().add((ib * 8 + j) * PR) as *const _
                        );
                        let bs = _mm512_set1_epi32(*a.bs.get_unchecked(ai(c, ib) * 8 + j));
                        corr = _mm512_dpwssd_epi32(corr, scp, bs);
                    }
                    let yd = _mm512_set1_ps(*a.d.get_unchecked(ai(c, ib)));
                    let v1 = _mm512_mul_ps(_mm512_mul_ps(dw, yd), _mm512_cvtepi32_ps(isum[c]));
                    let v2 = _mm512_mul_ps(_mm512_mul_ps(mw, yd), _mm512_cvtepi32_ps(corr));
                    acc[c][lane] = _mm512_add_ps(acc[c][lane], _mm512_sub_ps(v1, v2));
                }
            }
        }
    }
    for (c, ac) in acc.iter().enumerate() {
        let r = _mm512_add_ps(_mm512_add_ps(ac[0], ac[1]), _mm512_add_ps(ac[2], ac[3]));
        _mm512_storeu_ps(y.add((b0 + c) * rows + r0), r);
    }
}
