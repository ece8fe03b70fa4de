//! What a LoRA adapter is: format, rank, alpha and the scale it applies, targets,
//! parameter count, the base it declares, and findings (NaN/Inf, ranks that cannot be,
//! an all-zero lora_B, which means the adapter was never trained).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use verity_model::adapter::check_values;
use verity_model::AdapterFile;

use crate::inspect::{Finding, Severity};

#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub path: String,
    /// `peft` or `gguf`.
    pub format: &'static str,
    pub architecture: Option<String>,
    pub base_model: Option<String>,
    pub rank: usize,
    pub alpha: f32,
    pub use_rslora: bool,
    /// The scale applied to modules without a pattern: alpha/r, or alpha/√r with rsLoRA.
    pub scale: f32,
    /// Module kinds adapted (q_proj, ...), with how many layers each.
    pub targets: BTreeMap<String, usize>,
    /// Pairs by rank, when ranks differ between modules.
    pub ranks: BTreeMap<usize, usize>,
    pub pairs: usize,
    pub layers: usize,
    pub parameters: usize,
    /// Element type in the file.
    pub dtype: String,
    pub findings: Vec<Finding>,
}

fn finding(severity: Severity, kind: &'static str, tensor: String, message: String) -> Finding {
    Finding {
        severity,
        kind,
        message,
        tensor: Some(tensor),
    }
}

/// Read and examine an adapter (a PEFT directory or a GGUF LoRA file).
pub fn inspect_adapter(path: &Path) -> anyhow::Result<AdapterReport> {
    let file = AdapterFile::open(path)?;
    let mut findings = Vec::new();
    let mut targets = BTreeMap::new();
    let mut ranks = BTreeMap::new();
    let mut layers = std::collections::BTreeSet::new();
    for (l, module, t) in file.modules() {
        let name = format!("layer {l} {module}");
        *targets.entry(module.to_string()).or_insert(0) += 1;
        *ranks.entry(t.rank).or_insert(0) += 1;
        layers.insert(l);
        let nonfinite = |v: &[f32]| v.iter().filter(|x| !x.is_finite()).count();
        for (side, v) in [("lora_A", &t.a), ("lora_B", &t.b)] {
            let n = nonfinite(v);
            if n > 0 {
                findings.push(finding(
                    Severity::Error,
                    "nan",
                    name.clone(),
                    format!("{side} has {n} NaN or infinite values"),
                ));
            }
        }
        if let Err(e) = check_values(&name, t) {
            if !e.contains("element") {
                findings.push(finding(Severity::Error, "shape", name.clone(), e));
            }
        }
        if t.b.iter().all(|&x| x == 0.0) {
            findings.push(finding(
                Severity::Warning,
                "all-zero",
                name.clone(),
                "lora_B is all zeros: this module's update is zero (an untrained adapter, as PEFT initialises it)".into(),
            ));
        }
    }
    if file.modules().next().is_none() {
        findings.push(Finding {
            severity: Severity::Error,
            kind: "missing",
            message: "no LoRA tensors".into(),
            tensor: None,
        });
    }
    let scale = if file.use_rslora {
        file.alpha / (file.rank.max(1) as f32).sqrt()
    } else {
        file.alpha / file.rank.max(1) as f32
    };
    let dtype = file
        .modules()
        .next()
        .map_or("none".into(), |(_, _, t)| t.file_type.to_string());
    Ok(AdapterReport {
        path: path.display().to_string(),
        format: file.format.name(),
        architecture: file.arch.clone(),
        base_model: file.base_model.clone(),
        rank: file.rank,
        alpha: file.alpha,
        use_rslora: file.use_rslora,
        scale,
        targets,
        ranks,
        pairs: file.modules().count(),
        layers: layers.len(),
        parameters: file.n_params(),
        dtype,
        findings,
    })
}
