//! `verity eval`: lm-evaluation-harness-compatible evaluation (same prompts, same
//! metrics, same result schema) on the local engine or an OpenAI-compatible endpoint,
//! with receipts that anyone can re-run.
//!
//! Flow: task config ([`task`], [`yaml`]) -> documents ([`data`], [`arrow`], [`parquet`]) -> prompts
//! and requests ([`run`], [`template`], [`builtin`]; documents split into windows by
//! [`rolling`] for `loglikelihood_rolling`) -> a [`backend::Backend`] -> per-sample metrics
//! and aggregates ([`metrics`]) -> results JSON, samples JSONL, table, and a [`receipt`].

pub mod arrow;
pub mod backend;
pub mod builtin;
pub mod data;
pub mod hash;
pub mod metrics;
pub mod parquet;
pub mod pyrandom;
pub mod receipt;
pub mod rolling;
pub mod run;
pub mod task;
pub mod template;
pub mod value;
pub mod yaml;

pub use backend::{
    AdapterIdentity, Backend, EndpointBackend, LlRequest, LlResult, LocalBackend, ModelIdentity,
};
pub use run::{evaluate, resolve_tasks, Options, Report, TaskSpec};
