//! Causal multi-head attention with grouped KV heads over an f16 KV cache (or an f32
//! one, computed without rounding: [`attention_f32_seqs`]).
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
/// `scale` is usually `1 / sqrt(head_dim)`. Runs on the `verity_pool` workers.
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
    attention_f16_seqs_with(
        level,
        &mut [AttnSeq {
            q,
            k,
            v,
            out,
            n,
            p0,
        }],
        shape,
        scale,
        0,
        None,
    )
}

/// One sequence's part of a batched attention call: its queries, its own cache (f16, or
/// f32 for [`attention_f32_seqs`]) and where its output goes (the arguments of
/// [`attention_f16`]).
pub struct AttnSeq<'a, T = f16> {
    pub q: &'a [f32],
    pub k: &'a [T],
    pub v: &'a [T],
    pub out: &'a mut [f32],
    /// Queries, at positions `p0..p0 + n`.
    pub n: usize,
    pub p0: usize,
}

/// [`attention_f16`] for several sequences, each over its own cache, in one parallel
/// region (so a batch of one-token decodes keeps every thread busy). Each sequence's
/// result is exactly what [`attention_f16`] gives it alone.
pub fn attention_f16_seqs(seqs: &mut [AttnSeq<'_>], shape: AttnShape, scale: f32) {
    attention_f16_seqs_with(crate::simd_level(), seqs, shape, scale, 0, None)
}

/// [`attention_f16_seqs`] over a sliding window: a query at position `p` attends to the
/// `window` positions up to and including `p` (0: to all of them); with `sinks` (one
/// logit per query head), each head's softmax also counts its sink, which takes
/// probability from the keys and adds no value (gpt-oss).
pub fn attention_f16_seqs_windowed(
    seqs: &mut [AttnSeq<'_>],
    shape: AttnShape,
    scale: f32,
    window: usize,
    sinks: Option<&[f32]>,
) {
    attention_f16_seqs_with(crate::simd_level(), seqs, shape, scale, window, sinks)
}

/// The keys a query at position `p0 + t` attends to: `(first, count)`.
fn key_range(p0: usize, t: usize, window: usize) -> (usize, usize) {
    let end = p0 + t + 1;
    let first = if window > 0 {
        end.saturating_sub(window)
    } else {
        0
    };
    (first, end - first)
}

/// [`attention_f16_seqs`] at an explicit SIMD level.
#[doc(hidden)]
pub fn attention_f16_seqs_with(
    level: SimdLevel,
    seqs: &mut [AttnSeq<'_>],
    shape: AttnShape,
    scale: f32,
    window: usize,
    sinks: Option<&[f32]>,
) {
    check(seqs, shape);
    check_sinks(sinks, shape);
    #[cfg(target_arch = "x86_64")]
    let simd = matches!(crate::effective(level), SimdLevel::Avx2 | SimdLevel::Avx512);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = level;
    #[cfg(target_arch = "x86_64")]
    let simd512 = crate::effective(level) == SimdLevel::Avx512 && x86::avx512_available();
    #[cfg(not(target_arch = "x86_64"))]
    let simd512 = false;

    let (group, hd) = (shape.n_head / shape.n_head_kv, shape.head_dim);
    let kvd = shape.n_head_kv * hd;
    for_each_task(seqs, shape, &|s, t, kvh, o| {
        let (first, n_keys) = key_range(s.p0, t, window);
        let qs = &s.q[t * shape.n_head * hd + kvh * group * hd..][..group * hd];
        let (k, v) = (&s.k[first * kvd..], &s.v[first * kvd..]);
        SCORES.with(|cell| {
            let sc = &mut *cell.borrow_mut();
            sc.resize(group * n_keys + group * hd, 0.0);
            let (scores, qv) = sc.split_at_mut(group * n_keys);
            for (d, &x) in qv.iter_mut().zip(qs) {
                *d = f16::from_f32(x).to_f32();
            }
            #[cfg(target_arch = "x86_64")]
            if simd {
                // The first value rows come in while the scores are computed.
                x86::prefetch_rows(v, kvd, kvh * hd, hd, 0, x86::ROWS_AHEAD, n_keys);
                // SAFETY: `simd` is only true after run-time detection of avx2+fma+f16c.
                unsafe {
                    x86::scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
                }
            } else {
                scalar_scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
            }
            #[cfg(not(target_arch = "x86_64"))]
            scalar_scores(qv, k, kvd, kvh * hd, hd, n_keys, scale, scores);
            for (g, row) in scores.chunks_exact_mut(n_keys).enumerate() {
                softmax(row, sinks.map(|s| s[kvh * group + g]), first % 16);
                #[cfg(target_arch = "x86_64")]
                if simd {
                    // SAFETY: as above.
                    unsafe { x86::round_f16(row) };
                    continue;
                }
                for p in row.iter_mut() {
                    *p = f16::from_f32(*p).to_f32();
                }
            }
            o.fill(0.0);
            #[cfg(target_arch = "x86_64")]
            if simd512 && x86::weighted_sum_512(scores, v, kvd, kvh * hd, hd, n_keys, o) {
                // done
            } else if simd {
                // SAFETY: as above.
                unsafe { x86::weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o) };
            } else {
                scalar_weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o);
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = simd512;
                scalar_weighted_sum(scores, v, kvd, kvh * hd, hd, n_keys, o);
            }
        });
    });
}

/// Attention over an f32 cache without any rounding to f16: the query, scores and
/// probabilities stay f32 (softmax with an f64 sum), as PyTorch computes in fp32. For
/// the `--cache-type f32` path, whose point is agreement with float references and with
/// the training forward pass: each row is computed exactly as
/// [`crate::attention_train::forward`] computes it (same sums in the same order, same
/// `exp`), so a model's loss during training is bit for bit what inference gives (on
/// quantized weights, where an activation's last bit can round its 8-bit quantization the
/// other way, nothing less keeps them together). The numerics are the same on every SIMD
/// level and for every batch: each (query, KV head) is one task with a fixed order of
/// operations.
pub fn attention_f32_seqs(seqs: &mut [AttnSeq<'_, f32>], shape: AttnShape, scale: f32) {
    attention_f32_seqs_with(crate::simd_level(), seqs, shape, scale, 0, None)
}

/// [`attention_f32_seqs`] over a sliding window, with optional sinks (see
/// [`attention_f16_seqs_windowed`]).
pub fn attention_f32_seqs_windowed(
    seqs: &mut [AttnSeq<'_, f32>],
    shape: AttnShape,
    scale: f32,
    window: usize,
    sinks: Option<&[f32]>,
) {
    attention_f32_seqs_with(crate::simd_level(), seqs, shape, scale, window, sinks)
}

/// [`attention_f32_seqs`] at an explicit SIMD level (for tests and benchmarks); every
/// level gives the same bits.
#[doc(hidden)]
pub fn attention_f32_seqs_with(
    level: SimdLevel,
    seqs: &mut [AttnSeq<'_, f32>],
    shape: AttnShape,
    scale: f32,
    window: usize,
    sinks: Option<&[f32]>,
) {
    check(seqs, shape);
    check_sinks(sinks, shape);
    let (group, hd) = (shape.n_head / shape.n_head_kv, shape.head_dim);
    let kvd = shape.n_head_kv * hd;
    for_each_task(seqs, shape, &|s, t, kvh, o| {
        let (first, n_keys) = key_range(s.p0, t, window);
        let keys = first * kvd..(first + n_keys) * kvd;
        let row = crate::attention_train::Row {
            q: &s.q[t * shape.n_head * hd + kvh * group * hd..][..group * hd],
            k: &s.k[keys.clone()],
            v: &s.v[keys],
            n_keys,
            kvd,
            off: kvh * hd,
            hd,
            scale,
            sinks: sinks.map(|s| &s[kvh * group..(kvh + 1) * group]),
        };
        SCORES.with(|cell| crate::attention_train::row(level, &row, o, &mut cell.borrow_mut()));
    });
}

/// Check every sequence's sizes against the shapes (callers' bugs panic here).
fn check<T>(seqs: &[AttnSeq<'_, T>], shape: AttnShape) {
    let AttnShape {
        n_head,
        n_head_kv,
        head_dim: hd,
    } = shape;
    assert!(
        n_head_kv > 0 && n_head % n_head_kv == 0,
        "attention: bad head counts"
    );
    let kvd = n_head_kv * hd;
    let qd = n_head * hd;
    for s in seqs.iter() {
        let (n, p0) = (s.n, s.p0);
        assert_eq!(s.q.len(), n * qd, "attention: q has the wrong size");
        assert_eq!(s.out.len(), n * qd, "attention: out has the wrong size");
        assert!(
            s.k.len() >= (p0 + n) * kvd && s.v.len() >= (p0 + n) * kvd,
            "attention: the cache holds fewer than p0 + n positions"
        );
    }
}

/// Sinks are one logit per query head.
fn check_sinks(sinks: Option<&[f32]>, shape: AttnShape) {
    if let Some(s) = sinks {
        assert_eq!(s.len(), shape.n_head, "attention: one sink per query head");
    }
}

/// What [`for_each_task`] runs: `(sequence, query, KV head, output heads)`.
type TaskBody<'b, T> = dyn Fn(&AttnSeq<'_, T>, usize, usize, &mut [f32]) + Sync + 'b;

/// Run `body(seq, query, kv_head, out)` for every (sequence, query, KV head) on the pool:
/// one task per triple, `out` being its `group` output heads (contiguous in the
/// sequence's `out`). The split never depends on the batch, so neither does a result.
fn for_each_task<T: Sync>(seqs: &mut [AttnSeq<'_, T>], shape: AttnShape, body: &TaskBody<'_, T>) {
    let (n_head_kv, hd) = (shape.n_head_kv, shape.head_dim);
    let group = shape.n_head / n_head_kv;
    // One task per (sequence, query, KV head): `group` output heads, contiguous in `out`.
    // `first[s]` is sequence s's first task.
    // (Per-thread scratch reused between calls: no allocation per decode step.)
    let mut index = SEQ_INDEX.with(|c| c.take());
    let (first, outs) = (&mut index.0, &mut index.1);
    first.clear();
    outs.clear();
    let mut total = 0;
    for s in seqs.iter_mut() {
        first.push(total);
        outs.push(OutPtr(s.out.as_mut_ptr()));
        total += s.n * n_head_kv;
    }
    first.push(total);
    let (first, outs) = (&*first, &*outs);
    let seqs = &*seqs;
    verity_pool::for_each(total, &|task| {
        let si = first.partition_point(|&f| f <= task) - 1;
        let s = &seqs[si];
        let i = task - first[si];
        // SAFETY: task `i` of sequence `si` owns `out[i * group * hd..][..group * hd]`,
        // disjoint from every other task's, and the sequences' `out`s are distinct
        // `&mut` slices that outlive this call.
        let o =
            unsafe { std::slice::from_raw_parts_mut(outs[si].0.add(i * group * hd), group * hd) };
        let (t, kvh) = (i / n_head_kv, i % n_head_kv);
        body(s, t, kvh, o);
    });
    SEQ_INDEX.with(|c| c.set(index));
}

thread_local! {
    /// [`for_each_task`]'s per-sequence first task and output pointer.
    static SEQ_INDEX: std::cell::Cell<(Vec<usize>, Vec<OutPtr>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// A sequence's output pointer, shared with the tasks that write disjoint parts of it.
struct OutPtr(*mut f32);
// SAFETY: only used to hand out disjoint sub-slices of distinct `&mut [f32]`.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// Softmax in place with an f64 sum (see [`crate::activation::exp_sum`]); a sink logit counts
/// in the maximum and the sum, as ggml's `soft_max` with sinks counts it.
fn softmax(x: &mut [f32], sink: Option<f32>, align: usize) {
    let mut max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if let Some(s) = sink {
        max = max.max(s);
    }
    let mut sum = crate::activation::exp_sum(x, max, align);
    if let Some(s) = sink {
        // ggml adds the sink's term with the C library's `expf`.
        sum += (s - max).exp() as f64;
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

    /// Round each value to f16 and back (round to nearest even, as `half` does).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn round_f16(x: &mut [f32]) {
        let n8 = x.len() / 8 * 8;
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i < n8 {
            let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm256_loadu_ps(p.add(i)));
            _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
            i += 8;
        }
        for v in &mut x[n8..] {
            *v = f16::from_f32(*v).to_f32();
        }
    }

    /// `out[l]` lane `k` = `v[k]` lane `l`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(v[0], v[1]);
        let t1 = _mm256_unpackhi_ps(v[0], v[1]);
        let t2 = _mm256_unpacklo_ps(v[2], v[3]);
        let t3 = _mm256_unpackhi_ps(v[2], v[3]);
        let t4 = _mm256_unpacklo_ps(v[4], v[5]);
        let t5 = _mm256_unpackhi_ps(v[4], v[5]);
        let t6 = _mm256_unpacklo_ps(v[6], v[7]);
        let t7 = _mm256_unpackhi_ps(v[6], v[7]);
        let u0 = _mm256_shuffle_ps(t0, t2, 0x44);
        let u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        let u2 = _mm256_shuffle_ps(t1, t3, 0x44);
        let u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        let u4 = _mm256_shuffle_ps(t4, t6, 0x44);
        let u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        let u6 = _mm256_shuffle_ps(t5, t7, 0x44);
        let u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        [
            _mm256_permute2f128_ps(u0, u4, 0x20),
            _mm256_permute2f128_ps(u1, u5, 0x20),
            _mm256_permute2f128_ps(u2, u6, 0x20),
            _mm256_permute2f128_ps(u3, u7, 0x20),
            _mm256_permute2f128_ps(u0, u4, 0x31),
            _mm256_permute2f128_ps(u1, u5, 0x31),
            _mm256_permute2f128_ps(u2, u6, 0x31),
            _mm256_permute2f128_ps(u3, u7, 0x31),
        ]
    }

    /// How many cache rows ahead of the one in use the loops prefetch. A decode step reads
    /// each layer's cache from memory (it was written a layer cycle ago, and the weights
    /// streamed since evict it); a head's slice of a row is only a few lines, spread one
    /// row stride apart, which the hardware prefetcher does not follow.
    pub const ROWS_AHEAD: usize = 16;

    /// Starts fetching rows `first..first + count` (clipped to `n_rows`) of a head's slice
    /// (`hd` halves at `off`, rows `kvd` apart) of `cache`.
    #[inline(always)]
    pub fn prefetch_rows(
        cache: &[f16],
        kvd: usize,
        off: usize,
        hd: usize,
        first: usize,
        count: usize,
        n_rows: usize,
    ) {
        let bytes = hd * std::mem::size_of::<f16>();
        for j in first..(first + count).min(n_rows) {
            let row = cache.as_ptr().wrapping_add(j * kvd + off) as *const i8;
            for b in (0..bytes).step_by(64) {
                // SAFETY: a prefetch has no architectural effect, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(b)) };
            }
        }
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
        // Blocks of 8 keys: each key's 8 lanes accumulated as below, then an 8x8 transpose
        // so that summing lanes 0..7 in order runs on 8 keys at once.
        let mut j0 = 0;
        if hd.is_multiple_of(8) && hd <= 256 {
            let init: f32 = std::iter::empty::<f32>().sum();
            let mut kf = [0f32; 8 * 256];
            prefetch_rows(k, kvd, off, hd, 0, ROWS_AHEAD, n_keys);
            while j0 + 8 <= n_keys {
                prefetch_rows(k, kvd, off, hd, j0 + ROWS_AHEAD, 8, n_keys);
                for kk in 0..8 {
                    let rp = k.as_ptr().add((j0 + kk) * kvd + off);
                    for i in (0..hd).step_by(8) {
                        _mm256_storeu_ps(kf.as_mut_ptr().add(kk * hd + i), load8(rp.add(i)));
                    }
                }
                for g in 0..group {
                    let qp = qv.as_ptr().add(g * hd);
                    let mut acc = [_mm256_setzero_ps(); 8];
                    let mut i = 0;
                    while i < hd {
                        let qi = _mm256_loadu_ps(qp.add(i));
                        for (kk, a) in acc.iter_mut().enumerate() {
                            let kv = _mm256_loadu_ps(kf.as_ptr().add(kk * hd + i));
                            *a = _mm256_add_ps(*a, _mm256_mul_ps(qi, kv));
                        }
                        i += 8;
                    }
                    let t = transpose8(acc);
                    let mut s = _mm256_set1_ps(init);
                    for tl in t {
                        s = _mm256_add_ps(s, tl);
                    }
                    let out = scores.as_mut_ptr().add(g * n_keys + j0);
                    _mm256_storeu_ps(out, _mm256_mul_ps(s, _mm256_set1_ps(scale)));
                }
                j0 += 8;
            }
        }
        for j in j0..n_keys {
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

    pub fn avx512_available() -> bool {
        use std::sync::OnceLock;
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            crate::level_supported(crate::SimdLevel::Avx2)
                && std::is_x86_feature_detected!("avx512f")
        })
    }

    /// [`weighted_sum`] with all `group` output heads in zmm registers over the keys, a
    /// block of columns at a time (as many as leave registers for the V row), each V row
    /// block converted once for the group; the same `o += p * v` per element and key, in
    /// key order. Returns false (doing nothing) for shapes it does not cover (heads not a
    /// multiple of 16 wide, more than 8 query heads per KV head).
    ///
    /// Only call when [`avx512_available`].
    pub fn weighted_sum_512(
        p: &[f32],
        v: &[f16],
        kvd: usize,
        off: usize,
        hd: usize,
        n_keys: usize,
        o: &mut [f32],
    ) -> bool {
        let group = o.len() / hd;
        assert!(p.len() >= group * n_keys && o.len() == group * hd);
        assert!(n_keys == 0 || v.len() >= (n_keys - 1) * kvd + off + hd);
        if !hd.is_multiple_of(16) || !(1..=8).contains(&group) {
            return false;
        }
        // 16-lane chunks per block: group x chunks accumulators plus the row's chunks stay
        // within the 32 zmm registers.
        let wide = match group {
            1 | 2 => 8,
            3 | 4 => 4,
            _ => 2,
        };
        let mut col = 0;
        while col < hd {
            let left = ((hd - col) / 16).min(wide);
            let chunks = [8, 4, 2, 1].into_iter().find(|&c| c <= left).unwrap_or(1);
            macro_rules! go {
                ($($hc:literal),*) => {
                    match chunks {
                        $(
                            $hc => match group {
                                // SAFETY (all arms): features checked by the caller; sizes
                                // checked above, and `col + 16 * $hc <= hd`.
                                1 => unsafe { ws512::<$hc, 1>(p, v, kvd, off, hd, col, n_keys, o) },
                                2 => unsafe { ws512::<$hc, 2>(p, v, kvd, off, hd, col, n_keys, o) },
                                3 => unsafe { ws512::<$hc, 3>(p, v, kvd, off, hd, col, n_keys, o) },
                                4 => unsafe { ws512::<$hc, 4>(p, v, kvd, off, hd, col, n_keys, o) },
                                5 => unsafe { ws512::<$hc, 5>(p, v, kvd, off, hd, col, n_keys, o) },
                                6 => unsafe { ws512::<$hc, 6>(p, v, kvd, off, hd, col, n_keys, o) },
                                7 => unsafe { ws512::<$hc, 7>(p, v, kvd, off, hd, col, n_keys, o) },
                                _ => unsafe { ws512::<$hc, 8>(p, v, kvd, off, hd, col, n_keys, o) },
                            },
                        )*
                        _ => unreachable!("a block is 1, 2, 4 or 8 chunks"),
                    }
                };
            }
            go!(1, 2, 3, 4, 8);
            col += 16 * chunks;
        }
        true
    }

    /// Columns `col..col + 16 * HC` of every one of the `G` heads of [`weighted_sum_512`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn ws512<const HC: usize, const G: usize>(
        p: &[f32],
        v: &[f16],
        kvd: usize,
        off: usize,
        hd: usize,
        col: usize,
        n_keys: usize,
        o: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); HC]; G];
        for (g, a) in acc.iter_mut().enumerate() {
            for (c, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(o.as_ptr().add(g * hd + col + 16 * c));
            }
        }
        let vp = v.as_ptr().add(off + col);
        for j in 0..n_keys {
            prefetch_rows(v, kvd, off + col, 16 * HC, j + ROWS_AHEAD, 1, n_keys);
            let row = vp.add(j * kvd);
            let vv: [__m512; HC] = std::array::from_fn(|c| {
                _mm512_cvtph_ps(_mm256_loadu_si256(row.add(16 * c) as *const __m256i))
            });
            for (g, a) in acc.iter_mut().enumerate() {
                let pj = _mm512_set1_ps(*p.get_unchecked(g * n_keys + j));
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, _mm512_mul_ps(pj, vv[c]));
                }
            }
        }
        for (g, a) in acc.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(g * hd + col + 16 * c), *a);
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
