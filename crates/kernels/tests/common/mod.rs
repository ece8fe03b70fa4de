//! Helpers shared by the kernel test binaries (`mod common;` in each). Cargo builds only
//! the files directly in `tests/` as test binaries, so this module is compiled into each
//! binary that declares it; not every binary uses every helper, hence `dead_code`.
#![allow(dead_code)]

use verity_kernels::*;

/// xorshift64*: deterministic test data without a rand dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    /// Roughly normal, with the odd outlier like real activations.
    pub fn act(&mut self) -> f32 {
        let v = (0..4).map(|_| self.f32()).sum::<f32>();
        if self.next_u64() % 97 < 1 {
            v * 8.0
        } else {
            v
        }
    }
    /// `n` values uniform in [-1, 1).
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
    /// `n` values, roughly normal (a sum of three uniforms) times `amp`.
    pub fn normal_vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (0..3).map(|_| self.f32()).sum::<f32>() * amp)
            .collect()
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

pub fn f16b(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}

pub const WEIGHT_TYPES: [TensorType; 16] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::BF16,
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

/// Byte ranges of a block of `ty` that hold its float scales (the rest is quant bits).
pub fn scale_ranges(ty: TensorType) -> &'static [(usize, usize)] {
    use TensorType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | IQ4_XS => &[(0, 2)],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[(0, 4)],
        Q6_K => &[(208, 210)],
        Q2_K => &[(80, 84)],
        Q3_K => &[(108, 110)],
        MXFP4 => &[(0, 1)],
        _ => unreachable!("{ty} has no block scales"),
    }
}

/// A random `rows x cols` weight matrix of type `ty`: `quantize_row` of random data for the
/// float types, else random quant bits with sane scales.
pub fn random_weights(rng: &mut Rng, ty: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    weights(rng, ty, rows, cols, false)
}

/// A random `rows x cols` weight matrix of type `ty`: `quantize_row` of random data where
/// there is a quantizer, else random quant bits with sane scales (K-quants).
pub fn quantized_weights(rng: &mut Rng, ty: TensorType, rows: usize, cols: usize) -> Vec<u8> {
    weights(rng, ty, rows, cols, true)
}

/// [`random_weights`] and [`quantized_weights`]: `quantize_legacy` picks `quantize_row`
/// for the 32-element block types instead of random bits (the random-bits variant also
/// draws a min for every block, used by the types that have one).
fn weights(
    rng: &mut Rng,
    ty: TensorType,
    rows: usize,
    cols: usize,
    quantize_legacy: bool,
) -> Vec<u8> {
    use TensorType::*;
    let n = rows * cols;
    let quantize = match ty {
        F32 | F16 | BF16 => true,
        Q4_K | Q5_K | Q6_K | Q2_K | Q3_K | IQ4_NL | IQ4_XS => false,
        _ => quantize_legacy,
    };
    if quantize {
        let src: Vec<f32> = (0..n).map(|_| rng.f32() * 0.1).collect();
        let mut out = Vec::new();
        quantize_row(ty, &src, &mut out).unwrap();
        return out;
    }
    let bb = ty.block_bytes();
    let mut data = rng.bytes(n / ty.block_size() * bb);
    for b in data.chunks_exact_mut(bb) {
        let d = 0.002 + 0.01 * rng.f32().abs();
        let m = if quantize_legacy {
            0.0
        } else {
            -0.05 * rng.f32().abs()
        };
        match ty {
            Q4_0 | Q5_0 | Q8_0 => b[0..2].copy_from_slice(&f16b(d)),
            Q4_1 | Q5_1 => {
                b[0..2].copy_from_slice(&f16b(d));
                b[2..4].copy_from_slice(&f16b(m));
            }
            Q4_K | Q5_K => {
                b[0..2].copy_from_slice(&f16b(d * 0.1));
                b[2..4].copy_from_slice(&f16b(d * 0.05));
            }
            Q6_K => b[208..210].copy_from_slice(&f16b(d * 0.05 * rng.f32().signum())),
            Q2_K => {
                b[80..82].copy_from_slice(&f16b(d * 0.2));
                b[82..84].copy_from_slice(&f16b(d * 0.1));
            }
            Q3_K => b[108..110].copy_from_slice(&f16b(d * 0.05 * rng.f32().signum())),
            IQ4_NL => b[0..2].copy_from_slice(&f16b(d * 0.05)),
            IQ4_XS => b[0..2].copy_from_slice(&f16b(d * 0.005 * rng.f32().signum())),
            // 2^-10 .. 2^-5: E2M1 values (<= 12 doubled) near the others' magnitudes.
            MXFP4 => b[0] = 118 + (rng.next_u64() % 6) as u8,
            _ => unreachable!(),
        }
    }
    data
}

/// A weight matrix over `data`.
pub fn view(ty: TensorType, rows: usize, cols: usize, data: &[u8]) -> WeightView<'_> {
    WeightView {
        ty,
        rows,
        cols,
        data,
    }
}

/// Every level this CPU runs, scalar first.
pub fn levels() -> Vec<SimdLevel> {
    [
        SimdLevel::Scalar,
        SimdLevel::Avx2,
        SimdLevel::Avx512,
        SimdLevel::Neon,
    ]
    .into_iter()
    .filter(|&l| level_supported(l))
    .collect()
}

/// Every SIMD level this CPU runs (all of [`levels`] but scalar).
pub fn simd_levels() -> Vec<SimdLevel> {
    levels()
        .into_iter()
        .filter(|&l| l != SimdLevel::Scalar)
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs this test binary's test `test` alone in a child process with `env` set to
/// `threads` (the pool is sized once per process) and returns the rest of the first line
/// it printed that starts with `prefix`.
pub fn child_output(test: &str, env: &str, threads: usize, prefix: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    // Cross-compiled test binaries run under an emulator (scripts/test sets cargo's runner,
    // e.g. qemu-aarch64-static); the child must go through it too.
    let runner = std::env::var(format!(
        "CARGO_TARGET_{}_UNKNOWN_LINUX_GNU_RUNNER",
        std::env::consts::ARCH.to_uppercase()
    ))
    .ok();
    let mut cmd = match runner.as_deref().map(str::split_whitespace) {
        Some(mut parts) => {
            let mut c = std::process::Command::new(parts.next().expect("a runner command"));
            c.args(parts).arg(exe);
            c
        }
        None => std::process::Command::new(exe),
    };
    let out = cmd
        .args(["--exact", test, "--nocapture"])
        .env(env, threads.to_string())
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child with {threads} threads failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line from the {threads}-thread child: {stdout}"))
        .to_string()
}
