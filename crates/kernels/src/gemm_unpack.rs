//! Unpacking weight rows into a panel (`gemm.rs`, whose child module this is): the quants
//! transposed to `[k / 4][row][k % 4]` unsigned bytes, and each block's scales and mins
//! widened into the panel's per-row arrays.

use super::{lowbit, Kind, Panel, PR};
use crate::blocks::*;
use crate::TensorType;
use std::arch::x86_64::*;

/// Unpack 16 weight rows into `p`.
pub(super) fn unpack_panel(
    ty: TensorType,
    kind: Kind,
    w: &[u8],
    wrb: usize,
    cols: usize,
    p: &mut Panel,
) {
    use TensorType::*;
    p.q.resize(cols * PR, 0);
    let belems = if matches!(kind, Kind::B32 { .. }) {
        QK
    } else {
        QK_K
    };
    let nb = cols / belems;
    p.d.resize(nb * PR, 0.0);
    p.m.resize(nb * PR, 0.0);
    match kind {
        Kind::K4 => {
            p.sc.resize(nb * 8 * PR, 0);
            p.mn.resize(nb * 4 * PR, 0);
        }
        Kind::KX => p.sc.resize(nb * 8 * PR, 0),
        Kind::K6 { .. } => p.sc.resize(nb * 16 * PR, 0),
        Kind::K2 => {
            p.sc.resize(nb * 16 * PR, 0);
            p.sc_pairs.resize(nb * 8 * PR, 0);
        }
        Kind::B32 { .. } => {}
    }
    assert!(w.len() >= (PR - 1) * wrb + ty.row_bytes(cols).unwrap());
    if let Kind::B32 { min, .. } = kind {
        // The f16 scale bits (MXFP4: the E8M0 byte) are gathered while the quants are
        // unpacked (one pass over the weights), then widened 16 at a time.
        p.d16.resize(nb * PR, 0);
        p.m16.resize(nb * PR, 0);
        // SAFETY: `available()` was checked before any panel work; the rows were checked
        // above, `p.q` holds `cols * PR` bytes and `d16` / `m16` `nb * PR` entries.
        unsafe {
            let m16 = if min {
                p.m16.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            };
            unpack_quants(
                ty,
                w.as_ptr(),
                wrb,
                cols,
                p.q.as_mut_ptr(),
                p.d16.as_mut_ptr(),
                m16,
            );
            if ty == MXFP4 {
                for (d, &e) in p.d.iter_mut().zip(&p.d16) {
                    *d = crate::lowbit::e8m0_half(e as u8);
                }
            } else {
                widen_f16(&p.d16, &mut p.d);
            }
            if min {
                widen_f16(&p.m16, &mut p.m);
            }
        }
        return;
    }
    for r in 0..PR {
        let row = &w[r * wrb..(r + 1) * wrb];
        for ib in 0..nb {
            match ty {
                Q8_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q8_0_BYTES..], 0),
                Q4_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q4_0_BYTES..], 0),
                Q5_0 => p.d[ib * PR + r] = rd_f16(&row[ib * Q5_0_BYTES..], 0),
                Q4_1 | Q5_1 => {
                    let bytes = if ty == Q4_1 { Q4_1_BYTES } else { Q5_1_BYTES };
                    let x = &row[ib * bytes..(ib + 1) * bytes];
                    p.d[ib * PR + r] = rd_f16(x, 0);
                    p.m[ib * PR + r] = rd_f16(x, 2);
                }
                Q4_K | Q5_K => {
                    let bytes = if ty == Q4_K { Q4_K_BYTES } else { Q5_K_BYTES };
                    let x = &row[ib * bytes..(ib + 1) * bytes];
                    p.d[ib * PR + r] = rd_f16(x, 0);
                    p.m[ib * PR + r] = rd_f16(x, 2);
                    let (sc, mn) = scales_mins_k4(&x[4..16]);
                    for (j, &v) in sc.iter().enumerate() {
                        p.sc[(ib * 8 + j) * PR + r] = v as i32;
                    }
                    for jp in 0..4 {
                        p.mn[(ib * 4 + jp) * PR + r] =
                            mn[2 * jp] as i32 | ((mn[2 * jp + 1] as i32) << 16);
                    }
                }
                Q6_K => {
                    let x = &row[ib * Q6_K_BYTES..(ib + 1) * Q6_K_BYTES];
                    p.d[ib * PR + r] = rd_f16(x, 208);
                    for g in 0..16 {
                        p.sc[(ib * 16 + g) * PR + r] = (x[192 + g] as i8) as i32;
                    }
                }
                _ => lowbit::block_scales(ty, &row[ib * ty.block_bytes()..], ib, r, p),
            }
        }
    }
    assert!(w.len() >= (PR - 1) * wrb + ty.row_bytes(cols).unwrap());
    // SAFETY: `available()` was checked before any panel work; the weight rows were
    // checked above and `p.q` holds `cols * PR` bytes.
    unsafe {
        unpack_quants(
            ty,
            w.as_ptr(),
            wrb,
            cols,
            p.q.as_mut_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
}

/// `dst[i] = src[i]` widened from f16 bits (same length; a multiple of 16).
#[target_feature(enable = "avx2,f16c,avx512f")]
unsafe fn widen_f16(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    for (s, d) in src.chunks_exact(PR).zip(dst.chunks_exact_mut(PR)) {
        let h = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
        _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h));
    }
}

