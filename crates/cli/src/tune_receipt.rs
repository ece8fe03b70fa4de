//! Tuning receipts: what a run was given (base root digest, data digests, every setting,
//! the seed), the code version, every step's loss with the hash chain over them, and the
//! adapter's digest. `verity tune verify` re-runs one.

use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use verity_tune::checkpoint::StepRecord;

use crate::tune::RunRecord;

const FORMAT: &str = "verity-tune-receipt-1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiptStep {
    pub step: u64,
    pub loss: f64,
    pub chain: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub verity: serde_json::Value,
    pub run: RunRecord,
    /// SHA-256 of the canonical JSON of `run`: an edited setting shows.
    pub run_sha256: String,
    pub steps: Vec<ReceiptStep>,
    /// The last link of the loss hash chain.
    pub chain: String,
    /// SHA-256 of the adapter's adapter_model.safetensors.
    pub adapter_sha256: String,
}

fn run_digest(run: &RunRecord) -> String {
    let v = serde_json::to_vec(run).unwrap_or_default();
    format!("{:x}", Sha256::digest(&v))
}

impl Receipt {
    pub fn new(run: &RunRecord, history: &[StepRecord], adapter_sha256: &str) -> Receipt {
        Receipt {
            format: FORMAT.into(),
            verity: serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "git": option_env!("VERITY_GIT_HASH"),
            }),
            run: run.clone(),
            run_sha256: run_digest(run),
            steps: history
                .iter()
                .map(|r| ReceiptStep {
                    step: r.step,
                    loss: r.loss,
                    chain: r.chain.clone(),
                })
                .collect(),
            chain: history.last().map(|r| r.chain.clone()).unwrap_or_default(),
            adapter_sha256: adapter_sha256.into(),
        }
    }

    /// A cause, if the receipt contradicts itself (an edited setting or loss).
    pub fn self_check(&self) -> Option<String> {
        if run_digest(&self.run) != self.run_sha256 {
            return Some(
                "the receipt's recorded inputs or settings were changed after it was written (run_sha256 does not match)".into(),
            );
        }
        let mut prev = String::new();
        for s in &self.steps {
            let next = verity_tune::train::chain_next(&prev, s.step, s.loss);
            if next != s.chain {
                return Some(format!("the receipt's loss at step {} was changed after it was written (the hash chain breaks there)", s.step));
            }
            prev = next;
        }
        None
    }
}

pub fn write(path: &Path, r: &Receipt) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(r)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

pub fn read(path: &Path) -> anyhow::Result<Receipt> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let r: Receipt = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a verity tune receipt", path.display()))?;
    if r.format != FORMAT {
        anyhow::bail!(
            "{}: receipt format '{}' is not {FORMAT}",
            path.display(),
            r.format
        );
    }
    Ok(r)
}
