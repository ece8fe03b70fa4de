//! AVX-512 (F + BW + VL) batch-1 dot products for Q2_K, Q3_K and IQ4_XS, in the manner of
//! `kquant512.rs`: one zmm covers four 16-value groups (or two 32-value sub-blocks), the
//! scales are applied with one `vpshufb` + `vpmaddwd` per zmm, and four super-blocks are
//! reduced together so that their float part runs in the four lanes of [`Acc4`].
//!
//! Integer sums are exact and the float operations are the scalar path's, in its order, so
//! the results are bit-identical to `lowbit::dot_q2_k` / `dot_q3_k` / `dot_iq4_xs`.

use crate::avx2::{f16_at, f16_x4, f32_at, hsum_i32_8, prefetch_ahead, reduce4_i32};
use crate::blocks::*;
use crate::lowbit::{iq4_xs_scales_biased, q3_k_scales_biased, KVALUES_IQ4NL};
use std::arch::x86_64::*;

/// Whether the CPU has what this module needs.
pub fn available() -> bool {
    crate::kquant512::available()
}

/// Checks a row's lengths, then runs a kernel over its `nb` super-blocks.
macro_rules! wrapper {
    ($name:ident, $inner:ident, $wb:expr) => {
        pub fn $name(w: &[u8], a: &[u8], _ys: &[f32], n: usize) -> f32 {
            let nb = n / QK_K;
            assert!(
                w.len() >= nb * $wb && a.len() >= nb * Q8_K_BYTES,
                concat!(stringify!($name), ": input shorter than the row")
            );
            // SAFETY: handed out only after run-time detection (`available`); lengths
            // checked above.
            unsafe { $inner(w.as_ptr(), a.as_ptr(), nb) }
        }
    };
}

wrapper!(dot_q2_k, dot_q2_k_k, Q2_K_BYTES);
wrapper!(dot_q3_k, dot_q3_k_k, Q3_K_BYTES);
wrapper!(dot_iq4_xs, dot_iq4_xs_k, IQ4_XS_BYTES);

/// `vpshufb` indices that spread 16-bit lane `a` of 128-bit lane 0 over that lane, `b` of
/// lane 1 over lane 1, and so on. (`vpshufb` in place of `vpermw`, which costs more: the
/// scales are first laid out so that each 128-bit lane holds the 8 it picks from.)
#[inline(always)]
unsafe fn pick16(a: i16, b: i16, c: i16, d: i16) -> __m512i {
    let w = |k: i16| _mm_set1_epi16(((2 * k + 1) << 8) | (2 * k));
    let lo = _mm256_set_m128i(w(b), w(a));
    let hi = _mm256_set_m128i(w(d), w(c));
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Adds the two 256-bit halves of 16 i32 lanes.
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// Activation values `32 j .. 32 j + 32` and `128 + 32 j ..` of a Q8_K block (the values
/// of 2-bit plane `j` of a Q2_K / Q3_K block, whose two 32-byte halves cover 128 values each).
#[inline(always)]
unsafe fn plane_y(y: *const u8, j: usize) -> __m512i {
    let q8 = y.add(Q8_K_QS + 32 * j);
    let lo = _mm256_loadu_si256(q8 as *const __m256i);
    let hi = _mm256_loadu_si256(q8.add(128) as *const __m256i);
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// The 16 group scales of a Q2_K / Q3_K block (i16) as [`plane_sum`] reads them: groups
/// 0..8 in 128-bit lanes 0 and 1, groups 8..16 in lanes 2 and 3.
#[inline(always)]
unsafe fn group_scales(sc16: __m256i) -> __m512i {
    let s = _mm512_castsi256_si512(sc16);
    _mm512_shuffle_i64x2::<0b01_01_00_00>(s, s)
}

/// `sum_g scale_g * dot(u_g, y_g)` of one Q2_K / Q3_K block as 8 exact partial sums: `u` holds
/// the unsigned quants of plane `j` (see [`plane_y`]), `scales` is from [`group_scales`].
#[inline(always)]
unsafe fn plane_sum(u: __m512i, y: *const u8, j: usize, scales: __m512i) -> __m512i {
    let p = _mm512_maddubs_epi16(u, plane_y(y, j));
    // 128-bit lanes: groups 2j, 2j + 1, 8 + 2j, 9 + 2j.
    let g = 2 * j as i16;
    let s = _mm512_shuffle_epi8(scales, pick16(g, g + 1, g, g + 1));
    _mm512_madd_epi16(p, s)
}

/// One Q2_K super-block: 8 partial sums of `sum_g sc_g * dot(q_g, y_g)` and 8 of
/// `sum_g min_g * bsum_g` (both exact).
#[inline(always)]
unsafe fn q2_k_block(x: *const u8, y: *const u8) -> (__m256i, __m256i) {
    let sm = _mm_loadu_si128(x as *const __m128i);
    let m4 = _mm_set1_epi8(0x0F);
    let scales = group_scales(_mm256_cvtepu8_epi16(_mm_and_si128(sm, m4)));
    let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sm), m4));
    let q = _mm512_loadu_si512(x.add(16) as *const _);
    let m3 = _mm512_set1_epi8(3);
    let mut sumi = _mm512_setzero_si512();
    for j in 0..4 {
        let u = _mm512_and_si512(_mm512_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
        sumi = _mm512_add_epi32(sumi, plane_sum(u, y, j, scales));
    }
    let bsums = _mm256_loadu_si256(y.add(Q8_K_BSUMS) as *const __m256i);
    (fold(sumi), _mm256_madd_epi16(mins, bsums))
}

