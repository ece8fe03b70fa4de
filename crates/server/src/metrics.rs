//! Counters for `GET /metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    pub active_slots: AtomicUsize,
    /// Per adapter name.
    lora: Mutex<std::collections::BTreeMap<String, Arc<LoraCounters>>>,
    /// Adapters with at least one job in a slot.
    pub lora_running: AtomicUsize,
    ttft_micros_sum: AtomicU64,
    ttft_count: AtomicU64,
    started: std::sync::OnceLock<std::time::Instant>,
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

    pub fn observe_ttft(&self, d: Duration) {
        self.ttft_micros_sum
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.ttft_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text; `adapters_loaded` is how many adapters are served now.
    pub fn render(&self, queue_depth: usize, adapters_loaded: usize) -> String {
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
        let _ = writeln!(out, "# HELP verity_queue_depth Requests waiting for a slot.\n# TYPE verity_queue_depth gauge\nverity_queue_depth {queue_depth}");
        let _ = writeln!(
            out,
            "# HELP verity_active_slots Slots generating now.\n# TYPE verity_active_slots gauge\nverity_active_slots {}",
            self.active_slots.load(Ordering::Relaxed)
        );
        let (sum, count) = (
            self.ttft_micros_sum.load(Ordering::Relaxed),
            self.ttft_count.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP verity_time_to_first_token_seconds Time from request to first token.\n# TYPE verity_time_to_first_token_seconds summary\nverity_time_to_first_token_seconds_sum {}\nverity_time_to_first_token_seconds_count {count}",
            sum as f64 / 1e6
        );
        self.render_lora(&mut out, adapters_loaded);
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
        out
    }

    fn render_lora(&self, out: &mut String, loaded: usize) {
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
            self.lora_running.load(Ordering::Relaxed)
        );
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
