//! AVX2 + FMA + F16C dot products (x86_64 only).
//!
//! Each public function here is a safe wrapper around a `#[target_feature]` kernel. They
//! are only handed out by [`crate::dot_kernel`] after run-time detection confirmed the CPU
//! has the features, which is what makes the `unsafe` calls sound. Every kernel checks its
//! slice lengths before touching memory through raw pointers.
//!
//! Integer block sums are computed exactly; the float accumulation follows the order of
//! the scalar path ([`Acc4`] / [`reduce16`]), so both give bit-identical results.

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

fn blocks256(bytes: usize) -> impl Fn(usize) -> usize {
    move |n| n / QK_K * bytes
}

safe_wrapper!(dot_f32, dot_f32_k, |n| 4 * n, |n| 4 * n);
safe_wrapper!(dot_f16, dot_f16_k, |n| 2 * n, |n| 2 * n);
safe_wrapper!(dot_bf16, dot_bf16_k, |n| 2 * n, |n| 2 * n);
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
pub(crate) unsafe fn hsum_ps_8(s: __m256) -> f32 {
    // Same order as `reduce16`'s tail: lo + hi, then lanes (0+2, 1+3), then 0 + 1.
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    let v = _mm_add_ss(u, _mm_shuffle_ps(u, u, 1));
    _mm_cvtss_f32(v)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn hsum_i32_8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    _mm_cvtsi128_si32(s)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f16_at(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn f32_at(p: *const u8) -> f32 {
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

/// Prefetch the cache lines [`crate::PREFETCH_BYTES`] past `[p, p + len)`. Past a row's end this
/// touches the next row, which comes next anyway; prefetches never fault.
#[inline(always)]
pub(crate) unsafe fn prefetch_ahead(p: *const u8, len: usize) {
    let mut off = 0;
    while off < len {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off + crate::PREFETCH_BYTES) as *const i8);
        off += 64;
    }
}

// ---------------------------------------------------------------- float types

macro_rules! float_dot {
    ($name:ident, $elem:expr, $load:ident, $scalar:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: &[u8], a: &[u8], n: usize) -> f32 {
            let (wp, ap) = (w.as_ptr(), a.as_ptr());
            // 16 lanes in two accumulators, as `reduce16` expects.
            let n16 = n / 16 * 16;
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut i = 0;
            while i < n16 {
                if (i * $elem) % 64 == 0 {
                    prefetch_ahead(wp.add(i * $elem), 1);
                }
                for (k, acck) in acc.iter_mut().enumerate() {
                    let off = (i + 8 * k) * $elem;
                    *acck = _mm256_fmadd_ps($load(wp.add(off)), $load(ap.add(off)), *acck);
                }
                i += 16;
            }
            let s = _mm256_add_ps(acc[0], acc[1]);
            let mut tail = 0f32;
            for i in n16..n {
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
//
// Four blocks at a time: their exact integer sums are reduced together into one vector of
// four (`reduce4_i32`), their scales converted together, and the four float block terms
// added to one 4-lane accumulator, which is `Acc4` (block `ib` to lane `ib % 4`) done in a
// register. Leftover blocks go through the same lanes one at a time.

/// Which 32-element block type a kernel reads.
const T_Q8_0: u8 = 0;
const T_Q4_0: u8 = 1;
const T_Q4_1: u8 = 2;
const T_Q5_0: u8 = 3;
const T_Q5_1: u8 = 4;

/// (weight block bytes, activation block bytes, whether the block has a min term).
const fn b32_layout(t: u8) -> (usize, usize, bool) {
    match t {
        T_Q8_0 => (Q8_0_BYTES, Q8_0_BYTES, false),
        T_Q4_0 => (Q4_0_BYTES, Q8_0_BYTES, false),
        T_Q4_1 => (Q4_1_BYTES, Q8_1_BYTES, true),
        T_Q5_0 => (Q5_0_BYTES, Q8_0_BYTES, false),
        _ => (Q5_1_BYTES, Q8_1_BYTES, true),
    }
}

/// Four block sums, exact, from four vectors of eight partial sums each.
#[inline(always)]
pub(crate) unsafe fn reduce4_i32(v0: __m256i, v1: __m256i, v2: __m256i, v3: __m256i) -> __m128i {
    let a = _mm256_hadd_epi32(v0, v1);
    let b = _mm256_hadd_epi32(v2, v3);
    let c = _mm256_hadd_epi32(a, b);
    _mm_add_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1))
}

#[inline(always)]
unsafe fn u16_at(p: *const u8) -> i16 {
    std::ptr::read_unaligned(p as *const i16)
}

/// The block scales `d` (f16 at offset 0) of four weight blocks, widened.
#[inline(always)]
pub(crate) unsafe fn f16_x4(x: [*const u8; 4]) -> __m128 {
    let h = _mm_set_epi16(
        0,
        0,
        0,
        0,
        u16_at(x[3]),
        u16_at(x[2]),
        u16_at(x[1]),
        u16_at(x[0]),
    );
    _mm_cvtph_ps(h)
}

/// The `(d, m)` f16 pairs (offset 0) of four weight blocks, widened: `[d0 m0 d1 m1 ...]`.
#[inline(always)]
unsafe fn f16_pairs_x4(x: [*const u8; 4]) -> __m256 {
    let r = |p: *const u8| std::ptr::read_unaligned(p as *const i32);
    _mm256_cvtph_ps(_mm_set_epi32(r(x[3]), r(x[2]), r(x[1]), r(x[0])))
}

/// `sum(u8 x * i8 y)` over 32 bytes as 8 i32 lanes (each pair of products fits in i16).
#[inline(always)]
unsafe fn dot_u8_i8<const VNNI: bool>(x: __m256i, y: __m256i) -> __m256i {
    if VNNI {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y)
    } else {
        _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
    }
}

/// A weight block's 32 quants as bytes, ready for [`b32_dot`]: signed values for the
/// types without a min (Q8_0, Q4_0, Q5_0), unsigned ones for Q4_1 / Q5_1. Unpacked once
/// and shared by every activation row it meets.
#[inline(always)]
unsafe fn b32_unpack<const T: u8>(x: *const u8) -> __m256i {
    match T {
        T_Q8_0 => load(x.add(2)),
        T_Q4_0 => _mm256_sub_epi8(nibbles_32(x.add(2)), _mm256_set1_epi8(8)),
        T_Q4_1 => nibbles_32(x.add(4)),
        T_Q5_0 => {
            let qh = std::ptr::read_unaligned(x.add(2) as *const u32);
            // value - 16: nibble when the 5th bit is set, nibble | 0xF0 (= nibble - 16) when not.
            _mm256_or_si256(
                nibbles_32(x.add(6)),
                _mm256_andnot_si256(bits_to_bytes_32(qh), _mm256_set1_epi8(0xF0u8 as i8)),
            )
        }
        _ => {
            let qh = std::ptr::read_unaligned(x.add(4) as *const u32);
            _mm256_or_si256(
                nibbles_32(x.add(8)),
                _mm256_and_si256(bits_to_bytes_32(qh), _mm256_set1_epi8(0x10)),
            )
        }
    }
}

/// Exact partial sums (8 lanes) of one block's integer dot product, from the unpacked
/// weight quants `qx` and the activation block at `y`.
#[inline(always)]
unsafe fn b32_dot<const T: u8, const VNNI: bool>(qx: __m256i, y: *const u8) -> __m256i {
    match T {
        T_Q4_1 | T_Q5_1 => dot_u8_i8::<VNNI>(qx, load(y.add(4))),
        _ => {
            let qy = load(y.add(2));
            dot_u8_i8::<VNNI>(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx))
        }
    }
}

