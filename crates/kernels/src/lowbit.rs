//! The low-bit weight types: Q2_K and Q3_K (K-quants with 16-value groups), IQ4_XS (4-bit
//! non-linear values, 32-value sub-blocks in a 256-value super-block), IQ4_NL (the same values
//! in 32-value blocks) and MXFP4 (E2M1 values with a power-of-two E8M0 scale, gpt-oss's type).
//!
//! The rules are the other types': dequantization is bit-identical to ggml's
//! `dequantize_row_*`; dot products run against the activation type ggml pairs with each
//! (Q8_K for Q2_K, Q3_K, IQ4_XS; Q8_0 for IQ4_NL, MXFP4); each block's integer sum is exact
//! and its one float term is accumulated with [`Acc4`], the order the SIMD paths
//! (`lowbit_x86`, `lowbit512`, `lowbit_neon`, `gemm_lowbit`) follow, so every path gives the
//! same bits. Sub-block scales are folded into the integer sum (ggml's AVX2 code does the
//! same; its generic C code forms a float term per IQ4_XS sub-block instead, a last-bit
//! difference).

use crate::blocks::*;
use crate::{Dot4Fn, DotFn, SimdLevel, TensorType};

/// ggml's `kvalues_iq4nl`.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `kvalues_mxfp4`: the E2M1 values doubled (the block scale is halved to match).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half an E8M0 scale, 2^(e - 128), as ggml's `ggml_e8m0_to_fp32_half` (denormal for e < 2).
#[inline(always)]
pub fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

/// The 16 group scales of a Q3_K block minus 32, from its 12 packed bytes (4 low bits of
/// each in bytes 0..8, low then high nibbles; 2 high bits in bytes 8..12).
#[inline(always)]
pub fn q3_k_scales(b: &[u8]) -> [i8; 16] {
    std::array::from_fn(|g| {
        let lo = if g < 8 { b[g] & 0xF } else { b[g - 8] >> 4 };
        let hi = (b[8 + g % 4] >> (2 * (g / 4))) & 3;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// The 8 sub-block scales of an IQ4_XS block minus 32 (`b` is the whole block).
#[inline(always)]
pub fn iq4_xs_scales(b: &[u8]) -> [i8; 8] {
    let h = u16::from_le_bytes([b[2], b[3]]);
    std::array::from_fn(|ib| {
        let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF;
        let hi = ((h >> (2 * ib)) & 3) as u8;
        (lo | (hi << 4)) as i8 - 32
    })
}

/// [`q3_k_scales`] plus 32 (0..64) as 16 bytes in four u32, with ggml's `aux` shuffle:
/// decoding byte by byte costs the SIMD kernels as much as their products.
#[inline(always)]
pub fn q3_k_scales_biased(b: &[u8]) -> [u32; 4] {
    const M4: u32 = 0x0F0F_0F0F;
    const M2: u32 = 0x0303_0303;
    let (a0, a1, t) = (rd_u32(b, 0), rd_u32(b, 4), rd_u32(b, 8));
    [
        (a0 & M4) | ((t & M2) << 4),
        (a1 & M4) | (((t >> 2) & M2) << 4),
        ((a0 >> 4) & M4) | (((t >> 4) & M2) << 4),
        ((a1 >> 4) & M4) | (((t >> 6) & M2) << 4),
    ]
}

/// [`iq4_xs_scales`] plus 32 (0..64), byte `k` for sub-block `k`: the low nibbles and the
/// 2-bit high fields spread to bytes with shifts and masks (as [`q3_k_scales_biased`], for
/// the SIMD kernels).
#[inline(always)]
pub fn iq4_xs_scales_biased(b: &[u8]) -> u64 {
    let mut lo = rd_u32(b, 4) as u64;
    lo = (lo | (lo << 16)) & 0x0000_FFFF_0000_FFFF;
    lo = (lo | (lo << 8)) & 0x00FF_00FF_00FF_00FF;
    lo = (lo | (lo << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    let mut hi = u16::from_le_bytes([b[2], b[3]]) as u64;
    hi = (hi | (hi << 24)) & 0x0000_00FF_0000_00FF;
    hi = (hi | (hi << 12)) & 0x000F_000F_000F_000F;
    hi = (hi | (hi << 6)) & 0x0303_0303_0303_0303;
    lo | (hi << 4)
}

/// The 2-bit quant of element `e` (0..256) of a Q2_K / Q3_K block's 64 `qs` bytes: 32 bytes
/// per half of 128 values, and four 32-value runs per byte, two bits apart.
#[inline(always)]
fn q2(qs: &[u8], e: usize) -> i32 {
    ((qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) as i32
}

/// Element `e` of a Q3_K block: the 2 low bits, minus 4 unless bit `e / 32` of
/// `hmask[e % 32]` is set.
#[inline(always)]
fn q3(x: &[u8], e: usize) -> i32 {
    let high = (x[e % 32] >> (e / 32)) & 1;
    q2(&x[32..96], e) - if high != 0 { 0 } else { 4 }
}

// ---------------------------------------------------------------- dequantization

pub fn dequant_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q2_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, min) = (rd_f16(b, 80), rd_f16(b, 82));
        for (g, yg) in y.chunks_exact_mut(16).enumerate() {
            let dl = d * (b[g] & 0xF) as f32;
            let ml = min * (b[g] >> 4) as f32;
            for (l, v) in yg.iter_mut().enumerate() {
                *v = dl * q2(&b[16..80], 16 * g + l) as f32 - ml;
            }
        }
    }
}

pub fn dequant_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q3_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 108);
        let sc = q3_k_scales(&b[96..108]);
        for (g, (yg, &s)) in y.chunks_exact_mut(16).zip(&sc).enumerate() {
            let dl = d * s as f32;
            for (l, v) in yg.iter_mut().enumerate() {
                *v = dl * q3(b, 16 * g + l) as f32;
            }
        }
    }
}

