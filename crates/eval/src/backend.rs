//! Where loglikelihoods and generations come from: the local engine (batched, each
//! context's KV computed once and shared by its continuations) or an OpenAI-compatible
//! endpoint.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};
use verity_engine::{
    BatchItem, GenerateParams, KvCache, KvType, Logits, LoraSet, Runner, SamplingParams, Session,
};
use verity_model::Model;

/// One loglikelihood request, tokenized: the continuation's tokens follow the context's.
#[derive(Clone, Debug, PartialEq)]
pub struct LlRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// Its result: the log-probability of each continuation token (f32, as the engine and
/// the server compute it), their sum (in f64, in order), and whether every token was
/// the most likely one.
#[derive(Clone, Debug, PartialEq)]
pub struct LlResult {
    pub token_logprobs: Vec<f32>,
    pub loglikelihood: f64,
    pub greedy: bool,
}

impl LlResult {
    /// A result from its token log-probabilities (the sum in f64, in order).
    pub fn from_tokens(token_logprobs: Vec<f32>, greedy: bool) -> Self {
        let loglikelihood = token_logprobs.iter().map(|&x| x as f64).sum();
        LlResult {
            token_logprobs,
            loglikelihood,
            greedy,
        }
    }
}

/// What identifies the model that answered.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ModelIdentity {
    /// Model name (file name, or the endpoint's model id).
    pub name: String,
    /// Local path, when local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Endpoint URL, when remote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// OMS root digest (`verity hash`), computed locally or reported by `/v1/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_digest: Option<String>,
    /// SHA-256 of the model's chat template (not applied by eval; recorded for receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
    /// LoRA adapters applied on top of the weights, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterIdentity>,
    /// The KV cache's type when it is not the default f16 ("f32": unrounded attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache: Option<String>,
}

/// One adapter of a [`ModelIdentity`]: a local file, or an adapter an endpoint serves.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdapterIdentity {
    /// Local path (PEFT directory or GGUF LoRA file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The name an endpoint serves it under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Strength multiplying the adapter's alpha/r (1 when served).
    pub scale: f32,
    /// OMS root digest of the adapter's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_digest: Option<String>,
}

pub trait Backend: Send {
    fn identity(&self) -> &ModelIdentity;
    /// Tokens of a text, without BOS (lm-eval's `tok_encode` for causal models).
    fn tokenize(&self, text: &str) -> anyhow::Result<Vec<u32>>;
    /// Token put before an empty context (lm-eval's `prefix_token_id`: BOS, else EOS).
    fn prefix_token(&self) -> anyhow::Result<u32>;
    /// Score groups of requests (one group per document; a group's requests usually share
    /// a context). Results in the same shape.
    fn loglikelihood(&mut self, groups: &[Vec<LlRequest>]) -> anyhow::Result<Vec<Vec<LlResult>>>;
    /// Score the windows of `loglikelihood_rolling` documents (see [`crate::rolling`]): each
    /// an independent sequence, its continuation scored after its context. The model reads
    /// at most `context + continuation - 1` tokens of each.
    fn loglikelihood_rolling(&mut self, windows: &[LlRequest]) -> anyhow::Result<Vec<LlResult>> {
        let groups: Vec<Vec<LlRequest>> = windows.iter().map(|w| vec![w.clone()]).collect();
        Ok(self.loglikelihood(&groups)?.into_iter().flatten().collect())
    }
    /// The longest sequence a rolling window may give the model (lm-eval's `max_length`),
    /// unless `--max-length` says otherwise.
    fn max_length(&self) -> usize;
    /// Greedy generation until a stop string, end of generation or `max_tokens`.
    fn generate(
        &mut self,
        prompt: &[u32],
        until: &[String],
        max_tokens: usize,
    ) -> anyhow::Result<String>;
}

/// `logits[token] - logsumexp(logits)`, exactly as `verity serve` computes echo
/// log-probabilities (so local and endpoint results are bit-identical), and whether
/// `token` is the first maximum.
pub fn token_logprob(logits: &[f32], token: u32) -> (f32, bool) {
    let lse = verity_engine::log_sum_exp(logits);
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0;
    (logits[token as usize] - lse, argmax == token as usize)
}

