//! Kernel micro-benchmarks (no external harness: plain timing, best of several runs).
//!
//!     cargo bench -p verity-kernels                 # all
//!     cargo bench -p verity-kernels -- q4_k         # names containing "q4_k"
//!     VERITY_SIMD=avx2 cargo bench -p verity-kernels
//!
//! Reports GFLOP/s (2 x multiply-adds) and weight GB/s for matrix-vector (batch 1, what
//! generation does) and matrix-matrix (batch 64, what prompt processing does) products of
//! a 2048 x 2048 weight matrix, and the attention kernel at 512 positions.
use std::time::Instant;
use verity_kernels::attention::{attention_f16, AttnShape};
use verity_kernels::{matmul, quantize_row, simd_level, TensorType, WeightView};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn f16b(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

fn weights(rng: &mut Rng, ty: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    use TensorType::*;
    let n = rows * cols;
    if matches!(ty, F32 | F16 | BF16 | Q8_0 | Q4_1 | MXFP4) {
        let src: Vec<f32> = (0..n).map(|_| rng.f32() * 0.1).collect();
        let mut out = Vec::new();
        quantize_row(ty, &src, &mut out).unwrap();
        return out;
    }
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..n / ty.block_size() * bb)
        .map(|_| rng.next() as u8)
        .collect();
    for b in data.chunks_exact_mut(bb) {
        match ty {
            Q4_K | Q5_K => {
                b[0..2].copy_from_slice(&f16b(0.001));
                b[2..4].copy_from_slice(&f16b(0.0005));
            }
            Q6_K => b[208..210].copy_from_slice(&f16b(0.0005)),
            Q2_K => {
                b[80..82].copy_from_slice(&f16b(0.001));
                b[82..84].copy_from_slice(&f16b(0.0005));
            }
            Q3_K => b[108..110].copy_from_slice(&f16b(0.0005)),
            _ => b[0..2].copy_from_slice(&f16b(0.01)),
        }
    }
    data
}

