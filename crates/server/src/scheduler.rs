//! The scheduler: one thread owns the model and a fixed set of slots (a KV cache each),
//! and runs continuous batching — at every step the decode tokens of all generating
//! slots and chunks of waiting prompts go through the network in one forward pass;
//! requests join and leave between steps.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use verity_constraint::{Constraint, Grammar};
use verity_engine::{
    same_lora, BatchItem, KvCache, KvType, Logits, LoraSet, Runner, Sampler, SamplingParams,
    TextStream,
};
use verity_model::Model;

use crate::lazy::{LazyConstraint, LazyWatch};
use crate::lora::{Registry, ServedAdapter};
use crate::metrics::{Metrics, SlotsState};

/// Rows (tokens) per forward pass: decode tokens first, then prompt chunks fill the rest.
const STEP_TOKENS: usize = 512;

/// What a request asks the scheduler to do.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Log-probabilities of generated tokens, with this many alternatives (0..=20).
    pub logprobs: Option<usize>,
    /// Log-probabilities of the prompt's own tokens too (legacy completions `echo`).
    pub prompt_logprobs: bool,
    /// Constrain the output to a grammar (a JSON Schema, any JSON object, Lark, a regex):
    /// each choice starts its own [`Constraint`] from it when admitted. The job ends with
    /// "stop" when the grammar is complete.
    pub constraint: Option<Arc<Grammar>>,
    /// A grammar that applies from a trigger on (tool calls in `auto` mode); only
    /// without `constraint`.
    pub lazy: Option<LazyConstraint>,
    /// Added to the logits of these tokens before sampling (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// The adapter the request named, if not the base. Held until the job ends, which is
    /// what an unload waits for.
    pub adapter: Option<Arc<ServedAdapter>>,
}

impl JobSpec {
    /// The adapter set the job's cache must run with.
    fn lora(&self) -> Option<&Arc<LoraSet>> {
        self.adapter.as_ref().map(|a| &a.set)
    }
}

/// One token with its log-probability and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (token 0 has none).
    PromptLogprobs(Vec<TokenLogprob>),
    /// A generated token and the text that became final with it (may be empty).
    Token {
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Done {
        finish_reason: &'static str,
        prompt_tokens: usize,
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

pub struct Job {
    pub spec: JobSpec,
    pub events: UnboundedSender<Event>,
    pub submitted: Instant,
}

/// The handle request handlers use.
#[derive(Clone)]
pub struct Scheduler {
    tx: Sender<Job>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    pub n_ctx: usize,
    draining: Arc<AtomicBool>,
}

#[derive(Debug)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

impl Scheduler {
    /// Start the scheduler thread; `cache` is each slot's context length and KV type.
    pub fn start(
        model: Arc<Model>,
        parallel: usize,
        cache: (usize, KvType),
        max_queue: usize,
        metrics: Arc<Metrics>,
        adapters: Arc<Registry>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        let q = queued.clone();
        let slots = parallel.max(1);
        metrics.set_slots(SlotsState::idle(slots, slots * cache.0));
        std::thread::Builder::new()
            .name("verity-scheduler".into())
            .spawn(move || Worker::new(model, parallel, cache, rx, q, metrics, adapters).run())
            .expect("spawn scheduler thread");
        Scheduler {
            tx,
            queued,
            max_queue,
            n_ctx: cache.0,
            draining,
        }
    }

    /// Queue a job; fails at once when the queue is full.
    pub fn submit(&self, spec: JobSpec, events: UnboundedSender<Event>) -> Result<(), SubmitError> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        if self.queued.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        self.tx
            .send(Job {
                spec,
                events,
                submitted: Instant::now(),
            })
            .map_err(|_| SubmitError::ShuttingDown)
    }

    /// Jobs waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Refuse new jobs from now on (running ones continue).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
}

/// A job running in a slot.
struct Active {
    job: Job,
    sampler: Sampler,
    /// Prompt tokens already in the cache.
    done: usize,
    cached: usize,
    generated: Vec<u32>,
    /// Sampled but not yet evaluated.
    pending: Option<u32>,
    text: TextStream<'static>,
    constraint: Option<Constraint>,
    /// Watches for a lazy constraint's trigger (`constraint` is the open call's).
    lazy: Option<LazyWatch>,
    /// Logits wait for the constraint's mask, still being computed: the row samples in a
    /// later step rather than hold up the others (see `after_forward`).
    deferred: bool,
    first_token_at: Option<Instant>,
    /// Logits of the last evaluated position, for the next sample.
    logits: Vec<f32>,
    prompt_logprobs: Vec<TokenLogprob>,
    /// Keeps the tokenizer that `text` borrows alive; declared last so it drops last.
    _model: Arc<Model>,
}

/// A 'static view of the model's tokenizer for a job's `TextStream`.
///
/// SAFETY: the returned reference points into the `Model` behind `model`, which does not
/// move while any `Arc` to it exists; every `Active` that holds such a reference also
/// holds an `Arc` (`_model`), declared after the borrowing field so it is dropped later.
fn static_tokenizer(model: &Arc<Model>) -> &'static verity_tokenizer::Tokenizer {
    unsafe { &*(&model.tokenizer as *const verity_tokenizer::Tokenizer) }
}

