//! The exponential of the hot elementwise work: SwiGLU's `silu(gate) · up` and the f16
//! attention's softmax, one function on every SIMD path.
//!
//! It is the polynomial ggml's vector SiLU and softmax use (ARM's optimized-routines
//! `expf`: `x = n ln 2 + b` with `n` rounded to nearest, a degree-5 polynomial in `b`,
//! then `· 2^n`), so that verity rounds as llama.cpp does in the normal range.
//! Every path runs the same IEEE operations in the same order (each `fma` fused, once
//! rounded), so a row's result has the same bits on the scalar reference, AVX2, AVX-512 and
//! NEON. Scaling by `2^n` is two exact power-of-two factors (`n = n1 + n2`, each in the
//! normal range), so the only rounding is the last multiply's, correct into the
//! subnormals, with no special cases.

use crate::SimdLevel;

const SHIFT: f32 = 12_582_912.0; // 0x1.8p23: adding it rounds to an integer.
const LOG2E: f32 = f32::from_bits(0x3fb8_aa3b); // 0x1.715476p+0
const LN2_HI: f32 = f32::from_bits(0x3f31_7200); // 0x1.62e4p-1
const LN2_LO: f32 = f32::from_bits(0x35bf_be8e); // 0x1.7f7d1cp-20
const C1: f32 = f32::from_bits(0x3f7f_fff6); // 0x1.ffffecp-1
const C2: f32 = f32::from_bits(0x3eff_fedb); // 0x1.fffdb6p-2
const C3: f32 = f32::from_bits(0x3e2a_af33); // 0x1.555e66p-3
const C4: f32 = f32::from_bits(0x3d2b_9f17); // 0x1.573e2ep-5
const C5: f32 = f32::from_bits(0x3c07_2010); // 0x1.0e4020p-7
/// Inputs are clamped to this range first: below it `e^x` is 0 after rounding, above it
/// infinite, and inside it `n` stays within [-150, 129], where both halves of `2^n` are
/// normal floats. The clamp is x86's `max` then `min` (a NaN becomes `X_MIN`, so its
/// exponential is 0), written the same way on every path.
const X_MIN: f32 = -104.0;
const X_MAX: f32 = 89.0;

/// `e^x`, the scalar reference of the vector paths (about 1.5 ulp).
pub fn exp(x: f32) -> f32 {
    let x = if x > X_MIN { x } else { X_MIN };
    let x = if x < X_MAX { x } else { X_MAX };
    let z = x.mul_add(LOG2E, SHIFT);
    let n = z - SHIFT;
    let b = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let u = b * b;
    let j = C5
        .mul_add(b, C4)
        .mul_add(u, C3.mul_add(b, C2))
        .mul_add(u, C1.mul_add(b, 1.0));
    let n = n as i32;
    let n1 = n >> 1;
    let pow2 = |k: i32| f32::from_bits(((k + 127) as u32) << 23);
    j * pow2(n1) * pow2(n - n1)
}

/// `silu(g) · u = g / (1 + e^-g) · u`, the scalar reference.
#[inline]
fn silu_mul_one(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// `gate[i] = silu(gate[i]) · up[i]` on the active SIMD path.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    silu_mul_with(crate::simd_level(), gate, up)
}

/// [`silu_mul`] on a given path (the best supported one if the CPU lacks `level`).
pub fn silu_mul_with(level: SimdLevel, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    let done = match crate::effective(level) {
        // SAFETY: `effective` returns only levels this CPU supports.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::silu_mul_512(gate, up) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::silu_mul_256(gate, up) },
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => unsafe { arm::silu_mul_neon(gate, up) },
        _ => 0,
    };
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        *g = silu_mul_one(*g, u);
    }
}

