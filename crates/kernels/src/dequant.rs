//! Dequantization: block formats to f32, with the same float operations (and order) as
//! ggml's `dequantize_row_*` so results are bit-identical.

use crate::blocks::*;

pub fn f32_(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    }
}

pub fn f16_(src: &[u8], dst: &mut [f32]) {
    for (i, d) in dst.iter_mut().enumerate() {
        *d = rd_f16(src, 2 * i);
    }
}

pub fn bf16_(src: &[u8], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *d = bf16_to_f32(u16::from_le_bytes([s[0], s[1]]));
    }
}

pub fn q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..16 {
            let q = b[2 + j];
            y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        let m = rd_f16(b, 2);
        for j in 0..16 {
            let q = b[4 + j];
            y[j] = (q & 0xF) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

pub fn q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        let qh = rd_u32(b, 2);
        for j in 0..16 {
            let q = b[6 + j] as u32;
            let x0 = ((q & 0xF) | (((qh >> j) & 1) << 4)) as i32 - 16;
            let x1 = ((q >> 4) | (((qh >> (j + 16)) & 1) << 4)) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

pub fn q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        let m = rd_f16(b, 2);
        let qh = rd_u32(b, 4);
        for j in 0..16 {
            let q = b[8 + j] as u32;
            let x0 = (q & 0xF) | (((qh >> j) & 1) << 4);
            let x1 = (q >> 4) | (((qh >> (j + 16)) & 1) << 4);
            y[j] = x0 as f32 * d + m;
            y[j + 16] = x1 as f32 * d + m;
        }
    }
}

pub fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..QK {
            y[j] = (b[2 + j] as i8) as f32 * d;
        }
    }
}

pub fn q8_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = rd_f16(b, 0);
        for j in 0..QK {
            y[j] = (b[4 + j] as i8) as f32 * d;
        }
    }
}

pub fn q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        let dmin = rd_f16(b, 2);
        let scales = &b[4..16];
        let qs = &b[16..144];
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let (d1, mm1) = (d * sc0 as f32, dmin * m0 as f32);
            let (d2, mm2) = (d * sc1 as f32, dmin * m1 as f32);
            let q = &qs[32 * p..32 * p + 32];
            let yy = &mut y[64 * p..64 * p + 64];
            for l in 0..32 {
                yy[l] = d1 * (q[l] & 0xF) as f32 - mm1;
                yy[32 + l] = d2 * (q[l] >> 4) as f32 - mm2;
            }
        }
    }
}

pub fn q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 0);
        let dmin = rd_f16(b, 2);
        let scales = &b[4..16];
        let qh = &b[16..48];
        let qs = &b[48..176];
        for p in 0..4 {
            let (sc0, m0) = scale_min_k4(2 * p, scales);
            let (sc1, m1) = scale_min_k4(2 * p + 1, scales);
            let (d1, mm1) = (d * sc0 as f32, dmin * m0 as f32);
            let (d2, mm2) = (d * sc1 as f32, dmin * m1 as f32);
            let (u1, u2) = (1u8 << (2 * p), 1u8 << (2 * p + 1));
            let q = &qs[32 * p..32 * p + 32];
            let yy = &mut y[64 * p..64 * p + 64];
            for l in 0..32 {
                let h0 = if qh[l] & u1 != 0 { 16 } else { 0 };
                let h1 = if qh[l] & u2 != 0 { 16 } else { 0 };
                yy[l] = d1 * ((q[l] & 0xF) + h0) as f32 - mm1;
                yy[32 + l] = d2 * ((q[l] >> 4) + h1) as f32 - mm2;
            }
        }
    }
}

pub fn q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f16(b, 208);
        for h in 0..2 {
            let ql = &b[64 * h..64 * h + 64];
            let qh = &b[128 + 32 * h..128 + 32 * h + 32];
            let sc = &b[192 + 8 * h..192 + 8 * h + 8];
            let yy = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                yy[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                yy[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                yy[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                yy[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

pub fn q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = rd_f32(b, 0);
        for j in 0..QK_K {
            y[j] = d * (b[Q8_K_QS + j] as i8) as f32;
        }
    }
}
