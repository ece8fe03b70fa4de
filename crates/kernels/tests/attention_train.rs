//! Training attention (`verity_kernels::attention_train`): forward and backward against an
//! f64 reference (itself checked by finite differences), segment isolation, and the same
//! bits on every SIMD level and thread count.

use verity_kernels::attention_train::{backward, backward_with, forward, forward_with, TrainShape};
use verity_kernels::{level_supported, SimdLevel};

mod common;
use common::{bits, child_output, levels, simd_levels, Rng};

/// One test problem: inputs, and the forward's results.
struct Case {
    shape: TrainShape,
    segs: Vec<(usize, usize)>,
    scale: f32,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    dout: Vec<f32>,
}

fn segments(lens: &[usize]) -> Vec<(usize, usize)> {
    let mut start = 0;
    lens.iter()
        .map(|&l| {
            start += l;
            (start - l, l)
        })
        .collect()
}

impl Case {
    /// `amp` scales q and k, so the softmax ranges from flat to peaked.
    fn new(seed: u64, shape: TrainShape, lens: &[usize], amp: f32) -> Case {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let segs = segments(lens);
        let n: usize = lens.iter().sum();
        let (qd, kvd) = (
            shape.n_head * shape.head_dim,
            shape.n_head_kv * shape.head_dim,
        );
        Case {
            shape,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            q: rng.normal_vec(n * qd, amp),
            k: rng.normal_vec(n * kvd, amp),
            v: rng.normal_vec(n * kvd, 1.0),
            dout: rng.normal_vec(n * qd, 1.0),
            segs,
        }
    }

