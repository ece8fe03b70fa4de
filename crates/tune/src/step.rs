//! One training micro-batch: the decoder's forward pass keeping what the backward pass
//! needs, the loss over the vocabulary in chunks, and back-propagation into the LoRA
//! matrices. The base weights stay frozen in their own format: the backward pass only
//! needs `dX = dY·W` through them ([`matmul_t`]), which reads every weight type.
//!
//! Determinism: every product is one of the kernels' (results independent of the thread
//! count and SIMD path), every row-wise operation runs on its row alone, and every sum
//! over rows (the LoRA weight gradients, the loss) runs in row order. So a micro-batch's
//! gradient is bit-identical on any number of threads.

use std::sync::Arc;

use verity_engine::Rope;
use verity_kernels::attention_train::{self, TrainShape};
use verity_kernels::backward::{matmul_at_b, matmul_t};
use verity_kernels::{get_row, matmul, WeightView};
use verity_model::arch::FfnActivation;
use verity_model::{Layer, Model, Proj};

use crate::lora::{LoraMat, LoraParams};
use crate::ops::{
    add_into, add_scaled_into, geglu_backward, geglu_rows, norm_backward_rows, norm_rows,
    par_elems, par_rows, swiglu_backward, swiglu_rows,
};
use crate::profile::{timed, Kind};
use crate::rng::{mix, purpose};

/// Rows of logits computed at once by the loss (bounded memory whatever the batch). Each
/// chunk reads and dequantizes the whole output matrix once more in the backward product,
/// so small chunks over a large vocabulary cost: at 48 MiB, Gemma 3's 262k-token vocabulary
/// gave chunks of 45 rows and the loss took 70 % of a step (256 MiB: 256 rows, 58 %).
/// Every row's result is the same whatever the chunk.
const LOSS_CHUNK_BYTES: usize = 256 << 20;

/// The rows of a micro-batch, every sequence's tokens back to back.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub tokens: Vec<u32>,
    /// Position of each row inside its example (RoPE restarts at every example).
    pub pos: Vec<usize>,
    /// `(start, len)` of each example: rows attend only inside their example.
    pub segments: Vec<(usize, usize)>,
    /// `(row, token)`: the hidden state of `row` predicts `token`.
    pub targets: Vec<(usize, u32)>,
}

impl Batch {
    /// Concatenate packed sequences.
    pub fn new(seqs: &[&crate::data::Packed]) -> Batch {
        let mut b = Batch::default();
        for s in seqs {
            let base = b.tokens.len();
            b.tokens.extend_from_slice(&s.tokens);
            b.pos.resize(base + s.tokens.len(), 0);
            for &(start, len) in &s.segments {
                b.segments.push((base + start, len));
                for i in 0..len {
                    b.pos[base + start + i] = i;
                }
                for i in 1..len {
                    if s.target[start + i] {
                        b.targets.push((base + start + i - 1, s.tokens[start + i]));
                    }
                }
            }
        }
        b
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// Which random dropout masks a micro-batch uses: (seed, optimizer step, micro-batch).
#[derive(Clone, Copy, Debug)]
pub struct DropoutKey {
    pub seed: u64,
    pub step: u64,
    pub micro: u64,
}

/// What the backward pass of one layer needs from its forward pass.
#[derive(Default)]
struct Acts {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The inputs of the per-head q/k norms, and of the post-attention and post-FFN norms,
    /// where the architecture has them (empty otherwise).
    q_pre: Vec<f32>,
    k_pre: Vec<f32>,
    attn_out_pre: Vec<f32>,
    ffn_out_pre: Vec<f32>,
    /// `A·x` of each adapted projection (indexed by `Proj as usize`).
    u: [Vec<f32>; 7],
}

/// Buffers reused between layers and steps.
#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    act: Vec<f32>,
    tmp: Vec<f32>,
    tmp2: Vec<f32>,
    dropped: Vec<f32>,
    d_q: Vec<f32>,
    d_k: Vec<f32>,
    d_v: Vec<f32>,
    d_attn: Vec<f32>,
    d_gate: Vec<f32>,
    d_up: Vec<f32>,
    d_h: Vec<f32>,
    /// Gradient of a post-norm's input (or a q/k norm's).
    d_pre: Vec<f32>,
    du: Vec<f32>,
    logits: Vec<f32>,
}

/// Computes gradients of the LoRA parameters for micro-batches of one base model.
pub struct Trainer {
    model: Arc<Model>,
    rope: Rope,
    /// The rotation of sliding-window layers (their own base, e.g. Gemma 3's).
    rope_window: Rope,
    /// Keep only each layer's input and recompute the rest in the backward pass.
    pub checkpointing: bool,
    scratch: Scratch,
}

/// The loss of one micro-batch: the sum over its targets, and their count.
#[derive(Clone, Copy, Debug, Default)]
pub struct MicroLoss {
    pub sum: f64,
    pub targets: usize,
}

fn f32_view(v: &[f32], rows: usize, cols: usize) -> WeightView<'_> {
    debug_assert_eq!(v.len(), rows * cols);
    // SAFETY: any f32 slice is valid as bytes; `F32` weight data is little-endian f32,
    // which is the in-memory layout on every target verity builds for.
    let data = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) };
    WeightView {
        ty: verity_formats::TensorType::F32,
        rows,
        cols,
        data,
    }
}

fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.resize(len, 0.0);
    &mut v[..len]
}

/// Whether the engine's forward pass can be differentiated here for this model. The
/// training graph composes the same features as the engine's (q/k norms, post-norms,
/// SwiGLU or GeGLU, scaled embeddings, sliding windows, layers without RoPE, fused
/// projections with one A per fused module); what it lacks is named.
pub fn check_supported(model: &Model) -> Result<(), String> {
    let hp = &model.hparams;
    let spec = hp.arch.spec();
    let name = hp.arch.gguf_name();
    if spec.moe {
        return Err(format!(
            "tuning {name} models is not supported yet: the training pass has no \
             mixture-of-experts layers; Llama, Mistral, SmolLM2/3, Qwen2/2.5/3, Gemma 3 \
             and Phi-3 bases are"
        ));
    }
    // Only gpt-oss (a mixture of experts, refused above) has these today; the check keeps
    // a future dense architecture with them from training without them.
    if spec.ffn == FfnActivation::SwigluOai || spec.attn_sinks || spec.attn_out_bias {
        return Err(format!(
            "tuning {name} models is not supported yet: the training pass has no clamped \
             SwiGLU, attention sinks or output-projection bias"
        ));
    }
    Ok(())
}

impl Trainer {
    pub fn new(model: Arc<Model>) -> Self {
        let rope = Rope::for_model(&model);
        let rope_window = Rope::for_window_layers(&model, 0);
        Trainer {
            model,
            rope,
            rope_window,
            checkpointing: false,
            scratch: Scratch::default(),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Forward and backward over `batch`: adds `∂(loss_sum · loss_scale)/∂θ` to `grads`
    /// (laid out as `params.values`) and returns the summed loss. With `grads` = None,
    /// only the loss (validation).
    pub fn run(
        &mut self,
        params: &LoraParams,
        batch: &Batch,
        loss_scale: f32,
        dropout: Option<DropoutKey>,
        grads: Option<&mut [f32]>,
    ) -> MicroLoss {
        let model = self.model.clone();
        let hp = &model.hparams;
        let w = &model.weights;
        let (n, d) = (batch.len(), hp.n_embd);
        // LongRoPE (Phi-3) rotates with its long factors once a sequence passes the
        // original context, as Hugging Face picks them per forward pass; the same for
        // every other model.
        let longest = batch.segments.iter().map(|s| s.1).max().unwrap_or(0);
        self.rope = Rope::for_context(&model, longest);
        self.rope_window = Rope::for_window_layers(&model, longest);
        let dropout = dropout.filter(|_| params.spec.dropout > 0.0 && grads.is_some());
        let ctx = Ctx {
            params,
            batch,
            dropout,
        };

        // Inputs of every layer (the residual stream), plus the final output.
        let mut xs: Vec<Vec<f32>> = Vec::with_capacity(hp.n_layer + 1);
        let mut x0 = vec![0f32; n * d];
        let embd = w.token_embd.view();
        par_rows(&mut x0, d, &|r, row| {
            get_row(&embd, batch.tokens[r] as usize, row)
        });
        if hp.arch.spec().embed_scale_sqrt_dim {
            // As the engine scales them (Gemma); the embeddings are frozen, so the backward
            // pass stops at the first layer's input.
            let sc = (d as f32).sqrt();
            x0.iter_mut().for_each(|v| *v *= sc);
        }
        xs.push(x0);
        let keep_acts = grads.is_some() && !self.checkpointing;
        let mut saved: Vec<Acts> = Vec::new();
        for l in 0..hp.n_layer {
            let mut acts = Acts::default();
            let mut x_out = vec![0f32; n * d];
            self.layer_forward(&ctx, l, &xs[l], &mut acts, &mut x_out);
            if keep_acts {
                saved.push(acts);
            }
            xs.push(x_out);
        }

        let mut dx = if grads.is_some() {
            vec![0f32; n * d]
        } else {
            Vec::new()
        };
        let loss = self.loss(
            &xs[hp.n_layer],
            batch,
            loss_scale,
            grads.is_some().then_some(&mut dx[..]),
        );
        let Some(grads) = grads else {
            return loss;
        };
        for l in (0..hp.n_layer).rev() {
            let acts = if keep_acts {
                saved.pop().expect("one per layer")
            } else {
                let mut acts = Acts::default();
                let mut x_out = std::mem::take(&mut self.scratch.tmp2);
                x_out.resize(n * d, 0.0);
                self.layer_forward(&ctx, l, &xs[l], &mut acts, &mut x_out);
                self.scratch.tmp2 = x_out;
                acts
            };
            xs.truncate(l + 1);
            self.layer_backward(&ctx, l, &xs[l], &acts, &mut dx, grads);
        }
        loss
    }

    fn layer_forward(
        &mut self,
        ctx: &Ctx,
        l: usize,
        x_in: &[f32],
        a: &mut Acts,
        x_out: &mut [f32],
    ) {
        let hp = &self.model.hparams;
        let layer: &Layer = &self.model.weights.layers[l];
        let n = ctx.batch.len();
        let (d, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let s = &mut self.scratch;

        let h = sized(&mut s.h, n * d);
        norm_rows(x_in, &layer.attn_norm, hp.rms_eps, h);
        let h = &s.h[..n * d];
        for (proj, wt, bias, out, dim) in [
            (Proj::Q, &layer.wq, &layer.bq, &mut a.q, qd),
            (Proj::K, &layer.wk, &layer.bk, &mut a.k, kvd),
            (Proj::V, &layer.wv, &layer.bv, &mut a.v, kvd),
        ] {
            let y = sized(out, n * dim);
            project(
                ctx,
                l,
                proj,
                wt,
                h,
                y,
                &mut a.u[proj as usize],
                &mut s.tmp,
                &mut s.dropped,
            );
            if let Some(b) = bias {
                par_rows(y, dim, &|_, row| {
                    row.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv)
                });
            }
        }
        for (norm, y, pre) in [
            (&layer.q_norm, &mut a.q, &mut a.q_pre),
            (&layer.k_norm, &mut a.k, &mut a.k_pre),
        ] {
            if let Some(wn) = norm {
                // Per head (Qwen3, Gemma 3): rows of head_dim.
                pre.clone_from(y);
                norm_rows(pre, wn, hp.rms_eps, y);
            }
        }
        if let Some(rope) = layer_rope(hp, l, &self.rope, &self.rope_window) {
            let pos = &ctx.batch.pos;
            par_rows(&mut a.q, qd, &|r, row| rope.apply(row, pos[r]));
            par_rows(&mut a.k, kvd, &|r, row| rope.apply(row, pos[r]));
        }
        let shape = train_shape(hp, l);
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        sized(&mut a.attn, n * qd);
        sized(&mut a.lse, n * hp.n_head);
        let af = attn_flops(&ctx.batch.segments, hp.n_head, hp.head_dim);
        timed(Kind::Attention, af, || {
            attention_train::forward(
                &a.q,
                &a.k,
                &a.v,
                &ctx.batch.segments,
                shape,
                scale,
                &mut a.attn,
                &mut a.lse,
            )
        });
        let o = match layer.post_attn_norm {
            Some(_) => &mut a.attn_out_pre,
            None => &mut a.x_mid,
        };
        let o = sized(o, n * d);
        project(
            ctx,
            l,
            Proj::O,
            &layer.wo,
            &a.attn,
            o,
            &mut a.u[Proj::O as usize],
            &mut s.tmp,
            &mut s.dropped,
        );
        if let Some(wn) = &layer.post_attn_norm {
            norm_rows(&a.attn_out_pre, wn, hp.rms_eps, sized(&mut a.x_mid, n * d));
        }
        add_into(&mut a.x_mid, x_in);

        let h = sized(&mut s.h, n * d);
        norm_rows(&a.x_mid, &layer.ffn_norm, hp.rms_eps, h);
        let h = &s.h[..n * d];
        for (proj, wt, out) in [
            (Proj::Gate, &layer.w_gate, &mut a.gate),
            (Proj::Up, &layer.w_up, &mut a.up),
        ] {
            let y = sized(out, n * ff);
            project(
                ctx,
                l,
                proj,
                wt,
                h,
                y,
                &mut a.u[proj as usize],
                &mut s.tmp,
                &mut s.dropped,
            );
        }
        let act = sized(&mut s.act, n * ff);
        gated_rows(hp.arch.spec().ffn, &a.gate, &a.up, act);
        let y = match layer.post_ffn_norm {
            Some(_) => sized(&mut a.ffn_out_pre, n * d),
            None => &mut *x_out,
        };
        project(
            ctx,
            l,
            Proj::Down,
            &layer.w_down,
            &s.act[..n * ff],
            y,
            &mut a.u[Proj::Down as usize],
            &mut s.tmp,
            &mut s.dropped,
        );
        if let Some(wn) = &layer.post_ffn_norm {
            norm_rows(&a.ffn_out_pre, wn, hp.rms_eps, x_out);
        }
        add_into(x_out, &a.x_mid);
    }

    /// `dx` holds the gradient of the layer's output; on return, of its input.
    fn layer_backward(
        &mut self,
        ctx: &Ctx,
        l: usize,
        x_in: &[f32],
        a: &Acts,
        dx: &mut [f32],
        grads: &mut [f32],
    ) {
        let hp = &self.model.hparams;
        let layer: &Layer = &self.model.weights.layers[l];
        let n = ctx.batch.len();
        let (d, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let s = &mut self.scratch;

        // Feed-forward block: x_out = x_mid + post_norm(W_down·(act(W_gate·h2) ⊙ W_up·h2)),
        // act = silu (SwiGLU) or tanh-GELU (GeGLU); post_norm only where the arch has it.
        let ffn = self.model.hparams.arch.spec().ffn;
        let act = sized(&mut s.act, n * ff);
        gated_rows(ffn, &a.gate, &a.up, act);
        let dy: &[f32] = match &layer.post_ffn_norm {
            Some(wn) => {
                let dp = sized(&mut s.d_pre, n * d);
                dp.fill(0.0);
                norm_backward_rows(&a.ffn_out_pre, wn, hp.rms_eps, dx, dp);
                &s.d_pre[..n * d]
            }
            None => dx,
        };
        let d_act = sized(&mut s.d_attn, n * ff);
        timed(Kind::Backward, flops(&layer.w_down, n), || {
            matmul_t(&layer.w_down.view(), dy, n, d_act)
        });
        lora_backward(
            ctx,
            l,
            Proj::Down,
            &s.act[..n * ff],
            dy,
            &a.u[Proj::Down as usize],
            &mut s.d_attn[..n * ff],
            grads,
            &mut s.du,
            &mut s.tmp,
            &mut s.dropped,
        );
        let d_gate = sized(&mut s.d_gate, n * ff);
        let d_up = sized(&mut s.d_up, n * ff);
        match ffn {
            FfnActivation::Silu => {
                swiglu_backward(&a.gate, &a.up, &s.d_attn[..n * ff], d_gate, d_up)
            }
            FfnActivation::GeluTanh => {
                geglu_backward(&a.gate, &a.up, &s.d_attn[..n * ff], d_gate, d_up)
            }
            FfnActivation::SwigluOai => unreachable!("check_supported refuses gpt-oss"),
        }
        let h2 = sized(&mut s.h, n * d);
        norm_rows(&a.x_mid, &layer.ffn_norm, hp.rms_eps, h2);
        let d_h = sized(&mut s.d_h, n * d);
        timed(Kind::Backward, flops(&layer.w_gate, n), || {
            matmul_t(&layer.w_gate.view(), &s.d_gate[..n * ff], n, d_h)
        });
        let tmp2 = sized(&mut s.tmp2, n * d);
        timed(Kind::Backward, flops(&layer.w_up, n), || {
            matmul_t(&layer.w_up.view(), &s.d_up[..n * ff], n, tmp2)
        });
        add_into(&mut s.d_h[..n * d], &s.tmp2[..n * d]);
        for (proj, dy) in [(Proj::Gate, &s.d_gate), (Proj::Up, &s.d_up)] {
            lora_backward(
                ctx,
                l,
                proj,
                &s.h[..n * d],
                &dy[..n * ff],
                &a.u[proj as usize],
                &mut s.d_h[..n * d],
                grads,
                &mut s.du,
                &mut s.tmp,
                &mut s.dropped,
            );
        }
        norm_backward_rows(&a.x_mid, &layer.ffn_norm, hp.rms_eps, &s.d_h[..n * d], dx);

        // Attention block: x_mid = x_in + post_norm(W_o·attention(rope(qn(W_q·h1)),
        // rope(kn(W_k·h1)), W_v·h1)), with the post-norm, q/k norms (qn, kn) and rotation
        // where the arch and layer have them.
        let dy: &[f32] = match &layer.post_attn_norm {
            Some(wn) => {
                let dp = sized(&mut s.d_pre, n * d);
                dp.fill(0.0);
                norm_backward_rows(&a.attn_out_pre, wn, hp.rms_eps, dx, dp);
                &s.d_pre[..n * d]
            }
            None => dx,
        };
        let d_attn = sized(&mut s.d_attn, n * qd);
        timed(Kind::Backward, flops(&layer.wo, n), || {
            matmul_t(&layer.wo.view(), dy, n, d_attn)
        });
        lora_backward(
            ctx,
            l,
            Proj::O,
            &a.attn,
            dy,
            &a.u[Proj::O as usize],
            &mut s.d_attn[..n * qd],
            grads,
            &mut s.du,
            &mut s.tmp,
            &mut s.dropped,
        );
        let shape = train_shape(hp, l);
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        sized(&mut s.d_q, n * qd);
        sized(&mut s.d_k, n * kvd);
        sized(&mut s.d_v, n * kvd);
        let af = attn_flops(&ctx.batch.segments, hp.n_head, hp.head_dim);
        timed(Kind::AttentionBackward, af * 5 / 2, || {
            attention_train::backward(
                &a.q,
                &a.k,
                &a.v,
                &a.attn,
                &a.lse,
                &s.d_attn[..n * qd],
                &ctx.batch.segments,
                shape,
                scale,
                &mut s.d_q,
                &mut s.d_k,
                &mut s.d_v,
            )
        });
        if let Some(rope) = layer_rope(hp, l, &self.rope, &self.rope_window) {
            let pos = &ctx.batch.pos;
            par_rows(&mut s.d_q, qd, &|r, row| rope.apply_inverse(row, pos[r]));
            par_rows(&mut s.d_k, kvd, &|r, row| rope.apply_inverse(row, pos[r]));
        }
        for (norm, pre, dy) in [
            (&layer.q_norm, &a.q_pre, &mut s.d_q),
            (&layer.k_norm, &a.k_pre, &mut s.d_k),
        ] {
            if let Some(wn) = norm {
                let dp = sized(&mut s.d_pre, pre.len());
                dp.fill(0.0);
                norm_backward_rows(pre, wn, hp.rms_eps, dy, dp);
                std::mem::swap(dy, &mut s.d_pre);
            }
        }
        let h1 = sized(&mut s.h, n * d);
        norm_rows(x_in, &layer.attn_norm, hp.rms_eps, h1);
        let d_h = sized(&mut s.d_h, n * d);
        timed(Kind::Backward, flops(&layer.wq, n), || {
            matmul_t(&layer.wq.view(), &s.d_q, n, d_h)
        });
        for (wt, dy) in [(&layer.wk, &s.d_k), (&layer.wv, &s.d_v)] {
            let t = sized(&mut s.tmp2, n * d);
            timed(Kind::Backward, flops(wt, n), || {
                matmul_t(&wt.view(), dy, n, t)
            });
            add_into(&mut s.d_h[..n * d], &s.tmp2[..n * d]);
        }
        for (proj, dy) in [(Proj::Q, &s.d_q), (Proj::K, &s.d_k), (Proj::V, &s.d_v)] {
            lora_backward(
                ctx,
                l,
                proj,
                &s.h[..n * d],
                dy,
                &a.u[proj as usize],
                &mut s.d_h[..n * d],
                grads,
                &mut s.du,
                &mut s.tmp,
                &mut s.dropped,
            );
        }
        norm_backward_rows(x_in, &layer.attn_norm, hp.rms_eps, &s.d_h[..n * d], dx);
    }

    /// Cross-entropy of every target, in chunks of rows: logits of one chunk at a time.
    /// With `dx`, adds the gradient of `loss_scale · Σ loss` w.r.t. the last hidden state.
    fn loss(
        &mut self,
        x: &[f32],
        batch: &Batch,
        loss_scale: f32,
        mut dx: Option<&mut [f32]>,
    ) -> MicroLoss {
        let model = self.model.clone();
        let hp = &model.hparams;
        let w = &model.weights;
        let (d, nv) = (hp.n_embd, hp.n_vocab);
        let out_w = w.output().view();
        let chunk = (LOSS_CHUNK_BYTES / (nv * 4)).clamp(1, 512);
        let s = &mut self.scratch;
        let mut total = 0f64;
        for part in batch.targets.chunks(chunk) {
            let c = part.len();
            let rows = sized(&mut s.tmp2, c * d);
            for (i, &(r, _)) in part.iter().enumerate() {
                rows[i * d..(i + 1) * d].copy_from_slice(&x[r * d..(r + 1) * d]);
            }
            let h = sized(&mut s.h, c * d);
            norm_rows(&s.tmp2[..c * d], &w.output_norm, hp.rms_eps, h);
            let logits = sized(&mut s.logits, c * nv);
            timed(Kind::Loss, 2 * (c * d * nv) as u64, || {
                matmul(&out_w, &s.h[..c * d], c, logits)
            });
            // Per row: loss, and logits turned into their gradient in place.
            let mut losses = vec![0f64; c];
            {
                let lp = losses.as_mut_ptr() as usize;
                par_rows(logits, nv, &|i, row| {
                    let target = part[i].1 as usize;
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
                    let lse = m as f64 + sum.ln();
                    // SAFETY: each row index is written by exactly one task.
                    unsafe { *(lp as *mut f64).add(i) = lse - row[target] as f64 };
                    for v in row.iter_mut() {
                        *v = (((*v as f64) - lse).exp() as f32) * loss_scale;
                    }
                    row[target] -= loss_scale;
                });
            }
            total += losses.iter().sum::<f64>();
            if let Some(dx) = dx.as_deref_mut() {
                timed(Kind::Loss, 2 * (c * d * nv) as u64, || {
                    vocab_transpose_product(
                        &out_w,
                        &s.logits[..c * nv],
                        c,
                        &mut s.d_h,
                        &mut s.du,
                        &mut s.act,
                    )
                });
                let dxc = sized(&mut s.tmp, c * d);
                dxc.fill(0.0);
                norm_backward_rows(
                    &s.tmp2[..c * d],
                    &w.output_norm,
                    hp.rms_eps,
                    &s.d_h[..c * d],
                    dxc,
                );
                for (i, &(r, _)) in part.iter().enumerate() {
                    let src = &s.tmp[i * d..(i + 1) * d];
                    dx[r * d..(r + 1) * d]
                        .iter_mut()
                        .zip(src)
                        .for_each(|(a, &b)| *a += b);
                }
            }
        }
        MicroLoss {
            sum: total,
            targets: batch.targets.len(),
        }
    }
}

/// The rotation layer `l` applies, if any (SmolLM3 leaves some layers unrotated):
/// `window` for sliding-window layers, `global` for the others.
fn layer_rope<'r>(
    hp: &verity_model::HParams,
    l: usize,
    global: &'r Rope,
    window: &'r Rope,
) -> Option<&'r Rope> {
    if hp.no_rope.get(l).copied().unwrap_or(false) {
        None
    } else if hp.layer_window(l).is_some() {
        Some(window)
    } else {
        Some(global)
    }
}

/// The attention shape of layer `l` (its sliding window, if it has one).
fn train_shape(hp: &verity_model::HParams, l: usize) -> TrainShape {
    TrainShape {
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
        window: hp.layer_window(l).unwrap_or(0),
    }
}

/// The gated activation `act(gate) ⊙ up` of the arch's feed-forward kind.
fn gated_rows(ffn: FfnActivation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match ffn {
        FfnActivation::Silu => swiglu_rows(gate, up, out),
        FfnActivation::GeluTanh => geglu_rows(gate, up, out),
        FfnActivation::SwigluOai => unreachable!("check_supported refuses gpt-oss"),
    }
}

/// Multiply-adds ×2 of a product with `w` over `n` rows.
fn flops(w: &verity_model::Tensor, n: usize) -> u64 {
    2 * (w.rows * w.cols * n) as u64
}

/// Multiply-adds ×2 of causal attention's two products over `segments`.
fn attn_flops(segments: &[(usize, usize)], n_head: usize, head_dim: usize) -> u64 {
    let pairs: u64 = segments
        .iter()
        .map(|&(_, l)| (l * (l + 1) / 2) as u64)
        .sum();
    4 * pairs * (n_head * head_dim) as u64
}

/// Rows of the output matrix per block of [`vocab_transpose_product`].
const VOCAB_BLOCK: usize = 1024;

/// `dh = dl·W` for the output matrix (`dl`: `[c][n_vocab]`): a sum over the whole
/// vocabulary, where softmax terms cancel the target's. One f32 chain of 50k–150k terms
/// loses ~1e-3 relative accuracy, so the product runs per block of vocabulary rows and
/// the blocks' partial sums are added in f64 (in block order: still deterministic).
fn vocab_transpose_product(
    w: &WeightView,
    dl: &[f32],
    c: usize,
    dh: &mut Vec<f32>,
    part: &mut Vec<f32>,
    block: &mut Vec<f32>,
) {
    let (nv, d) = (w.rows, w.cols);
    let rb = w.row_bytes();
    let mut acc = vec![0f64; c * d];
    for v0 in (0..nv).step_by(VOCAB_BLOCK) {
        let v1 = (v0 + VOCAB_BLOCK).min(nv);
        let bw = WeightView {
            ty: w.ty,
            rows: v1 - v0,
            cols: d,
            data: &w.data[v0 * rb..v1 * rb],
        };
        let blk = sized(block, c * (v1 - v0));
        for i in 0..c {
            blk[i * (v1 - v0)..(i + 1) * (v1 - v0)].copy_from_slice(&dl[i * nv + v0..i * nv + v1]);
        }
        let p = sized(part, c * d);
        matmul_t(&bw, blk, c, p);
        acc.iter_mut()
            .zip(p.iter())
            .for_each(|(a, &x)| *a += x as f64);
    }
    let dh = sized(dh, c * d);
    dh.iter_mut().zip(&acc).for_each(|(o, &a)| *o = a as f32);
}

/// What every layer function reads.
struct Ctx<'a> {
    params: &'a LoraParams,
    batch: &'a Batch,
    dropout: Option<DropoutKey>,
}

