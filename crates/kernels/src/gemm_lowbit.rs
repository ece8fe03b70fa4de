//! The low-bit types in the panel kernel (`gemm.rs`, whose child module this is): their
//! quants as the unsigned bytes a panel stores, and the K-quants' block scales in the
//! panel's per-row arrays (IQ4_NL's f16 and MXFP4's E8M0 scales are gathered in `gemm_unpack.rs`).
//!
//! How each maps onto a panel kind (the offset is taken back out exactly, as for Q6_K):
//! * IQ4_NL, MXFP4 (`B32`, offset 128): table values + 128, so 1..=241 or 116..=140.
//! * IQ4_XS (`KX`): 8 sub-blocks of 32, table values + 128, signed 6-bit scales.
//! * Q2_K (`K2`): 16 groups of 16, quants 0..=3, 4-bit scales and mins.
//! * Q3_K (`K6` with offset 4): 16 groups of 16, quants + 4 (0..=7), signed 6-bit scales.

use super::Panel;
use crate::blocks::*;
use crate::lowbit::{iq4_xs_scales_biased, q3_k_scales, KVALUES_IQ4NL, KVALUES_MXFP4};
use crate::TensorType;
use std::arch::x86_64::*;

/// A value table plus 128, in both 128-bit halves, for `vpshufb`.
#[inline(always)]
unsafe fn table_plus_128(t: &[i8; 16]) -> __m256i {
    let u: [u8; 16] = std::array::from_fn(|i| (t[i] as i32 + 128) as u8);
    _mm256_broadcastsi128_si256(_mm_loadu_si128(u.as_ptr() as *const __m128i))
}

/// 32 nibbles from 16 bytes at `p` (low nibbles first) looked up in `tab`.
#[inline(always)]
unsafe fn lookup(p: *const u8, tab: __m256i) -> __m256i {
    let t = _mm_loadu_si128(p as *const __m128i);
    let idx = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16::<4>(t), t),
        _mm256_set1_epi8(0x0F),
    );
    _mm256_shuffle_epi8(tab, idx)
}

/// The stored quants of 32-value chunk `kc` (values `32 kc .. 32 kc + 32`) of a row.
#[inline(always)]
pub(super) unsafe fn chunk_vals(ty: TensorType, row: *const u8, kc: usize) -> __m256i {
    use TensorType::*;
    let (ib, c) = (kc / 8, kc % 8);
    // Q2_K / Q3_K: chunk c holds bits 2(c % 4).. of the 32 bytes of half c / 4.
    let twobit = |qs: *const u8| {
        let v = _mm256_loadu_si256(qs.add(32 * (c / 4)) as *const __m256i);
        let v = _mm256_srl_epi16(v, _mm_cvtsi32_si128(2 * (c % 4) as i32));
        _mm256_and_si256(v, _mm256_set1_epi8(3))
    };
    match ty {
        IQ4_NL => lookup(
            row.add(kc * IQ4_NL_BYTES + 2),
            table_plus_128(&KVALUES_IQ4NL),
        ),
        MXFP4 => lookup(
            row.add(kc * MXFP4_BYTES + 1),
            table_plus_128(&KVALUES_MXFP4),
        ),
        IQ4_XS => lookup(
            row.add(ib * IQ4_XS_BYTES + 8 + 16 * c),
            table_plus_128(&KVALUES_IQ4NL),
        ),
        Q2_K => twobit(row.add(ib * Q2_K_BYTES + 16)),
        _ => {
            // Q3_K: plus 4 where bit c of the value's hmask byte is set (value + 4).
            let x = row.add(ib * Q3_K_BYTES);
            let hm = _mm256_loadu_si256(x as *const __m256i);
            let h = _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32));
            let h = _mm256_and_si256(h, _mm256_set1_epi8(1));
            _mm256_or_si256(twobit(x.add(32)), _mm256_slli_epi16::<2>(h))
        }
    }
}

/// Two 16-bit values in one i32, as `vpdpwssd` pairs them.
fn pair(lo: i32, hi: i32) -> i32 {
    (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32
}

/// Block `ib` of panel row `r` (`x`: the block's bytes) into the panel's scale arrays.
pub(super) fn block_scales(ty: TensorType, x: &[u8], ib: usize, r: usize, p: &mut Panel) {
    const PR: usize = super::PR;
    match ty {
        TensorType::Q2_K => {
            p.d[ib * PR + r] = rd_f16(x, 80);
            p.m[ib * PR + r] = rd_f16(x, 82);
            for (g, &b) in x[..16].iter().enumerate() {
                p.sc[(ib * 16 + g) * PR + r] = (b & 0xF) as i32;
            }
            for j in 0..8 {
                let (m0, m1) = ((x[2 * j] >> 4) as i32, (x[2 * j + 1] >> 4) as i32);
                p.sc_pairs[(ib * 8 + j) * PR + r] = pair(m0, m1);
            }
        }
        TensorType::Q3_K => {
            p.d[ib * PR + r] = rd_f16(x, 108);
            let sc = q3_k_scales(&x[96..108]);
            for (g, &s) in sc.iter().enumerate() {
                p.sc[(ib * 16 + g) * PR + r] = s as i32;
            }
        }
        TensorType::IQ4_XS => {
            p.d[ib * PR + r] = rd_f16(x, 0);
            // All 8 six-bit scales (+ 32) at once: decoding them one by one cost 2 % of an
            // IQ4_XS prompt.
            let sc = iq4_xs_scales_biased(x).to_le_bytes();
            let out = &mut p.sc[ib * 8 * PR + r..][..7 * PR + 1];
            for (j, &v) in sc.iter().enumerate() {
                out[j * PR] = v as i32 - 32;
            }
        }
        _ => unreachable!("gemm_lowbit: {ty}"),
    }
}
