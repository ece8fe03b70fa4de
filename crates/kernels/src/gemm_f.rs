//! Matrix-matrix product for batches of float weights (F16, BF16, F32) with AVX-512.
//!
//! The scalar F16/BF16/F32 dot product accumulates element `i` into lane `i % 16` with one
//! fused multiply-add per element, then reduces the 16 lanes in a fixed tree ([`reduce16`]),
//! then adds the scalar tail. Here each (weight row, activation row) pair keeps its 16 lanes
//! in one zmm register and does the same multiply-adds in the same order, so results are
//! bit-identical to the per-row dot products, whatever the batch size.
//!
//! Activations (already rounded to the vec-dot type, the weight type) are widened as loaded.
//! Register tile: 4 weight rows x 6 activation rows (24 accumulators); each weight vector
//! is converted once per 6 activation rows, each activation vector loaded once per 4
//! weight rows. (One accumulator per pair, not two, is what makes a tile this size fit in
//! the 32 registers; the lane count of the float dot products is chosen for it.) Tasks take blocks of rows small enough to stay in L2 while every
//! activation tile passes over them.
//!
//! [`reduce16`]: crate::blocks::reduce16

use crate::blocks::*;
use crate::TensorType;
use std::arch::x86_64::*;

/// Whether the CPU has what this module needs.
pub fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        crate::level_supported(crate::SimdLevel::Avx2)
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
    })
}

pub fn supported(ty: TensorType) -> bool {
    matches!(ty, TensorType::F16 | TensorType::BF16 | TensorType::F32)
}

const W_F16: u8 = 0;
const W_BF16: u8 = 1;
const W_F32: u8 = 2;

/// Rows / activation rows per register tile.
const RT: usize = 4;
const BT: usize = 6;
struct SyncPtr(*mut f32);
unsafe impl Sync for SyncPtr {}
unsafe impl Send for SyncPtr {}

/// `y[b * rows + r] = dot(W[r], act[b])` for all rows and batch items. `act` holds `batch`
/// activation rows of `vec_dot_type(ty)` (= `ty`), `arb` bytes each.
///
/// # Safety
/// [`available`] must be true; `w` holds `rows` rows of `cols` elements of `ty`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul(
    ty: TensorType,
    w: &[u8],
    rows: usize,
    cols: usize,
    act: &[u8],
    batch: usize,
    y: &mut [f32],
) {
    let esz = match ty {
        TensorType::F32 => 4,
        _ => 2,
    };
    let wrb = cols * esz;
    // Rows per task: about 256 KiB of weights, a multiple of the tile height.
    let blk = ((256 << 10) / wrb.max(1)).clamp(RT, 48) / RT * RT;
    let ntask = rows.div_ceil(blk);
    let yp = SyncPtr(y.as_mut_ptr());
    verity_pool::for_each(ntask, &|t| {
        let yp = &yp;
        let (r0, r1) = (t * blk, ((t + 1) * blk).min(rows));
        // SAFETY: features checked by the caller; each task writes only its rows.
        unsafe {
            match ty {
                TensorType::F16 => block::<W_F16>(w, wrb, r0, r1, cols, act, batch, yp.0, rows),
                TensorType::BF16 => block::<W_BF16>(w, wrb, r0, r1, cols, act, batch, yp.0, rows),
                _ => block::<W_F32>(w, wrb, r0, r1, cols, act, batch, yp.0, rows),
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn block<const W: u8>(
    w: &[u8],
    wrb: usize,
    r0: usize,
    r1: usize,
    cols: usize,
    act: &[u8],
    batch: usize,
    y: *mut f32,
    rows: usize,
) {
    let mut b = 0;
    while b < batch {
        let nb = (batch - b).min(BT);
        let mut r = r0;
        while r < r1 {
            let nr = (r1 - r).min(RT);
            match (nr, nb) {
                (4, 6) => tile::<W, 4, 6>(w, wrb, r, cols, act, b, y, rows),
                (4, 5) => tile::<W, 4, 5>(w, wrb, r, cols, act, b, y, rows),
                (4, 4) => tile::<W, 4, 4>(w, wrb, r, cols, act, b, y, rows),
                (4, 3) => tile::<W, 4, 3>(w, wrb, r, cols, act, b, y, rows),
                (4, 2) => tile::<W, 4, 2>(w, wrb, r, cols, act, b, y, rows),
                (4, _) => tile::<W, 4, 1>(w, wrb, r, cols, act, b, y, rows),
                (3, 6) => tile::<W, 3, 6>(w, wrb, r, cols, act, b, y, rows),
                (3, 5) => tile::<W, 3, 5>(w, wrb, r, cols, act, b, y, rows),
                (3, 4) => tile::<W, 3, 4>(w, wrb, r, cols, act, b, y, rows),
                (3, 3) => tile::<W, 3, 3>(w, wrb, r, cols, act, b, y, rows),
                (3, 2) => tile::<W, 3, 2>(w, wrb, r, cols, act, b, y, rows),
                (3, _) => tile::<W, 3, 1>(w, wrb, r, cols, act, b, y, rows),
                (2, 6) => tile::<W, 2, 6>(w, wrb, r, cols, act, b, y, rows),
                (2, 5) => tile::<W, 2, 5>(w, wrb, r, cols, act, b, y, rows),
                (2, 4) => tile::<W, 2, 4>(w, wrb, r, cols, act, b, y, rows),
                (2, 3) => tile::<W, 2, 3>(w, wrb, r, cols, act, b, y, rows),
                (2, 2) => tile::<W, 2, 2>(w, wrb, r, cols, act, b, y, rows),
                (2, _) => tile::<W, 2, 1>(w, wrb, r, cols, act, b, y, rows),
                (_, 6) => tile::<W, 1, 6>(w, wrb, r, cols, act, b, y, rows),
                (_, 5) => tile::<W, 1, 5>(w, wrb, r, cols, act, b, y, rows),
                (_, 4) => tile::<W, 1, 4>(w, wrb, r, cols, act, b, y, rows),
                (_, 3) => tile::<W, 1, 3>(w, wrb, r, cols, act, b, y, rows),
                (_, 2) => tile::<W, 1, 2>(w, wrb, r, cols, act, b, y, rows),
                (_, _) => tile::<W, 1, 1>(w, wrb, r, cols, act, b, y, rows),
            }
            r += nr;
        }
        b += nb;
    }
}

/// 16 weights at `p` (element offset already applied), widened to f32.
#[inline(always)]
unsafe fn load_w<const W: u8>(p: *const u8) -> __m512 {
    match W {
        W_F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)),
        W_BF16 => _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256(p as *const __m256i)),
            16,
        )),
        _ => _mm512_loadu_ps(p as *const f32),
    }
}

