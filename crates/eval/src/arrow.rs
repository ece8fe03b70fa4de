//! A small reader for Arrow IPC *stream* files (what Hugging Face `save_to_disk` writes),
//! enough for benchmark data: null, integers, floats, booleans, UTF-8 and binary strings
//! (32- and 64-bit offsets), lists, large lists, fixed-size lists and structs, uncompressed.
//!
//! Why not the `arrow-ipc` crate: it pulls in about 65 crates (chrono, futures, num-bigint,
//! const-random ...) for what is a few hundred lines here, and every length and offset is
//! checked against the bytes present, so a damaged file is an error, never a panic.

use crate::value::Val;

#[derive(Debug, thiserror::Error)]
#[error("Arrow IPC stream: {0}")]
pub struct ArrowError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ArrowError> {
    Err(ArrowError(msg.into()))
}

/// A flatbuffer view: a byte slice with checked reads.
#[derive(Clone, Copy)]
struct Fb<'a>(&'a [u8]);

impl<'a> Fb<'a> {
    fn bytes(&self, at: usize, n: usize) -> Result<&'a [u8], ArrowError> {
        at.checked_add(n)
            .and_then(|end| self.0.get(at..end))
            .ok_or_else(|| ArrowError("flatbuffer read out of bounds".into()))
    }
    fn u8(&self, at: usize) -> Result<u8, ArrowError> {
        Ok(self.bytes(at, 1)?[0])
    }
    fn u16(&self, at: usize) -> Result<u16, ArrowError> {
        Ok(u16::from_le_bytes(self.bytes(at, 2)?.try_into().unwrap()))
    }
    fn i32(&self, at: usize) -> Result<i32, ArrowError> {
        Ok(i32::from_le_bytes(self.bytes(at, 4)?.try_into().unwrap()))
    }
    fn u32(&self, at: usize) -> Result<u32, ArrowError> {
        Ok(u32::from_le_bytes(self.bytes(at, 4)?.try_into().unwrap()))
    }
    fn i64(&self, at: usize) -> Result<i64, ArrowError> {
        Ok(i64::from_le_bytes(self.bytes(at, 8)?.try_into().unwrap()))
    }
    fn root(&self) -> Result<Table<'a>, ArrowError> {
        let pos = self.u32(0)? as usize;
        Table::at(*self, pos)
    }
}

#[derive(Clone, Copy)]
struct Table<'a> {
    fb: Fb<'a>,
    pos: usize,
    vtable: usize,
    vlen: usize,
}

impl<'a> Table<'a> {
    fn at(fb: Fb<'a>, pos: usize) -> Result<Self, ArrowError> {
        let soff = fb.i32(pos)? as i64;
        let vtable = pos as i64 - soff;
        if vtable < 0 {
            return err("bad vtable offset");
        }
        let vtable = vtable as usize;
        let vlen = fb.u16(vtable)? as usize;
        Ok(Table {
            fb,
            pos,
            vtable,
            vlen,
        })
    }
    /// Absolute position of field `i`, if present.
    fn field(&self, i: usize) -> Result<Option<usize>, ArrowError> {
        let slot = 4 + 2 * i;
        if slot + 2 > self.vlen {
            return Ok(None);
        }
        let off = self.fb.u16(self.vtable + slot)? as usize;
        Ok((off != 0).then_some(self.pos + off))
    }
    fn u8_or(&self, i: usize, d: u8) -> Result<u8, ArrowError> {
        match self.field(i)? {
            Some(p) => self.fb.u8(p),
            None => Ok(d),
        }
    }
    fn i16_or(&self, i: usize, d: i16) -> Result<i16, ArrowError> {
        match self.field(i)? {
            Some(p) => Ok(self.fb.u16(p)? as i16),
            None => Ok(d),
        }
    }
    fn i32_or(&self, i: usize, d: i32) -> Result<i32, ArrowError> {
        match self.field(i)? {
            Some(p) => self.fb.i32(p),
            None => Ok(d),
        }
    }
    fn i64_or(&self, i: usize, d: i64) -> Result<i64, ArrowError> {
        match self.field(i)? {
            Some(p) => self.fb.i64(p),
            None => Ok(d),
        }
    }
    fn indirect(&self, i: usize) -> Result<Option<usize>, ArrowError> {
        match self.field(i)? {
            Some(p) => Ok(Some(p + self.fb.u32(p)? as usize)),
            None => Ok(None),
        }
    }
    fn table(&self, i: usize) -> Result<Option<Table<'a>>, ArrowError> {
        match self.indirect(i)? {
            Some(p) => Ok(Some(Table::at(self.fb, p)?)),
            None => Ok(None),
        }
    }
    fn string(&self, i: usize) -> Result<Option<String>, ArrowError> {
        match self.indirect(i)? {
            Some(p) => {
                let n = self.fb.u32(p)? as usize;
                let b = self.fb.bytes(p + 4, n)?;
                Ok(Some(String::from_utf8_lossy(b).into_owned()))
            }
            None => Ok(None),
        }
    }
    /// A vector: (position of the first element, count).
    fn vector(&self, i: usize) -> Result<Option<(usize, usize)>, ArrowError> {
        match self.indirect(i)? {
            Some(p) => {
                let n = self.fb.u32(p)? as usize;
                Ok(Some((p + 4, n)))
            }
            None => Ok(None),
        }
    }
    fn tables(&self, i: usize) -> Result<Vec<Table<'a>>, ArrowError> {
        let Some((start, n)) = self.vector(i)? else {
            return Ok(Vec::new());
        };
        if n > self.fb.0.len() / 4 {
            return err("vector longer than the message");
        }
        (0..n)
            .map(|k| {
                let p = start + 4 * k;
                Table::at(self.fb, p + self.fb.u32(p)? as usize)
            })
            .collect()
    }
}