/// Most logits rows held at once in the continuation pass (bounds memory: ~200 MB for a
/// 49k vocabulary).
const MAX_LOGIT_ROWS: usize = 1024;
/// Rolling windows: most tokens of one window fed in one pass, most tokens in one pass, and
/// most KV-cache positions held by the windows in flight.
const CHUNK: usize = 512;
const MAX_PASS_TOKENS: usize = 2048;
const MAX_KV_TOKENS: usize = 32768;
/// lm-eval's `max_length` for API models when the endpoint does not report one.
const DEFAULT_ENDPOINT_MAX_LENGTH: usize = 2048;
/// Rolling windows sent in one `/v1/completions` request.
const ENDPOINT_WINDOWS_PER_REQUEST: usize = 4;

pub struct LocalBackend {
    runner: Runner,
    identity: ModelIdentity,
    lora: Option<Arc<LoraSet>>,
    kv: KvType,
}

/// What every cache of a [`LocalBackend`] is made with: adapters and KV type.
type CacheSpec = (Option<Arc<LoraSet>>, KvType);

/// A KV cache for `n` positions made to `spec`.
fn new_cache(model: &Model, spec: &CacheSpec, n: usize) -> KvCache {
    let mut c = KvCache::with_type(model, n, spec.1);
    c.set_lora(spec.0.clone());
    c
}

impl LocalBackend {
    pub fn new(model: Arc<Model>, path: PathBuf, root_digest: Option<String>) -> Self {
        let chat_template_sha256 = model
            .tokenizer
            .chat_template()
            .map(|t| crate::hash::sha256_hex(t.as_bytes()));
        let identity = ModelIdentity {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: Some(path),
            endpoint: None,
            root_digest,
            chat_template_sha256,
            adapters: Vec::new(),
            kv_cache: None,
        };
        LocalBackend {
            runner: Runner::new(model),
            identity,
            lora: None,
            kv: KvType::F16,
        }
    }

    /// Keep keys and values as `kv` (f32: attention without f16 rounding).
    pub fn with_kv_type(mut self, kv: KvType) -> Self {
        self.kv = kv;
        self.identity.kv_cache = (kv == KvType::F32).then(|| "f32".to_string());
        self
    }

    /// Score with these adapters applied (`identities` describe them for receipts).
    pub fn with_lora(mut self, lora: Arc<LoraSet>, identities: Vec<AdapterIdentity>) -> Self {
        self.lora = Some(lora);
        self.identity.adapters = identities;
        self
    }

    fn model(&self) -> &Arc<Model> {
        self.runner.model()
    }
}

