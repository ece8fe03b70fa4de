//! aarch64 NEON dot products for the 32-element block types the default model uses
//! (Q8_0, Q4_0, Q4_1) and for F32.
//!
//! Each block's integer sum is exact whatever the order, so NEON computes it (widening
//! multiplies, pairwise adds) and the float terms are then formed and accumulated exactly
//! as the scalar path does ([`Acc4`]); the F32 product keeps the scalar path's 16 lanes and
//! its reduction order. Results are bit-identical to `scalar.rs`.

use std::arch::aarch64::*;

use crate::blocks::*;

/// `sum(x[i] * y[i])` over 32 signed bytes each, exact.
#[inline(always)]
unsafe fn isum_i8(x0: int8x16_t, x1: int8x16_t, y0: int8x16_t, y1: int8x16_t) -> i32 {
    let mut acc = vdupq_n_s32(0);
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x0), vget_low_s8(y0)));
    acc = vpadalq_s16(acc, vmull_high_s8(x0, y0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x1), vget_low_s8(y1)));
    acc = vpadalq_s16(acc, vmull_high_s8(x1, y1));
    vaddvq_s32(acc)
}

/// The 32 quants of a 4-bit block (16 bytes at `q`): low nibbles are elements 0..16, high
/// nibbles 16..32, minus `off`.
#[inline(always)]
unsafe fn nibbles(q: *const u8, off: i8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(q);
    let lo = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F)));
    let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v));
    (vsubq_s8(lo, vdupq_n_s8(off)), vsubq_s8(hi, vdupq_n_s8(off)))
}

#[inline(always)]
unsafe fn bytes32(p: *const u8) -> (int8x16_t, int8x16_t) {
    (vld1q_s8(p as *const i8), vld1q_s8(p.add(16) as *const i8))
}

fn check(w: &[u8], a: &[u8], n: usize, wb: usize, ab: usize) {
    let nb = n / QK;
    assert!(
        w.len() >= nb * wb && a.len() >= nb * ab,
        "dot: input shorter than the row"
    );
}

pub fn dot_q8_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, Q8_0_BYTES, Q8_0_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        // SAFETY: NEON is part of every aarch64 target; both blocks are 34 bytes.
        let isum = unsafe {
            let (x0, x1) = bytes32(x.as_ptr().add(2));
            let (y0, y1) = bytes32(y.as_ptr().add(2));
            isum_i8(x0, x1, y0, y1)
        };
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q4_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, Q4_0_BYTES, Q8_0_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * Q4_0_BYTES..(ib + 1) * Q4_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        // SAFETY: as above; 18 and 34 bytes.
        let isum = unsafe {
            let (x0, x1) = nibbles(x.as_ptr().add(2), 8);
            let (y0, y1) = bytes32(y.as_ptr().add(2));
            isum_i8(x0, x1, y0, y1)
        };
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q4_1(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, Q4_1_BYTES, Q8_1_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * Q4_1_BYTES..(ib + 1) * Q4_1_BYTES];
        let y = &a[ib * Q8_1_BYTES..(ib + 1) * Q8_1_BYTES];
        // SAFETY: as above; 20 and 36 bytes.
        let isum = unsafe {
            let (x0, x1) = nibbles(x.as_ptr().add(4), 0);
            let (y0, y1) = bytes32(y.as_ptr().add(4));
            isum_i8(x0, x1, y0, y1)
        };
        let v = (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32 + rd_f16(x, 2) * rd_f16(y, 2);
        acc.add(ib, v);
    }
    acc.finish()
}

/// F32 rows: lane `i % 16` accumulates element `i` with a fused multiply-add (four
/// vectors of four lanes), then the scalar path's `reduce16` order, then the tail.
pub fn dot_f32(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(w.len() >= 4 * n && a.len() >= 4 * n, "dot_f32: short input");
    let n16 = n / 16 * 16;
    let (wp, ap) = (w.as_ptr() as *const f32, a.as_ptr() as *const f32);
    // SAFETY: NEON is part of every aarch64 target; `vld1q_f32` takes unaligned
    // addresses, and every load is below `n16 <= n` elements of both rows.
    let (s, tail_from) = unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i < n16 {
            for (k, ak) in acc.iter_mut().enumerate() {
                *ak = vfmaq_f32(
                    *ak,
                    vld1q_f32(wp.add(i + 4 * k)),
                    vld1q_f32(ap.add(i + 4 * k)),
                );
            }
            i += 16;
        }
        // reduce16: s[j] = lane j + lane 8 + j, then [s0+s4, s1+s5, s2+s6, s3+s7], then
        // (t0 + t2) + (t1 + t3).
        let s_lo = vaddq_f32(acc[0], acc[2]);
        let s_hi = vaddq_f32(acc[1], acc[3]);
        let t = vaddq_f32(s_lo, s_hi);
        let tv = [
            vgetq_lane_f32::<0>(t),
            vgetq_lane_f32::<1>(t),
            vgetq_lane_f32::<2>(t),
            vgetq_lane_f32::<3>(t),
        ];
        ((tv[0] + tv[2]) + (tv[1] + tv[3]), n16)
    };
    let mut tail = 0f32;
    for i in tail_from..n {
        tail = rd_f32(w, 4 * i).mul_add(rd_f32(a, 4 * i), tail);
    }
    s + tail
}
