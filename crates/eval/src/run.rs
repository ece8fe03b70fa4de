//! Running tasks: documents -> prompts (lm-eval's `fewshot_context` and
//! `construct_requests`) -> tokens (lm-eval's `_encode_pair`) -> backend -> metrics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::backend::{Backend, LlRequest, LlResult};
use crate::hash::{chain, sha256_hex};
use crate::metrics;
use crate::pyrandom::PyRandom;
use crate::rolling;
use crate::task::{self, TaskConfig};
use crate::template;
use crate::value::{py_json_pretty, Val};

/// lm-eval's default few-shot seed.
pub const DEFAULT_FEWSHOT_SEED: u64 = 1234;

/// A task to run and where its definition came from.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub config: TaskConfig,
    /// Directory that relative data paths are resolved against.
    pub base: PathBuf,
    /// `builtin` or the YAML file.
    pub source: String,
}

/// A task group asked for by name, with its member task names.
pub type Group = (String, Vec<String>);

/// Metric values (metric, filter, value) and, for generation tasks, each filter's (name, filtered response).
type DocMetrics = (Vec<(String, String, f64)>, Vec<(String, String)>);

/// Resolve `--tasks` entries: built-in names, groups (`mmlu`, `mmlu_stem`, ...), or YAML
/// files. Returns the tasks and the groups asked for (group -> member task names).
pub fn resolve_tasks(names: &[String]) -> anyhow::Result<(Vec<TaskSpec>, Vec<Group>)> {
    let mut out: Vec<TaskSpec> = Vec::new();
    let mut groups = Vec::new();
    let push = |out: &mut Vec<TaskSpec>, t: TaskSpec| {
        if !out.iter().any(|x| x.config.task == t.config.task) {
            out.push(t);
        }
    };
    for name in names {
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            let t = crate::yaml::load_task_file(Path::new(name))?;
            push(&mut out, t);
        } else if let Some(cfg) = task::builtin(name) {
            push(
                &mut out,
                TaskSpec {
                    config: cfg,
                    base: PathBuf::from("."),
                    source: "builtin".into(),
                },
            );
        } else if let Some(members) = task::group(name) {
            if name == "mmlu" {
                for cat in [
                    "mmlu_humanities",
                    "mmlu_other",
                    "mmlu_social_sciences",
                    "mmlu_stem",
                ] {
                    let m: Vec<String> = task::group(cat)
                        .unwrap_or_default()
                        .iter()
                        .map(|c| c.task.clone())
                        .collect();
                    groups.push((cat.to_string(), m));
                }
            }
            groups.push((
                name.to_string(),
                members.iter().map(|c| c.task.clone()).collect(),
            ));
            for cfg in members {
                push(
                    &mut out,
                    TaskSpec {
                        config: cfg,
                        base: PathBuf::from("."),
                        source: "builtin".into(),
                    },
                );
            }
        } else {
            bail!(
                "unknown task '{name}'; built in: arc_easy, arc_challenge, hellaswag, piqa, winogrande, boolq, lambada_openai, gsm8k, mmlu (and mmlu_<subject>, mmlu_stem, ...), or a task .yaml file"
            );
        }
    }
    if out.is_empty() {
        bail!("no tasks given (--tasks arc_easy,hellaswag,...)");
    }
    Ok((out, groups))
}

#[derive(Clone, Debug)]
pub struct Options {
    pub limit: Option<usize>,
    /// Documents scored per forward pass.
    pub batch_size: usize,
    pub num_fewshot: Option<usize>,
    pub fewshot_seed: u64,
    /// Where `results.json` and `samples_<task>.jsonl` go (written as samples finish).
    pub output: Option<PathBuf>,
    /// Reuse finished samples from `samples_<task>.jsonl` in `output`.
    pub resume: bool,
    pub progress: bool,
    /// Only these document ids, per task (receipt verification of a sample).
    pub only_docs: Option<BTreeMap<String, BTreeSet<usize>>>,
    /// Longest sequence a `loglikelihood_rolling` window gives the model (lm-eval's
    /// `max_length`); `None`: the backend's (the model's trained context). `evaluate`
    /// records the value it used in the report.
    pub max_length: Option<usize>,
    /// Token before an empty context and at the start of rolling documents (lm-eval's
    /// `prefix_token_id`); `None`: the backend's (BOS, else EOS). Recorded like `max_length`.
    pub prefix_token_id: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limit: None,
            batch_size: 32,
            num_fewshot: None,
            fewshot_seed: DEFAULT_FEWSHOT_SEED,
            output: None,
            resume: false,
            progress: false,
            only_docs: None,
            max_length: None,
            prefix_token_id: None,
        }
    }
}

