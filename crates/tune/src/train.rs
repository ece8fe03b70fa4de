//! The training loop: which sequences each optimizer step sees, gradient accumulation,
//! clipping, AdamW, validation, checkpoints and the per-step hash chain.
//!
//! A step's data is a pure function of the seed and the step number (epoch `e` visits the
//! sequences in a permutation drawn from `(seed, e)`), and dropout masks are drawn from
//! `(seed, step, micro-batch)`, so resuming needs only the step count, and a resumed run
//! is bit-identical to one never interrupted.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, State, StepRecord, ValidRecord};
use crate::data::Packed;
use crate::lora::{LoraParams, LoraSpec};
use crate::optim::{adamw_step, clip, lr_factor, AdamState, OptimConfig};
use crate::rng::{permutation, purpose, Stream};
use crate::step::{Batch, DropoutKey, MicroLoss, Trainer};

/// Every setting that changes what training computes (recorded in checkpoints and
/// receipts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub lora: LoraSpec,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_seq_len: usize,
    pub train_on_prompt: bool,
    /// Optimizer steps in the whole run.
    pub steps: u64,
}

impl Settings {
    /// Sequences per optimizer step.
    pub fn seqs_per_step(&self) -> usize {
        self.batch_size * self.grad_accum
    }
}

/// Optimizer steps that make `epochs` passes over `n_seqs` sequences.
pub fn steps_for_epochs(n_seqs: usize, batch_size: usize, grad_accum: usize, epochs: f64) -> u64 {
    let per_epoch = n_seqs.div_ceil(batch_size * grad_accum) as f64;
    (per_epoch * epochs).ceil().max(1.0) as u64
}

/// The sequences of optimizer step `step`, split into micro-batches.
pub fn step_batches(n_seqs: usize, s: &Settings, step: u64) -> Vec<Vec<usize>> {
    let per_step = s.seqs_per_step();
    let steps_per_epoch = n_seqs.div_ceil(per_step) as u64;
    let epoch = step / steps_per_epoch;
    let k = (step % steps_per_epoch) as usize;
    let order = permutation(n_seqs, &mut Stream::new(s.seed, &[purpose::SHUFFLE, epoch]));
    let chosen = &order[k * per_step..((k + 1) * per_step).min(n_seqs)];
    chosen.chunks(s.batch_size).map(|c| c.to_vec()).collect()
}

/// What the loop reports as it goes.
pub trait Observer {
    fn on_step(&mut self, rec: &StepRecord, total_steps: u64);
    fn on_valid(&mut self, rec: &ValidRecord);
    fn on_checkpoint(&mut self, dir: &Path);
}

/// When to validate and checkpoint, and where.
pub struct LoopOptions<'a> {
    pub valid_every: u64,
    pub checkpoint_every: u64,
    pub out: &'a Path,
    /// Set (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: &'a AtomicBool,
    /// Stop after this many steps of this invocation (`tune verify --steps`), without
    /// the run's end-of-training work.
    pub max_steps: Option<u64>,
    /// Write checkpoints at all (verify re-runs do not).
    pub checkpoints: bool,
    /// The run's record, stored in checkpoints.
    pub run: serde_json::Value,
}

/// How a call to [`train`] ended.
pub struct Outcome {
    pub state: State,
    /// Stopped early (signal or `max_steps`).
    pub interrupted: bool,
}

/// The next link of the loss hash chain.
pub fn chain_next(prev: &str, step: u64, loss: f64) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(step.to_le_bytes());
    h.update(loss.to_bits().to_le_bytes());
    format!("{:x}", h.finalize())
}

/// Mean loss over `seqs` (no gradients).
pub fn evaluate(
    trainer: &mut Trainer,
    params: &LoraParams,
    seqs: &[Packed],
    batch_size: usize,
) -> f64 {
    let mut total = MicroLoss::default();
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&Packed> = chunk.iter().collect();
        let b = Batch::new(&refs);
        let l = trainer.run(params, &b, 0.0, None, None);
        total.sum += l.sum;
        total.targets += l.targets;
    }
    total.sum / total.targets.max(1) as f64
}

