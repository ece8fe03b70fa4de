//! Hugging Face model directories: `config.json`, tokenizer files and single or sharded
//! `model.safetensors` (with `model.safetensors.index.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::safetensors_file::SafetensorsFile;
pub use crate::safetensors_file::{ByteTensorInfo, SafeTensorInfo};
use crate::{FormatError, Residency};

/// Largest JSON side file (config, tokenizer config, index) we read; real ones are kilobytes.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// A model directory in Hugging Face layout.
pub struct HfDir {
    pub dir: PathBuf,
    /// `config.json`.
    pub config: serde_json::Value,
    /// `tokenizer_config.json`, if present.
    pub tokenizer_config: Option<serde_json::Value>,
    /// `generation_config.json`, if present.
    pub generation_config: Option<serde_json::Value>,
    /// Shard file names, in index order.
    pub shards: Vec<PathBuf>,
    pub tensors: BTreeMap<String, SafeTensorInfo>,
    /// The `U8` tensors (packed quantized blocks).
    pub byte_tensors: BTreeMap<String, ByteTensorInfo>,
    maps: Vec<memmap2::Mmap>,
}

impl std::fmt::Debug for HfDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfDir")
            .field("dir", &self.dir)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Read a JSON file with a size bound.
pub fn read_json(path: &Path) -> Result<serde_json::Value, FormatError> {
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_JSON_BYTES {
        return Err(FormatError::invalid(
            path.display().to_string(),
            format!("{len} bytes is too large for a JSON side file"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FormatError::invalid(path.display().to_string(), e.to_string()))
}

fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>, FormatError> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl HfDir {
    /// Open a directory; its weights must be safetensors.
    pub fn open(dir: &Path) -> Result<Self, FormatError> {
        Self::open_with(dir, Residency::Mapped)
    }

    /// [`HfDir::open`], the shards' bytes held as `residency` asks.
    pub fn open_with(dir: &Path, residency: Residency) -> Result<Self, FormatError> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(FormatError::invalid(
                dir.display().to_string(),
                "no config.json: not a Hugging Face model directory",
            ));
        }
        let config = read_json(&config_path)?;
        let tokenizer_config = read_optional_json(&dir.join("tokenizer_config.json"))?;
        let generation_config = read_optional_json(&dir.join("generation_config.json"))?;

        let index_path = dir.join("model.safetensors.index.json");
        let shards: Vec<PathBuf> = if index_path.exists() {
            let index = read_json(&index_path)?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    FormatError::invalid(
                        index_path.display().to_string(),
                        "no \"weight_map\" object",
                    )
                })?;
            let mut names: Vec<String> = Vec::new();
            for v in map.values() {
                let f = v.as_str().ok_or_else(|| {
                    FormatError::invalid(
                        index_path.display().to_string(),
                        "weight_map values must be file names",
                    )
                })?;
                if f.contains('/') || f.contains('\\') || f.starts_with('.') {
                    return Err(FormatError::invalid(
                        index_path.display().to_string(),
                        format!("shard name '{f}' leaves the model directory"),
                    ));
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            names.sort();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            for pickle in [
                "pytorch_model.bin",
                "model.bin",
                "model.pt",
                "consolidated.00.pth",
            ] {
                let p = dir.join(pickle);
                if p.exists() {
                    return Err(FormatError::Pickle { path: p });
                }
            }
            return Err(FormatError::invalid(
                dir.display().to_string(),
                "no model.safetensors or model.safetensors.index.json",
            ));
        };

        let mut maps = Vec::with_capacity(shards.len());
        let mut tensors = BTreeMap::new();
        let mut byte_tensors = BTreeMap::new();
        for (shard, path) in shards.iter().enumerate() {
            let parts = SafetensorsFile::open_with(path, shard, residency)?.into_parts();
            let twice = |name: &str| {
                FormatError::invalid(
                    path.display().to_string(),
                    format!("tensor '{name}' appears in two shards"),
                )
            };
            for (name, info) in parts.tensors {
                if tensors.contains_key(&name) || byte_tensors.contains_key(&name) {
                    return Err(twice(&name));
                }
                tensors.insert(name, info);
            }
            for (name, info) in parts.byte_tensors {
                if tensors.contains_key(&name) || byte_tensors.contains_key(&name) {
                    return Err(twice(&name));
                }
                byte_tensors.insert(name, info);
            }
            maps.push(parts.map);
        }
        Ok(HfDir {
            dir: dir.to_path_buf(),
            config,
            tokenizer_config,
            generation_config,
            shards,
            tensors,
            byte_tensors,
            maps,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.get(name)
    }

    /// A `U8` tensor and its bytes.
    pub fn byte_tensor(&self, name: &str) -> Option<(&ByteTensorInfo, &[u8])> {
        let info = self.byte_tensors.get(name)?;
        Some((info, &self.maps[info.shard][info.start..info.end]))
    }

    /// Bytes of a tensor (bounds checked when the directory was opened).
    pub fn tensor_data(&self, info: &SafeTensorInfo) -> &[u8] {
        &self.maps[info.shard][info.start..info.end]
    }

    /// Path of `tokenizer.json`, if present.
    pub fn tokenizer_json(&self) -> Option<PathBuf> {
        let p = self.dir.join("tokenizer.json");
        p.exists().then_some(p)
    }
}
