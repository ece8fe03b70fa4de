//! Scalar reference dot products: one weight row (`w`, in the weight type) against one
//! activation row (`a`, in the weight type's vec-dot type), `n` elements.
//!
//! For the quantized types the per-block integer sums are exact, and the float terms are
//! accumulated with [`Acc4`] in the same order the SIMD paths use, so scalar and SIMD
//! results are bit-identical. The float types emulate the SIMD paths' 16-lane FMA
//! accumulation ([`reduce16`]) for the same reason.

use crate::blocks::*;

// ---------------------------------------------------------------- float types

#[inline(always)]
fn dot_lanes(n: usize, w: impl Fn(usize) -> f32, x: impl Fn(usize) -> f32) -> f32 {
    let n16 = n / 16 * 16;
    let mut acc = [0f32; 16];
    for i in (0..n16).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = w(i + l).mul_add(x(i + l), *a);
        }
    }
    let mut tail = 0f32;
    for i in n16..n {
        tail = w(i).mul_add(x(i), tail);
    }
    reduce16(&acc) + tail
}

pub fn dot_f32(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(w.len() >= 4 * n && a.len() >= 4 * n, "dot_f32: short input");
    dot_lanes(n, |i| rd_f32(w, 4 * i), |i| rd_f32(a, 4 * i))
}

pub fn dot_f16(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(w.len() >= 2 * n && a.len() >= 2 * n, "dot_f16: short input");
    dot_lanes(n, |i| rd_f16(w, 2 * i), |i| rd_f16(a, 2 * i))
}

pub fn dot_bf16(w: &[u8], a: &[u8], n: usize) -> f32 {
    assert!(
        w.len() >= 2 * n && a.len() >= 2 * n,
        "dot_bf16: short input"
    );
    let rd = |b: &[u8], i: usize| bf16_to_f32(u16::from_le_bytes([b[2 * i], b[2 * i + 1]]));
    dot_lanes(n, |i| rd(w, i), |i| rd(a, i))
}

// ---------------------------------------------------------------- 32-element blocks

#[inline(always)]
fn y8(a: &[u8], off: usize, j: usize) -> i32 {
    (a[off + j] as i8) as i32
}

pub fn dot_q8_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let mut isum = 0i32;
        for j in 0..QK {
            isum += y8(x, 2, j) * y8(y, 2, j);
        }
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q4_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q4_0_BYTES..(ib + 1) * Q4_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let mut isum = 0i32;
        for j in 0..16 {
            let q = x[2 + j];
            isum += ((q & 0xF) as i32 - 8) * y8(y, 2, j);
            isum += ((q >> 4) as i32 - 8) * y8(y, 2, j + 16);
        }
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q4_1(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q4_1_BYTES..(ib + 1) * Q4_1_BYTES];
        let y = &a[ib * Q8_1_BYTES..(ib + 1) * Q8_1_BYTES];
        let mut isum = 0i32;
        for j in 0..16 {
            let q = x[4 + j];
            isum += (q & 0xF) as i32 * y8(y, 4, j);
            isum += (q >> 4) as i32 * y8(y, 4, j + 16);
        }
        let v = (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32 + rd_f16(x, 2) * rd_f16(y, 2);
        acc.add(ib, v);
    }
    acc.finish()
}

pub fn dot_q5_0(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q5_0_BYTES..(ib + 1) * Q5_0_BYTES];
        let y = &a[ib * Q8_0_BYTES..(ib + 1) * Q8_0_BYTES];
        let qh = rd_u32(x, 2);
        let mut isum = 0i32;
        for j in 0..16 {
            let q = x[6 + j] as u32;
            let x0 = ((q & 0xF) | (((qh >> j) & 1) << 4)) as i32 - 16;
            let x1 = ((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
            isum += x0 * y8(y, 2, j) + x1 * y8(y, 2, j + 16);
        }
        acc.add(ib, (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32);
    }
    acc.finish()
}

pub fn dot_q5_1(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q5_1_BYTES..(ib + 1) * Q5_1_BYTES];
        let y = &a[ib * Q8_1_BYTES..(ib + 1) * Q8_1_BYTES];
        let qh = rd_u32(x, 4);
        let mut isum = 0i32;
        for j in 0..16 {
            let q = x[8 + j] as u32;
            let x0 = ((q & 0xF) | (((qh >> j) & 1) << 4)) as i32;
            let x1 = ((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) as i32;
            isum += x0 * y8(y, 4, j) + x1 * y8(y, 4, j + 16);
        }
        let v = (rd_f16(x, 0) * rd_f16(y, 0)) * isum as f32 + rd_f16(x, 2) * rd_f16(y, 2);
        acc.add(ib, v);
    }
    acc.finish()
}

