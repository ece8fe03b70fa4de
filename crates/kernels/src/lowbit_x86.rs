//! x86_64 dot products of the low-bit types (see `lowbit.rs`): AVX2 for all five, and
//! AVX-512 VNNI (`vpdpbusd` on ymm) for IQ4_NL and MXFP4 as for the other 32-value types.
//!
//! Every kernel takes one weight row and `N` activation rows (1, or 4 for batches): a weight
//! block is unpacked once (quants to bytes, scales to 16-bit lanes) and used for each row.
//! A row's integer sums are exact and its float terms are the scalar path's, in its order,
//! so its result is bit-identical to `lowbit::dot_*` whatever `N` is.

use crate::avx2::{f16_at, f16_x4, f32_at, hsum_i32_8, prefetch_ahead, reduce4_i32};
use crate::blocks::*;
use crate::lowbit::{
    e8m0_half, iq4_xs_scales_biased, q3_k_scales_biased, KVALUES_IQ4NL, KVALUES_MXFP4,
};
use crate::{Dot4Fn, DotFn, SimdLevel, TensorType};
use std::arch::x86_64::*;

/// The one-row kernel for `ty` at `level`, if this module has one.
pub(crate) fn dot_kernel(ty: TensorType, level: SimdLevel) -> Option<DotFn> {
    use TensorType::*;
    if level == SimdLevel::Avx512 && crate::avx2::vnni::available() {
        match ty {
            IQ4_NL => return Some(vnni::dot_iq4_nl),
            MXFP4 => return Some(vnni::dot_mxfp4),
            _ => {}
        }
    }
    if level == SimdLevel::Avx512 && crate::lowbit512::available() {
        match ty {
            Q2_K => return Some(crate::lowbit512::dot_q2_k),
            Q3_K => return Some(crate::lowbit512::dot_q3_k),
            IQ4_XS => return Some(crate::lowbit512::dot_iq4_xs),
            _ => {}
        }
    }
    if !matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512)
        || !crate::level_supported(SimdLevel::Avx2)
    {
        return None;
    }
    Some(match ty {
        Q2_K => dot_q2_k,
        Q3_K => dot_q3_k,
        IQ4_XS => dot_iq4_xs,
        IQ4_NL => dot_iq4_nl,
        MXFP4 => dot_mxfp4,
        _ => return None,
    })
}

/// The four-row kernel for `ty` at `level`, if this module has one.
pub(crate) fn dot4_kernel(ty: TensorType, level: SimdLevel) -> Option<Dot4Fn> {
    use TensorType::*;
    if level == SimdLevel::Avx512 && crate::avx2::vnni::available() {
        match ty {
            IQ4_NL => return Some(vnni::dot4_iq4_nl),
            MXFP4 => return Some(vnni::dot4_mxfp4),
            _ => {}
        }
    }
    if !matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512)
        || !crate::level_supported(SimdLevel::Avx2)
    {
        return None;
    }
    Some(match ty {
        Q2_K => dot4_q2_k,
        Q3_K => dot4_q3_k,
        IQ4_XS => dot4_iq4_xs,
        IQ4_NL => dot4_iq4_nl,
        MXFP4 => dot4_mxfp4,
        _ => return None,
    })
}

/// Checks the lengths of a row product's inputs: `nb` blocks of `wb` weight bytes, of `ab`
/// activation bytes, and (32-value types) `nb` widened activation scales.
fn check(w: &[u8], a: &[u8], ys: &[f32], nb: usize, wb: usize, ab: usize, scales: bool) {
    assert!(
        w.len() >= nb * wb && a.len() >= nb * ab && (!scales || ys.len() >= nb),
        "dot: input shorter than the row"
    );
}