    /// (query heads, head size, query heads per KV head, query row width, KV row width).
    fn layout(&self) -> (usize, usize, usize, usize, usize) {
        let TrainShape {
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.shape;
        (n_head, hd, n_head / n_head_kv, n_head * hd, n_head_kv * hd)
    }

    fn n(&self) -> usize {
        self.segs.iter().map(|s| s.1).sum()
    }

    /// The first key row `i` sees in the segment starting at `s0`.
    fn first_key(&self, s0: usize, i: usize) -> usize {
        match self.shape.window {
            0 => s0,
            w => s0.max((i + 1).saturating_sub(w)),
        }
    }

    /// Forward then backward at `level`: (out, lse, dq, dk, dv). The gradients start as
    /// NaN to check that they are overwritten.
    fn run(&self, level: SimdLevel) -> [Vec<f32>; 5] {
        let n = self.n();
        let mut out = vec![f32::NAN; self.q.len()];
        let mut lse = vec![f32::NAN; n * self.shape.n_head];
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let (segs, shape, scale) = (&self.segs, self.shape, self.scale);
        forward_with(level, q, k, v, segs, shape, scale, &mut out, &mut lse);
        let mut dq = vec![f32::NAN; q.len()];
        let mut dk = vec![f32::NAN; k.len()];
        let mut dv = vec![f32::NAN; v.len()];
        backward_with(
            level, q, k, v, &out, &lse, &self.dout, segs, shape, scale, &mut dq, &mut dk, &mut dv,
        );
        [out, lse, dq, dk, dv]
    }

    /// The public entry points (the default SIMD level).
    fn run_default(&self) -> [Vec<f32>; 5] {
        let n = self.n();
        let mut out = vec![0.0; self.q.len()];
        let mut lse = vec![0.0; n * self.shape.n_head];
        let (q, k, v) = (&self.q, &self.k, &self.v);
        let (segs, shape, scale) = (&self.segs, self.shape, self.scale);
        forward(q, k, v, segs, shape, scale, &mut out, &mut lse);
        let mut dq = vec![0.0; q.len()];
        let mut dk = vec![0.0; k.len()];
        let mut dv = vec![0.0; v.len()];
        backward(
            q, k, v, &out, &lse, &self.dout, segs, shape, scale, &mut dq, &mut dk, &mut dv,
        );
        [out, lse, dq, dk, dv]
    }
}

// ---------------------------------------------------------------- f64 reference

/// f64 forward: (out, lse).
fn ref_forward(c: &Case, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (n_head, hd, group, qd, kvd) = c.layout();
    let n = c.n();
    let scale = c.scale as f64;
    let mut out = vec![0f64; n * qd];
    let mut lse = vec![0f64; n * n_head];
    for &(s0, len) in &c.segs {
        for h in 0..n_head {
            let kvh = h / group;
            for i in s0..s0 + len {
                let qi = &q[i * qd + h * hd..][..hd];
                let j0 = c.first_key(s0, i);
                let s: Vec<f64> = (j0..=i)
                    .map(|j| {
                        let kj = &k[j * kvd + kvh * hd..][..hd];
                        scale * qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - m).exp()).sum();
                lse[i * n_head + h] = m + sum.ln();
                for (jj, sj) in s.iter().enumerate() {
                    let p = (sj - m).exp() / sum;
                    let vj = &v[(j0 + jj) * kvd + kvh * hd..][..hd];
                    for (o, x) in out[i * qd + h * hd..][..hd].iter_mut().zip(vj) {
                        *o += p * x;
                    }
                }
            }
        }
    }
    (out, lse)
}

/// f64 analytic backward: (dq, dk, dv).
fn ref_backward(
    c: &Case,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    dout: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (n_head, hd, group, qd, kvd) = c.layout();
    let scale = c.scale as f64;
    let (out, lse) = ref_forward(c, q, k, v);
    let mut dq = vec![0f64; q.len()];
    let mut dk = vec![0f64; k.len()];
    let mut dv = vec![0f64; v.len()];
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for &(s0, len) in &c.segs {
        for h in 0..n_head {
            let kvh = h / group;
            for i in s0..s0 + len {
                let (qo, ko) = (i * qd + h * hd, kvh * hd);
                let d_i = dot(&dout[qo..][..hd], &out[qo..][..hd]);
                for j in c.first_key(s0, i)..=i {
                    let jo = j * kvd + ko;
                    let p =
                        (scale * dot(&q[qo..][..hd], &k[jo..][..hd]) - lse[i * n_head + h]).exp();
                    let dp = dot(&dout[qo..][..hd], &v[jo..][..hd]);
                    let ds = p * (dp - d_i);
                    for d in 0..hd {
                        dv[jo + d] += p * dout[qo + d];
                        dq[qo + d] += scale * ds * k[jo + d];
                        dk[jo + d] += scale * ds * q[qo + d];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

fn wide(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// ‖got − want‖ / ‖want‖.
fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w) * (g as f64 - w);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}

fn shape(n_head: usize, n_head_kv: usize, head_dim: usize) -> TrainShape {
    TrainShape {
        n_head,
        n_head_kv,
        head_dim,
        window: 0,
    }
}

/// [`shape`] with a sliding window.
fn windowed(n_head: usize, n_head_kv: usize, head_dim: usize, window: usize) -> TrainShape {
    TrainShape {
        window,
        ..shape(n_head, n_head_kv, head_dim)
    }
}

/// Shapes and segment lengths that exercise GQA and plain multi-head attention, head sizes
/// that are not a multiple of the tile width, blocks that end exactly or just past a
/// multiple of 64, and segments of one row.
fn cases() -> Vec<Case> {
    vec![
        Case::new(1, shape(9, 3, 64), &[70, 1, 130, 64], 1.0),
        Case::new(2, shape(4, 4, 16), &[1, 1, 65, 3, 128], 2.0),
        Case::new(3, shape(8, 2, 24), &[100, 1, 37], 1.5),
        Case::new(4, shape(2, 1, 64), &[600, 3], 3.0),
        Case::new(5, shape(3, 3, 8), &[1, 1, 1, 1], 1.0),
        // Sliding windows: shorter than a block, a block exactly, a block and one more
        // (key blocks wholly outside the window are skipped), and wider than the segments.
        Case::new(13, windowed(4, 2, 32, 8), &[200, 5, 64], 2.0),
        Case::new(14, windowed(2, 1, 16, 64), &[300, 1], 1.5),
        Case::new(15, windowed(3, 1, 24, 65), &[257, 130], 1.0),
        Case::new(16, windowed(2, 2, 8, 1000), &[90, 40], 1.0),
    ]
}

// ---------------------------------------------------------------- tests

#[test]
fn forward_matches_f64_reference() {
    for (ci, c) in cases().iter().enumerate() {
        let [out, lse, ..] = c.run_default();
        let (want_out, want_lse) = ref_forward(c, &wide(&c.q), &wide(&c.k), &wide(&c.v));
        let e = rel_err(&out, &want_out);
        assert!(e <= 1e-5, "case {ci}: out relative error {e:e}");
        for (i, (&g, &w)) in lse.iter().zip(&want_lse).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                "case {ci}: lse[{i}] = {g}, want {w}"
            );
        }
        // Element by element too, against the row's scale (outputs are averages of v).
        let max_abs = want_out.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (i, (&g, &w)) in out.iter().zip(&want_out).enumerate() {
            assert!(
                (g as f64 - w).abs() <= 1e-5 * max_abs,
                "case {ci}: out[{i}] = {g}, want {w}"
            );
        }
    }
}

#[test]
fn backward_matches_f64_reference() {
    for (ci, c) in cases().iter().enumerate() {
        let [_, _, dq, dk, dv] = c.run(verity_kernels::simd_level());
        let (wq, wk, wv) = ref_backward(c, &wide(&c.q), &wide(&c.k), &wide(&c.v), &wide(&c.dout));
        for (name, got, want) in [("dq", &dq, &wq), ("dk", &dk, &wk), ("dv", &dv, &wv)] {
            let e = rel_err(got, want);
            assert!(e <= 1e-4, "case {ci}: {name} relative error {e:e}");
        }
    }
}

/// The analytic f64 reference against central differences of `L = Σ out · dout`.
#[test]
fn reference_backward_matches_finite_differences() {
    for c in [
        Case::new(7, shape(4, 2, 8), &[5, 1, 7], 1.5),
        Case::new(8, windowed(2, 1, 8, 3), &[9, 2], 1.5),
    ] {
        finite_differences(&c);
    }
}

fn finite_differences(c: &Case) {
    let (q, k, v, r) = (wide(&c.q), wide(&c.k), wide(&c.v), wide(&c.dout));
    let loss = |q: &[f64], k: &[f64], v: &[f64]| {
        let (out, _) = ref_forward(c, q, k, v);
        out.iter().zip(&r).map(|(a, b)| a * b).sum::<f64>()
    };
    let (dq, dk, dv) = ref_backward(c, &q, &k, &v, &r);
    let eps = 1e-5;
    for (which, name, grad) in [(0, "dq", &dq), (1, "dk", &dk), (2, "dv", &dv)] {
        let fd: Vec<f32> = (0..grad.len())
            .map(|idx| {
                let mut plus = [q.clone(), k.clone(), v.clone()];
                let mut minus = plus.clone();
                plus[which][idx] += eps;
                minus[which][idx] -= eps;
                let hi = loss(&plus[0], &plus[1], &plus[2]);
                let lo = loss(&minus[0], &minus[1], &minus[2]);
                ((hi - lo) / (2.0 * eps)) as f32
            })
            .collect();
        let e = rel_err(&fd, grad);
        assert!(e < 1e-6, "{name}: finite differences vs reference {e:e}");
    }
}

/// Rows `seg` of a row-major array with `w` elements per row.
fn rows(x: &[f32], w: usize, (s0, len): (usize, usize)) -> &[f32] {
    &x[s0 * w..(s0 + len) * w]
}

#[test]
fn segments_are_isolated_bit_for_bit() {
    let sh = shape(8, 2, 64);
    let lens = [150, 1, 64, 65, 3];
    let batch = Case::new(11, sh, &lens, 1.5);
    let got = batch.run_default();
    let (qd, kvd) = (8 * 64, 2 * 64);
    let widths = [qd, 8, qd, kvd, kvd];
    // Each segment alone: the same rows, without the others.
    for &seg in &batch.segs {
        let alone = Case {
            shape: sh,
            segs: vec![(0, seg.1)],
            scale: batch.scale,
            q: rows(&batch.q, qd, seg).to_vec(),
            k: rows(&batch.k, kvd, seg).to_vec(),
            v: rows(&batch.v, kvd, seg).to_vec(),
            dout: rows(&batch.dout, qd, seg).to_vec(),
        };
        let want = alone.run_default();
        for (t, w) in widths.into_iter().enumerate() {
            assert_eq!(
                bits(rows(&got[t], w, seg)),
                bits(&want[t]),
                "segment {seg:?}, result {t}"
            );
        }
    }
    // And moved to another place in another batch.
    let seg = batch.segs[0];
    let mut other = Case::new(12, sh, &[9, seg.1, 70], 1.0);
    let to = (9, seg.1);
    let place = |dst: &mut Vec<f32>, src: &[f32], w: usize| {
        dst[to.0 * w..(to.0 + to.1) * w].copy_from_slice(rows(src, w, seg));
    };
    place(&mut other.q, &batch.q, qd);
    place(&mut other.k, &batch.k, kvd);
    place(&mut other.v, &batch.v, kvd);
    place(&mut other.dout, &batch.dout, qd);
    let moved = other.run_default();
    for (t, w) in widths.into_iter().enumerate() {
        assert_eq!(
            bits(rows(&moved[t], w, to)),
            bits(rows(&got[t], w, seg)),
            "moved segment, result {t}"
        );
    }
}

#[test]
fn same_bits_on_every_simd_level() {
    let levels = simd_levels();
    for c in cases() {
        let want = c.run(SimdLevel::Scalar);
        for &l in &levels {
            let got = c.run(l);
            for t in 0..5 {
                assert_eq!(bits(&got[t]), bits(&want[t]), "{l:?}, result {t}");
            }
        }
    }
}

/// GQA (several query heads per KV head) and plain multi-head attention, with segments of
/// one row: a lone row's output is its own v and its softmax is a single 1.
#[test]
fn gqa_mha_and_one_row_segments() {
    for sh in [shape(6, 2, 16), shape(4, 4, 16)] {
        let c = Case::new(21, sh, &[1, 1, 1], 1.0);
        let [out, lse, dq, dk, dv] = c.run_default();
        let group = sh.n_head / sh.n_head_kv;
        let (qd, kvd, hd) = (sh.n_head * 16, sh.n_head_kv * 16, 16);
        for i in 0..3 {
            for h in 0..sh.n_head {
                let kvh = h / group;
                let o = &out[i * qd + h * hd..][..hd];
                assert_eq!(o, &c.v[i * kvd + kvh * hd..][..hd]);
                let qk: f32 = (0..hd)
                    .map(|d| c.q[i * qd + h * hd + d] * c.k[i * kvd + kvh * hd + d])
                    .sum();
                let l = lse[i * sh.n_head + h];
                assert!((l - qk * c.scale).abs() <= 1e-6 * (1.0 + l.abs()));
            }
        }
        // With one key the softmax is constant: no gradient reaches q or k (up to the
        // rounding of dout·v − dout·out, summed in different orders), and dv sums d_out
        // over the query heads of each KV head.
        assert!(
            dq.iter().chain(&dk).all(|&x| x.abs() <= 1e-5),
            "{dq:?} {dk:?}"
        );
        for i in 0..3 {
            for kvh in 0..sh.n_head_kv {
                for d in 0..hd {
                    let want: f32 = (0..group)
                        .map(|g| c.dout[i * qd + (kvh * group + g) * hd + d])
                        .sum();
                    let got = dv[i * kvd + kvh * hd + d];
                    assert!((got - want).abs() <= 1e-6, "dv {got} vs {want}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------- threads

const CHILD_ENV: &str = "VERITY_ATTN_TRAIN_THREADS";

/// FNV-1a over the bits of every result.
fn digest(results: &[Vec<f32>]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for x in results.iter().flatten() {
        for b in x.to_bits().to_le_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Run by [`same_bits_on_one_and_two_threads`] in a child process whose pool has the
/// thread count in `VERITY_ATTN_TRAIN_THREADS` (the pool is sized once per process); a
/// no-op otherwise.
#[test]
fn thread_count_child() {
    let Ok(threads) = std::env::var(CHILD_ENV) else {
        return;
    };
    let threads: usize = threads.parse().unwrap();
    verity_pool::init(threads);
    assert_eq!(verity_pool::num_threads(), threads);
    let c = Case::new(31, shape(8, 2, 64), &[300, 200, 5, 1, 64, 129, 70], 1.5);
    println!("digest={:016x}", digest(&c.run_default()));
}

#[test]
fn same_bits_on_one_and_two_threads() {
    let digests: Vec<String> = [1, 2]
        .into_iter()
        .map(|threads| child_output("thread_count_child", CHILD_ENV, threads, "digest="))
        .collect();
    assert_eq!(digests[0], digests[1], "1 thread vs 2 threads");
}

/// The engine's f32-cache attention gives each row what the training forward gives it, bit
/// for bit, on every SIMD level: a whole prompt at once, one token at a time, or in
/// chunks, batched with other sequences. (On quantized weights a last-bit difference can
/// round an activation's quantization the other way and grow from there, so the training
/// loss equals the engine's only if this holds.)
#[test]
fn engine_f32_attention_is_the_training_forward() {
    use verity_kernels::attention::{attention_f32_seqs_with, AttnSeq, AttnShape};
    let levels = levels();
    for c in cases() {
        let want = c.run(SimdLevel::Scalar)[0].clone();
        let sh = c.shape;
        let ash = AttnShape {
            n_head: sh.n_head,
            n_head_kv: sh.n_head_kv,
            head_dim: sh.head_dim,
        };
        let (qd, kvd) = (sh.n_head * sh.head_dim, sh.n_head_kv * sh.head_dim);
        for &level in &levels {
            for chunk in [usize::MAX, 1, 37] {
                let mut got = vec![f32::NAN; want.len()];
                // Rows `p0..p0 + chunk` of every segment, all segments in one call.
                let mut p0 = 0;
                while c.segs.iter().any(|&(_, len)| p0 < len) {
                    // (segment start, segment length, rows now)
                    let parts: Vec<(usize, usize, usize)> = c
                        .segs
                        .iter()
                        .map(|&(s0, len)| (s0, len, len.saturating_sub(p0).min(chunk)))
                        .filter(|p| p.2 > 0)
                        .collect();
                    let mut outs: Vec<Vec<f32>> =
                        parts.iter().map(|p| vec![f32::NAN; p.2 * qd]).collect();
                    let mut seqs: Vec<AttnSeq<f32>> = parts
                        .iter()
                        .zip(&mut outs)
                        .map(|(&(s0, len, n), out)| AttnSeq {
                            q: &c.q[(s0 + p0) * qd..(s0 + p0 + n) * qd],
                            k: &c.k[s0 * kvd..(s0 + len) * kvd],
                            v: &c.v[s0 * kvd..(s0 + len) * kvd],
                            out,
                            n,
                            p0,
                        })
                        .collect();
                    attention_f32_seqs_with(level, &mut seqs, ash, c.scale, sh.window, None);
                    drop(seqs);
                    for (&(s0, _, n), out) in parts.iter().zip(&outs) {
                        got[(s0 + p0) * qd..][..n * qd].copy_from_slice(out);
                    }
                    p0 = p0.saturating_add(chunk);
                }
                if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
                    panic!(
                        "{sh:?} {level:?}, chunks of {chunk}: element {i} is {}, training gives {}",
                        got[i], want[i]
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- timing

/// `cargo test --release -p verity-kernels --test attention_train -- --ignored --nocapture`
#[test]
#[ignore]
fn timing_forward_backward() {
    use std::time::Instant;
    for (name, sh) in [
        ("SmolLM2 9/3x64", shape(9, 3, 64)),
        ("32/8x64", shape(32, 8, 64)),
    ] {
        let c = Case::new(41, sh, &[512; 4], 1.0);
        // Multiply-adds of the causal part only: QKᵀ and PV forward; QKᵀ, dO·Vᵀ, Pᵀ·dO,
        // dSᵀ·Q and dS·K backward.
        let pairs: f64 = c
            .segs
            .iter()
            .map(|s| (s.1 * (s.1 + 1) / 2) as f64)
            .sum::<f64>()
            * sh.n_head as f64;
        let unit = 2.0 * sh.head_dim as f64 * pairs;
        for level in [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512] {
            if !level_supported(level) {
                continue;
            }
            let n = c.n();
            let mut out = vec![0.0; c.q.len()];
            let mut lse = vec![0.0; n * sh.n_head];
            let (mut dq, mut dk, mut dv) = (
                vec![0.0; c.q.len()],
                vec![0.0; c.k.len()],
                vec![0.0; c.v.len()],
            );
            let (mut tf, mut tb) = (f64::MAX, f64::MAX);
            for _ in 0..4 {
                let t0 = Instant::now();
                forward_with(
                    level, &c.q, &c.k, &c.v, &c.segs, sh, c.scale, &mut out, &mut lse,
                );
                let t1 = Instant::now();
                backward_with(
                    level, &c.q, &c.k, &c.v, &out, &lse, &c.dout, &c.segs, sh, c.scale, &mut dq,
                    &mut dk, &mut dv,
                );
                let t2 = Instant::now();
                tf = tf.min((t1 - t0).as_secs_f64());
                tb = tb.min((t2 - t1).as_secs_f64());
            }
            println!(
                "{name}, n=2048 (4x512), {level:?}, {} threads: forward {:.1} ms ({:.1} GFLOP/s), \
                 backward {:.1} ms ({:.1} GFLOP/s), total {:.1} ms ({:.1} GFLOP/s)",
                verity_pool::num_threads(),
                tf * 1e3,
                2.0 * unit / tf / 1e9,
                tb * 1e3,
                5.0 * unit / tb / 1e9,
                (tf + tb) * 1e3,
                7.0 * unit / (tf + tb) / 1e9,
            );
        }
    }
}

/// The engine's f32-cache attention (not a fast path) over a 512-token prompt and one
/// decode step at position 2047. `cargo test --release -p verity-kernels --test attention_train -- --ignored
/// --nocapture`
#[test]
#[ignore]
fn timing_engine_f32_attention() {
    use std::time::Instant;
    use verity_kernels::attention::{attention_f32_seqs, AttnSeq, AttnShape};
    let sh = shape(9, 3, 64);
    let ash = AttnShape {
        n_head: sh.n_head,
        n_head_kv: sh.n_head_kv,
        head_dim: sh.head_dim,
    };
    let c = Case::new(43, sh, &[2048], 1.0);
    let qd = sh.n_head * sh.head_dim;
    for (name, p0, n) in [("prefill 512", 0, 512), ("decode at 2047", 2047, 1)] {
        let mut out = vec![0f32; n * qd];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t0 = Instant::now();
            attention_f32_seqs(
                &mut [AttnSeq {
                    q: &c.q[p0 * qd..(p0 + n) * qd],
                    k: &c.k,
                    v: &c.v,
                    out: &mut out,
                    n,
                    p0,
                }],
                ash,
                c.scale,
            );
            best = best.min(t0.elapsed().as_secs_f64());
        }
        println!("engine f32 attention, {name}: {:.3} ms", best * 1e3);
    }
}
