//! Which files of a repository make up the model a reference asks for.
//!
//! The same rules apply to a Hub file list and to a snapshot already on disk, so a
//! reference finds offline exactly what `pull` fetched.

use crate::reference::Selector;

/// The quant picked when none is named (llama.cpp and Ollama default to it too).
pub const DEFAULT_QUANT: &str = "Q4_K_M";

/// When the default is missing, the closest the repository has, best first: 4-bit K and
/// legacy quants, then up in size before down, then float.
const PREFERENCE: &[&str] = &[
    "Q4_K_M", "Q4_K_S", "Q4_K_L", "Q4_K", "Q4_0", "Q4_1", "IQ4_XS", "IQ4_NL", "Q5_K_M", "Q5_K_S",
    "Q5_K", "Q5_0", "Q5_1", "Q3_K_L", "Q3_K_M", "Q6_K", "Q3_K_S", "Q8_0", "Q3_K", "IQ3_M", "IQ3_S",
    "IQ3_XS", "IQ3_XXS", "Q2_K_L", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS",
    "IQ1_M", "IQ1_S", "MXFP4", "BF16", "F16", "FP16", "F32", "FP32",
];

/// Files a safetensors model needs besides its weights (those that exist are taken).
const HF_SIDE_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// What a selection resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// GGUF file(s): one file, or every part of a split model, first part first.
    Gguf {
        files: Vec<String>,
        quant: Option<String>,
    },
    /// A safetensors model: side files and either `model.safetensors` or the index
    /// (whose shards are added once the index has been read).
    Safetensors {
        files: Vec<String>,
        index: Option<String>,
    },
}

impl Selection {
    pub fn files(&self) -> &[String] {
        match self {
            Selection::Gguf { files, .. } | Selection::Safetensors { files, .. } => files,
        }
    }
}

/// The quant a GGUF file name carries (`model-Q4_K_M.gguf` → `Q4_K_M`), if any.
pub fn quant_of(file: &str) -> Option<String> {
    let upper = file.to_ascii_uppercase();
    // Longest names first, so Q4_K_M wins over Q4_K.
    let mut names: Vec<&str> = PREFERENCE.to_vec();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    names
        .into_iter()
        .find(|q| contains_token(&upper, q))
        .map(str::to_string)
}

/// `hay` (uppercase) contains `token` (uppercase) not glued to other letters or digits.
fn contains_token(hay: &str, token: &str) -> bool {
    let b = hay.as_bytes();
    hay.match_indices(token).any(|(i, _)| {
        let before_ok = i == 0 || !b[i - 1].is_ascii_alphanumeric();
        let end = i + token.len();
        let after_ok = end == b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_');
        before_ok && after_ok
    })
}

/// `name-00002-of-00005.gguf` → (`name`, 2, 5).
pub fn split_part(file: &str) -> Option<(&str, u32, u32)> {
    let stem = file.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    if no.len() != 5 || count.len() != 5 {
        return None;
    }
    let (no, count) = (no.parse().ok()?, count.parse().ok()?);
    (no >= 1 && no <= count).then_some((prefix, no, count))
}

/// GGUF models in a file list: groups of files (split parts together, in order), skipping
/// multimodal projectors and incomplete splits.
pub fn gguf_groups(files: &[String]) -> Vec<Vec<String>> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut ggufs: Vec<&String> = files
        .iter()
        .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
        .filter(|f| {
            !f.rsplit('/')
                .next()
                .unwrap_or(f)
                .to_ascii_lowercase()
                .starts_with("mmproj")
        })
        .collect();
    ggufs.sort();
    for f in ggufs {
        match split_part(f) {
            None => groups.push(vec![f.clone()]),
            Some((prefix, 1, count)) => {
                let parts: Vec<String> = (1..=count)
                    .map(|i| format!("{prefix}-{i:05}-of-{count:05}.gguf"))
                    .collect();
                if parts.iter().all(|p| files.contains(p)) {
                    groups.push(parts);
                }
            }
            Some(_) => {}
        }
    }
    groups
}

/// Pick the files `selector` names from a repository's file list.
pub fn select(repo: &str, files: &[String], selector: &Selector) -> Result<Selection, String> {
    if let Selector::File(f) = selector {
        if !files.contains(f) {
            return Err(format!("{repo} has no file '{f}'"));
        }
        let group = gguf_groups(files)
            .into_iter()
            .find(|g| g.contains(f))
            .unwrap_or_else(|| vec![f.clone()]);
        let quant = quant_of(f);
        return Ok(Selection::Gguf {
            files: group,
            quant,
        });
    }
    let groups = gguf_groups(files);
    if groups.is_empty() {
        if let Selector::Quant(q) = selector {
            return Err(format!(
                "{repo} has no GGUF files, so no quant '{q}'; it is a {} repository: use {repo} without ':{q}'",
                if files.iter().any(|f| f.ends_with(".safetensors")) { "safetensors" } else { "non-GGUF" }
            ));
        }
        return select_safetensors(repo, files);
    }
    let quant_of_group = |g: &Vec<String>| quant_of(&g[0]);
    let wanted = match selector {
        Selector::Quant(q) => q.to_ascii_uppercase(),
        _ => DEFAULT_QUANT.to_string(),
    };
    // Shortest matching name: `model-Q4_K_M.gguf` before `model-Q4_K_M-extra.gguf`.
    let mut matching: Vec<&Vec<String>> = groups
        .iter()
        .filter(|g| contains_token(&g[0].to_ascii_uppercase(), &wanted))
        .collect();
    matching.sort_by_key(|g| (g[0].len(), g[0].clone()));
    if let Some(g) = matching.first() {
        return Ok(Selection::Gguf {
            files: (*g).clone(),
            quant: Some(quant_of_group(g).unwrap_or(wanted)),
        });
    }
    let available = available_quants(&groups);
    if let Selector::Quant(q) = selector {
        return Err(format!(
            "{repo} has no '{q}' file; it has: {}. Pick one as {repo}:QUANT",
            available.join(", ")
        ));
    }
    // No default quant: the closest by preference, else the only (or first) file.
    for q in PREFERENCE {
        if let Some(g) = groups
            .iter()
            .find(|g| quant_of_group(g).as_deref() == Some(q))
        {
            return Ok(Selection::Gguf {
                files: g.clone(),
                quant: Some(q.to_string()),
            });
        }
    }
    Ok(Selection::Gguf {
        files: groups[0].clone(),
        quant: None,
    })
}

