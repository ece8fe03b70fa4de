//! SHA-256 helpers (lm-eval's `hash_string` is SHA-256 hex of the UTF-8 text).

use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The next link of a hash chain: SHA-256(previous hex || item hex).
pub fn chain(prev: &str, item: &str) -> String {
    sha256_hex(format!("{prev}{item}").as_bytes())
}