/// The unsigned quants of weight row `r`'s 32-element chunk `kc` (elements
/// `32 kc .. 32 kc + 32`), as the panel stores them (see [`Kind`] for the offsets).
#[inline(always)]
unsafe fn chunk_vals(ty: TensorType, row: *const u8, kc: usize) -> __m256i {
    use TensorType::*;
    let m4 = _mm256_set1_epi8(0x0F);
    let ld = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
    let nib = |p: *const u8| {
        let t = _mm_loadu_si128(p as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), m4)
    };
    // Byte j = 0x10 if bit j of `bits` is set.
    let bit4 = |bits: u32| {
        let m = _mm256_movm_epi8(bits);
        _mm256_and_si256(m, _mm256_set1_epi8(0x10))
    };
    match ty {
        Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => lowbit::chunk_vals(ty, row, kc),
        Q8_0 => _mm256_xor_si256(
            ld(row.add(kc * Q8_0_BYTES + 2)),
            _mm256_set1_epi8(0x80u8 as i8),
        ),
        Q4_0 => nib(row.add(kc * Q4_0_BYTES + 2)),
        Q4_1 => nib(row.add(kc * Q4_1_BYTES + 4)),
        Q5_0 | Q5_1 => {
            let (bytes, qh, qs) = if ty == Q5_0 {
                (Q5_0_BYTES, 2, 6)
            } else {
                (Q5_1_BYTES, 4, 8)
            };
            let x = row.add(kc * bytes);
            let h = std::ptr::read_unaligned(x.add(qh) as *const u32);
            _mm256_or_si256(nib(x.add(qs)), bit4(h))
        }
        Q4_K | Q5_K => {
            let (ib, j) = (kc / 8, kc % 8);
            let bytes = if ty == Q4_K { Q4_K_BYTES } else { Q5_K_BYTES };
            let x = row.add(ib * bytes);
            let qs = if ty == Q4_K { x.add(16) } else { x.add(48) };
            let q = ld(qs.add(32 * (j / 2)));
            let q = if j % 2 == 0 {
                q
            } else {
                _mm256_srli_epi16(q, 4)
            };
            let v = _mm256_and_si256(q, m4);
            if ty == Q4_K {
                v
            } else {
                let h = _mm256_srl_epi16(ld(x.add(16)), _mm_cvtsi32_si128(j as i32));
                let h = _mm256_and_si256(h, _mm256_set1_epi8(1));
                _mm256_or_si256(v, _mm256_slli_epi16(h, 4))
            }
        }
        _ => {
            // Q6_K: chunk c = 4h + k of a block.
            let (ib, c) = (kc / 8, kc % 8);
            let (h, k) = (c / 4, c % 4);
            let x = row.add(ib * Q6_K_BYTES);
            let ql = ld(x.add(64 * h + 32 * (k % 2)));
            let ql = if k < 2 { ql } else { _mm256_srli_epi16(ql, 4) };
            let qh = _mm256_srl_epi16(ld(x.add(128 + 32 * h)), _mm_cvtsi32_si128(2 * k as i32));
            let qh = _mm256_and_si256(qh, _mm256_set1_epi8(3));
            _mm256_or_si256(_mm256_and_si256(ql, m4), _mm256_slli_epi16(qh, 4))
        }
    }
}