impl Backend for LocalBackend {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn tokenize(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self.model().tokenizer.encode(text, false)?)
    }

    fn prefix_token(&self) -> anyhow::Result<u32> {
        let t = &self.model().tokenizer;
        t.bos_id()
            .or(t.eos_id())
            .context("the model has neither a BOS nor an EOS token for an empty context")
    }

    fn max_length(&self) -> usize {
        // What HFLM reads from the model's config (max_position_embeddings).
        self.model().hparams.n_ctx_train.max(1)
    }

    fn loglikelihood_rolling(&mut self, windows: &[LlRequest]) -> anyhow::Result<Vec<LlResult>> {
        let model = self.model().clone();
        let lora: CacheSpec = (self.lora.clone(), self.kv);
        let n_vocab = model.hparams.n_vocab;
        for w in windows {
            if w.context.is_empty() || w.continuation.is_empty() {
                bail!("a rolling window needs a non-empty context and continuation");
            }
        }
        // Each window is one sequence on its own KV cache: the context's leading tokens
        // (all but the last) without logits, then from the context's last token on with
        // logits for every row — each row predicts the next continuation token. The model
        // reads context + continuation minus the last token, as lm-eval's HFLM does.
        // Windows are fed in chunks, many per forward pass; rows do not depend on the batch
        // or on chunking, so results equal one pass per window (and the endpoint's).
        let mut out: Vec<Option<LlResult>> = vec![None; windows.len()];
        let mut first = 0;
        while first < windows.len() {
            // Windows in flight: bounded by the KV memory they hold.
            let mut last = first;
            let mut held = 0;
            while last < windows.len() {
                let n = windows[last].context.len() + windows[last].continuation.len() - 1;
                if last > first && held + n > MAX_KV_TOKENS {
                    break;
                }
                held += n;
                last += 1;
            }
            let set = first..last;
            let seqs: Vec<Vec<u32>> = set
                .clone()
                .map(|i| {
                    let w = &windows[i];
                    let mut s: Vec<u32> =
                        w.context.iter().chain(&w.continuation).copied().collect();
                    s.pop();
                    s
                })
                .collect();
            let mut caches: Vec<KvCache> = seqs
                .iter()
                .map(|s| new_cache(&model, &lora, s.len()))
                .collect();
            // Per window: tokens fed so far, and its log-probabilities.
            let mut fed = vec![0usize; seqs.len()];
            let mut lps: Vec<Vec<f32>> = set
                .clone()
                .map(|i| Vec::with_capacity(windows[i].continuation.len()))
                .collect();
            let mut greedy = vec![true; seqs.len()];
            while fed.iter().zip(&seqs).any(|(f, s)| f < &s.len()) {
                // This pass: the next chunk of each unfinished window, within the bounds.
                let mut plan: Vec<(usize, usize, usize, Logits)> = Vec::new();
                let (mut tokens, mut rows) = (0, 0);
                for (k, s) in seqs.iter().enumerate() {
                    let f = fed[k];
                    if f == s.len() {
                        continue;
                    }
                    let scored_from = windows[first + k].context.len() - 1;
                    let (end, logits) = if f < scored_from {
                        ((f + CHUNK).min(scored_from), Logits::None)
                    } else {
                        ((f + CHUNK).min(s.len()), Logits::All)
                    };
                    let n = end - f;
                    let r = if logits == Logits::All { n } else { 0 };
                    if !plan.is_empty()
                        && (tokens + n > MAX_PASS_TOKENS || rows + r > MAX_LOGIT_ROWS)
                    {
                        break;
                    }
                    tokens += n;
                    rows += r;
                    plan.push((k, f, end, logits));
                }
                let mut items: Vec<BatchItem<'_>> = Vec::with_capacity(plan.len());
                let mut rest: &mut [KvCache] = &mut caches;
                let mut base = 0;
                for &(k, f, end, logits) in &plan {
                    // Split off each planned window's cache (plan is in window order).
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(k - base);
                    let (c, tail) = tail.split_first_mut().expect("planned window exists");
                    rest = tail;
                    base = k + 1;
                    items.push(BatchItem {
                        cache: c,
                        tokens: &seqs[k][f..end],
                        logits,
                    });
                }
                let logits = self.runner.forward(&mut items)?;
                let mut row = 0;
                for &(k, f, end, kind) in &plan {
                    if kind == Logits::All {
                        let full = &windows[first + k];
                        for pos in f..end {
                            // Row `pos` predicts token pos + 1 of context + continuation.
                            let token = if pos + 1 < full.context.len() {
                                full.context[pos + 1]
                            } else {
                                full.continuation[pos + 1 - full.context.len()]
                            };
                            let (lp, is_max) =
                                token_logprob(&logits[row * n_vocab..(row + 1) * n_vocab], token);
                            lps[k].push(lp);
                            greedy[k] &= is_max;
                            row += 1;
                        }
                    }
                    fed[k] = end;
                }
            }
            for (k, (l, g)) in lps.into_iter().zip(greedy).enumerate() {
                out[first + k] = Some(LlResult::from_tokens(l, g));
            }
            first = last;
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every window scored"))
            .collect())
    }

    fn loglikelihood(&mut self, groups: &[Vec<LlRequest>]) -> anyhow::Result<Vec<Vec<LlResult>>> {
        let model = self.model().clone();
        let lora: CacheSpec = (self.lora.clone(), self.kv);
        let n_vocab = model.hparams.n_vocab;
        // The shared prefix of each group: the longest common prefix of its full
        // sequences, at most its shortest context (so the first continuation token's
        // logits come from the prefix's last row).
        let mut prefix = Vec::with_capacity(groups.len());
        for g in groups {
            if g.is_empty() {
                prefix.push(0);
                continue;
            }
            let first: Vec<u32> = g[0]
                .context
                .iter()
                .chain(&g[0].continuation)
                .copied()
                .collect();
            let mut p = g.iter().map(|r| r.context.len()).min().unwrap_or(0);
            for r in &g[1..] {
                let lcp = r
                    .context
                    .iter()
                    .chain(&r.continuation)
                    .zip(&first)
                    .take_while(|(a, b)| a == b)
                    .count();
                p = p.min(lcp);
            }
            for r in g {
                if r.context.is_empty() || r.continuation.is_empty() {
                    bail!("a loglikelihood request needs a non-empty context and continuation");
                }
            }
            if p == 0 {
                bail!("requests of one document share no prefix token");
            }
            prefix.push(p);
        }
        // Pass 1: every group's prefix, batched; keep the last row's logits.
        let mut caches: Vec<KvCache> = Vec::with_capacity(groups.len());
        let mut last_logits: Vec<Vec<f32>> = vec![Vec::new(); groups.len()];
        {
            let live: Vec<usize> = (0..groups.len()).filter(|&i| prefix[i] > 0).collect();
            for &i in &live {
                caches.push(new_cache(&model, &lora, prefix[i]));
            }
            let mut items: Vec<BatchItem<'_>> = caches
                .iter_mut()
                .zip(&live)
                .map(|(c, &i)| BatchItem {
                    cache: c,
                    tokens: &groups[i][0].context[..prefix[i]],
                    logits: Logits::Last,
                })
                .collect();
            if !items.is_empty() {
                let logits = self.runner.forward(&mut items)?;
                for (k, &i) in live.iter().enumerate() {
                    last_logits[i] = logits[k * n_vocab..(k + 1) * n_vocab].to_vec();
                }
            }
            // Re-key caches by group index.
            let mut by_group: Vec<Option<KvCache>> = (0..groups.len()).map(|_| None).collect();
            for (c, &i) in caches.drain(..).zip(&live) {
                by_group[i] = Some(c);
            }
            // Pass 2: each request's remaining tokens on a copy of its group's prefix,
            // in chunks that bound the logits held at once.
            let mut out: Vec<Vec<LlResult>> =
                groups.iter().map(|g| Vec::with_capacity(g.len())).collect();
            let all: Vec<(usize, usize)> = groups
                .iter()
                .enumerate()
                .flat_map(|(gi, g)| (0..g.len()).map(move |ri| (gi, ri)))
                .collect();
            let mut start = 0;
            while start < all.len() {
                let mut end = start;
                let mut rows = 0;
                while end < all.len() {
                    let (gi, ri) = all[end];
                    let r = &groups[gi][ri];
                    let n = r.context.len() + r.continuation.len() - prefix[gi];
                    if end > start && rows + n > MAX_LOGIT_ROWS {
                        break;
                    }
                    rows += n;
                    end += 1;
                }
                let chunk = &all[start..end];
                let seqs: Vec<Vec<u32>> = chunk
                    .iter()
                    .map(|&(gi, ri)| {
                        let r = &groups[gi][ri];
                        r.context.iter().chain(&r.continuation).copied().collect()
                    })
                    .collect();
                let mut rcaches: Vec<KvCache> = chunk
                    .iter()
                    .zip(&seqs)
                    .map(|(&(gi, _), s)| {
                        let mut c = new_cache(&model, &lora, s.len());
                        if let Some(pc) = &by_group[gi] {
                            c.copy_prefix_from(pc, prefix[gi]);
                        }
                        c
                    })
                    .collect();
                let mut items: Vec<BatchItem<'_>> = rcaches
                    .iter_mut()
                    .zip(chunk.iter().zip(&seqs))
                    .map(|(c, (&(gi, _), s))| BatchItem {
                        cache: c,
                        tokens: &s[prefix[gi]..],
                        logits: Logits::All,
                    })
                    .collect();
                let logits = self.runner.forward(&mut items)?;
                let mut row0 = 0;
                for (&(gi, ri), s) in chunk.iter().zip(&seqs) {
                    let r = &groups[gi][ri];
                    let p = prefix[gi];
                    let mut lps = Vec::with_capacity(r.continuation.len());
                    let mut greedy = true;
                    for (t, &token) in s.iter().enumerate().skip(r.context.len()) {
                        // Logits at position t-1 predict token t.
                        let row: &[f32] = if t - 1 == p - 1 {
                            &last_logits[gi]
                        } else {
                            let k = row0 + (t - 1 - p);
                            &logits[k * n_vocab..(k + 1) * n_vocab]
                        };
                        let (lp, is_max) = token_logprob(row, token);
                        lps.push(lp);
                        greedy &= is_max;
                    }
                    row0 += s.len() - p;
                    out[gi].push(LlResult::from_tokens(lps, greedy));
                }
                start = end;
            }
            Ok(out)
        }
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        until: &[String],
        max_tokens: usize,
    ) -> anyhow::Result<String> {
        let model = self.model().clone();
        let n_ctx =
            (prompt.len() + max_tokens + 1).min(model.hparams.n_ctx_train.max(prompt.len() + 1));
        let mut session = Session::with_kv_type(model, n_ctx, self.kv);
        session.set_lora(self.lora.clone());
        let params = GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            stop: until.to_vec(),
            ignore_eos: false,
        };
        let g = verity_engine::generate(&mut session, prompt, &params, &mut |_| true)?;
        Ok(g.text)
    }
}

