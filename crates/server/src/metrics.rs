//! Counters and gauges for `GET /metrics` (Prometheus text format).
//!
//! Load gauges for routers (the Gateway API Inference Extension's endpoint picker, which
//! reads vLLM's names by default) are reported under verity's names and, once the model is
//! loaded, also under vLLM's, with vLLM's meaning:
//!
//! | verity | vLLM | meaning |
//! | --- | --- | --- |
//! | `verity_queue_depth` | `vllm:num_requests_waiting` | requests waiting for a slot |
//! | `verity_active_slots` | `vllm:num_requests_running` | requests in slots (prefilling or generating) |
//! | `verity_kv_cache_usage_ratio` | `vllm:kv_cache_usage_perc` | KV cache in use, 0..=1 |
//! | `verity_lora_requests_info` | `vllm:lora_requests_info` | adapters running and waiting |
//!
//! KV cache use is the tokens held in the caches of slots that have a request, over what
//! all slots can hold (slots × context). A prompt prefix kept in an idle slot for reuse is
//! free capacity: any request may overwrite it, as vLLM counts cached blocks no request
//! holds as free. A reused prefix counts once a request holds it; the same prefix held by
//! two slots counts twice, since each slot keeps its own copy.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Counters of one adapter (kept after an unload: counters never go back).
#[derive(Default)]
pub struct LoraCounters {
    /// Generation requests accepted for the adapter.
    pub requests: AtomicU64,
    /// Tokens generated with it.
    pub tokens: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    pub requests: Mutex<std::collections::BTreeMap<(String, u16), u64>>,
    pub requests_done: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Per adapter name.
    lora: Mutex<std::collections::BTreeMap<String, Arc<LoraCounters>>>,
    /// What the scheduler last reported, read whole so that one scrape is consistent.
    slots: Mutex<SlotGauges>,
    ttft_micros_sum: AtomicU64,
    ttft_count: AtomicU64,
    started: std::sync::OnceLock<std::time::Instant>,
}

/// What the scheduler reports of its slots (see [`Metrics::set_slots`]).
pub struct SlotsState<'a> {
    /// Slots: the most requests that run at once, and the most adapters in one batch.
    pub slots: usize,
    /// Requests in slots, prefilling or generating.
    pub running: usize,
    /// Tokens in the KV caches of the slots that hold a request.
    pub kv_tokens: usize,
    /// Tokens all slots' KV caches can hold (slots × context).
    pub kv_capacity: usize,
    /// Adapters of the requests in slots.
    pub running_adapters: BTreeSet<&'a str>,
    /// Adapters of the requests waiting for a slot.
    pub waiting_adapters: BTreeSet<&'a str>,
}

impl SlotsState<'_> {
    /// `slots` empty slots that can hold `kv_capacity` tokens in all.
    pub fn idle(slots: usize, kv_capacity: usize) -> Self {
        SlotsState {
            slots,
            running: 0,
            kv_tokens: 0,
            kv_capacity,
            running_adapters: BTreeSet::new(),
            waiting_adapters: BTreeSet::new(),
        }
    }
}

/// [`SlotsState`] as kept for scrapes.
#[derive(Clone, Default)]
struct SlotGauges {
    slots: usize,
    running: usize,
    kv_tokens: usize,
    kv_capacity: usize,
    /// Comma-separated adapter names.
    running_adapters: String,
    running_adapter_count: usize,
    waiting_adapters: String,
    /// When the scheduler last reported, seconds since the Unix epoch.
    updated: f64,
}

