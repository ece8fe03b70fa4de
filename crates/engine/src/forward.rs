//! The forward pass of a Llama-family decoder over a KV cache.

use std::cell::RefCell;
use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use verity_kernels::{get_row, matmul};
use verity_model::{Model, RopeStyle};

use crate::ops::{add_in_place, rms_norm, rms_norm_in_place, softmax, swiglu, Rope};

/// Tokens processed in one batch during prompt processing.
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("the prompt and answer need {needed} tokens but the context holds {n_ctx}; shorten the prompt or raise --ctx (the model was trained for {n_ctx_train})")]
    ContextFull {
        needed: usize,
        n_ctx: usize,
        n_ctx_train: usize,
    },
    #[error("token id {id} is outside the vocabulary of {n_vocab} tokens")]
    BadToken { id: u32, n_vocab: usize },
    #[error("nothing to evaluate: the prompt is empty")]
    Empty,
}

/// Key and value history of every layer, stored as f16 (as llama.cpp does by default).
struct KvCache {
    /// Per layer: [n_ctx][kv_dim].
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
}

/// Reusable buffers for a batch of up to MAX_BATCH tokens.
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    logits: Vec<f32>,
}

/// One sequence's state: a model, its KV cache and how many positions are filled.
pub struct Session {
    model: Arc<Model>,
    n_ctx: usize,
    n_past: usize,
    /// Tokens whose keys/values are in the cache, in order.
    history: Vec<u32>,
    kv: KvCache,
    rope: Rope,
    scratch: Scratch,
}

