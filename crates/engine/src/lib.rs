//! The engine: runs a loaded [`verity_model::Model`] — the forward pass over a KV cache,
//! sampling, and the generation loop with stop conditions and streaming.

mod forward;
mod generate;
mod lora;
mod moe;
mod ops;
mod sampling;

pub use forward::{BatchItem, EngineError, KvCache, KvType, Logits, Runner, Session};
pub use generate::{
    generate, generate_filtered, FinishReason, GenerateParams, Generation, TextStream, Timings,
    TokenFilter,
};
pub use lora::{same_lora, LoraSet};
/// The transformer block's elementwise operations, shared with training so that a
/// trained model's forward pass is the engine's.
pub use ops::{par_rows, rms_norm, rms_scale, Rope};
pub use sampling::{log_sum_exp, Sampler, SamplingParams};

/// Set the number of worker threads for all compute (call once, before any work).
pub fn init_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    // The first call wins; later calls keep the pool that exists.
    verity_pool::init(n);
}

/// Physical-core-sized default: all available cores.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
