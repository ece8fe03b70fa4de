//! Models of the Llama family: what an architecture's hyperparameters are, what its
//! tensors are called, and loading them (memory-mapped) from GGUF files or Hugging Face
//! directories into one in-memory description the engine runs.
//!
//! Everything architecture-specific lives in [`arch`]; the loader validates every tensor's
//! shape against the hyperparameters so the engine can index without checks.

pub mod adapter;
pub mod arch;
mod load;
mod split;
mod tensor;

pub use adapter::{Adapter, AdapterError, AdapterFile, AdapterFormat, Proj};
pub use arch::{Arch, HParams, RopeStyle};
pub use load::{
    load, load_with, open_gguf_parts, Layer, LoadError, Model, ModelFormat, Moe, MoeBiases, Weights,
};
pub use tensor::Tensor;