/// An OpenAI-compatible endpoint: loglikelihoods from `/v1/completions` with
/// `echo` + `logprobs` and `max_tokens: 0` (prompts sent as token ids, tokenized by the
/// server's `/tokenize`), generation from `/v1/completions`.
pub struct EndpointBackend {
    base: String,
    api_key: Option<String>,
    model_id: String,
    identity: ModelIdentity,
    concurrency: usize,
    agent: ureq::Agent,
    prefix: Option<u32>,
    max_length: usize,
}

impl EndpointBackend {
    /// Connect to `url` and score with the model it lists first, or the one named `model`
    /// (a served adapter's name selects that adapter, vLLM's convention).
    pub fn connect(
        url: &str,
        api_key: Option<String>,
        concurrency: usize,
        model: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut base = url.trim_end_matches('/').to_string();
        if base.ends_with("/v1") {
            base.truncate(base.len() - 3);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(600)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut b = EndpointBackend {
            base,
            api_key,
            model_id: String::new(),
            identity: ModelIdentity::default(),
            concurrency: concurrency.max(1),
            agent,
            prefix: None,
            max_length: DEFAULT_ENDPOINT_MAX_LENGTH,
        };
        let models = b.call("GET", "/v1/models", None)?;
        let listed = models["data"].as_array().cloned().unwrap_or_default();
        let first = match model {
            None => listed.first(),
            Some(name) => listed.iter().find(|m| m["id"] == name),
        }
        .ok_or_else(|| match model {
            None => anyhow!("{}/v1/models lists no model", b.base),
            Some(name) => anyhow!(
                "{}/v1/models does not list '{name}' (it serves: {})",
                b.base,
                listed
                    .iter()
                    .filter_map(|m| m["id"].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })?;
        b.model_id = first["id"].as_str().unwrap_or_default().to_string();
        // An adapter entry names its base as `parent`: the weights are the parent's, plus it.
        let parent = first["parent"]
            .as_str()
            .and_then(|p| listed.iter().find(|m| m["id"] == p));
        let (root_digest, adapters) = match parent {
            Some(base) => (
                base["root_digest"].as_str().map(String::from),
                vec![AdapterIdentity {
                    path: None,
                    name: Some(b.model_id.clone()),
                    scale: first["scale"].as_f64().unwrap_or(1.0) as f32,
                    root_digest: first["root_digest"].as_str().map(String::from),
                }],
            ),
            None => (first["root_digest"].as_str().map(String::from), Vec::new()),
        };
        b.identity = ModelIdentity {
            name: b.model_id.clone(),
            path: None,
            endpoint: Some(url.to_string()),
            root_digest,
            chat_template_sha256: None,
            adapters,
            kv_cache: None,
        };
        let first = parent.unwrap_or(first);
        // verity serve reports the context a request gets (else the model's trained one);
        // other servers get lm-eval's API default.
        let meta = &first["meta"];
        if let Some(n) = meta["n_ctx"]
            .as_u64()
            .or(meta["n_ctx_train"].as_u64())
            .filter(|&n| n > 0)
        {
            b.max_length = n as usize;
        }
        // The token put before an empty context: BOS, else EOS, as the local backend does,
        // when the server reports them; else the token the server adds (`add_special`).
        b.prefix = meta["bos_token_id"]
            .as_u64()
            .or(meta["eos_token_id"].as_u64())
            .map(|t| t as u32);
        if b.prefix.is_none() {
            if let Ok(v) = b.call(
                "POST",
                "/tokenize",
                Some(&json!({"content": "", "add_special": true})),
            ) {
                b.prefix = v["tokens"].get(0).and_then(Value::as_u64).map(|t| t as u32);
            }
        }
        Ok(b)
    }

    /// One HTTP call with retries (connection errors, 429 and 5xx) and exponential backoff.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        call_with_retries(
            &self.agent,
            &self.base,
            self.api_key.as_deref(),
            method,
            path,
            body,
        )
    }
}

fn call_with_retries(
    agent: &ureq::Agent,
    base: &str,
    api_key: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let url = format!("{base}{path}");
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    for attempt in 0..6 {
        if attempt > 0 {
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(8));
        }
        let resp = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&url);
                if let Some(k) = api_key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.call()
            }
            (_, b) => {
                let mut r = agent.post(&url).header("Content-Type", "application/json");
                if let Some(k) = api_key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.send(serde_json::to_string(b.unwrap_or(&Value::Null))?.as_bytes())
            }
        };
        match resp {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                if status == 429 || status >= 500 {
                    last = format!(
                        "{url}: HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    );
                    continue;
                }
                if status != 200 {
                    bail!(
                        "{url}: HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    );
                }
                return serde_json::from_str(&text)
                    .with_context(|| format!("{url}: response is not JSON"));
            }
            Err(e) => last = format!("{url}: {e}"),
        }
    }
    bail!("{last} (gave up after 6 tries)")
}

