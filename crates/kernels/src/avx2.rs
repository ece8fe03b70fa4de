//! AVX2 + FMA + F16C dot products (x86_64 only).
//!
//! Each public function here is a safe wrapper around a `#[target_feature]` kernel. They
//! are only handed out by [`crate::dot_kernel`] after run-time detection confirmed the CPU
//! has the features, which is what makes the `unsafe` calls sound. Every kernel checks its
//! slice lengths before touching memory through raw pointers.
//!
//! Integer block sums are computed exactly; the float accumulation follows the order of
//! the scalar path ([`Acc4`] / [`reduce32`]), so both give bit-identical results.

use crate::blocks::*;
use std::arch::x86_64::*;

macro_rules! safe_wrapper {
    ($name:ident, $inner:ident, $wb:expr, $ab:expr) => {
        pub fn $name(w: &[u8], a: &[u8], n: usize) -> f32 {
            let (wb, ab): (usize, usize) = ($wb(n), $ab(n));
            assert!(
                w.len() >= wb && a.len() >= ab,
                concat!(stringify!($name), ": input shorter than the row")
            );
            debug_assert!(crate::level_supported(crate::SimdLevel::Avx2));
            // SAFETY: only reachable after run-time detection of avx2+fma+f16c
            // (see `dot_kernel`), and the lengths were checked above.
            unsafe { $inner(w, a, n) }
        }
    };
}

fn blocks32(bytes: usize) -> impl Fn(usize) -> usize {
    move |n| n / QK * bytes
}
fn blocks256(bytes: usize) -> impl Fn(usize) -> usize {
    move |n| n / QK_K * bytes
}

safe_wrapper!(dot_f32, dot_f32_k, |n| 4 * n, |n| 4 * n);
safe_wrapper!(dot_f16, dot_f16_k, |n| 2 * n, |n| 2 * n);
safe_wrapper!(dot_bf16, dot_bf16_k, |n| 2 * n, |n| 2 * n);
safe_wrapper!(
    dot_q8_0,
    dot_q8_0_k,
    blocks32(Q8_0_BYTES),
    blocks32(Q8_0_BYTES)
);
safe_wrapper!(
    dot_q4_0,
    dot_q4_0_k,
    blocks32(Q4_0_BYTES),
    blocks32(Q8_0_BYTES)
);
safe_wrapper!(
    dot_q4_1,
    dot_q4_1_k,
    blocks32(Q4_1_BYTES),
    blocks32(Q8_1_BYTES)
);
safe_wrapper!(
    dot_q5_0,
    dot_q5_0_k,
    blocks32(Q5_0_BYTES),
    blocks32(Q8_0_BYTES)
);
safe_wrapper!(
    dot_q5_1,
    dot_q5_1_k,
    blocks32(Q5_1_BYTES),
    blocks32(Q8_1_BYTES)
);
safe_wrapper!(
    dot_q4_k,
    dot_q4_k_k,
    blocks256(Q4_K_BYTES),
    blocks256(Q8_K_BYTES)
);
safe_wrapper!(
    dot_q5_k,
    dot_q5_k_k,
    blocks256(Q5_K_BYTES),
    blocks256(Q8_K_BYTES)
);
safe_wrapper!(
    dot_q6_k,
    dot_q6_k_k,
    blocks256(Q6_K_BYTES),
    blocks256(Q8_K_BYTES)
);

// ---------------------------------------------------------------- helpers

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_ps_8(s: __m256) -> f32 {
    // Same order as `reduce32`'s tail: lo + hi, then lanes (0+2, 1+3), then 0 + 1.
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    let v = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
    _mm_cvtss_f32(v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_at(p: *const u8) -> f32 {
    f32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)])
}