/// Unpack the quants of 16 rows into `[k / 4][16][4]`: per 32-element chunk, the 16 rows'
/// 8 dwords are transposed (two 8x8 dword transposes side by side in zmm halves).
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
///
/// For the 32-element block types, the f16 bits of each block's `d` (offset 0) go to
/// `d16[block * 16 + row]` and, when `m16` is not null, those of `m` (offset 2) to `m16`.
unsafe fn unpack_quants(
    ty: TensorType,
    w: *const u8,
    wrb: usize,
    cols: usize,
    q: *mut u8,
    d16: *mut u16,
    m16: *mut u16,
) {
    use TensorType::*;
    // One copy per type, so the per-chunk type dispatch folds away.
    match ty {
        Q8_0 => unpack_quants_t::<0>(w, wrb, cols, q, d16, m16),
        Q4_0 => unpack_quants_t::<1>(w, wrb, cols, q, d16, m16),
        Q4_1 => unpack_quants_t::<2>(w, wrb, cols, q, d16, m16),
        Q5_0 => unpack_quants_t::<3>(w, wrb, cols, q, d16, m16),
        Q5_1 => unpack_quants_t::<4>(w, wrb, cols, q, d16, m16),
        Q4_K => unpack_quants_t::<5>(w, wrb, cols, q, d16, m16),
        Q5_K => unpack_quants_t::<6>(w, wrb, cols, q, d16, m16),
        Q6_K => unpack_quants_t::<7>(w, wrb, cols, q, d16, m16),
        Q2_K => unpack_quants_t::<8>(w, wrb, cols, q, d16, m16),
        Q3_K => unpack_quants_t::<9>(w, wrb, cols, q, d16, m16),
        IQ4_NL => unpack_quants_t::<10>(w, wrb, cols, q, d16, m16),
        IQ4_XS => unpack_quants_t::<11>(w, wrb, cols, q, d16, m16),
        _ => unpack_quants_t::<12>(w, wrb, cols, q, d16, m16),
    }
}

/// The types [`unpack_quants_t`] is instantiated for, by index.
const PANEL_TYPES: [TensorType; 13] = [
    TensorType::Q8_0,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q5_0,
    TensorType::Q5_1,
    TensorType::Q4_K,
    TensorType::Q5_K,
    TensorType::Q6_K,
    TensorType::Q2_K,
    TensorType::Q3_K,
    TensorType::IQ4_NL,
    TensorType::IQ4_XS,
    TensorType::MXFP4,
];

#[inline]
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
unsafe fn unpack_quants_t<const T: usize>(
    w: *const u8,
    wrb: usize,
    cols: usize,
    q: *mut u8,
    d16: *mut u16,
    m16: *mut u16,
) {
    let ty = PANEL_TYPES[T];
    // Bytes per 32-element block, for the types whose scales are gathered here.
    let block_bytes = if ty.block_size() == QK {
        ty.block_bytes()
    } else {
        0
    };
    let lo_idx = _mm512_set_epi64(13, 12, 5, 4, 9, 8, 1, 0);
    let hi_idx = _mm512_set_epi64(15, 14, 7, 6, 11, 10, 3, 2);
    for kc in 0..cols / 32 {
        // Plain loops, not closures: a closure would not inherit the target features.
        let mut z = [_mm512_setzero_si512(); 8];
        for (i, zi) in z.iter_mut().enumerate() {
            let a = chunk_vals(ty, w.add(i * wrb), kc);
            let b = chunk_vals(ty, w.add((i + 8) * wrb), kc);
            *zi = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
        }
        if block_bytes > 0 && !d16.is_null() {
            for r in 0..PR {
                let x = w.add(r * wrb + kc * block_bytes);
                *d16.add(kc * PR + r) = if ty == TensorType::MXFP4 {
                    *x as u16
                } else {
                    std::ptr::read_unaligned(x as *const u16)
                };
                if !m16.is_null() {
                    *m16.add(kc * PR + r) = std::ptr::read_unaligned(x.add(2) as *const u16);
                }
            }
        }
        let mut a = [_mm512_setzero_si512(); 4];
        let mut b = [_mm512_setzero_si512(); 4];
        for i in 0..4 {
            a[i] = _mm512_unpacklo_epi32(z[2 * i], z[2 * i + 1]);
            b[i] = _mm512_unpackhi_epi32(z[2 * i], z[2 * i + 1]);
        }
        // c[g]: rows 0..3 (and 8..11) of dword g (lane 0) and g + 4 (lane 1); d[g]: rows 4..7.
        let c = [
            _mm512_unpacklo_epi64(a[0], a[1]),
            _mm512_unpackhi_epi64(a[0], a[1]),
            _mm512_unpacklo_epi64(b[0], b[1]),
            _mm512_unpackhi_epi64(b[0], b[1]),
        ];
        let d = [
            _mm512_unpacklo_epi64(a[2], a[3]),
            _mm512_unpackhi_epi64(a[2], a[3]),
            _mm512_unpacklo_epi64(b[2], b[3]),
            _mm512_unpackhi_epi64(b[2], b[3]),
        ];
        let out = q.add(kc * 32 * PR);
        for g in 0..4 {
            let o0 = _mm512_permutex2var_epi64(c[g], lo_idx, d[g]);
            let o1 = _mm512_permutex2var_epi64(c[g], hi_idx, d[g]);
            _mm512_storeu_si512(out.add(g * 64) as *mut _, o0);
            _mm512_storeu_si512(out.add((g + 4) * 64) as *mut _, o1);
        }
    }
}