/// Safe one-row and four-row wrappers around a kernel generic over the row count;
/// `[$g]` are the kernel's other generic arguments.
macro_rules! kernels {
    ($name:ident, $name4:ident, $inner:ident [$($g:tt)*], $blk:expr, $wb:expr, $ab:expr,
     $scales:expr, $feat:literal) => {
        pub fn $name(w: &[u8], a: &[u8], ys: &[f32], n: usize) -> f32 {
            #[target_feature(enable = $feat)]
            unsafe fn k(w: *const u8, a: *const u8, ys: *const f32, nb: usize) -> f32 {
                $inner::<$($g)* 1>(w, [a], [ys], nb)[0]
            }
            let nb = n / $blk;
            check(w, a, ys, nb, $wb, $ab, $scales);
            // SAFETY: handed out by `dot_kernel` only after run-time detection of the
            // features; lengths checked above.
            unsafe { k(w.as_ptr(), a.as_ptr(), ys.as_ptr(), nb) }
        }

        pub fn $name4(w: &[u8], a: [&[u8]; 4], ys: [&[f32]; 4], n: usize) -> [f32; 4] {
            #[target_feature(enable = $feat)]
            unsafe fn k(w: *const u8, a: [*const u8; 4], ys: [*const f32; 4], nb: usize) -> [f32; 4] {
                $inner::<$($g)* 4>(w, a, ys, nb)
            }
            let nb = n / $blk;
            for j in 0..4 {
                check(w, a[j], ys[j], nb, $wb, $ab, $scales);
            }
            // SAFETY: as for the one-row product.
            unsafe { k(w.as_ptr(), a.map(|r| r.as_ptr()), ys.map(|r| r.as_ptr()), nb) }
        }
    };
}

kernels!(dot_q2_k, dot4_q2_k, q2_k_n[], QK_K, Q2_K_BYTES, Q8_K_BYTES, false, "avx2,fma,f16c");
kernels!(dot_q3_k, dot4_q3_k, q3_k_n[], QK_K, Q3_K_BYTES, Q8_K_BYTES, false, "avx2,fma,f16c");
kernels!(dot_iq4_xs, dot4_iq4_xs, iq4_xs_n[], QK_K, IQ4_XS_BYTES, Q8_K_BYTES, false, "avx2,fma,f16c");
kernels!(dot_iq4_nl, dot4_iq4_nl, nl_n[T_NL, false,], QK, IQ4_NL_BYTES, Q8_0_BYTES, true, "avx2,fma,f16c");
kernels!(dot_mxfp4, dot4_mxfp4, nl_n[T_MX, false,], QK, MXFP4_BYTES, Q8_0_BYTES, true, "avx2,fma,f16c");

/// IQ4_NL and MXFP4 with `vpdpbusd`.
mod vnni {
    use super::*;

