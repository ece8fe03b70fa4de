use std::path::PathBuf;

/// What went wrong reading a model file. Messages name the problem and, where one
/// exists, what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (verity reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error(
        "file is truncated: needed {needed} bytes at offset {offset} for {what}, file has {len}"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("tensor '{name}' has unsupported type {ty}; supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4")]
    UnsupportedTensorType { name: String, ty: String },
    #[error(
        "tensor '{name}' lies outside the file (bytes {start}..{end}, data section is {len} bytes)"
    )]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error(
        "{path}: PyTorch pickle files can run arbitrary code when loaded and are refused; \
         convert the model to safetensors (e.g. `transformers` save_pretrained(safe_serialization=True)) or GGUF"
    )]
    Pickle { path: PathBuf },
}

impl FormatError {
    pub(crate) fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Self {
        FormatError::Invalid {
            what: printable(&what.into()),
            detail: printable(&detail.into()),
        }
    }
}

/// Text from a file made safe for a one-line message: control characters escaped and
/// long strings cut, since a hostile file chooses its own key and tensor names.
pub fn printable(s: &str) -> String {
    const MAX_LEN: usize = 160;
    let mut out = String::new();
    for c in s.chars() {
        if out.len() >= MAX_LEN {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
