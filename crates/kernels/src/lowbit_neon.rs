//! aarch64 NEON dot products of the low-bit types (see `lowbit.rs`): each block's integer
//! sums in NEON (exact in any order), the float term formed and accumulated as the scalar
//! path does, so results are bit-identical to it.

use std::arch::aarch64::*;

use crate::blocks::*;
use crate::lowbit::{
    e8m0_half, iq4_xs_scales_biased, q3_k_scales_biased, KVALUES_IQ4NL, KVALUES_MXFP4,
};
use crate::{DotFn, TensorType};

/// The NEON kernel for one of the low-bit types.
pub(crate) fn dot_kernel(ty: TensorType) -> DotFn {
    match ty {
        TensorType::Q2_K => |w, a, _ys, n| dot_q2_k(w, a, n),
        TensorType::Q3_K => |w, a, _ys, n| dot_q3_k(w, a, n),
        TensorType::IQ4_NL => |w, a, _ys, n| dot_iq4_nl(w, a, n),
        TensorType::IQ4_XS => |w, a, _ys, n| dot_iq4_xs(w, a, n),
        TensorType::MXFP4 => |w, a, _ys, n| dot_mxfp4(w, a, n),
        _ => unreachable!("{ty} is not a low-bit type"),
    }
}

fn check(w: &[u8], a: &[u8], n: usize, blk: usize, wb: usize, ab: usize) {
    let nb = n / blk;
    assert!(
        w.len() >= nb * wb && a.len() >= nb * ab,
        "dot: input shorter than the row"
    );
}

/// `sum(x[i] * y[i])` over 16 signed bytes each, exact.
#[inline(always)]
unsafe fn isum16(x: int8x16_t, y: int8x16_t) -> i32 {
    let acc = vpaddlq_s16(vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    vaddvq_s32(vpadalq_s16(acc, vmull_high_s8(x, y)))
}

/// The 2-bit quants of 16-value group `g` of a Q2_K / Q3_K block (`qs`: its 64 quant bytes).
#[inline(always)]
unsafe fn twobit(qs: *const u8, g: usize) -> uint8x16_t {
    let (n, j, h) = (g / 8, (g % 8) / 2, g % 2);
    let v = vld1q_u8(qs.add(32 * n + 16 * h));
    vandq_u8(vshlq_u8(v, vdupq_n_s8(-2 * j as i8)), vdupq_n_u8(3))
}

pub fn dot_q2_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, QK_K, Q2_K_BYTES, Q8_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q2_K_BYTES..(ib + 1) * Q2_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (mut isum, mut summs) = (0i32, 0i32);
        for g in 0..16 {
            // SAFETY: NEON is part of every aarch64 target; loads stay inside the blocks.
            let s = unsafe {
                let q = vreinterpretq_s8_u8(twobit(x.as_ptr().add(16), g));
                isum16(q, vld1q_s8(y.as_ptr().add(Q8_K_QS + 16 * g) as *const i8))
            };
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
    check(w, a, n, QK_K, Q3_K_BYTES, Q8_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q3_K_BYTES..(ib + 1) * Q3_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let sc = q3_k_scales_biased(&x[96..108]);
        let mut isum = 0i32;
        for (g, s) in sc.iter().flat_map(|u| u.to_le_bytes()).enumerate() {
            // SAFETY: as above. Value e of the group: bit e / 32 of hmask[e % 32] set means
            // the 2 low bits as they are, clear means minus 4.
            let d = unsafe {
                let low = twobit(x.as_ptr().add(32), g);
                let hm = vld1q_u8(x.as_ptr().add(16 * (g % 2)));
                let bit = (4 * (g / 8) + (g % 8) / 2) as i8;
                let h = vandq_u8(vshlq_u8(hm, vdupq_n_s8(-bit)), vdupq_n_u8(1));
                let v = vsubq_s8(
                    vreinterpretq_s8_u8(vorrq_u8(low, vshlq_n_u8::<2>(h))),
                    vdupq_n_s8(4),
                );
                isum16(v, vld1q_s8(y.as_ptr().add(Q8_K_QS + 16 * g) as *const i8))
            };
            isum += (s as i32 - 32) * d;
        }
        acc.add(ib, (rd_f16(x, 108) * rd_f32(y, 0)) * isum as f32);
    }
    acc.finish()
}

/// `sum_j table[q_j] * y_j` over one 32-value block: 16 nibble bytes at `q` (low nibbles
/// are values 0..16), 32 activation bytes at `y`.
#[inline(always)]
unsafe fn nl_isum(table: int8x16_t, q: *const u8, y: *const u8) -> i32 {
    let v = vld1q_u8(q);
    let lo = vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0x0F)));
    let hi = vqtbl1q_s8(table, vshrq_n_u8::<4>(v));
    isum16(lo, vld1q_s8(y as *const i8)) + isum16(hi, vld1q_s8(y.add(16) as *const i8))
}

pub fn dot_iq4_xs(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, QK_K, IQ4_XS_BYTES, Q8_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * IQ4_XS_BYTES..(ib + 1) * IQ4_XS_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let sc = iq4_xs_scales_biased(x).to_le_bytes();
        let mut isum = 0i32;
        for (k, &s) in sc.iter().enumerate() {
            // SAFETY: as above.
            let d = unsafe {
                let t = vld1q_s8(KVALUES_IQ4NL.as_ptr());
                nl_isum(
                    t,
                    x.as_ptr().add(8 + 16 * k),
                    y.as_ptr().add(Q8_K_QS + 32 * k),
                )
            };
            isum += (s as i32 - 32) * d;
        }
        acc.add(ib, (rd_f16(x, 0) * rd_f32(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_iq4_nl(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, QK, IQ4_NL_BYTES, Q8_0_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * IQ4_NL_BYTES..(ib + 1) * IQ4_NL_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        // SAFETY: as above; 18 and 34 bytes.
        let isum = unsafe {
            let t = vld1q_s8(KVALUES_IQ4NL.as_ptr());
            nl_isum(t, x.as_ptr().add(2), y.as_ptr().add(2))
        };
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_mxfp4(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, QK, MXFP4_BYTES, Q8_0_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * MXFP4_BYTES..(ib + 1) * MXFP4_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        // SAFETY: as above; 17 and 34 bytes.
        let isum = unsafe {
            let t = vld1q_s8(KVALUES_MXFP4.as_ptr());
            nl_isum(t, x.as_ptr().add(1), y.as_ptr().add(2))
        };
        acc.add(ib, (e8m0_half(x[0]) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}