/// `bytes` copied into anonymous memory advised for huge pages, as the engine holds
/// weights (`verity_formats::Residency::Compute`): with 4 KiB pages a product that
/// streams from memory measures the TLB more than the kernel.
fn on_huge_pages(bytes: &[u8]) -> memmap2::MmapMut {
    let mut map = memmap2::MmapMut::map_anon(bytes.len().max(1)).expect("anonymous map");
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    map[..bytes.len()].copy_from_slice(bytes);
    map
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Times `matmul` of `w` with `batch` random rows (best of `runs`) and prints a table row.
fn time_matmul(name: &str, w: &WeightView, batch: usize, runs: usize, rng: &mut Rng) {
    let (rows, cols) = (w.rows, w.cols);
    let x: Vec<f32> = (0..batch * cols).map(|_| rng.f32()).collect();
    let mut y = vec![0f32; batch * rows];
    let t = best_of(runs, || matmul(w, &x, batch, &mut y));
    println!(
        "| {name} | {rows}x{cols}, batch {batch} | {:.2} us | {:.1} | {:.1} |",
        t * 1e6,
        2.0 * (rows * cols * batch) as f64 / t / 1e9,
        w.data.len() as f64 / t / 1e9
    );
}

/// [`time_matmul`] on fresh random weights of one shape.
fn time_random(
    name: &str,
    ty: TensorType,
    rows: usize,
    cols: usize,
    batch: usize,
    runs: usize,
    rng: &mut Rng,
) {
    let data = on_huge_pages(&weights(rng, ty, rows, cols));
    let w = WeightView {
        ty,
        rows,
        cols,
        data: &data,
    };
    time_matmul(name, &w, batch, runs, rng);
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    println!(
        "simd: {:?}, threads: {}",
        simd_level(),
        verity_pool::num_threads()
    );
    println!("| kernel | shape | time | GFLOP/s | weight GB/s |");
    println!("|---|---|---:|---:|---:|");
    let mut rng = Rng(0x1234_5678);
    let (rows, cols) = (2048, 2048);
    for ty in [
        TensorType::Q4_1,
        TensorType::Q8_0,
        TensorType::Q4_0,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q4_K,
        TensorType::Q6_K,
        TensorType::Q2_K,
        TensorType::Q3_K,
        TensorType::IQ4_NL,
        TensorType::IQ4_XS,
        TensorType::MXFP4,
        TensorType::F16,
        TensorType::BF16,
    ] {
        let data = weights(&mut rng, ty, rows, cols);
        let w = WeightView {
            ty,
            rows,
            cols,
            data: &data,
        };
        for batch in [1usize, 64] {
            let name = format!("matmul_{}_b{batch}", ty.to_string().to_lowercase());
            if want(&name) {
                let runs = if batch == 1 { 200 } else { 5 };
                time_matmul(&name, &w, batch, runs, &mut rng);
            }
        }
    }
    // A 1B model's FFN down projection (8192 columns) at a prompt batch: a panel of 16 rows
    // is 128 KiB, four times the L1 cache, so this shows what the inner dimension costs. At
    // a full prompt batch (512) the activations (1 or 4 MiB) no longer fit in L2.
    let shapes = [(8192usize, 64usize), (8192, 512), (2048, 512)];
    for (ty, (cols, batch)) in [TensorType::IQ4_XS, TensorType::Q4_K, TensorType::Q6_K]
        .into_iter()
        .flat_map(|ty| shapes.map(|s| (ty, s)))
    {
        let rows = 2048usize;
        let name = format!(
            "matmul_{}_b{batch}_{rows}x{cols}",
            ty.to_string().to_lowercase()
        );
        if !want(&name) {
            continue;
        }
        time_random(&name, ty, rows, cols, batch, 5, &mut rng);
    }
    // Small matrices, batch 1 (SmolLM2-135M: hidden 576, FFN 1536): per-call overhead.
    for (rows, cols) in [(576usize, 576usize), (1536, 576), (576, 1536)] {
        let ty = TensorType::Q4_1;
        let name = format!("matmul_q4_1_b1_{rows}x{cols}");
        if !want(&name) {
            continue;
        }
        time_random(&name, ty, rows, cols, 1, 2000, &mut rng);
    }
    // Decoding's largest product, a vocabulary projection (151936 x 2048, 150-330 MB): far
    // past every cache, so its weight GB/s is the read rate from memory that decoding gets.
    for ty in [TensorType::Q6_K, TensorType::Q4_K, TensorType::Q8_0] {
        let (rows, cols) = (151_936usize, 2048usize);
        let name = format!("matmul_{}_b1_vocab", ty.to_string().to_lowercase());
        if !want(&name) {
            continue;
        }
        time_random(&name, ty, rows, cols, 1, 10, &mut rng);
    }
    // Attention: 32 query heads over 8 KV heads of 64, one query at position 511 (generation)
    // and 512 queries from 0 (a prompt).
    let shape = AttnShape {
        n_head: 32,
        n_head_kv: 8,
        head_dim: 64,
    };
    let kvd = 8 * 64;
    let ctx = 512;
    let k: Vec<half::f16> = (0..ctx * kvd)
        .map(|_| half::f16::from_f32(rng.f32()))
        .collect();
    let v: Vec<half::f16> = (0..ctx * kvd)
        .map(|_| half::f16::from_f32(rng.f32()))
        .collect();
    for (n, p0) in [(1usize, ctx - 1), (ctx, 0)] {
        let name = format!("attention_f16_n{n}_p{p0}");
        if !want(&name) {
            continue;
        }
        let q: Vec<f32> = (0..n * 32 * 64).map(|_| rng.f32()).collect();
        let mut out = vec![0f32; q.len()];
        let t = best_of(5, || {
            attention_f16(&q, &k, &v, &mut out, n, p0, shape, 0.125)
        });
        // Keys visited: sum over queries of (p0 + t + 1), times 32 heads x 64 x 2 (QK and PV).
        let keys: usize = (0..n).map(|t| p0 + t + 1).sum();
        let flops = 2.0 * 2.0 * (keys * 32 * 64) as f64 / t;
        println!(
            "| {name} | 32/8 heads x 64 | {:.1} us | {:.1} | - |",
            t * 1e6,
            flops / 1e9
        );
    }
}
