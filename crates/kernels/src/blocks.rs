//! Byte layouts of ggml's block formats, and small helpers to read them.
//!
//! Every offset here mirrors the C structs in ggml-common.h (all fields little-endian,
//! no padding):
//!
//! | type | bytes | layout |
//! |------|-------|--------|
//! | Q4_0 | 18  | `d: f16, qs: [u8; 16]` |
//! | Q4_1 | 20  | `d: f16, m: f16, qs: [u8; 16]` |
//! | Q5_0 | 22  | `d: f16, qh: u32, qs: [u8; 16]` |
//! | Q5_1 | 24  | `d: f16, m: f16, qh: u32, qs: [u8; 16]` |
//! | Q8_0 | 34  | `d: f16, qs: [i8; 32]` |
//! | Q8_1 | 36  | `d: f16, s: f16, qs: [i8; 32]` |
//! | Q4_K | 144 | `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]` |
//! | Q5_K | 176 | `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]` |
//! | Q6_K | 210 | `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16` |
//! | Q8_K | 292 | `d: f32, qs: [i8; 256], bsums: [i16; 16]` |
//! | Q2_K | 84  | `scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16` |
//! | Q3_K | 110 | `hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16` |
//! | IQ4_NL | 18 | `d: f16, qs: [u8; 16]` |
//! | IQ4_XS | 136 | `d: f16, scales_h: u16, scales_l: [u8; 4], qs: [u8; 128]` |
//! | MXFP4 | 17 | `e: u8 (E8M0), qs: [u8; 16]` |

use half::f16;

/// Elements per block of the 32-element ("legacy") quant types.
pub const QK: usize = 32;
/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

pub const Q4_0_BYTES: usize = 18;
pub const Q4_1_BYTES: usize = 20;
pub const Q5_0_BYTES: usize = 22;
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34;
pub const Q8_1_BYTES: usize = 36;
pub const Q4_K_BYTES: usize = 144;
pub const Q5_K_BYTES: usize = 176;
pub const Q6_K_BYTES: usize = 210;
pub const Q8_K_BYTES: usize = 292;
pub const Q2_K_BYTES: usize = 84;
pub const Q3_K_BYTES: usize = 110;
pub const IQ4_NL_BYTES: usize = 18;
pub const IQ4_XS_BYTES: usize = 136;
pub const MXFP4_BYTES: usize = 17;

/// Offsets inside a Q8_K block.
pub const Q8_K_QS: usize = 4;
pub const Q8_K_BSUMS: usize = 4 + QK_K;

/// Read an f16 stored little-endian at `off` and widen it (exact).
#[inline(always)]
pub fn rd_f16(b: &[u8], off: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[off], b[off + 1]])).to_f32()
}

/// Read a little-endian f32 at `off`.
#[inline(always)]
pub fn rd_f32(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Read a little-endian u32 at `off`.
#[inline(always)]
pub fn rd_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Read a little-endian i16 at `off`.
#[inline(always)]
pub fn rd_i16(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes([b[off], b[off + 1]])
}

/// Widen a bf16 bit pattern to f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Round f32 to bf16 exactly as ggml's `ggml_compute_fp32_to_bf16` does:
/// round to nearest even, NaNs forced quiet.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Round f32 to f16 bits (round to nearest even, as F16C's `_cvtss_sh(x, 0)` and ggml do).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of a Q4_K/Q5_K block
/// (ggml's `get_scale_min_k4`): 6 bits each.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All 8 scales and 8 mins of a Q4_K/Q5_K block.
#[inline(always)]
pub fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, q);
        sc[j] = s;
        mn[j] = m;
    }
    (sc, mn)
}

/// Four-way float accumulator shared by the scalar and SIMD dot products of the quantized
/// types, so that both paths add the per-block terms in exactly the same order.
///
/// Block `ib` goes to lane `ib % 4`; the result is `(a0 + a1) + (a2 + a3)`.
#[derive(Default)]
pub struct Acc4([f32; 4]);

impl Acc4 {
    #[inline(always)]
    pub fn add(&mut self, ib: usize, v: f32) {
        self.0[ib & 3] += v;
    }

    #[inline(always)]
    pub fn finish(self) -> f32 {
        let a = self.0;
        (a[0] + a[1]) + (a[2] + a[3])
    }
}

/// Horizontal reduction of 16 float lanes in the order every float dot product uses
/// (AVX-512: one zmm; AVX2: two ymm): lanes `j` and `8 + j` added, then 8 → 4 → 2 → 1.
#[inline(always)]
pub fn reduce16(acc: &[f32; 16]) -> f32 {
    let mut s = [0f32; 8];
    for j in 0..8 {
        s[j] = acc[j] + acc[8 + j];
    }
    let t = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    let u0 = t[0] + t[2];
    let u1 = t[1] + t[3];
    u0 + u1
}
