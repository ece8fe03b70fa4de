//! `verity inspect`: what a model file is, and what is wrong with it.

use anyhow::bail;
use clap::Args;
use verity_audit::inspect::{human_bytes, human_count, Report, Severity};

/// Show what a model file is: format, architecture and hyperparameters, parameter counts,
/// tensor types, memory needed, tokenizer and chat template, provenance, and findings
/// (NaN/Inf or all-zero tensors, shapes that disagree with the hyperparameters, missing or
/// unexpected tensors, metadata that contradicts the weights).
///
/// A LoRA adapter (PEFT directory or GGUF LoRA file) gets its own report: rank, alpha,
/// the scale it applies, targets, parameters, the base it declares, and findings
/// (NaN/Inf, impossible ranks, an all-zero lora_B: an untrained adapter).
///
/// Exits with status 1 when a finding is an error.
///
/// Examples:
///   verity inspect                                   # the default model
///   verity inspect ./qwen2.5-0.5b-instruct-q4_k_m.gguf --tensors
///   verity inspect ./Llama-3.2-1B-Instruct/ --json --ctx 4096
///   verity inspect ./my-adapter/
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face model directory, or a model name in the store
    /// (default: SmolLM2-135M-Instruct).
    pub model: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list every tensor: name, shape, type, bytes, offset and value statistics.
    #[arg(long)]
    pub tensors: bool,
    /// Context length for the memory estimate (default: the model's training context).
    #[arg(long, default_value_t = 0)]
    pub ctx: usize,
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let path = verity_store::resolve(args.model.as_deref())?;
    if crate::convert_adapter::is_adapter(&path) {
        return inspect_adapter(&path, args.json);
    }
    let mut report = verity_audit::inspect::inspect(&path, args.ctx)?;
    if args.json {
        if !args.tensors {
            report.tensors.clear();
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, args.tensors);
    }
    let errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        bail!(
            "{}: {errors} finding{} {}",
            report.path,
            if errors == 1 { "" } else { "s" },
            if errors == 1 {
                "is an error"
            } else {
                "are errors"
            }
        );
    }
    Ok(())
}

fn json_short(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => verity_formats::printable(s),
        other => verity_formats::printable(&other.to_string()),
    }
}

fn print_report(r: &Report, tensors: bool) {
    let fmt = match r.format_version {
        Some(v) => format!("{} v{v}", r.format),
        None => r.format.clone(),
    };
    println!("{}", r.path);
    println!("  format        {fmt}, {}", human_bytes(r.file_bytes));
    println!(
        "  architecture  {}",
        r.architecture.as_deref().unwrap_or("(not declared)")
    );
    println!(
        "  parameters    {} ({})",
        human_count(r.total_parameters),
        r.total_parameters
    );
    for (k, v) in &r.parameters {
        println!("    {k:<12}{:>14}  {:>8}", v, human_count(*v));
    }
    if let (Some((n, used)), Some(active)) = (r.experts, r.active_parameters) {
        println!("  experts       {n} per layer, {used} used per token");
        println!(
            "  active        {} parameters per token ({active})",
            human_count(active)
        );
    }
    println!(
        "  tensors       {}, {:.2} bits per weight",
        r.tensor_count, r.bits_per_weight
    );
    for t in &r.types {
        println!(
            "    {:<6} {:>4} tensors {:>14} params {:>10}",
            t.ty,
            t.tensors,
            t.params,
            human_bytes(t.bytes)
        );
    }
    if let Some(m) = &r.memory {
        println!(
            "  memory        {} at context {}: weights {} + KV cache (f16) {}",
            human_bytes(m.total_bytes),
            m.context,
            human_bytes(m.weights_bytes),
            human_bytes(m.kv_cache_bytes)
        );
    }
    println!("\nhyperparameters");
    for (k, v) in &r.hyperparameters {
        println!("  {k:<40} {}", json_short(v));
    }
    println!("\ntokenizer");
    if let Some(o) = r.tokenizer.as_object() {
        for (k, v) in o {
            if !v.is_null() {
                println!("  {k:<16} {}", json_short(v));
            }
        }
    }
    match &r.chat_template {
        Some(t) => {
            println!(
                "  chat template    {} ({} bytes)",
                r.chat_template_kind
                    .as_deref()
                    .unwrap_or("unrecognised family"),
                t.len()
            );
            for line in t.lines().take(40) {
                println!("    | {}", verity_formats::printable(line));
            }
        }
        None => println!("  chat template    none"),
    }
    println!("\nprovenance");
    if r.provenance.is_empty() {
        println!("  (none recorded)");
    }
    for (k, v) in &r.provenance {
        println!("  {k:<32} {}", json_short(v));
    }
    if tensors {
        println!("\ntensors");
        println!(
            "  {:<36} {:<18} {:<5} {:>11} {:>12} {:>10} {:>10} {:>10}",
            "name", "shape", "type", "bytes", "offset", "min", "max", "std"
        );
        for t in &r.tensors {
            let shape = format!("{:?}", t.shape);
            let (min, max, std) = t
                .stats
                .as_ref()
                .map(|s| {
                    (
                        format!("{:.4}", s.min),
                        format!("{:.4}", s.max),
                        format!("{:.4}", s.std),
                    )
                })
                .unwrap_or_default();
            println!(
                "  {:<36} {:<18} {:<5} {:>11} {:>12} {:>10} {:>10} {:>10}",
                verity_formats::printable(&t.name),
                shape,
                t.ty,
                t.bytes.map(|b| b.to_string()).unwrap_or_default(),
                t.offset,
                min,
                max,
                std
            );
        }
    }
    println!("\nfindings");
    if r.findings.is_empty() {
        println!("  none: every tensor decodes to finite values and matches the hyperparameters");
    }
    for f in &r.findings {
        let sev = match f.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        };
        println!("  {sev:<8} {}", f.message);
    }
}

fn inspect_adapter(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let r = verity_audit::adapter::inspect_adapter(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{}", r.path);
        println!("  format        LoRA adapter ({}), {}", r.format, r.dtype);
        let opt = |v: &Option<String>| {
            v.as_deref()
                .map_or("(not declared)".to_string(), verity_formats::printable)
        };
        println!("  base          {}", opt(&r.base_model));
        println!("  architecture  {}", opt(&r.architecture));
        println!(
            "  rank          {}{}",
            r.rank,
            if r.ranks.len() > 1 {
                format!(" (pairs by rank: {:?})", r.ranks)
            } else {
                String::new()
            }
        );
        println!(
            "  alpha         {} ({}scale {:.4}{})",
            r.alpha,
            if r.use_rslora { "rsLoRA, " } else { "" },
            r.scale,
            if r.use_rslora {
                " = alpha/sqrt(r)"
            } else {
                " = alpha/r"
            }
        );
        let targets: Vec<String> = r.targets.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        println!("  targets       {}", targets.join(", "));
        println!("  layers        {}", r.layers);
        println!(
            "  parameters    {} in {} pairs",
            human_count(r.parameters as u64),
            r.pairs
        );
        if r.findings.is_empty() {
            println!("  findings      none");
        }
        for f in &r.findings {
            println!(
                "  {:?}: {}{}",
                f.severity,
                f.tensor
                    .as_deref()
                    .map(|t| format!("{t}: "))
                    .unwrap_or_default(),
                f.message
            );
        }
    }
    let errors = r
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        bail!("{}: {errors} finding(s) are errors", r.path);
    }
    Ok(())
}
