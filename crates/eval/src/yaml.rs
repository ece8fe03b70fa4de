//! Task YAML files: a documented subset of lm-eval's task format (see README.md).

use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::run::TaskSpec;
use crate::task::TaskConfig;

const SUPPORTED: &[&str] = &[
    "task",
    "dataset_path",
    "dataset_name",
    "data_files",
    "dataset_kwargs",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "output_type",
    "process_docs",
    "process_results",
    "doc_to_text",
    "doc_to_target",
    "doc_to_choice",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
    "num_fewshot",
    "fewshot_config",
    "metric_list",
    "generation_kwargs",
    "filter_list",
    "metadata",
    "tag",
    "include",
    "should_decontaminate",
    "doc_to_decontamination_query",
    "repeats",
    "task_alias",
];

fn parse(path: &Path, depth: usize) -> anyhow::Result<serde_json::Map<String, Value>> {
    if depth > 4 {
        bail!("{}: includes nest too deep", path.display());
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    // `!function module.name` is a YAML tag; keep it as a string for the built-in table.
    let re = regex::Regex::new(r"(:\s*)!function\s+([A-Za-z0-9_.]+)").expect("valid regex");
    let text = re.replace_all(&text, "$1\"!function $2\"");
    let v: Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not valid YAML", path.display()))?;
    let Value::Object(mut m) = v else {
        bail!("{}: a task file is a mapping", path.display());
    };
    if let Some(Value::String(inc)) = m.remove("include") {
        let inc_path = path.parent().unwrap_or(Path::new(".")).join(inc);
        let mut base = parse(&inc_path, depth + 1)?;
        base.extend(m);
        m = base;
    }
    Ok(m)
}

/// Read a task file. Paths in it are relative to its directory.
pub fn load_task_file(path: &Path) -> anyhow::Result<TaskSpec> {
    let mut m = parse(path, 0)?;
    for k in m.keys() {
        if !SUPPORTED.contains(&k.as_str()) {
            bail!("{}: field '{k}' is not supported (see crates/eval/README.md for the subset verity reads)", path.display());
        }
    }
    // lm-eval's `dataset_kwargs: {data_files: ...}`.
    if let Some(Value::Object(kw)) = m.remove("dataset_kwargs") {
        if let Some(df) = kw.get("data_files") {
            m.insert("data_files".into(), df.clone());
        }
    }
    for k in [
        "should_decontaminate",
        "doc_to_decontamination_query",
        "repeats",
        "task_alias",
    ] {
        m.remove(k);
    }
    if let Some(Value::Array(tags)) = m.get("tag").cloned() {
        m.insert("tag".into(), tags.first().cloned().unwrap_or(Value::Null));
    }
    m.entry("output_type")
        .or_insert_with(|| "generate_until".into());
    let cfg: TaskConfig = serde_json::from_value(Value::Object(m))
        .with_context(|| format!("{}: bad task definition", path.display()))?;
    Ok(TaskSpec {
        config: cfg,
        base: path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| ".".into()),
        source: path.display().to_string(),
    })
}
