//! LoRA fine-tuning on a CPU.
//!
//! The data flow: [`data`] turns a dataset file into token sequences with loss masks and
//! packs them; the training step runs the decoder forward keeping what the backward pass
//! needs, then back-propagates into the LoRA matrices only (the base stays frozen in its
//! own format); AdamW updates them.

pub mod data;