impl Session {
    /// A session with room for `n_ctx` tokens (capped at the model's training context when 0).
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Self {
        let hp = &model.hparams;
        let n_ctx = if n_ctx == 0 {
            hp.n_ctx_train.min(4096)
        } else {
            n_ctx
        };
        let kv_len = n_ctx * hp.kv_dim();
        let kv = KvCache {
            k: (0..hp.n_layer).map(|_| vec![f16::ZERO; kv_len]).collect(),
            v: (0..hp.n_layer).map(|_| vec![f16::ZERO; kv_len]).collect(),
        };
        let rope = Rope::new(
            hp.head_dim,
            hp.rope_theta,
            hp.rope_freq_scale,
            model.weights.rope_freqs.as_deref(),
            hp.rope_style == RopeStyle::NeoX,
        );
        Session {
            model,
            n_ctx,
            n_past: 0,
            history: Vec::new(),
            kv,
            rope,
            scratch: Scratch::default(),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Positions already in the cache.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    /// Tokens already in the cache.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forget everything after the first `n` positions (keeps a shared prefix).
    pub fn truncate(&mut self, n: usize) {
        self.n_past = self.n_past.min(n);
        self.history.truncate(self.n_past);
    }

    /// Length of the common prefix between the cache and `tokens`.
    pub fn common_prefix(&self, tokens: &[u32]) -> usize {
        self.history
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Evaluate `tokens` after the cached ones; returns the logits of the last token.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError> {
        self.eval_inner(tokens, false)?;
        let v = self.model.hparams.n_vocab;
        let n = self.scratch.logits.len();
        Ok(&self.scratch.logits[n - v..])
    }

    /// Evaluate `tokens` and return the logits of every one of them (`tokens.len() * n_vocab`).
    pub fn eval_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let v = self.model.hparams.n_vocab;
        let mut all = Vec::with_capacity(tokens.len() * v);
        for chunk in tokens.chunks(MAX_BATCH) {
            self.eval_inner(chunk, true)?;
            all.extend_from_slice(&self.scratch.logits);
        }
        Ok(all)
    }

    fn eval_inner(&mut self, tokens: &[u32], all_logits: bool) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Empty);
        }
        let hp = &self.model.hparams;
        if self.n_past + tokens.len() > self.n_ctx {
            return Err(EngineError::ContextFull {
                needed: self.n_past + tokens.len(),
                n_ctx: self.n_ctx,
                n_ctx_train: hp.n_ctx_train,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
            return Err(EngineError::BadToken {
                id,
                n_vocab: hp.n_vocab,
            });
        }
        for chunk in tokens.chunks(MAX_BATCH) {
            let last_chunk = std::ptr::eq(chunk.as_ptr_range().end, tokens.as_ptr_range().end);
            self.forward_batch(
                chunk,
                if all_logits {
                    chunk.len()
                } else if last_chunk {
                    1
                } else {
                    0
                },
            );
        }
        Ok(())
    }

    /// Run `tokens` through the network, filling the cache; leave the logits of the last
    /// `n_logits` tokens in `scratch.logits`.
    fn forward_batch(&mut self, tokens: &[u32], n_logits: usize) {
        let model = &*self.model;
        let hp = &model.hparams;
        let w = &model.weights;
        let n = tokens.len();
        let (d, qd, kvd, ff) = (hp.n_embd, hp.q_dim(), hp.kv_dim(), hp.n_ff);
        let s = &mut self.scratch;
        for (buf, len) in [
            (&mut s.x, n * d),
            (&mut s.h, n * d),
            (&mut s.q, n * qd),
            (&mut s.k, n * kvd),
            (&mut s.v, n * kvd),
            (&mut s.attn, n * qd),
            (&mut s.proj, n * d),
            (&mut s.gate, n * ff),
            (&mut s.up, n * ff),
        ] {
            buf.resize(len, 0.0);
        }

        let embd = w.token_embd.view();
        for (t, &tok) in tokens.iter().enumerate() {
            get_row(&embd, tok as usize, &mut s.x[t * d..(t + 1) * d]);
        }

        let p0 = self.n_past;
        for (l, layer) in w.layers.iter().enumerate() {
            for t in 0..n {
                rms_norm(
                    &s.x[t * d..(t + 1) * d],
                    &layer.attn_norm,
                    hp.rms_eps,
                    &mut s.h[t * d..(t + 1) * d],
                );
            }
            matmul(&layer.wq.view(), &s.h, n, &mut s.q);
            matmul(&layer.wk.view(), &s.h, n, &mut s.k);
            matmul(&layer.wv.view(), &s.h, n, &mut s.v);
            for (buf, bias, dim) in [
                (&mut s.q, &layer.bq, qd),
                (&mut s.k, &layer.bk, kvd),
                (&mut s.v, &layer.bv, kvd),
            ] {
                if let Some(b) = bias {
                    for row in buf.chunks_exact_mut(dim) {
                        add_in_place(row, b);
                    }
                }
            }
            for (buf, norm) in [(&mut s.q, &layer.q_norm), (&mut s.k, &layer.k_norm)] {
                if let Some(wn) = norm {
                    for head in buf.chunks_exact_mut(hp.head_dim) {
                        rms_norm_in_place(head, wn, hp.rms_eps);
                    }
                }
            }
            for t in 0..n {
                self.rope.apply(&mut s.q[t * qd..(t + 1) * qd], p0 + t);
                self.rope.apply(&mut s.k[t * kvd..(t + 1) * kvd], p0 + t);
            }
            let (kc, vc) = (&mut self.kv.k[l], &mut self.kv.v[l]);
            kc[p0 * kvd..(p0 + n) * kvd].convert_from_f32_slice(&s.k);
            vc[p0 * kvd..(p0 + n) * kvd].convert_from_f32_slice(&s.v);

            attention(
                &s.q,
                kc,
                vc,
                &mut s.attn,
                n,
                p0,
                hp.n_head,
                hp.n_head_kv,
                hp.head_dim,
            );

            matmul(&layer.wo.view(), &s.attn, n, &mut s.proj);
            add_in_place(&mut s.x, &s.proj);

            for t in 0..n {
                rms_norm(
                    &s.x[t * d..(t + 1) * d],
                    &layer.ffn_norm,
                    hp.rms_eps,
                    &mut s.h[t * d..(t + 1) * d],
                );
            }
            matmul(&layer.w_gate.view(), &s.h, n, &mut s.gate);
            matmul(&layer.w_up.view(), &s.h, n, &mut s.up);
            swiglu(&mut s.gate, &s.up);
            matmul(&layer.w_down.view(), &s.gate, n, &mut s.proj);
            add_in_place(&mut s.x, &s.proj);
        }

        self.n_past += n;
        self.history.extend_from_slice(tokens);

        s.logits.resize(n_logits * hp.n_vocab, 0.0);
        if n_logits > 0 {
            let first = n - n_logits;
            for t in first..n {
                let o = (t - first) * d;
                rms_norm(
                    &s.x[t * d..(t + 1) * d],
                    &w.output_norm,
                    hp.rms_eps,
                    &mut s.h[o..o + d],
                );
            }
            matmul(
                &w.output().view(),
                &s.h[..n_logits * d],
                n_logits,
                &mut s.logits,
            );
        }
    }
}

thread_local! {
    static ATTN_SCRATCH: RefCell<(Vec<f32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Causal multi-head attention with grouped KV heads for `n` queries at positions
/// `p0..p0+n`, over the cache's first `p0 + n` positions.
#[allow(clippy::too_many_arguments)]
fn attention(
    q: &[f32],
    kc: &[f16],
    vc: &[f16],
    out: &mut [f32],
    n: usize,
    p0: usize,
    n_head: usize,
    n_head_kv: usize,
    hd: usize,
) {
    let kvd = n_head_kv * hd;
    let group = n_head / n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    debug_assert_eq!(out.len(), n * n_head * hd);
    out.par_chunks_mut(hd).enumerate().for_each(|(i, o)| {
        let (t, h) = (i / n_head, i % n_head);
        let kvh = h / group;
        let n_keys = p0 + t + 1;
        ATTN_SCRATCH.with(|cell| {
            let (scores, row, qv) = &mut *cell.borrow_mut();
            scores.resize(n_keys, 0.0);
            row.resize(hd, 0.0);
            // ggml multiplies f16 K by Q rounded to f16, and f16 V by probabilities rounded
            // to f16; rounding the same way keeps logits close to llama.cpp's.
            qv.clear();
            qv.extend(
                q[t * n_head * hd + h * hd..][..hd]
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f32()),
            );
            for (j, s) in scores.iter_mut().enumerate() {
                kc[j * kvd + kvh * hd..][..hd].convert_to_f32_slice(row);
                *s = dot(qv, row) * scale;
            }
            softmax(scores);
            o.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let p = f16::from_f32(p).to_f32();
                vc[j * kvd + kvh * hd..][..hd].convert_to_f32_slice(row);
                for (a, &b) in o.iter_mut().zip(row.iter()) {
                    *a += p * b;
                }
            }
        });
    });
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for k in 0..8 {
            acc[k] += a[c * 8 + k] * b[c * 8 + k];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    s
}