/// `ys`: the activation blocks' scales widened to f32, `[d]` per block (Q8_0) or `[d, s]`
/// per block (Q8_1), as [`crate::act_scales`] writes them.
#[inline(always)]
unsafe fn dot_b32<const T: u8, const VNNI: bool>(w: &[u8], a: &[u8], ys: &[f32], n: usize) -> f32 {
    dot_b32_n::<T, VNNI, 1>(w.as_ptr(), [a.as_ptr()], [ys.as_ptr()], n)[0]
}

/// One weight row against `N` activation rows: each weight block is unpacked once for all
/// of them. Every activation row's result is computed with exactly the operations, in the
/// order, of the one-row product (`N = 1`), so it does not depend on `N`.
#[inline(always)]
unsafe fn dot_b32_n<const T: u8, const VNNI: bool, const N: usize>(
    wp: *const u8,
    ap: [*const u8; N],
    sp: [*const f32; N],
    n: usize,
) -> [f32; N] {
    let (wb, ab, min) = b32_layout(T);
    let nb = n / QK;
    let mut acc = [_mm_setzero_ps(); N];
    let mut ib = 0;
    while ib + 4 <= nb {
        prefetch_ahead(wp.add(ib * wb), 4 * wb);
        let x: [*const u8; 4] = std::array::from_fn(|k| wp.add((ib + k) * wb));
        let qx: [__m256i; 4] = std::array::from_fn(|k| b32_unpack::<T>(x[k]));
        let (pairs, dx) = if min {
            (f16_pairs_x4(x), _mm_setzero_ps())
        } else {
            (_mm256_setzero_ps(), f16_x4(x))
        };
        for j in 0..N {
            let y: [*const u8; 4] = std::array::from_fn(|k| ap[j].add((ib + k) * ab));
            let s = _mm_cvtepi32_ps(reduce4_i32(
                b32_dot::<T, VNNI>(qx[0], y[0]),
                b32_dot::<T, VNNI>(qx[1], y[1]),
                b32_dot::<T, VNNI>(qx[2], y[2]),
                b32_dot::<T, VNNI>(qx[3], y[3]),
            ));
            let v = if min {
                // [dx*dy, mx*sy] for four blocks, then split into the two halves of the sum.
                let p = _mm256_mul_ps(pairs, _mm256_loadu_ps(sp[j].add(2 * ib)));
                let (lo, hi) = (_mm256_castps256_ps128(p), _mm256_extractf128_ps(p, 1));
                let dd = _mm_shuffle_ps(lo, hi, 0b10_00_10_00);
                let ms = _mm_shuffle_ps(lo, hi, 0b11_01_11_01);
                _mm_add_ps(_mm_mul_ps(dd, s), ms)
            } else {
                _mm_mul_ps(_mm_mul_ps(dx, _mm_loadu_ps(sp[j].add(ib))), s)
            };
            acc[j] = _mm_add_ps(acc[j], v);
        }
        ib += 4;
    }
    let mut out = [0f32; N];
    for j in 0..N {
        let mut lanes = [0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), acc[j]);
        for ib in ib..nb {
            let (x, y) = (wp.add(ib * wb), ap[j].add(ib * ab));
            let isum = hsum_i32_8(b32_dot::<T, VNNI>(b32_unpack::<T>(x), y));
            let mut v = (f16_at(x) * f16_at(y)) * isum as f32;
            if min {
                v += f16_at(x.add(2)) * f16_at(y.add(2));
            }
            lanes[ib & 3] += v;
        }
        out[j] = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
    }
    out
}