/// 32 bytes: low nibbles of 16 bytes at `p`, then their high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles_32(p: *const u8) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bytes, byte j = 0xFF if bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bits_to_bytes_32(bits: u32) -> __m256i {
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Exact dot of 32 signed bytes `x` by 32 signed bytes `y` (|y| <= 127), as 8 i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Exact dot of 32 unsigned bytes `x` (<= 63) by 32 signed bytes `y`, as 16 i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_i8_16(x: __m256i, y: __m256i) -> __m256i {
    _mm256_maddubs_epi16(x, y)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

// ---------------------------------------------------------------- float types

macro_rules! float_dot {
    ($name:ident, $elem:expr, $load:ident, $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], a: &[u8], n: usize) -> f32 {
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            let n32 = n / 32 * 32;
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i < n32 {
                for (k, acck) in acc.iter_mut().enumerate() {
                    let off = (i + 8 * k) * $elem;
                    *acck = _mm256_fmadd_ps($load(wp.add(off)), $load(ap.add(off)), *acck);
                }
                i += 32;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut tail = 0f32;
            for i in n32..n {
                let f: fn(&[u8], usize) -> f32 = $scalar;
                tail = f(w, i).mul_add(f(a, i), tail);
            }
            hsum_ps_8(s) + tail
        }
    };
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f32x8(p: *const u8) -> __m256 {
    _mm256_loadu_ps(p as *const f32)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_f16x8(p: *const u8) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load_bf16x8(p: *const u8) -> __m256 {
    let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
    _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
}

float_dot!(dot_f32_k, 4, load_f32x8, |b, i| rd_f32(b, 4 * i));
float_dot!(dot_f16_k, 2, load_f16x8, |b, i| rd_f16(b, 2 * i));
float_dot!(dot_bf16_k, 2, load_bf16x8, |b, i| bf16_to_f32(
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
));

// ---------------------------------------------------------------- 32-element blocks

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = w.as_ptr().add(ib * Q8_0_BYTES);
        let y = a.as_ptr().add(ib * Q8_0_BYTES);
        let isum = hsum_i32_8(dot_i8_i8(load(x.add(2)), load(y.add(2))));
        acc.add(ib, (f16_at(x) * f16_at(y)) * isum as f32);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let eight = _mm256_set1_epi8(8);
    for ib in 0..n / QK {
        let x = w.as_ptr().add(ib * Q4_0_BYTES);
        let y = a.as_ptr().add(ib * Q8_0_BYTES);
        let qx = _mm256_sub_epi8(nibbles_32(x.add(2)), eight);
        let isum = hsum_i32_8(dot_i8_i8(qx, load(y.add(2))));
        acc.add(ib, (f16_at(x) * f16_at(y)) * isum as f32);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_1_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let ones = _mm256_set1_epi16(1);
    for ib in 0..n / QK {
        let x = w.as_ptr().add(ib * Q4_1_BYTES);
        let y = a.as_ptr().add(ib * Q8_1_BYTES);
        let qx = nibbles_32(x.add(4));
        let p = _mm256_madd_epi16(dot_u8_i8_16(qx, load(y.add(4))), ones);
        let isum = hsum_i32_8(p);
        let v = (f16_at(x) * f16_at(y)) * isum as f32 + f16_at(x.add(2)) * f16_at(y.add(2));
        acc.add(ib, v);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let hi_nib = _mm256_set1_epi8(0xF0u8 as i8);
    for ib in 0..n / QK {
        let x = w.as_ptr().add(ib * Q5_0_BYTES);
        let y = a.as_ptr().add(ib * Q8_0_BYTES);
        let qh = u32::from_le_bytes([*x.add(2), *x.add(3), *x.add(4), *x.add(5)]);
        // value - 16: nibble when the 5th bit is set, nibble | 0xF0 (= nibble - 16) when not.
        let bx = _mm256_or_si256(
            nibbles_32(x.add(6)),
            _mm256_andnot_si256(bits_to_bytes_32(qh), hi_nib),
        );
        let isum = hsum_i32_8(dot_i8_i8(bx, load(y.add(2))));
        acc.add(ib, (f16_at(x) * f16_at(y)) * isum as f32);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_1_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let bit4 = _mm256_set1_epi8(0x10);
    let ones = _mm256_set1_epi16(1);
    for ib in 0..n / QK {
        let x = w.as_ptr().add(ib * Q5_1_BYTES);
        let y = a.as_ptr().add(ib * Q8_1_BYTES);
        let qh = u32::from_le_bytes([*x.add(4), *x.add(5), *x.add(6), *x.add(7)]);
        let bx = _mm256_or_si256(
            nibbles_32(x.add(8)),
            _mm256_and_si256(bits_to_bytes_32(qh), bit4),
        );
        let p = _mm256_madd_epi16(dot_u8_i8_16(bx, load(y.add(4))), ones);
        let isum = hsum_i32_8(p);
        let v = (f16_at(x) * f16_at(y)) * isum as f32 + f16_at(x.add(2)) * f16_at(y.add(2));
        acc.add(ib, v);
    }
    acc.finish()
}

// ---------------------------------------------------------------- K-quants

/// Scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K block's 12 packed scale bytes
/// (ggml's `utmp` shuffle), equal to [`scales_mins_k4`].
#[inline(always)]
fn scales_mins_fast(q: &[u8]) -> [u32; 4] {
    const KMASK1: u32 = 0x3f3f3f3f;
    const KMASK2: u32 = 0x0f0f0f0f;
    const KMASK3: u32 = 0x03030303;
    let mut u = [rd_u32(q, 0), rd_u32(q, 4), rd_u32(q, 8), 0];
    u[3] = ((u[2] >> 4) & KMASK2) | (((u[1] >> 6) & KMASK3) << 4);
    let uaux = u[1] & KMASK1;
    u[1] = (u[2] & KMASK2) | (((u[0] >> 6) & KMASK3) << 4);
    u[2] = uaux;
    u[0] &= KMASK1;
    u
}

/// `sum_j mins[j] * (bsums[2j] + bsums[2j+1])` with the 8 mins as bytes (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn summins_simd(ys: *const u8, mins: __m128i) -> i32 {
    let bs = _mm256_loadu_si256(ys.add(Q8_K_BSUMS) as *const __m256i);
    let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    let prod = _mm_madd_epi16(_mm_cvtepu8_epi16(mins), pairs);
    let s = _mm_add_epi32(prod, _mm_unpackhi_epi64(prod, prod));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let m4 = _mm256_set1_epi8(0x0F);
    for ib in 0..n / QK_K {
        let xs = &w[ib * Q4_K_BYTES..(ib + 1) * Q4_K_BYTES];
        let ys = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let u = scales_mins_fast(&xs[4..16]);
        let sc: [u8; 8] = std::mem::transmute([u[0], u[1]]);
        let mins = _mm_set_epi32(0, 0, u[3] as i32, u[2] as i32);
        let q4 = xs.as_ptr().add(16);
        let q8 = ys.as_ptr().add(Q8_K_QS);
        let mut sumi = _mm256_setzero_si256();
        for p in 0..4 {
            let q = load(q4.add(32 * p));
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let p0 = dot_u8_i8_16(lo, load(q8.add(64 * p)));
            let p1 = dot_u8_i8_16(hi, load(q8.add(64 * p + 32)));
            let p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * p] as i16));
            let p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * p + 1] as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        let isum = hsum_i32_8(sumi);
        let summins = summins_simd(ys.as_ptr(), mins);
        let yd = f32_at(ys.as_ptr());
        let v = (f16_at(xs.as_ptr()) * yd) * isum as f32
            - (f16_at(xs.as_ptr().add(2)) * yd) * summins as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_k_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let m4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    for ib in 0..n / QK_K {
        let xs = &w[ib * Q5_K_BYTES..(ib + 1) * Q5_K_BYTES];
        let ys = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (sc, mn) = scales_mins_k4(&xs[4..16]);
        let hbits = load(xs.as_ptr().add(16));
        let q5 = xs.as_ptr().add(48);
        let q8 = ys.as_ptr().add(Q8_K_QS);
        let mut sumi = _mm256_setzero_si256();
        for p in 0..4 {
            let q = load(q5.add(32 * p));
            let h0 = _mm256_and_si256(
                _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * p as i32)),
                one,
            );
            let h1 = _mm256_and_si256(
                _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * p as i32 + 1)),
                one,
            );
            let lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(h0, 4));
            let hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                _mm256_slli_epi16(h1, 4),
            );
            let p0 = dot_u8_i8_16(lo, load(q8.add(64 * p)));
            let p1 = dot_u8_i8_16(hi, load(q8.add(64 * p + 32)));
            let p0 = _mm256_madd_epi16(p0, _mm256_set1_epi16(sc[2 * p] as i16));
            let p1 = _mm256_madd_epi16(p1, _mm256_set1_epi16(sc[2 * p + 1] as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
        }
        let isum = hsum_i32_8(sumi);
        let summins = crate::scalar::k_summins(ys, &mn);
        let yd = f32_at(ys.as_ptr());
        let v = (f16_at(xs.as_ptr()) * yd) * isum as f32
            - (f16_at(xs.as_ptr().add(2)) * yd) * summins as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

/// Bits `s..s+2` of each byte of `qh`, moved to bits 4..6.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn high2(qh: __m256i, s: i32, m2: __m256i) -> __m256i {
    _mm256_slli_epi16(
        _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), m2),
        4,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    for ib in 0..n / QK_K {
        let xs = &w[ib * Q6_K_BYTES..(ib + 1) * Q6_K_BYTES];
        let ys = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let q8 = ys.as_ptr().add(Q8_K_QS);
        let sc = &xs[192..208];
        let mut sumi = _mm256_setzero_si256();
        for h in 0..2 {
            let ql0 = load(xs.as_ptr().add(64 * h));
            let ql1 = load(xs.as_ptr().add(64 * h + 32));
            let qh = load(xs.as_ptr().add(128 + 32 * h));
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high2(qh, 0, m2)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high2(qh, 2, m2)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    high2(qh, 4, m2),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    high2(qh, 6, m2),
                ),
            ];
            for (k, qk) in q.iter().enumerate() {
                let g = 8 * h + 2 * k;
                let prod = dot_u8_i8_16(*qk, load(q8.add(128 * h + 32 * k)));
                let scv = _mm256_set_m128i(
                    _mm_set1_epi16((sc[g + 1] as i8) as i16),
                    _mm_set1_epi16((sc[g] as i8) as i16),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(prod, scv));
            }
        }
        // The stored quants are value + 32: subtract 32 * sum_g scale_g * bsum_g.
        let corr = {
            let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
            let bs = _mm256_loadu_si256(ys.as_ptr().add(Q8_K_BSUMS) as *const __m256i);
            hsum_i32_8(_mm256_madd_epi16(s16, bs))
        };
        let isum = hsum_i32_8(sumi) - 32 * corr;
        acc.add(
            ib,
            (f16_at(xs.as_ptr().add(208)) * f32_at(ys.as_ptr())) * isum as f32,
        );
    }
    acc.finish()
}
