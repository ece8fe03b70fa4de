//! One view of the tensors of a model file, whatever its container: GGUF or a Hugging Face
//! directory of safetensors. Used by inspect and diff, which look at every tensor, not only
//! the ones an architecture runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use verity_formats::gguf::Gguf;
use verity_formats::hf::{ByteTensorInfo, HfDir};
use verity_formats::TensorType;

/// Where a model's tensors live.
pub enum Container {
    Gguf(Arc<Gguf>),
    Hf(Arc<HfDir>),
}

/// One tensor as stored.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    /// Dimensions in ggml order: `shape[0]` is the row length (contiguous).
    pub shape: Vec<usize>,
    /// The type, when verity knows it.
    pub ty: Option<TensorType>,
    /// Type name as stored (also for unknown ggml types).
    pub type_name: String,
    /// Byte offset in its file (absolute), and size in bytes (when the type is known).
    pub offset: u64,
    pub bytes: Option<usize>,
    /// Which file of a sharded Hugging Face directory or split GGUF model.
    pub file: Option<String>,
}

impl Entry {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// (rows, cols) of the tensor seen as a matrix: cols = row length.
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.shape.first().copied().unwrap_or(1).max(1);
        (self.n_elements() as usize / cols, cols)
    }
}

/// A model file (or directory) opened for auditing.
pub struct ModelFile {
    pub path: PathBuf,
    pub container: Container,
    pub tensors: Vec<Entry>,
    /// Every part of a GGUF model (one unless it is split); empty for a directory.
    gguf_parts: Vec<Arc<Gguf>>,
}

/// The `U8` tensors of a directory. transformers' MXFP4 experts (`X_blocks`
/// `[.., n / 32, 16]` with `X_scales` `[.., n / 32]`) count as one `MXFP4` entry of
/// `n`-long rows whose bytes are both tensors' ([`ModelFile::data`] gives them repacked as
/// GGUF's); any other is listed as stored, of unknown type.
fn byte_entries(hf: &HfDir, file: &dyn Fn(usize) -> Option<String>) -> Vec<Entry> {
    // Blocks `[.., n / 32, 16]` and their scales `[.., n / 32]`.
    let paired = |b: &ByteTensorInfo, s: &ByteTensorInfo| {
        b.shape.last() == Some(&16) && b.shape[..b.shape.len() - 1] == s.shape[..]
    };
    let sibling = |base: &str, suffix: &str| hf.byte_tensors.get(&format!("{base}{suffix}"));
    let mut out = Vec::new();
    for t in hf.byte_tensors.values() {
        let is_scales = t
            .name
            .strip_suffix("_scales")
            .is_some_and(|base| sibling(base, "_blocks").is_some_and(|b| paired(b, t)));
        if is_scales {
            continue;
        }
        let blocks_of = t
            .name
            .strip_suffix("_blocks")
            .and_then(|base| sibling(base, "_scales"))
            .filter(|sc| paired(t, sc));
        let ty = blocks_of.map(|_| TensorType::MXFP4);
        let (shape, type_name, bytes) = match blocks_of {
            Some(sc) => {
                let mut shape: Vec<usize> =
                    t.shape[..t.shape.len() - 1].iter().rev().copied().collect();
                shape[0] *= 32;
                (shape, "MXFP4", t.end - t.start + sc.end - sc.start)
            }
            None => (
                t.shape.iter().rev().copied().collect(),
                "U8",
                t.end - t.start,
            ),
        };
        out.push(Entry {
            name: t.name.clone(),
            shape,
            ty,
            type_name: type_name.to_string(),
            offset: t.start as u64,
            bytes: Some(bytes),
            file: file(t.shard),
        });
    }
    out
}