/// One Q3_K super-block: 8 partial sums of `sum_g sc_g * dot(q_g, y_g)` (exact).
#[inline(always)]
unsafe fn q3_k_block(x: *const u8, y: *const u8) -> __m256i {
    let sc = q3_k_scales_biased(std::slice::from_raw_parts(x.add(96), 12));
    let sc8 = _mm_sub_epi8(
        _mm_loadu_si128(sc.as_ptr() as *const __m128i),
        _mm_set1_epi8(32),
    );
    let sc16 = _mm256_cvtepi8_epi16(sc8);
    let scales = group_scales(sc16);
    let q = _mm512_loadu_si512(x.add(32) as *const _);
    // hmask in both halves: the first half's values take bit j, the second's bit 4 + j.
    let hm = _mm512_broadcast_i64x4(_mm256_loadu_si256(x as *const __m256i));
    let (m3, one) = (_mm512_set1_epi8(3), _mm512_set1_epi8(1));
    let mut sumi = _mm512_setzero_si512();
    for j in 0..4 {
        let low = _mm512_and_si512(_mm512_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)), m3);
        let jj = j as i16;
        let cnt = _mm512_inserti64x4::<1>(_mm512_set1_epi16(jj), _mm256_set1_epi16(jj + 4));
        let h = _mm512_and_si512(_mm512_srlv_epi16(hm, cnt), one);
        // Value + 4, in 0..8.
        let u = _mm512_or_si512(low, _mm512_slli_epi16::<2>(h));
        sumi = _mm512_add_epi32(sumi, plane_sum(u, y, j, scales));
    }
    let bsums = _mm256_loadu_si256(y.add(Q8_K_BSUMS) as *const __m256i);
    _mm256_sub_epi32(
        fold(sumi),
        _mm256_slli_epi32::<2>(_mm256_madd_epi16(sc16, bsums)),
    )
}