/// A column's type.
#[derive(Clone, Debug, PartialEq)]
pub enum DType {
    Null,
    Int { bits: u32, signed: bool },
    Float { bits: u32 },
    Bool,
    Utf8 { large: bool },
    Binary { large: bool },
    List { large: bool, item: Box<Field> },
    FixedList { size: usize, item: Box<Field> },
    Struct(Vec<Field>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub dtype: DType,
}

fn parse_field(t: Table<'_>) -> Result<Field, ArrowError> {
    let name = t.string(0)?.unwrap_or_default();
    if t.table(4)?.is_some() {
        return err(format!(
            "column '{name}' is dictionary-encoded (not supported)"
        ));
    }
    let type_id = t.u8_or(2, 0)?;
    let ty = t.table(3)?;
    let children = t
        .tables(5)?
        .into_iter()
        .map(parse_field)
        .collect::<Result<Vec<_>, _>>()?;
    let one_child = |children: Vec<Field>| -> Result<Box<Field>, ArrowError> {
        match <[Field; 1]>::try_from(children) {
            Ok([c]) => Ok(Box::new(c)),
            Err(_) => err(format!("list column '{name}' needs one child")),
        }
    };
    let dtype = match type_id {
        1 => DType::Null,
        2 => {
            let ty = ty.ok_or_else(|| ArrowError("Int without parameters".into()))?;
            let bits = ty.i32_or(0, 0)? as u32;
            if !matches!(bits, 8 | 16 | 32 | 64) {
                return err(format!("integer width {bits}"));
            }
            DType::Int {
                bits,
                signed: ty.u8_or(1, 0)? != 0,
            }
        }
        3 => {
            let p = ty.map(|t| t.i16_or(0, 0)).transpose()?.unwrap_or(0);
            DType::Float {
                bits: match p {
                    0 => 16,
                    1 => 32,
                    _ => 64,
                },
            }
        }
        4 => DType::Binary { large: false },
        5 => DType::Utf8 { large: false },
        6 => DType::Bool,
        12 => DType::List {
            large: false,
            item: one_child(children)?,
        },
        13 => DType::Struct(children),
        16 => {
            let size = ty.map(|t| t.i32_or(0, 0)).transpose()?.unwrap_or(0);
            if size <= 0 {
                return err("fixed-size list of size 0");
            }
            DType::FixedList {
                size: size as usize,
                item: one_child(children)?,
            }
        }
        19 => DType::Binary { large: true },
        20 => DType::Utf8 { large: true },
        21 => DType::List {
            large: true,
            item: one_child(children)?,
        },
        other => {
            return err(format!(
                "column '{name}' has Arrow type {other} (not supported)"
            ))
        }
    };
    Ok(Field { name, dtype })
}

/// Read every row of an Arrow IPC stream as ordered records.
pub fn read_stream(bytes: &[u8]) -> Result<(Vec<Field>, Vec<Val>), ArrowError> {
    let mut pos = 0usize;
    let mut schema: Option<Vec<Field>> = None;
    let mut rows = Vec::new();
    let rd = Fb(bytes);
    loop {
        if pos + 4 > bytes.len() {
            break;
        }
        let mut len = rd.u32(pos)?;
        pos += 4;
        if len == 0xFFFF_FFFF {
            if pos + 4 > bytes.len() {
                break;
            }
            len = rd.u32(pos)?;
            pos += 4;
        }
        if len == 0 {
            break; // end of stream
        }
        let meta = rd.bytes(pos, len as usize)?;
        pos += len as usize;
        let msg = Fb(meta).root()?;
        let header_type = msg.u8_or(1, 0)?;
        let header = msg
            .table(2)?
            .ok_or_else(|| ArrowError("message without header".into()))?;
        let body_len = msg.i64_or(3, 0)?;
        if body_len < 0 {
            return err("negative body length");
        }
        let body = rd.bytes(pos, body_len as usize)?;
        pos += body_len as usize;
        match header_type {
            1 => {
                let fields = header
                    .tables(1)?
                    .into_iter()
                    .map(parse_field)
                    .collect::<Result<Vec<_>, _>>()?;
                schema = Some(fields);
            }
            3 => {
                let fields = schema
                    .as_ref()
                    .ok_or_else(|| ArrowError("record batch before the schema".into()))?;
                if header.table(3)?.is_some() {
                    return err("compressed record batches are not supported");
                }
                read_batch(header, body, fields, &mut rows)?;
            }
            2 => return err("dictionary batches are not supported"),
            other => return err(format!("unexpected message type {other}")),
        }
    }
    Ok((schema.unwrap_or_default(), rows))
}

struct Cursor<'a> {
    nodes: Vec<(usize, usize)>,
    buffers: Vec<&'a [u8]>,
    node: usize,
    buffer: usize,
}

