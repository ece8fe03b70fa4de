//! Writing GGUF v3: metadata, tensor infos, aligned tensor data. Used for LoRA adapters
//! (`verity convert --to gguf`) and merged models (`verity merge`).

use std::io::{self, Write};

use crate::gguf::Value;
use crate::TensorType;

const ALIGNMENT: usize = 32;

/// One tensor to write: shape in ggml order (row length first) and its bytes.
pub struct OutTensor {
    pub name: String,
    pub ty: TensorType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// A GGUF file under construction, held in memory until [`GgufWriter::write`].
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<OutTensor>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a metadata key (replacing an earlier value of the same key).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Add a tensor. Panics if the byte count does not match type and shape (a caller bug).
    pub fn add_tensor(&mut self, t: OutTensor) {
        let rows: usize = t.shape.iter().skip(1).product();
        let expected = t.ty.row_bytes(t.shape[0]).map(|b| b * rows);
        assert_eq!(
            Some(t.data.len()),
            expected,
            "tensor '{}' byte size",
            t.name
        );
        self.tensors.push(t);
    }

    /// Serialize to `out`.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        // The header is built in memory: its length decides the padding before the data.
        let mut head: Vec<u8> = Vec::new();
        let put = |out: &mut Vec<u8>, b: &[u8]| -> io::Result<()> {
            out.extend_from_slice(b);
            Ok(())
        };
        let out_file = out;
        let out = &mut head;
        put(out, b"GGUF")?;
        put(out, &3u32.to_le_bytes())?;
        put(out, &(self.tensors.len() as u64).to_le_bytes())?;
        put(out, &(self.metadata.len() as u64).to_le_bytes())?;
        for (k, v) in &self.metadata {
            put(out, &string_bytes(k))?;
            put(out, &value_type(v).to_le_bytes())?;
            put(out, &value_bytes(v))?;
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            put(out, &string_bytes(&t.name))?;
            put(out, &(t.shape.len() as u32).to_le_bytes())?;
            for &d in &t.shape {
                put(out, &(d as u64).to_le_bytes())?;
            }
            put(out, &t.ty.ggml_id().to_le_bytes())?;
            put(out, &(offset as u64).to_le_bytes())?;
            offset += t.data.len().next_multiple_of(ALIGNMENT);
        }
        let header = head.len();
        head.resize(header.next_multiple_of(ALIGNMENT), 0);
        out_file.write_all(&head)?;
        for t in &self.tensors {
            out_file.write_all(&t.data)?;
            let pad = t.data.len().next_multiple_of(ALIGNMENT) - t.data.len();
            out_file.write_all(&vec![0u8; pad])?;
        }
        Ok(())
    }
}

fn string_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn value_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::U8(x) => vec![*x],
        Value::I8(x) => x.to_le_bytes().to_vec(),
        Value::U16(x) => x.to_le_bytes().to_vec(),
        Value::I16(x) => x.to_le_bytes().to_vec(),
        Value::U32(x) => x.to_le_bytes().to_vec(),
        Value::I32(x) => x.to_le_bytes().to_vec(),
        Value::F32(x) => x.to_le_bytes().to_vec(),
        Value::Bool(x) => vec![*x as u8],
        Value::Str(s) => string_bytes(s),
        Value::U64(x) => x.to_le_bytes().to_vec(),
        Value::I64(x) => x.to_le_bytes().to_vec(),
        Value::F64(x) => x.to_le_bytes().to_vec(),
        Value::Array(items) => {
            // An empty array still needs an element type; strings are what readers expect.
            let ty = items.first().map_or(8, value_type);
            let mut b = ty.to_le_bytes().to_vec();
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                b.extend_from_slice(&value_bytes(it));
            }
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::Gguf;

    #[test]
    fn round_trips_through_the_reader() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::Str("llama".into()));
        w.set("adapter.lora.alpha", Value::F32(16.0));
        w.set(
            "list",
            Value::Array(vec![Value::Str("a".into()), Value::Str("bc".into())]),
        );
        let data: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        w.add_tensor(OutTensor {
            name: "t".into(),
            ty: TensorType::F32,
            shape: vec![3, 4],
            data: data.clone(),
        });
        let mut bytes = Vec::new();
        w.write(&mut bytes).unwrap();
        let g = Gguf::from_bytes(bytes).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_f64("adapter.lora.alpha"), Some(16.0));
        assert_eq!(g.get_array("list").map(|a| a.len()), Some(2));
        let t = g.tensor("t").unwrap();
        assert_eq!(t.shape, vec![3, 4]);
        assert_eq!(g.tensor_data(t).unwrap(), &data[..]);
    }
}
