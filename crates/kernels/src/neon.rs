//! aarch64 NEON dot products for every weight type: the 32-element block types, the
//! K-quants and the float types.
//!
//! Each block's integer sum is exact whatever the order, so NEON computes it (widening
//! multiplies, pairwise adds) and the float terms are then formed and accumulated exactly
//! as the scalar path does ([`Acc4`]); the F32 product keeps the scalar path's 16 lanes and
//! its reduction order (F16 rows are widened exactly before the multiply-adds). Results are
//! bit-identical to `scalar.rs`.

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

/// `sum(x[i] * y[i])` over 16 signed bytes each, exact.
#[inline(always)]
unsafe fn isum16(x: int8x16_t, y: int8x16_t) -> i32 {
    let acc = vpaddlq_s16(vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    vaddvq_s32(vpadalq_s16(acc, vmull_high_s8(x, y)))
}

/// Byte `j` = 0x10 if bit `j` of `bits` (16 bits) is set, else 0.
#[inline(always)]
unsafe fn bits_to_0x10(bits: u32) -> uint8x16_t {
    const MASK: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let b = vcombine_u8(vdup_n_u8(bits as u8), vdup_n_u8((bits >> 8) as u8));
    vandq_u8(vtstq_u8(b, vld1q_u8(MASK.as_ptr())), vdupq_n_u8(0x10))
}

/// The 32 quants of a 5-bit block (`qh` high bits, 16 nibble bytes at `q`), minus `off`.
#[inline(always)]
unsafe fn fives(qh: u32, q: *const u8, off: i8) -> (int8x16_t, int8x16_t) {
    let v = vld1q_u8(q);
    let lo = vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), bits_to_0x10(qh & 0xFFFF));
    let hi = vorrq_u8(vshrq_n_u8::<4>(v), bits_to_0x10(qh >> 16));
    (
        vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8(off)),
        vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8(off)),
    )
}