pub fn dequant_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(IQ4_NL_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(b[2 + j] & 0xF) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(b[2 + j] >> 4) as usize] as f32;
        }
    }
}

pub fn dequant_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src
        .chunks_exact(IQ4_XS_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let d = rd_f16(b, 0);
        let sc = iq4_xs_scales(b);
        for (ib, yb) in y.chunks_exact_mut(32).enumerate() {
            let dl = d * sc[ib] as f32;
            let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
            for j in 0..16 {
                yb[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                yb[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

pub fn dequant_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(MXFP4_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = e8m0_half(b[0]);
        for j in 0..16 {
            y[j] = KVALUES_MXFP4[(b[1 + j] & 0xF) as usize] as f32 * d;
            y[j + 16] = KVALUES_MXFP4[(b[1 + j] >> 4) as usize] as f32 * d;
        }
    }
}

/// `quantize_row_mxfp4_ref`: the exponent of the largest magnitude minus 2 (so that it maps
/// near E2M1's largest value, 6), then the nearest value of the table, the first on ties.
pub fn quantize_mxfp4(x: &[f32], out: &mut [u8]) {
    for (xb, ob) in x.chunks_exact(QK).zip(out.chunks_exact_mut(MXFP4_BYTES)) {
        let amax = xb
            .iter()
            .fold(0f32, |m, v| if m < v.abs() { v.abs() } else { m });
        // (A float-to-u8 cast saturates where C's would be undefined: amax below 2^-125.)
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0) as u8
        } else {
            0
        };
        let d = e8m0_half(e);
        let best = |v: f32| -> u8 {
            let mut best = 0;
            let mut err = (KVALUES_MXFP4[0] as f32 * d - v).abs();
            for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
                let e = (k as f32 * d - v).abs();
                if e < err {
                    best = i as u8;
                    err = e;
                }
            }
            best
        };
        ob[0] = e;
        for j in 0..16 {
            ob[1 + j] = best(xb[j]) | (best(xb[j + 16]) << 4);
        }
    }
}

// ---------------------------------------------------------------- scalar dot products

#[inline(always)]
fn y8(a: &[u8], off: usize) -> i32 {
    (a[off] as i8) as i32
}

pub fn dot_q2_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q2_K_BYTES..(ib + 1) * Q2_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (mut isum, mut summs) = (0i32, 0i32);
        for g in 0..16 {
            let s: i32 = (16 * g..16 * g + 16)
                .map(|e| q2(&x[16..80], e) * y8(y, Q8_K_QS + e))
                .sum();
            isum += (x[g] & 0xF) as i32 * s;
            summs += (x[g] >> 4) as i32 * rd_i16(y, Q8_K_BSUMS + 2 * g) as i32;
        }
        let yd = rd_f32(y, 0);
        acc.add(
            ib,
            (rd_f16(x, 80) * yd) * isum as f32 - (rd_f16(x, 82) * yd) * summs as f32,
        );
    }
    acc.finish()
}

pub fn dot_q3_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q3_K_BYTES..(ib + 1) * Q3_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let sc = q3_k_scales(&x[96..108]);
        let mut isum = 0i32;
        for (g, &scale) in sc.iter().enumerate() {
            let s: i32 = (16 * g..16 * g + 16)
                .map(|e| q3(x, e) * y8(y, Q8_K_QS + e))
                .sum();
            isum += scale as i32 * s;
        }
        acc.add(ib, (rd_f16(x, 108) * rd_f32(y, 0)) * isum as f32);
    }
    acc.finish()
}