impl Backend for EndpointBackend {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn tokenize(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let v = self.call(
            "POST",
            "/tokenize",
            Some(&json!({"content": text, "add_special": false})),
        )?;
        v["tokens"]
            .as_array()
            .context("/tokenize returned no tokens")?
            .iter()
            .map(|t| {
                t.as_u64()
                    .map(|t| t as u32)
                    .context("bad token id from /tokenize")
            })
            .collect()
    }

    fn prefix_token(&self) -> anyhow::Result<u32> {
        if let Some(p) = self.prefix {
            return Ok(p);
        }
        bail!("the endpoint does not say which token starts a sequence (needed for empty contexts and rolling loglikelihood); pass --prefix-token-id (the model's BOS token id, e.g. from `verity inspect`)")
    }

    fn max_length(&self) -> usize {
        self.max_length
    }

    fn loglikelihood_rolling(&mut self, windows: &[LlRequest]) -> anyhow::Result<Vec<LlResult>> {
        // A few windows per HTTP request (independent prompts), `concurrency` requests in
        // flight.
        let groups: Vec<Vec<LlRequest>> = windows
            .chunks(ENDPOINT_WINDOWS_PER_REQUEST)
            .map(<[LlRequest]>::to_vec)
            .collect();
        Ok(self.loglikelihood(&groups)?.into_iter().flatten().collect())
    }