    kernels!(dot_iq4_nl, dot4_iq4_nl, nl_n[T_NL, true,], QK, IQ4_NL_BYTES, Q8_0_BYTES, true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni");
    kernels!(dot_mxfp4, dot4_mxfp4, nl_n[T_MX, true,], QK, MXFP4_BYTES, Q8_0_BYTES, true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni");
}

// ---------------------------------------------------------------- helpers

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// `vpshufb` indices that spread 16-bit lane `2k` of a 128-bit half over the low half and
/// lane `2k + 1` over the high half (both halves of the source hold the same 8 lanes).
#[inline(always)]
unsafe fn pair_mask(k: usize) -> __m256i {
    let b = 4 * k as i16;
    _mm256_set_m128i(
        _mm_set1_epi16(((b + 3) << 8) | (b + 2)),
        _mm_set1_epi16(((b + 1) << 8) | b),
    )
}

/// Eight 16-bit scales (from 8 bytes, signed or not) in both 128-bit halves.
#[inline(always)]
unsafe fn both_halves(v16: __m128i) -> __m256i {
    _mm256_broadcastsi128_si256(v16)
}

/// Per 16-value group pair `k` (groups `2k`, `2k + 1`), the scales as 16-bit lanes, from the
/// 16 group scales widened to 16 bits in `lo8` (groups 0..8) and `hi8` (8..16).
#[inline(always)]
unsafe fn group_scales(lo8: __m128i, hi8: __m128i) -> [__m256i; 8] {
    let (lo, hi) = (both_halves(lo8), both_halves(hi8));
    [
        _mm256_shuffle_epi8(lo, pair_mask(0)),
        _mm256_shuffle_epi8(lo, pair_mask(1)),
        _mm256_shuffle_epi8(lo, pair_mask(2)),
        _mm256_shuffle_epi8(lo, pair_mask(3)),
        _mm256_shuffle_epi8(hi, pair_mask(0)),
        _mm256_shuffle_epi8(hi, pair_mask(1)),
        _mm256_shuffle_epi8(hi, pair_mask(2)),
        _mm256_shuffle_epi8(hi, pair_mask(3)),
    ]
}

/// The 2-bit quants of a Q2_K / Q3_K block (64 bytes at `qs`) as 8 vectors of 32 bytes:
/// vector `k` holds values `32k..32k + 32`.
#[inline(always)]
unsafe fn twobit(qs: *const u8) -> [__m256i; 8] {
    let m3 = _mm256_set1_epi8(3);
    let (a, b) = (load(qs), load(qs.add(32)));
    [
        _mm256_and_si256(a, m3),
        _mm256_and_si256(_mm256_srli_epi16::<2>(a), m3),
        _mm256_and_si256(_mm256_srli_epi16::<4>(a), m3),
        _mm256_and_si256(_mm256_srli_epi16::<6>(a), m3),
        _mm256_and_si256(b, m3),
        _mm256_and_si256(_mm256_srli_epi16::<2>(b), m3),
        _mm256_and_si256(_mm256_srli_epi16::<4>(b), m3),
        _mm256_and_si256(_mm256_srli_epi16::<6>(b), m3),
    ]
}

/// `sum_k madd(maddubs(q[k], y[32k..]), s[k])`: 8 exact partial sums of the scaled products
/// of 256 unsigned quants (each pair of products fits in i16) with a Q8_K block's values.
#[inline(always)]
unsafe fn scaled_sum(q: &[__m256i; 8], s: &[__m256i; 8], y: *const u8) -> __m256i {
    let mut sumi = _mm256_setzero_si256();
    for k in 0..8 {
        let p = _mm256_maddubs_epi16(q[k], load(y.add(Q8_K_QS + 32 * k)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s[k]));
    }
    sumi
}

/// A zero-initialized accumulator per row.
#[inline(always)]
fn accs<const N: usize>() -> [Acc4; N] {
    std::array::from_fn(|_| Acc4::default())
}

// ---------------------------------------------------------------- Q2_K, Q3_K, IQ4_XS

#[inline(always)]
unsafe fn q2_k_n<const N: usize>(
    wp: *const u8,
    ap: [*const u8; N],
    _sp: [*const f32; N],
    nb: usize,
) -> [f32; N] {
    let mut acc = accs::<N>();
    let m4 = _mm_set1_epi8(0x0F);
    for ib in 0..nb {
        let x = wp.add(ib * Q2_K_BYTES);
        prefetch_ahead(x, Q2_K_BYTES);
        // Byte g: scale of group g in the low nibble, its min in the high one.
        let sm = _mm_loadu_si128(x as *const __m128i);
        let sc = _mm_and_si128(sm, m4);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), m4));
        let s = group_scales(
            _mm_cvtepu8_epi16(sc),
            _mm_cvtepu8_epi16(_mm_srli_si128::<8>(sc)),
        );
        let q = twobit(x.add(16));
        let (d, dmin) = (f16_at(x.add(80)), f16_at(x.add(82)));
        for r in 0..N {
            let y = ap[r].add(ib * Q8_K_BYTES);
            let isum = hsum_i32_8(scaled_sum(&q, &s, y));
            let summs = hsum_i32_8(_mm256_madd_epi16(mins, load(y.add(Q8_K_BSUMS))));
            let yd = f32_at(y);
            acc[r].add(ib, (d * yd) * isum as f32 - (dmin * yd) * summs as f32);
        }
    }
    acc.map(Acc4::finish)
}