#[inline(always)]
unsafe fn w_scalar<const W: u8>(p: *const u8, i: usize) -> f32 {
    match W {
        W_F16 => {
            let bits = std::ptr::read_unaligned(p.add(2 * i) as *const u16);
            half::f16::from_bits(bits).to_f32()
        }
        W_BF16 => bf16_to_f32(std::ptr::read_unaligned(p.add(2 * i) as *const u16)),
        _ => std::ptr::read_unaligned(p.add(4 * i) as *const f32),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn tile<const W: u8, const NR: usize, const NB: usize>(
    w: &[u8],
    wrb: usize,
    r: usize,
    cols: usize,
    act: &[u8],
    b: usize,
    y: *mut f32,
    rows: usize,
) {
    let esz = if W == W_F32 { 4 } else { 2 };
    let wp: [*const u8; NR] = std::array::from_fn(|i| w.as_ptr().add((r + i) * wrb));
    // The activations are in the weight type (its vec-dot type) and widened as loaded:
    // half the bytes of f32 rows to bring in from L2 for every row tile.
    let xp: [*const u8; NB] = std::array::from_fn(|j| act.as_ptr().add((b + j) * wrb));
    let mut acc = [[_mm512_setzero_ps(); NB]; NR];
    let n16 = cols / 16 * 16;
    let mut k = 0;
    while k < n16 {
        let mut wv = [_mm512_setzero_ps(); NR];
        for i in 0..NR {
            wv[i] = load_w::<W>(wp[i].add(k * esz));
        }
        for j in 0..NB {
            let x = load_w::<W>(xp[j].add(k * esz));
            for i in 0..NR {
                acc[i][j] = _mm512_fmadd_ps(wv[i], x, acc[i][j]);
            }
        }
        k += 16;
    }
    for i in 0..NR {
        for j in 0..NB {
            let mut tail = 0f32;
            for kk in n16..cols {
                tail = w_scalar::<W>(wp[i], kk).mul_add(w_scalar::<W>(xp[j], kk), tail);
            }
            *y.add((b + j) * rows + r + i) = reduce_zmm(acc[i][j]) + tail;
        }
    }
}

/// [`reduce16`](crate::blocks::reduce16) of one zmm: lanes `j` and `8 + j`, then 8 → 1.
#[inline(always)]
unsafe fn reduce_zmm(a: __m512) -> f32 {
    let s = _mm256_add_ps(
        _mm512_castps512_ps256(a),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))),
    );
    crate::avx2::hsum_ps_8(s)
}

/// One row against one activation row of the same float type (`n` elements), the batch-1
/// dot product: 16 lanes in one zmm, same order as the scalar `dot_lanes`.
#[inline(always)]
unsafe fn dot1<const W: u8>(w: &[u8], a: &[u8], n: usize) -> f32 {
    let esz = if W == W_F32 { 4 } else { 2 };
    assert!(w.len() >= n * esz && a.len() >= n * esz, "dot: short input");
    let (wp, ap) = (w.as_ptr(), a.as_ptr());
    let n16 = n / 16 * 16;
    let mut acc = _mm512_setzero_ps();
    let mut k = 0;
    while k < n16 {
        if (k * esz) % 64 == 0 {
            // Past the row's end this touches the next row, which comes next anyway.
            _mm_prefetch::<_MM_HINT_T0>(
                wp.wrapping_add(k * esz + crate::PREFETCH_BYTES) as *const i8
            );
        }
        acc = _mm512_fmadd_ps(
            load_w::<W>(wp.add(k * esz)),
            load_w::<W>(ap.add(k * esz)),
            acc,
        );
        k += 16;
    }
    let mut tail = 0f32;
    for i in n16..n {
        tail = w_scalar::<W>(wp, i).mul_add(w_scalar::<W>(ap, i), tail);
    }
    reduce_zmm(acc) + tail
}

macro_rules! dot1_wrapper {
    ($name:ident, $w:expr) => {
        pub fn $name(w: &[u8], a: &[u8], n: usize) -> f32 {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
            unsafe fn k(w: &[u8], a: &[u8], n: usize) -> f32 {
                dot1::<{ $w }>(w, a, n)
            }
            debug_assert!(available());
            // SAFETY: handed out by `dot_kernel` only when `available()`; `dot1` checks
            // the lengths.
            unsafe { k(w, a, n) }
        }
    };
}
dot1_wrapper!(dot_f16, W_F16);
dot1_wrapper!(dot_bf16, W_BF16);
dot1_wrapper!(dot_f32, W_F32);
