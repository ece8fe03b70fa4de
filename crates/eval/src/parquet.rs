//! Parquet files (Hugging Face Hub datasets are stored this way) read into [`Val`] rows
//! through the `parquet` crate's record reader.

use std::path::Path;

use anyhow::{anyhow, Context};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};

use crate::value::Val;

/// Every row of `path`, columns in the file's order. A file the reader cannot take (or
/// one that makes it panic) is an error naming the file, never a crash.
pub fn read(path: &Path) -> anyhow::Result<Vec<Val>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let rows = std::panic::catch_unwind(move || -> anyhow::Result<Vec<Val>> {
        let reader = SerializedFileReader::new(file)?;
        let mut rows = Vec::new();
        for row in reader.get_row_iter(None)? {
            rows.push(row_to_val(&row?));
        }
        Ok(rows)
    })
    .map_err(|_| anyhow!("the Parquet reader failed on this file (corrupt or unsupported)"))?;
    rows.with_context(|| format!("{}: not a readable Parquet file", path.display()))
}

fn row_to_val(row: &Row) -> Val {
    Val::Map(
        row.get_column_iter()
            .map(|(name, field)| (name.clone(), field_to_val(field)))
            .collect(),
    )
}

/// What `datasets` (pyarrow's `to_pylist`) makes of each Parquet value.
fn field_to_val(f: &Field) -> Val {
    match f {
        Field::Null => Val::Null,
        Field::Bool(b) => Val::Bool(*b),
        Field::Byte(v) => Val::Int(*v as i64),
        Field::Short(v) => Val::Int(*v as i64),
        Field::Int(v) => Val::Int(*v as i64),
        Field::Long(v) => Val::Int(*v),
        Field::UByte(v) => Val::Int(*v as i64),
        Field::UShort(v) => Val::Int(*v as i64),
        Field::UInt(v) => Val::Int(*v as i64),
        Field::ULong(v) => i64::try_from(*v).map_or(Val::Float(*v as f64), Val::Int),
        Field::Float16(v) => Val::Float(f64::from(v.to_f32())),
        Field::Float(v) => Val::Float(*v as f64),
        Field::Double(v) => Val::Float(*v),
        Field::Str(s) => Val::Str(s.clone()),
        Field::Bytes(b) => Val::Str(String::from_utf8_lossy(b.data()).into_owned()),
        Field::Group(row) => row_to_val(row),
        Field::ListInternal(list) => Val::List(list.elements().iter().map(field_to_val).collect()),
        Field::MapInternal(map) => Val::Map(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match field_to_val(k) {
                        Val::Str(s) => s,
                        other => serde_json::to_string(&other).unwrap_or_default(),
                    };
                    (key, field_to_val(v))
                })
                .collect(),
        ),
        // Dates, times, timestamps and decimals: their text form (no built-in task has any).
        other => Val::Str(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.parquet");
        for bytes in [
            &b""[..],
            b"PAR1",
            b"PAR1\x00\x00\x00\x00PAR1",
            &[0xffu8; 300][..],
        ] {
            std::fs::write(&p, bytes).unwrap();
            assert!(read(&p).is_err());
        }
        // A real file cut short.
        let good =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/mini.parquet"))
                .unwrap();
        for cut in [8, good.len() / 2, good.len() - 9, good.len() - 1] {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(read(&p).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn parquet_rows_equal_jsonl_rows() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let from_parquet = read(&data.join("mini.parquet")).unwrap();
        let from_jsonl = crate::data::load_path(&data.join("mini.jsonl"))
            .unwrap()
            .rows;
        assert_eq!(from_parquet.len(), 3);
        assert_eq!(from_parquet, from_jsonl);
    }
}
