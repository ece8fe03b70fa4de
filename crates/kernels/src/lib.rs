//! Compute kernels over ggml's tensor formats: dequantization, quantization, dot products
//! and the matrix multiplication that drives inference.
//!
//! # Numerics follow llama.cpp (ggml-cpu)
//!
//! For a quantized weight matrix, ggml does not dequantize weights to f32. It quantizes the
//! *activation* row to the weight type's "vec-dot type" ([`vec_dot_type`]) and computes
//! integer dot products block by block, scaling each block's exact integer sum by the two
//! block scales:
//!
//! | weights | activations |
//! |---------|-------------|
//! | Q4_0, Q5_0, Q8_0 | Q8_0 |
//! | Q4_1, Q5_1 | Q8_1 (stores `s = d * sum(q)` to fold in the weight minimum) |
//! | Q4_K, Q5_K, Q6_K | Q8_K (f32 scale, 256 quants, 16 block sums) |
//! | Q2_K, Q3_K, IQ4_XS | Q8_K |
//! | IQ4_NL, MXFP4 | Q8_0 |
//! | F16 | F16 (activations rounded to f16) |
//! | BF16 | BF16 (activations rounded to bf16) |
//! | F32 | F32 |
//!
//! We do the same, because matching llama.cpp's outputs means reproducing its rounding
//! (the activation quantization error is part of what llama.cpp computes), and because
//! integer dot products are much faster than float ones. Activation rows are quantized once
//! per [`matmul`] call, with the quantizer ggml-cpu uses on x86
//! ([`quantize_activation_row`]); model files use ggml's reference quantizers
//! ([`quantize_row`]).
//!
//! # SIMD paths
//!
//! [`simd_level`] detects the CPU once (AVX-512 → AVX2 → scalar on x86_64, NEON on
//! aarch64); the environment variable `VERITY_SIMD=scalar|avx2|avx512|neon` can pick a
//! lower level (asking for a level the CPU lacks falls back to the best one available).
//!
//! * Scalar: reference implementation of every dot product; always available.
//! * AVX2 (+FMA, F16C): F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K.
//! * AVX-512 (F/BW/VL): the AVX2 kernels, except: 32-element-block dots with `vpdpbusd`
//!   (VNNI), float dots on zmm, a VNNI panel kernel for quantized batches (`gemm`), a
//!   register-tiled kernel for F16/BF16/F32 batches (`gemm_f`), batch-1 Q4_K / Q6_K dots on
//!   zmm (`kquant512`), an AVX-512 Q8_K activation quantizer, and zmm attention.
//! * NEON: dot products for every weight type (`neon`); batches use the row-dot path.
//!
//! The low-bit types (Q2_K, Q3_K, IQ4_NL, IQ4_XS, MXFP4) live in `lowbit` (scalar reference),
//! `lowbit_x86` (AVX2 one-row and four-row dots, VNNI for IQ4_NL / MXFP4 at the AVX-512
//! level), `lowbit512` (batch-1 Q2_K / Q3_K / IQ4_XS on zmm) and `lowbit_neon`; the AVX-512
//! VNNI panel kernel (`gemm`) takes their batches too.
//!
//! Every path computes each block's integer sum exactly and accumulates the float terms in
//! the same order, so **all paths give bit-identical results**. Each output element is a
//! single dot product whose order does not depend on the batch size or on threading, so
//! [`matmul`] is also batch-invariant and deterministic.

pub mod activation;
pub mod attention;
pub mod attention_train;
pub mod backward;
mod blocks;
mod dequant;
mod lowbit;
mod matvec;
mod quant;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod gemm;
#[cfg(target_arch = "x86_64")]
mod gemm_f;
#[cfg(target_arch = "x86_64")]
mod kquant512;
#[cfg(target_arch = "x86_64")]
mod lowbit512;
#[cfg(target_arch = "aarch64")]
mod lowbit_neon;
#[cfg(target_arch = "x86_64")]
mod lowbit_x86;
#[cfg(target_arch = "aarch64")]
mod neon;

use std::sync::OnceLock;

pub use backward::{matmul_at_b, matmul_t};
#[doc(hidden)]
pub use backward::{matmul_at_b_with, matmul_t_with};

pub use matvec::matvec_many;
pub use verity_formats::TensorType;

