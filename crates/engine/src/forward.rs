//! The forward pass of a Llama-family decoder over a KV cache.

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use verity_kernels::attention::{
    attention_f16_seqs_windowed, attention_f32_seqs_windowed, AttnSeq, AttnShape,
};
use verity_kernels::{get_row, matmul};
use verity_model::{Model, Proj};

use crate::lora::{self, LoraScratch, LoraSet};
use crate::moe::{moe_ffn, MoeScratch};

use crate::ops::{
    add_bias_rows, add_in_place, glu, par_rows, products, rms_norm, rms_norm_in_place,
    scale_in_place, Rope,
};

/// Tokens processed in one batch during prompt processing (as the server's steps and
/// llama.cpp's default micro-batch): each weight panel is unpacked once per batch, so
/// longer batches spread that over more rows (+3 % IQ4_XS pp512 over 256).
const MAX_BATCH: usize = 512;
/// Tokens per batch when every token's logits are kept: a batch's logits are
/// `n_vocab` floats a token (256 x a 256k vocabulary is 256 MiB).
const ALL_LOGITS_BATCH: usize = 256;

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
    #[error("the adapter was loaded for another base model")]
    AdapterMismatch,
    /// A token filter (constrained decoding) failed.
    #[error("constrained decoding: {0}")]
    Constraint(String),
}

/// How a KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    /// f16, with attention rounding as ggml does (llama.cpp's default): half the memory,
    /// logits that match llama.cpp's.
    #[default]
    F16,
    /// f32, attention without rounding: logits that match float references (transformers,
    /// PyTorch) to ~1e-5 on F32 weights, at twice the cache memory.
    F32,
}

/// Keys and values of every layer: per layer `[n_ctx][kv_dim]`.
enum KvStore {
    F16 { k: Vec<Vec<f16>>, v: Vec<Vec<f16>> },
    F32 { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
}

/// One sequence's key/value history for every layer (f16 as llama.cpp stores it by
/// default, or f32), with the tokens it holds.
pub struct KvCache {
    n_ctx: usize,
    kv_dim: usize,
    store: KvStore,
    /// Tokens whose keys/values are in the cache, in order.
    history: Vec<u32>,
    /// The adapters these keys and values were computed with.
    lora: Option<Arc<LoraSet>>,
    /// Per layer: its sliding window (0: the layer keeps every position). A windowed
    /// layer keeps only the rows its window can still reach.
    windows: Vec<usize>,
    /// Per layer: the position of its first stored row.
    base: Vec<usize>,
}

impl KvCache {
    /// Room for `n_ctx` positions, f16. Pages are committed only as positions fill.
    pub fn new(model: &Model, n_ctx: usize) -> Self {
        Self::with_type(model, n_ctx, KvType::F16)
    }

    /// Room for `n_ctx` positions stored as `ty`.
    pub fn with_type(model: &Model, n_ctx: usize, ty: KvType) -> Self {
        let hp = &model.hparams;
        let windows: Vec<usize> = (0..hp.n_layer)
            .map(|l| hp.layer_window(l).unwrap_or(0))
            .collect();
        // A windowed layer starts with room for twice its window; it shifts its rows down
        // when full (once per window of tokens), or grows for a longer batch.
        let rows = |l: usize| match windows[l] {
            0 => n_ctx,
            w => (2 * w).min(n_ctx),
        };
        let kvd = hp.kv_dim();
        let store = match ty {
            KvType::F16 => KvStore::F16 {
                k: (0..hp.n_layer)
                    .map(|l| vec![f16::ZERO; rows(l) * kvd])
                    .collect(),
                v: (0..hp.n_layer)
                    .map(|l| vec![f16::ZERO; rows(l) * kvd])
                    .collect(),
            },
            KvType::F32 => KvStore::F32 {
                k: (0..hp.n_layer).map(|l| vec![0f32; rows(l) * kvd]).collect(),
                v: (0..hp.n_layer).map(|l| vec![0f32; rows(l) * kvd]).collect(),
            },
        };
        KvCache {
            n_ctx,
            kv_dim: kvd,
            store,
            history: Vec::new(),
            lora: None,
            base: vec![0; windows.len()],
            windows,
        }
    }

    /// The adapters this sequence runs with.
    pub fn lora(&self) -> Option<&Arc<LoraSet>> {
        self.lora.as_ref()
    }

