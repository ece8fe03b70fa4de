//! llama.cpp's GGUF LoRA files: `general.type = adapter`, `adapter.type = lora`,
//! `adapter.lora.alpha`, tensors `blk.N.attn_q.weight.lora_a` (ggml shape `[in, r]`) and
//! `.lora_b` (`[r, out]`). llama.cpp scales each pair by `alpha / r` (1 when alpha is 0).

use std::collections::BTreeMap;
use std::path::Path;

use verity_formats::gguf::{Gguf, Value};
use verity_formats::gguf_write::{GgufWriter, OutTensor};
use verity_formats::{printable, TensorType};

use crate::arch::{Arch, RopeStyle};

use super::{widen, AdapterFile, AdapterFormat, Fused, LoraTensor, Module, Proj};

/// `blk.N.attn_q.weight.lora_a` / `lora_b`.
pub fn gguf_tensor_name(layer: usize, proj: Proj, a: bool) -> String {
    module_tensor_name(layer, proj.gguf_name(), a)
}

fn module_tensor_name(layer: usize, module: &str, a: bool) -> String {
    let ab = if a { "a" } else { "b" };
    format!("blk.{layer}.{module}.weight.lora_{ab}")
}

/// (layer, module, is_a) of a tensor name; `arch` says whether `ffn_up` is gate and up
/// fused (Phi-3) or up alone.
fn parse_name(name: &str, arch: Option<Arch>) -> Option<(usize, Module, bool)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.split_once(".weight.lora_")?;
    let is_a = match kind {
        "a" => true,
        "b" => false,
        _ => return None,
    };
    let module = match arch.and_then(|a| Fused::from_gguf_name(module, a)) {
        Some(f) => Module::Fused(f),
        None => Module::One(Proj::from_gguf_name(module)?),
    };
    Some((layer.parse().ok()?, module, is_a))
}

pub(super) fn read(path: &Path) -> Result<AdapterFile, String> {
    let g = Gguf::open(path).map_err(|e| e.to_string())?;
    match g.get_str("general.type") {
        Some("adapter") => {}
        Some(other) => {
            return Err(format!(
                "general.type is '{}', not 'adapter': this is a model, not a LoRA adapter (pass it as --model)",
                printable(other)
            ))
        }
        None => {
            return Err(
                "no general.type = 'adapter' in the metadata: not a GGUF LoRA adapter".into(),
            )
        }
    }
    match g.get_str("adapter.type") {
        Some("lora") => {}
        other => {
            return Err(format!(
                "adapter.type is {}; verity runs LoRA adapters only",
                other.map_or("missing".into(), |s| format!("'{}'", printable(s)))
            ))
        }
    }
    if g.get("adapter.alora.invocation_tokens").is_some() {
        return Err("activated LoRA (adapter.alora.invocation_tokens) is not supported".into());
    }
    let alpha = match g.get("adapter.lora.alpha") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .or_else(|| v.as_i64().map(|i| i as f64))
            .ok_or("adapter.lora.alpha is not a number")? as f32,
    };
    if !alpha.is_finite() || alpha < 0.0 {
        return Err(format!(
            "adapter.lora.alpha = {alpha} is not a non-negative number"
        ));
    }
    let arch = g.architecture().map(str::to_string);
    let known_arch = arch.as_deref().and_then(Arch::from_gguf_name);
    // Per (layer, module): lora_a and lora_b as (values, rows, cols, type).
    type Half = Option<(Vec<f32>, usize, usize, TensorType)>;
    let mut halves: BTreeMap<(usize, Module), [Half; 2]> = BTreeMap::new();
    for info in &g.tensors {
        let Some((layer, proj, is_a)) = parse_name(&info.name, known_arch) else {
            return Err(format!(
                "tensor '{}' is not a LoRA update of q/k/v/o/gate/up/down or a fused qkv (token_embd and output LoRA are not supported)",
                printable(&info.name)
            ));
        };
        let ty = info.supported_type().map_err(|e| e.to_string())?;
        let (cols, rows) = match info.shape[..] {
            [c, r] => (c, r),
            [c, r, 1] | [c, r, 1, 1] => (c, r),
            _ => {
                return Err(format!(
                    "tensor '{}' has shape {:?}; LoRA matrices are 2-D",
                    printable(&info.name),
                    info.shape
                ))
            }
        };
        let bytes = g.tensor_data(info).map_err(|e| e.to_string())?;
        let values = widen(ty, bytes, rows, cols)
            .map_err(|e| format!("tensor '{}': {e}", printable(&info.name)))?;
        halves.entry((layer, proj)).or_default()[usize::from(!is_a)] =
            Some((values, rows, cols, ty));
    }
    let mut tensors = BTreeMap::new();
    let mut fused = BTreeMap::new();
    let mut rank = 0;
    for ((layer, module), [a, b]) in halves {
        let gguf_name = match module {
            Module::One(p) => p.gguf_name(),
            Module::Fused(f) => f.gguf_name(),
        };
        let name = format!("blk.{layer}.{gguf_name}");
        let (Some((a, r, in_dim, ty)), Some((b, out_dim, b_cols, _))) = (a, b) else {
            return Err(format!("{name}: lora_a and lora_b must both be present"));
        };
        if b_cols != r {
            return Err(format!(
                "{name}: lora_a has rank {r} but lora_b has {b_cols} columns (ggml ne[0]); they must match"
            ));
        }
        let scale = if alpha == 0.0 || r == 0 {
            1.0
        } else {
            alpha / r as f32
        };
        let t = LoraTensor {
            a,
            b,
            rank: r,
            in_dim,
            out_dim,
            scale,
            file_type: ty,
        };
        rank = rank.max(r);
        match module {
            Module::One(p) => tensors.insert((layer, p), t),
            Module::Fused(f) => fused.insert((layer, f), t),
        };
    }
    let base_model = g
        .get_str("general.base_model.0.name")
        .or_else(|| g.get_str("general.base_model.0.repo_url"))
        .map(str::to_string);
    Ok(AdapterFile {
        path: path.to_path_buf(),
        format: AdapterFormat::Gguf,
        // llama.cpp's converter permutes q/k rows of the architectures it rotates in
        // adjacent pairs (llama, smollm3, ...).
        qk_permuted: known_arch.is_some_and(|a| a.spec().gguf_rope == RopeStyle::Interleaved),
        arch,
        base_model,
        rank,
        // alpha 0 means "scale 1" to llama.cpp; say so in PEFT's terms.
        alpha: if alpha == 0.0 { rank as f32 } else { alpha },
        use_rslora: false,
        tensors,
        fused,
        config: None,
    })
}

