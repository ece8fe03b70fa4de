//! Matrix-matrix product for batches (prompt processing) with AVX-512 VNNI.
//!
//! Weights are repacked, one panel of 16 rows at a time, into unsigned bytes laid out
//! `[k / 4][row][k % 4]`, so that one `vpdpbusd` with a broadcast of 4 activation bytes
//! advances 16 rows' exact integer dot products at once, with no horizontal reduction.
//! A panel is unpacked once per call and reused for every activation row of the batch.
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

/// Rows per panel (one zmm of i32 / f32 lanes).
pub const PR: usize = 16;
/// How many panels ahead of the one being computed its weights are prefetched.
const PREFETCH_PANELS: usize = 1;
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
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
}

/// `y[b * rows + r]` for the rows `0..rows / 16 * 16` (whole panels); the caller does the
/// rest. `act` holds `batch` activation rows quantized to the vec-dot type, `arb` bytes each.
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
    // A few tasks per thread; each takes consecutive panels.
    let per_task = npanels.div_ceil(threads * 2).max(1);
    verity_pool::for_each(npanels.div_ceil(per_task), &|t| {
        let yp = &yp;
        PANEL.with(|cell| {
            let p = &mut *cell.borrow_mut();
            for pi in t * per_task..((t + 1) * per_task).min(npanels) {
                let r0 = pi * PR;
                unpack_panel(ty, kind, &w[r0 * wrb..(r0 + PR) * wrb], wrb, cols, p);
                // Start fetching the next panel's weights while this one computes: the
                // panel walk alone does not keep enough loads in flight.
                if pi + PREFETCH_PANELS < npanels {
                    let r1 = r0 + PREFETCH_PANELS * PR;
                    let next = w[r1 * wrb..(r1 + PR) * wrb].as_ptr();
                    let mut off = 0;
                    while off < PR * wrb {
                        _mm_prefetch::<_MM_HINT_T0>(next.add(off) as *const i8);
                        off += 64;
                    }
                }
                // SAFETY: each task writes only its own rows r0..r0+16 of every
                // batch row, and those ranges are disjoint between tasks.
                let mut b = 0;
                if a.qi.is_empty() {
                    while b + C_B32 <= batch {
                        run::<C_B32>(kind, p, &a, b, cols, yp.0, rows, r0);
                        b += C_B32;
                    }
                } else {
                    while b + C <= batch {
                        run::<C>(kind, p, &a, b, cols, yp.0, rows, r0);
                        b += C;
                    }
                }
                while b < batch {
                    run::<1>(kind, p, &a, b, cols, yp.0, rows, r0);
                    b += 1;
                }
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

/// Unpack 16 weight rows into `p`.
fn unpack_panel(ty: TensorType, kind: Kind, w: &[u8], wrb: usize, cols: usize, p: &mut Panel) {
    use TensorType::*;
    p.q.resize(cols * PR, 0);
    let belems = if matches!(kind, Kind::B32 { .. }) {
        QK
    } else {
        QK_K
    };
    let nb = cols / belems;
    p.d.resize(nb * PR, 0.0);
    p.m.resize(nb * PR, 0.0);
    match kind {
        Kind::K4 => {
            p.sc.resize(nb * 8 * PR, 0);
            p.mn.resize(nb * 4 * PR, 0);
        }
        Kind::KX => p.sc.resize(nb * 8 * PR, 0),
        Kind::K6 { .. } => p.sc.resize(nb * 16 * PR, 0),
        Kind::K2 => {
            p.sc.resize(nb * 16 * PR, 0);
            p.sc_pairs.resize(nb * 8 * PR, 0);
        }
        Kind::B32 { .. } => {}
    }
    assert!(w.len() >= (PR - 1) * wrb + ty.row_bytes(cols).unwrap());
    if let Kind::B32 { min, .. } = kind {
        // The f16 scale bits (MXFP4: the E8M0 byte) are gathered while the quants are
        // unpacked (one pass over the weights), then widened 16 at a time.
        p.d16.resize(nb * PR, 0);
        p.m16.resize(nb * PR, 0);
        // SAFETY: `available()` was checked before any panel work; the rows were checked
        // above, `p.q` holds `cols * PR` bytes and `d16` / `m16` `nb * PR` entries.
        unsafe {
            let m16 = if min {
                p.m16.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            };
            unpack_quants(
                ty,
                w.as_ptr(),
                wrb,
                cols,
                p.q.as_mut_ptr(),
                p.d16.as_mut_ptr(),
                m16,
            );
            if ty == MXFP4 {
                for (d, &e) in p.d.iter_mut().zip(&p.d16) {
                    *d = crate::lowbit::e8m0_half(e as u8);
                }
            } else {
                widen_f16(&p.d16, &mut p.d);
            }
            if min {
                widen_f16(&p.m16, &mut p.m);
            }
        }
        return;
    }
    for r in 0..PR {
        let row = &w[r * wrb..(r + 1) * wrb];
        for ib in 0..nb {
            match ty {
                Q8_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q8_0_BYTES..], 0),
                Q4_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q4_0_BYTES..], 0),
                Q5_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q5_0_BYTES..], 0),
                Q4_1 | Q5_1 => {
                    let bytes = if ty == Q4_1 { Q4_1_BYTES } else { Q5_1_BYTES };
                    let x = &row[ib * bytes..(ib + 1) * bytes];
                    p.d[ib * PR + r] = rd_f16(x, 0);
                    p.m[ib * PR + r] = rd_f16(x, 2);
                }
                Q4_K | Q5_K => {
                    let bytes = if ty == Q4_K { Q4_K_BYTES } else { Q5_K_BYTES };
                    let x = &row[ib * bytes..(ib + 1) * bytes];
                    p.d[ib * PR + r] = rd_f16(x, 0);
                    p.m[ib * PR + r] = rd_f16(x, 2);
                    let (sc, mn) = scales_mins_k4(&x[4..16]);
                    for (j, &v) in sc.iter().enumerate() {
                        p.sc[(ib * 8 + j) * PR + r] = v as i32;
                    }
                    for jp in 0..4 {
                        p.mn[(ib * 4 + jp) * PR + r] =
                            mn[2 * jp] as i32 | ((mn[2 * jp + 1] as i32) << 16);
                    }
                }
                Q6_K => {
                    let x = &row[ib * Q6_K_BYTES..(ib + 1) * Q6_K_BYTES];
                    p.d[ib * PR + r] = rd_f16(x, 208);
                    for g in 0..16 {
                        p.sc[(ib * 16 + g) * PR + r] = (x[192 + g] as i8) as i32;
                    }
                }
                _ => lowbit::block_scales(ty, &row[ib * ty.block_bytes()..], ib, r, p),
            }
        }
    }
    assert!(w.len() >= (PR - 1) * wrb + ty.row_bytes(cols).unwrap());
    // SAFETY: `available()` was checked before any panel work; the weight rows were
    // checked above and `p.q` holds `cols * PR` bytes.
    unsafe {
        unpack_quants(
            ty,
            w.as_ptr(),
            wrb,
            cols,
            p.q.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// `dst[i] = src[i]` widened from f16 bits (same length; a multiple of 16).
#[target_feature(enable = "avx2,f16c,avx512f")]
unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (s, d) in src.chunks_exact(PR).zip(dst.chunks_exact_mut(PR)) {
        let h = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
        _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
    }
}

/// The unsigned quants of weight row `r`'s 32-element chunk `kc` (elements
/// `32 kc .. 32 kc + 32`), as the panel stores them (see [`Kind`] for the offsets).
#[inline(always)]
unsafe fn chunk_vals(ty: TensorType, row: *const u8, kc: usize) -> __m256i {
    use TensorType::*;
    let m4 = _mm256_set1_epi8(0x0F);
    let ld = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
    let nib = |p: *const u8| {
        let t = _mm_loadu_si128(p as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4)
    };
    // Byte j = 0x10 if bit j of `bits` is set.
    let bit4 = |bits: u32| {
        let m = _mm256_movm_epi8(bits);
        _mm256_and_si256(m, _mm256_set1_epi8(0x10))
    };
    match ty {
        Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => lowbit::chunk_vals(ty, row, kc),
        Q8_0 => _mm256_xor_si256(
            ld(row.add(kc * Q8_0_BYTES + 2)),
            _mm256_set1_epi8(0x80u8 as i8),
        ),
        Q4_0 => nib(row.add(kc * Q4_0_BYTES + 2)),
        Q4_1 => nib(row.add(kc * Q4_1_BYTES + 4)),
        Q5_0 | Q5_1 => {
            let (bytes, qh, qs) = if ty == Q5_0 {
                (Q5_0_BYTES, 2, 6)
            } else {
                (Q5_1_BYTES, 4, 8)
            };
            let x = row.add(kc * bytes);
            let h = std::ptr::read_unaligned(x.add(qh) as *const u32);
            _mm256_or_si256(nib(x.add(qs)), bit4(h))
        }
        Q4_K | Q5_K => {
            let (ib, j) = (kc / 8, kc % 8);
            let bytes = if ty == Q4_K { Q4_K_BYTES } else { Q5_K_BYTES };
            let x = row.add(ib * bytes);
            let qs = if ty == Q4_K { x.add(16) } else { x.add(48) };
            let q = ld(qs.add(32 * (j / 2)));
            let q = if j % 2 == 0 {
                q
            } else {
                _mm256_srli_epi16(q, 4)
            };
            let v = _mm256_and_si256(q, m4);
            if ty == Q4_K {
                v
            } else {
                let h = _mm256_srl_epi16(ld(x.add(16)), _mm_cvtsi32_si128(j as i32));
                let h = _mm256_and_si256(h, _mm256_set1_epi8(1));
                _mm256_or_si256(v, _mm256_slli_epi16(h, 4))
            }
        }
        _ => {
            // Q6_K: chunk c = 4h + k of a block.
            let (ib, c) = (kc / 8, kc % 8);
            let (h, k) = (c / 4, c % 4);
            let x = row.add(ib * Q6_K_BYTES);
            let ql = ld(x.add(64 * h + 32 * (k % 2)));
            let ql = if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
            let qh = _mm256_srl_epi16(ld(x.add(128 + 32 * h)), _mm_cvtsi32_si128(2 * k as i32));
            let qh = _mm256_and_si256(qh, _mm256_set1_epi8(3));
            _mm256_or_si256(_mm256_and_si256(ql, m4), _mm256_slli_epi16(qh, 4))
        }
    }
}

/// Unpack the quants of 16 rows into `[k / 4][16][4]`: per 32-element chunk, the 16 rows'
/// 8 dwords are transposed (two 8x8 dword transposes side by side in zmm halves).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
///
/// For the 32-element block types, the f16 bits of each block's `d` (offset 0) go to
/// `d16[block * 16 + row]` and, when `m16` is not null, those of `m` (offset 2) to `m16`.
unsafe fn unpack_quants(
    ty: TensorType,
    w: *const u8,
    wrb: usize,
    cols: usize,
    q: *mut u8,
    d16: *mut u16,
    m16: *mut u16,
) {
    use TensorType::*;
    // One copy per type, so the per-chunk type dispatch folds away.
    match ty {
        Q8_0 => unpack_quants_t::<0>(w, wrb, cols, q, d16, m16),
        Q4_0 => unpack_quants_t::<1>(w, wrb, cols, q, d16, m16),
        Q4_1 => unpack_quants_t::<2>(w, wrb, cols, q, d16, m16),
        Q5_0 => unpack_quants_t::<3>(w, wrb, cols, q, d16, m16),
        Q5_1 => unpack_quants_t::<4>(w, wrb, cols, q, d16, m16),
        Q4_K => unpack_quants_t::<5>(w, wrb, cols, q, d16, m16),
        Q5_K => unpack_quants_t::<6>(w, wrb, cols, q, d16, m16),
        Q6_K => unpack_quants_t::<7>(w, wrb, cols, q, d16, m16),
        Q2_K => unpack_quants_t::<8>(w, wrb, cols, q, d16, m16),
        Q3_K => unpack_quants_t::<9>(w, wrb, cols, q, d16, m16),
        IQ4_NL => unpack_quants_t::<10>(w, wrb, cols, q, d16, m16),
        IQ4_XS => unpack_quants_t::<11>(w, wrb, cols, q, d16, m16),
        _ => unpack_quants_t::<12>(w, wrb, cols, q, d16, m16),
    }
}

/// The types [`unpack_quants_t`] is instantiated for, by index.
const PANEL_TYPES: [TensorType; 13] = [
    TensorType::Q8_0,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q5_0,
    TensorType::Q5_1,
    TensorType::Q4_K,
    TensorType::Q5_K,
    TensorType::Q6_K,
    TensorType::Q2_K,
    TensorType::Q3_K,
    TensorType::IQ4_NL,
    TensorType::IQ4_XS,
    TensorType::MXFP4,
];

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
unsafe fn unpack_quants_t<const T: usize>(
    w: *const u8,
    wrb: usize,
    cols: usize,
    q: *mut u8,
    d16: *mut u16,
    m16: *mut u16,
) {
    let ty = PANEL_TYPES[T];
    // Bytes per 32-element block, for the types whose scales are gathered here.
    let block_bytes = if ty.block_size() == QK {
        ty.block_bytes()
    } else {
        0
    };
    let lo_idx = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    let hi_idx = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for kc in 0..cols / 32 {
        // Plain loops, not closures: a closure would not inherit the target features.
        let mut z = [_mm512_setzero_si512(); 8];
        for (i, zi) in z.iter_mut().enumerate() {
            let a = chunk_vals(ty, w.add(i * wrb), kc);
            let b = chunk_vals(ty, w.add((i + 8) * wrb), kc);
            *zi = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        }
        if block_bytes > 0 && !d16.is_null() {
            for r in 0..PR {
                let x = w.add(r * wrb + kc * block_bytes);
                *d16.add(kc * PR + r) = if ty == TensorType::MXFP4 {
                    *x as u16
                } else {
                    std::ptr::read_unaligned(x as *const u16)
                };
                if !m16.is_null() {
                    *m16.add(kc * PR + r) = std::ptr::read_unaligned(x.add(2) as *const u16);
                }
            }
        }
        let mut a = [_mm512_setzero_si512(); 4];
        let mut b = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            a[i] = _mm512_unpacklo_epi32(z[2 * i], z[2 * i + 1]);
            b[i] = _mm512_unpackhi_epi32(z[2 * i], z[2 * i + 1]);
        }
        // c[g]: rows 0..3 (and 8..11) of dword g (lane 0) and g + 4 (lane 1); d[g]: rows 4..7.
        let c = [
            _mm512_unpacklo_epi64(a[0], a[1]),
            _mm512_unpackhi_epi64(a[0], a[1]),
            _mm512_unpacklo_epi64(b[0], b[1]),
            _mm512_unpackhi_epi64(b[0], b[1]),
        ];
        let d = [
            _mm512_unpacklo_epi64(a[2], a[3]),
            _mm512_unpackhi_epi64(a[2], a[3]),
            _mm512_unpacklo_epi64(b[2], b[3]),
            _mm512_unpackhi_epi64(b[2], b[3]),
        ];
        let out = q.add(kc * 32 * PR);
        for g in 0..4 {
            let o0 = _mm512_permutex2var_epi64(c[g], lo_idx, d[g]);
            let o1 = _mm512_permutex2var_epi64(c[g], hi_idx, d[g]);
            _mm512_storeu_si512(out.add(g * 64) as *mut _, o0);
            _mm512_storeu_si512(out.add((g + 4) * 64) as *mut _, o1);
        }
    }
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
