//! GGUF (versions 2 and 3), memory-mapped.
//!
//! Layout: magic "GGUF", version u32, tensor count u64, metadata count u64, metadata
//! key/value pairs, tensor infos, padding to `general.alignment`, tensor data.
//! All integers little-endian.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{FormatError, Residency, TensorType};

/// Deepest nesting of metadata arrays we accept (real files use 1).
const MAX_ARRAY_DEPTH: usize = 3;
/// ggml tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Integer value of any integer type (and of bools), if it fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Float value of any numeric type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// GGUF's name of this value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// Where one tensor lies and what it holds.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the length of a row (contiguous).
    pub shape: Vec<usize>,
    /// ggml's type id as stored.
    pub ggml_type: u32,
    /// The type, when verity supports it.
    pub ty: Option<TensorType>,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size in bytes, when the type is known.
    pub size: Option<usize>,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// The type, or an error naming the tensor and its unsupported type.
    pub fn supported_type(&self) -> Result<TensorType, FormatError> {
        self.ty.ok_or_else(|| FormatError::UnsupportedTensorType {
            name: crate::printable(&self.name),
            ty: TensorType::from_ggml_id(self.ggml_type)
                .err()
                .unwrap_or_default(),
        })
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the (memory-mapped) file.
pub struct Gguf {
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    meta_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
    bytes: Bytes,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Memory-map and parse a file.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        Self::open_with(path, Residency::Mapped)
    }

    /// Parse a file, its bytes held as `residency` asks.
    pub fn open_with(path: &Path, residency: Residency) -> Result<Self, FormatError> {
        let io = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len == 0 {
            Bytes::Owned(Vec::new())
        } else {
            Bytes::Mapped(crate::residency::hold(&file, residency).map_err(io)?)
        };
        let mut g = Self::parse(bytes)?;
        g.path = Some(path.to_path_buf());
        Ok(g)
    }

    /// Parse a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, FormatError> {
        Self::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<Self, FormatError> {
        let data = bytes.as_slice();
        let mut r = Reader { data, pos: 0 };
        let magic = r.take(4, "magic")?;
        if magic != b"GGUF" {
            let mut found = [0u8; 4];
            found.copy_from_slice(magic);
            return Err(FormatError::BadMagic { found });
        }
        let version = r.u32("version")?;
        if version == 1 {
            return Err(FormatError::UnsupportedVersion(1));
        }
        if version != 2 && version != 3 {
            if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
                return Err(FormatError::invalid(
                    "GGUF byte order",
                    "big-endian GGUF files are not supported",
                ));
            }
            return Err(FormatError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each metadata entry needs at least 8 (key length) + 4 (type) bytes; each tensor
        // info at least 8 + 4 + 4 + 8. Anything more than the file can hold is a lie.
        let remaining = r.remaining() as u64;
        if n_kv > remaining / 12 {
            return Err(FormatError::invalid(
                "metadata count",
                format!("{n_kv} entries cannot fit in a {}-byte file", data.len()),
            ));
        }
        if n_tensors > remaining / 24 {
            return Err(FormatError::invalid(
                "tensor count",
                format!(
                    "{n_tensors} tensors cannot fit in a {}-byte file",
                    data.len()
                ),
            ));
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut meta_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv as usize {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata value type")?;
            let value = r.value(ty, &key, 0)?;
            if meta_index.insert(key.clone(), i).is_some() {
                return Err(FormatError::invalid(
                    "metadata",
                    format!("duplicate key '{key}'"),
                ));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(FormatError::invalid(
                        "general.alignment",
                        format!("{v:?} is not a power of two"),
                    ))
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors as usize {
            let info = r.tensor_info()?;
            if tensor_index.insert(info.name.clone(), i).is_some() {
                return Err(FormatError::invalid(
                    "tensor table",
                    format!("duplicate tensor name '{}'", info.name),
                ));
            }
            tensors.push(info);
        }

        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let data_len = (data.len() as u64).saturating_sub(data_offset);
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(FormatError::invalid(
                    format!("tensor '{}'", t.name),
                    format!(
                        "offset {} is not a multiple of the alignment {alignment}",
                        t.offset
                    ),
                ));
            }
            let size = t.size.unwrap_or(0) as u64;
            let end = t.offset.saturating_add(size);
            if end > data_len {
                return Err(FormatError::TensorOutOfBounds {
                    name: crate::printable(&t.name),
                    start: t.offset,
                    end,
                    len: data_len,
                });
            }
        }

        Ok(Gguf {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            meta_index,
            tensor_index,
            bytes,
            path: None,
        })
    }

    /// The file this was read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The whole file.
    pub fn file_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key).and_then(Value::as_array)
    }

    /// The architecture name (`general.architecture`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], FormatError> {
        let size = info
            .size
            .ok_or_else(|| FormatError::UnsupportedTensorType {
                name: crate::printable(&info.name),
                ty: TensorType::from_ggml_id(info.ggml_type)
                    .err()
                    .unwrap_or_default(),
            })?;
        let start = self.data_offset + info.offset;
        let end = start + size as u64;
        let file = self.bytes.as_slice();
        if end > file.len() as u64 {
            return Err(FormatError::TensorOutOfBounds {
                name: crate::printable(&info.name),
                start: info.offset,
                end: info.offset + size as u64,
                len: (file.len() as u64).saturating_sub(self.data_offset),
            });
        }
        Ok(&file[start as usize..end as usize])
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(FormatError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n as u64,
                len: self.data.len() as u64,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, FormatError> {
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(FormatError::Truncated {
                what: format!("{what} ({len}-byte string)"),
                offset: self.pos as u64,
                needed: len,
                len: self.data.len() as u64,
            });
        }
        let bytes = self.take(len as usize, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value, FormatError> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    return Err(FormatError::invalid(
                        format!("metadata '{key}'"),
                        format!("bool byte {b} is neither 0 nor 1"),
                    ))
                }
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(FormatError::invalid(
                        format!("metadata '{key}'"),
                        "arrays nested too deeply",
                    ));
                }
                let elem_ty = self.u32(key)?;
                let count = self.u64(key)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    other => {
                        return Err(FormatError::invalid(
                            format!("metadata '{key}'"),
                            format!("unknown array element type {other}"),
                        ))
                    }
                };
                if count > (self.remaining() / min_size) as u64 {
                    return Err(FormatError::invalid(
                        format!("metadata '{key}'"),
                        format!(
                            "array of {count} elements cannot fit in the {} bytes left",
                            self.remaining()
                        ),
                    ));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(FormatError::invalid(
                    format!("metadata '{key}'"),
                    format!("unknown value type {other}"),
                ))
            }
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo, FormatError> {
        let name = self.string("tensor name")?;
        let n_dims = self.u32("tensor dimension count")? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(FormatError::invalid(
                format!("tensor '{name}'"),
                format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
            ));
        }
        let mut shape = Vec::with_capacity(n_dims);
        let mut n_elements: u64 = 1;
        for _ in 0..n_dims {
            let d = self.u64("tensor dimension")?;
            n_elements = n_elements
                .checked_mul(d)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    FormatError::invalid(format!("tensor '{name}'"), "element count overflows")
                })?;
            shape.push(d);
        }
        if n_elements == 0 {
            return Err(FormatError::invalid(
                format!("tensor '{name}'"),
                format!("empty shape {shape:?}"),
            ));
        }
        let ggml_type = self.u32("tensor type")?;
        let offset = self.u64("tensor offset")?;
        let ty = TensorType::from_ggml_id(ggml_type).ok();
        let size = match ty {
            Some(t) => {
                let row = t.row_bytes(shape[0] as usize).ok_or_else(|| {
                    FormatError::invalid(
                        format!("tensor '{name}'"),
                        format!(
                            "row length {} is not a multiple of the {t} block size {}",
                            shape[0],
                            t.block_size()
                        ),
                    )
                })?;
                let rows = n_elements / shape[0];
                Some(
                    (row as u64)
                        .checked_mul(rows)
                        .filter(|&s| s <= usize::MAX as u64)
                        .ok_or_else(|| {
                            FormatError::invalid(format!("tensor '{name}'"), "size overflows")
                        })? as usize,
                )
            }
            None => None,
        };
        Ok(TensorInfo {
            name,
            shape: shape.into_iter().map(|d| d as usize).collect(),
            ggml_type,
            ty,
            offset,
            size,
        })
    }
}
