//! AVX-512 (F + BW + VL) batch-1 dot products for the K-quants Q4_K and Q6_K.
//!
//! These two types carry most of a Q4_K_M model's bytes (the Q6_K output matrix alone is a
//! quarter of a 1B model's), so generation speed is their speed. The AVX2 kernels spend as
//! much time per super-block on bookkeeping (a horizontal sum, scalar float work) as on
//! the products; here one zmm covers two 32-value sub-blocks, the sub-block scales are
//! applied with one `vpermw` + `vpmaddwd` per zmm, and four super-blocks are reduced
//! together (three `phaddd`) so that their float part runs in the four lanes of [`Acc4`].
//!
//! Integer sums are exact and the float operations are the scalar path's, in its order,
//! so the results are bit-identical to `scalar::dot_q4_k` / `scalar::dot_q6_k`.

use crate::avx2::{f16_at, f16_x4, f32_at, hsum_i32_8, prefetch_ahead, reduce4_i32};
use crate::blocks::*;
use std::arch::x86_64::*;

/// Whether the CPU has what this module needs (the same as the AVX-512 float kernels).
pub fn available() -> bool {
    crate::gemm_f::available()
}

/// Q4_K weights against Q8_K activations, `n` values.
pub fn dot_q4_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK_K;
    assert!(
        w.len() >= nb * Q4_K_BYTES && a.len() >= nb * Q8_K_BYTES,
        "dot_q4_k: input shorter than the row"
    );
    // SAFETY: handed out by `dot_kernel` only after run-time detection (`available`);
    // lengths checked above.
    unsafe { dot_q4_k_k(w.as_ptr(), a.as_ptr(), nb) }
}

/// Q6_K weights against Q8_K activations, `n` values.
pub fn dot_q6_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK_K;
    assert!(
        w.len() >= nb * Q6_K_BYTES && a.len() >= nb * Q8_K_BYTES,
        "dot_q6_k: input shorter than the row"
    );
    // SAFETY: as for `dot_q4_k`.
    unsafe { dot_q6_k_k(w.as_ptr(), a.as_ptr(), nb) }
}

/// `vpermw` indices that spread 16-bit scale `j0` over the low 256 bits and `j1` over the
/// high 256 bits.
#[inline(always)]
unsafe fn halves(j0: i16, j1: i16) -> __m512i {
    _mm512_inserti64x4(_mm512_set1_epi16(j0), _mm256_set1_epi16(j1), 1)
}

/// `vpermw` indices that spread scale `j + i` over 128-bit lane `i`.
#[inline(always)]
unsafe fn quarters(j: i16) -> __m512i {
    _mm512_set_epi16(
        j + 3,
        j + 3,
        j + 3,
        j + 3,
        j + 3,
        j + 3,
        j + 3,
        j + 3, //
        j + 2,
        j + 2,
        j + 2,
        j + 2,
        j + 2,
        j + 2,
        j + 2,
        j + 2, //
        j + 1,
        j + 1,
        j + 1,
        j + 1,
        j + 1,
        j + 1,
        j + 1,
        j + 1, //
        j,
        j,
        j,
        j,
        j,
        j,
        j,
        j,
    )
}

/// Adds the two 256-bit halves of 16 i32 lanes.
#[inline(always)]
unsafe fn fold(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// The 6-bit scales and mins packed in a Q4_K block's 12 bytes at `p`, as 16 bytes
/// `[sc0..sc8, m0..m8]` (what `scales_mins_fast` computes with scalar shifts):
/// `j < 4`: `sc = p[j] & 63`, `m = p[j+4] & 63`; `j >= 4`: `sc = (p[j+4] & 15) | (p[j-4] >> 6) << 4`,
/// `m = (p[j+4] >> 4) | (p[j] >> 6) << 4`.
#[inline(always)]
unsafe fn q4_k_scales_mins(p: *const u8) -> __m128i {
    // Reads 16 bytes; the caller's block goes on past the 12 (its quants follow).
    let v = _mm_loadu_si128(p as *const __m128i);
    let low = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11),
    );
    let top = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7),
    );
    let keep = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
    let keep_hi = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
    let low = _mm_or_si128(
        _mm_and_si128(low, keep),
        _mm_and_si128(_mm_srli_epi16::<4>(low), keep_hi),
    );
    // Bits 6,7 of the `top` bytes to bits 4,5.
    _mm_or_si128(
        low,
        _mm_and_si128(_mm_srli_epi16::<2>(top), _mm_set1_epi8(0x30)),
    )
}

