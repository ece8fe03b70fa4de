//! `verity tune`: LoRA fine-tuning on the CPU; `verity tune verify`: re-run a receipt.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use verity_model::{AdapterFile, Model};
use verity_tune::checkpoint::{self, StepRecord, ValidRecord};
use verity_tune::data::{self, DataOptions, Packed};
use verity_tune::lora::{parse_targets, LoraParams, LoraSpec};
use verity_tune::optim::{OptimConfig, Schedule};
use verity_tune::step::{check_supported, Trainer};
use verity_tune::train::{self, LoopOptions, Observer, Settings};

use crate::tune_receipt::{self, Receipt};

/// Fine-tune a LoRA adapter on your CPU, from chat, prompt/completion or text data.
///
/// Data: JSONL, JSON (an array) or Parquet, one shape per file: {"messages": [...]}
/// (rendered with the model's chat template; loss on assistant turns), {"prompt",
/// "completion"} (loss on the completion) or {"text"} (loss on every token). Examples are
/// packed into sequences of --max-seq-len tokens without attending across examples.
///
/// The base stays frozen in its own format (GGUF quantized types included). The output
/// directory gets a PEFT adapter (adapter_config.json + adapter_model.safetensors) that
/// `--lora` takes, PEFT loads and `verity convert --to gguf` turns into llama.cpp's
/// format, a loss curve (loss.svg) and checkpoints; Ctrl-C writes a checkpoint and
/// `--resume OUT` continues bit-identically.
///
/// Examples:
///   verity tune --data chat.jsonl --out my-adapter
///   verity tune --model ./Llama-3.2-1B-Q4_K_M.gguf --data train.jsonl --valid-split 0.05 \
///       --rank 16 --alpha 32 --targets all-linear --epochs 2 --out my-adapter
///   verity tune --data train.jsonl --out a --steps 200 --lr 1e-4 --log a.log.jsonl --receipt a.receipt.json
///   verity tune --resume my-adapter                 # continue after Ctrl-C or a crash
///   verity tune --data train.jsonl --out a --eval arc_easy --eval-limit 200
///   verity tune verify a.receipt.json --steps 5     # re-run and compare
///   verity run --lora my-adapter "Hello"
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
pub struct TuneArgs {
    #[command(subcommand)]
    pub command: Option<TuneCommand>,
    #[command(flatten)]
    pub run: TuneRunArgs,
}

