//! One safetensors file, memory-mapped, its header checked against the bytes present.
//! Model directories hold one or more of these (shards); LoRA adapters hold one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::{FormatError, TensorType};

/// One tensor of a safetensors file.
#[derive(Clone, Debug)]
pub struct SafeTensorInfo {
    pub name: String,
    /// Shape in safetensors (row-major, outermost first) order.
    pub shape: Vec<usize>,
    pub ty: TensorType,
    /// Which shard holds it (0 for a lone file).
    pub shard: usize,
    /// Absolute byte range in the file.
    pub start: usize,
    pub end: usize,
}

/// A parsed safetensors file: its tensors and the mapping that holds their bytes.
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, SafeTensorInfo>,
    /// `__metadata__` of the header (string to string), if any.
    pub metadata: BTreeMap<String, String>,
    map: memmap2::Mmap,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Map and parse `path`; `shard` is recorded in every tensor's info.
    pub fn open(path: &Path, shard: usize) -> Result<Self, FormatError> {
        crate::refuse_pickle(path)?;
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map; see Gguf::open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
                FormatError::invalid(
                    path.display().to_string(),
                    format!("bad safetensors header: {e}"),
                )
            })?;
        let base = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let info: HashMap<String, &safetensors::tensor::TensorInfo> = meta.tensors();
        for (name, ti) in info {
            let ty = match ti.dtype {
                safetensors::Dtype::F32 => TensorType::F32,
                safetensors::Dtype::F16 => TensorType::F16,
                safetensors::Dtype::BF16 => TensorType::BF16,
                other => {
                    return Err(FormatError::UnsupportedTensorType {
                        name,
                        ty: format!("{other:?} (safetensors)"),
                    })
                }
            };
            let (s, e) = ti.data_offsets;
            let (Some(start), Some(end)) = (base.checked_add(s), base.checked_add(e)) else {
                return Err(FormatError::TensorOutOfBounds {
                    name,
                    start: s as u64,
                    end: e as u64,
                    len: map.len() as u64,
                });
            };
            if end > map.len() || start > end {
                return Err(FormatError::TensorOutOfBounds {
                    name,
                    start: start as u64,
                    end: end as u64,
                    len: map.len() as u64,
                });
            }
            tensors.insert(
                name.clone(),
                SafeTensorInfo {
                    name,
                    shape: ti.shape.clone(),
                    ty,
                    shard,
                    start,
                    end,
                },
            );
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            tensors,
            metadata,
            map,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&SafeTensorInfo> {
        self.tensors.get(name)
    }

    /// Bytes of a tensor (bounds checked when the file was opened).
    pub fn tensor_data(&self, info: &SafeTensorInfo) -> &[u8] {
        &self.map[info.start..info.end]
    }

    /// Give up the parsed parts: the tensor table and the mapping.
    pub(crate) fn into_parts(self) -> (BTreeMap<String, SafeTensorInfo>, memmap2::Mmap) {
        (self.tensors, self.map)
    }
}