pub fn dot_q5_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, Q5_0_BYTES, Q8_0_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * Q5_0_BYTES..(ib + 1) * Q5_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        // SAFETY: NEON is part of every aarch64 target; 22 and 34 bytes.
        let isum = unsafe {
            let (x0, x1) = fives(rd_u32(x, 2), x.as_ptr().add(6), 16);
            let (y0, y1) = bytes32(y.as_ptr().add(2));
            isum_i8(x0, x1, y0, y1)
        };
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q5_1(w: &[u8], a: &[u8], n: usize) -> f32 {
    check(w, a, n, Q5_1_BYTES, Q8_1_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK {
        let x = &w[ib * Q5_1_BYTES..(ib + 1) * Q5_1_BYTES];
        let y = &a[ib * Q8_1_BYTES..(ib + 1) * Q8_1_BYTES];
        // SAFETY: as above; 24 and 36 bytes.
        let isum = unsafe {
            let (x0, x1) = fives(rd_u32(x, 4), x.as_ptr().add(8), 0);
            let (y0, y1) = bytes32(y.as_ptr().add(4));
            isum_i8(x0, x1, y0, y1)
        };
        let v = (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32 + rd_f16(x, 2) * rd_f16(y, 2);
        acc.add(ib, v);
    }
    acc.finish()
}

fn check_k(w: &[u8], a: &[u8], n: usize, wb: usize) {
    let nb = n / QK_K;
    assert!(
        w.len() >= nb * wb && a.len() >= nb * Q8_K_BYTES,
        "dot: input shorter than the row"
    );
}

/// Q4_K / Q5_K: the block's `sum_j sc[j] * (quants of sub-block j) . y`, exact. `qh` is
/// the Q5_K high-bit array (null for Q4_K).
#[inline(always)]
unsafe fn k4_isum(qs: *const u8, qh: *const u8, y: *const u8, sc: &[u8; 8]) -> i32 {
    let m4 = vdupq_n_u8(0x0F);
    let mut isum = 0i32;
    for p in 0..4 {
        let (mut lo, mut hi) = (0i32, 0i32);
        for half in 0..2 {
            let q = vld1q_u8(qs.add(32 * p + 16 * half));
            let mut l = vandq_u8(q, m4);
            let mut h = vshrq_n_u8::<4>(q);
            if !qh.is_null() {
                let b = vld1q_u8(qh.add(16 * half));
                let one = vdupq_n_u8(1);
                let b0 = vandq_u8(vshlq_u8(b, vdupq_n_s8(-(2 * p as i8))), one);
                let b1 = vandq_u8(vshlq_u8(b, vdupq_n_s8(-(2 * p as i8 + 1))), one);
                l = vorrq_u8(l, vshlq_n_u8::<4>(b0));
                h = vorrq_u8(h, vshlq_n_u8::<4>(b1));
            }
            let yl = vld1q_s8(y.add(Q8_K_QS + 64 * p + 16 * half) as *const i8);
            let yh = vld1q_s8(y.add(Q8_K_QS + 64 * p + 32 + 16 * half) as *const i8);
            lo += isum16(vreinterpretq_s8_u8(l), yl);
            hi += isum16(vreinterpretq_s8_u8(h), yh);
        }
        isum += sc[2 * p] as i32 * lo + sc[2 * p + 1] as i32 * hi;
    }
    isum
}

pub fn dot_q4_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    check_k(w, a, n, Q4_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q4_K_BYTES..(ib + 1) * Q4_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (sc, mn) = scales_mins_k4(&x[4..16]);
        // SAFETY: NEON is part of every aarch64 target; whole blocks, checked above.
        let isum = unsafe { k4_isum(x.as_ptr().add(16), std::ptr::null(), y.as_ptr(), &sc) };
        let yd = rd_f32(y, 0);
        let v = (rd_f16(x, 0) * yd) * isum as f32
            - (rd_f16(x, 2) * yd) * crate::scalar::k_summins(y, &mn) as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

pub fn dot_q5_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    check_k(w, a, n, Q5_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q5_K_BYTES..(ib + 1) * Q5_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (sc, mn) = scales_mins_k4(&x[4..16]);
        // SAFETY: as above.
        let isum = unsafe { k4_isum(x.as_ptr().add(48), x.as_ptr().add(16), y.as_ptr(), &sc) };
        let yd = rd_f32(y, 0);
        let v = (rd_f16(x, 0) * yd) * isum as f32
            - (rd_f16(x, 2) * yd) * crate::scalar::k_summins(y, &mn) as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

pub fn dot_q6_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    check_k(w, a, n, Q6_K_BYTES);
    let mut acc = Acc4::default();
    for ib in 0..n / QK_K {
        let x = &w[ib * Q6_K_BYTES..(ib + 1) * Q6_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let mut gsum = [0i32; 16];
        // SAFETY: as above; every load is inside the 210-byte block or the Q8_K block.
        unsafe {
            let (xp, yp) = (x.as_ptr(), y.as_ptr().add(Q8_K_QS));
            let (m4, m3) = (vdupq_n_u8(0x0F), vdupq_n_u8(3));
            for h in 0..2 {
                for half in 0..2 {
                    let ql0 = vld1q_u8(xp.add(64 * h + 16 * half));
                    let ql1 = vld1q_u8(xp.add(64 * h + 32 + 16 * half));
                    let qh = vld1q_u8(xp.add(128 + 32 * h + 16 * half));
                    let high = |s: i8| vshlq_n_u8::<4>(vandq_u8(vshlq_u8(qh, vdupq_n_s8(-s)), m3));
                    let vals = [
                        vorrq_u8(vandq_u8(ql0, m4), high(0)),
                        vorrq_u8(vandq_u8(ql1, m4), high(2)),
                        vorrq_u8(vshrq_n_u8::<4>(ql0), high(4)),
                        vorrq_u8(vshrq_n_u8::<4>(ql1), high(6)),
                    ];
                    for (k, v) in vals.iter().enumerate() {
                        let q = vsubq_s8(vreinterpretq_s8_u8(*v), vdupq_n_s8(32));
                        let e = 128 * h + 32 * k + 16 * half;
                        gsum[e / 16] = isum16(q, vld1q_s8(yp.add(e) as *const i8));
                    }
                }
            }
        }
        let mut isum = 0i32;
        for (g, s) in gsum.iter().enumerate() {
            isum += (x[192 + g] as i8) as i32 * s;
        }
        acc.add(ib, (rd_f16(x, 208) * rd_f32(y, 0)) * isum as f32);
    }
    acc.finish()
}

/// Fills `(weights, activations)` with a row chunk starting at the given element, as f32.
type Widen<'a> = dyn Fn(usize, &mut [f32], &mut [f32]) + 'a;

/// Float rows: lane `i % 16` accumulates element `i` with a fused multiply-add (four
/// vectors of four lanes), then the scalar path's `reduce16` order, then the tail. F16 and
/// BF16 rows are widened to f32 (exactly) 256 elements at a time first.
fn dot_float(n: usize, widen: &Widen) -> f32 {
    const CHUNK: usize = 256;
    let (mut wf, mut af) = ([0f32; CHUNK], [0f32; CHUNK]);
    let n16 = n / 16 * 16;
    // SAFETY: NEON is part of every aarch64 target; loads stay inside the chunk buffers.
    let mut acc = unsafe { [vdupq_n_f32(0.0); 4] };
    let mut tail = 0f32;
    let mut start = 0;
    while start < n {
        let len = (n - start).min(CHUNK);
        widen(start, &mut wf[..len], &mut af[..len]);
        let body = (n16.saturating_sub(start)).min(len);
        unsafe {
            let mut i = 0;
            while i < body {
                for (k, ak) in acc.iter_mut().enumerate() {
                    let (wv, av) = (
                        vld1q_f32(wf.as_ptr().add(i + 4 * k)),
                        vld1q_f32(af.as_ptr().add(i + 4 * k)),
                    );
                    *ak = vfmaq_f32(*ak, wv, av);
                }
                i += 16;
            }
        }
        for i in body..len {
            tail = wf[i].mul_add(af[i], tail);
        }
        start += len;
    }
    // SAFETY: as above.
    let s = unsafe {
        // reduce16: s[j] = lane j + lane 8 + j, then [s0+s4, s1+s5, s2+s6, s3+s7], then
        // (t0 + t2) + (t1 + t3).
        let t = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
        let tv = [
            vgetq_lane_f32::<0>(t),
            vgetq_lane_f32::<1>(t),
            vgetq_lane_f32::<2>(t),
            vgetq_lane_f32::<3>(t),
        ];
        (tv[0] + tv[2]) + (tv[1] + tv[3])
    };
    s + tail
}

pub fn dot_f16(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(w.len() >= 2 * n && a.len() >= 2 * n, "dot_f16: short input");
    dot_float(n, &|start, wf, af| {
        for (i, (x, y)) in wf.iter_mut().zip(af.iter_mut()).enumerate() {
            *x = rd_f16(w, 2 * (start + i));
            *y = rd_f16(a, 2 * (start + i));
        }
    })
}

pub fn dot_bf16(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(
        w.len() >= 2 * n && a.len() >= 2 * n,
        "dot_bf16: short input"
    );
    let rd = |b: &[u8], i: usize| bf16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]));
    dot_float(n, &|start, wf, af| {
        for (i, (x, y)) in wf.iter_mut().zip(af.iter_mut()).enumerate() {
            *x = rd(w, start + i);
            *y = rd(a, start + i);
        }
    })
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