/// What `/metrics` reads from the server when scraped.
pub struct Scrape<'a> {
    /// Requests waiting for a slot.
    pub waiting: usize,
    /// LoRA adapters being served.
    pub adapters_loaded: usize,
    /// The loaded model's id (the vLLM-named gauges' `model_name`); they are left out
    /// while the model is loading.
    pub model: Option<&'a str>,
    /// Whether the server can serve adapters (some are loaded, or run-time loading is
    /// on): `lora_requests_info` is reported only then, as vLLM reports it only with LoRA
    /// enabled.
    pub lora: bool,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics::default();
        let _ = m.started.set(std::time::Instant::now());
        m
    }

    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *r.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// The counters of adapter `name` (created on first use, shared by later loads of the
    /// same name).
    pub fn lora_counters(&self, name: &str) -> Arc<LoraCounters> {
        self.lora
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The scheduler's slots now; called at every step and as jobs end.
    pub fn set_slots(&self, s: SlotsState<'_>) {
        let updated = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        g.slots = s.slots;
        g.running = s.running;
        g.kv_tokens = s.kv_tokens;
        g.kv_capacity = s.kv_capacity;
        set_list(&mut g.running_adapters, &s.running_adapters);
        g.running_adapter_count = s.running_adapters.len();
        set_list(&mut g.waiting_adapters, &s.waiting_adapters);
        g.updated = updated;
    }

    pub fn observe_ttft(&self, d: Duration) {
        self.ttft_micros_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP verity_requests_total HTTP requests by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE verity_requests_total counter");
        for ((endpoint, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "verity_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let counters = [
            (
                "verity_prompt_tokens_total",
                "Prompt tokens received.",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "verity_prompt_tokens_cached_total",
                "Prompt tokens served from the prefix cache.",
                self.cached_tokens.load(Ordering::Relaxed),
            ),
            (
                "verity_generated_tokens_total",
                "Tokens generated.",
                self.generated_tokens.load(Ordering::Relaxed),
            ),
            (
                "verity_generations_total",
                "Generations finished.",
                self.requests_done.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        // A copy, so that the scheduler never waits for a scrape.
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let waiting = scrape.waiting;
        let (running, kv_tokens, kv_capacity) = (slots.running, slots.kv_tokens, slots.kv_capacity);
        let kv_usage = if kv_capacity > 0 {
            (kv_tokens as f64 / kv_capacity as f64).min(1.0)
        } else {
            0.0
        };
        let gauges = [
            (
                "verity_queue_depth",
                "Requests waiting for a slot.",
                waiting as f64,
            ),
            (
                "verity_active_slots",
                "Requests in slots (prefilling or generating).",
                running as f64,
            ),
            (
                "verity_kv_cache_usage_ratio",
                "KV cache in use (0..1): tokens held for requests in slots over slots x context; prefixes kept in idle slots for reuse are free.",
                kv_usage,
            ),
            (
                "verity_kv_cache_tokens",
                "Tokens in the KV caches of slots holding a request.",
                kv_tokens as f64,
            ),
            (
                "verity_kv_cache_capacity_tokens",
                "Tokens all slots' KV caches can hold (slots x context).",
                kv_capacity as f64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let (sum, count) = (
            self.ttft_micros_sum.load(Ordering::Relaxed),
            self.ttft_count.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP verity_time_to_first_token_seconds Time from request to first token.\n# TYPE verity_time_to_first_token_seconds summary\nverity_time_to_first_token_seconds_sum {}\nverity_time_to_first_token_seconds_count {count}",
            sum as f64 / 1e6
        );
        self.render_lora(&mut out, scrape, &slots);
        let uptime = self
            .started
            .get()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let rate = if uptime > 0.0 {
            self.generated_tokens.load(Ordering::Relaxed) as f64 / uptime
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "# HELP verity_generated_tokens_per_second Generated tokens per second since start.\n# TYPE verity_generated_tokens_per_second gauge\nverity_generated_tokens_per_second {rate:.3}"
        );
        if let Some(model) = scrape.model {
            // vLLM's names and labels, so that routers and dashboards made for vLLM read
            // verity unconfigured.
            let labels = format!("{{model_name=\"{}\",engine=\"0\"}}", label(model));
            let gauges = [
                (
                    "vllm:num_requests_waiting",
                    "Requests waiting for a slot (verity_queue_depth).",
                    waiting as f64,
                ),
                (
                    "vllm:num_requests_running",
                    "Requests in slots, prefilling or generating (verity_active_slots).",
                    running as f64,
                ),
                (
                    "vllm:kv_cache_usage_perc",
                    "KV cache in use, 1 is all of it (verity_kv_cache_usage_ratio).",
                    kv_usage,
                ),
            ];
            for (name, help, v) in gauges {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{labels} {v}"
                );
            }
            if scrape.lora {
                render_lora_info(&mut out, "vllm:lora_requests_info", &slots);
            }
        }
        out
    }

    fn render_lora(&self, out: &mut String, scrape: &Scrape<'_>, slots: &SlotGauges) {
        let loaded = scrape.adapters_loaded;
        let lora = self.lora.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            out,
            "# HELP verity_lora_requests_total Generation requests by LoRA adapter.\n# TYPE verity_lora_requests_total counter"
        );
        for (name, c) in lora.iter() {
            let _ = writeln!(
                out,
                "verity_lora_requests_total{{adapter=\"{}\"}} {}",
                label(name),
                c.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP verity_lora_tokens_total Tokens generated by LoRA adapter.\n# TYPE verity_lora_tokens_total counter"
        );
        for (name, c) in lora.iter() {
            let _ = writeln!(
                out,
                "verity_lora_tokens_total{{adapter=\"{}\"}} {}",
                label(name),
                c.tokens.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP verity_lora_adapters_loaded LoRA adapters being served.\n# TYPE verity_lora_adapters_loaded gauge\nverity_lora_adapters_loaded {loaded}"
        );
        let _ = writeln!(
            out,
            "# HELP verity_lora_adapters_running LoRA adapters with at least one running request.\n# TYPE verity_lora_adapters_running gauge\nverity_lora_adapters_running {}",
            slots.running_adapter_count
        );
        if scrape.model.is_some() && scrape.lora {
            render_lora_info(out, "verity_lora_requests_info", slots);
        }
    }
}

/// `lora_requests_info` as vLLM reports it: one series whose labels name the adapters of
/// running and of waiting requests (comma-separated) and the most adapters one batch can
/// mix (`max_lora`: here every slot may run a different one), and whose value is when the
/// scheduler last reported, in Unix seconds (routers take the series with the latest).
fn render_lora_info(out: &mut String, name: &str, g: &SlotGauges) {
    let _ = writeln!(
        out,
        "# HELP {name} Adapters of running and of waiting requests; the value is when this was last updated (Unix seconds).\n# TYPE {name} gauge\n{name}{{max_lora=\"{}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {}",
        g.slots,
        label(&g.running_adapters),
        label(&g.waiting_adapters),
        g.updated
    );
}

/// Make `list` the comma-separated `names`, reallocating only when they changed.
fn set_list(list: &mut String, names: &BTreeSet<&str>) {
    let same = list
        .split(',')
        .filter(|n| !n.is_empty())
        .eq(names.iter().copied());
    if !same {
        list.clear();
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str(n);
        }
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
