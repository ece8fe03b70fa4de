//! `verity merge`: fold LoRA adapters into a base model's weights, `W' = W + Σ scale·B·A`,
//! and write the result as a GGUF file or a Hugging Face directory with its provenance.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use verity_formats::gguf::Value;
use verity_formats::gguf_write::{GgufWriter, OutTensor};
use verity_formats::TensorType;
use verity_model::adapter::Fused;
use verity_model::{Adapter, Arch, Model, Proj};

use crate::common::{load_model, split_scale, ModelArgs};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum MergeDtype {
    F32,
    F16,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
}

impl MergeDtype {
    fn tensor_type(self) -> TensorType {
        match self {
            MergeDtype::F32 => TensorType::F32,
            MergeDtype::F16 => TensorType::F16,
            MergeDtype::Bf16 => TensorType::BF16,
            MergeDtype::Q8_0 => TensorType::Q8_0,
        }
    }
}

/// Merge LoRA adapters into a base model and write a standalone model.
///
/// Each adapted projection becomes W + Σ scale·B·A (the adapter's alpha/r, times the
/// strength given as ADAPTER:SCALE). The output is a GGUF file when OUT ends in .gguf
/// (the base must then be a GGUF; merged tensors are written in --dtype, every other
/// tensor is copied byte for byte) or a Hugging Face directory otherwise (all weights in
/// --dtype: f32, f16 or bf16). The base's and each adapter's root digests are recorded
/// in the output's metadata. The output appears only when complete.
///
/// Examples:
///   verity merge smollm2 ./my-adapter/ --out merged.gguf --dtype q8_0
///   verity merge ./smollm2-hf/ ./style/:0.5 ./facts/ --out merged-hf/
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MergeArgs {
    /// The base model (a GGUF file, a Hugging Face directory or a name in the store).
    pub base: String,
    /// Adapters to merge, PATH[:SCALE] (PEFT directories or GGUF LoRA files).
    #[arg(required = true)]
    pub adapters: Vec<String>,
    /// Where to write: a .gguf file, or a directory for Hugging Face format.
    #[arg(long)]
    pub out: PathBuf,
    /// Element type of the merged weights.
    #[arg(long, value_enum, default_value_t = MergeDtype::F32)]
    pub dtype: MergeDtype,
    /// Print a JSON summary.
    #[arg(long)]
    pub json: bool,
}

/// The adapters to merge, bound to the base, with their strengths and digests.
pub struct Merge {
    pub adapters: Vec<(Arc<Adapter>, f32, PathBuf, String)>,
}

impl Merge {
    /// Add every adapter's update for `proj` of layer `l` to `w` (`rows × cols`, in the
    /// base's own row order, which is the order the bound adapter's B rows are in).
    pub fn apply(&self, l: usize, proj: Proj, w: &mut [f32], cols: usize) {
        for (adapter, strength, _, _) in &self.adapters {
            let Some(pair) = adapter.pair(l, proj) else {
                continue;
            };
            let (a, b) = (pair.a.to_f32(), pair.b.to_f32());
            let rank = pair.a.rows;
            let scale = pair.scale * strength;
            for (o, row) in w.chunks_exact_mut(cols).enumerate() {
                for (k, a_row) in a.chunks_exact(cols).enumerate() {
                    let c = scale * b[o * rank + k];
                    for (wi, &ai) in row.iter_mut().zip(a_row) {
                        *wi += c * ai;
                    }
                }
            }
        }
    }

    /// Whether any adapter updates `proj` of layer `l`.
    pub fn touches(&self, l: usize, proj: Proj) -> bool {
        self.adapters
            .iter()
            .any(|(a, ..)| a.pair(l, proj).is_some())
    }

    /// Provenance for the output's metadata.
    pub fn provenance(&self, model: &Model, base_digest: &str) -> serde_json::Value {
        json!({
            "base": { "path": model.path, "root_digest": base_digest },
            "adapters": self.adapters.iter().map(|(_, s, p, d)| json!({
                "path": p, "scale": s, "root_digest": d
            })).collect::<Vec<_>>(),
        })
    }
}

/// `blk.N.attn_q.weight` → (N, [Q]); a fused weight of `arch` gives its parts in row
/// order (Phi-3's `attn_qkv` → [Q, K, V], its `ffn_up` → [Gate, Up]).
fn parse_gguf_weight(name: &str, arch: Arch) -> Option<(usize, Vec<Proj>)> {
    let rest = name.strip_prefix("blk.")?;
    let (l, rest) = rest.split_once('.')?;
    let module = rest.strip_suffix(".weight")?;
    let parts = match Fused::from_gguf_name(module, arch) {
        Some(f) => f.parts().to_vec(),
        None => vec![Proj::from_gguf_name(module)?],
    };
    Some((l.parse().ok()?, parts))
}

