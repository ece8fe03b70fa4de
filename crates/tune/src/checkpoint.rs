//! Checkpoints: everything a run needs to continue exactly where it stopped (the LoRA
//! values, AdamW's moments, the step, the per-step history), written atomically.
//!
//! Layout under the output directory: `checkpoints/step-NNNNNNNN/` (`state.safetensors` +
//! `state.json`) and `checkpoints/latest` naming the newest one. A checkpoint is written
//! into a temporary directory, synced, renamed into place, and only then does `latest`
//! move to it (itself replaced by rename) and older checkpoints go: a crash or a full
//! disk at any point leaves the previous checkpoint complete and `latest` pointing at it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::optim::AdamState;

/// One optimizer step's figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens processed (every row of every sequence) and loss targets.
    pub tokens: u64,
    pub targets: u64,
    pub seconds: f64,
    /// Hash chain over the losses so far (hex SHA-256).
    pub chain: String,
}

/// A validation measurement.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ValidRecord {
    pub step: u64,
    pub loss: f64,
}

/// The resumable state of a run.
#[derive(Clone, Debug)]
pub struct State {
    /// Optimizer steps completed.
    pub step: u64,
    pub values: Vec<f32>,
    pub adam: AdamState,
    pub history: Vec<StepRecord>,
    pub valid: Vec<ValidRecord>,
    /// The run's settings and inputs, as the CLI recorded them (opaque here).
    pub run: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct StateJson {
    format: String,
    step: u64,
    adam_t: u64,
    history: Vec<StepRecord>,
    valid: Vec<ValidRecord>,
    run: serde_json::Value,
}

const FORMAT: &str = "verity-tune-checkpoint-1";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The checkpoints directory of an output directory.
pub fn dir_of(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Write `state` as the newest checkpoint under `out`; returns its directory.
pub fn save(out: &Path, state: &State) -> anyhow::Result<PathBuf> {
    let root = dir_of(out);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = fs::remove_dir_all(&tmp);
    let result = (|| -> anyhow::Result<()> {
        fs::create_dir(&tmp)?;
        let views = [
            ("lora", &state.values),
            ("adam_m", &state.adam.m),
            ("adam_v", &state.adam.v),
        ];
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = views
            .iter()
            .map(|(n, v)| (n.to_string(), vec![v.len()], f32_bytes(v)))
            .collect();
        let tv: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<Result<_, _>>()?;
        let st = safetensors::serialize(tv, None)?;
        write_synced(&tmp.join("state.safetensors"), &st)?;
        let js = StateJson {
            format: FORMAT.into(),
            step: state.step,
            adam_t: state.adam.t,
            history: state.history.clone(),
            valid: state.valid.clone(),
            run: state.run.clone(),
        };
        write_synced(&tmp.join("state.json"), &serde_json::to_vec_pretty(&js)?)?;
        sync_dir(&tmp)?;
        let dest = root.join(&name);
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        fs::rename(&tmp, &dest)?;
        let latest_tmp = root.join(".latest.tmp");
        write_synced(&latest_tmp, name.as_bytes())?;
        fs::rename(&latest_tmp, root.join("latest"))?;
        sync_dir(&root)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_file(root.join(".latest.tmp"));
        let kept = latest(out).map(|p| p.display().to_string());
        bail!(
            "could not write checkpoint {name} in {}: {e}; {}",
            root.display(),
            match kept {
                Some(p) => format!("the previous checkpoint {p} is intact; free space and resume from it with --resume {}", out.display()),
                None => "no earlier checkpoint exists".into(),
            }
        );
    }
    // Older checkpoints are removed only once the new one is in place.
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("step-") && n != name {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(root.join(name))
}

/// The newest complete checkpoint under `out`, if any.
pub fn latest(out: &Path) -> Option<PathBuf> {
    let root = dir_of(out);
    let name = fs::read_to_string(root.join("latest")).ok()?;
    let name = name.trim();
    if !name.starts_with("step-") || name.contains('/') {
        return None;
    }
    let p = root.join(name);
    p.join("state.json").is_file().then_some(p)
}

/// Read the checkpoint in `dir` (a `step-N` directory or an output directory).
pub fn load(dir: &Path) -> anyhow::Result<State> {
    let dir = if dir.join("state.json").is_file() {
        dir.to_path_buf()
    } else {
        latest(dir).with_context(|| {
            format!(
                "{} holds no checkpoint (no checkpoints/latest); pass the --out directory of a run that wrote one",
                dir.display()
            )
        })?
    };
    let js: StateJson = serde_json::from_slice(
        &fs::read(dir.join("state.json")).with_context(|| format!("reading {}", dir.display()))?,
    )
    .with_context(|| format!("{}: state.json is not a verity checkpoint", dir.display()))?;
    if js.format != FORMAT {
        bail!(
            "{}: checkpoint format '{}' is not {FORMAT}",
            dir.display(),
            js.format
        );
    }
    let bytes = fs::read(dir.join("state.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: state.safetensors is damaged", dir.display()))?;
    let get = |name: &str| -> anyhow::Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: no tensor {name}", dir.display()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            bail!("{}: {name} is not f32", dir.display());
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let (values, m, v) = (get("lora")?, get("adam_m")?, get("adam_v")?);
    if m.len() != values.len() || v.len() != values.len() {
        bail!(
            "{}: optimizer state does not match the adapter's size",
            dir.display()
        );
    }
    Ok(State {
        step: js.step,
        values,
        adam: AdamState { m, v, t: js.adam_t },
        history: js.history,
        valid: js.valid,
        run: js.run,
    })
}