    fn loglikelihood(&mut self, groups: &[Vec<LlRequest>]) -> anyhow::Result<Vec<Vec<LlResult>>> {
        // One HTTP request per document (all its continuations as token-id prompts),
        // `concurrency` documents in flight.
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<anyhow::Result<Vec<LlResult>>>>> =
            groups.iter().map(|_| std::sync::Mutex::new(None)).collect();
        let (agent, base, key, model) = (
            &self.agent,
            self.base.as_str(),
            self.api_key.as_deref(),
            self.model_id.as_str(),
        );
        std::thread::scope(|s| {
            for _ in 0..self.concurrency.min(groups.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= groups.len() {
                        break;
                    }
                    let r = score_group(agent, base, key, model, &groups[i]);
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
            }
        });
        results
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .unwrap_or_else(|| Err(anyhow!("request not run")))
            })
            .collect()
    }

    fn generate(
        &mut self,
        prompt: &[u32],
        until: &[String],
        max_tokens: usize,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "model": self.model_id, "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0.0,
        });
        if !until.is_empty() {
            // OpenAI allows at most 4 stop strings.
            body["stop"] = json!(until.iter().take(4).collect::<Vec<_>>());
        }
        let v = self.call("POST", "/v1/completions", Some(&body))?;
        let mut text = v["choices"][0]["text"]
            .as_str()
            .context("completion without text")?
            .to_string();
        for u in until {
            if let Some(i) = text.find(u.as_str()) {
                text.truncate(i);
            }
        }
        Ok(text)
    }
}