/// One Q4_K super-block: 8 partial sums of `sum_j sc_j * dot(q_j, y_j)` and 8 of
/// `sum_j min_j * bsum_j` (both exact).
#[inline(always)]
unsafe fn q4_k_block(x: *const u8, y: *const u8) -> (__m256i, __m256i) {
    // Bytes 0..8: the sub-block scales; 8..16: the mins.
    let sm = q4_k_scales_mins(x.add(4));
    let scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
    let m4 = _mm512_set1_epi8(0x0F);
    let q8 = y.add(Q8_K_QS);
    let mut sumi = _mm512_setzero_si512();
    for h in 0..2 {
        // 64 bytes = sub-blocks 4h..4h+4: low nibbles are 4h and 4h+2, high 4h+1 and 4h+3.
        let q = _mm512_loadu_si512(x.add(16 + 64 * h) as *const _);
        let lo = _mm512_and_si512(q, m4);
        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
        let a = _mm512_shuffle_i64x2::<0x44>(lo, hi); // sub-blocks 4h, 4h+1
        let b = _mm512_shuffle_i64x2::<0xEE>(lo, hi); // sub-blocks 4h+2, 4h+3
        let pa = _mm512_maddubs_epi16(a, _mm512_loadu_si512(q8.add(128 * h) as *const _));
        let pb = _mm512_maddubs_epi16(b, _mm512_loadu_si512(q8.add(128 * h + 64) as *const _));
        let j = 4 * h as i16;
        let sa = _mm512_permutexvar_epi16(halves(j, j + 1), scales);
        let sb = _mm512_permutexvar_epi16(halves(j + 2, j + 3), scales);
        sumi = _mm512_add_epi32(
            sumi,
            _mm512_add_epi32(_mm512_madd_epi16(pa, sa), _mm512_madd_epi16(pb, sb)),
        );
    }
    // Each min applies to two 16-value activation sums.
    let mins2 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
    let bsums = _mm256_loadu_si256(y.add(Q8_K_BSUMS) as *const __m256i);
    (fold(sumi), _mm256_madd_epi16(mins2, bsums))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dot_q4_k_k(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
    let mut acc = _mm_setzero_ps();
    let mut ib = 0;
    while ib + 4 <= nb {
        prefetch_ahead(wp.add(ib * Q4_K_BYTES), 4 * Q4_K_BYTES);
        let x: [*const u8; 4] = std::array::from_fn(|k| wp.add((ib + k) * Q4_K_BYTES));
        let y: [*const u8; 4] = std::array::from_fn(|k| ap.add((ib + k) * Q8_K_BYTES));
        // (Four plain calls: a closure would not inherit the target features and would
        // not be inlined.)
        let r = [
            q4_k_block(x[0], y[0]),
            q4_k_block(x[1], y[1]),
            q4_k_block(x[2], y[2]),
            q4_k_block(x[3], y[3]),
        ];
        let isum = _mm_cvtepi32_ps(reduce4_i32(r[0].0, r[1].0, r[2].0, r[3].0));
        let summins = _mm_cvtepi32_ps(reduce4_i32(r[0].1, r[1].1, r[2].1, r[3].1));
        let d = f16_x4(x);
        let dmin = f16_x4(x.map(|p| p.add(2)));
        let yd = _mm_set_ps(f32_at(y[3]), f32_at(y[2]), f32_at(y[1]), f32_at(y[0]));
        // (d * yd) * isum - (dmin * yd) * summins, as the scalar path rounds it.
        let v = _mm_sub_ps(
            _mm_mul_ps(_mm_mul_ps(d, yd), isum),
            _mm_mul_ps(_mm_mul_ps(dmin, yd), summins),
        );
        acc = _mm_add_ps(acc, v);
        ib += 4;
    }
    let mut lanes = [0f32; 4];
    _mm_storeu_ps(lanes.as_mut_ptr(), acc);
    for ib in ib..nb {
        let (x, y) = (wp.add(ib * Q4_K_BYTES), ap.add(ib * Q8_K_BYTES));
        prefetch_ahead(x, Q4_K_BYTES);
        let (s, m) = q4_k_block(x, y);
        let yd = f32_at(y);
        lanes[ib & 3] += (f16_at(x) * yd) * hsum_i32_8(s) as f32
            - (f16_at(x.add(2)) * yd) * hsum_i32_8(m) as f32;
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// One Q6_K super-block: 8 partial sums of `sum_g sc_g * dot(q_g - 32, y_g)` (exact).
#[inline(always)]
unsafe fn q6_k_block(x: *const u8, y: *const u8) -> __m256i {
    let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.add(192) as *const __m128i));
    let scales = _mm512_castsi256_si512(sc16);
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    // The two high bits of each quant, moved to bits 4..6: bits 0,1 | 2,3 for the first
    // 64 values of a half, bits 4,5 | 6,7 for the next 64.
    let shl_a = halves(4, 2);
    let shr_b = halves(0, 2);
    let q8 = y.add(Q8_K_QS);
    let mut sumi = _mm512_setzero_si512();
    for h in 0..2 {
        let ql = _mm512_loadu_si512(x.add(64 * h) as *const _);
        let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(x.add(128 + 32 * h) as *const __m256i));
        let ha = _mm512_and_si512(_mm512_sllv_epi16(qh, shl_a), m30);
        let hb = _mm512_and_si512(_mm512_srlv_epi16(qh, shr_b), m30);
        let a = _mm512_or_si512(_mm512_and_si512(ql, m4), ha); // values 128h .. 128h+64
        let b = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4), hb); // +64..+128
        let pa = _mm512_maddubs_epi16(a, _mm512_loadu_si512(q8.add(128 * h) as *const _));
        let pb = _mm512_maddubs_epi16(b, _mm512_loadu_si512(q8.add(128 * h + 64) as *const _));
        // 16 values per scale = one 128-bit lane of products.
        let g = 8 * h as i16;
        let sa = _mm512_permutexvar_epi16(quarters(g), scales);
        let sb = _mm512_permutexvar_epi16(quarters(g + 4), scales);
        sumi = _mm512_add_epi32(
            sumi,
            _mm512_add_epi32(_mm512_madd_epi16(pa, sa), _mm512_madd_epi16(pb, sb)),
        );
    }
    // The stored quants are value + 32: subtract 32 * sum_g sc_g * bsum_g.
    let bsums = _mm256_loadu_si256(y.add(Q8_K_BSUMS) as *const __m256i);
    _mm256_sub_epi32(
        fold(sumi),
        _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bsums)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn dot_q6_k_k(wp: *const u8, ap: *const u8, nb: usize) -> f32 {
    let mut acc = _mm_setzero_ps();
    let mut ib = 0;
    while ib + 4 <= nb {
        prefetch_ahead(wp.add(ib * Q6_K_BYTES), 4 * Q6_K_BYTES);
        let x: [*const u8; 4] = std::array::from_fn(|k| wp.add((ib + k) * Q6_K_BYTES));
        let y: [*const u8; 4] = std::array::from_fn(|k| ap.add((ib + k) * Q8_K_BYTES));
        let s = [
            q6_k_block(x[0], y[0]),
            q6_k_block(x[1], y[1]),
            q6_k_block(x[2], y[2]),
            q6_k_block(x[3], y[3]),
        ];
        let isum = _mm_cvtepi32_ps(reduce4_i32(s[0], s[1], s[2], s[3]));
        let d = f16_x4(x.map(|p| p.add(208)));
        let yd = _mm_set_ps(f32_at(y[3]), f32_at(y[2]), f32_at(y[1]), f32_at(y[0]));
        acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(d, yd), isum));
        ib += 4;
    }
    let mut lanes = [0f32; 4];
    _mm_storeu_ps(lanes.as_mut_ptr(), acc);
    for ib in ib..nb {
        let (x, y) = (wp.add(ib * Q6_K_BYTES), ap.add(ib * Q8_K_BYTES));
        prefetch_ahead(x, Q6_K_BYTES);
        lanes[ib & 3] += (f16_at(x.add(208)) * f32_at(y)) * hsum_i32_8(q6_k_block(x, y)) as f32;
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}