    /// Run this sequence with `lora` from now on. Cached positions were computed with
    /// the previous set, so a different set empties the cache.
    pub fn set_lora(&mut self, lora: Option<Arc<LoraSet>>) {
        if !lora::same_lora(self.lora.as_ref(), lora.as_ref()) {
            self.history.clear();
            self.lora = lora;
        }
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// How keys and values are stored.
    pub fn kv_type(&self) -> KvType {
        match self.store {
            KvStore::F16 { .. } => KvType::F16,
            KvStore::F32 { .. } => KvType::F32,
        }
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.history.len()
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty()
    }

    /// Tokens in the cache.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Forget everything after the first `n` positions (keeps a shared prefix); returns
    /// the positions kept. Where a windowed layer has already dropped rows the next
    /// position would need, everything is forgotten and 0 returned: a caller must go on
    /// from what this returns. [`KvCache::reusable_prefix`] says beforehand what that is.
    pub fn truncate(&mut self, n: usize) -> usize {
        if n < self.history.len() && !self.can_resume_at(n) {
            self.history.clear();
        } else {
            self.history.truncate(n);
        }
        if self.history.is_empty() {
            self.base.iter_mut().for_each(|b| *b = 0);
        }
        self.history.len()
    }

    /// Length of the longest prefix shared with `tokens` that this cache can resume from.
    pub fn common_prefix(&self, tokens: &[u32]) -> usize {
        let n = self.shared_len(tokens);
        if n == self.history.len() || self.can_resume_at(n) {
            n
        } else {
            0
        }
    }

    /// How many of this cache's positions a run of `prompt` keeps: the shared prefix,
    /// short of the prompt's last token (whose logits start generation), or 0 where a
    /// windowed layer has already dropped rows that position needs. `truncate` to it keeps
    /// exactly that many, so callers rank caches by it and resume from it.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        let n = self.shared_len(prompt).min(prompt.len().saturating_sub(1));
        if n == self.history.len() || self.can_resume_at(n) {
            n
        } else {
            0
        }
    }

    /// How many leading tokens the cache and `tokens` have in common.
    fn shared_len(&self, tokens: &[u32]) -> usize {
        self.history
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
    }

    /// Whether every windowed layer still holds the rows a query at position `n` reads.
    fn can_resume_at(&self, n: usize) -> bool {
        self.windows
            .iter()
            .zip(&self.base)
            .all(|(&w, &b)| w == 0 || b + w <= n + 1)
    }

    /// Make room in every windowed layer for `n` more positions: drop the rows no query
    /// from the next position on can reach (shifting the rest down), growing the layer
    /// if a long batch needs more than it has.
    fn make_room(&mut self, n: usize) {
        let (p0, kvd) = (self.history.len(), self.kv_dim);
        for l in 0..self.windows.len() {
            let w = self.windows[l];
            if w == 0 {
                continue;
            }
            let cap = self.layer_rows(l);
            if p0 + n - self.base[l] <= cap {
                continue;
            }
            let keep_from = (p0 + 1).saturating_sub(w).max(self.base[l]);
            let (from, to) = ((keep_from - self.base[l]) * kvd, (p0 - self.base[l]) * kvd);
            let need = (p0 + n - keep_from) * kvd;
            fn shift<T: Copy + Default>(v: &mut Vec<T>, from: usize, to: usize, need: usize) {
                v.copy_within(from..to, 0);
                if v.len() < need {
                    v.resize(need, T::default());
                }
            }
            match &mut self.store {
                KvStore::F16 { k, v } => {
                    shift(&mut k[l], from, to, need);
                    shift(&mut v[l], from, to, need);
                }
                KvStore::F32 { k, v } => {
                    shift(&mut k[l], from, to, need);
                    shift(&mut v[l], from, to, need);
                }
            }
            self.base[l] = keep_from;
        }
    }

    /// Rows layer `l` has room for.
    fn layer_rows(&self, l: usize) -> usize {
        let len = match &self.store {
            KvStore::F16 { k, .. } => k[l].len(),
            KvStore::F32 { k, .. } => k[l].len(),
        };
        len / self.kv_dim.max(1)
    }

