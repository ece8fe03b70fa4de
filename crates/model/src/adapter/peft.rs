//! PEFT LoRA directories: `adapter_config.json` and `adapter_model.safetensors`, with
//! tensors named `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value as Json};
use verity_formats::safetensors_file::SafetensorsFile;

use super::{widen, AdapterFile, AdapterFormat, Fused, LoraTensor, Module, Proj};

/// The parts of `adapter_config.json` that decide the computation.
#[derive(Clone, Debug)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub use_rslora: bool,
    /// Module-name patterns (compiled as PEFT matches them, `(.*\.)?KEY$`) to ranks
    /// and alphas.
    pub rank_pattern: Vec<(regex::Regex, usize)>,
    pub alpha_pattern: Vec<(regex::Regex, f32)>,
    pub base_model: Option<String>,
}

/// Fields that change the computation in ways verity does not apply, with the value
/// PEFT writes when they are off.
fn refused(key: &str, v: &Json) -> Option<String> {
    let off = match v {
        Json::Null => true,
        Json::Bool(b) => !b,
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        Json::String(s) => key == "bias" && s == "none",
        Json::Number(_) => false,
    };
    if off {
        return None;
    }
    let why = match key {
        "use_dora" => "DoRA (use_dora) adds a magnitude vector verity does not apply",
        "modules_to_save" => "modules_to_save replaces whole base modules (fully trained copies)",
        "bias" => "LoRA biases (bias other than \"none\") are not applied",
        "lora_bias" => "lora_bias adds a bias to lora_B that verity does not apply",
        "fan_in_fan_out" => {
            "fan_in_fan_out (Conv1D-style transposed weights) is for GPT-2-style bases"
        }
        "layer_replication" => "layer_replication changes the base's layer stack",
        "trainable_token_indices" => "trainable_token_indices trains embedding rows",
        "target_parameters" => "target_parameters adapts parameters that are not linear layers",
        "alora_invocation_tokens" => {
            "activated LoRA (alora_invocation_tokens) applies only after invocation tokens"
        }
        "use_qalora" => "QA-LoRA (use_qalora) pools inputs before lora_A",
        _ => return None,
    };
    Some(format!(
        "{key}: {why}; verity refuses it rather than compute something else"
    ))
}

impl PeftConfig {
    pub fn from_json(c: &Json) -> Result<Self, String> {
        let obj = c
            .as_object()
            .ok_or("adapter_config.json is not a JSON object")?;
        if let Some(t) = obj.get("peft_type").and_then(Json::as_str) {
            if t != "LORA" {
                return Err(format!(
                    "peft_type is '{}'; verity runs LoRA adapters only",
                    verity_formats::printable(t)
                ));
            }
        }
        for (k, v) in obj {
            if let Some(msg) = refused(k, v) {
                return Err(msg);
            }
        }
        let r = obj
            .get("r")
            .and_then(Json::as_u64)
            .ok_or("adapter_config.json has no integer 'r'")? as usize;
        if r == 0 {
            return Err("r = 0: a LoRA rank must be at least 1".into());
        }
        let lora_alpha = match obj.get("lora_alpha") {
            None | Some(Json::Null) => 8.0,
            Some(v) => v.as_f64().ok_or("lora_alpha is not a number")? as f32,
        };
        let use_rslora = obj
            .get("use_rslora")
            .and_then(Json::as_bool)
            .unwrap_or(false);
        let pattern = |key: &str| -> Result<Vec<(String, f64)>, String> {
            match obj.get(key) {
                None | Some(Json::Null) => Ok(Vec::new()),
                Some(Json::Object(m)) => m
                    .iter()
                    .map(|(k, v)| {
                        v.as_f64()
                            .map(|x| (k.clone(), x))
                            .ok_or_else(|| format!("{key}['{k}'] is not a number"))
                    })
                    .collect(),
                Some(_) => Err(format!("{key} is not an object")),
            }
        };
        let compile = |key: &str| {
            regex::Regex::new(&format!("^(?:.*\\.)?(?:{key})$"))
                .map_err(|e| format!("pattern '{key}' is not a valid regex: {e}"))
        };
        let rank_pattern = pattern("rank_pattern")?
            .into_iter()
            .map(|(k, v)| {
                if v >= 1.0 && v.fract() == 0.0 {
                    Ok((compile(&k)?, v as usize))
                } else {
                    Err(format!(
                        "rank_pattern['{k}'] = {v} is not a positive integer"
                    ))
                }
            })
            .collect::<Result<_, String>>()?;
        let alpha_pattern = pattern("alpha_pattern")?
            .into_iter()
            .map(|(k, v)| Ok((compile(&k)?, v as f32)))
            .collect::<Result<_, String>>()?;
        match obj.get("target_modules") {
            None | Some(Json::Null) | Some(Json::String(_)) => {}
            Some(Json::Array(a)) if a.iter().all(Json::is_string) => {}
            Some(_) => return Err("target_modules is neither a list of names nor a string".into()),
        }
        Ok(PeftConfig {
            r,
            lora_alpha,
            use_rslora,
            rank_pattern,
            alpha_pattern,
            base_model: obj
                .get("base_model_name_or_path")
                .and_then(Json::as_str)
                .map(str::to_string),
        })
    }