/// How far ahead of its loads a batch-1 dot product (every weight type, AVX2 and AVX-512)
/// prefetches the weight row. Generation streams all weights once per token, and the
/// hardware prefetcher alone leaves read bandwidth unused. Measured on the 1B shape and
/// SmolLM2, tg64 with 2 threads, distances alternated in one run: 512 B (the previous
/// setting) -> 4096 B gave Q4_K_M 47.5 -> 54-56 t/s, Q8_0 29.5 -> 34.7, F16 17.1 -> 18.7,
/// SmolLM2 Q4_1 259 -> 305-318; 2048, 6144 and 8192 were slower than 4096.
#[cfg(target_arch = "x86_64")]
pub const PREFETCH_BYTES: usize = 4096;

/// Start fetching the first [`PREFETCH_BYTES`] of `bytes` (all of it if shorter), all lines
/// at once. A batch-1 product prefetches ahead of its loads, but the start of each run of
/// rows would otherwise come one demand miss after another; decoding a mixture of experts
/// starts dozens of such runs a layer. No-op off x86-64.
pub fn prefetch_head(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for off in (0..bytes.len().min(PREFETCH_BYTES)).step_by(64) {
        // SAFETY: `off` is inside `bytes`; a prefetch has no architectural effect.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                bytes.as_ptr().add(off) as *const i8,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// Elements per super-block of the K-quants (Q4_K, Q5_K, Q6_K, Q8_K).
pub const QK_K: usize = blocks::QK_K;

/// A weight matrix stored row-major: `rows` rows of `cols` elements each in type `ty`
/// (ggml layout: a row is contiguous, `ty.row_bytes(cols)` bytes).
#[derive(Clone, Copy, Debug)]
pub struct WeightView<'a> {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl WeightView<'_> {
    /// Bytes of one row. Panics if `cols` is not a whole number of blocks.
    pub fn row_bytes(&self) -> usize {
        self.ty.row_bytes(self.cols).unwrap_or_else(|| {
            panic!(
                "{}: {} columns is not a whole number of blocks",
                self.ty, self.cols
            )
        })
    }

    fn check(&self) -> usize {
        let rb = self.row_bytes();
        let want = rb
            .checked_mul(self.rows)
            .expect("weight size overflows usize");
        assert_eq!(
            self.data.len(),
            want,
            "{} weight {}x{}: expected {} bytes, got {}",
            self.ty,
            self.rows,
            self.cols,
            want,
            self.data.len()
        );
        rb
    }
}

// ---------------------------------------------------------------- SIMD level

/// Which SIMD path is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// Portable scalar reference code.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C.
    Avx2,
    /// x86_64 with AVX-512 F/BW/VL (plus AVX2, FMA, F16C); VNNI used where present.
    Avx512,
    /// aarch64 with NEON (dot products of every weight type).
    Neon,
}

impl SimdLevel {
    /// Parse the names accepted by `VERITY_SIMD` (case-insensitive).
    pub fn parse(s: &str) -> Option<SimdLevel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            "neon" => Some(SimdLevel::Neon),
            _ => None,
        }
    }
}

/// Whether this CPU can run `level`'s code.
pub fn level_supported(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => {
            level_supported(SimdLevel::Avx2)
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The best level this CPU supports, ignoring `VERITY_SIMD`.
pub fn best_simd_level() -> SimdLevel {
    [SimdLevel::Avx512, SimdLevel::Avx2, SimdLevel::Neon]
        .into_iter()
        .find(|&l| level_supported(l))
        .unwrap_or(SimdLevel::Scalar)
}

/// The SIMD path in use: detected once at run time, overridable (downwards only) by
/// `VERITY_SIMD=scalar|avx2|avx512|neon`. An unknown value, or a level this CPU cannot run,
/// falls back to the best available level.
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = best_simd_level();
        match std::env::var("VERITY_SIMD")
            .ok()
            .as_deref()
            .and_then(SimdLevel::parse)
        {
            Some(req) if level_supported(req) => req,
            _ => best,
        }
    })
}

/// `level` if this CPU supports it, else the best supported level.
fn effective(level: SimdLevel) -> SimdLevel {
    if level_supported(level) {
        level
    } else {
        best_simd_level()
    }
}

// ---------------------------------------------------------------- types