// ---------------------------------------------------------------- K-quants (against Q8_K)

/// `sum_j mins[j] * (bsums[2j] + bsums[2j+1])` of a Q8_K block.
#[inline(always)]
pub fn k_summins(y: &[u8], mins: &[u8; 8]) -> i32 {
    let mut s = 0i32;
    for (j, &m) in mins.iter().enumerate() {
        let b = rd_i16(y, Q8_K_BSUMS + 4 * j) as i32 + rd_i16(y, Q8_K_BSUMS + 4 * j + 2) as i32;
        s += m as i32 * b;
    }
    s
}

pub fn dot_q4_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK_K;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q4_K_BYTES..(ib + 1) * Q4_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (sc, mn) = scales_mins_k4(&x[4..16]);
        let qs = &x[16..144];
        let mut isum = 0i32;
        for p in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * p + l];
                lo += (q & 0xF) as i32 * y8(y, Q8_K_QS, 64 * p + l);
                hi += (q >> 4) as i32 * y8(y, Q8_K_QS, 64 * p + 32 + l);
            }
            isum += sc[2 * p] as i32 * lo + sc[2 * p + 1] as i32 * hi;
        }
        let yd = rd_f32(y, 0);
        let v = (rd_f16(x, 0) * yd) * isum as f32 - (rd_f16(x, 2) * yd) * k_summins(y, &mn) as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

pub fn dot_q5_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK_K;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q5_K_BYTES..(ib + 1) * Q5_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let (sc, mn) = scales_mins_k4(&x[4..16]);
        let qh = &x[16..48];
        let qs = &x[48..176];
        let mut isum = 0i32;
        for p in 0..4 {
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                let q = qs[32 * p + l] as i32;
                let h0 = ((qh[l] >> (2 * p)) & 1) as i32;
                let h1 = ((qh[l] >> (2 * p + 1)) & 1) as i32;
                lo += ((q & 0xF) | (h0 << 4)) * y8(y, Q8_K_QS, 64 * p + l);
                hi += ((q >> 4) | (h1 << 4)) * y8(y, Q8_K_QS, 64 * p + 32 + l);
            }
            isum += sc[2 * p] as i32 * lo + sc[2 * p + 1] as i32 * hi;
        }
        let yd = rd_f32(y, 0);
        let v = (rd_f16(x, 0) * yd) * isum as f32 - (rd_f16(x, 2) * yd) * k_summins(y, &mn) as f32;
        acc.add(ib, v);
    }
    acc.finish()
}

pub fn dot_q6_k(w: &[u8], a: &[u8], n: usize) -> f32 {
    let nb = n / QK_K;
    let mut acc = Acc4::default();
    for ib in 0..nb {
        let x = &w[ib * Q6_K_BYTES..(ib + 1) * Q6_K_BYTES];
        let y = &a[ib * Q8_K_BYTES..(ib + 1) * Q8_K_BYTES];
        let mut gsum = [0i32; 16];
        for h in 0..2 {
            let ql = &x[64 * h..64 * h + 64];
            let qh = &x[128 + 32 * h..128 + 32 * h + 32];
            for l in 0..32 {
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                let e = 128 * h + l;
                gsum[e / 16] += q1 * y8(y, Q8_K_QS, e);
                gsum[(e + 32) / 16] += q2 * y8(y, Q8_K_QS, e + 32);
                gsum[(e + 64) / 16] += q3 * y8(y, Q8_K_QS, e + 64);
                gsum[(e + 96) / 16] += q4 * y8(y, Q8_K_QS, e + 96);
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