/// One IQ4_XS super-block: 8 partial sums of `sum_k sc_k * dot(v_k, y_k)` (exact).
#[inline(always)]
unsafe fn iq4_xs_block(x: *const u8, y: *const u8) -> __m256i {
    let sc = iq4_xs_scales_biased(std::slice::from_raw_parts(x, 8));
    let sc8 = _mm_sub_epi8(_mm_cvtsi64_si128(sc as i64), _mm_set1_epi8(32));
    let scales = _mm512_broadcast_i32x4(_mm_cvtepi8_epi16(sc8));
    let kv = _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let m4 = _mm512_set1_epi8(0x0F);
    // 128-bit lanes [lo 0, hi 0, lo 1, hi 1] and [lo 2, hi 2, lo 3, hi 3]: sub-block 4h + i
    // is the low nibbles (values 0..16) then the high ones (16..32) of lane i.
    let ia = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    let ib = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    let q8 = y.add(Q8_K_QS);
    let zero = _mm512_setzero_si512();
    let mut sumi = _mm512_setzero_si512();
    for h in 0..2 {
        let q = _mm512_loadu_si512(x.add(8 + 64 * h) as *const _);
        let lo = _mm512_and_si512(q, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
        let va = _mm512_shuffle_epi8(kv, _mm512_permutex2var_epi64(lo, ia, hi));
        let vb = _mm512_shuffle_epi8(kv, _mm512_permutex2var_epi64(lo, ib, hi));
        let ya = _mm512_loadu_si512(q8.add(128 * h) as *const _);
        let yb = _mm512_loadu_si512(q8.add(128 * h + 64) as *const _);
        // |v| times y with v's sign (no vpsignb on zmm): pairs of products fit in i16.
        let ya = _mm512_mask_sub_epi8(ya, _mm512_movepi8_mask(va), zero, ya);
        let yb = _mm512_mask_sub_epi8(yb, _mm512_movepi8_mask(vb), zero, yb);
        let pa = _mm512_maddubs_epi16(_mm512_abs_epi8(va), ya);
        let pb = _mm512_maddubs_epi16(_mm512_abs_epi8(vb), yb);
        let k = 4 * h as i16;
        let sa = _mm512_shuffle_epi8(scales, pick16(k, k, k + 1, k + 1));
        let sb = _mm512_shuffle_epi8(scales, pick16(k + 2, k + 2, k + 3, k + 3));
        sumi = _mm512_add_epi32(
            sumi,
            _mm512_add_epi32(_mm512_madd_epi16(pa, sa), _mm512_madd_epi16(pb, sb)),
        );
    }
    fold(sumi)
}

/// The activation scales of four Q8_K blocks.
#[inline(always)]
unsafe fn yd_x4(y: [*const u8; 4]) -> __m128 {
    _mm_set_ps(f32_at(y[3]), f32_at(y[2]), f32_at(y[1]), f32_at(y[0]))
}

/// Pointers to four consecutive blocks from block `ib`.
#[inline(always)]
unsafe fn four(p: *const u8, ib: usize, bytes: usize) -> [*const u8; 4] {
    [
        p.add(ib * bytes),
        p.add((ib + 1) * bytes),
        p.add((ib + 2) * bytes),
        p.add((ib + 3) * bytes),
    ]
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dot_q2_k_k(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
    let mut acc = _mm_setzero_ps();
    let mut ib = 0;
    while ib + 4 <= nb {
        prefetch_ahead(wp.add(ib * Q2_K_BYTES), 4 * Q2_K_BYTES);
        let (x, y) = (four(wp, ib, Q2_K_BYTES), four(ap, ib, Q8_K_BYTES));
        let r = [
            q2_k_block(x[0], y[0]),
            q2_k_block(x[1], y[1]),
            q2_k_block(x[2], y[2]),
            q2_k_block(x[3], y[3]),
        ];
        let isum = _mm_cvtepi32_ps(reduce4_i32(r[0].0, r[1].0, r[2].0, r[3].0));
        let summs = _mm_cvtepi32_ps(reduce4_i32(r[0].1, r[1].1, r[2].1, r[3].1));
        let d = f16_x4(x.map(|p| p.add(80)));
        let dmin = f16_x4(x.map(|p| p.add(82)));
        let yd = yd_x4(y);
        // (d * yd) * isum - (dmin * yd) * summs, as the scalar path rounds it.
        let v = _mm_sub_ps(
            _mm_mul_ps(_mm_mul_ps(d, yd), isum),
            _mm_mul_ps(_mm_mul_ps(dmin, yd), summs),
        );
        acc = _mm_add_ps(acc, v);
        ib += 4;
    }
    let mut lanes = [0f32; 4];
    _mm_storeu_ps(lanes.as_mut_ptr(), acc);
    for ib in ib..nb {
        let (x, y) = (wp.add(ib * Q2_K_BYTES), ap.add(ib * Q8_K_BYTES));
        prefetch_ahead(x, Q2_K_BYTES);
        let (s, m) = q2_k_block(x, y);
        let yd = f32_at(y);
        lanes[ib & 3] += (f16_at(x.add(80)) * yd) * hsum_i32_8(s) as f32
            - (f16_at(x.add(82)) * yd) * hsum_i32_8(m) as f32;
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// The Q3_K and IQ4_XS loops: `block` gives a super-block's exact partial sums, `d_off`
/// is where its f16 scale sits.
macro_rules! scaled_dot {
    ($name:ident, $block:ident, $bytes:expr, $d_off:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
        unsafe fn $name(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
            let mut acc = _mm_setzero_ps();
            let mut ib = 0;
            while ib + 4 <= nb {
                prefetch_ahead(wp.add(ib * $bytes), 4 * $bytes);
                let (x, y) = (four(wp, ib, $bytes), four(ap, ib, Q8_K_BYTES));
                let s = [
                    $block(x[0], y[0]),
                    $block(x[1], y[1]),
                    $block(x[2], y[2]),
                    $block(x[3], y[3]),
                ];
                let isum = _mm_cvtepi32_ps(reduce4_i32(s[0], s[1], s[2], s[3]));
                let d = f16_x4(x.map(|p| p.add($d_off)));
                acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(d, yd_x4(y)), isum));
                ib += 4;
            }
            let mut lanes = [0f32; 4];
            _mm_storeu_ps(lanes.as_mut_ptr(), acc);
            for ib in ib..nb {
                let (x, y) = (wp.add(ib * $bytes), ap.add(ib * Q8_K_BYTES));
                prefetch_ahead(x, $bytes);
                lanes[ib & 3] +=
                    (f16_at(x.add($d_off)) * f32_at(y)) * hsum_i32_8($block(x, y)) as f32;
            }
            (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
        }
    };
}

scaled_dot!(dot_q3_k_k, q3_k_block, Q3_K_BYTES, 108);
scaled_dot!(dot_iq4_xs_k, iq4_xs_block, IQ4_XS_BYTES, 0);
