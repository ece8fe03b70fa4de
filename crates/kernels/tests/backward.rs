//! Backward-pass products: `matmul_t` (dX = dY · W) and `matmul_at_b` (C = Aᵀ · B) against
//! an f64 reference and against the exact fma chain, and bit-identity across SIMD levels,
//! batch sizes and thread counts.

use verity_kernels::*;

// ---------------------------------------------------------------- helpers

mod common;
use common::*;

/// Column counts to try for `ty`: one block, several panels / column blocks, partial panels.
fn col_shapes(ty: TensorType) -> &'static [usize] {
    match ty.block_size() {
        1 => &[1, 5, 16, 17, 64, 70, 300],
        32 => &[32, 64, 96, 320],
        _ => &[256, 768],
    }
}

/// The whole weight matrix as f32 (`dequantize_row`'s values).
fn dequantized(w: &WeightView) -> Vec<f32> {
    let mut out = vec![0f32; w.rows * w.cols];
    for (r, row) in out.chunks_exact_mut(w.cols.max(1)).enumerate() {
        get_row(w, r, row);
    }
    out
}

/// `OUT (m×n) = L (m×k) · R (k×n)`, element `(i, j)` as the contract says, literally:
/// `acc = 0; acc = fma(l(i, r), r(r, j), acc)` for `r` ascending.
fn fma_chain(
    (m, k, n): (usize, usize, usize),
    l: impl Fn(usize, usize) -> f32,
    r: impl Fn(usize, usize) -> f32,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f32;
            for t in 0..k {
                acc = l(i, t).mul_add(r(t, j), acc);
            }
            out[i * n + j] = acc;
        }
    }
    out
}

/// The same product in f64, and the sums of the magnitudes of its terms: (value, size).
fn f64_product(
    (m, k, n): (usize, usize, usize),
    l: impl Fn(usize, usize) -> f32,
    r: impl Fn(usize, usize) -> f32,
) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0f64; m * n];
    let mut mag = vec![0f64; m * n];
    for i in 0..m {
        for t in 0..k {
            let x = l(i, t) as f64;
            for j in 0..n {
                let p = x * r(t, j) as f64;
                want[i * n + j] += p;
                mag[i * n + j] += p.abs();
            }
        }
    }
    (want, mag)
}