/// One evaluated document, in lm-eval's per-sample format (plus verity's fields).
#[derive(Clone, Debug)]
pub struct Sample {
    pub doc_id: usize,
    pub doc: Val,
    pub target: Val,
    /// (context, continuation) per request; for generation (context, "").
    pub arguments: Vec<(String, String)>,
    /// Loglikelihood results (empty for generation).
    pub results: Vec<LlResult>,
    /// Generated text (generation tasks).
    pub generation: Option<String>,
    /// A `loglikelihood_rolling` document: one result, every token of the document (its
    /// windows' log-probabilities in order); `greedy` is not tracked (lm-eval drops it).
    pub rolling: bool,
    /// Rolling documents: the (words, bytes) the metrics are weighted by (lm-eval's
    /// `process_results`: of the target, or of `page` for wikitext's).
    pub counts: Option<(usize, usize)>,
    /// Rolling documents: the max_length their windows were cut at (resume reuses a sample
    /// only with the same).
    pub max_length: Option<usize>,
    /// Filtered responses per filter name (generation tasks).
    pub filtered: Vec<(String, String)>,
    /// (metric, filter) -> value.
    pub metrics: Vec<(String, String, f64)>,
    pub doc_hash: String,
    pub prompt_hash: String,
    pub target_hash: String,
}

impl Sample {
    /// lm-eval's sample record plus `loglikelihoods`, `token_logprobs` and `sample_hash`.
    pub fn to_json(&self, metric_names: &[String]) -> Value {
        let arguments: serde_json::Map<String, Value> = self
            .arguments
            .iter()
            .enumerate()
            .map(|(i, (c, t))| {
                let v = if self.generation.is_some() || self.rolling {
                    json!({"arg_0": c})
                } else {
                    json!({"arg_0": c, "arg_1": t})
                };
                (format!("gen_args_{i}"), v)
            })
            .collect();
        let (resps, filtered) = match &self.generation {
            None if self.rolling => (
                json!(self
                    .results
                    .iter()
                    .map(|r| json!([r.loglikelihood]))
                    .collect::<Vec<_>>()),
                json!(self
                    .results
                    .iter()
                    .map(|r| r.loglikelihood)
                    .collect::<Vec<_>>()),
            ),
            Some(g) => (
                json!([[g]]),
                json!(self
                    .filtered
                    .iter()
                    .map(|(_, f)| f.clone())
                    .collect::<Vec<_>>()),
            ),
            None => (
                json!(self
                    .results
                    .iter()
                    .map(|r| json!([[r.loglikelihood, r.greedy]]))
                    .collect::<Vec<_>>()),
                json!(self
                    .results
                    .iter()
                    .map(|r| json!([r.loglikelihood, r.greedy]))
                    .collect::<Vec<_>>()),
            ),
        };
        let mut v = json!({
            "doc_id": self.doc_id,
            "doc": self.doc.to_json(),
            "target": self.target.to_json(),
            "arguments": arguments,
            "resps": resps,
            "filtered_resps": filtered,
            "filter": self.filtered.first().map(|f| f.0.clone()).unwrap_or_else(|| "none".into()),
            "metrics": metric_names,
            "doc_hash": self.doc_hash,
            "prompt_hash": self.prompt_hash,
            "target_hash": self.target_hash,
        });
        for (m, f, x) in &self.metrics {
            let key = if f == "none" {
                m.clone()
            } else {
                format!("{m},{f}")
            };
            // lm-eval's rolling metrics are (loglikelihood, words or bytes) pairs.
            v[key] = match self.counts.and_then(|c| metrics::rolling_weight(m, c)) {
                Some(w) => json!([x, w]),
                None => json!(x),
            };
        }
        if self.rolling {
            v["max_length"] = json!(self.max_length);
        }
        if self.generation.is_none() {
            v["token_logprobs"] = json!(self
                .results
                .iter()
                .map(|r| r.token_logprobs.clone())
                .collect::<Vec<_>>());
        }
        v["sample_hash"] = json!(self.hash());
        v
    }

    /// Hash of what this sample depends on and produced: document, prompt, target,
    /// every token log-probability (exact f32 bits), greedy flags, generation, metrics.
    pub fn hash(&self) -> String {
        let lps: Vec<Vec<String>> = self
            .results
            .iter()
            .map(|r| {
                r.token_logprobs
                    .iter()
                    .map(|x| format!("{:08x}", x.to_bits()))
                    .collect()
            })
            .collect();
        let greedy: Vec<bool> = self.results.iter().map(|r| r.greedy).collect();
        let v = json!({
            "doc_id": self.doc_id,
            "doc_hash": self.doc_hash,
            "prompt_hash": self.prompt_hash,
            "target_hash": self.target_hash,
            "token_logprobs": lps,
            "greedy": greedy,
            "generation": self.generation,
            "metrics": self.metrics.iter().map(|(m, f, x)| json!([m, f, x])).collect::<Vec<_>>(),
        });
        sha256_hex(v.to_string().as_bytes())
    }

