//! File formats that hold model weights: GGUF and Hugging Face safetensors directories.
//!
//! Every reader here treats its input as hostile: each length, count, offset and shape
//! is checked against the bytes actually present before it is used, allocations are
//! bounded by the input size, and no input can make a reader panic.

mod error;
pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod mxfp4;
mod residency;
pub mod safetensors_file;
mod tensor_type;

pub use error::{printable, FormatError};
pub use residency::{Residency, RESIDENT_MIN_BYTES};
pub use tensor_type::TensorType;

/// Refuse formats that execute code when loaded (PyTorch pickles), with a pointer to safetensors.
pub fn refuse_pickle(path: &std::path::Path) -> Result<(), FormatError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(
        ext.as_str(),
        "bin" | "pt" | "pth" | "ckpt" | "pkl" | "pickle"
    ) {
        return Err(FormatError::Pickle {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}
