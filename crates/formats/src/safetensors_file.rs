//! One safetensors file, memory-mapped, its header checked against the bytes present.
//! Model directories hold one or more of these (shards); LoRA adapters hold one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::{FormatError, Residency, TensorType};

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

/// One tensor of raw bytes (safetensors `U8`): packed data that only a reader of its
/// packing can interpret, such as the MXFP4 blocks and scales of transformers' `mxfp4`
/// quantization. Kept apart from the float tensors so that nothing reads them as numbers.
#[derive(Clone, Debug)]
pub struct ByteTensorInfo {
    pub name: String,
    /// Shape in safetensors order.
    pub shape: Vec<usize>,
    pub shard: usize,
    pub start: usize,
    pub end: usize,
}

/// A parsed safetensors file: its tensors and the mapping that holds their bytes.
pub struct SafetensorsFile {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, SafeTensorInfo>,
    /// The `U8` tensors.
    pub byte_tensors: BTreeMap<String, ByteTensorInfo>,
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
        Self::open_with(path, shard, Residency::Mapped)
    }

    /// [`SafetensorsFile::open`], the bytes held as `residency` asks.
    pub fn open_with(path: &Path, shard: usize, residency: Residency) -> Result<Self, FormatError> {
        crate::refuse_pickle(path)?;
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let map = crate::residency::hold(&file, residency).map_err(io)?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
                FormatError::invalid(
                    path.display().to_string(),
                    format!("bad safetensors header: {e}"),
                )
            })?;
        let base = 8 + header_len;
        let mut tensors = BTreeMap::new();
        let mut byte_tensors = BTreeMap::new();
        let info: HashMap<String, &safetensors::tensor::TensorInfo> = meta.tensors();
        for (name, ti) in info {
            let ty = match ti.dtype {
                safetensors::Dtype::F32 => Some(TensorType::F32),
                safetensors::Dtype::F16 => Some(TensorType::F16),
                safetensors::Dtype::BF16 => Some(TensorType::BF16),
                safetensors::Dtype::U8 => None,
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
            let shape = ti.shape.clone();
            match ty {
                Some(ty) => tensors.insert(
                    name.clone(),
                    SafeTensorInfo {
                        name,
                        shape,
                        ty,
                        shard,
                        start,
                        end,
                    },
                ),
                None => byte_tensors
                    .insert(
                        name.clone(),
                        ByteTensorInfo {
                            name,
                            shape,
                            shard,
                            start,
                            end,
                        },
                    )
                    .map(|_| unreachable!("names are unique in a header")),
            };
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            tensors,
            byte_tensors,
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

    /// Give up the parsed parts: the tensor tables and the mapping.
    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            tensors: self.tensors,
            byte_tensors: self.byte_tensors,
            map: self.map,
        }
    }
}

/// What [`SafetensorsFile::into_parts`] gives up.
pub(crate) struct Parts {
    pub tensors: BTreeMap<String, SafeTensorInfo>,
    pub byte_tensors: BTreeMap<String, ByteTensorInfo>,
    pub map: memmap2::Mmap,
}
