//! Kernel tests: SIMD paths against scalar, dequantization against ggml (gguf-py goldens),
//! matmul against a naive f32 reference, batch invariance, quantization round trips.

use verity_kernels::*;

// ---------------------------------------------------------------- helpers

mod common;
use common::*;

fn shapes(ty: TensorType) -> &'static [usize] {
    match ty.block_size() {
        1 => &[8, 32, 70, 256, 1000],
        32 => &[32, 96, 256, 1024],
        _ => &[256, 512, 1536],
    }
}

// ---------------------------------------------------------------- SIMD == scalar

#[test]
fn simd_paths_match_scalar_bit_for_bit() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let levels = simd_levels();
    eprintln!(
        "best level: {:?}; testing {:?} against scalar",
        best_simd_level(),
        levels
    );
    for ty in WEIGHT_TYPES {
        for &cols in shapes(ty) {
            let rows = 13;
            let batch = 3;
            let data = random_weights(&mut rng, ty, rows, cols);
            let w = WeightView {
                ty,
                rows,
                cols,
                data: &data,
            };
            let x: Vec<f32> = (0..batch * cols).map(|_| rng.act()).collect();
            let mut want = vec![0f32; batch * rows];
            matmul_with(SimdLevel::Scalar, &w, &x, batch, &mut want);
            for &level in &levels {
                let mut got = vec![0f32; batch * rows];
                matmul_with(level, &w, &x, batch, &mut got);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{ty} cols={cols} {level:?} element {i}: {g} vs scalar {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn simd_dot_handles_extreme_quants() {
    // All-max and all-min quant bits (e.g. Q8_0 weights of -128) must not saturate.
    let levels = simd_levels();
    for ty in WEIGHT_TYPES.into_iter().filter(|t| t.is_quantized()) {
        let cols = 512;
        for fill in [0x00u8, 0xFF, 0x80, 0x7F] {
            let mut rng = Rng(fill as u64 + 7);
            let mut data = random_weights(&mut rng, ty, 1, cols);
            // Overwrite everything but the scale fields with `fill`.
            let bb = ty.block_bytes();
            let scale_ranges = scale_ranges(ty);
            for b in data.chunks_exact_mut(bb) {
                for (i, v) in b.iter_mut().enumerate() {
                    if !scale_ranges.iter().any(|&(s, e)| i >= s && i < e) {
                        *v = fill;
                    }
                }
            }
            for sign in [1.0f32, -1.0] {
                let x: Vec<f32> = (0..cols).map(|i| sign * (1.0 + (i % 3) as f32)).collect();
                let want = dot_with(SimdLevel::Scalar, ty, &data, &x);
                for &level in &levels {
                    let got = dot_with(level, ty, &data, &x);
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{ty} fill={fill:#x} {level:?}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- matmul vs naive reference

fn naive(w: &WeightView, x: &[f32], batch: usize) -> Vec<f64> {
    let mut row = vec![0f32; w.cols];
    let mut y = vec![0f64; batch * w.rows];
    for r in 0..w.rows {
        get_row(w, r, &mut row);
        for b in 0..batch {
            let xb = &x[b * w.cols..(b + 1) * w.cols];
            y[b * w.rows + r] = row.iter().zip(xb).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    }
    y
}

#[test]
fn matmul_matches_dequantized_reference() {
    let mut rng = Rng(42);
    for ty in WEIGHT_TYPES {
        let (rows, cols, batch) = (37, 512, 5);
        let data = random_weights(&mut rng, ty, rows, cols);
        let w = WeightView {
            ty,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..batch * cols).map(|_| rng.act()).collect();
        let want = naive(&w, &x, batch);
        let mut row = vec![0f32; cols];
        let mut got = vec![0f32; batch * rows];
        matmul(&w, &x, batch, &mut got);
        // Activation quantization error is bounded by ~|w| |x| / 127 (8-bit) or 2^-8 (bf16).
        let tol_rel = match ty {
            TensorType::F32 => 1e-5,
            TensorType::F16 => 2e-3,
            _ => 1e-2,
        };
        for r in 0..rows {
            get_row(&w, r, &mut row);
            let wn = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            for b in 0..batch {
                let xn = x[b * cols..(b + 1) * cols]
                    .iter()
                    .map(|&v| (v as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let (g, e) = (got[b * rows + r] as f64, want[b * rows + r]);
                assert!(
                    (g - e).abs() <= tol_rel * wn * xn + 1e-6,
                    "{ty} row {r} batch {b}: {g} vs {e} (|w| {wn}, |x| {xn})"
                );
            }
        }
    }
}

#[test]
fn matmul_equals_exact_dot_of_quantized_operands() {
    // With the activations quantized the way matmul does, the only remaining error is
    // float rounding: this pins down the integer kernels (bit layouts, scales, mins).
    let mut rng = Rng(11);
    for ty in WEIGHT_TYPES {
        let (rows, cols) = (19, 768);
        let data = random_weights(&mut rng, ty, rows, cols);
        let w = WeightView {
            ty,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..cols).map(|_| rng.act()).collect();
        let mut q = Vec::new();
        quantize_activation_row(vec_dot_type(ty), &x, &mut q).unwrap();
        let mut xq = vec![0f32; cols];
        dequantize_row(vec_dot_type(ty), &q, &mut xq);
        let mut y = vec![0f32; rows];
        matmul(&w, &x, 1, &mut y);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            get_row(&w, r, &mut row);
            let mut e: f64 = row
                .iter()
                .zip(&xq)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            if matches!(ty, TensorType::Q4_1 | TensorType::Q5_1) {
                // ggml folds the weight minimum in through the activation's f16 `s = d*sum(q)`,
                // which is rounded: use it instead of the exact sum.
                let rb = ty.row_bytes(cols).unwrap();
                let wb = &data[r * rb..(r + 1) * rb];
                for (ib, (b, xb)) in wb.chunks(ty.block_bytes()).zip(q.chunks(36)).enumerate() {
                    let m = half::f16::from_le_bytes([b[2], b[3]]).to_f32() as f64;
                    let s = half::f16::from_le_bytes([xb[2], xb[3]]).to_f32() as f64;
                    let exact: f64 = xq[32 * ib..32 * ib + 32].iter().map(|&v| v as f64).sum();
                    e += m * (s - exact);
                }
            }
            let mag: f64 = row
                .iter()
                .zip(&xq)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            assert!(
                (y[r] as f64 - e).abs() <= 1e-5 * mag + 1e-7,
                "{ty} row {r}: {} vs exact {e} (magnitude {mag})",
                y[r]
            );
        }
    }
}

#[test]
fn matmul_is_batch_invariant() {
    let mut rng = Rng(7);
    for ty in WEIGHT_TYPES {
        let (rows, cols, batch) = (70, 256, 19);
        let data = random_weights(&mut rng, ty, rows, cols);
        let w = WeightView {
            ty,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..batch * cols).map(|_| rng.act()).collect();
        for level in levels() {
            let mut all = vec![0f32; batch * rows];
            matmul_with(level, &w, &x, batch, &mut all);
            for b in 0..batch {
                let mut one = vec![0f32; rows];
                matmul_with(level, &w, &x[b * cols..(b + 1) * cols], 1, &mut one);
                for r in 0..rows {
                    assert_eq!(
                        one[r].to_bits(),
                        all[b * rows + r].to_bits(),
                        "{ty} {level:?} row {r} batch item {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_handles_large_rows_in_parallel() {
    // More rows than one task takes, so several rayon tasks and partial blocks run.
    let mut rng = Rng(99);
    let ty = TensorType::Q4_K;
    let (rows, cols) = (1000, 256);
    let data = random_weights(&mut rng, ty, rows, cols);
    let w = WeightView {
        ty,
        rows,
        cols,
        data: &data,
    };
    let x: Vec<f32> = (0..2 * cols).map(|_| rng.act()).collect();
    let mut y2 = vec![0f32; 2 * rows];
    matmul(&w, &x, 2, &mut y2);
    let mut y1 = vec![0f32; rows];
    matmul(&w, &x[cols..], 1, &mut y1);
    assert_eq!(&y2[rows..], &y1[..]);
    for r in [0, 499, 999] {
        let d = dot_with(
            SimdLevel::Scalar,
            ty,
            &data[r * 144..(r + 1) * 144],
            &x[cols..],
        );
        assert_eq!(d.to_bits(), y1[r].to_bits());
    }
}

// ---------------------------------------------------------------- goldens from gguf-py

struct Case {
    ty: TensorType,
    n: usize,
    src: Vec<f32>,
    bytes: Vec<u8>,
    f32s: Vec<f32>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\": ");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in golden line"))
        + pat.len();
    let rest = &line[start..];
    if let Some(stripped) = rest.strip_prefix('"') {
        &stripped[..stripped.find('"').unwrap()]
    } else {
        let end = rest.find([',', '}']).unwrap();
        rest[..end].trim()
    }
}

fn type_by_name(name: &str) -> TensorType {
    (0..64)
        .filter_map(|id| TensorType::from_ggml_id(id).ok())
        .find(|t| t.name() == name)
        .unwrap_or_else(|| panic!("unknown type {name}"))
}

fn goldens() -> Vec<Case> {
    let text = include_str!("data/quant-goldens.json");
    let floats = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    text.lines()
        .filter(|l| l.starts_with("{\"type\""))
        .map(|l| Case {
            ty: type_by_name(field(l, "type")),
            n: field(l, "n").parse().unwrap(),
            src: floats(hex(field(l, "src"))),
            bytes: hex(field(l, "bytes")),
            f32s: floats(hex(field(l, "f32"))),
        })
        .collect()
}

#[test]
fn dequantize_matches_ggml_goldens() {
    let cases = goldens();
    assert!(
        cases.len() >= 10,
        "expected goldens for every type, got {}",
        cases.len()
    );
    for c in &cases {
        assert_eq!(c.f32s.len(), c.n);
        let mut out = vec![0f32; c.n];
        dequantize_row(c.ty, &c.bytes, &mut out);
        for (i, (g, e)) in out.iter().zip(&c.f32s).enumerate() {
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{} element {i}: {g} vs ggml {e}",
                c.ty
            );
        }
    }
}

#[test]
fn quantize_matches_ggml_goldens() {
    for c in goldens().iter().filter(|c| !c.src.is_empty()) {
        let mut out = Vec::new();
        quantize_row(c.ty, &c.src, &mut out).unwrap();
        assert_eq!(out, c.bytes, "{} quantization differs from gguf-py", c.ty);
    }
}

// ---------------------------------------------------------------- quantization round trips

#[test]
fn q8_0_round_trip_within_one_step() {
    let mut rng = Rng(3);
    let mut x: Vec<f32> = (0..32 * 64).map(|_| rng.act()).collect();
    x[..32].fill(0.0); // an all-zero block
    for (quantize, name) in [
        (
            quantize_row as fn(TensorType, &[f32], &mut Vec<u8>) -> Result<(), String>,
            "ref",
        ),
        (quantize_activation_row, "activation"),
    ] {
        let mut q = Vec::new();
        quantize(TensorType::Q8_0, &x, &mut q).unwrap();
        assert_eq!(q.len(), 64 * 34);
        let mut back = vec![0f32; x.len()];
        dequantize_row(TensorType::Q8_0, &q, &mut back);
        for (xb, bb) in x.chunks(32).zip(back.chunks(32)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(bb) {
                assert!(
                    (a - b).abs() <= amax / 127.0,
                    "{name}: {a} -> {b} (amax {amax})"
                );
            }
        }
    }
}

#[test]
fn q8_1_and_q8_k_round_trip() {
    let mut rng = Rng(5);
    let x: Vec<f32> = (0..256 * 4).map(|_| rng.act()).collect();
    for ty in [TensorType::Q8_1, TensorType::Q8_K] {
        let mut q = Vec::new();
        quantize_row(ty, &x, &mut q).unwrap();
        let mut back = vec![0f32; x.len()];
        dequantize_row(ty, &q, &mut back);
        let bs = ty.block_size();
        for (xb, bb) in x.chunks(bs).zip(back.chunks(bs)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (a, b) in xb.iter().zip(bb) {
                assert!(
                    (a - b).abs() <= amax / 127.0,
                    "{ty}: {a} -> {b} (amax {amax})"
                );
            }
        }
    }
    // Q8_K block sums and Q8_1's s field are consistent with the quants.
    let mut q = Vec::new();
    quantize_row(TensorType::Q8_K, &x, &mut q).unwrap();
    for b in q.chunks(292) {
        for g in 0..16 {
            let s: i32 = b[4 + 16 * g..4 + 16 * g + 16]
                .iter()
                .map(|&v| v as i8 as i32)
                .sum();
            let stored = i16::from_le_bytes([b[260 + 2 * g], b[261 + 2 * g]]) as i32;
            assert_eq!(s, stored);
        }
    }
    let mut q = Vec::new();
    quantize_activation_row(TensorType::Q8_1, &x, &mut q).unwrap();
    for b in q.chunks(36) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let s = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
        let sum: i32 = b[4..].iter().map(|&v| v as i8 as i32).sum();
        // s = f16(d * sum) with the unrounded d; d itself was rounded to f16 on store.
        let e = d * sum as f32;
        assert!((s - e).abs() <= e.abs() * 2e-3 + 1e-6, "s {s} vs d*sum {e}");
    }
}

#[test]
fn quantize_row_rejects_unsupported() {
    let x = vec![0f32; 256];
    assert!(quantize_row(TensorType::Q4_K, &x, &mut Vec::new()).is_err());
    assert!(quantize_row(TensorType::Q8_0, &x[..20], &mut Vec::new()).is_err());
}

#[test]
fn simd_level_is_supported_and_parses() {
    assert!(level_supported(simd_level()));
    assert!(level_supported(SimdLevel::Scalar));
    assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
    assert_eq!(SimdLevel::parse("scalar"), Some(SimdLevel::Scalar));
    assert_eq!(SimdLevel::parse("bogus"), None);
    // Asking for a level the CPU lacks must fall back, not crash.
    let data = vec![0u8; 34];
    let w = WeightView {
        ty: TensorType::Q8_0,
        rows: 1,
        cols: 32,
        data: &data,
    };
    let mut y = [1f32];
    for level in [SimdLevel::Neon, SimdLevel::Avx512, SimdLevel::Avx2] {
        matmul_with(level, &w, &[1.0; 32], 1, &mut y);
        assert_eq!(y[0], 0.0);
    }
}

/// Rough throughput check: `cargo test -p verity-kernels --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_matmul() {
    let mut rng = Rng(1);
    let (rows, cols) = (4096, 4096);
    for ty in [
        TensorType::Q4_0,
        TensorType::Q8_0,
        TensorType::Q4_K,
        TensorType::Q6_K,
        TensorType::Q3_K,
        TensorType::IQ4_XS,
        TensorType::F16,
    ] {
        let data = random_weights(&mut rng, ty, rows, cols);
        let w = WeightView {
            ty,
            rows,
            cols,
            data: &data,
        };
        for batch in [1usize, 16] {
            let x: Vec<f32> = (0..batch * cols).map(|_| rng.act()).collect();
            let mut y = vec![0f32; batch * rows];
            for level in [SimdLevel::Scalar, simd_level()] {
                matmul_with(level, &w, &x, batch, &mut y);
                let iters = if level == SimdLevel::Scalar { 2 } else { 10 };
                let t = std::time::Instant::now();
                for _ in 0..iters {
                    matmul_with(level, &w, &x, batch, &mut y);
                }
                let s = t.elapsed().as_secs_f64() / iters as f64;
                eprintln!(
                    "{ty} batch {batch:2} {level:?}: {:.2} ms, {:.1} GFLOP/s",
                    s * 1e3,
                    2.0 * (rows * cols * batch) as f64 / s / 1e9
                );
            }
        }
    }
}

/// Products sharing one input in one region give what each gives alone.
#[test]
fn matvec_many_matches_matmul_bit_for_bit() {
    let mut rng = Rng(77);
    let cols = 512;
    let x: Vec<f32> = (0..cols).map(|_| rng.act()).collect();
    // Mixed types (two vec-dot types), and row counts from one task to many.
    let mats: Vec<(TensorType, usize, Vec<u8>)> = [
        (TensorType::Q4_K, 1000),
        (TensorType::Q6_K, 70),
        (TensorType::Q8_0, 33),
        (TensorType::F16, 300),
        (TensorType::IQ4_XS, 5),
    ]
    .into_iter()
    .map(|(ty, rows)| (ty, rows, random_weights(&mut rng, ty, rows, cols)))
    .collect();
    let views: Vec<WeightView> = mats
        .iter()
        .map(|(ty, rows, data)| WeightView {
            ty: *ty,
            rows: *rows,
            cols,
            data,
        })
        .collect();
    let mut got: Vec<Vec<f32>> = views.iter().map(|w| vec![f32::NAN; w.rows]).collect();
    let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|g| &mut g[..]).collect();
    matvec_many(&views, &x, &mut outs);
    for (w, got) in views.iter().zip(&got) {
        let mut want = vec![0f32; w.rows];
        matmul(w, &x, 1, &mut want);
        for (r, (a, b)) in want.iter().zip(got).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{} row {r}", w.ty);
        }
    }
}

#[test]
fn batched_matmul_matches_scalar_bit_for_bit() {
    // Batches big enough for the tiled matrix-matrix kernel (whole 16-row panels, a
    // remainder of rows, and batch sizes that leave a remainder of activation rows).
    let mut rng = Rng(2024);
    for ty in WEIGHT_TYPES {
        // Float types: 1000 columns leaves a tail of 8 after the 32-lane loop.
        let cols = if ty.block_size() == 1 { 1000 } else { 512 };
        // 8 activation rows go through the panel together: 19 is two such groups and 3.
        // 8192 columns make passes of 4 panels: 165 rows are tasks of 4, 4 and 2 panels
        // and a remainder of 5 rows.
        let shapes = [(70, 13, cols), (32, 4, cols), (48, 9, cols), (40, 19, cols)];
        for (rows, batch, cols) in shapes.into_iter().chain([(165, 11, 8192)]) {
            let data = random_weights(&mut rng, ty, rows, cols);
            let w = WeightView {
                ty,
                rows,
                cols,
                data: &data,
            };
            let x: Vec<f32> = (0..batch * cols).map(|_| rng.act()).collect();
            let mut want = vec![0f32; batch * rows];
            matmul_with(SimdLevel::Scalar, &w, &x, batch, &mut want);
            for level in simd_levels() {
                let mut got = vec![0f32; batch * rows];
                matmul_with(level, &w, &x, batch, &mut got);
                for i in 0..batch * rows {
                    assert_eq!(
                        want[i].to_bits(),
                        got[i].to_bits(),
                        "{ty} {level:?} rows {rows} batch {batch} index {i}"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- attention

/// The engine's attention (crates/engine/src/forward.rs), verbatim in its numerics.
#[allow(clippy::too_many_arguments)]
fn engine_attention(
    q: &[f32],
    kc: &[half::f16],
    vc: &[half::f16],
    out: &mut [f32],
    _n: usize,
    p0: usize,
    n_head: usize,
    n_head_kv: usize,
    hd: usize,
) {
    use half::f16;
    let kvd = n_head_kv * hd;
    let group = n_head / n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    for (i, o) in out.chunks_mut(hd).enumerate() {
        let (t, h) = (i / n_head, i % n_head);
        let kvh = h / group;
        let n_keys = p0 + t + 1;
        let qv: Vec<f32> = q[t * n_head * hd + h * hd..][..hd]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        let mut scores = vec![0f32; n_keys];
        for (j, s) in scores.iter_mut().enumerate() {
            let row: Vec<f32> = kc[j * kvd + kvh * hd..][..hd]
                .iter()
                .map(|x| x.to_f32())
                .collect();
            let mut acc = [0f32; 8];
            let chunks = hd / 8;
            for c in 0..chunks {
                for k in 0..8 {
                    acc[k] += qv[c * 8 + k] * row[c * 8 + k];
                }
            }
            let mut d: f32 = acc.iter().sum();
            for i in chunks * 8..hd {
                d += qv[i] * row[i];
            }
            *s = d * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum = verity_kernels::activation::exp_sum_with(SimdLevel::Scalar, &mut scores, max, 0);
        let inv = (1.0 / sum) as f32;
        for v in scores.iter_mut() {
            *v *= inv;
        }
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let p = f16::from_f32(p).to_f32();
            for (a, b) in o.iter_mut().zip(&vc[j * kvd + kvh * hd..][..hd]) {
                *a += p * b.to_f32();
            }
        }
    }
}

#[test]
fn attention_matches_engine_reference_bit_for_bit() {
    use verity_kernels::attention::{attention_f16_with, AttnShape};
    let mut rng = Rng(31);
    for (n_head, n_head_kv, hd, p0, n) in [
        (8, 2, 64, 0, 5),
        (4, 4, 20, 7, 3),
        (6, 2, 128, 33, 1),
        (9, 3, 64, 21, 4),
        // Several blocks of 8 keys and their tails, groups of 8 and 9, heads of 256 and 32.
        (16, 2, 256, 40, 2),
        (8, 1, 32, 50, 3),
        (9, 1, 64, 17, 2),
        // The AVX-512 weighted sum's column blocks: 4 heads of 128 (two blocks of 64) and
        // 2 heads of 112 (blocks of 64, 32 and 16 columns).
        (8, 2, 128, 70, 2),
        (2, 1, 112, 30, 1),
    ] {
        let kvd = n_head_kv * hd;
        let ctx = p0 + n;
        let k: Vec<half::f16> = (0..ctx * kvd)
            .map(|_| half::f16::from_f32(rng.act()))
            .collect();
        let v: Vec<half::f16> = (0..ctx * kvd)
            .map(|_| half::f16::from_f32(rng.act()))
            .collect();
        let q: Vec<f32> = (0..n * n_head * hd).map(|_| rng.act() * 3.0).collect();
        let mut want = vec![0f32; n * n_head * hd];
        engine_attention(&q, &k, &v, &mut want, n, p0, n_head, n_head_kv, hd);
        let shape = AttnShape {
            n_head,
            n_head_kv,
            head_dim: hd,
        };
        for level in levels() {
            let mut got = vec![0f32; want.len()];
            let scale = 1.0 / (hd as f32).sqrt();
            attention_f16_with(level, &q, &k, &v, &mut got, n, p0, shape, scale);
            for i in 0..want.len() {
                assert_eq!(
                    want[i].to_bits(),
                    got[i].to_bits(),
                    "{level:?} {n_head}/{n_head_kv}x{hd} at {i}"
                );
            }
        }
    }
}

#[test]
fn attention_over_several_sequences_equals_each_alone() {
    use verity_kernels::attention::{
        attention_f16_seqs_with, attention_f16_with, AttnSeq, AttnShape,
    };
    let mut rng = Rng(77);
    let shape = AttnShape {
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
    };
    let (qd, kvd) = (9 * 64, 3 * 64);
    let scale = 0.125;
    // (p0, n): one-token decodes at different depths and a prompt chunk, as a server batch.
    let parts = [(0, 1), (17, 1), (5, 6), (40, 1), (0, 3)];
    let caches: Vec<(Vec<half::f16>, Vec<half::f16>)> = parts
        .iter()
        .map(|&(p0, n)| {
            let mut kv = || -> Vec<half::f16> {
                (0..(p0 + n) * kvd)
                    .map(|_| half::f16::from_f32(rng.act()))
                    .collect()
            };
            (kv(), kv())
        })
        .collect();
    let qs: Vec<Vec<f32>> = parts
        .iter()
        .map(|&(_, n)| (0..n * qd).map(|_| rng.act() * 3.0).collect())
        .collect();
    for level in levels() {
        let mut outs: Vec<Vec<f32>> = parts.iter().map(|&(_, n)| vec![0f32; n * qd]).collect();
        let mut seqs: Vec<AttnSeq> = outs
            .iter_mut()
            .zip(&parts)
            .zip(qs.iter().zip(&caches))
            .map(|((out, &(p0, n)), (q, (k, v)))| AttnSeq {
                q,
                k,
                v,
                out,
                n,
                p0,
            })
            .collect();
        attention_f16_seqs_with(level, &mut seqs, shape, scale, 0, None);
        drop(seqs);
        for (s, &(p0, n)) in parts.iter().enumerate() {
            let mut alone = vec![0f32; n * qd];
            let (k, v) = &caches[s];
            attention_f16_with(level, &qs[s], k, v, &mut alone, n, p0, shape, scale);
            let same = alone
                .iter()
                .zip(&outs[s])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{level:?}: sequence {s} differs when batched");
        }
    }
}

/// The f32-cache attention: within 1e-6 of an f64 computation of the same formula, and
/// each sequence's output bit-identical whether it is computed alone or with others.
#[test]
fn f32_attention_matches_f64_and_is_batch_invariant() {
    use verity_kernels::attention::{attention_f32_seqs, AttnSeq, AttnShape};
    let mut rng = Rng(91);
    let shape = AttnShape {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
    };
    let (hd, qd, kvd) = (16, 4 * 16, 2 * 16);
    let scale = 0.25;
    let parts = [(0usize, 1usize), (9, 1), (3, 5)];
    let data: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = parts
        .iter()
        .map(|&(p0, n)| {
            let mut vals = |len: usize| (0..len).map(|_| rng.act()).collect::<Vec<f32>>();
            (vals(n * qd), vals((p0 + n) * kvd), vals((p0 + n) * kvd))
        })
        .collect();
    let run = |which: &[usize]| -> Vec<Vec<f32>> {
        let mut outs: Vec<Vec<f32>> = which.iter().map(|&s| vec![0f32; parts[s].1 * qd]).collect();
        let mut seqs: Vec<AttnSeq<f32>> = outs
            .iter_mut()
            .zip(which)
            .map(|(out, &s)| AttnSeq {
                q: &data[s].0,
                k: &data[s].1,
                v: &data[s].2,
                out,
                n: parts[s].1,
                p0: parts[s].0,
            })
            .collect();
        attention_f32_seqs(&mut seqs, shape, scale);
        drop(seqs);
        outs
    };
    let together = run(&[0, 1, 2]);
    for s in 0..parts.len() {
        let alone = run(&[s]).remove(0);
        assert!(
            alone
                .iter()
                .zip(&together[s])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "sequence {s} differs when batched"
        );
        let (p0, n) = parts[s];
        let (q, k, v) = &data[s];
        for t in 0..n {
            for h in 0..shape.n_head {
                let kvh = h / 2;
                let keys = p0 + t + 1;
                let sc: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..hd)
                            .map(|i| {
                                q[t * qd + h * hd + i] as f64 * k[j * kvd + kvh * hd + i] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..hd {
                    let want: f64 = (0..keys)
                        .map(|j| e[j] / z * v[j * kvd + kvh * hd + i] as f64)
                        .sum();
                    let got = together[s][t * qd + h * hd + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-6,
                        "seq {s} t {t} head {h}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Attention sinks (gpt-oss), windowed and not, on both caches: within rounding of an f64
/// evaluation of `softmax([scores, sink])` without the sink's column, the same bits on
/// every SIMD level, and a sink of -inf changes nothing.
#[test]
fn attention_sinks_match_f64_on_every_level() {
    use verity_kernels::attention::{
        attention_f16_seqs_with, attention_f32_seqs_with, AttnSeq, AttnShape,
    };
    let mut rng = Rng(123);
    let shape = AttnShape {
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
    };
    let (hd, qd, kvd, group) = (32, 4 * 32, 2 * 32, 2);
    let scale = 1.0 / (hd as f32).sqrt();
    let (p0, n) = (6usize, 5usize);
    let q: Vec<f32> = (0..n * qd).map(|_| rng.act() * 3.0).collect();
    let k32: Vec<f32> = (0..(p0 + n) * kvd).map(|_| rng.act()).collect();
    let v32: Vec<f32> = (0..(p0 + n) * kvd).map(|_| rng.act()).collect();
    let k16: Vec<half::f16> = k32.iter().map(|&x| half::f16::from_f32(x)).collect();
    let v16: Vec<half::f16> = v32.iter().map(|&x| half::f16::from_f32(x)).collect();
    let sinks = [1.5f32, -0.5, 3.0, 0.0];
    for window in [0usize, 4] {
        // f64 references over the f16-rounded cache: with the query as it is (the f32 path)
        // and rounded to f16 (the f16 path multiplies by an f16-rounded query, as ggml).
        let reference = |round_q: bool| -> Vec<f64> {
            let qv = |x: f32| {
                if round_q {
                    half::f16::from_f32(x).to_f64()
                } else {
                    x as f64
                }
            };
            let mut want = vec![0f64; n * qd];
            for t in 0..n {
                let end = p0 + t + 1;
                let first = if window > 0 {
                    end.saturating_sub(window)
                } else {
                    0
                };
                for h in 0..4 {
                    let off = (h / group) * hd;
                    let sc: Vec<f64> = (first..end)
                        .map(|j| {
                            (0..hd)
                                .map(|i| {
                                    qv(q[t * qd + h * hd + i]) * k16[j * kvd + off + i].to_f64()
                                })
                                .sum::<f64>()
                                * scale as f64
                        })
                        .collect();
                    let m = sc.iter().copied().fold(sinks[h] as f64, f64::max);
                    let denom: f64 =
                        sc.iter().map(|s| (s - m).exp()).sum::<f64>() + (sinks[h] as f64 - m).exp();
                    for (jj, s) in sc.iter().enumerate() {
                        let p = (s - m).exp() / denom;
                        for i in 0..hd {
                            want[t * qd + h * hd + i] +=
                                p * v16[(first + jj) * kvd + off + i].to_f64();
                        }
                    }
                }
            }
            want
        };
        let (want16, want32) = (reference(true), reference(false));
        let mut first_bits: Option<(Vec<u32>, Vec<u32>)> = None;
        for level in levels() {
            let mut o16 = vec![0f32; n * qd];
            let mut o32 = vec![0f32; n * qd];
            let k16r: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
            let v16r: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
            attention_f16_seqs_with(
                level,
                &mut [AttnSeq {
                    q: &q,
                    k: &k16,
                    v: &v16,
                    out: &mut o16,
                    n,
                    p0,
                }],
                shape,
                scale,
                window,
                Some(&sinks),
            );
            attention_f32_seqs_with(
                level,
                &mut [AttnSeq {
                    q: &q,
                    k: &k16r,
                    v: &v16r,
                    out: &mut o32,
                    n,
                    p0,
                }],
                shape,
                scale,
                window,
                Some(&sinks),
            );
            for i in 0..want32.len() {
                // The f16 path also rounds the probabilities to f16 (relative 2^-11).
                let e16 = (o16[i] as f64 - want16[i]).abs();
                let e32 = (o32[i] as f64 - want32[i]).abs();
                assert!(e16 < 2e-3, "{level:?} f16 at {i}: {e16}");
                assert!(e32 < 1e-5, "{level:?} f32 at {i}: {e32}");
            }
            let bits = (
                o16.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                o32.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            );
            match &first_bits {
                None => first_bits = Some(bits),
                Some(b) => assert!(*b == bits, "{level:?} differs from the first level"),
            }
        }
        // A sink of -inf is no sink.
        let mut plain = vec![0f32; n * qd];
        let mut minus_inf = vec![0f32; n * qd];
        attention_f16_seqs_with(
            SimdLevel::Scalar,
            &mut [AttnSeq {
                q: &q,
                k: &k16,
                v: &v16,
                out: &mut plain,
                n,
                p0,
            }],
            shape,
            scale,
            window,
            None,
        );
        attention_f16_seqs_with(
            SimdLevel::Scalar,
            &mut [AttnSeq {
                q: &q,
                k: &k16,
                v: &v16,
                out: &mut minus_inf,
                n,
                p0,
            }],
            shape,
            scale,
            window,
            Some(&[f32::NEG_INFINITY; 4]),
        );
        assert!(plain == minus_inf);
    }
}