impl<'a> Cursor<'a> {
    fn next_node(&mut self) -> Result<(usize, usize), ArrowError> {
        let n = *self
            .nodes
            .get(self.node)
            .ok_or_else(|| ArrowError("fewer field nodes than columns".into()))?;
        self.node += 1;
        Ok(n)
    }
    fn next_buffer(&mut self) -> Result<&'a [u8], ArrowError> {
        let b = *self
            .buffers
            .get(self.buffer)
            .ok_or_else(|| ArrowError("fewer buffers than the schema needs".into()))?;
        self.buffer += 1;
        Ok(b)
    }
}

fn read_batch(
    header: Table<'_>,
    body: &[u8],
    fields: &[Field],
    rows: &mut Vec<Val>,
) -> Result<(), ArrowError> {
    let length = header.i64_or(0, 0)?;
    if length < 0 || length as usize > body.len().max(1) * 8 + 1_000_000 {
        return err("implausible record batch length");
    }
    let length = length as usize;
    let fb = header.fb;
    let mut nodes = Vec::new();
    if let Some((start, n)) = header.vector(1)? {
        for k in 0..n {
            let p = start + 16 * k;
            let (len, nulls) = (fb.i64(p)?, fb.i64(p + 8)?);
            if len < 0 || nulls < 0 {
                return err("negative field node");
            }
            nodes.push((len as usize, nulls as usize));
        }
    }
    let mut buffers = Vec::new();
    if let Some((start, n)) = header.vector(2)? {
        for k in 0..n {
            let p = start + 16 * k;
            let (off, len) = (fb.i64(p)?, fb.i64(p + 8)?);
            if off < 0 || len < 0 {
                return err("negative buffer range");
            }
            let b = Fb(body).bytes(off as usize, len as usize)?;
            buffers.push(b);
        }
    }
    let mut cur = Cursor {
        nodes,
        buffers,
        node: 0,
        buffer: 0,
    };
    let mut columns = Vec::with_capacity(fields.len());
    for f in fields {
        let col = read_array(&f.dtype, &mut cur)?;
        if col.len() != length {
            return err(format!(
                "column '{}' has {} rows, batch has {length}",
                f.name,
                col.len()
            ));
        }
        columns.push(col);
    }
    let start = rows.len();
    for r in 0..length {
        let rec = fields
            .iter()
            .zip(columns.iter_mut())
            .map(|(f, c)| (f.name.clone(), std::mem::take(&mut c[r])))
            .collect();
        rows.push(Val::Map(rec));
    }
    debug_assert_eq!(rows.len(), start + length);
    Ok(())
}

fn valid(bitmap: &[u8], nulls: usize, i: usize) -> bool {
    nulls == 0 || bitmap.is_empty() || bitmap.get(i / 8).is_some_and(|b| b >> (i % 8) & 1 == 1)
}

fn offsets(buf: &[u8], large: bool, n: usize) -> Result<Vec<usize>, ArrowError> {
    let w = if large { 8 } else { 4 };
    if buf.len() < (n + 1) * w {
        if n == 0 {
            return Ok(vec![0]);
        }
        return err("offsets buffer too short");
    }
    let mut out = Vec::with_capacity(n + 1);
    for i in 0..=n {
        let v = if large {
            i64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap())
        } else {
            i32::from_le_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap()) as i64
        };
        if v < 0 || out.last().is_some_and(|&l: &usize| (v as usize) < l) {
            return err("offsets decrease or are negative");
        }
        out.push(v as usize);
    }
    Ok(out)
}