impl Ctx<'_> {
    fn mat(&self, l: usize, proj: Proj) -> Option<&LoraMat> {
        self.params.mat(l, proj)
    }

    /// The LoRA input after dropout (`x` itself without dropout).
    fn dropped<'b>(&self, m: &LoraMat, x: &'b [f32], buf: &'b mut Vec<f32>) -> &'b [f32] {
        let Some(key) = self.dropout else { return x };
        let p = self.params.spec.dropout;
        let keep = 1.0 / (1.0 - p);
        let threshold = (p * 65536.0) as u32;
        let k = [
            purpose::DROPOUT,
            key.step,
            key.micro,
            m.layer as u64,
            // One mask for the input of a fused module's parts (PEFT drops x once).
            m.a_owner as u64,
        ]
        .iter()
        .fold(mix(key.seed), |k, &id| mix(k ^ id));
        let out = sized(buf, x.len());
        par_elems(out, &|base, o| {
            for (i, v) in o.iter_mut().enumerate() {
                let idx = (base + i) as u64;
                let bits = mix(k ^ (idx >> 2)) >> ((idx & 3) * 16) & 0xffff;
                *v = if (bits as u32) < threshold {
                    0.0
                } else {
                    x[base + i] * keep
                };
            }
        });
        &buf[..x.len()]
    }
}

