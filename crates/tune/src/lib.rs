//! LoRA fine-tuning on a CPU.
//!
//! The data flow: [`data`] turns a dataset file into token sequences with loss masks and
//! packs them; [`step`] runs the decoder forward keeping what the backward pass needs,
//! then back-propagates into the LoRA matrices only (the base stays frozen in its own
//! format); [`train`] drives AdamW ([`optim`]) over the steps, with checkpoints
//! ([`checkpoint`]) and a hash chain of per-step losses that receipts bind.

pub mod checkpoint;
pub mod data;
pub mod lora;
mod ops;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod step;
pub mod train;