/// Checks the lengths of a 32-element-block dot product's inputs.
#[inline(always)]
fn check_b32<const T: u8>(w: &[u8], a: &[u8], ys: &[f32], n: usize) {
    let (wb, ab, min) = b32_layout(T);
    let nb = n / QK;
    assert!(
        w.len() >= nb * wb && a.len() >= nb * ab && ys.len() >= nb * (1 + min as usize),
        "dot: input shorter than the row"
    );
}

macro_rules! b32_wrapper {
    ($name:ident, $name4:ident, $t:expr, $vnni:expr, $feat:literal) => {
        pub fn $name(w: &[u8], a: &[u8], ys: &[f32], n: usize) -> f32 {
            #[target_feature(enable = $feat)]
            unsafe fn k(w: &[u8], a: &[u8], ys: &[f32], n: usize) -> f32 {
                dot_b32::<{ $t }, $vnni>(w, a, ys, n)
            }
            check_b32::<{ $t }>(w, a, ys, n);
            // SAFETY: only handed out by `dot_kernel` after run-time detection of the
            // features; lengths checked above.
            unsafe { k(w, a, ys, n) }
        }

        /// One weight row against four activation rows, each bit-identical to the one-row dot.
        pub fn $name4(w: &[u8], a: [&[u8]; 4], ys: [&[f32]; 4], n: usize) -> [f32; 4] {
            #[target_feature(enable = $feat)]
            unsafe fn k(w: &[u8], a: [&[u8]; 4], ys: [&[f32]; 4], n: usize) -> [f32; 4] {
                dot_b32_n::<{ $t }, $vnni, 4>(
                    w.as_ptr(),
                    a.map(|r| r.as_ptr()),
                    ys.map(|r| r.as_ptr()),
                    n,
                )
            }
            for j in 0..4 {
                check_b32::<{ $t }>(w, a[j], ys[j], n);
            }
            // SAFETY: as for the one-row product.
            unsafe { k(w, a, ys, n) }
        }
    };
}

