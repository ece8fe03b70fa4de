//! Reading a data file into JSON records, each with its place in the file: JSONL lines,
//! JSON array elements, Parquet rows (through the `parquet` crate's record reader, each row
//! turned into the JSON value `datasets` would show for it).

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{Map, Value};

use super::{DataError, Loc};

/// Nesting depth of a Parquet value beyond which a row is refused (no dataset shape here
/// nests more than 3 deep; the limit keeps a hostile schema from overflowing the stack).
const MAX_DEPTH: usize = 64;

/// The file formats, by extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    Jsonl,
    Json,
    Parquet,
}

impl Format {
    pub(super) fn of(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".jsonl") {
            Some(Format::Jsonl)
        } else if name.ends_with(".json") {
            Some(Format::Json)
        } else if name.ends_with(".parquet") {
            Some(Format::Parquet)
        } else {
            None
        }
    }
}

/// A serde_json error without its " at line L column C" suffix (a JSONL line is always
/// line 1 to serde), with the column kept.
fn json_msg(e: &serde_json::Error) -> String {
    let mut msg = e.to_string();
    if let Some(i) = msg.rfind(" at line ") {
        msg.truncate(i);
    }
    if e.column() > 0 {
        msg.push_str(&format!(" (column {})", e.column()));
    }
    msg
}

/// 1-based line of byte offset `at` in `bytes`.
fn line_of(bytes: &[u8], at: usize) -> usize {
    1 + bytes[..at.min(bytes.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// Feed every record of a JSONL file to `f`; blank lines are skipped. Returns the number of
/// records.
pub(super) fn jsonl(
    path: &Path,
    bytes: &[u8],
    f: &mut dyn FnMut(Loc, Value) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let mut n = 0;
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = Loc::Line(i + 1);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = if i == 0 {
            line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line)
        } else {
            line
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| DataError::NotUtf8 {
            path: path.to_path_buf(),
            at,
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| DataError::NotJson {
            path: path.to_path_buf(),
            at,
            msg: json_msg(&e),
        })?;
        f(at, value)?;
        n += 1;
    }
    Ok(n)
}

/// What a JSON value is, for messages ("an object", "a string", ...).
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Feed every element of a JSON array file to `f`. Returns the number of records.
pub(super) fn json(
    path: &Path,
    bytes: &[u8],
    f: &mut dyn FnMut(Loc, Value) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| DataError::NotUtf8 {
        path: path.to_path_buf(),
        at: Loc::Line(line_of(bytes, e.valid_up_to())),
    })?;
    if text.trim().is_empty() {
        return Ok(0);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| DataError::NotJson {
        path: path.to_path_buf(),
        at: Loc::Line(e.line().max(1)),
        msg: json_msg(&e),
    })?;
    let Value::Array(items) = value else {
        return Err(DataError::NotArray {
            path: path.to_path_buf(),
            found: kind(&value),
        });
    };
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        f(Loc::Record(i + 1), item)?;
    }
    Ok(n)
}

/// Feed every row of a Parquet file to `f`. A file the reader cannot take, or one that
/// makes it panic, is an error naming the file, never a crash. Returns the number of rows.
pub(super) fn parquet(
    path: &Path,
    file: File,
    f: &mut dyn FnMut(Loc, Value) -> Result<(), DataError>,
) -> Result<usize, DataError> {
    let unreadable = |msg: String| DataError::Parquet {
        path: path.to_path_buf(),
        msg,
    };
    let panicked =
        || unreadable("the Parquet reader failed on this file (corrupt or unsupported)".into());
    let reader = catch_unwind(AssertUnwindSafe(|| SerializedFileReader::new(file)))
        .map_err(|_| panicked())?
        .map_err(|e| unreadable(e.to_string()))?;
    let mut rows = catch_unwind(AssertUnwindSafe(|| reader.get_row_iter(None)))
        .map_err(|_| panicked())?
        .map_err(|e| unreadable(e.to_string()))?;
    let mut n = 0;
    loop {
        let next = catch_unwind(AssertUnwindSafe(|| rows.next())).map_err(|_| panicked())?;
        let Some(row) = next else { break };
        n += 1;
        let at = Loc::Row(n);
        let row = row.map_err(|e| unreadable(format!("{at}: {e}")))?;
        let value = row_to_value(&row, 0).map_err(|msg| DataError::Field {
            path: path.to_path_buf(),
            at,
            msg,
        })?;
        f(at, value)?;
    }
    Ok(n)
}

fn row_to_value(row: &Row, depth: usize) -> Result<Value, String> {
    let mut map = Map::new();
    for (name, field) in row.get_column_iter() {
        map.insert(name.clone(), field_to_value(field, depth + 1)?);
    }
    Ok(Value::Object(map))
}

/// What `datasets` (pyarrow's `to_pylist`) makes of each Parquet value, as JSON.
fn field_to_value(f: &Field, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("values nest more than {MAX_DEPTH} deep"));
    }
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(v) => Value::from(*v),
        Field::Short(v) => Value::from(*v),
        Field::Int(v) => Value::from(*v),
        Field::Long(v) => Value::from(*v),
        Field::UByte(v) => Value::from(*v),
        Field::UShort(v) => Value::from(*v),
        Field::UInt(v) => Value::from(*v),
        Field::ULong(v) => Value::from(*v),
        Field::Float16(v) => Value::from(f64::from(v.to_f32())),
        Field::Float(v) => Value::from(f64::from(*v)),
        Field::Double(v) => Value::from(*v),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => return Err("a binary value is not UTF-8 text".into()),
        },
        Field::Group(row) => row_to_value(row, depth)?,
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|e| field_to_value(e, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut out = Map::new();
            for (k, v) in map.entries() {
                let key = match field_to_value(k, depth + 1)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                out.insert(key, field_to_value(v, depth + 1)?);
            }
            Value::Object(out)
        }
        // Dates, times, timestamps and decimals: their text form (no dataset shape uses them).
        other => Value::String(other.to_string()),
    })
}