    /// Replace this cache's contents with the first `n` positions of `other` (a cache of
    /// the same model), which must store the same type (panics otherwise: a caller's
    /// bug). Copies nothing when `other` can no longer resume at `n`.
    pub fn copy_prefix_from(&mut self, other: &KvCache, n: usize) {
        let mut n = n.min(other.len()).min(self.n_ctx);
        if n < other.len() && !other.can_resume_at(n) {
            n = 0;
        }
        let kvd = self.kv_dim;
        let rows: Vec<usize> = other.base.iter().map(|&b| n.saturating_sub(b)).collect();
        fn copy<T: Copy + Default>(dst: &mut [Vec<T>], src: &[Vec<T>], rows: &[usize], kvd: usize) {
            for ((d, s), &r) in dst.iter_mut().zip(src).zip(rows) {
                if d.len() < r * kvd {
                    d.resize(r * kvd, T::default());
                }
                d[..r * kvd].copy_from_slice(&s[..r * kvd]);
            }
        }
        match (&mut self.store, &other.store) {
            (KvStore::F16 { k, v }, KvStore::F16 { k: ok, v: ov }) => {
                copy(k, ok, &rows, kvd);
                copy(v, ov, &rows, kvd);
            }
            (KvStore::F32 { k, v }, KvStore::F32 { k: ok, v: ov }) => {
                copy(k, ok, &rows, kvd);
                copy(v, ov, &rows, kvd);
            }
            _ => panic!("copy_prefix_from: caches of different KV types"),
        }
        self.base = if n == 0 {
            vec![0; other.base.len()]
        } else {
            other.base.clone()
        };
        self.history.clear();
        self.history.extend_from_slice(&other.history[..n]);
        self.lora = other.lora.clone();
    }
}

/// Which logits a batch item wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last token's.
    Last,
    /// Every token's (scoring a text).
    All,
}

impl Logits {
    fn rows(self, n_tokens: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => 1,
            Logits::All => n_tokens,
        }
    }
}

/// Tokens of one sequence to evaluate in a batched forward pass.
pub struct BatchItem<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// Reusable buffers for one forward pass.
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
    /// For each row of the batch: (item index, position).
    rows: Vec<(usize, usize)>,
    /// Rows whose logits are wanted.
    out_rows: Vec<usize>,
    /// The attention call's per-sequence arguments; empty between uses (see [`recycle`]).
    attn_seqs: Vec<AttnSeq<'static>>,
    attn_seqs32: Vec<AttnSeq<'static, f32>>,
    /// Contiguous rows that share an adapter set: (first row, rows, set).
    lora_groups: Vec<(usize, usize, Arc<LoraSet>)>,
    lora: LoraScratch,
    moe: MoeScratch,
}

/// Runs the network: the model, its RoPE tables and scratch buffers, shared by every
/// sequence it evaluates. Rows of all sequences in a batch go through each weight
/// matrix together; a row's result does not depend on what else is in the batch.
pub struct Runner {
    model: Arc<Model>,
    rope: Rope,
    /// The rotation of sliding-window layers (their own base, for Gemma 3).
    rope_window: Rope,
    scratch: Scratch,
}

impl Runner {
    pub fn new(model: Arc<Model>) -> Self {
        Self::for_context(model, 0)
    }