#[inline(always)]
unsafe fn q3_k_n<const N: usize>(
    wp: *const u8,
    ap: [*const u8; N],
    _sp: [*const f32; N],
    nb: usize,
) -> [f32; N] {
    let mut acc = accs::<N>();
    let one = _mm256_set1_epi8(1);
    for ib in 0..nb {
        let x = wp.add(ib * Q3_K_BYTES);
        prefetch_ahead(x, Q3_K_BYTES);
        let sc = q3_k_scales_biased(std::slice::from_raw_parts(x.add(96), 12));
        let sc8 = _mm_sub_epi8(
            _mm_loadu_si128(sc.as_ptr() as *const __m128i),
            _mm_set1_epi8(32),
        );
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let s = group_scales(
            _mm_cvtepi8_epi16(sc8),
            _mm_cvtepi8_epi16(_mm_srli_si128::<8>(sc8)),
        );
        // Quants as 0..8: the 2 low bits, plus 4 where the high bit is set (value + 4).
        let mut q = twobit(x.add(32));
        let hm = load(x);
        for (k, qk) in q.iter_mut().enumerate() {
            let h = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(k as i32)), one);
            *qk = _mm256_or_si256(*qk, _mm256_slli_epi16::<2>(h));
        }
        let d = f16_at(x.add(108));
        for r in 0..N {
            let y = ap[r].add(ib * Q8_K_BYTES);
            // Each value was stored + 4: subtract 4 * sum_g sc_g * bsum_g.
            let corr = hsum_i32_8(_mm256_madd_epi16(sc16, load(y.add(Q8_K_BSUMS))));
            let isum = hsum_i32_8(scaled_sum(&q, &s, y)) - 4 * corr;
            acc[r].add(ib, (d * f32_at(y)) * isum as f32);
        }
    }
    acc.map(Acc4::finish)
}

/// A 16-entry value table in both 128-bit halves, for `vpshufb`.
#[inline(always)]
unsafe fn table(t: &[i8; 16]) -> __m256i {
    _mm256_broadcastsi128_si256(_mm_loadu_si128(t.as_ptr() as *const __m128i))
}

#[inline(always)]
unsafe fn iq4_xs_n<const N: usize>(
    wp: *const u8,
    ap: [*const u8; N],
    _sp: [*const f32; N],
    nb: usize,
) -> [f32; N] {
    let mut acc = accs::<N>();
    let m4 = _mm256_set1_epi8(0x0F);
    let kv = table(&KVALUES_IQ4NL);
    for ib in 0..nb {
        let x = wp.add(ib * IQ4_XS_BYTES);
        prefetch_ahead(x, IQ4_XS_BYTES);
        let sc = iq4_xs_scales_biased(std::slice::from_raw_parts(x, 8));
        let sc8 = _mm_sub_epi8(_mm_cvtsi64_si128(sc as i64), _mm_set1_epi8(32));
        let sc16 = both_halves(_mm_cvtepi8_epi16(sc8));
        // Sub-block k: values 32k..32k+32, from 16 bytes of nibbles (low ones first).
        let mut q = [_mm256_setzero_si256(); 8];
        for p in 0..4 {
            let bits = load(x.add(8 + 32 * p));
            let lo = _mm256_and_si256(bits, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            q[2 * p] = _mm256_shuffle_epi8(kv, _mm256_permute2x128_si256::<0x20>(lo, hi));
            q[2 * p + 1] = _mm256_shuffle_epi8(kv, _mm256_permute2x128_si256::<0x31>(lo, hi));
        }
        let d = f16_at(x);
        for r in 0..N {
            let y = ap[r].add(ib * Q8_K_BYTES);
            let mut sumi = _mm256_setzero_si256();
            for (k, &qk) in q.iter().enumerate() {
                // |q| times y with q's sign: pairs of products fit in i16 (|q|, |y| <= 127).
                let yv = load(y.add(Q8_K_QS + 32 * k));
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(qk, qk), _mm256_sign_epi8(yv, qk));
                let s = _mm256_shuffle_epi8(
                    sc16,
                    _mm256_set1_epi16(((2 * k as i16 + 1) << 8) | (2 * k as i16)),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, s));
            }
            acc[r].add(ib, (d * f32_at(y)) * hsum_i32_8(sumi) as f32);
        }
    }
    acc.map(Acc4::finish)
}

