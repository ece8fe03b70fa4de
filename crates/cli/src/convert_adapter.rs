//! `verity convert ADAPTER --to gguf|peft --base MODEL OUT`: LoRA adapters between PEFT's
//! directory format and llama.cpp's GGUF LoRA files.

use std::path::Path;

use anyhow::{bail, Context as _};
use serde_json::json;
use verity_formats::gguf::{Gguf, Value};
use verity_model::adapter::{write_gguf, write_peft};
use verity_model::{Adapter, AdapterFile, RopeStyle};

use crate::common::{load_model, ModelArgs};
use crate::convert::{ConvertArgs, Target};

/// Whether `path` is an adapter rather than a model: a PEFT directory, its safetensors
/// file, or a GGUF whose `general.type` is `adapter`.
pub fn is_adapter(path: &Path) -> bool {
    if path.is_dir() {
        return path.join("adapter_config.json").exists();
    }
    if path
        .file_name()
        .is_some_and(|n| n == "adapter_model.safetensors")
    {
        return true;
    }
    path.is_file() && Gguf::open(path).is_ok_and(|g| g.get_str("general.type") == Some("adapter"))
}

pub fn convert_adapter(args: &ConvertArgs) -> anyhow::Result<()> {
    let Some(base) = &args.base else {
        bail!(
            "{} is a LoRA adapter: pass --base MODEL (the model it was made for), whose shapes and RoPE layout the conversion needs",
            args.input
        );
    };
    let model = load_model(&ModelArgs {
        model: Some(base.clone()),
        ctx: 0,
        threads: 0,
        cache_type: Default::default(),
    })?;
    let file = AdapterFile::open(Path::new(&args.input))?;
    // Binding checks every shape against the base before anything is written.
    Adapter::bind(&file, &model)?;
    let hp = &model.hparams;
    // Hugging Face's q/k order, and one pair per fused module where the base fuses
    // (Phi-3's qkv_proj and gate_up_proj, as PEFT and llama.cpp name them).
    let file = file
        .split_fused(hp)
        .map_err(anyhow::Error::msg)?
        .into_hf_order(hp)
        .join_fused(hp)
        .map_err(anyhow::Error::msg)?;
    let out = &args.output;
    if out.exists() {
        bail!("{} already exists; choose a new path", out.display());
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let base_name = model.name();
    match args.to {
        Target::Gguf => {
            // llama.cpp's converter permutes q/k for the architectures it rotates in adjacent
            // pairs (llama, smollm3, ...), whatever file the base is.
            let permute = (hp.arch.spec().gguf_rope == RopeStyle::Interleaved).then_some((
                hp.n_head,
                hp.n_head_kv,
                hp.head_dim,
            ));
            let name = Path::new(&args.input)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = write_gguf(
                &file,
                hp.arch.gguf_name(),
                permute,
                &[
                    ("general.name", Value::Str(name)),
                    ("general.base_model.count", Value::U32(1)),
                    ("general.base_model.0.name", Value::Str(base_name.clone())),
                ],
            )
            .map_err(anyhow::Error::msg)?;
            let mut tmp = tempfile::Builder::new()
                .prefix(".verity-convert-")
                .tempfile_in(parent)?;
            std::io::Write::write_all(&mut tmp, &bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            tmp.as_file().sync_all()?;
            tmp.persist(out)
                .with_context(|| format!("moving the result to {}", out.display()))?;
        }
        Target::Peft => {
            let staging = tempfile::Builder::new()
                .prefix(".verity-convert-")
                .tempdir_in(parent)?;
            let extra = serde_json::Map::from_iter([(
                "base_model_name_or_path".to_string(),
                json!(file.base_model.clone().unwrap_or(base_name.clone())),
            )]);
            write_peft(&file, staging.path(), &extra).map_err(anyhow::Error::msg)?;
            let staged = staging.keep();
            std::fs::rename(&staged, out)
                .with_context(|| format!("moving the result to {}", out.display()))?;
        }
        Target::Hf => bail!(
            "{} is a LoRA adapter: convert it --to gguf or --to peft",
            args.input
        ),
    }
    // The written file must read back as the same adapter.
    let back = AdapterFile::open(out)?;
    Adapter::bind(&back, &model)?;
    if args.json {
        let v = json!({
            "input": args.input,
            "output": out,
            "format": args.to.name(),
            "base": model.path,
            "pairs": back.tensors.len(),
            "rank": back.rank,
            "alpha": back.alpha,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!(
            "verity: wrote {} ({} LoRA pairs, rank {})",
            out.display(),
            back.tensors.len(),
            back.rank
        );
    }
    Ok(())
}