    /// A runner for sequences of up to `n_ctx` positions (LongRoPE models pick their RoPE
    /// factors by it; others are the same for every context).
    pub fn for_context(model: Arc<Model>, n_ctx: usize) -> Self {
        let rope = Rope::for_context(&model, n_ctx);
        let rope_window = Rope::for_window_layers(&model, n_ctx);
        Runner {
            model,
            rope,
            rope_window,
            scratch: Scratch::default(),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Evaluate every item's tokens after what its cache holds, in one pass; returns the
    /// requested logits, item by item, `n_vocab` per row.
    pub fn forward(&mut self, items: &mut [BatchItem<'_>]) -> Result<&[f32], EngineError> {
        let hp = &self.model.hparams;
        for it in items.iter() {
            if it.tokens.is_empty() {
                return Err(EngineError::Empty);
            }
            if it.cache.len() + it.tokens.len() > it.cache.n_ctx {
                return Err(EngineError::ContextFull {
                    needed: it.cache.len() + it.tokens.len(),
                    n_ctx: it.cache.n_ctx,
                    n_ctx_train: hp.n_ctx_train,
                });
            }
            if it.cache.lora.as_ref().is_some_and(|l| !l.fits(hp)) {
                return Err(EngineError::AdapterMismatch);
            }
            if let Some(&id) = it.tokens.iter().find(|&&t| t as usize >= hp.n_vocab) {
                return Err(EngineError::BadToken {
                    id,
                    n_vocab: hp.n_vocab,
                });
            }
        }
        self.forward_unchecked(items);
        Ok(&self.scratch.logits)
    }

    fn forward_unchecked(&mut self, items: &mut [BatchItem<'_>]) {
        let model = &*self.model;
        let hp = &model.hparams;
        let w = &model.weights;
        let s = &mut self.scratch;
        s.rows.clear();
        s.out_rows.clear();
        s.lora_groups.clear();
        for (i, it) in items.iter().enumerate() {
            if let Some(set) = &it.cache.lora {
                match s.lora_groups.last_mut() {
                    Some((r0, n, last)) if Arc::ptr_eq(last, set) && *r0 + *n == s.rows.len() => {
                        *n += it.tokens.len()
                    }
                    _ => s
                        .lora_groups
                        .push((s.rows.len(), it.tokens.len(), set.clone())),
                }
            }
            let p0 = it.cache.len();
            let first_out = s.rows.len() + it.tokens.len() - it.logits.rows(it.tokens.len());
            for t in 0..it.tokens.len() {
                if s.rows.len() >= first_out {
                    s.out_rows.push(s.rows.len());
                }
                s.rows.push((i, p0 + t));
            }
        }
        for it in items.iter_mut() {
            it.cache.make_room(it.tokens.len());
        }
        let n = s.rows.len();
        // A mixture-of-experts model has no dense FFN: its buffers are the experts' own.
        let ff = if hp.arch.spec().moe { 0 } else { hp.n_ff };
        let (d, qd, kvd) = (hp.n_embd, hp.q_dim(), hp.kv_dim());
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
        for (r, &tok) in items.iter().flat_map(|it| it.tokens.iter()).enumerate() {
            get_row(&embd, tok as usize, &mut s.x[r * d..(r + 1) * d]);
        }
        let spec = hp.arch.spec();
        if spec.embed_scale_sqrt_dim {
            scale_in_place(&mut s.x, (d as f32).sqrt());
        }

        let shape = AttnShape {
            n_head: hp.n_head,
            n_head_kv: hp.n_head_kv,
            head_dim: hp.head_dim,
        };
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        for (l, layer) in w.layers.iter().enumerate() {
            let x = &s.x;
            par_rows(&mut s.h, d, &|r, h| {
                rms_norm(&x[r * d..(r + 1) * d], &layer.attn_norm, hp.rms_eps, h)
            });
            products(
                &[layer.wq.view(), layer.wk.view(), layer.wv.view()],
                &s.h,
                n,
                &mut [&mut s.q, &mut s.k, &mut s.v],
            );
            if !s.lora_groups.is_empty() {
                let g = &s.lora_groups;
                lora::apply(g, l, Proj::Q, &s.h, d, &mut s.q, qd, &mut s.lora);
                lora::apply(g, l, Proj::K, &s.h, d, &mut s.k, kvd, &mut s.lora);
                lora::apply(g, l, Proj::V, &s.h, d, &mut s.v, kvd, &mut s.lora);
            }
            for (buf, bias, dim) in [
                (&mut s.q, &layer.bq, qd),
                (&mut s.k, &layer.bk, kvd),
                (&mut s.v, &layer.bv, kvd),
            ] {
                add_bias_rows(buf, dim, bias.as_deref());
            }
            for (buf, norm) in [(&mut s.q, &layer.q_norm), (&mut s.k, &layer.k_norm)] {
                if let Some(wn) = norm {
                    for head in buf.chunks_exact_mut(hp.head_dim) {
                        rms_norm_in_place(head, wn, hp.rms_eps);
                    }
                }
            }
            let window = hp.layer_window(l);
            let rope = if window.is_some() {
                &self.rope_window
            } else {
                &self.rope
            };
            let rows = &s.rows;
            if !hp.no_rope[l] {
                par_rows(&mut s.q, qd, &|r, q| rope.apply(q, rows[r].1));
                par_rows(&mut s.k, kvd, &|r, k| rope.apply(k, rows[r].1));
            }
            for (r, &(i, pos)) in s.rows.iter().enumerate() {
                let (src_k, src_v) = (&s.k[r * kvd..(r + 1) * kvd], &s.v[r * kvd..(r + 1) * kvd]);
                let row = pos - items[i].cache.base[l];
                let at = row * kvd..(row + 1) * kvd;
                match &mut items[i].cache.store {
                    KvStore::F16 { k, v } => {
                        k[l][at.clone()].convert_from_f32_slice(src_k);
                        v[l][at].convert_from_f32_slice(src_v);
                    }
                    KvStore::F32 { k, v } => {
                        k[l][at.clone()].copy_from_slice(src_k);
                        v[l][at].copy_from_slice(src_v);
                    }
                }
            }
            // Each item's rows are contiguous; it attends to its own cache. All items of a
            // cache type go through one call, so a batch of one-token decodes is one
            // parallel region.
            let mut seqs = recycle(std::mem::take(&mut s.attn_seqs));
            let mut seqs32 = recycle(std::mem::take(&mut s.attn_seqs32));
            let (mut q_rest, mut out_rest) = (&s.q[..], &mut s.attn[..]);
            for it in items.iter() {
                let n_i = it.tokens.len();
                let (q_i, q_tail) = q_rest.split_at(n_i * qd);
                let (out_i, out_tail) = std::mem::take(&mut out_rest).split_at_mut(n_i * qd);
                (q_rest, out_rest) = (q_tail, out_tail);
                // Positions relative to the layer's first stored row.
                let p0 = it.cache.len() - it.cache.base[l];
                match &it.cache.store {
                    KvStore::F16 { k, v } => seqs.push(AttnSeq {
                        q: q_i,
                        k: &k[l],
                        v: &v[l],
                        out: out_i,
                        n: n_i,
                        p0,
                    }),
                    KvStore::F32 { k, v } => seqs32.push(AttnSeq {
                        q: q_i,
                        k: &k[l],
                        v: &v[l],
                        out: out_i,
                        n: n_i,
                        p0,
                    }),
                }
            }
            let (w, sinks) = (window.unwrap_or(0), layer.sinks.as_deref());
            if !seqs.is_empty() {
                attention_f16_seqs_windowed(&mut seqs, shape, scale, w, sinks);
            }
            if !seqs32.is_empty() {
                attention_f32_seqs_windowed(&mut seqs32, shape, scale, w, sinks);
            }
            s.attn_seqs = recycle(seqs);
            s.attn_seqs32 = recycle(seqs32);

            matmul(&layer.wo.view(), &s.attn, n, &mut s.proj);
            if !s.lora_groups.is_empty() {
                let g = &s.lora_groups;
                lora::apply(g, l, Proj::O, &s.attn, qd, &mut s.proj, d, &mut s.lora);
            }
            add_bias_rows(&mut s.proj, d, layer.bo.as_deref());
            if let Some(wn) = &layer.post_attn_norm {
                par_rows(&mut s.proj, d, &|_, p| rms_norm_in_place(p, wn, hp.rms_eps));
            }
            add_in_place(&mut s.x, &s.proj);

            let x = &s.x;
            par_rows(&mut s.h, d, &|r, h| {
                rms_norm(&x[r * d..(r + 1) * d], &layer.ffn_norm, hp.rms_eps, h)
            });
            if let Some(moe) = &layer.moe {
                moe_ffn(moe, hp, &s.h[..n * d], n, &mut s.proj, &mut s.moe);
            } else {
                products(
                    &[layer.w_gate.view(), layer.w_up.view()],
                    &s.h,
                    n,
                    &mut [&mut s.gate, &mut s.up],
                );
                if !s.lora_groups.is_empty() {
                    let g = &s.lora_groups;
                    lora::apply(g, l, Proj::Gate, &s.h, d, &mut s.gate, ff, &mut s.lora);
                    lora::apply(g, l, Proj::Up, &s.h, d, &mut s.up, ff, &mut s.lora);
                }
                let up = &s.up;
                par_rows(&mut s.gate, ff, &|r, g| {
                    glu(spec.ffn, g, &up[r * ff..(r + 1) * ff])
                });
                matmul(&layer.w_down.view(), &s.gate, n, &mut s.proj);
                if !s.lora_groups.is_empty() {
                    let g = &s.lora_groups;
                    lora::apply(g, l, Proj::Down, &s.gate, ff, &mut s.proj, d, &mut s.lora);
                }
            }
            if let Some(wn) = &layer.post_ffn_norm {
                par_rows(&mut s.proj, d, &|_, p| rms_norm_in_place(p, wn, hp.rms_eps));
            }
            add_in_place(&mut s.x, &s.proj);
        }

        for it in items.iter_mut() {
            it.cache.history.extend_from_slice(it.tokens);
        }

        let n_out = s.out_rows.len();
        s.logits.resize(n_out * hp.n_vocab, 0.0);
        if n_out > 0 {
            for (o, &r) in s.out_rows.iter().enumerate() {
                rms_norm(
                    &s.x[r * d..(r + 1) * d],
                    &w.output_norm,
                    hp.rms_eps,
                    &mut s.h[o * d..(o + 1) * d],
                );
            }
            matmul(&w.output().view(), &s.h[..n_out * d], n_out, &mut s.logits);
        }
    }
}

/// An empty vector of another element type with the same layout, reusing `v`'s
/// allocation (the standard library collects in place when layouts match): lets a
/// buffer of borrowing structs outlive the borrows of each use.
fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

/// One sequence's state: a runner and the sequence's KV cache.
pub struct Session {
    runner: Runner,
    cache: KvCache,
}

impl Session {
    /// A session with room for `n_ctx` tokens (0: the model's training context, at most 4096).
    pub fn new(model: Arc<Model>, n_ctx: usize) -> Self {
        Self::with_kv_type(model, n_ctx, KvType::F16)
    }

    /// [`Session::new`] with keys and values stored as `ty`.
    pub fn with_kv_type(model: Arc<Model>, n_ctx: usize, ty: KvType) -> Self {
        let n_ctx = if n_ctx == 0 {
            model.hparams.n_ctx_train.min(4096)
        } else {
            n_ctx
        };
        let cache = KvCache::with_type(&model, n_ctx, ty);
        Session {
            runner: Runner::for_context(model, n_ctx),
            cache,
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        self.runner.model()
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx()
    }

    /// Positions already in the cache.
    pub fn n_past(&self) -> usize {
        self.cache.len()
    }

    /// Tokens already in the cache.
    pub fn history(&self) -> &[u32] {
        self.cache.history()
    }

    /// Forget everything after the first `n` positions (keeps a shared prefix); returns
    /// the positions kept (see [`KvCache::truncate`]).
    pub fn truncate(&mut self, n: usize) -> usize {
        self.cache.truncate(n)
    }

    /// Length of the common prefix between the cache and `tokens`.
    pub fn common_prefix(&self, tokens: &[u32]) -> usize {
        self.cache.common_prefix(tokens)
    }

    /// What a run of `prompt` keeps of the cache ([`KvCache::reusable_prefix`]).
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        self.cache.reusable_prefix(prompt)
    }

    /// Run with these adapters from now on (a different set empties the cache).
    pub fn set_lora(&mut self, lora: Option<Arc<LoraSet>>) {
        self.cache.set_lora(lora);
    }

    /// Fail before touching the cache if `n` more tokens do not fit.
    fn check_room(&self, n: usize) -> Result<(), EngineError> {
        if self.cache.len() + n > self.cache.n_ctx() {
            return Err(EngineError::ContextFull {
                needed: self.cache.len() + n,
                n_ctx: self.cache.n_ctx(),
                n_ctx_train: self.model().hparams.n_ctx_train,
            });
        }
        Ok(())
    }

    /// Evaluate `tokens` after the cached ones; returns the logits of the last token.
    pub fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::Empty);
        }
        self.check_room(tokens.len())?;
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let logits = if i + 1 == n_chunks {
                Logits::Last
            } else {
                Logits::None
            };
            self.runner.forward(&mut [BatchItem {
                cache: &mut self.cache,
                tokens: chunk,
                logits,
            }])?;
        }
        Ok(&self.runner.scratch.logits)
    }

    /// Evaluate `tokens` and return the logits of every one of them (`tokens.len() * n_vocab`).
    pub fn eval_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let v = self.model().hparams.n_vocab;
        self.check_room(tokens.len())?;
        let mut all = Vec::with_capacity(tokens.len() * v);
        for chunk in tokens.chunks(ALL_LOGITS_BATCH) {
            all.extend_from_slice(self.runner.forward(&mut [BatchItem {
                cache: &mut self.cache,
                tokens: chunk,
                logits: Logits::All,
            }])?);
        }
        Ok(all)
    }
}
