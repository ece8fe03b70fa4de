//! Row-wise operations of the training pass and their derivatives. Each row is computed
//! alone, in a fixed order, so results never depend on the thread count.

pub use verity_engine::par_rows;
use verity_engine::{rms_norm, rms_scale};

/// `out = rms_norm(x) · w`, row by row (the engine's function, so training computes what
/// inference computes).
pub fn norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    par_rows(out, d, &|r, o| rms_norm(&x[r * d..(r + 1) * d], w, eps, o));
}

/// Given `dh`, the gradient of `h = x · s(x) · w` (s = 1/rms), add the gradient with
/// respect to `x` to `dx`: `dx += s·w⊙dh − x·s³·⟨w⊙dh, x⟩/d`.
pub fn norm_backward_rows(x: &[f32], w: &[f32], eps: f32, dh: &[f32], dx: &mut [f32]) {
    let d = w.len();
    par_rows(dx, d, &|r, dxr| {
        let xr = &x[r * d..(r + 1) * d];
        let dhr = &dh[r * d..(r + 1) * d];
        let s = rms_scale(xr, eps);
        let dot: f64 = xr
            .iter()
            .zip(dhr)
            .zip(w)
            .map(|((&xv, &g), &wv)| (xv * g * wv) as f64)
            .sum();
        let c = (dot / d as f64) as f32 * s * s * s;
        for i in 0..d {
            dxr[i] += s * w[i] * dhr[i] - xr[i] * c;
        }
    });
}

/// Run `f(offset, part)` over consecutive parts of `buf` in parallel (elementwise work:
/// each element's result depends only on its index).
pub fn par_elems(buf: &mut [f32], f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    const PART: usize = 8192;
    if buf.len() <= PART {
        f(0, buf);
        return;
    }
    verity_pool::for_each_chunk_mut(buf, PART, &|t, part| f(t * PART, part));
}

/// `silu(g) · u` into `out` (the engine's kernel, so training computes what inference
/// computes).
pub fn swiglu_rows(gate: &[f32], up: &[f32], out: &mut [f32]) {
    par_elems(out, &|base, o| {
        o.copy_from_slice(&gate[base..base + o.len()]);
        verity_kernels::activation::silu_mul(o, &up[base..base + o.len()]);
    });
}

/// Gradients of `a = silu(g)·u`: writes `d_gate` and `d_up` from `d_act`.
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    par_elems(d_up, &|base, du| {
        for (i, v) in du.iter_mut().enumerate() {
            let g = gate[base + i];
            let sig = 1.0 / (1.0 + (-g).exp());
            *v = d_act[base + i] * g * sig;
        }
    });
    par_elems(d_gate, &|base, dg| {
        for (i, v) in dg.iter_mut().enumerate() {
            let g = gate[base + i];
            let sig = 1.0 / (1.0 + (-g).exp());
            *v = d_act[base + i] * up[base + i] * sig * (1.0 + g * (1.0 - sig));
        }
    });
}

/// √(2/π), of the tanh approximation of GELU.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// GELU's tanh approximation (PyTorch's `gelu(approximate="tanh")`, Gemma's
/// `gelu_pytorch_tanh`), exactly in f32. The engine's inference reads ggml's f16 table
/// instead; training differentiates the function the Hugging Face model defines.
fn gelu_tanh(g: f32) -> f32 {
    0.5 * g * (1.0 + (GELU_C * (g + GELU_A * g * g * g)).tanh())
}

/// `gelu_tanh(g) · u` into `out` (GeGLU).
pub fn geglu_rows(gate: &[f32], up: &[f32], out: &mut [f32]) {
    par_elems(out, &|base, o| {
        for (i, v) in o.iter_mut().enumerate() {
            *v = gelu_tanh(gate[base + i]) * up[base + i];
        }
    });
}

/// Gradients of `a = gelu_tanh(g)·u`: writes `d_gate` and `d_up` from `d_act`.
pub fn geglu_backward(
    gate: &[f32],
    up: &[f32],
    d_act: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    par_elems(d_up, &|base, du| {
        for (i, v) in du.iter_mut().enumerate() {
            *v = d_act[base + i] * gelu_tanh(gate[base + i]);
        }
    });
    par_elems(d_gate, &|base, dg| {
        for (i, v) in dg.iter_mut().enumerate() {
            let g = gate[base + i];
            let t = (GELU_C * (g + GELU_A * g * g * g)).tanh();
            let dt = GELU_C * (1.0 + 3.0 * GELU_A * g * g);
            let d_gelu = 0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * dt;
            *v = d_act[base + i] * up[base + i] * d_gelu;
        }
    });
}

