//! Small elementwise operations of the transformer block.

use verity_kernels::{matmul, matvec_many, WeightView};

/// Sum of squares as ggml computes it: f32 products accumulated in f64. Matching its
/// rounding matters: activations are quantized next, and a last-bit difference can flip
/// a rounding there. The f64 sum runs in 8 fixed lanes (element `i` to lane `i % 8`, the
/// lanes then added in order): one serial chain of f64 additions cost 4 % of a 1B model's
/// prompt time, and an f64 sum differs from ggml's serial one far below an f32's last bit.
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += (v * v) as f64;
        }
    }
    for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
        *l += (v * v) as f64;
    }
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// `1 / rms(x)`, with `eps` added to the mean square: the factor RMS norm scales a row by.
pub fn rms_scale(x: &[f32], eps: f32) -> f32 {
    1.0 / ((sum_of_squares(x) / x.len() as f64) as f32 + eps).sqrt()
}

/// `out = x / rms(x) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let scale = rms_scale(x, eps);
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// In-place RMSNorm (for per-head q/k norms).
pub fn rms_norm_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (v, &g) in x.iter_mut().zip(w) {
        *v = *v * scale * g;
    }
}

/// SwiGLU: `gate = silu(gate) * up`, with ggml's vector exponential on every path.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    verity_kernels::activation::silu_mul(gate, up);
}

/// gpt-oss's clamped SwiGLU, as ggml's `swiglu_oai` computes it: the gate clamped
/// above at 7, up to ±7, `gate · σ(1.702 · gate) · (up + 1)`.
pub fn swiglu_oai(gate: &mut [f32], up: &[f32]) {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = g.min(LIMIT);
        let y = u.clamp(-LIMIT, LIMIT);
        *g = x / (1.0 + (ALPHA * -x).exp()) * (y + 1.0);
    }
}

/// The gated FFN's activation in place: `gate = act(gate, up)`.
pub fn glu(kind: verity_model::arch::FfnActivation, gate: &mut [f32], up: &[f32]) {
    use verity_model::arch::FfnActivation;
    match kind {
        FfnActivation::Silu => swiglu(gate, up),
        FfnActivation::GeluTanh => geglu(gate, up),
        FfnActivation::SwigluOai => swiglu_oai(gate, up),
    }
}

/// GeGLU as ggml computes it: `gelu(gate) * up` with GELU's tanh form read from a table
/// of every f16 input (ggml's `GGML_GELU_FP16`): the gate rounded to f16, the GELU
/// rounded to f16; exact 0 and identity beyond ±10.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    let table = gelu_table();
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        let a = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x
        } else {
            table[half::f16::from_f32(x).to_bits() as usize]
        };
        *g = a * u;
    }
}

fn gelu_table() -> &'static [f32] {
    static TABLE: std::sync::OnceLock<Vec<f32>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                let y = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
                half::f16::from_f32(y).to_f32()
            })
            .collect()
    })
}

/// Multiply every element by `k`.
pub fn scale_in_place(x: &mut [f32], k: f32) {
    for v in x {
        *v *= k;
    }
}

pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Add `bias` (when there is one) to every `width`-long row of `buf`.
pub fn add_bias_rows(buf: &mut [f32], width: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in buf.chunks_exact_mut(width) {
            add_in_place(row, b);
        }
    }
}

/// `ys[i] = ws[i] · h` for the `n` rows of `h`. Decoding (`n` = 1) runs them as one
/// parallel region: each region ends waiting for its slowest thread, and the products
/// that share an input (Q, K, V; gate, up) are small. Same results either way.
pub fn products(ws: &[WeightView], h: &[f32], n: usize, ys: &mut [&mut [f32]]) {
    if n == 1 {
        matvec_many(ws, h, ys);
    } else {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul(w, h, n, y);
        }
    }
}

/// Run `f(row, buf_row)` over the rows (`width` elements each) of `buf`, in parallel
/// when there are enough of them (a prompt chunk); a one-row decode step stays on the
/// calling thread.
pub fn par_rows(buf: &mut [f32], width: usize, f: &(dyn Fn(usize, &mut [f32]) + Sync)) {
    let n = buf.len() / width.max(1);
    if n < 32 {
        for (r, row) in buf.chunks_exact_mut(width).enumerate() {
            f(r, row);
        }
        return;
    }
    let per_task = n.div_ceil(verity_pool::num_threads() * 4).max(1);
    verity_pool::for_each_chunk_mut(buf, per_task * width, &|t, chunk| {
        for (i, row) in chunk.chunks_exact_mut(width).enumerate() {
            f(t * per_task + i, row);
        }
    });
}