/// `y = W·x + scale · B·(A·drop(x))`: the base product of projection `proj` and its
/// adapter, if it has one.
#[allow(clippy::too_many_arguments)]
fn project(
    ctx: &Ctx,
    l: usize,
    proj: Proj,
    w: &verity_model::Tensor,
    x: &[f32],
    y: &mut [f32],
    u: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    drop_buf: &mut Vec<f32>,
) {
    let n = ctx.batch.len();
    timed(Kind::Forward, flops(w, n), || matmul(&w.view(), x, n, y));
    lora_forward(ctx, l, proj, x, y, u, tmp, drop_buf);
}

/// `y += scale · B·(A·drop(x))`; keeps `u = A·drop(x)` for the backward pass.
#[allow(clippy::too_many_arguments)]
fn lora_forward(
    ctx: &Ctx,
    l: usize,
    proj: Proj,
    x: &[f32],
    y: &mut [f32],
    u: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    drop_buf: &mut Vec<f32>,
) {
    let Some(m) = ctx.mat(l, proj) else { return };
    timed(Kind::Lora, 0, || {
        lora_forward_in(ctx, m, x, y, u, tmp, drop_buf)
    })
}

fn lora_forward_in(
    ctx: &Ctx,
    m: &LoraMat,
    x: &[f32],
    y: &mut [f32],
    u: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    drop_buf: &mut Vec<f32>,
) {
    let n = ctx.batch.len();
    let p = &ctx.params.values;
    let xd = ctx.dropped(m, x, drop_buf);
    let u = sized(u, n * m.rank);
    matmul(&f32_view(&p[m.a_range()], m.rank, m.in_dim), xd, n, u);
    // B·u as u·Bᵀ: a chain over the rank per output, vectorised over B's rows (a dot
    // product of rank length per output would be mostly reduction overhead).
    let bt = transposed(&p[m.b_range()], m.out_dim, m.rank, drop_buf);
    let t = sized(tmp, n * m.out_dim);
    matmul_t(&f32_view(bt, m.rank, m.out_dim), u, n, t);
    add_scaled_into(y, t, m.scale);
}

