//! Where a training step's time goes (`VERITY_TUNE_PROFILE=1`): wall time per kind of
//! operation, summed over the run and printed by the CLI at the end, with the arithmetic
//! done in the matrix products so that a rate can be compared with the machine's peak.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Kinds of work timed.
#[derive(Clone, Copy)]
pub enum Kind {
    /// Base products `W·x` in the forward pass.
    Forward,
    /// Base products `dY·W` in the backward pass.
    Backward,
    Attention,
    AttentionBackward,
    /// LoRA products, forward and backward.
    Lora,
    /// Logits and the loss.
    Loss,
}

const NAMES: [&str; 6] = [
    "base W·x",
    "base dY·W",
    "attention",
    "attention backward",
    "LoRA",
    "loss (logits)",
];
static NANOS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
static FLOPS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    static _UNUSED: AtomicBool = AtomicBool::new(false);
    *ON.get_or_init(|| std::env::var_os("VERITY_TUNE_PROFILE").is_some_and(|v| v != "0"))
}

/// Run `f`, adding its wall time and `flops` to `kind` when profiling is on.
pub fn timed<T>(kind: Kind, flops: u64, f: impl FnOnce() -> T) -> T {
    if !enabled() {
        return f();
    }
    let t0 = Instant::now();
    let r = f();
    NANOS[kind as usize].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    FLOPS[kind as usize].fetch_add(flops, Ordering::Relaxed);
    r
}

/// The profile so far, one line per kind (empty when profiling is off).
pub fn report() -> String {
    if !enabled() {
        return String::new();
    }
    let total: u64 = NANOS.iter().map(|n| n.load(Ordering::Relaxed)).sum();
    let mut s = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let ns = NANOS[i].load(Ordering::Relaxed);
        let fl = FLOPS[i].load(Ordering::Relaxed);
        let rate = if ns > 0 { fl as f64 / ns as f64 } else { 0.0 };
        s.push_str(&format!(
            "{name:<20} {:>8.2} s {:>5.1} %  {rate:>7.1} GFLOP/s\n",
            ns as f64 * 1e-9,
            100.0 * ns as f64 / total.max(1) as f64
        ));
    }
    s
}
