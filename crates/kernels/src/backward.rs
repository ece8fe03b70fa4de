//! Matrix products of the backward pass (LoRA training): `dX = dY · W` through a frozen
//! weight in its own format ([`matmul_t`]) and `C = Aᵀ · B` for weight gradients
//! ([`matmul_at_b`]).
//!
//! # Numerics
//!
//! Every output element is one chain of fused multiply-adds from `0.0`, over the reduction
//! index in ascending order (one rounding per step). Weights are the exact f32 values
//! [`dequantize_row`] gives; the other operand stays f32 (no activation quantization).
//! SIMD paths only put independent output elements side by side in vector lanes, threads
//! only split the output, and the reduction is never split, so the result is bit-identical
//! across SIMD levels, thread counts and batch sizes.
//!
//! # Structure
//!
//! Both products are `OUT (m×n) = L (m×k) · R (k×n)` with `R` row-major (`k` rows of `n`).
//! Tasks own a block of output columns (a whole number of quant blocks: 256 for K-quants)
//! and a chunk of output rows. A task walks the reduction in tiles of [`KC`] rows of `R`:
//! it dequantizes the tile's columns into panels [`PW`] columns wide (16 KiB each, so one
//! stays in L1) and copies its rows of `L` into strips of [`MR`] rows, then runs a
//! register-tiled micro-kernel over every (strip, panel) pair: the `MR × PW` partial sums
//! live in registers for the whole tile and go back to memory between tiles (which
//! continues the chain exactly: the stored value is the f32 accumulator). With only a few
//! rows of output (`Aᵀ · B` at a LoRA rank), the AVX-512 kernel reads an f32 `R` in place
//! instead of from panels.

use crate::{dequantize_row, effective, simd_level, SimdLevel, TensorType, WeightView};

/// Output columns per panel: the micro-kernel's width (four zmm / eight ymm).
const PW: usize = 64;
/// Reduction rows per tile: a `KC × PW` f32 panel is 16 KiB, half of a 32 KiB L1.
const KC: usize = 64;
/// Output rows per micro-kernel strip (6 × 4 zmm accumulators leave room for the operands).
const MR: usize = 6;
/// Largest chunk of output rows per task: its `MB × 256` slice of the output (288 KiB) stays
/// in L2 across the reduction tiles, and each dequantized tile is used by this many rows.
const MB: usize = 288;
/// Smallest chunk of output rows a task is split down to for parallelism (dequantizing a
/// tile has to be paid for by enough rows using it).
const MB_MIN: usize = 48;
/// Most output rows for which f32 right operands are read in place (see `gemm`).
const DIRECT_ROWS: usize = 3 * MR;

/// `dx[b * w.cols + k] = Σ_r dy[b * w.rows + r] · W[r][k]` for `b in 0..batch`: the
/// gradient through a frozen weight (`dX = dY · W`), for every weight type [`matmul`]
/// accepts.
///
/// `W[r][k]` is the f32 value [`dequantize_row`] gives and `dy` is used as is. Each element
/// of `dx` is a fused multiply-add chain from `0.0` over `r` ascending, so the result is
/// bit-identical for every SIMD level, thread count and batch size. `dx` is overwritten.
///
/// Panics if the slice lengths do not match the shapes or `w.ty` is not a weight type.
///
/// [`matmul`]: crate::matmul
pub fn matmul_t(w: &WeightView, dy: &[f32], batch: usize, dx: &mut [f32]) {
    matmul_t_with(simd_level(), w, dy, batch, dx)
}

/// [`matmul_t`] at an explicit SIMD level (for tests and benchmarks). A level this CPU
/// cannot run falls back to the best available one.
#[doc(hidden)]
pub fn matmul_t_with(level: SimdLevel, w: &WeightView, dy: &[f32], batch: usize, dx: &mut [f32]) {
    let row_bytes = w.check();
    assert!(
        crate::matmul_supported(w.ty),
        "matmul_t: {} is not a weight type",
        w.ty
    );
    let (rows, cols) = (w.rows, w.cols);
    check_len("matmul_t", "dy", dy.len(), batch, rows);
    check_len("matmul_t", "dx", dx.len(), batch, cols);
    let lhs = Lhs {
        data: dy,
        sm: rows,
        sr: 1,
    };
    let weight = Rhs::Weight {
        ty: w.ty,
        data: w.data,
        row_bytes,
    };
    let rhs = match w.ty {
        // f32 weights at an f32 address are the f32 operand itself (no dequantizing copy).
        // SAFETY: every bit pattern is an f32; `align_to` gives only aligned, in-bounds
        // middles, and little-endian bytes are the in-memory f32s.
        TensorType::F32 if cfg!(target_endian = "little") => {
            match unsafe { w.data.align_to::<f32>() } {
                ([], data, []) => Rhs::F32 { data, ld: cols },
                _ => weight,
            }
        }
        _ => weight,
    };
    gemm(effective(level), lhs, rhs, batch, rows, cols, dx);
}

