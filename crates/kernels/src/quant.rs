//! Quantizers: f32 rows to block formats.
//!
//! Two flavours exist in ggml and both are reproduced here:
//!
//! * the *reference* quantizers (`quantize_row_*_ref` in ggml-quants.c) that llama.cpp uses
//!   to write model files: `d = amax / 127`, `id = 1 / d`, `roundf` (ties away from zero);
//! * the *activation* quantizers that ggml-cpu uses inside matrix multiplication on x86
//!   (`quantize_row_q8_0` / `quantize_row_q8_1` in ggml-cpu/arch/x86/quants.c):
//!   `d = amax / 127`, `id = 127 / amax`, round to nearest even (`_mm256_round_ps`).
//!   Q8_K activations use the reference quantizer (ggml does too).

use crate::blocks::*;

/// Largest absolute value of a block (order-independent).
#[inline(always)]
fn amax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Element with the largest magnitude, keeping its sign; the first one wins ties
/// (ggml's `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`).
#[inline(always)]
fn signed_max(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline(always)]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

// ---------------------------------------------------------------- activation quantizers

/// Round to nearest, ties to even, for |x| <= 2^22 — what `round_ties_even` does, without
/// the libm call (`rintf`) that baseline x86_64 code makes for it: adding and subtracting
/// 1.5 * 2^23 leaves exactly the integer part rounded by the FPU's default mode. Larger
/// magnitudes (and NaN) go through `round_ties_even`.
#[inline(always)]
pub(crate) fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    if x.abs() <= 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// Q8_0 activation block, as ggml-cpu's x86 `quantize_row_q8_0`.
pub fn act_q8_0(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len() % QK, 0);
    #[cfg(target_arch = "x86_64")]
    let simd = crate::simd_level() == crate::SimdLevel::Avx512 && q8k_x86::available();
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked the CPU features; the block sizes are fixed.
        if simd {
            if let Some((d, _)) = unsafe { q8k_x86::block32(xb, &mut ob[2..]) } {
                ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                continue;
            }
        }
        let (d, _) = act_b32_block(xb, &mut ob[2..]);
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    }
}

/// The quants of one 32-element activation block (Q8_0 / Q8_1), written to `q`; returns
/// `(d, sum of quants)`.
fn act_b32_block(xb: &[f32], q: &mut [u8]) -> (f32, i32) {
    let m = amax(xb);
    let d = m / 127.0;
    let id = if m != 0.0 { 127.0 / m } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(xb) {
        let v = (round_even(v * id) as i32).clamp(-128, 127);
        sum += v;
        *o = v as i8 as u8;
    }
    (d, sum)
}

/// Q8_1 activation block, as ggml-cpu's x86 `quantize_row_q8_1` (`s = d * sum(q)`).
pub fn act_q8_1(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len() % QK, 0);
    #[cfg(target_arch = "x86_64")]
    let simd = crate::simd_level() == crate::SimdLevel::Avx512 && q8k_x86::available();
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_1_BYTES)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked the CPU features; the block sizes are fixed.
        if simd {
            if let Some((d, sum)) = unsafe { q8k_x86::block32(xb, &mut ob[4..]) } {
                ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
                ob[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
                continue;
            }
        }
        let (d, sum) = act_b32_block(xb, &mut ob[4..]);
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        ob[2..4].copy_from_slice(&f32_to_f16(d * sum as f32).to_le_bytes());
    }
}