/// `v` (`rows × cols`) transposed into `buf`.
fn transposed<'b>(v: &[f32], rows: usize, cols: usize, buf: &'b mut Vec<f32>) -> &'b [f32] {
    let t = sized(buf, rows * cols);
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = v[r * cols + c];
        }
    }
    t
}

/// Back through `y += s·B·(A·drop(x))` given `dy`: adds to the A and B gradients and to
/// `dx`.
#[allow(clippy::too_many_arguments)]
fn lora_backward(
    ctx: &Ctx,
    l: usize,
    proj: Proj,
    x: &[f32],
    dy: &[f32],
    u: &[f32],
    dx: &mut [f32],
    grads: &mut [f32],
    du: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    drop_buf: &mut Vec<f32>,
) {
    let Some(m) = ctx.mat(l, proj) else { return };
    timed(Kind::Lora, 0, || {
        lora_backward_in(ctx, m, x, dy, u, dx, grads, du, tmp, drop_buf)
    })
}

#[allow(clippy::too_many_arguments)]
fn lora_backward_in(
    ctx: &Ctx,
    m: &LoraMat,
    x: &[f32],
    dy: &[f32],
    u: &[f32],
    dx: &mut [f32],
    grads: &mut [f32],
    du: &mut Vec<f32>,
    tmp: &mut Vec<f32>,
    drop_buf: &mut Vec<f32>,
) {
    let n = ctx.batch.len();
    let p = &ctx.params.values;
    let (r, s) = (m.rank, m.scale);
    // dB = s · dyᵀ·u
    let t = sized(tmp, m.out_dim * r);
    matmul_at_b(dy, u, n, m.out_dim, r, t);
    for (g, &v) in grads[m.b_range()].iter_mut().zip(t.iter()) {
        *g += s * v;
    }
    // du = s · dy·B
    let bt = transposed(&p[m.b_range()], m.out_dim, r, drop_buf);
    let du = sized(du, n * r);
    matmul(&f32_view(bt, r, m.out_dim), dy, n, du);
    du.iter_mut().for_each(|v| *v *= s);
    // dA = duᵀ·drop(x)
    let xd = ctx.dropped(m, x, drop_buf);
    let t = sized(tmp, r * m.in_dim);
    matmul_at_b(du, xd, n, r, m.in_dim, t);
    for (g, &v) in grads[m.a_range()].iter_mut().zip(t.iter()) {
        *g += v;
    }
    // dx += drop'(du·A)
    let t = sized(tmp, n * m.in_dim);
    matmul_t(&f32_view(&p[m.a_range()], r, m.in_dim), du, n, t);
    // Dropout (zeroing and rescaling by a fixed mask) is linear: its transpose is the
    // same mask, applied by dropping the gradient with the same key.
    let masked = ctx.dropped(m, t, drop_buf);
    add_into(dx, masked);
}