/// Softmax's numerator in place, `x[i] = e^(x[i] - max)`, and its sum in f64, summed as
/// ggml's `soft_max` sums a row: 16 values at a time in f32 (halves added, then quarters,
/// then pairs, as `_mm512_reduce_add_ps` does), each such partial sum added to an f64 in
/// order. The 16-element groups are those of the whole row from its first key, so `align`
/// is `x[0]`'s place in its group (a sliding window's row starts mid-group); the keys
/// outside `x` count as ggml's masked ones, exactly 0. The same on every path.
pub fn exp_sum(x: &mut [f32], max: f32, align: usize) -> f64 {
    exp_sum_with(crate::simd_level(), x, max, align)
}

/// [`exp_sum`] on a given path (the best supported one if the CPU lacks `level`).
pub fn exp_sum_with(level: SimdLevel, x: &mut [f32], max: f32, align: usize) -> f64 {
    assert!(
        align < 16,
        "exp_sum: align {align} is not a place in a group of 16"
    );
    let done = match crate::effective(level) {
        // SAFETY: `effective` returns only levels this CPU supports.
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => unsafe { x86::exp_shifted_512(x, max) },
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => unsafe { x86::exp_shifted_256(x, max) },
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => unsafe { arm::exp_shifted_neon(x, max) },
        _ => 0,
    };
    for v in &mut x[done..] {
        *v = exp(*v - max);
    }
    let mut sum = 0f64;
    let mut group = [0f32; 16];
    let mut start = 0;
    let mut place = align;
    while start < x.len() {
        let n = (16 - place).min(x.len() - start);
        group.fill(0.0);
        group[place..place + n].copy_from_slice(&x[start..start + n]);
        sum += reduce16(&group) as f64;
        start += n;
        place = 0;
    }
    sum
}