#[derive(Subcommand, Debug)]
pub enum TuneCommand {
    Verify(VerifyArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TuneRunArgs {
    /// The base: a GGUF file, a Hugging Face directory or a model name in the store
    /// (default: SmolLM2-135M-Instruct, fetched on first use).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Training data (.jsonl, .json or .parquet).
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// Validation data (same shapes).
    #[arg(long, conflicts_with = "valid_split")]
    pub valid: Option<PathBuf>,
    /// Hold out this fraction of --data for validation instead.
    #[arg(long)]
    pub valid_split: Option<f64>,
    /// Output directory: the adapter, loss.svg, checkpoints/.
    #[arg(long, required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run whose --out directory this is, from its last checkpoint.
    #[arg(long, value_name = "OUT")]
    pub resume: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha (scale = alpha / rank; alpha / sqrt(rank) with --rslora).
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f32,
    /// Projections to adapt: q,k,v,o,gate,up,down, attn, mlp or all-linear (Phi-3 fuses
    /// q,k,v and gate,up: name them together, or as qkv and gate_up).
    #[arg(long, default_value = "all-linear")]
    pub targets: String,
    /// Rank-stabilised LoRA scaling.
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the LoRA input (PEFT's lora_dropout).
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Start from this adapter (PEFT directory or GGUF LoRA) instead of a fresh one.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Seed of the initialisation, shuffling and dropout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// Learning-rate schedule after warm-up: cosine, linear or constant.
    #[arg(long, default_value = "cosine")]
    pub schedule: Schedule,
    /// Warm-up steps (linear from 0).
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    pub beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    pub beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    pub adam_eps: f64,
    /// Clip the global gradient norm (0: off).
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Passes over the data (ignored with --steps).
    #[arg(long, default_value_t = 1.0)]
    pub epochs: f64,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Tokens per sequence: longer examples are cut, shorter ones packed together.
    #[arg(long, default_value_t = 512)]
    pub max_seq_len: usize,
    /// Loss on the prompt tokens too.
    #[arg(long)]
    pub train_on_prompt: bool,
    /// Validation loss every N steps (and at the end).
    #[arg(long, default_value_t = 50)]
    pub eval_every: u64,
    /// Checkpoint every N steps (and at the end, and on Ctrl-C/SIGTERM).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: u64,
    /// Recompute each layer's activations in the backward pass (less memory, ~1/3 more
    /// compute): auto turns it on when keeping them would take over 4 GiB.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub activation_checkpointing: String,
    /// Append every step's figures to this JSONL file.
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Write a receipt that `verity tune verify` re-runs.
    #[arg(long)]
    pub receipt: Option<PathBuf>,
    /// Score the base and base + adapter on these `verity eval` tasks when training ends.
    #[arg(long)]
    pub eval: Option<String>,
    /// Examples per task for --eval.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write every step's token batches to this JSON file (for reference comparisons).
    #[arg(long, hide = true)]
    pub save_batches: Option<PathBuf>,
}

/// Re-run a tuning receipt and compare every step's loss (and the final adapter).
///
/// Checks first that the base model, the data files and the recorded settings are the
/// ones the receipt names; then trains again (all steps, or the first --steps) and
/// reports a match or the first step whose loss differs.
///
/// Examples:
///   verity tune verify a.receipt.json
///   verity tune verify a.receipt.json --steps 5 --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    pub receipt: PathBuf,
    /// Re-run only the first N steps.
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn tune(args: TuneArgs) -> anyhow::Result<()> {
    match args.command {
        Some(TuneCommand::Verify(v)) => verify(v),
        None => run(args.run),
    }
}

/// What a run was given, recorded in checkpoints and receipts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunRecord {
    pub model: String,
    pub base_root_digest: String,
    pub data: FileRecord,
    pub valid: Option<FileRecord>,
    pub valid_split: Option<f64>,
    pub init_adapter: Option<FileRecord>,
    pub settings: Settings,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FileRecord {
    pub path: PathBuf,
    pub sha256: String,
}

/// Everything a run needs, prepared.
pub struct Prepared {
    pub model: Arc<Model>,
    pub record: RunRecord,
    pub params: LoraParams,
    pub train: Vec<Packed>,
    pub valid: Vec<Packed>,
    pub truncated: usize,
    pub n_examples: usize,
}

fn file_record(path: &Path) -> anyhow::Result<FileRecord> {
    Ok(FileRecord {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        sha256: verity_audit::hash::sha256_file(path, &|_| {})
            .with_context(|| format!("reading {}", path.display()))?
            .0,
    })
}

fn load_data(path: &Path, model: &Model, s: &Settings) -> anyhow::Result<data::Dataset> {
    let opts = DataOptions {
        max_seq_len: s.max_seq_len,
        train_on_prompt: s.train_on_prompt,
    };
    Ok(data::load(path, &model.tokenizer, &opts)?)
}

fn pack_all(ds: &data::Dataset, seq_len: usize) -> Vec<Packed> {
    let order: Vec<usize> = (0..ds.examples.len()).collect();
    data::pack(&ds.examples, &order, seq_len)
}

/// Load the model and data of `record` (a new run's or a checkpoint's).
pub fn prepare(record: RunRecord, init: Option<&Path>, fresh: bool) -> anyhow::Result<Prepared> {
    let model = crate::common::load_model(&crate::common::ModelArgs {
        model: Some(record.model.clone()),
        ctx: 0,
        threads: 0,
        cache_type: Default::default(),
    })?;
    check_supported(&model).map_err(anyhow::Error::msg)?;
    let s = &record.settings;
    if s.max_seq_len > model.hparams.n_ctx_train {
        bail!(
            "--max-seq-len {} is longer than the model's context ({} tokens)",
            s.max_seq_len,
            model.hparams.n_ctx_train
        );
    }

    let ds = load_data(&record.data.path, &model, s)?;
    let (train_ds, valid_ds) = match (&record.valid, record.valid_split) {
        (Some(v), _) => (ds, Some(load_data(&v.path, &model, s)?)),
        (None, Some(frac)) => {
            let (t, v) = data::split(ds, frac, s.seed)?;
            (t, Some(v))
        }
        (None, None) => (ds, None),
    };
    let train = pack_all(&train_ds, s.max_seq_len);
    let valid = valid_ds
        .as_ref()
        .map(|v| pack_all(v, s.max_seq_len))
        .unwrap_or_default();
    let params = match (init, fresh) {
        (Some(p), _) => {
            let f = AdapterFile::open(p)?;
            LoraParams::from_file(&f, &model.hparams, s.lora.dropout).map_err(anyhow::Error::msg)?
        }
        _ => LoraParams::init(&s.lora, &model.hparams, s.seed).map_err(anyhow::Error::msg)?,
    };
    Ok(Prepared {
        model,
        record,
        params,
        truncated: train_ds.truncated,
        n_examples: train_ds.examples.len(),
        train,
        valid,
    })
}

fn settings_from(a: &TuneRunArgs) -> anyhow::Result<Settings> {
    if a.batch_size == 0 || a.grad_accum == 0 {
        bail!("--batch-size and --grad-accum must be at least 1");
    }
    if a.max_seq_len < 2 {
        bail!("--max-seq-len must be at least 2");
    }
    if !(0.0..1.0).contains(&a.dropout) {
        bail!("--dropout must be in [0, 1)");
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    Ok(Settings {
        lora: LoraSpec {
            rank: a.rank,
            alpha: a.alpha,
            targets: parse_targets(&a.targets).map_err(anyhow::Error::msg)?,
            rslora: a.rslora,
            dropout: a.dropout,
        },
        optim: OptimConfig {
            lr: a.lr,
            schedule: a.schedule,
            warmup_steps: a.warmup,
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.adam_eps,
            weight_decay: a.weight_decay,
            max_grad_norm: a.max_grad_norm,
        },
        seed: a.seed,
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        max_seq_len: a.max_seq_len,
        train_on_prompt: a.train_on_prompt,
        steps: a.steps.unwrap_or(0),
    })
}

/// Whether keeping every layer's activations would exceed 4 GiB.
fn want_checkpointing(mode: &str, model: &Model, s: &Settings) -> bool {
    match mode {
        "on" => true,
        "off" => false,
        _ => {
            let hp = &model.hparams;
            let per_token = 4 * (2 * hp.n_embd + 2 * hp.q_dim() + 2 * hp.kv_dim() + 2 * hp.n_ff);
            (per_token * hp.n_layer * s.batch_size * s.max_seq_len) as u64 > 4 << 30
        }
    }
}

fn run(a: TuneRunArgs) -> anyhow::Result<()> {
    verity_engine::init_threads(a.threads);
    let (prepared, out, state) = if let Some(dir) = &a.resume {
        let state = checkpoint::load(dir)?;
        let record: RunRecord = serde_json::from_value(state.run.clone())
            .context("the checkpoint does not record its run (made by another version?)")?;
        let p = prepare(record, None, false)?;
        check_inputs(&p.record, &p.model)?;
        if state.values.len() != p.params.n_params() {
            bail!("the checkpoint's adapter does not match its settings");
        }
        (p, dir.clone(), state)
    } else {
        let out = a.out.clone().expect("clap requires --out");
        prepare_out_dir(&out)?;
        let settings = settings_from(&a)?;
        let data_path = a.data.clone().expect("clap requires --data");
        let path = verity_store::resolve(a.model.as_deref())?;
        let record = RunRecord {
            model: path.display().to_string(),
            base_root_digest: String::new(),
            data: file_record(&data_path)?,
            valid: a.valid.as_deref().map(file_record).transpose()?,
            valid_split: a.valid_split,
            init_adapter: a.init_adapter.as_deref().map(file_record_any).transpose()?,
            settings,
        };
        let mut p = prepare(record, a.init_adapter.as_deref(), true)?;
        p.record.base_root_digest = verity_audit::hash::root_digest(&p.model.path)?;
        let s = &mut p.record.settings;
        if s.steps == 0 {
            s.steps = train::steps_for_epochs(p.train.len(), s.batch_size, s.grad_accum, a.epochs);
        }
        if p.train.is_empty() {
            bail!("no training sequences");
        }
        let state = train::fresh_state(&p.params);
        (p, out, state)
    };
    let checkpointing = want_checkpointing(
        &a.activation_checkpointing,
        &prepared.model,
        &prepared.record.settings,
    );
    if let Some(f) = &a.save_batches {
        save_batches(f, &prepared)?;
    }
    let result = run_training(&a, prepared, &out, state, checkpointing)?;
    if let Some(tasks) = &a.eval {
        before_after_eval(&result, tasks, a.eval_limit, &out, a.json)?;
    }
    Ok(())
}

fn file_record_any(path: &Path) -> anyhow::Result<FileRecord> {
    let file = if path.is_dir() {
        path.join("adapter_model.safetensors")
    } else {
        path.to_path_buf()
    };
    file_record(&file)
}

fn prepare_out_dir(out: &Path) -> anyhow::Result<()> {
    if checkpoint::latest(out).is_some() {
        bail!(
            "{} already holds a run's checkpoints; continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        );
    }
    std::fs::create_dir_all(out)
        .with_context(|| format!("creating the output directory {}", out.display()))?;
    let probe = out.join(".verity-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("the output directory {} is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// A resumed run's inputs must be the ones it started with.
fn check_inputs(r: &RunRecord, model: &Model) -> anyhow::Result<()> {
    let now = file_record(&r.data.path)?;
    if now.sha256 != r.data.sha256 {
        bail!(
            "{} changed since the run started (sha256 {} now, {} then)",
            r.data.path.display(),
            now.sha256,
            r.data.sha256
        );
    }
    if let Some(v) = &r.valid {
        if file_record(&v.path)?.sha256 != v.sha256 {
            bail!("{} changed since the run started", v.path.display());
        }
    }
    let digest = verity_audit::hash::root_digest(&model.path)?;
    if digest != r.base_root_digest {
        bail!(
            "the base model {} changed since the run started (root digest {digest}, then {})",
            model.path.display(),
            r.base_root_digest
        );
    }
    Ok(())
}

/// Progress bar, log file and collected records.
struct Reporter {
    bar: Option<ProgressBar>,
    log: Option<std::fs::File>,
    started: Instant,
    tokens: u64,
    json: bool,
}

impl Observer for Reporter {
    fn on_step(&mut self, r: &StepRecord, total: u64) {
        self.tokens += r.tokens;
        let rate = r.tokens as f64 / r.seconds.max(1e-9);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(r.step);
            b.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                r.loss, r.lr, rate
            ));
        } else if !self.json {
            eprintln!(
                "step {}/{total}  loss {:.4}  lr {:.3e}  grad-norm {:.3}  {rate:.0} tok/s",
                r.step, r.loss, r.lr, r.grad_norm
            );
        }
        if let Some(f) = &mut self.log {
            let line = json!({"step": r.step, "loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm,
                "tokens": r.tokens, "targets": r.targets, "seconds": r.seconds, "tokens_per_s": rate,
                "elapsed": self.started.elapsed().as_secs_f64()});
            let _ = writeln!(f, "{line}");
        }
    }
    fn on_valid(&mut self, v: &ValidRecord) {
        let msg = format!("step {}: validation loss {:.4}", v.step, v.loss);
        match &self.bar {
            Some(b) => b.println(msg),
            None if !self.json => eprintln!("{msg}"),
            None => {}
        }
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{}", json!({"step": v.step, "valid_loss": v.loss}));
        }
    }
    fn on_checkpoint(&mut self, dir: &Path) {
        if let Some(b) = &self.bar {
            b.set_message(format!("checkpoint {}", dir.display()));
        }
    }
}

/// The finished run.
struct Finished {
    model: String,
    out: PathBuf,
}

fn run_training(
    a: &TuneRunArgs,
    p: Prepared,
    out: &Path,
    state: verity_tune::checkpoint::State,
    checkpointing: bool,
) -> anyhow::Result<Finished> {
    let Prepared {
        model,
        record,
        mut params,
        train,
        valid,
        truncated,
        n_examples,
    } = p;
    let s = record.settings.clone();
    let tokens: usize = train.iter().map(|q| q.tokens.len()).sum();
    if !a.json {
        eprintln!(
            "tune: {} examples ({} cut to {} tokens) in {} sequences, {} tokens; {} valid sequences; {} steps of {}×{} sequences; LoRA r={} alpha={} on {} ({} parameters){}",
            n_examples,
            truncated,
            s.max_seq_len,
            train.len(),
            tokens,
            valid.len(),
            s.steps,
            s.batch_size,
            s.grad_accum,
            s.lora.rank,
            s.lora.alpha,
            s.lora.targets.iter().map(|t| t.short_name()).collect::<Vec<_>>().join(","),
            params.n_params(),
            if checkpointing { "; activation checkpointing on" } else { "" }
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let log = match &a.log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the log {}", p.display()))?,
        ),
        None => None,
    };
    let bar = (std::io::stderr().is_terminal() && !a.json).then(|| {
        let b = ProgressBar::new(s.steps);
        b.set_style(
            ProgressStyle::with_template("{bar:30} step {pos}/{len}  {msg}  eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_position(state.step);
        b
    });
    let mut rep = Reporter {
        bar,
        log,
        started: Instant::now(),
        tokens: 0,
        json: a.json,
    };
    let mut trainer = Trainer::new(model.clone());
    trainer.checkpointing = checkpointing;
    let run_json = serde_json::to_value(&record)?;
    let opts = LoopOptions {
        valid_every: a.eval_every,
        checkpoint_every: a.checkpoint_every,
        out,
        stop: &stop,
        max_steps: None,
        checkpoints: true,
        run: run_json,
    };
    let t0 = Instant::now();
    let first_step = state.step;
    let outcome = train::train(
        &mut trainer,
        &mut params,
        &s,
        &train,
        &valid,
        state,
        &opts,
        &mut rep,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(b) = &rep.bar {
        b.finish_and_clear();
    }
    let st = &outcome.state;
    let profile = verity_tune::profile::report();
    if !profile.is_empty() {
        eprint!("time by operation (VERITY_TUNE_PROFILE):\n{profile}");
    }
    if outcome.interrupted {
        eprintln!(
            "tune: stopped at step {}/{}; checkpoint written; continue with: verity tune --resume {}",
            st.step,
            s.steps,
            out.display()
        );
        std::process::exit(130);
    }
    let adapter_sha = write_adapter(&params, &model, &record, out)?;
    let title = format!(
        "{} + LoRA r={} ({})",
        model.name(),
        s.lora.rank,
        out.display()
    );
    std::fs::write(
        out.join("loss.svg"),
        verity_tune::plot::loss_svg(&title, &st.history, &st.valid),
    )
    .with_context(|| format!("writing {}", out.join("loss.svg").display()))?;
    // Rate over this invocation's steps after the first (which includes warm-up costs).
    let timed: Vec<&StepRecord> = st
        .history
        .iter()
        .filter(|r| r.step > first_step + 1)
        .collect();
    let tokens_per_s = if timed.is_empty() {
        st.history
            .iter()
            .filter(|r| r.step > first_step)
            .map(|r| r.tokens)
            .sum::<u64>() as f64
            / secs
    } else {
        timed.iter().map(|r| r.tokens).sum::<u64>() as f64
            / timed.iter().map(|r| r.seconds).sum::<f64>()
    };
    if let Some(rp) = &a.receipt {
        let r = Receipt::new(&record, &st.history, &adapter_sha);
        tune_receipt::write(rp, &r)?;
    }
    let last = st.history.last();
    let summary = json!({
        "out": out,
        "adapter_sha256": adapter_sha,
        "steps": st.step,
        "final_loss": last.map(|r| r.loss),
        "first_loss": st.history.first().map(|r| r.loss),
        "valid_loss": st.valid.last().map(|v| v.loss),
        "tokens_per_s": tokens_per_s,
        "seconds": secs,
        "tokens": rep.tokens,
        "n_params": params.n_params(),
        "activation_checkpointing": checkpointing,
        "chain": last.map(|r| r.chain.clone()),
        "threads": verity_pool::num_threads(),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "tune: {} steps in {:.1} s ({:.0} tokens/s); loss {:.4} -> {:.4}{}; adapter in {} (loss curve: loss.svg)",
            st.step,
            secs,
            tokens_per_s,
            st.history.first().map_or(f64::NAN, |r| r.loss),
            last.map_or(f64::NAN, |r| r.loss),
            st.valid.last().map(|v| format!(", validation {:.4}", v.loss)).unwrap_or_default(),
            out.display()
        );
    }
    Ok(Finished {
        model: record.model.clone(),
        out: out.to_path_buf(),
    })
}

/// Write the PEFT adapter into `out` (both files staged, then renamed); returns the
/// SHA-256 of adapter_model.safetensors.
fn write_adapter(
    params: &LoraParams,
    model: &Model,
    record: &RunRecord,
    out: &Path,
) -> anyhow::Result<String> {
    let file = params
        .to_adapter_file(&params.values, &model.hparams, out.to_path_buf())
        .join_fused(&model.hparams)
        .map_err(anyhow::Error::msg)?;
    let staging = tempfile::Builder::new()
        .prefix(".verity-adapter-")
        .tempdir_in(out)?;
    let extra = serde_json::Map::from_iter([
        ("base_model_name_or_path".to_string(), json!(model.name())),
        (
            "base_model_root_digest".to_string(),
            json!(record.base_root_digest),
        ),
        (
            "lora_dropout".to_string(),
            json!(record.settings.lora.dropout),
        ),
    ]);
    verity_model::adapter::write_peft(&file, staging.path(), &extra).map_err(anyhow::Error::msg)?;
    for name in ["adapter_model.safetensors", "adapter_config.json"] {
        let f = std::fs::File::open(staging.path().join(name))?;
        f.sync_all()?;
        std::fs::rename(staging.path().join(name), out.join(name))
            .with_context(|| format!("writing {}", out.join(name).display()))?;
    }
    Ok(verity_audit::hash::sha256_file(&out.join("adapter_model.safetensors"), &|_| {})?.0)
}

/// Every step's micro-batches, for reference implementations to train on the same data.
fn save_batches(path: &Path, p: &Prepared) -> anyhow::Result<()> {
    let s = &p.record.settings;
    let steps: Vec<Value> = (0..s.steps)
        .map(|step| {
            let micro: Vec<Value> = train::step_batches(p.train.len(), s, step)
                .iter()
                .map(|idx| {
                    let seqs: Vec<Value> = idx
                        .iter()
                        .map(|&i| {
                            let q = &p.train[i];
                            json!({"tokens": q.tokens, "target": q.target.iter().map(|&t| t as u8).collect::<Vec<_>>(), "segments": q.segments})
                        })
                        .collect();
                    json!({"sequences": seqs})
                })
                .collect();
            json!({"micro_batches": micro})
        })
        .collect();
    std::fs::write(path, serde_json::to_vec(&json!({"steps": steps}))?)
        .with_context(|| format!("writing {}", path.display()))
}

/// `--eval`: score the base and the base + adapter with `verity eval`, side by side.
fn before_after_eval(
    f: &Finished,
    tasks: &str,
    limit: Option<usize>,
    out: &Path,
    json_out: bool,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let score = |lora: Option<&Path>| -> anyhow::Result<Value> {
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(["eval", "--tasks", tasks, "--model", &f.model, "--json"]);
        if let Some(n) = limit {
            cmd.args(["--limit", &n.to_string()]);
        }
        if let Some(l) = lora {
            cmd.arg("--lora").arg(l);
        }
        let o = cmd.stderr(std::process::Stdio::inherit()).output()?;
        if !o.status.success() {
            bail!("verity eval failed");
        }
        Ok(serde_json::from_slice(&o.stdout)?)
    };
    let before = score(None)?;
    let after = score(Some(&f.out))?;
    let both = json!({"base": before, "adapter": after});
    std::fs::write(out.join("eval.json"), serde_json::to_vec_pretty(&both)?)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&both)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<10} {:>10} {:>10}",
        "task", "metric", "base", "adapter"
    );
    if let (Some(b), Some(a)) = (before["results"].as_object(), after["results"].as_object()) {
        for (task, metrics) in b {
            if let Some(m) = metrics.as_object() {
                for (k, v) in m {
                    if let (Some(x), Some(y)) =
                        (v.as_f64(), a.get(task).and_then(|t| t[k].as_f64()))
                    {
                        if !k.contains("stderr") {
                            println!("{task:<24} {k:<10} {x:>10.4} {y:>10.4}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn verify(v: VerifyArgs) -> anyhow::Result<()> {
    verity_engine::init_threads(v.threads);
    let r = tune_receipt::read(&v.receipt)?;
    let mut causes = Vec::new();
    if let Some(c) = r.self_check() {
        causes.push(c);
    }
    let record = r.run.clone();
    let now = file_record(&record.data.path);
    match now {
        Ok(f) if f.sha256 != record.data.sha256 => causes.push(format!(
            "the training data {} differs from the receipt's (sha256 {} now, {} in the receipt)",
            record.data.path.display(),
            f.sha256,
            record.data.sha256
        )),
        Err(e) => causes.push(format!("the training data cannot be read: {e:#}")),
        _ => {}
    }
    if let Some(val) = &record.valid {
        if file_record(&val.path).map(|f| f.sha256).ok().as_ref() != Some(&val.sha256) {
            causes.push(format!(
                "the validation data {} differs from the receipt's",
                val.path.display()
            ));
        }
    }
    let base_path = verity_store::resolve(Some(&record.model))?;
    let digest = verity_audit::hash::root_digest(&base_path)?;
    if digest != record.base_root_digest {
        causes.push(format!(
            "the base model {} differs from the receipt's (root digest {digest} now, {} in the receipt)",
            base_path.display(),
            record.base_root_digest
        ));
    }
    let total = record.settings.steps;
    let n = v.steps.unwrap_or(total).min(total);
    let mut first_diff: Option<(u64, f64, f64)> = None;
    let mut adapter_match = None;
    if causes.is_empty() {
        let init = record.init_adapter.as_ref().map(|f| f.path.clone());
        let init_dir = init.as_deref().map(|p| {
            if p.file_name()
                .is_some_and(|n| n == "adapter_model.safetensors")
            {
                p.parent().unwrap_or(p)
            } else {
                p
            }
        });
        if let (Some(f), Some(p)) = (&record.init_adapter, &init) {
            if file_record(p)?.sha256 != f.sha256 {
                causes.push(format!(
                    "the initial adapter {} differs from the receipt's",
                    p.display()
                ));
            }
        }
        let p = prepare(record.clone(), init_dir, init_dir.is_none())?;
        let tmp = tempfile::tempdir()?;
        let stop = AtomicBool::new(false);
        let opts = LoopOptions {
            valid_every: 0,
            checkpoint_every: 0,
            out: tmp.path(),
            stop: &stop,
            max_steps: Some(n),
            checkpoints: false,
            run: Value::Null,
        };
        struct Quiet(Option<ProgressBar>);
        impl Observer for Quiet {
            fn on_step(&mut self, r: &StepRecord, _: u64) {
                if let Some(b) = &self.0 {
                    b.set_position(r.step);
                }
            }
            fn on_valid(&mut self, _: &ValidRecord) {}
            fn on_checkpoint(&mut self, _: &Path) {}
        }
        let bar = std::io::stderr().is_terminal().then(|| ProgressBar::new(n));
        let mut trainer = Trainer::new(p.model.clone());
        trainer.checkpointing = want_checkpointing("auto", &p.model, &record.settings);
        let mut params = p.params.clone();
        let state = train::fresh_state(&params);
        let outcome = train::train(
            &mut trainer,
            &mut params,
            &record.settings,
            &p.train,
            &[],
            state,
            &opts,
            &mut Quiet(bar),
        )?;
        for (mine, theirs) in outcome.state.history.iter().zip(&r.steps) {
            if mine.loss.to_bits() != theirs.loss.to_bits() || mine.chain != theirs.chain {
                first_diff = Some((mine.step, mine.loss, theirs.loss));
                break;
            }
        }
        if first_diff.is_none() && n == total {
            let out = tmp.path().join("adapter");
            std::fs::create_dir_all(&out)?;
            let sha = write_adapter(&params, &p.model, &record, &out)?;
            adapter_match = Some(sha == r.adapter_sha256);
        }
    }
    let ok = causes.is_empty() && first_diff.is_none() && adapter_match != Some(false);
    let report = json!({
        "receipt": v.receipt,
        "match": ok,
        "steps_checked": if causes.is_empty() { n } else { 0 },
        "causes": causes,
        "first_differing_step": first_diff.map(|(s, mine, theirs)| json!({"step": s, "loss": mine, "receipt_loss": theirs})),
        "adapter_match": adapter_match,
    });
    if v.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if ok {
        println!(
            "MATCH: {n} of {total} steps re-run, every loss bit-identical{}",
            match adapter_match {
                Some(true) => "; the adapter is identical",
                _ => "",
            }
        );
    } else {
        for c in &causes {
            println!("MISMATCH: {c}");
        }
        if let Some((s, mine, theirs)) = first_diff {
            println!("MISMATCH: step {s} differs first: loss {mine} here, {theirs} in the receipt");
        }
        if adapter_match == Some(false) {
            println!("MISMATCH: every loss matches but the final adapter differs");
        }
    }
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
