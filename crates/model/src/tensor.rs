use std::sync::Arc;

use verity_formats::TensorType;
use verity_kernels::WeightView;

/// A 2-D weight matrix: `rows` rows of `cols` elements, bytes either memory-mapped from
/// the model file (kept alive by `owner`) or owned.
pub struct Tensor {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

enum Data {
    Mapped {
        /// Keeps the mapping alive: `ptr` points into it and the mapping never moves.
        _owner: Arc<dyn Send + Sync>,
        ptr: *const u8,
        len: usize,
    },
    Owned(Vec<u8>),
}

// SAFETY: the mapped bytes are immutable and live as long as `_owner`.
unsafe impl Send for Data {}
unsafe impl Sync for Data {}

impl Tensor {
    /// A tensor over bytes owned by `owner` (which must keep `bytes` alive and unmoved).
    pub(crate) fn mapped(
        ty: TensorType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        owner: Arc<dyn Send + Sync>,
    ) -> Self {
        debug_assert_eq!(Some(bytes.len()), ty.row_bytes(cols).map(|r| r * rows));
        Tensor {
            ty,
            rows,
            cols,
            data: Data::Mapped {
                _owner: owner,
                ptr: bytes.as_ptr(),
                len: bytes.len(),
            },
        }
    }

    pub fn owned(ty: TensorType, rows: usize, cols: usize, bytes: Vec<u8>) -> Self {
        assert_eq!(
            Some(bytes.len()),
            ty.row_bytes(cols).map(|r| r * rows),
            "tensor byte size"
        );
        Tensor {
            ty,
            rows,
            cols,
            data: Data::Owned(bytes),
        }
    }

    /// Consecutive row ranges of this matrix as matrices of their own (a fused q/k/v or
    /// gate/up matrix as its parts); mapped bytes stay mapped.
    pub(crate) fn split_rows(self, parts: &[usize]) -> Vec<Tensor> {
        assert_eq!(parts.iter().sum::<usize>(), self.rows, "split_rows: parts");
        let row_bytes = self.bytes().len() / self.rows.max(1);
        let mut out = Vec::with_capacity(parts.len());
        let mut at = 0;
        for &rows in parts {
            let range = at * row_bytes..(at + rows) * row_bytes;
            out.push(match &self.data {
                Data::Mapped { _owner, .. } => Tensor::mapped(
                    self.ty,
                    rows,
                    self.cols,
                    &self.bytes()[range],
                    _owner.clone(),
                ),
                Data::Owned(v) => Tensor::owned(self.ty, rows, self.cols, v[range].to_vec()),
            });
            at += rows;
        }
        out
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            // SAFETY: see `Data::Mapped`.
            Data::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
            Data::Owned(v) => v,
        }
    }

    pub fn view(&self) -> WeightView<'_> {
        WeightView {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: self.bytes(),
        }
    }

    /// All elements as f32 (for small tensors: norms, biases).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let row_bytes = self.bytes().len() / self.rows.max(1);
        for (r, dst) in out.chunks_mut(self.cols).enumerate() {
            verity_kernels::dequantize_row(
                self.ty,
                &self.bytes()[r * row_bytes..(r + 1) * row_bytes],
                dst,
            );
        }
        out
    }
}