    fn from_json(v: &Value) -> Option<Sample> {
        let doc_id = v["doc_id"].as_u64()? as usize;
        let args = v["arguments"].as_object()?;
        let mut arguments = Vec::new();
        for i in 0..args.len() {
            let a = args.get(&format!("gen_args_{i}"))?;
            arguments.push((
                a["arg_0"].as_str()?.to_string(),
                a["arg_1"].as_str().unwrap_or("").to_string(),
            ));
        }
        let generation = v["resps"].get(0)?.get(0)?.as_str().map(String::from);
        let rolling = generation.is_none() && args.get("gen_args_0")?.get("arg_1").is_none();
        let mut results = Vec::new();
        if generation.is_none() {
            let tl = v["token_logprobs"].as_array()?;
            for (r, t) in v["resps"].as_array()?.iter().zip(tl) {
                let lps: Vec<f32> = t
                    .as_array()?
                    .iter()
                    .map(|x| x.as_f64().map(|x| x as f32))
                    .collect::<Option<_>>()?;
                let greedy = if rolling {
                    false
                } else {
                    r.get(0)?.get(1)?.as_bool()?
                };
                results.push(LlResult {
                    loglikelihood: lps.iter().map(|&x| x as f64).sum(),
                    token_logprobs: lps,
                    greedy,
                });
            }
        }
        Some(Sample {
            doc_id,
            doc: crate::data::parse_json_ordered(&v["doc"].to_string()).ok()?,
            target: Val::from_json(&v["target"]),
            arguments,
            results,
            generation,
            rolling,
            counts: None,
            max_length: v["max_length"].as_u64().map(|x| x as usize),
            filtered: Vec::new(),
            metrics: Vec::new(),
            doc_hash: v["doc_hash"].as_str()?.to_string(),
            prompt_hash: v["prompt_hash"].as_str()?.to_string(),
            target_hash: v["target_hash"].as_str()?.to_string(),
        })
    }
}

/// An aggregated metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub metric: String,
    pub filter: String,
    pub value: f64,
    pub stderr: Option<f64>,
    pub higher_is_better: bool,
}

#[derive(Clone, Debug)]
pub struct TaskResult {
    pub spec: TaskSpec,
    pub num_fewshot: usize,
    pub n_original: usize,
    pub samples: Vec<Sample>,
    pub aggregates: Vec<Aggregate>,
    /// Data files read, with SHA-256.
    pub data_files: Vec<(PathBuf, String)>,
    /// Final link of the per-sample hash chain.
    pub chain: String,
}

#[derive(Clone, Debug)]
pub struct GroupResult {
    pub name: String,
    pub members: Vec<String>,
    pub n: usize,
    pub aggregates: Vec<Aggregate>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub tasks: Vec<TaskResult>,
    pub groups: Vec<GroupResult>,
    pub options: Options,
    pub seconds: f64,
}

/// A document's requests before tokenization.
struct Prepared {
    doc_id: usize,
    doc: Val,
    target: Val,
    choices: Vec<String>,
    gold: Vec<usize>,
    arguments: Vec<(String, String)>,
    generation: bool,
    rolling: bool,
    counts: Option<(usize, usize)>,
}

fn few_shot_turn(cfg: &TaskConfig, doc: &Val) -> anyhow::Result<String> {
    let text_spec = cfg.text_spec()?;
    let choice_spec = cfg.choice_spec()?;
    let choices = match &choice_spec {
        Some(s) => Some(template::choices(s, doc)?),
        None => None,
    };
    let q = template::text(&text_spec, doc)?;
    let a = template::target(&cfg.target_spec()?, doc, choices.is_some())?;
    let (q, c) = match (q, &choices) {
        // Multiple-input tasks: the question is the gold choice, the answer the target.
        (Val::Int(i), Some(c)) => (c.get(i as usize).cloned().unwrap_or_default(), None),
        (q, c) => (q.to_text(), c.clone()),
    };
    let answer = match (&a, &c) {
        (Val::Int(i), Some(c)) => c.get(*i as usize).cloned().unwrap_or_default(),
        (Val::List(l), _) => l.first().map(Val::to_text).unwrap_or_default(),
        (other, _) => other.to_text(),
    };
    if answer.is_empty() {
        return Ok(q);
    }
    Ok(format!(
        "{q}{}{answer}{}",
        cfg.target_delimiter, cfg.fewshot_delimiter
    ))
}