fn score_group(
    agent: &ureq::Agent,
    base: &str,
    key: Option<&str>,
    model: &str,
    group: &[LlRequest],
) -> anyhow::Result<Vec<LlResult>> {
    let mut out = Vec::with_capacity(group.len());
    for chunk in group.chunks(64) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| r.context.iter().chain(&r.continuation).copied().collect())
            .collect();
        let body = json!({
            "model": model, "prompt": prompts, "echo": true, "logprobs": 1,
            "max_tokens": 0, "temperature": 0.0,
        });
        let v = call_with_retries(agent, base, key, "POST", "/v1/completions", Some(&body))?;
        let choices = v["choices"]
            .as_array()
            .context("completion without choices")?;
        if choices.len() != chunk.len() {
            bail!(
                "endpoint returned {} choices for {} prompts",
                choices.len(),
                chunk.len()
            );
        }
        let mut by_index: Vec<Option<&Value>> = vec![None; chunk.len()];
        for (k, c) in choices.iter().enumerate() {
            let i = c["index"].as_u64().map(|i| i as usize).unwrap_or(k);
            if let Some(slot) = by_index.get_mut(i) {
                *slot = Some(c);
            }
        }
        for (r, c) in chunk.iter().zip(by_index) {
            let c = c.context("missing choice")?;
            let lp = &c["logprobs"];
            let tokens = lp["tokens"]
                .as_array()
                .context("no echoed tokens (does the endpoint support echo with logprobs?)")?;
            let tlp = lp["token_logprobs"]
                .as_array()
                .context("no token_logprobs")?;
            let top = lp["top_logprobs"].as_array().context("no top_logprobs")?;
            let n = r.context.len() + r.continuation.len();
            if tokens.len() < n || tlp.len() < n {
                bail!(
                    "endpoint echoed {} tokens for a {n}-token prompt",
                    tokens.len()
                );
            }
            let mut lps = Vec::with_capacity(r.continuation.len());
            let mut greedy = true;
            for t in r.context.len()..n {
                let x = tlp[t]
                    .as_f64()
                    .context("null logprob for a continuation token")?;
                lps.push(x as f32);
                let tok = tokens[t].as_str().unwrap_or_default();
                let best = top.get(t).and_then(|m| m.as_object()).and_then(|m| {
                    m.iter()
                        .max_by(|a, b| {
                            a.1.as_f64()
                                .unwrap_or(f64::NEG_INFINITY)
                                .total_cmp(&b.1.as_f64().unwrap_or(f64::NEG_INFINITY))
                        })
                        .map(|(k, _)| k.clone())
                });
                greedy &= best.as_deref() == Some(tok);
            }
            out.push(LlResult::from_tokens(lps, greedy));
        }
    }
    Ok(out)
}
