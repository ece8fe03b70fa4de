//! Audit: know what a model file is, prove where it came from, and see how two models relate.
//!
//! - [`inspect`]: everything a file says about itself, and findings where it contradicts itself.
//! - [`hash`]: the OpenSSF Model Signing (OMS) v1.0 manifest of a model and its root digest,
//!   the one identity of a model everywhere in verity ([`root_digest`]).
//! - [`sign`]: OMS v1.0 signatures (an in-toto statement in a DSSE envelope, in a Sigstore
//!   bundle) with ECDSA P-256 keys, interoperable with the `model-signing` Python package.
//! - [`diff`]: tensor-by-tensor comparison of two models on dequantized values, with a verdict
//!   on lineage; a GGUF file and a Hugging Face directory pair up by the architecture's
//!   names ([`naming`]).

pub mod adapter;
pub mod diff;
pub mod hash;
pub mod inspect;
mod linalg;
pub mod naming;
pub mod sign;
pub mod source;

pub use hash::{hash_model, root_digest, HashOptions, Manifest};