impl ModelFile {
    /// Open a GGUF file, a Hugging Face directory, or a `.safetensors` file inside one.
    /// Pickle files are refused.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!("{}: no such file or directory", path.display());
        }
        verity_formats::refuse_pickle(path)?;
        let dir = if path.is_dir() {
            Some(path.to_path_buf())
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            Some(path.parent().unwrap_or(Path::new(".")).to_path_buf())
        } else {
            None
        };
        if let Some(dir) = dir {
            let hf = Arc::new(HfDir::open(&dir).with_context(|| dir.display().to_string())?);
            let file = |shard: usize| {
                hf.shards[shard]
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            };
            let mut tensors: Vec<Entry> = hf
                .tensors
                .values()
                .map(|t| Entry {
                    name: t.name.clone(),
                    shape: t.shape.iter().rev().copied().collect(),
                    ty: Some(t.ty),
                    type_name: t.ty.name().to_string(),
                    offset: t.start as u64,
                    bytes: Some(t.end - t.start),
                    file: file(t.shard),
                })
                .collect();
            tensors.extend(byte_entries(&hf, &file));
            return Ok(ModelFile {
                path: dir,
                container: Container::Hf(hf),
                tensors,
                gguf_parts: Vec::new(),
            });
        }
        // A part of a split model stands for all of them; the first holds the metadata.
        let parts = verity_model::open_gguf_parts(path)
            .map_err(|e| anyhow::Error::new(e.kind).context(path.display().to_string()))?;
        let split = parts.len() > 1;
        let tensors = parts
            .iter()
            .flat_map(|g| g.tensors.iter().map(move |t| (g, t)))
            .map(|(g, t)| Entry {
                name: t.name.clone(),
                shape: t.shape.clone(),
                ty: t.ty,
                type_name: match t.ty {
                    Some(ty) => ty.name().to_string(),
                    None => TensorType::from_ggml_id(t.ggml_type)
                        .err()
                        .unwrap_or_default(),
                },
                offset: g.data_offset + t.offset,
                bytes: t.size,
                file: split
                    .then(|| g.path()?.file_name())
                    .flatten()
                    .map(|n| n.to_string_lossy().into_owned()),
            })
            .collect();
        Ok(ModelFile {
            path: path.to_path_buf(),
            container: Container::Gguf(parts[0].clone()),
            tensors,
            gguf_parts: parts,
        })
    }

    pub fn gguf(&self) -> Option<&Gguf> {
        match &self.container {
            Container::Gguf(g) => Some(g),
            Container::Hf(_) => None,
        }
    }

    /// The parts of a GGUF model, first part first (one unless it is split).
    pub fn gguf_parts(&self) -> &[Arc<Gguf>] {
        &self.gguf_parts
    }

    pub fn hf(&self) -> Option<&HfDir> {
        match &self.container {
            Container::Hf(h) => Some(h),
            Container::Gguf(_) => None,
        }
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of a tensor (`None` for types verity cannot size); transformers'
    /// MXFP4 blocks and scales come repacked as GGUF `MXFP4` rows.
    pub fn data(&self, e: &Entry) -> Option<std::borrow::Cow<'_, [u8]>> {
        use std::borrow::Cow;
        match &self.container {
            Container::Gguf(_) => {
                let (g, info) = self
                    .gguf_parts
                    .iter()
                    .find_map(|g| Some((g, g.tensor(&e.name)?)))?;
                g.tensor_data(info).ok().map(Cow::Borrowed)
            }
            Container::Hf(h) => match h.tensor(&e.name) {
                Some(t) => Some(Cow::Borrowed(h.tensor_data(t))),
                None if e.ty == Some(TensorType::MXFP4) => {
                    let base = e.name.strip_suffix("_blocks")?;
                    let (_, blocks) = h.byte_tensor(&e.name)?;
                    let (_, scales) = h.byte_tensor(&format!("{base}_scales"))?;
                    Some(Cow::Owned(verity_formats::mxfp4::gguf_rows(blocks, scales)))
                }
                None => h.byte_tensor(&e.name).map(|(_, b)| Cow::Borrowed(b)),
            },
        }
    }

    /// All values of a tensor as f32 (`None` for types verity cannot decode).
    pub fn dequantize(&self, e: &Entry) -> Option<Vec<f32>> {
        let ty = e.ty?;
        let data = self.data(e)?;
        let (rows, cols) = e.rows_cols();
        let row_bytes = ty.row_bytes(cols)?;
        if row_bytes.checked_mul(rows)? != data.len() {
            return None;
        }
        let mut out = vec![0f32; rows * cols];
        for (r, dst) in out.chunks_mut(cols).enumerate() {
            verity_kernels::dequantize_row(ty, &data[r * row_bytes..(r + 1) * row_bytes], dst);
        }
        Some(out)
    }
}