pub fn merge(args: MergeArgs) -> anyhow::Result<()> {
    let model = load_model(&ModelArgs {
        model: Some(args.base.clone()),
        ctx: 0,
        threads: 0,
        cache_type: Default::default(),
    })?;
    let mut adapters = Vec::new();
    for spec in &args.adapters {
        let (path, scale) = split_scale(spec)?;
        let adapter = Adapter::load(&path, &model)?;
        let digest = verity_audit::root_digest(&path)
            .with_context(|| format!("hashing {}", path.display()))?;
        adapters.push((Arc::new(adapter), scale, path, digest));
    }
    let merge = Merge { adapters };
    let base_digest = verity_audit::root_digest(&model.path)?;
    let provenance = merge.provenance(&model, &base_digest);
    let out = &args.out;
    if out.exists() {
        bail!("{} already exists; choose a new path", out.display());
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let to_gguf = out.extension().is_some_and(|e| e == "gguf");
    let n_tensors = if to_gguf {
        write_merged_gguf(&model, &merge, &provenance, args.dtype, out, parent)?
    } else {
        let dtype = match args.dtype {
            MergeDtype::F32 => crate::convert::Dtype::F32,
            MergeDtype::F16 => crate::convert::Dtype::F16,
            MergeDtype::Bf16 => crate::convert::Dtype::Bf16,
            MergeDtype::Q8_0 => bail!(
                "--dtype q8_0 is for GGUF output (end --out in .gguf); Hugging Face directories hold f32, f16 or bf16"
            ),
        };
        let staging = tempfile::Builder::new()
            .prefix(".verity-merge-")
            .tempdir_in(parent)?;
        let n = crate::convert::write_hf_merged(
            &model,
            staging.path(),
            dtype,
            Some(&merge),
            &provenance,
            None,
            true,
        )?;
        let staged = staging.keep();
        std::fs::rename(&staged, out)
            .with_context(|| format!("moving the result to {}", out.display()))?;
        n
    };
    if args.json {
        let mut v = provenance.clone();
        v["output"] = json!(out);
        v["tensors"] = json!(n_tensors);
        v["dtype"] = json!(format!("{:?}", args.dtype).to_lowercase());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!(
            "verity: wrote {} ({n_tensors} tensors, {} adapter(s) merged)",
            out.display(),
            merge.adapters.len()
        );
    }
    Ok(())
}

/// A tensor progress bar on stderr (hidden when stderr is not a terminal).
pub fn tensor_progress(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(n as u64),
        indicatif::ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) = ProgressStyle::with_template(&format!(
        "{what} {{bar:40}} {{pos}}/{{len}} tensors eta {{eta}}"
    )) {
        pb.set_style(style);
    }
    pb
}

fn write_merged_gguf(
    model: &Model,
    merge: &Merge,
    provenance: &serde_json::Value,
    dtype: MergeDtype,
    out: &Path,
    parent: &Path,
) -> anyhow::Result<usize> {
    let Some(g) = &model.gguf else {
        bail!(
            "GGUF output needs a GGUF base ({} is a Hugging Face directory); end --out without .gguf to write a directory",
            model.path.display()
        );
    };
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        // The writer lays data out at its own alignment.
        if k != "general.alignment" {
            w.set(k, v.clone());
        }
    }
    w.set("general.base_model.count", Value::U32(1));
    w.set("general.base_model.0.name", Value::Str(model.name()));
    w.set("verity.merge", Value::Str(provenance.to_string()));
    let ty = dtype.tensor_type();
    let pb = tensor_progress(g.tensors.len(), "merging");
    for info in &g.tensors {
        pb.inc(1);
        let bytes = g.tensor_data(info)?;
        let merged = parse_gguf_weight(&info.name, model.hparams.arch)
            .filter(|(l, parts)| parts.iter().any(|&p| merge.touches(*l, p)));
        let Some((l, parts)) = merged else {
            w.add_tensor(OutTensor {
                name: info.name.clone(),
                ty: info.supported_type()?,
                shape: info.shape.clone(),
                data: bytes.to_vec(),
            });
            continue;
        };
        let layer = &model.weights.layers[l];
        // A fused weight is its parts' rows, each merged with its own update.
        let mut values = Vec::new();
        let mut cols = 0;
        for proj in parts {
            let t = match proj {
                Proj::Q => &layer.wq,
                Proj::K => &layer.wk,
                Proj::V => &layer.wv,
                Proj::O => &layer.wo,
                Proj::Gate => &layer.w_gate,
                Proj::Up => &layer.w_up,
                Proj::Down => &layer.w_down,
            };
            let mut v = t.to_f32();
            merge.apply(l, proj, &mut v, t.cols);
            values.extend_from_slice(&v);
            cols = t.cols;
        }
        let mut data = Vec::with_capacity(ty.row_bytes(cols).unwrap_or(0) * values.len() / cols);
        for row in values.chunks_exact(cols) {
            verity_kernels::quantize_row(ty, row, &mut data).map_err(anyhow::Error::msg)?;
        }
        w.add_tensor(OutTensor {
            name: info.name.clone(),
            ty,
            shape: info.shape.clone(),
            data,
        });
    }
    pb.finish_and_clear();
    let mut tmp = tempfile::Builder::new()
        .prefix(".verity-merge-")
        .tempfile_in(parent)?;
    {
        let mut bw = std::io::BufWriter::new(tmp.as_file_mut());
        w.write(&mut bw)
            .with_context(|| format!("writing {}", out.display()))?;
        std::io::Write::flush(&mut bw)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(out)
        .with_context(|| format!("moving the result to {}", out.display()))?;
    Ok(g.tensors.len())
}