/// `c[i * q + j] = Σ_t a[t * p + i] · b[t * q + j]` for `t in 0..n`: `C = Aᵀ · B` with `A`
/// `n × p` and `B` `n × q`, row-major (the LoRA weight gradients `dB = dYᵀ · u`,
/// `dA = duᵀ · x`).
///
/// Each element of `c` is a fused multiply-add chain from `0.0` over `t` ascending, so the
/// result is bit-identical for every SIMD level and thread count. `c` is overwritten.
///
/// Panics if the slice lengths do not match the shapes.
pub fn matmul_at_b(a: &[f32], b: &[f32], n: usize, p: usize, q: usize, c: &mut [f32]) {
    matmul_at_b_with(simd_level(), a, b, n, p, q, c)
}

/// [`matmul_at_b`] at an explicit SIMD level (for tests and benchmarks). A level this CPU
/// cannot run falls back to the best available one.
#[doc(hidden)]
pub fn matmul_at_b_with(
    level: SimdLevel,
    a: &[f32],
    b: &[f32],
    n: usize,
    p: usize,
    q: usize,
    c: &mut [f32],
) {
    check_len("matmul_at_b", "a", a.len(), n, p);
    check_len("matmul_at_b", "b", b.len(), n, q);
    check_len("matmul_at_b", "c", c.len(), p, q);
    let level = effective(level);
    // Output columns are computed in panels of PW, rows in strips of MR: a narrow `q`
    // (a LoRA rank) wastes most of each panel, so compute `Cᵀ = Bᵀ · A` instead (the same
    // products, as fma(x, y, acc) == fma(y, x, acc)) and transpose it.
    let waste = |m: usize, cols: usize| m * cols.div_ceil(PW) * PW;
    if q < PW && waste(q, p) < waste(p, q) {
        let lhs = Lhs {
            data: b,
            sm: 1,
            sr: q,
        };
        let rhs = Rhs::F32 { data: a, ld: p };
        let mut ct = vec![0f32; q * p];
        gemm(level, lhs, rhs, q, n, p, &mut ct);
        for (j, row) in ct.chunks_exact(p).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                c[i * q + j] = v;
            }
        }
    } else {
        let lhs = Lhs {
            data: a,
            sm: 1,
            sr: p,
        };
        let rhs = Rhs::F32 { data: b, ld: q };
        gemm(level, lhs, rhs, p, n, q, c);
    }
}

/// Panics unless the argument `name` of `func` has `len == rows * cols` elements.
#[track_caller]
fn check_len(func: &str, name: &str, len: usize, rows: usize, cols: usize) {
    assert_eq!(
        len,
        rows * cols,
        "{func}: {name} has {len} elements, want {rows}x{cols}"
    );
}

// ---------------------------------------------------------------- driver

/// The left operand: element `(i, r)` of an `m × k` matrix is `data[i * sm + r * sr]`.
#[derive(Clone, Copy)]
struct Lhs<'a> {
    data: &'a [f32],
    sm: usize,
    sr: usize,
}