/// Rotary position embedding for one head size.
pub struct Rope {
    /// Ratio between successive pairs' frequencies: theta^(-2/d).
    step: f32,
    freq_scale: f32,
    /// Per-pair frequency divisors (Llama 3 scaling), or all ones.
    factors: Vec<f32>,
    neox: bool,
    /// Multiplies cos and sin (LongRoPE's attention factor); 1.0 otherwise.
    mscale: f32,
    /// Elements per head: the rotated dimensions come first, the rest pass through.
    stride: usize,
    /// YaRN's ramp between interpolated and extrapolated pairs: its first and last pair.
    yarn_ramp: Option<(f32, f32)>,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        theta: f32,
        freq_scale: f32,
        factors: Option<&[f32]>,
        neox: bool,
    ) -> Self {
        let factors = (0..head_dim / 2)
            .map(|i| factors.and_then(|f| f.get(i)).copied().unwrap_or(1.0))
            .collect();
        Rope {
            step: theta.powf(-2.0 / head_dim as f32),
            freq_scale,
            factors,
            neox,
            mscale: 1.0,
            stride: head_dim,
            yarn_ramp: None,
        }
    }

    /// The rotation of `model`'s attention (head size, base, scaling, layout).
    pub fn for_model(model: &verity_model::Model) -> Self {
        Self::for_context(model, 0)
    }

    /// [`Rope::for_model`] for sequences of up to `n_ctx` positions (LongRoPE picks its
    /// factors by context length).
    pub fn for_context(model: &verity_model::Model, n_ctx: usize) -> Self {
        let hp = &model.hparams;
        Self::scaled(hp, hp.rope_theta, model.weights.rope_freqs_for(hp, n_ctx))
    }

    /// The rotation of `model`'s sliding-window layers for sequences of up to `n_ctx`
    /// positions: their own base, unscaled unless the architecture scales them as the
    /// others (gpt-oss, Mistral).
    pub fn for_window_layers(model: &verity_model::Model, n_ctx: usize) -> Self {
        let hp = &model.hparams;
        if hp.arch.spec().window_rope_scaled {
            Self::scaled(
                hp,
                hp.rope_theta_window,
                model.weights.rope_freqs_for(hp, n_ctx),
            )
        } else {
            Self::for_heads(hp, hp.rope_theta_window, 1.0, None)
        }
    }

    /// `hp`'s rotation at base `theta` with its scaling: linear, per-pair factors, the
    /// attention factor, and YaRN as llama.cpp applies it (its extrapolation factor 1,
    /// cos and sin scaled by `attn_factor · (1 + 0.1 ln(factor))`, with llama.cpp's
    /// cancelling of its own `get_mscale` kept, so the rounding is the same).
    fn scaled(hp: &verity_model::HParams, theta: f32, factors: Option<&[f32]>) -> Self {
        let mut rope = Self::for_heads(hp, theta, hp.rope_freq_scale, factors);
        rope.mscale = hp.rope_attn_factor;
        if let Some(y) = &hp.yarn {
            let factor = 1.0 / hp.rope_freq_scale;
            let get_mscale = 0.1 * factor.ln() + 1.0;
            let attn_factor = get_mscale * (1.0 / (1.0 + 0.1 * factor.ln())) * hp.rope_attn_factor;
            rope.mscale = attn_factor * (1.0 + 0.1 * (1.0 / hp.rope_freq_scale).ln());
            rope.yarn_ramp = Some(y.correction_dims(hp.n_rot, theta));
        }
        rope
    }

    /// A rotation of the first `n_rot` dimensions of `hp`'s heads.
    fn for_heads(
        hp: &verity_model::HParams,
        theta: f32,
        freq_scale: f32,
        factors: Option<&[f32]>,
    ) -> Self {
        let neox = hp.rope_style == verity_model::RopeStyle::NeoX;
        let mut rope = Rope::new(hp.n_rot, theta, freq_scale, factors, neox);
        rope.stride = hp.head_dim;
        rope
    }

    /// Rotate every head of `x` (heads of `2 * factors.len()` values) for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, false)
    }

    /// Rotate back (the transpose of [`Rope::apply`], which is its inverse): what the
    /// backward pass applies to a gradient.
    pub fn apply_inverse(&self, x: &mut [f32], pos: usize) {
        self.rotate(x, pos, true)
    }

    fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let half = self.factors.len();
        // The angle is built as ggml builds it (position times repeated multiplication by
        // the step, then scaled), so that it rounds the same way.
        let mut angles = [(0f32, 0f32); 256];
        let mut base = pos as f32;
        for (i, &ff) in self.factors.iter().enumerate().take(256) {
            let theta = match self.yarn_ramp {
                None => self.freq_scale * base / ff,
                Some((low, high)) => {
                    let extrap = base / ff;
                    let interp = self.freq_scale * extrap;
                    let y = (i as f32 - low) / (high - low).max(0.001);
                    let mix = 1.0 - y.clamp(0.0, 1.0);
                    interp * (1.0 - mix) + extrap * mix
                }
            };
            let (sin, cos) = theta.sin_cos();
            let (sin, cos) = if self.mscale == 1.0 {
                (sin, cos)
            } else {
                (sin * self.mscale, cos * self.mscale)
            };
            angles[i] = (if inverse { -sin } else { sin }, cos);
            base *= self.step;
        }
        for head in x.chunks_exact_mut(self.stride) {
            for (i, &(sin, cos)) in angles.iter().enumerate().take(half) {
                let (a, b) = if self.neox {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos - x1 * sin;
                head[b] = x0 * sin + x1 * cos;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_at_zero_is_identity() {
        let r = Rope::new(8, 10000.0, 1.0, None, false);
        let mut x: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let y = x.clone();
        r.apply(&mut x, 0);
        assert_eq!(x, y);
    }

    #[test]
    fn rope_inverse_undoes_it() {
        let r = Rope::new(8, 10000.0, 1.0, None, true);
        let x: Vec<f32> = (0..8).map(|i| (i as f32).cos()).collect();
        let mut y = x.clone();
        r.apply(&mut y, 33);
        r.apply_inverse(&mut y, 33);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_preserves_norm() {
        for neox in [false, true] {
            let r = Rope::new(8, 10000.0, 1.0, None, neox);
            let mut x: Vec<f32> = (0..8).map(|i| (i as f32).sin()).collect();
            let n0: f32 = x.iter().map(|v| v * v).sum();
            r.apply(&mut x, 17);
            let n1: f32 = x.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-4);
        }
    }
}