fn prepare(
    spec: &TaskSpec,
    opts: &Options,
) -> anyhow::Result<(Vec<Prepared>, usize, usize, Vec<PathBuf>)> {
    let cfg = &spec.config;
    let split = cfg.eval_split()?.to_string();
    let (docs, mut files) = task::load_split(cfg, &split, &spec.base)?;
    let n_original = docs.len();
    let num_fewshot = opts.num_fewshot.or(cfg.num_fewshot).unwrap_or(0);
    let fewshot_docs: Vec<Val> = if num_fewshot > 0 {
        let fs_split = cfg.fewshot_split_name().unwrap_or(&split).to_string();
        if fs_split == split {
            docs.clone()
        } else {
            let (d, f) = task::load_split(cfg, &fs_split, &spec.base)
                .with_context(|| format!("task {}: few-shot split '{fs_split}'", cfg.task))?;
            files.extend(f);
            d
        }
    } else {
        Vec::new()
    };
    let fs_same_split = cfg.fewshot_split_name().unwrap_or(&split) == split;
    let first_n = cfg.fewshot_config.sampler.as_deref() == Some("first_n");
    let mut rng = PyRandom::new(opts.fewshot_seed);
    let n = opts.limit.map_or(docs.len(), |l| l.min(docs.len()));
    let text_spec = cfg.text_spec()?;
    let target_spec = cfg.target_spec()?;
    let choice_spec = cfg.choice_spec()?;
    let description = cfg.description.clone().unwrap_or_default();
    let mut out = Vec::with_capacity(n);
    for (doc_id, doc) in docs.into_iter().take(n).enumerate() {
        let mut prefix = description.clone();
        if num_fewshot > 0 {
            let picked: Vec<&Val> = if first_n {
                fewshot_docs.iter().take(num_fewshot).collect()
            } else if fs_same_split {
                let idx = rng.sample(fewshot_docs.len(), num_fewshot + 1);
                idx.iter()
                    .map(|&i| &fewshot_docs[i])
                    .filter(|d| **d != doc)
                    .take(num_fewshot)
                    .collect()
            } else {
                rng.sample(fewshot_docs.len(), num_fewshot)
                    .into_iter()
                    .map(|i| &fewshot_docs[i])
                    .collect()
            };
            for fs in picked {
                prefix.push_str(&few_shot_turn(cfg, fs)?);
            }
        }
        let wanted = opts
            .only_docs
            .as_ref()
            .and_then(|m| m.get(&cfg.task))
            .is_none_or(|s| s.contains(&doc_id));
        if !wanted {
            continue;
        }
        let text = template::text(&text_spec, &doc)
            .with_context(|| format!("task {} doc {doc_id}: doc_to_text", cfg.task))?;
        let choices = match &choice_spec {
            Some(s) => template::choices(s, &doc)
                .with_context(|| format!("task {} doc {doc_id}: doc_to_choice", cfg.task))?,
            None => Vec::new(),
        };
        let target = template::target(&target_spec, &doc, choice_spec.is_some())
            .with_context(|| format!("task {} doc {doc_id}: doc_to_target", cfg.task))?;
        let delim = &cfg.target_delimiter;
        let (arguments, gold, generation) = match cfg.output_type.as_str() {
            "multiple_choice" => match &text {
                Val::Int(g) => {
                    let cont = format!("{delim}{}", target.to_text());
                    let args = choices.iter().map(|c| (format!("{prefix}{c}"), cont.clone())).collect();
                    (args, vec![*g as usize], false)
                }
                t => {
                    let ctx = format!("{prefix}{}", t.to_text());
                    let args = choices.iter().map(|c| (ctx.clone(), format!("{delim}{c}"))).collect();
                    (args, metrics::gold_indices(&target, &choices), false)
                }
            },
            "loglikelihood" => (vec![(format!("{prefix}{}", text.to_text()), target.to_text())], Vec::new(), false),
            "generate_until" => (vec![(format!("{prefix}{}", text.to_text()), String::new())], Vec::new(), true),
            // lm-eval's construct_requests: the document's target is the whole request.
            "loglikelihood_rolling" => (vec![(target.to_text(), String::new())], Vec::new(), false),
            other => bail!("task {}: output_type '{other}' is not supported (multiple_choice, loglikelihood, loglikelihood_rolling, generate_until)", cfg.task),
        };
        let rolling = cfg.output_type == "loglikelihood_rolling";
        let counts = if rolling {
            Some(match cfg.process_results.as_deref().map(|f| f.trim_start_matches("!function ").trim()) {
                None => metrics::rolling_counts(&target.to_text()),
                // lm_eval/tasks/wikitext/preprocess_wikitext.py: words and bytes of the
                // original page, before detokenization.
                Some("preprocess_wikitext.process_results") => {
                    let page = doc.get("page").and_then(Val::as_str).with_context(|| {
                        format!("task {} doc {doc_id}: no string field 'page'", cfg.task)
                    })?;
                    metrics::rolling_counts(page)
                }
                Some(other) => bail!("task {}: process_results '{other}' is not built in (preprocess_wikitext.process_results)", cfg.task),
            })
        } else if cfg.process_results.is_some() {
            bail!(
                "task {}: process_results is read for loglikelihood_rolling tasks only",
                cfg.task
            );
        } else {
            None
        };
        if !generation && arguments.is_empty() {
            bail!("task {} doc {doc_id}: no choices", cfg.task);
        }
        out.push(Prepared {
            doc_id,
            doc,
            target,
            choices,
            gold,
            arguments,
            generation,
            rolling,
            counts,
        });
    }
    Ok((out, n_original, num_fewshot, files))
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the
/// continuation; the continuation's tokens are those of context+continuation after the
/// context's.
fn encode_pair(
    b: &dyn Backend,
    prefix: Option<u32>,
    context: &str,
    continuation: &str,
) -> anyhow::Result<LlRequest> {
    if context.is_empty() {
        return Ok(LlRequest {
            context: vec![match prefix {
                Some(p) => p,
                None => b.prefix_token()?,
            }],
            continuation: b.tokenize(continuation)?,
        });
    }
    let trimmed = context.trim_end();
    let (ctx, cont) = (
        trimmed.to_string(),
        format!("{}{continuation}", &context[trimmed.len()..]),
    );
    let whole = b.tokenize(&format!("{ctx}{cont}"))?;
    let ctx_tokens = b.tokenize(&ctx)?;
    let split = ctx_tokens.len().min(whole.len());
    Ok(LlRequest {
        context: ctx_tokens,
        continuation: whole[split..].to_vec(),
    })
}

fn sample_metrics(
    cfg: &TaskConfig,
    p: &Prepared,
    results: &[LlResult],
    generation: Option<&str>,
) -> anyhow::Result<DocMetrics> {
    let names = cfg.metrics();
    match cfg.output_type.as_str() {
        "multiple_choice" => {
            let lls: Vec<f64> = results.iter().map(|r| r.loglikelihood).collect();
            let greedy: Vec<bool> = results.iter().map(|r| r.greedy).collect();
            // For multiple-input tasks the lengths are those of the choices (contexts).
            let m = metrics::multiple_choice(&lls, &greedy, &p.choices, &p.gold, &names);
            Ok((
                m.into_iter().map(|(k, v)| (k, "none".into(), v)).collect(),
                Vec::new(),
            ))
        }
        "loglikelihood_rolling" => {
            let r = &results[0];
            let out = names
                .iter()
                .filter(|m| metrics::rolling_weight(m, (0, 0)).is_some())
                .map(|m| (m.clone(), "none".to_string(), r.loglikelihood))
                .collect();
            Ok((out, Vec::new()))
        }
        "loglikelihood" => {
            let r = &results[0];
            let mut out = Vec::new();
            for m in &names {
                match m.as_str() {
                    "perplexity" => out.push((m.clone(), "none".into(), r.loglikelihood)),
                    "acc" => out.push((m.clone(), "none".into(), if r.greedy { 1.0 } else { 0.0 })),
                    _ => {}
                }
            }
            Ok((out, Vec::new()))
        }
        _ => {
            let g = generation.unwrap_or("");
            let filters: Vec<(String, String)> = if cfg.filter_list.is_empty() {
                vec![("none".into(), g.to_string())]
            } else {
                cfg.filter_list
                    .iter()
                    .map(|f| Ok((f.name.clone(), metrics::apply_filter(f, g)?)))
                    .collect::<anyhow::Result<_>>()?
            };
            let target = p.target.to_text();
            let mut out = Vec::new();
            for (fname, resp) in &filters {
                for m in &cfg.metric_list {
                    if m.metric == "exact_match" {
                        out.push((
                            m.metric.clone(),
                            fname.clone(),
                            metrics::exact_match(resp, &target, m)?,
                        ));
                    }
                }
            }
            Ok((out, filters))
        }
    }
}

fn aggregate(cfg: &TaskConfig, samples: &[Sample]) -> Vec<Aggregate> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for s in samples {
        for (m, f, _) in &s.metrics {
            if !keys.contains(&(m.clone(), f.clone())) {
                keys.push((m.clone(), f.clone()));
            }
        }
    }
    keys.into_iter()
        .map(|(m, f)| {
            let xs: Vec<f64> = samples
                .iter()
                .filter_map(|s| {
                    s.metrics
                        .iter()
                        .find(|(a, b, _)| *a == m && *b == f)
                        .map(|x| x.2)
                })
                .collect();
            let spec = cfg.metric_list.iter().find(|s| s.metric == m);
            let agg = spec
                .and_then(|s| s.aggregation.clone())
                .unwrap_or_else(|| metrics::default_aggregation(&m).into());
            let higher = spec
                .and_then(|s| s.higher_is_better)
                .unwrap_or(metrics::default_higher_is_better(&m));
            // Rolling metrics: (loglikelihood, words or bytes of the target) per document.
            let weighted = || -> Vec<(f64, f64)> {
                samples
                    .iter()
                    .filter_map(|s| {
                        let x = s.metrics.iter().find(|(a, b, _)| *a == m && *b == f)?.2;
                        let w = metrics::rolling_weight(&m, s.counts?)?;
                        Some((x, w as f64))
                    })
                    .collect()
            };
            let (value, stderr) = match agg.as_str() {
                // lm-eval bootstraps this stderr; verity reports none rather than a random one.
                "perplexity" => (metrics::perplexity(&xs), None),
                // lm-eval has no stderr for these ("N/A").
                "weighted_perplexity" => (metrics::weighted_perplexity(&weighted()), None),
                "bits_per_byte" => (metrics::bits_per_byte(&weighted()), None),
                _ => metrics::mean_stderr(&xs),
            };
            Aggregate {
                metric: m,
                filter: f,
                value,
                stderr,
                higher_is_better: higher,
            }
        })
        .collect()
}