fn read_array(dtype: &DType, cur: &mut Cursor<'_>) -> Result<Vec<Val>, ArrowError> {
    let (n, nulls) = cur.next_node()?;
    if n > 1 << 28 {
        return err("implausible array length");
    }
    let out = match dtype {
        DType::Null => vec![Val::Null; n],
        DType::Int { bits, signed } => {
            let validity = cur.next_buffer()?;
            let data = cur.next_buffer()?;
            let w = (*bits / 8) as usize;
            if data.len() < n * w {
                return err("integer buffer too short");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    let b = &data[i * w..(i + 1) * w];
                    let v: i64 = match (w, signed) {
                        (1, true) => b[0] as i8 as i64,
                        (1, false) => b[0] as i64,
                        (2, true) => i16::from_le_bytes([b[0], b[1]]) as i64,
                        (2, false) => u16::from_le_bytes([b[0], b[1]]) as i64,
                        (4, true) => i32::from_le_bytes(b.try_into().unwrap()) as i64,
                        (4, false) => u32::from_le_bytes(b.try_into().unwrap()) as i64,
                        (_, true) => i64::from_le_bytes(b.try_into().unwrap()),
                        (_, false) => u64::from_le_bytes(b.try_into().unwrap()) as i64,
                    };
                    Val::Int(v)
                })
                .collect()
        }
        DType::Float { bits } => {
            let validity = cur.next_buffer()?;
            let data = cur.next_buffer()?;
            let w = (*bits / 8) as usize;
            if data.len() < n * w {
                return err("float buffer too short");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    let b = &data[i * w..(i + 1) * w];
                    Val::Float(match w {
                        2 => half::f16::from_le_bytes([b[0], b[1]]).to_f64(),
                        4 => f32::from_le_bytes(b.try_into().unwrap()) as f64,
                        _ => f64::from_le_bytes(b.try_into().unwrap()),
                    })
                })
                .collect()
        }
        DType::Bool => {
            let validity = cur.next_buffer()?;
            let data = cur.next_buffer()?;
            if data.len() * 8 < n {
                return err("boolean buffer too short");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    Val::Bool(data[i / 8] >> (i % 8) & 1 == 1)
                })
                .collect()
        }
        DType::Utf8 { large } | DType::Binary { large } => {
            let validity = cur.next_buffer()?;
            let offs = offsets(cur.next_buffer()?, *large, n)?;
            let data = cur.next_buffer()?;
            if offs.last().copied().unwrap_or(0) > data.len() {
                return err("string data shorter than its offsets");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    Val::Str(String::from_utf8_lossy(&data[offs[i]..offs[i + 1]]).into_owned())
                })
                .collect()
        }
        DType::List { large, item } => {
            let validity = cur.next_buffer()?;
            let offs = offsets(cur.next_buffer()?, *large, n)?;
            let mut child = read_array(&item.dtype, cur)?;
            if offs.last().copied().unwrap_or(0) > child.len() {
                return err("list child shorter than its offsets");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    Val::List(
                        child[offs[i]..offs[i + 1]]
                            .iter_mut()
                            .map(std::mem::take)
                            .collect(),
                    )
                })
                .collect()
        }
        DType::FixedList { size, item } => {
            let validity = cur.next_buffer()?;
            let mut child = read_array(&item.dtype, cur)?;
            if child.len() < n * size {
                return err("fixed-size list child too short");
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    Val::List(
                        child[i * size..(i + 1) * size]
                            .iter_mut()
                            .map(std::mem::take)
                            .collect(),
                    )
                })
                .collect()
        }
        DType::Struct(fields) => {
            let validity = cur.next_buffer()?;
            let mut cols = Vec::with_capacity(fields.len());
            for f in fields {
                let c = read_array(&f.dtype, cur)?;
                if c.len() < n {
                    return err(format!("struct child '{}' too short", f.name));
                }
                cols.push(c);
            }
            (0..n)
                .map(|i| {
                    if !valid(validity, nulls, i) {
                        return Val::Null;
                    }
                    Val::Map(
                        fields
                            .iter()
                            .zip(cols.iter_mut())
                            .map(|(f, c)| (f.name.clone(), std::mem::take(&mut c[i])))
                            .collect(),
                    )
                })
                .collect()
        }
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            &b"\xff\xff\xff\xff\x10\x00\x00\x00abc"[..],
            &[0xff; 64][..],
            &[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08][..],
        ] {
            let _ = read_stream(bytes);
        }
    }
}