/// Train from `state` (step 0 for a fresh run) until `settings.steps`.
#[allow(clippy::too_many_arguments)]
pub fn train(
    trainer: &mut Trainer,
    params: &mut LoraParams,
    settings: &Settings,
    train_seqs: &[Packed],
    valid_seqs: &[Packed],
    mut state: State,
    opts: &LoopOptions,
    obs: &mut dyn Observer,
) -> anyhow::Result<Outcome> {
    params.values.clone_from(&state.values);
    let mut grads = vec![0f32; params.n_params()];
    let first = state.step;
    let mut interrupted = false;
    while state.step < settings.steps {
        if opts.max_steps.is_some_and(|m| state.step - first >= m)
            || opts.stop.load(Ordering::SeqCst)
        {
            interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let step = state.step;
        let micro: Vec<Batch> = step_batches(train_seqs.len(), settings, step)
            .iter()
            .map(|idx| {
                let refs: Vec<&Packed> = idx.iter().map(|&i| &train_seqs[i]).collect();
                Batch::new(&refs)
            })
            .collect();
        let targets: usize = micro.iter().map(|b| b.targets.len()).sum();
        let tokens: usize = micro.iter().map(|b| b.len()).sum();
        grads.iter_mut().for_each(|g| *g = 0.0);
        let scale = 1.0 / targets.max(1) as f32;
        let mut loss_sum = 0f64;
        for (m, b) in micro.iter().enumerate() {
            let key = DropoutKey {
                seed: settings.seed,
                step,
                micro: m as u64,
            };
            loss_sum += trainer
                .run(params, b, scale, Some(key), Some(&mut grads))
                .sum;
        }
        let loss = loss_sum / targets.max(1) as f64;
        let grad_norm = clip(&mut grads, settings.optim.max_grad_norm);
        let lr = settings.optim.lr
            * lr_factor(
                settings.optim.schedule,
                step,
                settings.optim.warmup_steps,
                settings.steps,
            );
        adamw_step(
            &mut params.values,
            &grads,
            &mut state.adam,
            &settings.optim,
            lr,
        );
        let prev = state
            .history
            .last()
            .map_or("", |r| r.chain.as_str())
            .to_string();
        let rec = StepRecord {
            step: step + 1,
            loss,
            lr,
            grad_norm,
            tokens: tokens as u64,
            targets: targets as u64,
            seconds: t0.elapsed().as_secs_f64(),
            chain: chain_next(&prev, step + 1, loss),
        };
        state.step += 1;
        state.history.push(rec.clone());
        obs.on_step(&rec, settings.steps);
        let done = state.step == settings.steps;
        if !valid_seqs.is_empty()
            && (done || (opts.valid_every > 0 && state.step.is_multiple_of(opts.valid_every)))
        {
            let v = ValidRecord {
                step: state.step,
                loss: evaluate(trainer, params, valid_seqs, settings.batch_size),
            };
            obs.on_valid(&v);
            state.valid.push(v);
        }
        let stopping = opts.stop.load(Ordering::SeqCst);
        if opts.checkpoints
            && (done
                || stopping
                || (opts.checkpoint_every > 0 && state.step.is_multiple_of(opts.checkpoint_every)))
        {
            state.values.clone_from(&params.values);
            state.run = opts.run.clone();
            let dir = checkpoint::save(opts.out, &state)?;
            obs.on_checkpoint(&dir);
        }
    }
    state.values.clone_from(&params.values);
    Ok(Outcome { state, interrupted })
}

/// A fresh run's state.
pub fn fresh_state(params: &LoraParams) -> State {
    State {
        step: 0,
        values: params.values.clone(),
        adam: AdamState::new(params.n_params()),
        history: Vec::new(),
        valid: Vec::new(),
        run: serde_json::Value::Null,
    }
}