/// `sum_j KVALUES[q_j] * y_j` over one 32-value block: 16 bytes of nibbles at `q` (low
/// nibbles are values 0..16, high 16..32), 32 activation bytes at `y`.
#[inline(always)]
fn nl_isum(table: &[i8; 16], q: &[u8], y: &[u8]) -> i32 {
    let mut s = 0;
    for j in 0..16 {
        s += table[(q[j] & 0xF) as usize] as i32 * y8(y, j);
        s += table[(q[j] >> 4) as usize] as i32 * y8(y, j + 16);
    }
    s
}

pub fn dot_iq4_xs(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * IQ4_XS_BYTES..(ib + 1) * IQ4_XS_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let sc = iq4_xs_scales(x);
        let mut isum = 0i32;
        for (k, &s) in sc.iter().enumerate() {
            let q = &x[8 + 16 * k..8 + 16 * k + 16];
            isum += s as i32 * nl_isum(&KVALUES_IQ4NL, q, &y[Q8_K_QS + 32 * k..]);
        }
        acc.add(ib, (rd_f16(x, 0) * rd_f32(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_iq4_nl(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * IQ4_NL_BYTES..(ib + 1) * IQ4_NL_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let isum = nl_isum(&KVALUES_IQ4NL, &x[2..18], &y[2..]);
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_mxfp4(w: &[u8], a: &[u8], n: usize) -> f32 {
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * MXFP4_BYTES..(ib + 1) * MXFP4_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let isum = nl_isum(&KVALUES_MXFP4, &x[1..17], &y[2..]);
        acc.add(ib, (e8m0_half(x[0]) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

// ---------------------------------------------------------------- dispatch

/// Whether `ty` is one of this module's types.
pub fn is_lowbit(ty: TensorType) -> bool {
    use TensorType::*;
    matches!(ty, Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4)
}

/// Dequantizes whole blocks of one of this module's types.
pub fn dequantize(ty: TensorType, src: &[u8], dst: &mut [f32]) {
    use TensorType::*;
    match ty {
        Q2_K => dequant_q2_k(src, dst),
        Q3_K => dequant_q3_k(src, dst),
        IQ4_NL => dequant_iq4_nl(src, dst),
        IQ4_XS => dequant_iq4_xs(src, dst),
        MXFP4 => dequant_mxfp4(src, dst),
        _ => unreachable!("{ty} is not a low-bit type"),
    }
}

/// The scalar reference kernel of one of this module's types.
fn scalar_kernel(ty: TensorType) -> DotFn {
    match ty {
        TensorType::Q2_K => |w, a, _ys, n| dot_q2_k(w, a, n),
        TensorType::Q3_K => |w, a, _ys, n| dot_q3_k(w, a, n),
        TensorType::IQ4_NL => |w, a, _ys, n| dot_iq4_nl(w, a, n),
        TensorType::IQ4_XS => |w, a, _ys, n| dot_iq4_xs(w, a, n),
        TensorType::MXFP4 => |w, a, _ys, n| dot_mxfp4(w, a, n),
        _ => unreachable!("{ty} is not a low-bit type"),
    }
}

/// The dot product for weights of type `ty` at `level` (supported by the CPU), or `None`
/// if `ty` is not one of this module's types.
pub(crate) fn dot_kernel(ty: TensorType, level: SimdLevel) -> Option<DotFn> {
    if !is_lowbit(ty) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(f) = crate::lowbit_x86::dot_kernel(ty, level) {
        return Some(f);
    }
    #[cfg(target_arch = "aarch64")]
    if level == SimdLevel::Neon && crate::level_supported(SimdLevel::Neon) {
        return Some(crate::lowbit_neon::dot_kernel(ty));
    }
    let _ = level;
    Some(scalar_kernel(ty))
}

/// One weight row against four activation rows, where a SIMD path has it.
pub(crate) fn dot4_kernel(ty: TensorType, level: SimdLevel) -> Option<Dot4Fn> {
    #[cfg(target_arch = "x86_64")]
    if is_lowbit(ty) {
        return crate::lowbit_x86::dot4_kernel(ty, level);
    }
    let _ = (ty, level);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_scale_decoders_match_the_plain_ones() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b: [u8; 16] = std::array::from_fn(|i| {
                (x.rotate_left(8 * i as u32 % 64) ^ (i as u64 * 0x35)) as u8
            });
            let q3: Vec<i8> = q3_k_scales_biased(&b[..12])
                .iter()
                .flat_map(|u| u.to_le_bytes())
                .map(|v| v as i8 - 32)
                .collect();
            assert_eq!(q3, q3_k_scales(&b[..12]), "{b:?}");
            let iq: Vec<i8> = iq4_xs_scales_biased(&b[..8])
                .to_le_bytes()
                .iter()
                .map(|&v| v as i8 - 32)
                .collect();
            assert_eq!(iq, iq4_xs_scales(&b[..8]), "{b:?}");
        }
    }
}