fn read_resume(path: &Path) -> HashMap<usize, Sample> {
    let mut out = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            // A line cut short by an interruption is skipped and re-run.
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                if let Some(s) = Sample::from_json(&v) {
                    out.insert(s.doc_id, s);
                }
            }
        }
    }
    out
}

/// Evaluate tasks with a backend.
pub fn evaluate(
    backend: &mut dyn Backend,
    specs: &[TaskSpec],
    groups: &[(String, Vec<String>)],
    opts: &Options,
) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    if let Some(dir) = &opts.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The settings actually used, recorded (receipts re-run with them).
    let mut opts = opts.clone();
    if opts.max_length.is_none() {
        opts.max_length = Some(backend.max_length());
    }
    if opts.prefix_token_id.is_none() {
        opts.prefix_token_id = backend.prefix_token().ok();
    }
    if opts.max_length == Some(0) {
        bail!("max_length must be at least 1");
    }
    let opts = &opts;
    let mut tasks = Vec::new();
    for spec in specs {
        tasks.push(run_task(backend, spec, opts)?);
    }
    let group_results = groups
        .iter()
        .map(|(name, members)| aggregate_group(name, members, &tasks, groups))
        .collect();
    Ok(Report {
        tasks,
        groups: group_results,
        options: opts.clone(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn aggregate_group(
    name: &str,
    members: &[String],
    tasks: &[TaskResult],
    groups: &[(String, Vec<String>)],
) -> GroupResult {
    // lm-eval aggregates `mmlu` over its four category groups (weighted by size, pooled
    // stderr) and each category over its subjects.
    let children: Vec<(usize, f64, f64)> = if name == "mmlu" {
        groups
            .iter()
            .filter(|(g, _)| g != "mmlu")
            .map(|(g, m)| {
                let sub = aggregate_group(g, m, tasks, groups);
                let acc = sub.aggregates.iter().find(|a| a.metric == "acc");
                (
                    sub.n,
                    acc.map_or(f64::NAN, |a| a.value),
                    acc.and_then(|a| a.stderr).unwrap_or(0.0),
                )
            })
            .filter(|c| c.0 > 0)
            .collect()
    } else {
        tasks
            .iter()
            .filter(|t| members.contains(&t.spec.config.task))
            .filter_map(|t| {
                let acc = t.aggregates.iter().find(|a| a.metric == "acc")?;
                Some((t.samples.len(), acc.value, acc.stderr.unwrap_or(0.0)))
            })
            .filter(|c| c.0 > 0)
            .collect()
    };
    let n: usize = children.iter().map(|c| c.0).sum();
    let value = children.iter().map(|c| c.1 * c.0 as f64).sum::<f64>() / n.max(1) as f64;
    let sizes: Vec<usize> = children.iter().map(|c| c.0).collect();
    let stderrs: Vec<f64> = children.iter().map(|c| c.2).collect();
    GroupResult {
        name: name.to_string(),
        members: members.to_vec(),
        n,
        aggregates: vec![Aggregate {
            metric: "acc".into(),
            filter: "none".into(),
            value,
            stderr: metrics::pooled_stderr(&stderrs, &sizes),
            higher_is_better: true,
        }],
    }
}

fn progress_bar(total: u64, name: &str, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>14} {wide_bar} {pos}/{len} docs  {per_sec}  ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_string());
    bar
}

fn run_task(
    backend: &mut dyn Backend,
    spec: &TaskSpec,
    opts: &Options,
) -> anyhow::Result<TaskResult> {
    let cfg = &spec.config;
    let (prepared, n_original, num_fewshot, files) = prepare(spec, opts)?;
    let data_files = files
        .iter()
        .map(|f| {
            Ok((
                f.clone(),
                verity_store::sha256_file(f).with_context(|| format!("{}", f.display()))?,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metric_names = cfg.metrics();
    let samples_path = opts
        .output
        .as_ref()
        .map(|d| d.join(format!("samples_{}.jsonl", cfg.task)));
    let mut done: HashMap<usize, Sample> = match (&samples_path, opts.resume) {
        (Some(p), true) => read_resume(p),
        _ => HashMap::new(),
    };
    let mut writer = match &samples_path {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let bar = progress_bar(prepared.len() as u64, &cfg.task, opts.progress);
    let mut samples: Vec<Sample> = Vec::with_capacity(prepared.len());
    let finish = |p: &Prepared,
                  results: Vec<LlResult>,
                  generation: Option<String>|
     -> anyhow::Result<Sample> {
        let (m, filtered) = sample_metrics(cfg, p, &results, generation.as_deref())?;
        Ok(Sample {
            doc_id: p.doc_id,
            doc: p.doc.clone(),
            target: p.target.clone(),
            arguments: p.arguments.clone(),
            results,
            generation,
            rolling: p.rolling,
            counts: p.counts,
            max_length: if p.rolling { opts.max_length } else { None },
            filtered,
            metrics: m,
            doc_hash: sha256_hex(py_json_pretty(&p.doc).as_bytes()),
            prompt_hash: sha256_hex(p.arguments[0].0.as_bytes()),
            target_hash: sha256_hex(p.target.to_text().as_bytes()),
        })
    };
    let mut emit = |s: Sample, samples: &mut Vec<Sample>| -> anyhow::Result<()> {
        if let Some(w) = writer.as_mut() {
            writeln!(w, "{}", s.to_json(&metric_names))?;
            w.flush()?;
        }
        samples.push(s);
        Ok(())
    };
    for batch in prepared.chunks(opts.batch_size.max(1)) {
        // Samples already in the log (same document and prompt) are reused.
        let mut todo = Vec::new();
        for p in batch {
            let reuse = done.remove(&p.doc_id).filter(|s| {
                s.doc_hash == sha256_hex(py_json_pretty(&p.doc).as_bytes())
                    && s.prompt_hash == sha256_hex(p.arguments[0].0.as_bytes())
                    && s.arguments == p.arguments
                    && (!p.rolling || s.max_length == opts.max_length)
            });
            match reuse {
                Some(s) => {
                    let s = finish(p, s.results, s.generation)?;
                    emit(s, &mut samples)?;
                }
                None => todo.push(p),
            }
        }
        if todo.is_empty() {
            bar.inc(batch.len() as u64);
            continue;
        }
        if todo[0].generation {
            for p in &todo {
                let gk = cfg.generation_kwargs.clone().unwrap_or(json!({}));
                let until: Vec<String> = match &gk["until"] {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect(),
                    _ => Vec::new(),
                };
                let max = gk["max_gen_toks"].as_u64().unwrap_or(256) as usize;
                let prompt = backend.tokenize(&p.arguments[0].0)?;
                let text = backend.generate(&prompt, &until, max)?;
                let s = finish(p, Vec::new(), Some(text))?;
                emit(s, &mut samples)?;
            }
        } else if todo[0].rolling {
            // lm-eval's HFLM.loglikelihood_rolling: the document's tokens, no BOS, split
            // into disjoint windows of at most max_length; the document's loglikelihood is
            // the sum over its windows.
            let prefix = match opts.prefix_token_id {
                Some(p) => p,
                None => backend.prefix_token()?,
            };
            let max_length = opts.max_length.unwrap_or_else(|| backend.max_length());
            let mut windows = Vec::new();
            let mut counts = Vec::with_capacity(todo.len());
            for p in &todo {
                let tokens = backend.tokenize(&p.arguments[0].0)?;
                let w = rolling::windows(&tokens, prefix, max_length);
                counts.push(w.len());
                windows.extend(w);
            }
            let results = backend.loglikelihood_rolling(&windows).with_context(|| {
                format!("scoring rolling windows of up to {max_length} tokens (--max-length)")
            })?;
            if results.len() != windows.len() {
                bail!(
                    "backend returned {} results for {} windows",
                    results.len(),
                    windows.len()
                );
            }
            let mut it = results.into_iter();
            for (p, n) in todo.iter().zip(counts) {
                let lps: Vec<f32> = it.by_ref().take(n).flat_map(|r| r.token_logprobs).collect();
                let s = finish(p, vec![LlResult::from_tokens(lps, false)], None)?;
                emit(s, &mut samples)?;
            }
        } else {
            let groups: Vec<Vec<LlRequest>> = todo
                .iter()
                .map(|p| {
                    p.arguments
                        .iter()
                        .map(|(c, t)| encode_pair(&*backend, opts.prefix_token_id, c, t))
                        .collect()
                })
                .collect::<anyhow::Result<_>>()?;
            let results = backend.loglikelihood(&groups)?;
            for (p, r) in todo.iter().zip(results) {
                let s = finish(p, r, None)?;
                emit(s, &mut samples)?;
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let aggregates = aggregate(cfg, &samples);
    let mut c = String::new();
    for s in &samples {
        c = chain(&c, &s.hash());
    }
    Ok(TaskResult {
        spec: spec.clone(),
        num_fewshot,
        n_original,
        samples,
        aggregates,
        data_files,
        chain: c,
    })
}

fn agg_json(aggs: &[Aggregate], alias: &str) -> Value {
    let mut v = json!({"alias": alias});
    for a in aggs {
        v[format!("{},{}", a.metric, a.filter)] = json!(a.value);
        v[format!("{}_stderr,{}", a.metric, a.filter)] = match a.stderr {
            Some(s) => json!(s),
            None => json!("N/A"),
        };
    }
    v
}

impl Report {
    /// The results file, in lm-eval's schema.
    pub fn results_json(&self, model: &crate::backend::ModelIdentity) -> Value {
        let mut results = serde_json::Map::new();
        let mut configs = serde_json::Map::new();
        let mut versions = serde_json::Map::new();
        let mut nshot = serde_json::Map::new();
        let mut higher = serde_json::Map::new();
        let mut nsamples = serde_json::Map::new();
        let mut group_subtasks = serde_json::Map::new();
        let mut groups = serde_json::Map::new();
        for g in &self.groups {
            let v = agg_json(&g.aggregates, &g.name);
            results.insert(g.name.clone(), v.clone());
            groups.insert(g.name.clone(), v);
            group_subtasks.insert(g.name.clone(), json!(g.members));
        }
        for t in &self.tasks {
            let name = &t.spec.config.task;
            results.insert(name.clone(), agg_json(&t.aggregates, name));
            let mut cfg = serde_json::to_value(&t.spec.config).unwrap_or(Value::Null);
            cfg["num_fewshot"] = json!(t.num_fewshot);
            configs.insert(name.clone(), cfg);
            versions.insert(name.clone(), t.spec.config.version());
            nshot.insert(name.clone(), json!(t.num_fewshot));
            higher.insert(
                name.clone(),
                Value::Object(
                    t.aggregates
                        .iter()
                        .map(|a| (a.metric.clone(), json!(a.higher_is_better)))
                        .collect(),
                ),
            );
            nsamples.insert(
                name.clone(),
                json!({"original": t.n_original, "effective": t.samples.len()}),
            );
            if !self.groups.iter().any(|g| g.members.contains(name)) {
                group_subtasks.insert(name.clone(), json!([]));
            }
        }
        json!({
            "results": results,
            "groups": groups,
            "group_subtasks": group_subtasks,
            "configs": configs,
            "versions": versions,
            "n-shot": nshot,
            "higher_is_better": higher,
            "n-samples": nsamples,
            "config": {
                "model": if model.endpoint.is_some() { "verity-endpoint" } else { "verity" },
                "model_args": model.endpoint.clone().or_else(|| model.path.as_ref().map(|p| p.display().to_string())),
                "model_root_digest": model.root_digest,
                "batch_size": self.options.batch_size,
                "limit": self.options.limit,
                "max_length": self.options.max_length,
                "prefix_token_id": self.options.prefix_token_id,
                "bootstrap_iters": 0,
                "fewshot_seed": self.options.fewshot_seed,
            },
            "verity_version": env!("CARGO_PKG_VERSION"),
            "total_evaluation_time_seconds": format!("{:.3}", self.seconds),
            "date": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        })
    }

    /// lm-eval's markdown summary table.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 9]> = Vec::new();
        let fmt = |x: f64| format!("{x:.4}");
        let mut push = |name: &str, version: String, nshot: String, aggs: &[Aggregate]| {
            for (i, a) in aggs.iter().enumerate() {
                rows.push([
                    if i == 0 {
                        name.to_string()
                    } else {
                        String::new()
                    },
                    if i == 0 {
                        version.clone()
                    } else {
                        String::new()
                    },
                    a.filter.clone(),
                    if i == 0 { nshot.clone() } else { String::new() },
                    a.metric.clone(),
                    if a.higher_is_better {
                        "↑".into()
                    } else {
                        "↓".into()
                    },
                    fmt(a.value),
                    "±".into(),
                    a.stderr.map_or("N/A".into(), fmt),
                ]);
            }
        };
        let grouped: BTreeSet<&String> =
            self.groups.iter().flat_map(|g| g.members.iter()).collect();
        for t in &self.tasks {
            let v = t.spec.config.version();
            let name = if grouped.contains(&t.spec.config.task) {
                format!(" - {}", t.spec.config.task)
            } else {
                t.spec.config.task.clone()
            };
            push(
                &name,
                v.to_string(),
                t.num_fewshot.to_string(),
                &t.aggregates,
            );
        }
        for g in &self.groups {
            push(&g.name, String::new(), String::new(), &g.aggregates);
        }
        let header = [
            "Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr",
        ];
        let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<String>| format!("|{}|\n", cells.join("|"));
        let pad = |s: &str, n: usize, right: bool| {
            let fill = " ".repeat(n.saturating_sub(s.chars().count()));
            if right {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        let right = [false, true, false, true, false, false, true, false, true];
        let mut out = line(
            header
                .iter()
                .enumerate()
                .map(|(i, h)| pad(h, w[i], right[i]))
                .collect(),
        );
        out += &line(
            (0..9)
                .map(|i| {
                    if right[i] {
                        format!("{}:", "-".repeat(w[i].saturating_sub(1)))
                    } else {
                        "-".repeat(w[i])
                    }
                })
                .collect(),
        );
        for r in &rows {
            out += &line(
                r.iter()
                    .enumerate()
                    .map(|(i, c)| pad(c, w[i], right[i]))
                    .collect(),
            );
        }
        out
    }
}