/// `got` is the product `L · R` of [`fma_chain`]: close to the f64 product (within a few
/// ulps of the sum of magnitudes), and exactly the fma chain.
fn assert_product(
    got: &[f32],
    dims: (usize, usize, usize),
    l: impl Fn(usize, usize) -> f32 + Copy,
    r: impl Fn(usize, usize) -> f32 + Copy,
    what: &str,
) {
    let (want, mag) = f64_product(dims, l, r);
    assert_eq!(got.len(), want.len());
    for (i, ((&g, &w), &m)) in got.iter().zip(&want).zip(&mag).enumerate() {
        let tol = 1e-5 * m + 1e-30;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
    let chain = fma_chain(dims, l, r);
    assert_eq!(bits(got), bits(&chain), "{what}: not the fma chain");
}

// ---------------------------------------------------------------- matmul_t

#[test]
fn matmul_t_matches_f64_reference_and_fma_chain() {
    let mut rng = Rng(0x5eed_0001);
    for ty in WEIGHT_TYPES {
        for &cols in col_shapes(ty) {
            for rows in [1usize, 7, 33, 130] {
                let data = quantized_weights(&mut rng, ty, rows, cols);
                let w = view(ty, rows, cols, &data);
                let wf = dequantized(&w);
                for batch in [1usize, 3, 17] {
                    let dy = rng.vec(batch * rows);
                    let mut dx = vec![f32::NAN; batch * cols];
                    matmul_t(&w, &dy, batch, &mut dx);
                    let what = format!("{ty} {rows}x{cols} batch {batch}");
                    let dims = (batch, rows, cols);
                    let lhs = |b: usize, r: usize| dy[b * rows + r];
                    let rhs = |r: usize, k: usize| wf[r * cols + k];
                    assert_product(&dx, dims, lhs, rhs, &what);
                }
            }
        }
    }
}

#[test]
fn matmul_t_simd_levels_bit_identical() {
    let mut rng = Rng(0x5eed_0002);
    let levels = levels();
    for ty in WEIGHT_TYPES {
        for &cols in col_shapes(ty) {
            for (rows, batch) in [(1usize, 1usize), (7, 3), (33, 17), (70, 50), (129, 13)] {
                let data = quantized_weights(&mut rng, ty, rows, cols);
                let w = view(ty, rows, cols, &data);
                let dy = rng.vec(batch * rows);
                let run = |level| {
                    let mut dx = vec![f32::NAN; batch * cols];
                    matmul_t_with(level, &w, &dy, batch, &mut dx);
                    bits(&dx)
                };
                let want = run(SimdLevel::Scalar);
                for &level in &levels[1..] {
                    assert_eq!(
                        run(level),
                        want,
                        "{ty} {rows}x{cols} batch {batch}: {level:?} != scalar"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_t_rows_do_not_depend_on_batch() {
    let mut rng = Rng(0x5eed_0003);
    for ty in WEIGHT_TYPES {
        let cols = col_shapes(ty)[1];
        // 300 rows of dy: more than one row chunk per task.
        for (rows, batch) in [(33usize, 17usize), (65, 300)] {
            let data = quantized_weights(&mut rng, ty, rows, cols);
            let w = view(ty, rows, cols, &data);
            let dy = rng.vec(batch * rows);
            for level in levels() {
                let mut all = vec![0f32; batch * cols];
                matmul_t_with(level, &w, &dy, batch, &mut all);
                for b in 0..batch {
                    let mut one = vec![0f32; cols];
                    matmul_t_with(level, &w, &dy[b * rows..(b + 1) * rows], 1, &mut one);
                    assert_eq!(
                        bits(&one),
                        bits(&all[b * cols..(b + 1) * cols]),
                        "{ty} {rows}x{cols} {level:?}: row {b} of {batch} differs alone"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_t_f32_weights_at_any_alignment() {
    // f32 weights at an f32 address are read in place; elsewhere they are dequantized
    // (copied) like any other type. Both must give the same bits.
    let mut rng = Rng(0x5eed_0004);
    let (rows, cols) = (70usize, 70usize);
    let data = quantized_weights(&mut rng, TensorType::F32, rows, cols);
    let mut shifted = vec![0u8; data.len() + 1];
    shifted[1..].copy_from_slice(&data);
    for batch in [1usize, 3, 40] {
        let dy = rng.vec(batch * rows);
        for level in levels() {
            let run = |bytes: &[u8]| {
                let w = view(TensorType::F32, rows, cols, bytes);
                let mut dx = vec![f32::NAN; batch * cols];
                matmul_t_with(level, &w, &dy, batch, &mut dx);
                bits(&dx)
            };
            assert_eq!(run(&data), run(&shifted[1..]), "batch {batch} {level:?}");
        }
    }
}

#[test]
fn matmul_t_empty_shapes() {
    let ty = TensorType::Q4_0;
    let mut rng = Rng(4);
    for level in levels() {
        // rows = 0: every output is the empty chain, 0.0.
        let w = view(ty, 0, 64, &[]);
        let mut dx = vec![f32::NAN; 3 * 64];
        matmul_t_with(level, &w, &[], 3, &mut dx);
        assert!(dx.iter().all(|&v| v.to_bits() == 0), "{level:?}");
        // batch = 0 and cols = 0: nothing to write.
        let data = quantized_weights(&mut rng, ty, 5, 64);
        let w = view(ty, 5, 64, &data);
        matmul_t_with(level, &w, &[], 0, &mut []);
        let w0 = view(ty, 5, 0, &[]);
        matmul_t_with(level, &w0, &[1.0; 10], 2, &mut []);
    }
}

// ---------------------------------------------------------------- matmul_at_b

/// (n, p, q): narrow and wide outputs on both sides (the LoRA rank is either p or q),
/// partial panels, reductions longer than one tile.
const AT_B_SHAPES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (7, 3, 5),
    (33, 8, 70),
    (130, 70, 8),
    (64, 16, 16),
    (200, 9, 130),
    (65, 130, 9),
    (40, 100, 100),
    (3, 300, 17),
    (0, 4, 6),
];

#[test]
fn matmul_at_b_matches_f64_reference_and_fma_chain() {
    let mut rng = Rng(0x5eed_0010);
    for (n, p, q) in AT_B_SHAPES {
        let a = rng.vec(n * p);
        let b = rng.vec(n * q);
        for level in levels() {
            let mut c = vec![f32::NAN; p * q];
            matmul_at_b_with(level, &a, &b, n, p, q, &mut c);
            let what = format!("n {n} p {p} q {q} {level:?}");
            let lhs = |i: usize, t: usize| a[t * p + i];
            let rhs = |t: usize, j: usize| b[t * q + j];
            assert_product(&c, (p, n, q), lhs, rhs, &what);
        }
    }
}

#[test]
fn matmul_at_b_simd_levels_bit_identical() {
    let mut rng = Rng(0x5eed_0011);
    let levels = levels();
    for (n, p, q) in AT_B_SHAPES
        .into_iter()
        .chain([(513, 64, 576), (300, 1536, 8)])
    {
        // Larger magnitudes than the reference test: rounding differences would show.
        let a: Vec<f32> = (0..n * p).map(|_| rng.f32() * 1e3).collect();
        let b = rng.vec(n * q);
        let run = |level| {
            let mut c = vec![f32::NAN; p * q];
            matmul_at_b_with(level, &a, &b, n, p, q, &mut c);
            bits(&c)
        };
        let want = run(SimdLevel::Scalar);
        for &level in &levels[1..] {
            assert_eq!(run(level), want, "n {n} p {p} q {q}: {level:?} != scalar");
        }
    }
}

// ---------------------------------------------------------------- threads

/// A digest of a fixed set of products (every weight type, both functions), for comparing
/// processes with different pool sizes.
fn digest() -> u64 {
    let mut rng = Rng(0x5eed_0020);
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |v: &[f32]| {
        for x in v {
            h = (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
        }
    };
    for ty in WEIGHT_TYPES {
        let cols = *col_shapes(ty).last().unwrap();
        let (rows, batch) = (70, 300);
        let data = quantized_weights(&mut rng, ty, rows, cols);
        let w = view(ty, rows, cols, &data);
        let dy = rng.vec(batch * rows);
        let mut dx = vec![0f32; batch * cols];
        matmul_t(&w, &dy, batch, &mut dx);
        eat(&dx);
    }
    for (n, p, q) in [(300, 70, 8), (300, 8, 330), (129, 200, 200)] {
        let a = rng.vec(n * p);
        let b = rng.vec(n * q);
        let mut c = vec![0f32; p * q];
        matmul_at_b(&a, &b, n, p, q, &mut c);
        eat(&c);
    }
    h
}

const CHILD_ENV: &str = "VERITY_BACKWARD_TEST_THREADS";

/// Runs only as a child of [`results_do_not_depend_on_thread_count`]: sets the pool size
/// (which is per process) and prints the digest.
#[test]
fn thread_count_child() {
    let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|v| v.parse().ok()) else {
        return;
    };
    verity_pool::init(n);
    assert_eq!(verity_pool::num_threads(), n);
    println!("DIGEST {:016x}", digest());
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let seen: Vec<(usize, String)> = [1, 2, 3]
        .into_iter()
        .map(|t| {
            (
                t,
                child_output("thread_count_child", CHILD_ENV, t, "DIGEST "),
            )
        })
        .collect();
    assert!(
        seen.iter().all(|(_, d)| *d == seen[0].1),
        "digests differ by thread count: {seen:?}"
    );
    // And this process's pool (whatever its size) agrees.
    assert_eq!(format!("{:016x}", digest()), seen[0].1);
}

// ---------------------------------------------------------------- throughput

/// GFLOP/s of `matmul` and `matmul_t` on the LoRA shapes:
/// `VERITY_BACKWARD_TEST_THREADS=1 cargo test --release -p verity-kernels --test backward
/// -- --ignored --nocapture bench_backward` (unset: all cores).
#[test]
#[ignore]
fn bench_backward() {
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|v| v.parse().ok()) {
        verity_pool::init(n);
    }
    // On one thread, time on the CPU (this thread's CPU clock), which leaves out the time
    // other processes on a busy machine take; else wall time.
    let oncpu = verity_pool::num_threads() == 1 && thread_cpu_seconds().is_some();
    let now = || match oncpu {
        true => thread_cpu_seconds().unwrap(),
        false => std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64(),
    };
    // Best time of each function over runs that alternate between them, so a busy machine
    // slows both alike.
    let best = |fs: &mut [&mut dyn FnMut()]| {
        let mut best = vec![f64::INFINITY; fs.len()];
        let start = std::time::Instant::now();
        let mut runs = 0;
        while runs < 4 || (start.elapsed().as_secs_f64() < 3.0 && runs < 100) {
            for (f, b) in fs.iter_mut().zip(&mut best) {
                let t = now();
                f();
                *b = b.min(now() - t);
            }
            runs += 1;
        }
        best
    };
    println!(
        "simd {:?}, threads {}, {} time",
        simd_level(),
        verity_pool::num_threads(),
        if oncpu { "on-CPU" } else { "wall" }
    );
    println!("| weight | rows x cols | batch | matmul GFLOP/s | matmul_t GFLOP/s |");
    println!("|---|---|---:|---:|---:|");
    let mut rng = Rng(1);
    let batch = 2048;
    for ty in [TensorType::F32, TensorType::Q4_1, TensorType::Q4_K] {
        for (rows, cols) in [(576usize, 576usize), (576, 1536), (1536, 576), (49152, 576)] {
            let cols = if ty.block_size() == 256 {
                cols.div_ceil(256) * 256
            } else {
                cols
            };
            let data = quantized_weights(&mut rng, ty, rows, cols);
            let w = view(ty, rows, cols, &data);
            let x = rng.vec(batch * cols);
            let dy = rng.vec(batch * rows);
            let mut y = vec![0f32; batch * rows];
            let mut dx = vec![0f32; batch * cols];
            let flop = 2.0 * (rows * cols * batch) as f64;
            let t = best(&mut [&mut || matmul(&w, &x, batch, &mut y), &mut || {
                matmul_t(&w, &dy, batch, &mut dx)
            }]);
            let (tf, tb) = (t[0], t[1]);
            println!(
                "| {ty} | {rows}x{cols} | {batch} | {:.1} | {:.1} |",
                flop / tf / 1e9,
                flop / tb / 1e9
            );
        }
    }
    println!("| matmul_at_b n | p | q | GFLOP/s |");
    println!("|---|---|---|---:|");
    for (n, p, q) in [
        (2048usize, 1536usize, 16usize),
        (2048, 16, 576),
        (8192, 576, 8),
        (8192, 8, 1536),
        (2048, 576, 576),
    ] {
        let a = rng.vec(n * p);
        let b = rng.vec(n * q);
        let mut c = vec![0f32; p * q];
        let t = best(&mut [&mut || matmul_at_b(&a, &b, n, p, q, &mut c)])[0];
        println!(
            "| {n} | {p} | {q} | {:.1} |",
            2.0 * (n * p * q) as f64 / t / 1e9
        );
    }
}

/// This thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), where that clock is known to exist.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn thread_cpu_seconds() -> Option<f64> {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `clock_gettime` writes one `struct timespec` (two 64-bit fields on 64-bit
    // Linux) to the pointer it is given.
    let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then_some(ts.sec as f64 + ts.nsec as f64 * 1e-9)
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn thread_cpu_seconds() -> Option<f64> {
    None
}