/// `x += y`, elementwise in parallel.
pub fn add_into(x: &mut [f32], y: &[f32]) {
    par_elems(x, &|base, xr| {
        for (a, &b) in xr.iter_mut().zip(&y[base..]) {
            *a += b;
        }
    });
}

/// `x += s·y`, elementwise in parallel.
pub fn add_scaled_into(x: &mut [f32], y: &[f32], s: f32) {
    par_elems(x, &|base, xr| {
        for (a, &b) in xr.iter_mut().zip(&y[base..]) {
            *a += s * b;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss(x: &[f32], w: &[f32], r: &[f32]) -> f64 {
        let mut h = vec![0f32; x.len()];
        norm_rows(x, w, 1e-5, &mut h);
        h.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    #[test]
    fn norm_backward_matches_finite_differences() {
        let d = 8;
        let x: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 10.0).collect();
        let r: Vec<f32> = (0..2 * d)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let mut dx = vec![0f32; x.len()];
        norm_backward_rows(&x, &w, 1e-5, &r, &mut dx);
        for i in 0..x.len() {
            let e = 1e-2;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += e;
            xm[i] -= e;
            let fd = (loss(&xp, &w, &r) - loss(&xm, &w, &r)) / (2.0 * e as f64);
            assert!((fd - dx[i] as f64).abs() < 2e-3, "{i}: {fd} vs {}", dx[i]);
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let g: Vec<f32> = (0..10).map(|i| i as f32 / 3.0 - 1.5).collect();
        let u: Vec<f32> = (0..10).map(|i| 1.0 - i as f32 / 7.0).collect();
        let da = vec![1f32; 10];
        let (mut dg, mut du) = (vec![0f32; 10], vec![0f32; 10]);
        swiglu_backward(&g, &u, &da, &mut dg, &mut du);
        let f = |g: f32, u: f32| g / (1.0 + (-g).exp()) * u;
        for i in 0..10 {
            let e = 1e-3;
            let fd_g = (f(g[i] + e, u[i]) - f(g[i] - e, u[i])) / (2.0 * e);
            let fd_u = (f(g[i], u[i] + e) - f(g[i], u[i] - e)) / (2.0 * e);
            assert!((fd_g - dg[i]).abs() < 1e-2, "{fd_g} {}", dg[i]);
            assert!((fd_u - du[i]).abs() < 1e-2, "{fd_u} {}", du[i]);
        }
    }

    #[test]
    fn geglu_backward_matches_finite_differences() {
        let g: Vec<f64> = (0..12).map(|i| i as f64 / 2.0 - 3.0).collect();
        let u: Vec<f64> = (0..12).map(|i| 1.0 - i as f64 / 5.0).collect();
        let (g32, u32): (Vec<f32>, Vec<f32>) = g
            .iter()
            .zip(&u)
            .map(|(&a, &b)| (a as f32, b as f32))
            .unzip();
        let (mut dg, mut du) = (vec![0f32; 12], vec![0f32; 12]);
        geglu_backward(&g32, &u32, &[1f32; 12], &mut dg, &mut du);
        // f64 GELU(tanh) as PyTorch defines it.
        let f = |g: f64, u: f64| {
            0.5 * g
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (g + 0.044715 * g.powi(3))).tanh())
                * u
        };
        let mut out = vec![0f32; 12];
        geglu_rows(&g32, &u32, &mut out);
        for i in 0..12 {
            assert!((out[i] as f64 - f(g[i], u[i])).abs() < 1e-6, "value {i}");
            let e = 1e-6;
            let fd_g = (f(g[i] + e, u[i]) - f(g[i] - e, u[i])) / (2.0 * e);
            let fd_u = (f(g[i], u[i] + e) - f(g[i], u[i] - e)) / (2.0 * e);
            assert!((fd_g - dg[i] as f64).abs() < 1e-5, "{i}: {fd_g} {}", dg[i]);
            assert!((fd_u - du[i] as f64).abs() < 1e-5, "{i}: {fd_u} {}", du[i]);
        }
    }
}