b32_wrapper!(dot_q8_0, dot4_q8_0, T_Q8_0, false, "avx2,fma,f16c");
b32_wrapper!(dot_q4_0, dot4_q4_0, T_Q4_0, false, "avx2,fma,f16c");
b32_wrapper!(dot_q4_1, dot4_q4_1, T_Q4_1, false, "avx2,fma,f16c");
b32_wrapper!(dot_q5_0, dot4_q5_0, T_Q5_0, false, "avx2,fma,f16c");
b32_wrapper!(dot_q5_1, dot4_q5_1, T_Q5_1, false, "avx2,fma,f16c");

/// The same kernels with AVX-512 VNNI (`vpdpbusd` on ymm for the byte products).
pub mod vnni {
    use super::*;

    /// Whether the CPU has AVX-512 VNNI with VL (on top of AVX2/FMA/F16C).
    pub fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            crate::level_supported(crate::SimdLevel::Avx2)
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512vnni")
        })
    }

    b32_wrapper!(
        dot_q8_0,
        dot4_q8_0,
        T_Q8_0,
        true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
    b32_wrapper!(
        dot_q4_0,
        dot4_q4_0,
        T_Q4_0,
        true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
    b32_wrapper!(
        dot_q4_1,
        dot4_q4_1,
        T_Q4_1,
        true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
    b32_wrapper!(
        dot_q5_0,
        dot4_q5_0,
        T_Q5_0,
        true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
    b32_wrapper!(
        dot_q5_1,
        dot4_q5_1,
        T_Q5_1,
        true,
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni"
    );
}

// ---------------------------------------------------------------- K-quants

/// Scales (bytes 0..8) and mins (bytes 8..16) of a Q4_K/Q5_K block's 12 packed scale bytes
/// (ggml's `utmp` shuffle), equal to [`scales_mins_k4`].
#[inline(always)]
pub(crate) fn scales_mins_fast(q: &[u8]) -> [u32; 4] {
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
        prefetch_ahead(xs.as_ptr(), Q4_K_BYTES);
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
        prefetch_ahead(xs.as_ptr(), Q5_K_BYTES);
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
        prefetch_ahead(xs.as_ptr(), Q6_K_BYTES);
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