/// `_mm512_reduce_add_ps`'s order: lanes `i + 8`, then `i + 4`, then `i + 2`, then `i + 1`.
#[inline]
fn reduce16(v: &[f32; 16]) -> f32 {
    let h: [f32; 8] = std::array::from_fn(|i| v[i + 8] + v[i]);
    let q: [f32; 4] = std::array::from_fn(|i| h[i + 4] + h[i]);
    (q[0] + q[2]) + (q[1] + q[3])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `e^x` in 16 lanes, as [`exp`] computes each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp512(x: __m512) -> __m512 {
        let s = |v: f32| _mm512_set1_ps(v);
        let x = _mm512_min_ps(_mm512_max_ps(x, s(X_MIN)), s(X_MAX));
        let z = _mm512_fmadd_ps(x, s(LOG2E), s(SHIFT));
        let nf = _mm512_sub_ps(z, s(SHIFT));
        let b = _mm512_fnmadd_ps(nf, s(LN2_LO), _mm512_fnmadd_ps(nf, s(LN2_HI), x));
        let uu = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(s(C5), b, s(C4)),
                uu,
                _mm512_fmadd_ps(s(C3), b, s(C2)),
            ),
            uu,
            _mm512_fmadd_ps(s(C1), b, s(1.0)),
        );
        let n = _mm512_cvtps_epi32(nf);
        let n1 = _mm512_srai_epi32::<1>(n);
        let n2 = _mm512_sub_epi32(n, n1);
        let bias = _mm512_set1_epi32(127);
        let p1 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n1, bias)));
        let p2 = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n2, bias)));
        _mm512_mul_ps(_mm512_mul_ps(j, p1), p2)
    }

    /// `e^x` in 8 lanes, as [`exp`] computes each.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp256(x: __m256) -> __m256 {
        let s = |v: f32| _mm256_set1_ps(v);
        let x = _mm256_min_ps(_mm256_max_ps(x, s(X_MIN)), s(X_MAX));
        let z = _mm256_fmadd_ps(x, s(LOG2E), s(SHIFT));
        let nf = _mm256_sub_ps(z, s(SHIFT));
        let b = _mm256_fnmadd_ps(nf, s(LN2_LO), _mm256_fnmadd_ps(nf, s(LN2_HI), x));
        let uu = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(s(C5), b, s(C4)),
                uu,
                _mm256_fmadd_ps(s(C3), b, s(C2)),
            ),
            uu,
            _mm256_fmadd_ps(s(C1), b, s(1.0)),
        );
        let n = _mm256_cvtps_epi32(nf);
        let n1 = _mm256_srai_epi32::<1>(n);
        let n2 = _mm256_sub_epi32(n, n1);
        let bias = _mm256_set1_epi32(127);
        let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
        let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
        _mm256_mul_ps(_mm256_mul_ps(j, p1), p2)
    }

    /// Whole 16-lane chunks; returns how many elements were done.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn silu_mul_512(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            let g = _mm512_loadu_ps(gate.as_ptr().add(i));
            let u = _mm512_loadu_ps(up.as_ptr().add(i));
            let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
            let r = _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0), e)), u);
            _mm512_storeu_ps(gate.as_mut_ptr().add(i), r);
        }
        n
    }

    /// Whole 8-lane chunks; returns how many elements were done.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_mul_256(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let u = _mm256_loadu_ps(up.as_ptr().add(i));
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let r = _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u);
            _mm256_storeu_ps(gate.as_mut_ptr().add(i), r);
        }
        n
    }

    /// `x[i] = e^(x[i] - max)` over whole 16-lane chunks; returns how many were done.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shifted_512(x: &mut [f32], max: f32) -> usize {
        let n = x.len() / 16 * 16;
        for i in (0..n).step_by(16) {
            let v = _mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), _mm512_set1_ps(max));
            _mm512_storeu_ps(x.as_mut_ptr().add(i), exp512(v));
        }
        n
    }

    /// [`exp_shifted_512`] in 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_256(x: &mut [f32], max: f32) -> usize {
        let n = x.len() / 8 * 8;
        for i in (0..n).step_by(8) {
            let v = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_set1_ps(max));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), exp256(v));
        }
        n
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;
    use std::arch::aarch64::*;

    /// `e^x` in 4 lanes, as [`exp`] computes each.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn exp_neon(x: float32x4_t) -> float32x4_t {
        let s = |v: f32| vdupq_n_f32(v);
        // vfmaq_f32(c, a, b) = c + a * b, fused.
        let fma = |a: float32x4_t, b: float32x4_t, c: float32x4_t| vfmaq_f32(c, a, b);
        // Compare and select, not vmaxq / vminq (which pass a NaN on): as x86's max / min.
        let x = vbslq_f32(vcgtq_f32(x, s(X_MIN)), x, s(X_MIN));
        let x = vbslq_f32(vcltq_f32(x, s(X_MAX)), x, s(X_MAX));
        let z = fma(x, s(LOG2E), s(SHIFT));
        let nf = vsubq_f32(z, s(SHIFT));
        let neg = vnegq_f32(nf);
        let b = fma(neg, s(LN2_LO), fma(neg, s(LN2_HI), x));
        let uu = vmulq_f32(b, b);
        let j = fma(
            fma(fma(s(C5), b, s(C4)), uu, fma(s(C3), b, s(C2))),
            uu,
            fma(s(C1), b, s(1.0)),
        );
        let n = vcvtq_s32_f32(nf);
        let n1 = vshrq_n_s32::<1>(n);
        let n2 = vsubq_s32(n, n1);
        let bias = vdupq_n_s32(127);
        let p1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
        let p2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
        vmulq_f32(vmulq_f32(j, p1), p2)
    }

    /// Whole 4-lane chunks; returns how many elements were done.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn silu_mul_neon(gate: &mut [f32], up: &[f32]) -> usize {
        let n = gate.len() / 4 * 4;
        for i in (0..n).step_by(4) {
            let g = vld1q_f32(gate.as_ptr().add(i));
            let u = vld1q_f32(up.as_ptr().add(i));
            let e = exp_neon(vnegq_f32(g));
            let r = vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), e)), u);
            vst1q_f32(gate.as_mut_ptr().add(i), r);
        }
        n
    }

    /// `x[i] = e^(x[i] - max)` over whole 4-lane chunks; returns how many were done.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn exp_shifted_neon(x: &mut [f32], max: f32) -> usize {
        let n = x.len() / 4 * 4;
        for i in (0..n).step_by(4) {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, exp_neon(vsubq_f32(vld1q_f32(p), vdupq_n_f32(max))));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm_over_the_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        // About 1.5 ulp of f32 (2^-23 = 1.19e-7).
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
        // Subnormal results round once, to the nearest.
        let tiny = exp(-100.0) as f64;
        assert!((tiny - (-100f64).exp()).abs() <= f32::from_bits(1) as f64 / 2.0);
    }

    #[test]
    fn every_path_gives_the_reference_bits() {
        let mut gate: Vec<f32> = (0..1037)
            .map(|i| ((i as f32) * 0.37).sin() * 30.0 - (i % 7) as f32)
            .collect();
        gate.extend([0.0, -0.0, 100.0, -100.0, 88.9, -88.9, 1e-30, -1e-30]);
        let up: Vec<f32> = (0..gate.len())
            .map(|i| 1.0 + (i as f32 * 0.11).cos())
            .collect();
        let want: Vec<u32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| silu_mul_one(g, u).to_bits())
            .collect();
        for level in [
            SimdLevel::Scalar,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
            SimdLevel::Neon,
        ] {
            if !crate::level_supported(level) {
                continue;
            }
            let mut g = gate.clone();
            silu_mul_with(level, &mut g, &up);
            let got: Vec<u32> = g.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{level:?}");
        }
    }

    #[test]
    fn exp_sum_gives_the_reference_bits_on_every_path() {
        for len in [0usize, 1, 7, 8, 15, 16, 17, 31, 100, 1037] {
            for align in [0, 5, 15] {
                let mut x: Vec<f32> = (0..len).map(|i| ((i as f32) * 0.61).sin() * 12.0).collect();
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if len > 3 {
                    // A NaN score's term is 0 on every path.
                    x[3] = f32::NAN;
                }
                let mut want = x.clone();
                let want_sum = exp_sum_with(SimdLevel::Scalar, &mut want, max, align);
                let plain: f64 = want.iter().map(|&v| v as f64).sum();
                assert!(!want_sum.is_nan());
                assert!((want_sum - plain).abs() <= 1e-6 * plain.max(1.0), "{len}");
                for (w, &v) in want.iter().zip(&x) {
                    assert_eq!(w.to_bits(), exp(v - max).to_bits());
                }
                for level in [SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon] {
                    if !crate::level_supported(level) {
                        continue;
                    }
                    let mut got = x.clone();
                    let sum = exp_sum_with(level, &mut got, max, align);
                    assert_eq!(sum.to_bits(), want_sum.to_bits(), "{level:?} len {len}");
                    let (g, w): (Vec<u32>, Vec<u32>) = got
                        .iter()
                        .zip(&want)
                        .map(|(a, b)| (a.to_bits(), b.to_bits()))
                        .unzip();
                    assert_eq!(g, w, "{level:?} len {len}");
                }
            }
        }
    }

    #[test]
    fn exp_sum_groups_as_ggml_does() {
        let mut x = vec![0f32; 20];
        let sum = exp_sum_with(SimdLevel::Scalar, &mut x, 0.0, 4);
        assert_eq!(sum, 20.0);
        assert_eq!(reduce16(&std::array::from_fn(|i| i as f32)), 120.0);
        // 1 and fifteen 2^-25: the tree rounds 1 + 2^-25 and 1 + 2^-24 down to 1 on the way
        // and ends at 1 + 3·2^-23, where the exact sum is 1 + 3.75·2^-23.
        let tiny = 2f32.powi(-25);
        let v: [f32; 16] = std::array::from_fn(|i| if i == 0 { 1.0 } else { tiny });
        assert_eq!(reduce16(&v), 1.0 + 3.0 * 2f32.powi(-23));
    }
}
