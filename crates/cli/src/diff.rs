//! `verity diff`: how two models' weights relate.

use clap::Args;
use verity_audit::diff::{Diff, Status};

/// Compare two models tensor by tensor: identical, changed, added or removed. A GGUF file
/// and a Hugging Face directory of the same architecture pair their tensors by the
/// architecture's names in each format (llama.cpp's q/k row order and Gemma's norm offset
/// undone), so a conversion can be checked against its source. For changed
/// tensors: relative norm of the difference, cosine similarity and the effective rank of
/// the difference (a LoRA merge shows a low rank). Values are compared dequantized, so
/// models in different tensor types compare. Ends with a verdict on lineage ("B derives
/// from A", "unrelated") and the evidence for it.
///
/// Examples:
///   verity diff base.gguf finetuned.gguf
///   verity diff model-f16.gguf model-q4_k_m.gguf --json
///   verity diff A.gguf B.gguf --all          # also list identical tensors
///   verity diff model.gguf ./model-hf/       # a GGUF against a Hugging Face checkpoint
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DiffArgs {
    /// Model A (GGUF file or Hugging Face directory, or a name in the store).
    pub a: String,
    /// Model B.
    pub b: String,
    /// Print the comparison as JSON.
    #[arg(long)]
    pub json: bool,
    /// List identical tensors too.
    #[arg(long)]
    pub all: bool,
}

pub fn diff(args: DiffArgs) -> anyhow::Result<()> {
    let a = verity_store::resolve(Some(&args.a))?;
    let b = verity_store::resolve(Some(&args.b))?;
    let d = verity_audit::diff::diff(&a, &b)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        print_diff(&d, args.all);
    }
    Ok(())
}

fn print_diff(d: &Diff, all: bool) {
    println!("A: {}\nB: {}\n", d.a, d.b);
    let mut shown = 0;
    for t in &d.tensors {
        let name = match &t.name_b {
            Some(b) => format!(
                "{} (B: {})",
                verity_formats::printable(&t.name),
                verity_formats::printable(b)
            ),
            None => verity_formats::printable(&t.name).to_string(),
        };
        let types = match (&t.type_a, &t.type_b) {
            (Some(a), Some(b)) if a != b => format!("{a}->{b}"),
            (Some(a), _) | (None, Some(a)) => a.clone(),
            _ => String::new(),
        };
        let line = match t.status {
            Status::Identical if !all => continue,
            Status::Identical => format!("  identical   {name}"),
            Status::Equivalent => format!("  same values {name} ({types})"),
            Status::Rounded => format!("  rounded     {name} ({types})"),
            Status::Added => format!(
                "  added       {name} {:?} {types}",
                t.shape_b.clone().unwrap_or_default()
            ),
            Status::Removed => format!(
                "  removed     {name} {:?} {types}",
                t.shape_a.clone().unwrap_or_default()
            ),
            Status::Reshaped => format!(
                "  reshaped    {name} {:?} -> {:?}",
                t.shape_a.clone().unwrap_or_default(),
                t.shape_b.clone().unwrap_or_default()
            ),
            Status::Uncompared => {
                format!("  differs     {name} (type {types} cannot be decoded; bytes differ)")
            }
            Status::Changed => {
                let mut s = format!(
                    "  changed     {name:<32} {types:<10} rel.norm {:.4}  cosine {:.5}",
                    t.relative_norm.unwrap_or(f64::NAN),
                    t.cosine.unwrap_or(f64::NAN)
                );
                if let Some(r) = &t.rank {
                    s += &format!("  eff.rank {}/{}", r.effective_rank, r.max_rank);
                }
                s
            }
        };
        println!("{line}");
        shown += 1;
    }
    if shown == 0 {
        println!("  (no differences)");
    }
    let s = &d.summary;
    println!(
        "\n{} identical, {} same values, {} rounded, {} changed, {} added, {} removed, {} reshaped{}",
        s.identical,
        s.equivalent,
        s.rounded,
        s.changed,
        s.added,
        s.removed,
        s.reshaped,
        s.weighted_cosine
            .map(|c| format!("; weighted cosine {c:.4}"))
            .unwrap_or_default()
    );
    println!("verdict: {}", d.explanation);
}