// ---------------------------------------------------------------- IQ4_NL, MXFP4
//
// Four blocks at a time, as the other 32-value types (`avx2.rs`): their exact sums reduced
// together into one vector, the four float block terms added to a 4-lane accumulator that
// is `Acc4` in a register; leftover blocks go through the same lanes one at a time.

const T_NL: u8 = 0;
const T_MX: u8 = 1;

/// A block's 32 values as signed bytes: its 16 nibble bytes (after the scale) looked up in
/// the type's table, low nibbles first.
#[inline(always)]
unsafe fn nl_unpack<const T: u8>(x: *const u8, kv: __m256i) -> __m256i {
    let off = if T == T_NL { 2 } else { 1 };
    let t = _mm_loadu_si128(x.add(off) as *const __m128i);
    let idx = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(t), t),
        _mm256_set1_epi8(0x0F),
    );
    _mm256_shuffle_epi8(kv, idx)
}

/// Exact partial sums (8 lanes) of a block's values `qx` times the Q8_0 block at `y`.
#[inline(always)]
unsafe fn nl_dot<const VNNI: bool>(qx: __m256i, y: *const u8) -> __m256i {
    let qy = load(y.add(2));
    let (ax, sy) = (_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
    }
}

/// A weight block's scale.
#[inline(always)]
unsafe fn nl_scale<const T: u8>(x: *const u8) -> f32 {
    if T == T_NL {
        f16_at(x)
    } else {
        e8m0_half(*x)
    }
}

#[inline(always)]
unsafe fn nl_n<const T: u8, const VNNI: bool, const N: usize>(
    wp: *const u8,
    ap: [*const u8; N],
    sp: [*const f32; N],
    nb: usize,
) -> [f32; N] {
    let wb = if T == T_NL { IQ4_NL_BYTES } else { MXFP4_BYTES };
    let kv = table(if T == T_NL {
        &KVALUES_IQ4NL
    } else {
        &KVALUES_MXFP4
    });
    let mut acc = [_mm_setzero_ps(); N];
    let mut ib = 0;
    while ib + 4 <= nb {
        prefetch_ahead(wp.add(ib * wb), 4 * wb);
        let x = [
            wp.add(ib * wb),
            wp.add((ib + 1) * wb),
            wp.add((ib + 2) * wb),
            wp.add((ib + 3) * wb),
        ];
        let qx = [
            nl_unpack::<T>(x[0], kv),
            nl_unpack::<T>(x[1], kv),
            nl_unpack::<T>(x[2], kv),
            nl_unpack::<T>(x[3], kv),
        ];
        let dx = if T == T_NL {
            f16_x4(x)
        } else {
            _mm_set_ps(
                e8m0_half(*x[3]),
                e8m0_half(*x[2]),
                e8m0_half(*x[1]),
                e8m0_half(*x[0]),
            )
        };
        for j in 0..N {
            let y = ap[j].add(ib * Q8_0_BYTES);
            let s = _mm_cvtepi32_ps(reduce4_i32(
                nl_dot::<VNNI>(qx[0], y),
                nl_dot::<VNNI>(qx[1], y.add(Q8_0_BYTES)),
                nl_dot::<VNNI>(qx[2], y.add(2 * Q8_0_BYTES)),
                nl_dot::<VNNI>(qx[3], y.add(3 * Q8_0_BYTES)),
            ));
            let v = _mm_mul_ps(_mm_mul_ps(dx, _mm_loadu_ps(sp[j].add(ib))), s);
            acc[j] = _mm_add_ps(acc[j], v);
        }
        ib += 4;
    }
    let mut out = [0f32; N];
    for j in 0..N {
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), acc[j]);
        for ib in ib..nb {
            let (x, y) = (wp.add(ib * wb), ap[j].add(ib * Q8_0_BYTES));
            let isum = hsum_i32_8(nl_dot::<VNNI>(nl_unpack::<T>(x, kv), y));
            lanes[ib & 3] += (nl_scale::<T>(x) * f16_at(y)) * isum as f32;
        }
        out[j] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
    out
}