    /// The rank and alpha PEFT gives the module `module` (its full name), from the
    /// first matching pattern key as PEFT matches them (`(.*\.)?KEY$`).
    pub fn rank_alpha(&self, module: &str) -> (usize, f32) {
        fn first<T: Copy>(patterns: &[(regex::Regex, T)], module: &str) -> Option<T> {
            patterns
                .iter()
                .find(|(re, _)| re.is_match(module))
                .map(|p| p.1)
        }
        (
            first(&self.rank_pattern, module).unwrap_or(self.r),
            first(&self.alpha_pattern, module).unwrap_or(self.lora_alpha),
        )
    }

    /// PEFT's scaling for a module of rank `r` and alpha `alpha`.
    pub fn scale(&self, r: usize, alpha: f32) -> f32 {
        if self.use_rslora {
            alpha / (r as f32).sqrt()
        } else {
            alpha / r as f32
        }
    }
}

/// Parse a PEFT tensor name into (layer, module, is_a).
fn parse_name(name: &str) -> Option<(usize, Module, bool)> {
    let rest = name.strip_prefix("base_model.model.").unwrap_or(name);
    let rest = rest.strip_prefix("model.").unwrap_or(rest);
    let rest = rest.strip_prefix("layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.split_once(".lora_")?;
    let proj = match Proj::ALL.into_iter().find(|p| p.hf_module() == module) {
        Some(p) => Module::One(p),
        None => Module::Fused(Fused::ALL.into_iter().find(|f| f.hf_module() == module)?),
    };
    let is_a = match kind {
        "A.weight" | "A.default.weight" => true,
        "B.weight" | "B.default.weight" => false,
        _ => return None,
    };
    Some((layer, proj, is_a))
}

pub(super) fn read(dir: &Path) -> Result<AdapterFile, String> {
    let config_path = dir.join("adapter_config.json");
    if !config_path.exists() {
        return Err(
            "no adapter_config.json: not a PEFT adapter directory (pass the directory PEFT's save_pretrained wrote, or a GGUF LoRA file)".into(),
        );
    }
    let config_json = verity_formats::hf::read_json(&config_path).map_err(|e| e.to_string())?;
    let config =
        PeftConfig::from_json(&config_json).map_err(|e| format!("adapter_config.json: {e}"))?;
    let weights = dir.join("adapter_model.safetensors");
    if !weights.exists() {
        let pickle = dir.join("adapter_model.bin");
        if pickle.exists() {
            return Err(verity_formats::FormatError::Pickle { path: pickle }.to_string());
        }
        return Err("no adapter_model.safetensors".into());
    }
    let st = SafetensorsFile::open(&weights, 0).map_err(|e| e.to_string())?;
    // Per (layer, projection): lora_A and lora_B as (values, rows, cols).
    type Half = Option<(Vec<f32>, usize, usize)>;
    let mut halves: BTreeMap<(usize, Module), [Half; 2]> = BTreeMap::new();
    let mut file_type = None;
    for (name, info) in &st.tensors {
        let Some((layer, proj, is_a)) = parse_name(name) else {
            return Err(format!(
                "tensor '{}' is not a LoRA update of q/k/v/o/gate/up/down or qkv/gate_up (embeddings, lm_head and DoRA vectors are not supported)",
                verity_formats::printable(name)
            ));
        };
        let [rows, cols] = info.shape[..] else {
            return Err(format!(
                "tensor '{}' has shape {:?}; LoRA matrices are 2-D",
                verity_formats::printable(name),
                info.shape
            ));
        };
        let values = widen(info.ty, st.tensor_data(info), rows, cols)
            .map_err(|e| format!("tensor '{}': {e}", verity_formats::printable(name)))?;
        file_type = Some(info.ty);
        let slot = &mut halves.entry((layer, proj)).or_default()[usize::from(!is_a)];
        *slot = Some((values, rows, cols));
    }
    let mut tensors = BTreeMap::new();
    let mut fused = BTreeMap::new();
    for ((layer, module), [a, b]) in halves {
        let hf_module = match module {
            Module::One(p) => p.hf_module(),
            Module::Fused(f) => f.hf_module(),
        };
        let name = format!("model.layers.{layer}.{hf_module}");
        let (Some((a, rank, in_dim)), Some((b, out_dim, b_cols))) = (a, b) else {
            return Err(format!("{name}: lora_A and lora_B must both be present"));
        };
        if b_cols != rank {
            return Err(format!(
                "{name}: lora_A has {rank} rows but lora_B has {b_cols} columns; they must match"
            ));
        }
        let (r, alpha) = config.rank_alpha(&name);
        if r != rank {
            return Err(format!(
                "{name}: the tensors have rank {rank} but adapter_config.json gives it rank {r}"
            ));
        }
        let t = LoraTensor {
            a,
            b,
            rank,
            in_dim,
            out_dim,
            scale: config.scale(rank, alpha),
            file_type: file_type.unwrap_or(verity_formats::TensorType::F32),
        };
        match module {
            Module::One(p) => tensors.insert((layer, p), t),
            Module::Fused(f) => fused.insert((layer, f), t),
        };
    }
    Ok(AdapterFile {
        path: dir.to_path_buf(),
        format: AdapterFormat::Peft,
        qk_permuted: false,
        arch: None,
        base_model: config.base_model.clone(),
        rank: config.r,
        alpha: config.lora_alpha,
        use_rslora: config.use_rslora,
        tensors,
        fused,
        config: Some(config_json),
    })
}

/// Write `file` (q/k rows in Hugging Face order: see [`AdapterFile::into_hf_order`]) as
/// a PEFT directory into `dir`, which must exist: tensors in f32, each module's exact
/// scale kept through `rank_pattern` / `alpha_pattern` where it differs from the
/// default. `extra` is merged into the config.
pub fn write_peft(
    file: &AdapterFile,
    dir: &Path,
    extra: &serde_json::Map<String, Json>,
) -> Result<(), String> {
    if file.qk_permuted {
        return Err("q/k rows are in llama.cpp's order; convert with into_hf_order first".into());
    }
    let rank = file.rank;
    let alpha = file.alpha;
    let mut rank_pattern = serde_json::Map::new();
    let mut alpha_pattern = serde_json::Map::new();
    let mut targets: Vec<&str> = Vec::new();
    let mut names = Vec::new();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let modules = file
        .tensors
        .iter()
        .map(|(&(l, p), t)| (l, p.hf_module(), t))
        .chain(file.fused.iter().map(|(&(l, f), t)| (l, f.hf_module(), t)));
    for (l, hf_module, t) in modules {
        let module = format!("model.layers.{l}.{hf_module}");
        let short = hf_module.rsplit('.').next().unwrap_or(hf_module);
        if !targets.contains(&short) {
            targets.push(short);
        }
        if t.rank != rank {
            rank_pattern.insert(module.clone(), json!(t.rank));
        }
        let peft_scale = if file.use_rslora {
            alpha / (t.rank as f32).sqrt()
        } else {
            alpha / t.rank as f32
        };
        if t.scale != peft_scale {
            // The alpha that gives exactly this module's scale under PEFT's formula.
            let a = if file.use_rslora {
                t.scale * (t.rank as f32).sqrt()
            } else {
                t.scale * t.rank as f32
            };
            alpha_pattern.insert(module.clone(), json!(a));
        }
        let prefix = format!("base_model.model.{module}");
        names.push(prefix.clone());
        data.push((
            format!("{prefix}.lora_A.weight"),
            vec![t.rank, t.in_dim],
            f32_bytes(&t.a),
        ));
        data.push((
            format!("{prefix}.lora_B.weight"),
            vec![t.out_dim, t.rank],
            f32_bytes(&t.b),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors"))
        .map_err(|e| e.to_string())?;
    let mut config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": file.base_model,
        "r": rank,
        "lora_alpha": alpha,
        "use_rslora": file.use_rslora,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_dora": false,
        "modules_to_save": null,
        "init_lora_weights": true,
        "inference_mode": true,
    });
    if let Some(obj) = config.as_object_mut() {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("adapter_config.json"), text).map_err(|e| e.to_string())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_name("base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight"),
            Some((12, Module::One(Proj::Q), true))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"),
            Some((0, Module::One(Proj::Down), false))
        );
        assert_eq!(
            parse_name("base_model.model.model.layers.3.self_attn.qkv_proj.lora_B.weight"),
            Some((3, Module::Fused(Fused::Qkv), false))
        );
        assert_eq!(parse_name("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            None
        );
    }

    #[test]
    fn config_patterns_and_refusals() {
        let c = json!({"r": 8, "lora_alpha": 16, "use_rslora": true,
            "rank_pattern": {"q_proj": 4}, "alpha_pattern": {"layers.1.mlp.up_proj": 2},
            "use_dora": false, "modules_to_save": null, "bias": "none", "layer_replication": null});
        let p = PeftConfig::from_json(&c).unwrap();
        assert_eq!(p.rank_alpha("model.layers.3.self_attn.q_proj"), (4, 16.0));
        assert_eq!(p.rank_alpha("model.layers.3.self_attn.k_proj"), (8, 16.0));
        assert_eq!(p.rank_alpha("model.layers.1.mlp.up_proj"), (8, 2.0));
        assert_eq!(p.rank_alpha("model.layers.11.mlp.up_proj"), (8, 16.0));
        assert_eq!(p.scale(4, 16.0), 8.0);
        for bad in [
            json!({"r": 8, "use_dora": true}),
            json!({"r": 8, "modules_to_save": ["lm_head"]}),
            json!({"r": 8, "bias": "all"}),
            json!({"r": 8, "fan_in_fan_out": true}),
            json!({"r": 0}),
            json!({"r": 8, "peft_type": "IA3"}),
        ] {
            assert!(PeftConfig::from_json(&bad).is_err(), "{bad}");
        }
    }
}