/// Q8_K block (ggml's `quantize_row_q8_K_ref`, used for activations and files alike).
///
/// Note `d` is negative when the largest-magnitude element is positive: ggml scales by
/// `-127 / max`.
pub fn q8_k(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(x.len() % QK_K, 0);
    #[cfg(target_arch = "x86_64")]
    let simd = crate::simd_level() == crate::SimdLevel::Avx512 && q8k_x86::available();
    for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(Q8_K_BYTES)) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available()` checked the CPU features; the block sizes are fixed.
        if simd && unsafe { q8k_x86::block(xb, ob) } {
            continue;
        }
        q8_k_block(xb, ob);
    }
}

/// One Q8_K block, scalar reference.
fn q8_k_block(xb: &[f32], ob: &mut [u8]) {
    {
        let max = signed_max(xb);
        if max == 0.0 {
            ob.fill(0);
            return;
        }
        let iscale = -127.0 / max;
        let mut q = [0i8; QK_K];
        for (qv, &v) in q.iter_mut().zip(xb) {
            // ggml's nearest_int: round half to even for |v| < 2^22.
            *qv = (round_even(iscale * v) as i32).clamp(-128, 127) as i8;
        }
        ob[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        for (o, &v) in ob[Q8_K_QS..Q8_K_BSUMS].iter_mut().zip(&q) {
            *o = v as u8;
        }
        for g in 0..QK_K / 16 {
            let s: i32 = q[g * 16..g * 16 + 16].iter().map(|&v| v as i32).sum();
            let off = Q8_K_BSUMS + 2 * g;
            ob[off..off + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
    }
}

/// Q8_K activation blocks with AVX-512, bit-identical to the scalar [`q8_k`]: the largest
/// magnitude is order-independent, the first element reaching it is found with a compare
/// mask, and `vrndscaleps` rounds half to even as `round_even` does in this range.
#[cfg(target_arch = "x86_64")]
mod q8k_x86 {
    use crate::blocks::*;
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
        })
    }

    /// One 32-element block of the Q8_0 / Q8_1 activation quantizers: writes the 32 quants
    /// to `q` and returns `(d, sum of quants)`, bit-identical to the scalar code (same
    /// products, `vrndscaleps` rounds half to even as `round_even` does, same clamp).
    /// Returns `None` (writing nothing) if the block holds a NaN or an infinity, for the
    /// scalar code.
    ///
    /// # Safety
    /// [`available`] must be true.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn block32(xb: &[f32], q: &mut [u8]) -> Option<(f32, i32)> {
        assert!(xb.len() == QK && q.len() >= QK);
        let inf = _mm512_set1_ps(f32::INFINITY);
        let v = [
            _mm512_loadu_ps(xb.as_ptr()),
            _mm512_loadu_ps(xb.as_ptr().add(16)),
        ];
        // (No closures here: they would not inherit the target features, and the intrinsics
        // in them would become calls.)
        let a = [_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])];
        // Not less than infinity, or unordered: an infinity or a NaN.
        if _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a[0], inf)
            | _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(a[1], inf)
            != 0
        {
            return None;
        }
        let m = _mm512_reduce_max_ps(_mm512_max_ps(a[0], a[1]));
        let d = m / 127.0;
        let id = _mm512_set1_ps(if m != 0.0 { 127.0 / m } else { 0.0 });
        let (lo, hi) = (_mm512_set1_epi32(-128), _mm512_set1_epi32(127));
        let mut qi = [_mm512_setzero_si512(); 2];
        for (q, &v) in qi.iter_mut().zip(&v) {
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(v, id),
            );
            *q = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(r), hi), lo);
        }
        _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(qi[0]));
        _mm_storeu_si128(
            q.as_mut_ptr().add(16) as *mut __m128i,
            _mm512_cvtsepi32_epi8(qi[1]),
        );
        Some((d, _mm512_reduce_add_epi32(_mm512_add_epi32(qi[0], qi[1]))))
    }

    /// One block; returns false (writing nothing) if it holds a NaN, for the scalar code.
    ///
    /// # Safety
    /// [`available`] must be true.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub unsafe fn block(xb: &[f32], ob: &mut [u8]) -> bool {
        assert!(xb.len() == QK_K && ob.len() == Q8_K_BYTES);
        let xp = xb.as_ptr();
        let mut m = _mm512_setzero_ps();
        let mut nan = 0u16;
        for c in 0..QK_K / 16 {
            let v = _mm512_loadu_ps(xp.add(16 * c));
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            m = _mm512_max_ps(_mm512_abs_ps(v), m);
        }
        if nan != 0 {
            return false;
        }
        let amax = _mm512_reduce_max_ps(m);
        if amax == 0.0 {
            ob.fill(0);
            return true;
        }
        let am = _mm512_set1_ps(amax);
        let mut first = 0;
        for c in 0..QK_K / 16 {
            let a = _mm512_abs_ps(_mm512_loadu_ps(xp.add(16 * c)));
            let k = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, am);
            if k != 0 {
                first = 16 * c + k.trailing_zeros() as usize;
                break;
            }
        }
        let iscale = -127.0 / xb[first];
        let is = _mm512_set1_ps(iscale);
        let op = ob.as_mut_ptr();
        for c in 0..QK_K / 16 {
            let v = _mm512_mul_ps(is, _mm512_loadu_ps(xp.add(16 * c)));
            let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            let q = _mm512_cvtps_epi32(r);
            _mm_storeu_si128(
                op.add(Q8_K_QS + 16 * c) as *mut __m128i,
                _mm512_cvtsepi32_epi8(q),
            );
            let s = _mm512_reduce_add_epi32(q) as i16;
            std::ptr::copy_nonoverlapping(s.to_le_bytes().as_ptr(), op.add(Q8_K_BSUMS + 2 * c), 2);
        }
        ob[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
        true
    }
}

// ---------------------------------------------------------------- reference (file) quantizers

/// `quantize_row_q8_0_ref`.
pub fn ref_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        let d = amax(xb) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for (o, &v) in ob[2..].iter_mut().zip(xb) {
            *o = ((v * id).round() as i32).clamp(-128, 127) as i8 as u8;
        }
    }
}

/// `quantize_row_q8_1_ref`.
pub fn ref_q8_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_1_BYTES)) {
        let d = amax(xb) / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (o, &v) in ob[4..].iter_mut().zip(xb) {
            let q = ((v * id).round() as i32).clamp(-128, 127);
            sum += q;
            *o = q as i8 as u8;
        }
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        ob[2..4].copy_from_slice(&f32_to_f16(sum as f32 * d).to_le_bytes());
    }
}

/// `quantize_row_q4_0_ref`.
pub fn ref_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_0_BYTES)) {
        let d = signed_max(xb) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        for j in 0..16 {
            let q0 = ((xb[j] * id + 8.5) as i32).clamp(0, 15) as u8;
            let q1 = ((xb[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
            ob[2 + j] = q0 | (q1 << 4);
        }
    }
}

/// `quantize_row_q4_1_ref`.
pub fn ref_q4_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q4_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        ob[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        for j in 0..16 {
            let q0 = (((xb[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            let q1 = (((xb[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            ob[4 + j] = q0 | (q1 << 4);
        }
    }
}

/// `quantize_row_q5_0_ref`.
pub fn ref_q5_0(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_0_BYTES)) {
        let d = signed_max(xb) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = ((xb[j] * id + 16.5) as i32).clamp(0, 31) as u32;
            let q1 = ((xb[j + 16] * id + 16.5) as i32).clamp(0, 31) as u32;
            ob[6 + j] = ((q0 & 0xF) | ((q1 & 0xF) << 4)) as u8;
            qh |= ((q0 >> 4) & 1) << j;
            qh |= ((q1 >> 4) & 1) << (j + 16);
        }
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        ob[2..6].copy_from_slice(&qh.to_le_bytes());
    }
}

/// `quantize_row_q5_1_ref`.
pub fn ref_q5_1(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q5_1_BYTES)) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = (((xb[j] - min) * id + 0.5) as i32).clamp(0, 31) as u32;
            let q1 = (((xb[j + 16] - min) * id + 0.5) as i32).clamp(0, 31) as u32;
            ob[8 + j] = ((q0 & 0xF) | ((q1 & 0xF) << 4)) as u8;
            qh |= ((q0 >> 4) & 1) << j;
            qh |= ((q1 >> 4) & 1) << (j + 16);
        }
        ob[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        ob[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
        ob[4..8].copy_from_slice(&qh.to_le_bytes());
    }
}

/// f32 → f32 (little-endian bytes).
pub fn to_f32(x: &[f32], out: &mut [u8]) {
    for (o, v) in out.chunks_exact_mut(4).zip(x) {
        o.copy_from_slice(&v.to_le_bytes());
    }
}

/// f32 → f16 (round to nearest even), through `half`'s slice conversion, which uses F16C
/// several values at a time where the CPU has it and gives the same bits as
/// [`f32_to_f16`] value by value.
pub fn to_f16(x: &[f32], out: &mut [u8]) {
    use half::slice::HalfFloatSliceExt;
    let mut buf = [half::f16::ZERO; 256];
    for (xc, oc) in x.chunks(256).zip(out.chunks_mut(512)) {
        let b = &mut buf[..xc.len()];
        b.convert_from_f32_slice(xc);
        for (o, h) in oc.chunks_exact_mut(2).zip(b.iter()) {
            o.copy_from_slice(&h.to_bits().to_le_bytes());
        }
    }
}

/// f32 → bf16 (ggml's rounding).
pub fn to_bf16(x: &[f32], out: &mut [u8]) {
    for (o, &v) in out.chunks_exact_mut(2).zip(x) {
        o.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn f16_rows_match_the_value_by_value_conversion() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut x: Vec<f32> = (0..1000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                f32::from_bits(seed as u32)
            })
            .collect();
        x.extend([
            0.0,
            -0.0,
            65504.0,
            65520.0,
            1e-8,
            f32::INFINITY,
            f32::NAN,
            5.96e-8,
        ]);
        let mut out = vec![0u8; 2 * x.len()];
        to_f16(&x, &mut out);
        for (i, &v) in x.iter().enumerate() {
            let got = u16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
            assert_eq!(got, f32_to_f16(v), "{v:e} at {i}");
        }
    }

    #[test]
    fn q8_k_simd_matches_scalar() {
        if !q8k_x86::available() {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for case in 0..400 {
            let mut x: Vec<f32> = (0..QK_K)
                .map(|_| ((rnd() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0)
                .collect();
            match case % 5 {
                // Ties in magnitude with both signs: the first one must win.
                1 => {
                    x[7] = 9.0;
                    x[100] = -9.0;
                    x[3] = -9.0;
                }
                // Values landing on .5 after scaling by -127 / max.
                2 => {
                    x[0] = 127.0;
                    for (i, v) in x.iter_mut().enumerate().skip(1) {
                        *v = (i % 50) as f32 - 24.5;
                    }
                }
                3 => x.iter_mut().for_each(|v| *v = 0.0),
                4 => x[11] = f32::NAN,
                _ => {}
            }
            let mut want = vec![0u8; Q8_K_BYTES];
            q8_k_block(&x, &mut want);
            let mut got = vec![0u8; Q8_K_BYTES];
            // SAFETY: checked `available()`.
            if unsafe { q8k_x86::block(&x, &mut got) } {
                assert_eq!(got, want, "case {case}");
            } else {
                assert_eq!(case % 5, 4, "only NaN blocks fall back");
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod simd_tests {
    use super::*;

    #[test]
    fn simd_activation_blocks_match_scalar_bit_for_bit() {
        if !q8k_x86::available() {
            return;
        }
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let specials = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            2.5,
            127.0,
            -127.0,
            1e-30,
            3e38,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 4.0,
        ];
        for case in 0..4000 {
            let xb: Vec<f32> = (0..QK)
                .map(|i| {
                    let r = next();
                    match case % 4 {
                        0 => (r as i32 as f32) / 1e9,
                        // Halves and small integers: rounding ties.
                        1 => ((r % 512) as f32 - 256.0) * 0.5,
                        2 if i % 7 == 0 => specials[(r % specials.len() as u64) as usize],
                        _ => {
                            f32::from_bits(r as u32 & 0x7f7f_ffff)
                                * if r >> 63 == 1 { -1.0 } else { 1.0 }
                        }
                    }
                })
                .collect();
            let mut want = [0u8; QK];
            let (wd, ws) = act_b32_block(&xb, &mut want);
            let mut got = [0u8; QK];
            // SAFETY: `available()` checked above.
            if let Some((gd, gs)) = unsafe { q8k_x86::block32(&xb, &mut got) } {
                assert_eq!(
                    (wd.to_bits(), ws, want),
                    (gd.to_bits(), gs, got),
                    "case {case}: {xb:?}"
                );
            } else {
                assert!(
                    xb.iter().any(|v| !v.is_finite()),
                    "case {case}: fell back on finite input"
                );
            }
        }
    }
}