enum Next {
    Continue,
    Finish(&'static str),
    Fail(String),
}

struct Slot {
    cache: KvCache,
    active: Option<Active>,
}

struct Worker {
    model: Arc<Model>,
    runner: Runner,
    slots: Vec<Slot>,
    rx: Receiver<Job>,
    waiting: VecDeque<Job>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    adapters: Arc<Registry>,
    /// The registry's unload epoch the slots were last swept at.
    swept_epoch: u64,
}

impl Worker {
    fn new(
        model: Arc<Model>,
        parallel: usize,
        (n_ctx, kv_type): (usize, KvType),
        rx: Receiver<Job>,
        queued: Arc<AtomicUsize>,
        metrics: Arc<Metrics>,
        adapters: Arc<Registry>,
    ) -> Self {
        let slots = (0..parallel.max(1))
            .map(|_| Slot {
                cache: KvCache::with_type(&model, n_ctx, kv_type),
                active: None,
            })
            .collect();
        Worker {
            runner: Runner::for_context(model.clone(), n_ctx),
            model,
            slots,
            rx,
            waiting: VecDeque::new(),
            queued,
            metrics,
            adapters,
            swept_epoch: 0,
        }
    }

    fn run(mut self) {
        loop {
            // Block for work only when idle.
            let idle = self.slots.iter().all(|s| s.active.is_none()) && self.waiting.is_empty();
            if idle {
                match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => self.waiting.push_back(job),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(job) = self.rx.try_recv() {
                self.waiting.push_back(job);
            }
            self.sweep_unloaded();
            self.admit();
            self.update_gauges();
            self.step();
        }
    }

    /// Report the slots to `/metrics`: requests in them, the KV cache they hold, adapters
    /// running and waiting. Called after admitting jobs, after each forward pass (before
    /// its tokens are sent), and as a job ends, before its client hears of it, so that a
    /// client never sees its own finished job counted.
    fn update_gauges(&self) {
        fn adapter(job: &Job) -> Option<&str> {
            job.spec.adapter.as_deref().map(|a| a.name.as_str())
        }
        let busy = || self.slots.iter().filter(|s| s.active.is_some());
        self.metrics.set_slots(SlotsState {
            slots: self.slots.len(),
            running: busy().count(),
            kv_tokens: busy().map(|s| s.cache.len()).sum(),
            kv_capacity: self.slots.iter().map(|s| s.cache.n_ctx()).sum(),
            running_adapters: busy()
                .filter_map(|s| adapter(&s.active.as_ref()?.job))
                .collect(),
            waiting_adapters: self.waiting.iter().filter_map(adapter).collect(),
        });
    }

    /// After an unload, let idle caches drop the adapter they last ran with, so its
    /// weights are freed. (Its jobs have all ended: the unload waited for them.)
    fn sweep_unloaded(&mut self) {
        let epoch = self.adapters.epoch.load(Ordering::SeqCst);
        if epoch == self.swept_epoch {
            return;
        }
        self.swept_epoch = epoch;
        for slot in self.slots.iter_mut().filter(|s| s.active.is_none()) {
            if slot
                .cache
                .lora()
                .is_some_and(|set| !self.adapters.serves(set))
            {
                slot.cache.set_lora(None);
            }
        }
    }

    /// Move waiting jobs into free slots, choosing the slot whose cache shares the longest
    /// prefix with the prompt; among slots that offer nothing (and always for a job that
    /// reuses nothing), the one holding the shortest cache, so the others stay warm.
    fn admit(&mut self) {
        while let Some(job) = self.waiting.front() {
            if job.events.is_closed() {
                self.waiting.pop_front();
                self.queued.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            // A cache computed under other adapters shares no usable prefix.
            let lora = job.spec.lora();
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active.is_none())
                .max_by_key(|(_, s)| {
                    let reuse = if !job.spec.prompt_logprobs && same_lora(s.cache.lora(), lora) {
                        s.cache.reusable_prefix(&job.spec.prompt)
                    } else {
                        0
                    };
                    (reuse, std::cmp::Reverse(s.cache.len()))
                });
            let Some((i, _)) = best else { return };
            let job = self.waiting.pop_front().expect("front exists");
            let prompt = &job.spec.prompt;
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let slot = &mut self.slots[i];
            // Empties the cache if it ran with another set, so reuse below is then 0.
            slot.cache.set_lora(job.spec.lora().cloned());
            // What the slot was ranked by (the last prompt token is always recomputed, and
            // a windowed cache may keep nothing). Prompt log-probabilities need every
            // position's logits, so nothing is reused for them.
            let offered = if job.spec.prompt_logprobs {
                0
            } else {
                slot.cache.reusable_prefix(prompt)
            };
            let reuse = slot.cache.truncate(offered);
            self.metrics
                .prompt_tokens
                .fetch_add(prompt.len() as u64, Ordering::Relaxed);
            self.metrics
                .cached_tokens
                .fetch_add(reuse as u64, Ordering::Relaxed);
            slot.active = Some(Active {
                sampler: Sampler::new(job.spec.sampling.clone()),
                done: reuse,
                cached: reuse,
                generated: Vec::new(),
                pending: None,
                text: TextStream::new(static_tokenizer(&self.model), job.spec.stop.clone()),
                // Starts computing the first mask now, while the prompt is processed.
                constraint: job.spec.constraint.as_ref().map(|g| g.start()),
                lazy: job.spec.lazy.clone().map(LazyWatch::new),
                deferred: false,
                first_token_at: None,
                logits: Vec::new(),
                prompt_logprobs: Vec::new(),
                _model: self.model.clone(),
                job,
            });
        }
    }

    fn step(&mut self) {
        self.sample_deferred(false);
        // Plan: which slot contributes which tokens.
        let mut plan: Vec<(usize, Vec<u32>, Logits)> = Vec::new();
        let mut budget = STEP_TOKENS;
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(a) = &slot.active {
                if let Some(tok) = a.pending {
                    plan.push((i, vec![tok], Logits::Last));
                    budget -= 1;
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if let Some(a) = &slot.active {
                if a.pending.is_none() && a.done < a.job.spec.prompt.len() {
                    let end = (a.done + budget).min(a.job.spec.prompt.len());
                    let chunk = a.job.spec.prompt[a.done..end].to_vec();
                    let last = end == a.job.spec.prompt.len();
                    let logits = if a.job.spec.prompt_logprobs {
                        Logits::All
                    } else if last {
                        Logits::Last
                    } else {
                        Logits::None
                    };
                    budget -= chunk.len();
                    plan.push((i, chunk, logits));
                }
            }
        }
        if plan.is_empty() {
            // Only rows waiting for their masks: nothing else to hold up, so wait.
            self.sample_deferred(true);
            return;
        }
        // Rows of one adapter side by side: the engine runs each run of adjacent rows that
        // share adapters as one low-rank product, so fewer, larger products. Row order
        // changes no result (rows are batch-invariant).
        let lora_key = |i: usize| {
            self.slots[i]
                .cache
                .lora()
                .map_or(0, |s| Arc::as_ptr(s) as usize)
        };
        plan.sort_by_key(|(i, _, _)| lora_key(*i));

        // One forward pass over all of it.
        let n_vocab = self.model.hparams.n_vocab;
        let result = {
            let mut caches: Vec<Option<&mut KvCache>> =
                self.slots.iter_mut().map(|s| Some(&mut s.cache)).collect();
            let mut items: Vec<BatchItem> = plan
                .iter()
                .map(|(i, toks, logits)| BatchItem {
                    cache: caches[*i].take().expect("one item per slot"),
                    tokens: toks,
                    logits: *logits,
                })
                .collect();
            self.runner.forward(&mut items).map(|l| l.to_vec())
        };
        let logits = match result {
            Ok(l) => l,
            Err(e) => {
                for (i, _, _) in &plan {
                    self.finish(*i, None, Some(e.to_string()));
                }
                return;
            }
        };

        // The caches now hold this step's tokens; report them before any client hears of
        // its next token.
        self.update_gauges();

        // Hand each slot its rows: constrained rows last, so that one whose mask is still
        // being computed never delays the others' tokens.
        let mut rows = Vec::with_capacity(plan.len());
        let mut row = 0;
        for (i, toks, mode) in plan {
            let n = match mode {
                Logits::None => 0,
                Logits::Last => 1,
                Logits::All => toks.len(),
            };
            rows.push((i, toks, mode, row..row + n));
            row += n;
        }
        rows.sort_by_key(|(i, ..)| self.is_constrained(*i));
        for (i, toks, mode, range) in rows {
            let mine = &logits[range.start * n_vocab..range.end * n_vocab];
            self.after_forward(i, &toks, mode, mine);
        }
    }

    fn is_constrained(&self, i: usize) -> bool {
        self.slots[i]
            .active
            .as_ref()
            .is_some_and(|a| a.constraint.is_some())
    }

    /// Sample the rows whose logits waited for their constraint's mask: those whose mask
    /// is ready, or (with `wait`) all of them.
    fn sample_deferred(&mut self, wait: bool) {
        for i in 0..self.slots.len() {
            let ready = match self.slots[i].active.as_mut() {
                Some(a) if a.deferred => wait || a.constraint.as_mut().is_none_or(|c| c.is_ready()),
                _ => false,
            };
            if ready {
                if let Some(a) = self.slots[i].active.as_mut() {
                    a.deferred = false;
                }
                self.sample_next(i);
            }
        }
    }

    /// Update a slot after its tokens went through the network.
    fn after_forward(&mut self, i: usize, toks: &[u32], mode: Logits, logits: &[f32]) {
        let n_vocab = self.model.hparams.n_vocab;
        let a = self.slots[i]
            .active
            .as_mut()
            .expect("planned slots are active");
        if a.job.events.is_closed() {
            self.finish(i, Some("cancelled"), None);
            return;
        }
        if a.pending.take().is_none() {
            // A prompt chunk.
            if mode == Logits::All {
                let prompt = &a.job.spec.prompt;
                let top_n = a.job.spec.logprobs.unwrap_or(0);
                for (r, row) in logits.chunks_exact(n_vocab).enumerate() {
                    let next = a.done + r + 1;
                    if next < prompt.len() {
                        a.prompt_logprobs
                            .push(token_logprob(row, prompt[next], top_n));
                    }
                }
            }
            a.done += toks.len();
            if a.done < a.job.spec.prompt.len() {
                return;
            }
            if a.job.spec.prompt_logprobs {
                let lp = std::mem::take(&mut a.prompt_logprobs);
                let _ = a.job.events.send(Event::PromptLogprobs(lp));
            }
        }
        a.logits.clear();
        a.logits
            .extend_from_slice(&logits[logits.len() - n_vocab..]);
        if a.generated.len() >= a.job.spec.max_tokens {
            self.finish(i, Some("length"), None);
            return;
        }
        // A mask still being computed would keep every other row waiting for this one:
        // sample it in a later step instead (its token is the same whenever it is drawn).
        let busy = a.constraint.as_mut().is_some_and(|c| !c.is_ready());
        if busy && self.others_running(i) {
            self.slots[i].active.as_mut().expect("active").deferred = true;
            return;
        }
        self.sample_next(i);
    }

    /// Whether a slot other than `i` has work, or jobs are waiting.
    fn others_running(&self, i: usize) -> bool {
        !self.waiting.is_empty()
            || self
                .slots
                .iter()
                .enumerate()
                .any(|(j, s)| j != i && s.active.is_some())
    }

    fn sample_next(&mut self, i: usize) {
        match self.sample_into(i) {
            Next::Continue => {}
            Next::Finish(reason) => self.finish(i, Some(reason), None),
            Next::Fail(e) => self.finish(i, None, Some(e)),
        }
    }

    /// Sample the slot's next token and report it; says whether the job goes on.
    fn sample_into(&mut self, i: usize) -> Next {
        let tokenizer = &self.model.tokenizer;
        let slot = &mut self.slots[i];
        let cache_len = slot.cache.len();
        let n_ctx = slot.cache.n_ctx();
        let a = slot.active.as_mut().expect("active");
        for &(tok, bias) in &a.job.spec.logit_bias {
            a.logits[tok as usize] += bias;
        }
        if let Some(c) = &mut a.constraint {
            // Waits only if the mask is not ready (see `after_forward`).
            if let Err(e) = c.apply(&mut a.logits) {
                return Next::Fail(e);
            }
        }
        // Penalties look at recent tokens only.
        let spec = &a.job.spec;
        let want = a.sampler.params.repeat_last_n;
        let from_prompt = want
            .saturating_sub(a.generated.len())
            .min(spec.prompt.len());
        let mut recent: Vec<u32> = spec.prompt[spec.prompt.len() - from_prompt..].to_vec();
        recent.extend_from_slice(&a.generated[a.generated.len().saturating_sub(want)..]);
        let tok = a.sampler.sample(&a.logits, &recent);
        let logprob = spec.logprobs.map(|n| token_logprob(&a.logits, tok, n));
        if a.first_token_at.is_none() {
            a.first_token_at = Some(Instant::now());
            self.metrics.observe_ttft(a.job.submitted.elapsed());
        }
        // A constraint allows end of generation only where its output is complete.
        if !spec.ignore_eos && tokenizer.is_end_of_generation(tok) {
            return Next::Finish("stop");
        }
        a.generated.push(tok);
        self.metrics
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        if let Some(adapter) = &spec.adapter {
            adapter.counters.tokens.fetch_add(1, Ordering::Relaxed);
        }
        // Advancing the grammar starts computing the next mask on the constraint's helper
        // thread, overlapped with the next forward pass.
        let mut complete = match &mut a.constraint {
            Some(c) => match c.commit(tok) {
                Ok(done) => done,
                Err(e) => return Next::Fail(format!("constrained decoding: {e}")),
            },
            None => false,
        };
        if let Some(watch) = &mut a.lazy {
            match watch.push(tok, a.constraint.is_none()) {
                // The token completed a call (or opened and closed one): what follows
                // is free again.
                Some(c) if c.is_complete() => complete = watch.call_done(),
                Some(c) => a.constraint = Some(c),
                None if complete => {
                    a.constraint = None;
                    complete = watch.call_done();
                }
                None => {}
            }
        }
        let (text, stopped) = a.text.push(tok);
        if a.job.events.send(Event::Token { text, logprob }).is_err() {
            return Next::Finish("cancelled");
        }
        if stopped || complete {
            Next::Finish("stop")
        } else if a.generated.len() >= a.job.spec.max_tokens || cache_len + 1 >= n_ctx {
            Next::Finish("length")
        } else {
            a.pending = Some(tok);
            Next::Continue
        }
    }

    /// End the slot's job: flush text, report, free the slot (its cache stays for reuse).
    fn finish(&mut self, i: usize, reason: Option<&'static str>, error: Option<String>) {
        let slot = &mut self.slots[i];
        let Some(mut a) = slot.active.take() else {
            return;
        };
        if error.is_some() {
            // A failed step may have left the cache part-written.
            slot.cache.truncate(0);
        }
        self.metrics.requests_done.fetch_add(1, Ordering::Relaxed);
        self.update_gauges();
        if let Some(e) = error {
            let _ = a.job.events.send(Event::Error(e));
        } else {
            let rest = a.text.finish();
            if !rest.is_empty() {
                let _ = a.job.events.send(Event::Token {
                    text: rest,
                    logprob: None,
                });
            }
            let _ = a.job.events.send(Event::Done {
                finish_reason: reason.unwrap_or("stop"),
                prompt_tokens: a.job.spec.prompt.len(),
                cached_tokens: a.cached,
                completion_tokens: a.generated.len(),
            });
        }
    }
}

/// Log-probability of `token` under `logits`, and the `top_n` most likely tokens (fewer
/// when fewer are possible).
pub fn token_logprob(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let lse = verity_engine::log_sum_exp(logits);
    let mut top: Vec<(u32, f32)> = Vec::new();
    if top_n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top_n.min(idx.len());
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        // Tokens a grammar ruled out (-inf) are no alternatives (JSON has no -inf).
        top = idx
            .into_iter()
            .filter(|&t| logits[t as usize] > f32::NEG_INFINITY)
            .map(|t| (t, logits[t as usize] - lse))
            .collect();
    }
    TokenLogprob {
        token,
        logprob: logits[token as usize] - lse,
        top,
    }
}