/// The quants (or file names, where a name has none) of the GGUF models in a list.
pub fn available_quants(groups: &[Vec<String>]) -> Vec<String> {
    let mut v: Vec<String> = groups
        .iter()
        .map(|g| quant_of(&g[0]).unwrap_or_else(|| g[0].clone()))
        .collect();
    v.dedup();
    v
}

fn select_safetensors(repo: &str, files: &[String]) -> Result<Selection, String> {
    if !files.iter().any(|f| f == "config.json") {
        return Err(format!(
            "{repo} has neither GGUF files nor a config.json with safetensors weights; verity runs GGUF and Hugging Face safetensors models"
        ));
    }
    let mut chosen: Vec<String> = HF_SIDE_FILES
        .iter()
        .filter(|f| files.iter().any(|x| x == *f))
        .map(|f| f.to_string())
        .collect();
    if files.iter().any(|f| f == SAFETENSORS_INDEX) {
        chosen.push(SAFETENSORS_INDEX.to_string());
        return Ok(Selection::Safetensors {
            files: chosen,
            index: Some(SAFETENSORS_INDEX.to_string()),
        });
    }
    if files.iter().any(|f| f == "model.safetensors") {
        chosen.push("model.safetensors".to_string());
        return Ok(Selection::Safetensors {
            files: chosen,
            index: None,
        });
    }
    Err(format!(
        "{repo} has a config.json but no model.safetensors or {SAFETENSORS_INDEX}; verity does not load PyTorch pickles"
    ))
}

/// The shard files a `model.safetensors.index.json` names, checked to be safe paths that
/// the repository has.
pub fn index_shards(index_json: &[u8], files: &[String]) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(index_json).map_err(|e| format!("{SAFETENSORS_INDEX}: {e}"))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| format!("{SAFETENSORS_INDEX} has no weight_map"))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    shards.sort();
    shards.dedup();
    for s in &shards {
        crate::reference::check_repo_path(s)?;
        if !files.contains(s) {
            return Err(format!(
                "{SAFETENSORS_INDEX} names a shard '{s}' the repository does not have"
            ));
        }
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quant_picking() {
        let files = list(&[
            "README.md",
            "m-Q4_K_S.gguf",
            "m-Q4_K_M.gguf",
            "m.Q8_0.gguf",
            "mmproj-m-f16.gguf",
            "big/m-BF16-00001-of-00002.gguf",
            "big/m-BF16-00002-of-00002.gguf",
        ]);
        let pick = |s: Selector| select("o/r", &files, &s).map(|x| x.files().to_vec());
        assert_eq!(pick(Selector::Default).unwrap(), ["m-Q4_K_M.gguf"]);
        assert_eq!(
            pick(Selector::Quant("q8_0".into())).unwrap(),
            ["m.Q8_0.gguf"]
        );
        assert_eq!(
            pick(Selector::Quant("bf16".into())).unwrap(),
            [
                "big/m-BF16-00001-of-00002.gguf",
                "big/m-BF16-00002-of-00002.gguf"
            ]
        );
        let e = pick(Selector::Quant("Q2_K".into())).unwrap_err();
        assert!(
            e.contains("Q4_K_M") && e.contains("Q8_0") && e.contains("BF16"),
            "{e}"
        );
        assert!(!e.contains("mmproj"), "{e}");
        let no_default = list(&["x.Q8_0.gguf", "x.Q4_1.gguf", "x.f16.gguf"]);
        assert_eq!(
            select("o/r", &no_default, &Selector::Default)
                .unwrap()
                .files(),
            ["x.Q4_1.gguf"]
        );
    }

    #[test]
    fn incomplete_split_is_not_offered() {
        let files = list(&["m-00001-of-00003.gguf", "m-00002-of-00003.gguf"]);
        assert!(gguf_groups(&files).is_empty());
        assert_eq!(split_part("a/m-00002-of-00003.gguf"), Some(("a/m", 2, 3)));
        assert_eq!(split_part("m-2-of-3.gguf"), None);
    }

    #[test]
    fn safetensors_selection() {
        let files = list(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            SAFETENSORS_INDEX,
            "tokenizer.json",
            "pytorch_model.bin",
            "README.md",
        ]);
        let s = select("o/r", &files, &Selector::Default).unwrap();
        assert_eq!(
            s.files(),
            ["config.json", "tokenizer.json", SAFETENSORS_INDEX]
        );
        let index = br#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#;
        assert_eq!(index_shards(index, &files).unwrap().len(), 2);
        assert!(index_shards(br#"{"weight_map": {"a": "../x.safetensors"}}"#, &files).is_err());
        assert!(select("o/r", &files, &Selector::Quant("Q4_0".into())).is_err());
    }
}