/// The activation type ggml pairs with weights of type `ty` in dot products.
pub fn vec_dot_type(ty: TensorType) -> TensorType {
    use TensorType::*;
    match ty {
        F32 => F32,
        F16 => F16,
        BF16 => BF16,
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL | MXFP4 => Q8_0,
        Q4_1 | Q5_1 => Q8_1,
        Q8_1 => Q8_1,
        Q4_K | Q5_K | Q6_K | Q8_K | Q2_K | Q3_K | IQ4_XS => Q8_K,
    }
}

/// Whether [`matmul`] accepts weights of type `ty`.
pub fn matmul_supported(ty: TensorType) -> bool {
    !matches!(ty, TensorType::Q8_1 | TensorType::Q8_K)
}

/// `dot(w, a, ys, n)`: one weight row `w` against one activation row `a` (in the vec-dot
/// type), `n` elements; `ys` holds the activation row's block scales widened to f32
/// ([`act_scales`]), which some SIMD kernels read instead of `a`'s f16 fields.
type DotFn = fn(&[u8], &[u8], &[f32], usize) -> f32;

/// A dot product that does not use the widened activation scales.
macro_rules! plain {
    ($f:path) => {
        (|w: &[u8], a: &[u8], _ys: &[f32], n: usize| $f(w, a, n)) as DotFn
    };
}

/// Block scales of an activation row of type `vdt`, widened to f32 and appended to `out`:
/// Q8_0 `[d]` per block, Q8_1 `[d, s]` per block, nothing for the other types.
fn act_scales(vdt: TensorType, a: &[u8], out: &mut Vec<f32>) {
    use blocks::{rd_f16, Q8_0_BYTES, Q8_1_BYTES};
    match vdt {
        TensorType::Q8_0 => out.extend(a.chunks_exact(Q8_0_BYTES).map(|b| rd_f16(b, 0))),
        TensorType::Q8_1 => {
            for b in a.chunks_exact(Q8_1_BYTES) {
                out.push(rd_f16(b, 0));
                out.push(rd_f16(b, 2));
            }
        }
        _ => {}
    }
}

/// The dot-product kernel for weights of type `ty` at `level` (which must be supported).
/// One weight row against four activation rows (see [`dot4_kernel`]).
type Dot4Fn = fn(&[u8], [&[u8]; 4], [&[f32]; 4], usize) -> [f32; 4];