/// Serialize `file` (q/k rows in Hugging Face order: see [`AdapterFile::into_hf_order`])
/// as a llama.cpp GGUF LoRA for a base of architecture `arch`. q/k rows are permuted into
/// llama.cpp's layout when `permute` gives (n_head, n_head_kv, head_dim). llama.cpp scales every pair by `alpha / r` with one alpha per file, so
/// rsLoRA and per-module ranks or alphas are folded in: alpha is chosen for the file's
/// default rank, and any pair whose scale differs has its lora_b multiplied to match.
pub fn write_gguf(
    file: &AdapterFile,
    arch: &str,
    permute: Option<(usize, usize, usize)>,
    metadata: &[(&str, Value)],
) -> Result<Vec<u8>, String> {
    if file.qk_permuted {
        return Err("q/k rows are in llama.cpp's order; convert with into_hf_order first".into());
    }
    let default_scale = if file.use_rslora {
        file.alpha / (file.rank as f32).sqrt()
    } else {
        file.alpha / file.rank as f32
    };
    let alpha = default_scale * file.rank as f32;
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::Str(arch.to_string()));
    w.set("general.type", Value::Str("adapter".into()));
    w.set("adapter.type", Value::Str("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(alpha));
    for (k, v) in metadata {
        w.set(k, v.clone());
    }
    if permute.is_some() && file.fused.keys().any(|&(_, f)| f == Fused::Qkv) {
        return Err(
            "a fused qkv pair for a base with llama.cpp's permuted q/k rows is not supported"
                .into(),
        );
    }
    let modules = file
        .tensors
        .iter()
        .map(|(&(l, p), t)| (l, Module::One(p), t))
        .chain(
            file.fused
                .iter()
                .map(|(&(l, f), t)| (l, Module::Fused(f), t)),
        );
    for (l, module, t) in modules {
        let llama_scale = alpha / t.rank as f32;
        let mut b = match (permute, module) {
            (Some((n_head, _, hd)), Module::One(Proj::Q)) => {
                super::permute_rows(&t.b, t.rank, n_head, hd, false)
            }
            (Some((_, n_kv, hd)), Module::One(Proj::K)) => {
                super::permute_rows(&t.b, t.rank, n_kv, hd, false)
            }
            _ => t.b.clone(),
        };
        let gguf_name = match module {
            Module::One(p) => p.gguf_name(),
            Module::Fused(f) => f.gguf_name(),
        };
        if t.scale != llama_scale {
            let fix = t.scale / llama_scale;
            b.iter_mut().for_each(|v| *v *= fix);
        }
        w.add_tensor(OutTensor {
            name: module_tensor_name(l, gguf_name, true),
            ty: TensorType::F32,
            shape: vec![t.in_dim, t.rank],
            data: t.a.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
        w.add_tensor(OutTensor {
            name: module_tensor_name(l, gguf_name, false),
            ty: TensorType::F32,
            shape: vec![t.rank, t.out_dim],
            data: b.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
    }
    let mut out = Vec::new();
    w.write(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("blk.3.attn_output.weight.lora_b", None),
            Some((3, Module::One(Proj::O), false))
        );
        assert_eq!(parse_name("token_embd.weight.lora_a", None), None);
        // Phi-3 keeps gate and up in ffn_up; Llama's ffn_up is up alone.
        assert_eq!(
            parse_name("blk.1.ffn_up.weight.lora_a", Some(Arch::Phi3)),
            Some((1, Module::Fused(Fused::GateUp), true))
        );
        assert_eq!(
            parse_name("blk.1.ffn_up.weight.lora_a", Some(Arch::Llama)),
            Some((1, Module::One(Proj::Up), true))
        );
        assert_eq!(
            gguf_tensor_name(7, Proj::Gate, true),
            "blk.7.ffn_gate.weight.lora_a"
        );
    }
}
