//! Causal multi-head attention with grouped KV heads over an f16 KV cache.
//!
//! The numerics are the engine's reference attention (`verity_engine`'s `attention`), bit
//! for bit, on every SIMD path:
//!
//! * the query is rounded to f16 (ggml multiplies f16 K by an f16-rounded Q);
//! * a score is `dot(q, k) * scale`, with the dot accumulated in eight lanes
//!   (`acc[i % 8] += q[i] * k[i]`, no FMA), summed lane 0 to 7 in order, then the tail;
//! * softmax with an f64 sum, as ggml's;
//! * probabilities are rounded to f16, and `out[i] += p * v[i]` key after key (no FMA).
//!
//! The work is split over (query, KV head) pairs: the K and V rows of a KV head are read
//! once for all the query heads that share it. No allocation per call beyond per-thread
//! scratch that grows to the longest context seen.

use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

use crate::SimdLevel;

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (`n_head` is a multiple of it).
    pub n_head_kv: usize,
    /// Elements per head.
    pub head_dim: usize,
}

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t][h]` = softmax(q[t][h] · K[0..p0+t+1] * scale) · V for `n` queries at positions
/// `p0..p0 + n`, where query head `h` uses KV head `h / (n_head / n_head_kv)`.
///
/// * `q`: `n * n_head * head_dim` f32 (row `t` holds the heads of query `t`);
/// * `k`, `v`: the cache, `[position][n_head_kv * head_dim]` f16, at least `p0 + n` rows;
/// * `out`: `n * n_head * head_dim` f32.
///
/// `scale` is usually `1 / sqrt(head_dim)`. Runs on rayon's global pool.
#[allow(clippy::too_many_arguments)]
pub fn attention_f16(
    q: &[f32],
    k: &[f16],
    v: &[f16],
    out: &mut [f32],
    n: usize,
    p0: usize,
    shape: AttnShape,
    scale: f32,
) {
    attention_f16_with(crate::simd_level(), q, k, v, out, n, p0, shape, scale)
}

/// [`attention_f16`] at an explicit SIMD level (for tests and benchmarks).
#[doc(hidden)]
#[allow(clippy::too_many_arguments)]
pub fn attention_f16_with(
    level: SimdLevel,
    q: &[f32],
    k: &[f16],
    v: &[f16],
    out: &mut [f32],
    n: usize,
    p0: usize,
    shape: AttnShape,
    scale: f32,
) {
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    assert!(
        n_head_kv > 0 && n_head % n_head_kv == 0,
        "attention: bad head counts"
    );
    let group = n_head / n_head_kv;
    let kvd = n_head_kv * hd;
    let qd = n_head * hd;
    assert_eq!(q.len(), n * qd, "attention: q has the wrong size");
    assert_eq!(out.len(), n * qd, "attention: out has the wrong size");
    assert!(
        k.len() >= (p0 + n) * kvd && v.len() >= (p0 + n) * kvd,
        "attention: the cache holds fewer than p0 + n positions"
    );
    #[cfg(target_arch = "x86_64")]
    let simd = matches!(crate::effective(level), SimdLevel::Avx2 | SimdLevel::Avx512);
    #[cfg(not(target_arch = "x86_64"))]
    let simd = {
        let _ = level;
        false
    };
    // One task per (query, KV head): `group` output heads, contiguous in `out`.
    out.par_chunks_mut(group * hd)
        .enumerate()
        .for_each(|(i, o)| {
            let (t, kvh) = (i / n_head_kv, i % n_head_kv);
            let n_keys = p0 + t + 1;
            let qs = &q[t * qd + kvh * group * hd..][..group * hd];
            SCORES.with(|cell| {
                let sc = &mut *cell.borrow_mut();
                sc.resize(group * n_keys + group * hd, 0.0);
                let (scores, qv) = sc.split_at_mut(group * n_keys);
                for (d, &s) in qv.iter_mut().zip(qs) {
                    *d = f16::from_f32(s).to_f32();
                }
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: `simd` is only true after run-time detection of avx2+fma+f16c.
                    unsafe {
                        x86::scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
                    }
                } else {
                    scalar_scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
                }
                #[cfg(not(target_arch = "x86_64"))]
                scalar_scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
                for s in scores.chunks_exact_mut(n_keys) {
                    softmax(s);
                    for p in s.iter_mut() {
                        *p = f16::from_f32(*p).to_f32();
                    }
                }
                o.fill(0.0);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: as above.
                    unsafe { x86::weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o) };
                } else {
                    scalar_weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o);
                }
                #[cfg(not(target_arch = "x86_64"))]
                scalar_weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o);
            });
        });
}

/// Softmax in place with an f64 sum (the engine's `ops::softmax`).
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[inline]
fn dot8(a: &[f32], b: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for (l, acc) in acc.iter_mut().enumerate() {
            *acc += a[c * 8 + l] * b(c * 8 + l);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (i, &x) in a.iter().enumerate().skip(chunks * 8) {
        s += x * b(i);
    }
    s
}

/// `scores[g * n_keys + j] = dot(qv[g], K[j][off..off + hd]) * scale`.
#[allow(clippy::too_many_arguments)]
fn scalar_scores(
    qv: &[f32],
    k: &[f16],
    kvd: usize,
    off: usize,
    hd: usize,
    n_keys: usize,
    scale: f32,
    scores: &mut [f32],
) {
    for j in 0..n_keys {
        let row = &k[j * kvd + off..][..hd];
        for (g, qh) in qv.chunks_exact(hd).enumerate() {
            scores[g * n_keys + j] = dot8(qh, |i| row[i].to_f32()) * scale;
        }
    }
}

/// `o[g] += p[g][j] * V[j]` for every key `j` in order.
fn scalar_weighted_sum(
    p: &[f32],
    v: &[f16],
    kvd: usize,
    off: usize,
    hd: usize,
    n_keys: usize,
    o: &mut [f32],
) {
    for j in 0..n_keys {
        let row = &v[j * kvd + off..][..hd];
        for (g, oh) in o.chunks_exact_mut(hd).enumerate() {
            let pj = p[g * n_keys + j];
            for (a, b) in oh.iter_mut().zip(row) {
                *a += pj * b.to_f32();
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn scores(
        qv: &[f32],
        k: &[f16],
        kvd: usize,
        off: usize,
        hd: usize,
        n_keys: usize,
        scale: f32,
        scores: &mut [f32],
    ) {
        let h8 = hd / 8 * 8;
        let group = qv.len() / hd;
        for j in 0..n_keys {
            let row = &k[j * kvd + off..][..hd];
            let rp = row.as_ptr();
            for g in 0..group {
                let qh = &qv[g * hd..(g + 1) * hd];
                let mut acc = _mm256_setzero_ps();
                let mut i = 0;
                while i < h8 {
                    let prod = _mm256_mul_ps(_mm256_loadu_ps(qh.as_ptr().add(i)), load8(rp.add(i)));
                    acc = _mm256_add_ps(acc, prod);
                    i += 8;
                }
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
                let mut s: f32 = lanes.iter().sum();
                for i in h8..hd {
                    s += qh[i] * row[i].to_f32();
                }
                *scores.get_unchecked_mut(g * n_keys + j) = s * scale;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn weighted_sum(
        p: &[f32],
        v: &[f16],
        kvd: usize,
        off: usize,
        hd: usize,
        n_keys: usize,
        o: &mut [f32],
    ) {
        let h8 = hd / 8 * 8;
        let group = o.len() / hd;
        for g in 0..group {
            let oh = &mut o[g * hd..(g + 1) * hd];
            let pg = &p[g * n_keys..(g + 1) * n_keys];
            // Eight output lanes at a time, kept in a register over all keys.
            let mut i = 0;
            while i < h8 {
                let mut acc = _mm256_loadu_ps(oh.as_ptr().add(i));
                for (j, &pj) in pg.iter().enumerate() {
                    let vv = load8(v.as_ptr().add(j * kvd + off + i));
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(pj), vv));
                }
                _mm256_storeu_ps(oh.as_mut_ptr().add(i), acc);
                i += 8;
            }
            for i in h8..hd {
                for (j, &pj) in pg.iter().enumerate() {
                    oh[i] += pj * v[j * kvd + off + i].to_f32();
                }
            }
        }
    }
}