/// A kernel that unpacks each weight block once for four activation rows, for the types
/// and levels that have one; each of its four results equals [`dot_kernel`]'s, bit for bit.
fn dot4_kernel(ty: TensorType, level: SimdLevel) -> Option<Dot4Fn> {
    if lowbit::is_lowbit(ty) {
        return lowbit::dot4_kernel(ty, level);
    }
    #[cfg(target_arch = "x86_64")]
    use TensorType::*;
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && avx2::vnni::available() {
        match ty {
            Q8_0 => return Some(avx2::vnni::dot4_q8_0),
            Q4_0 => return Some(avx2::vnni::dot4_q4_0),
            Q4_1 => return Some(avx2::vnni::dot4_q4_1),
            Q5_0 => return Some(avx2::vnni::dot4_q5_0),
            Q5_1 => return Some(avx2::vnni::dot4_q5_1),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512) && level_supported(SimdLevel::Avx2) {
        return match ty {
            Q8_0 => Some(avx2::dot4_q8_0),
            Q4_0 => Some(avx2::dot4_q4_0),
            Q4_1 => Some(avx2::dot4_q4_1),
            Q5_0 => Some(avx2::dot4_q5_0),
            Q5_1 => Some(avx2::dot4_q5_1),
            _ => None,
        };
    }
    let _ = (ty, level);
    None
}

fn dot_kernel(ty: TensorType, level: SimdLevel) -> DotFn {
    use TensorType::*;
    if let Some(f) = lowbit::dot_kernel(ty, level) {
        return f;
    }
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && avx2::vnni::available() {
        match ty {
            Q8_0 => return avx2::vnni::dot_q8_0,
            Q4_0 => return avx2::vnni::dot_q4_0,
            Q4_1 => return avx2::vnni::dot_q4_1,
            Q5_0 => return avx2::vnni::dot_q5_0,
            Q5_1 => return avx2::vnni::dot_q5_1,
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && kquant512::available() {
        match ty {
            Q4_K => return plain!(kquant512::dot_q4_k),
            Q6_K => return plain!(kquant512::dot_q6_k),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && gemm_f::available() {
        match ty {
            F16 => return plain!(gemm_f::dot_f16),
            BF16 => return plain!(gemm_f::dot_bf16),
            F32 => return plain!(gemm_f::dot_f32),
            _ => {}
        }
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(level, SimdLevel::Avx2 | SimdLevel::Avx512) && level_supported(SimdLevel::Avx2) {
        return match ty {
            F32 => plain!(avx2::dot_f32),
            F16 => plain!(avx2::dot_f16),
            BF16 => plain!(avx2::dot_bf16),
            Q8_0 => avx2::dot_q8_0,
            Q4_0 => avx2::dot_q4_0,
            Q4_1 => avx2::dot_q4_1,
            Q5_0 => avx2::dot_q5_0,
            Q5_1 => avx2::dot_q5_1,
            Q4_K => plain!(avx2::dot_q4_k),
            Q5_K => plain!(avx2::dot_q5_k),
            Q6_K => plain!(avx2::dot_q6_k),
            Q8_1 | Q8_K => panic!("{ty} is an activation type, not a weight type for matmul"),
            Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => unreachable!("lowbit's dot_kernel has {ty}"),
        };
    }
    #[cfg(target_arch = "aarch64")]
    if level == SimdLevel::Neon && level_supported(SimdLevel::Neon) {
        return match ty {
            F32 => plain!(neon::dot_f32),
            F16 => plain!(neon::dot_f16),
            BF16 => plain!(neon::dot_bf16),
            Q8_0 => plain!(neon::dot_q8_0),
            Q4_0 => plain!(neon::dot_q4_0),
            Q4_1 => plain!(neon::dot_q4_1),
            Q5_0 => plain!(neon::dot_q5_0),
            Q5_1 => plain!(neon::dot_q5_1),
            Q4_K => plain!(neon::dot_q4_k),
            Q5_K => plain!(neon::dot_q5_k),
            Q6_K => plain!(neon::dot_q6_k),
            Q8_1 | Q8_K => panic!("{ty} is an activation type, not a weight type for matmul"),
            Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => unreachable!("lowbit's dot_kernel has {ty}"),
        };
    }
    let _ = level;
    match ty {
        F32 => plain!(scalar::dot_f32),
        F16 => plain!(scalar::dot_f16),
        BF16 => plain!(scalar::dot_bf16),
        Q8_0 => plain!(scalar::dot_q8_0),
        Q4_0 => plain!(scalar::dot_q4_0),
        Q4_1 => plain!(scalar::dot_q4_1),
        Q5_0 => plain!(scalar::dot_q5_0),
        Q5_1 => plain!(scalar::dot_q5_1),
        Q4_K => plain!(scalar::dot_q4_k),
        Q5_K => plain!(scalar::dot_q5_k),
        Q6_K => plain!(scalar::dot_q6_k),
        Q8_1 | Q8_K => panic!("{ty} is an activation type, not a weight type for matmul"),
        Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => unreachable!("lowbit's dot_kernel has {ty}"),
    }
}

// ---------------------------------------------------------------- quantize / dequantize

/// Dequantize `dst.len()` elements (a whole number of blocks) from `src` of type `ty`.
///
/// Bit-identical to ggml's `dequantize_row_*` (and gguf-py's numpy dequantizers).
/// Panics if `dst.len()` is not a whole number of blocks or `src` is too short.
pub fn dequantize_row(ty: TensorType, src: &[u8], dst: &mut [f32]) {
    use TensorType::*;
    let need = ty.row_bytes(dst.len()).unwrap_or_else(|| {
        panic!(
            "dequantize_row: {} elements is not a whole number of {ty} blocks",
            dst.len()
        )
    });
    assert!(
        src.len() >= need,
        "dequantize_row: {} elements of {ty} need {need} bytes, got {}",
        dst.len(),
        src.len()
    );
    let src = &src[..need];
    match ty {
        F32 => dequant::f32_(src, dst),
        F16 => dequant::f16_(src, dst),
        BF16 => dequant::bf16_(src, dst),
        Q4_0 => dequant::q4_0(src, dst),
        Q4_1 => dequant::q4_1(src, dst),
        Q5_0 => dequant::q5_0(src, dst),
        Q5_1 => dequant::q5_1(src, dst),
        Q8_0 => dequant::q8_0(src, dst),
        Q8_1 => dequant::q8_1(src, dst),
        Q4_K => dequant::q4_k(src, dst),
        Q5_K => dequant::q5_k(src, dst),
        Q6_K => dequant::q6_k(src, dst),
        Q8_K => dequant::q8_k(src, dst),
        Q2_K | Q3_K | IQ4_NL | IQ4_XS | MXFP4 => lowbit::dequantize(ty, src, dst),
    }
}

/// Row `row` of a weight matrix, dequantized into `dst` (`dst.len() == w.cols`).
/// For embedding lookups.
pub fn get_row(w: &WeightView, row: usize, dst: &mut [f32]) {
    let rb = w.check();
    assert!(
        row < w.rows,
        "get_row: row {row} out of range (rows = {})",
        w.rows
    );
    assert_eq!(
        dst.len(),
        w.cols,
        "get_row: dst has {} elements, want {}",
        dst.len(),
        w.cols
    );
    dequantize_row(w.ty, &w.data[row * rb..(row + 1) * rb], dst);
}

fn prepare_dst(ty: TensorType, n: usize, dst: &mut Vec<u8>) -> Result<usize, String> {
    let bytes = ty
        .row_bytes(n)
        .ok_or_else(|| format!("{n} elements is not a whole number of {ty} blocks"))?;
    let start = dst.len();
    dst.resize(start + bytes, 0);
    Ok(start)
}

/// Quantize `src` to type `ty`, appending the bytes to `dst`, the way ggml writes model
/// files (`quantize_row_*_ref`; for F16/BF16 round to nearest even).
///
/// Implemented: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q8_K, MXFP4. The other
/// K-quants and IQ4 types (whose quantizers search for scales) return `Err`, as does a length
/// that is not a whole number of blocks.
pub fn quantize_row(ty: TensorType, src: &[f32], dst: &mut Vec<u8>) -> Result<(), String> {
    use TensorType::*;
    let f: QuantFn = match ty {
        F32 => quant::to_f32,
        F16 => quant::to_f16,
        BF16 => quant::to_bf16,
        Q4_0 => quant::ref_q4_0,
        Q4_1 => quant::ref_q4_1,
        Q5_0 => quant::ref_q5_0,
        Q5_1 => quant::ref_q5_1,
        Q8_0 => quant::ref_q8_0,
        Q8_1 => quant::ref_q8_1,
        Q8_K => quant::q8_k,
        MXFP4 => lowbit::quantize_mxfp4,
        Q4_K | Q5_K | Q6_K | Q2_K | Q3_K | IQ4_NL | IQ4_XS => {
            return Err(format!("quantizing to {ty} is not implemented"))
        }
    };
    let start = prepare_dst(ty, src.len(), dst)?;
    f(src, &mut dst[start..]);
    Ok(())
}

/// Quantize an activation row to `ty` the way ggml-cpu does before a dot product on x86
/// (Q8_0/Q8_1: `id = 127 / amax`, round half to even; Q8_K: ggml's reference quantizer;
/// F16/BF16/F32: rounding only), appending to `dst`. This is what [`matmul`] uses.
pub fn quantize_activation_row(
    ty: TensorType,
    src: &[f32],
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let f = activation_quantizer(ty)?;
    let start = prepare_dst(ty, src.len(), dst)?;
    f(src, &mut dst[start..]);
    Ok(())
}

/// A quantizer from f32 to a block format, writing into a buffer of the right size.
type QuantFn = fn(&[f32], &mut [u8]);

fn activation_quantizer(ty: TensorType) -> Result<QuantFn, String> {
    use TensorType::*;
    Ok(match ty {
        F32 => quant::to_f32,
        F16 => quant::to_f16,
        BF16 => quant::to_bf16,
        Q8_0 => quant::act_q8_0,
        Q8_1 => quant::act_q8_1,
        Q8_K => quant::q8_k,
        _ => return Err(format!("{ty} is not an activation type")),
    })
}

// ---------------------------------------------------------------- matmul

/// Weight rows per cache block: a block is read once for all batch rows.
const ROW_BLOCK: usize = 16;
/// Most weight bytes a batch-1 task reads.
const MAX_TASK_BYTES: usize = 4 << 20;

/// Weight rows a batch-1 task takes: about four tasks per thread, but at most
/// [`MAX_TASK_BYTES`]. A vocabulary projection's quarter-thread share is tens of MB,
/// milliseconds from memory: a thread slowed by other work on its core would leave the
/// others waiting that long at the end.
fn batch1_rows_per_task(rows: usize, wrb: usize, threads: usize) -> usize {
    rows.div_ceil(threads * 4)
        .max(ROW_BLOCK)
        .min((MAX_TASK_BYTES / wrb.max(1)).max(ROW_BLOCK))
}

/// `y[i] = w[r0 + i] · act`: one batch-1 task's rows, its first bytes prefetched at once.
fn batch1_rows(dot: DotFn, w: &WeightView, r0: usize, act: &[u8], scl: &[f32], y: &mut [f32]) {
    let wrb = w.row_bytes();
    prefetch_head(&w.data[r0 * wrb..]);
    for (yv, r) in y.iter_mut().zip(r0..) {
        *yv = dot(&w.data[r * wrb..(r + 1) * wrb], act, scl, w.cols);
    }
}

/// Smallest batch for the repacking AVX-512 VNNI matrix-matrix kernel.
#[cfg(target_arch = "x86_64")]
const GEMM_MIN_BATCH: usize = 4;

/// `y[b * w.rows + r] = sum_k W[r][k] * x[b * w.cols + k]` for `b in 0..batch`,
/// `r in 0..w.rows`.
///
/// The activations are first quantized to [`vec_dot_type`]`(w.ty)` (once per call), then
/// rows are processed in parallel on the `verity_pool` workers, in blocks of weight rows that
/// are each read once for the whole batch. The result for a given (row, batch item) does
/// not depend on `batch`, on the thread count, or on the SIMD level.
///
/// Panics if the slice lengths do not match the shapes.
pub fn matmul(w: &WeightView, x: &[f32], batch: usize, y: &mut [f32]) {
    matmul_with(simd_level(), w, x, batch, y)
}

/// [`matmul`] at an explicit SIMD level (for tests and benchmarks). A level this CPU
/// cannot run falls back to the best available one.
#[doc(hidden)]
pub fn matmul_with(level: SimdLevel, w: &WeightView, x: &[f32], batch: usize, y: &mut [f32]) {
    // Per-thread scratch, kept between calls: a decode step makes hundreds of products and
    // none of them allocates once the buffers have grown to the largest shape seen.
    MATMUL_SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => matmul_in(level, w, x, batch, y, &mut scratch),
        Err(_) => matmul_in(level, w, x, batch, y, &mut MatmulScratch::default()),
    })
}

/// Buffers [`matmul_with`] reuses: quantized activations, their widened scales, and the
/// row-major result of the row-dot path.
#[derive(Default)]
struct MatmulScratch {
    act: Vec<u8>,
    scl: Vec<f32>,
    tmp: Vec<f32>,
}

thread_local! {
    static MATMUL_SCRATCH: std::cell::RefCell<MatmulScratch> =
        std::cell::RefCell::new(MatmulScratch::default());
}

/// `&mut v[..len]`, growing `v` if needed (contents unspecified: callers overwrite them).
fn scratch_slice<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

fn matmul_in(
    level: SimdLevel,
    w: &WeightView,
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    scratch: &mut MatmulScratch,
) {
    let wrb = w.check();
    assert!(
        matmul_supported(w.ty),
        "matmul: {} is not a weight type",
        w.ty
    );
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        batch * cols,
        "matmul: x has {} elements, want {batch}x{cols}",
        x.len()
    );
    assert_eq!(
        y.len(),
        batch * rows,
        "matmul: y has {} elements, want {batch}x{rows}",
        y.len()
    );
    if batch == 0 || rows == 0 {
        return;
    }
    let level = effective(level);
    let vdt = vec_dot_type(w.ty);
    let arb = vdt.row_bytes(cols).expect("activation row size");

    // Quantize the whole activation batch once.
    let quantize = activation_quantizer(vdt).expect("vec-dot type is an activation type");
    let MatmulScratch { act, scl, tmp } = scratch;
    let act = scratch_slice(act, batch * arb);
    if cols == 0 {
        y.fill(0.0);
        return;
    }
    if batch >= 4 {
        verity_pool::for_each_chunk_mut(act, arb, &|b, a| {
            quantize(&x[b * cols..(b + 1) * cols], a)
        });
    } else {
        act.chunks_mut(arb)
            .zip(x.chunks(cols))
            .for_each(|(a, xr)| quantize(xr, a));
    }

    let dot = dot_kernel(w.ty, level);
    let dot4 = dot4_kernel(w.ty, level);
    let act = &*act;
    scl.clear();
    for a in act.chunks_exact(arb) {
        act_scales(vdt, a, scl);
    }
    let scl = &*scl;
    let sst = scl.len() / batch;
    let scales = |b: usize| &scl[b * sst..(b + 1) * sst];
    let wrow = |r: usize| &w.data[r * wrb..(r + 1) * wrb];
    let threads = verity_pool::num_threads().max(1);
    let rows_per_task = rows.div_ceil(threads * 4).max(ROW_BLOCK);

    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512 && batch > 1 && gemm_f::supported(w.ty) && gemm_f::available() {
        // SAFETY: `available()` checked the CPU features; `w.check()` the size.
        unsafe { gemm_f::matmul(w.ty, w.data, rows, cols, act, batch, y) };
        return;
    }

    if batch == 1 {
        let rows_per_task = batch1_rows_per_task(rows, wrb, threads);
        verity_pool::for_each_chunk_mut(y, rows_per_task, &|t, ys| {
            batch1_rows(dot, w, t * rows_per_task, act, scl, ys)
        });
        return;
    }

    #[cfg(target_arch = "x86_64")]
    if level == SimdLevel::Avx512
        && batch >= GEMM_MIN_BATCH
        && gemm::supported(w.ty)
        && gemm::available()
        && rows >= gemm::PR
    {
        // SAFETY: `available()` checked the CPU features.
        unsafe {
            gemm::matmul_panels(w.ty, w.data, wrb, rows, cols, act, arb, batch, y);
        }
        let done = rows / gemm::PR * gemm::PR;
        for (b, a) in act.chunks_exact(arb).enumerate() {
            for r in done..rows {
                y[b * rows + r] = dot(wrow(r), a, scales(b), cols);
            }
        }
        return;
    }

    // Row-major [rows][batch] scratch so each task owns a contiguous chunk.
    let tmp = scratch_slice(tmp, rows * batch);
    verity_pool::for_each_chunk_mut(tmp, rows_per_task * batch, &|t, ts| {
        let r0 = t * rows_per_task;
        let nr = ts.len() / batch;
        for rb in (0..nr).step_by(ROW_BLOCK) {
            let re = (rb + ROW_BLOCK).min(nr);
            let mut b = 0;
            if let Some(dot4) = dot4 {
                while b + 4 <= batch {
                    let a: [&[u8]; 4] = std::array::from_fn(|j| &act[(b + j) * arb..][..arb]);
                    let sc: [&[f32]; 4] = std::array::from_fn(|j| scales(b + j));
                    for i in rb..re {
                        let v = dot4(wrow(r0 + i), a, sc, cols);
                        ts[i * batch + b..][..4].copy_from_slice(&v);
                    }
                    b += 4;
                }
            }
            for b in b..batch {
                let a = &act[b * arb..][..arb];
                for i in rb..re {
                    ts[i * batch + b] = dot(wrow(r0 + i), a, scales(b), cols);
                }
            }
        }
    });
    for (b, yb) in y.chunks_mut(rows).enumerate() {
        for (r, yv) in yb.iter_mut().enumerate() {
            *yv = tmp[r * batch + b];
        }
    }
}

/// Dot product of one weight row (`w`, type `ty`, `n` elements) with an f32 vector,
/// quantizing `x` like [`matmul`] does. Allocates; meant for tests and one-off use.
#[doc(hidden)]
pub fn dot_with(level: SimdLevel, ty: TensorType, w: &[u8], x: &[f32]) -> f32 {
    let mut act = Vec::new();
    quantize_activation_row(vec_dot_type(ty), x, &mut act).expect("quantize activations");
    let rb = ty.row_bytes(x.len()).expect("whole blocks");
    assert!(w.len() >= rb, "dot_with: weight row too short");
    let mut scl = Vec::new();
    act_scales(vec_dot_type(ty), &act, &mut scl);
    dot_kernel(ty, effective(level))(&w[..rb], &act, &scl, x.len())
}