impl Lhs<'_> {
    /// Copy rows `i0..i1`, columns `r0..r0 + kc` into strips of [`MR`] rows: strip `s` at
    /// `out[s * KC * MR..]`, element `(i, r)` of it at `+ r * MR + i`, padded with zeros.
    /// The micro-kernel's broadcasts then read one contiguous stream instead of `MR` rows
    /// whose stride (a whole number of pages for some shapes) maps them all to a few cache
    /// sets, where they evict each other between the passes over a tile's panels.
    fn pack(&self, i0: usize, i1: usize, r0: usize, kc: usize, out: &mut [f32]) {
        for (s, strip) in out
            .chunks_mut(KC * MR)
            .take((i1 - i0).div_ceil(MR))
            .enumerate()
        {
            let strip = &mut strip[..kc * MR];
            let ia = i0 + s * MR;
            let mr = MR.min(i1 - ia);
            if self.sr == 1 && mr == MR {
                // Rows contiguous in r (dY): transpose six row segments, no bounds checks
                // in the loop.
                let rows: [&[f32]; MR] = std::array::from_fn(|ii| {
                    let b = (ia + ii) * self.sm + r0;
                    &self.data[b..b + kc]
                });
                for (r, dst) in strip.chunks_exact_mut(MR).enumerate() {
                    for ii in 0..MR {
                        dst[ii] = rows[ii][r];
                    }
                }
            } else if self.sm == 1 && mr == MR {
                // Columns contiguous in i (Aᵀ): six consecutive elements per r.
                for (r, dst) in strip.chunks_exact_mut(MR).enumerate() {
                    let b = ia + (r0 + r) * self.sr;
                    dst.copy_from_slice(&self.data[b..b + MR]);
                }
            } else {
                for (r, dst) in strip.chunks_exact_mut(MR).enumerate() {
                    for (ii, d) in dst.iter_mut().enumerate() {
                        *d = if ii < mr {
                            self.data[(ia + ii) * self.sm + (r0 + r) * self.sr]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// The right operand, `k` rows of `n` columns.
#[derive(Clone, Copy)]
enum Rhs<'a> {
    /// A weight matrix in its own format, `row_bytes` per row.
    Weight {
        ty: TensorType,
        data: &'a [u8],
        row_bytes: usize,
    },
    /// f32 rows `ld` elements apart.
    F32 { data: &'a [f32], ld: usize },
}

impl Rhs<'_> {
    /// Output columns per task must be a multiple of this (whole quant blocks).
    fn unit(&self) -> usize {
        match self {
            Rhs::Weight { ty, .. } if ty.block_size() > PW => ty.block_size(),
            _ => PW,
        }
    }

    /// Dequantize rows `r0..r0 + kc`, columns `c0..c0 + width`, into panels of [`PW`]
    /// columns: panel `p` at `panels[p * KC * PW..]`, row `r` of it at `+ r * PW`, padded
    /// with zeros to a whole panel. `row` is scratch of at least `width` elements.
    fn pack(
        &self,
        r0: usize,
        kc: usize,
        c0: usize,
        width: usize,
        panels: &mut [f32],
        row: &mut [f32],
    ) {
        for r in 0..kc {
            let src: &[f32] = match *self {
                Rhs::Weight {
                    ty,
                    data,
                    row_bytes,
                } => {
                    // `c0` is a whole number of blocks into the row (see `unit`).
                    let off = ty.row_bytes(c0).expect("column block on a block boundary");
                    let start = (r0 + r) * row_bytes + off;
                    dequantize_row(
                        ty,
                        &data[start..(r0 + r + 1) * row_bytes],
                        &mut row[..width],
                    );
                    &row[..width]
                }
                Rhs::F32 { data, ld } => &data[(r0 + r) * ld + c0..][..width],
            };
            for (p, chunk) in src.chunks(PW).enumerate() {
                let dst = &mut panels[(p * KC + r) * PW..][..PW];
                dst[..chunk.len()].copy_from_slice(chunk);
                dst[chunk.len()..].fill(0.0);
            }
        }
    }
}

/// A micro-kernel: `OUT[i][j] = chain(OUT[i][j] or 0.0 if first, L[i][r] · R[r][j] for r in
/// 0..kc)` for `i < mr`, `j < pw`.
///
/// `w` points at `R[0][0]` with row `r` at `w + r * ws`: a packed panel (`ws == PW`, [`PW`]
/// readable columns, padded with zeros) or, for the AVX-512 and portable kernels, the f32
/// operand itself (`pw` readable columns; the AVX-512 kernel masks its loads). `a` is a
/// packed strip, `L[i][r] = *a.add(r * MR + i)` ([`Lhs::pack`]), and `c` points at
/// `OUT[0][0]` with rows `ldc` apart.
///
/// # Safety
/// All those elements are in bounds, the `OUT` elements are not accessed by anyone else
/// meanwhile, `1 <= mr <= MR`, `1 <= pw <= PW`, and the CPU supports the kernel's level.
type MicroKernel = unsafe fn(
    mr: usize,
    w: *const f32,
    ws: usize,
    a: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    pw: usize,
    first: bool,
);

fn micro_kernel(level: SimdLevel) -> MicroKernel {
    #[cfg(target_arch = "x86_64")]
    match level {
        SimdLevel::Avx512 => return x86::ukernel_avx512,
        SimdLevel::Avx2 => return x86::ukernel_avx2,
        _ => {}
    }
    // NEON (and scalar): the portable kernel; on aarch64 `mul_add` is one `fmadd`.
    let _ = level;
    ukernel_scalar
}

/// A raw output pointer shared by tasks that write disjoint elements.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row chunk, column block) rectangles of the output.
unsafe impl Sync for OutPtr {}

/// Per-thread panel and row scratch, kept between calls.
struct Scratch {
    buf: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> =
        const { std::cell::RefCell::new(Scratch { buf: Vec::new() }) };
}

/// `out (m×n, row-major) = L (m×k) · R (k×n)`, each element one fma chain over `r`.
fn gemm(level: SimdLevel, lhs: Lhs, rhs: Rhs, m: usize, k: usize, n: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    // Bounds of the in-place reads of `rhs` the AVX-512 kernel may make.
    if let Rhs::F32 { data, ld } = rhs {
        assert!(ld >= n && data.len() >= (k - 1) * ld + n);
    }
    let kernel = micro_kernel(level);

    // With only a few strips of output rows, copying f32 tiles into panels costs more than
    // it saves: the AVX-512 kernel then reads the operand in place, one panel per task (one
    // strided stream, which the hardware prefetcher follows).
    let direct = match rhs {
        Rhs::F32 { data, ld } if level == SimdLevel::Avx512 && m <= DIRECT_ROWS => Some((data, ld)),
        _ => None,
    };
    // Partition: enough tasks to balance the threads, without shrinking column blocks below
    // a quant block or row chunks below MB_MIN. None of this affects the results.
    let threads = verity_pool::num_threads().max(1);
    let want = if threads == 1 { 1 } else { 4 * threads };
    let unit = rhs.unit();
    let mut nc = if direct.is_some() { PW } else { unit.max(256) };
    let mut nbc = m.div_ceil(MB);
    while nc > unit && n.div_ceil(nc) * nbc < want {
        nc /= 2;
    }
    let ncb = n.div_ceil(nc);
    if ncb * nbc < want {
        nbc = want.div_ceil(ncb).min(m.div_ceil(MB_MIN)).max(nbc);
    }
    let mb = m.div_ceil(nbc).div_ceil(MR) * MR;
    let nbc = m.div_ceil(mb);
    let npan_max = nc.div_ceil(PW);
    let op = OutPtr(out.as_mut_ptr());

    verity_pool::for_each(ncb * nbc, &|t| {
        let op = &op;
        let (cb, bc) = (t % ncb, t / ncb);
        let (c0, c1) = (cb * nc, ((cb + 1) * nc).min(n));
        let (i0, i1) = (bc * mb, ((bc + 1) * mb).min(m));
        let width = c1 - c0;
        let npan = width.div_ceil(PW);
        SCRATCH.with(|cell| {
            let mut own = Scratch { buf: Vec::new() };
            let mut guard = cell.try_borrow_mut();
            let scratch = match guard.as_mut() {
                Ok(s) => &mut **s,
                Err(_) => &mut own,
            };
            // Panels 64-byte aligned so no zmm load splits a cache line.
            let need = npan_max * KC * PW + mb * KC + nc + 16;
            if scratch.buf.len() < need {
                scratch.buf.resize(need, 0.0);
            }
            let align = scratch.buf.as_ptr().align_offset(64).min(15);
            let (panels, rest) = scratch.buf[align..].split_at_mut(npan_max * KC * PW);
            let (strips, row) = rest.split_at_mut(mb * KC);
            let mut r0 = 0;
            while r0 < k {
                let kc = KC.min(k - r0);
                lhs.pack(i0, i1, r0, kc, strips);
                if direct.is_none() {
                    rhs.pack(r0, kc, c0, width, panels, row);
                }
                for p in 0..npan {
                    let pw = PW.min(width - p * PW);
                    let (w, ws) = match direct {
                        Some((data, ld)) => (data[r0 * ld + c0 + p * PW..].as_ptr(), ld),
                        None => (panels[p * KC * PW..].as_ptr(), PW),
                    };
                    let mut i = i0;
                    while i < i1 {
                        let mr = MR.min(i1 - i);
                        // SAFETY: rows i..i + mr < m and columns c0 + p*PW + pw <= n of
                        // `out` belong to this task alone; the strip holds kc rows of MR
                        // and the panel kc rows of PW; in place, rows r0..r0 + kc of `rhs`
                        // have `ld >= n` elements (asserted above); `kernel` matches a
                        // supported level (`effective`), and only the AVX-512 kernel is
                        // handed `rhs` in place.
                        unsafe {
                            kernel(
                                mr,
                                w,
                                ws,
                                strips[(i - i0) / MR * KC * MR..].as_ptr(),
                                kc,
                                op.0.add(i * n + c0 + p * PW),
                                n,
                                pw,
                                r0 == 0,
                            );
                        }
                        i += mr;
                    }
                }
                r0 += kc;
            }
        });
    });
}

/// The portable micro-kernel: the reference fma chain with `f32::mul_add`.
///
/// # Safety
/// See [`MicroKernel`].
#[allow(clippy::too_many_arguments)]
unsafe fn ukernel_scalar(
    mr: usize,
    w: *const f32,
    ws: usize,
    a: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    pw: usize,
    first: bool,
) {
    for i in 0..mr {
        // SAFETY: the caller guarantees these elements are in bounds and ours alone.
        let out = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), pw) };
        let mut acc = [0f32; PW];
        if !first {
            acc[..pw].copy_from_slice(out);
        }
        for r in 0..kc {
            // SAFETY: as above.
            let (x, wr) = unsafe {
                (
                    *a.add(r * MR + i),
                    std::slice::from_raw_parts(w.add(r * ws), pw),
                )
            };
            for (s, &wv) in acc.iter_mut().zip(wr) {
                *s = x.mul_add(wv, *s);
            }
        }
        out.copy_from_slice(&acc[..pw]);
    }
}

// Index loops over the register tiles mirror the (row, vector) tile layout.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, PW};
    use std::arch::x86_64::*;

    /// Dispatch `mr` (and the number of live vectors, from `pw`) to a monomorphic kernel.
    macro_rules! dispatch {
        ($f:ident, $mr:expr, $nv:expr, $($arg:expr),*) => {
            match ($mr, $nv) {
                (6, 4) => $f::<6, 4>($($arg),*), (6, 3) => $f::<6, 3>($($arg),*),
                (6, 2) => $f::<6, 2>($($arg),*), (6, _) => $f::<6, 1>($($arg),*),
                (5, 4) => $f::<5, 4>($($arg),*), (5, 3) => $f::<5, 3>($($arg),*),
                (5, 2) => $f::<5, 2>($($arg),*), (5, _) => $f::<5, 1>($($arg),*),
                (4, 4) => $f::<4, 4>($($arg),*), (4, 3) => $f::<4, 3>($($arg),*),
                (4, 2) => $f::<4, 2>($($arg),*), (4, _) => $f::<4, 1>($($arg),*),
                (3, 4) => $f::<3, 4>($($arg),*), (3, 3) => $f::<3, 3>($($arg),*),
                (3, 2) => $f::<3, 2>($($arg),*), (3, _) => $f::<3, 1>($($arg),*),
                (2, 4) => $f::<2, 4>($($arg),*), (2, 3) => $f::<2, 3>($($arg),*),
                (2, 2) => $f::<2, 2>($($arg),*), (2, _) => $f::<2, 1>($($arg),*),
                (_, 4) => $f::<1, 4>($($arg),*), (_, 3) => $f::<1, 3>($($arg),*),
                (_, 2) => $f::<1, 2>($($arg),*), (_, _) => $f::<1, 1>($($arg),*),
            }
        };
    }

    /// AVX-512 micro-kernel: `mr` rows × up to four zmm of output columns in registers.
    ///
    /// # Safety
    /// See [`super::MicroKernel`]; the CPU has AVX-512 F.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn ukernel_avx512(
        mr: usize,
        w: *const f32,
        ws: usize,
        a: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        pw: usize,
        first: bool,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            dispatch!(
                tile512,
                mr,
                pw.div_ceil(16),
                w,
                ws,
                a,
                kc,
                c,
                ldc,
                pw,
                first
            )
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile512<const M: usize, const NV: usize>(
        w: *const f32,
        ws: usize,
        a: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        pw: usize,
        first: bool,
    ) {
        // Lanes of vector v that are real output columns.
        let mask: [__mmask16; NV] = std::array::from_fn(|v| {
            let lanes = pw.saturating_sub(16 * v).min(16);
            ((1u32 << lanes) - 1) as __mmask16
        });
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        // SAFETY (whole body): offsets stay inside the rectangles the caller vouches for;
        // masked accesses touch only the `pw` real columns of `w`'s rows and of `c`.
        unsafe {
            if !first {
                for i in 0..M {
                    for v in 0..NV {
                        acc[i][v] = _mm512_maskz_loadu_ps(mask[v], c.add(i * ldc + 16 * v));
                    }
                }
            }
            for r in 0..kc {
                let wr = w.add(r * ws);
                let mut wv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    wv[v] = _mm512_maskz_loadu_ps(mask[v], wr.add(16 * v));
                }
                for i in 0..M {
                    let x = _mm512_set1_ps(*a.add(r * MR + i));
                    for v in 0..NV {
                        acc[i][v] = _mm512_fmadd_ps(x, wv[v], acc[i][v]);
                    }
                }
            }
            for i in 0..M {
                for v in 0..NV {
                    _mm512_mask_storeu_ps(c.add(i * ldc + 16 * v), mask[v], acc[i][v]);
                }
            }
        }
    }

    /// AVX2 micro-kernel: the panel in strips of 16 columns, `mr` rows × two ymm each.
    ///
    /// # Safety
    /// See [`super::MicroKernel`]; the CPU has AVX2 and FMA.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn ukernel_avx2(
        mr: usize,
        w: *const f32,
        ws: usize,
        a: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        pw: usize,
        first: bool,
    ) {
        debug_assert_eq!(ws, PW, "the AVX2 kernel reads whole packed panels");
        let mut s = 0;
        while s < pw {
            let spw = (pw - s).min(16);
            // SAFETY: forwarded contract, restricted to columns s..s + spw.
            unsafe {
                dispatch!(
                    tile256,
                    mr,
                    spw.div_ceil(8),
                    w.add(s),
                    a,
                    kc,
                    c.add(s),
                    ldc,
                    spw,
                    first
                )
            }
            s += 16;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn tile256<const M: usize, const NV: usize>(
        w: *const f32,
        a: *const f32,
        kc: usize,
        c: *mut f32,
        ldc: usize,
        pw: usize,
        first: bool,
    ) {
        let lanes: [usize; NV] = std::array::from_fn(|v| pw.saturating_sub(8 * v).min(8));
        let mask: [__m256i; NV] = std::array::from_fn(|v| {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(lanes[v] as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        });
        let mut acc = [[_mm256_setzero_ps(); NV]; M];
        // SAFETY (whole body): offsets stay inside the rectangles the caller vouches for;
        // partial vectors of `c` go through masked loads and stores.
        unsafe {
            if !first {
                for i in 0..M {
                    for v in 0..NV {
                        let p = c.add(i * ldc + 8 * v);
                        acc[i][v] = if lanes[v] == 8 {
                            _mm256_loadu_ps(p)
                        } else {
                            _mm256_maskload_ps(p, mask[v])
                        };
                    }
                }
            }
            for r in 0..kc {
                let wr = w.add(r * PW);
                let mut wv = [_mm256_setzero_ps(); NV];
                for v in 0..NV {
                    wv[v] = _mm256_loadu_ps(wr.add(8 * v));
                }
                for i in 0..M {
                    let x = _mm256_set1_ps(*a.add(r * MR + i));
                    for v in 0..NV {
                        acc[i][v] = _mm256_fmadd_ps(x, wv[v], acc[i][v]);
                    }
                }
            }
            for i in 0..M {
                for v in 0..NV {
                    let p = c.add(i * ldc + 8 * v);
                    if lanes[v] == 8 {
                        _mm256_storeu_ps(p, acc[i][v]);
                    } else {
                        _mm256_maskstore_ps(p, mask[v], acc[i][v]);
                    }
                }
            }
        }
    }
}
