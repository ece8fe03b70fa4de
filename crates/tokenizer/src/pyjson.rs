//! `tojson` as transformers defines it for chat templates: Python's `json.dumps` with
//! `ensure_ascii=False` (", " and ": " separators, optional `indent`, keys in insertion
//! order), so that a template renders tool schemas byte for byte as transformers does.
//! minijinja's own `tojson` escapes HTML characters and writes compact JSON.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Error, ErrorKind, Value};

/// Deepest nesting written (a hostile value must not overflow the stack).
const MAX_DEPTH: usize = 128;

/// The `tojson` filter: `x | tojson`, `x | tojson(indent=4)`, `tojson(x, 2)`.
pub fn tojson(value: Value, indent: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match i64::try_from(v.clone()) {
            Ok(n) => Some(" ".repeat(n.clamp(0, 16) as usize)),
            Err(_) => Some(v.as_str().unwrap_or("").to_string()),
        },
    };
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    // Accepted as Python accepts them; the defaults are what templates use.
    let _: Option<Value> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write(&mut out, &value, indent.as_deref(), sort_keys, 0)?;
    Ok(out)
}

fn write(
    out: &mut String,
    v: &Value,
    indent: Option<&str>,
    sort: bool,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deep",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => number(out, v),
        ValueKind::String | ValueKind::Bytes => string(out, v.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            container(
                out,
                '[',
                ']',
                items.len(),
                indent,
                depth,
                |out, i, inner| write(out, &items[i], inner, sort, depth + 1),
            )?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            container(out, '{', '}', keys.len(), indent, depth, |out, i, inner| {
                let k = &keys[i];
                match k.as_str() {
                    Some(s) => string(out, s),
                    None => string(out, &k.to_string()),
                }
                out.push_str(": ");
                write(out, &v.get_item(k)?, inner, sort, depth + 1)
            })?;
        }
        _ => string(out, &v.to_string()),
    }
    Ok(())
}

fn container(
    out: &mut String,
    open: char,
    close: char,
    n: usize,
    indent: Option<&str>,
    depth: usize,
    mut item: impl FnMut(&mut String, usize, Option<&str>) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if n == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..n {
        match indent {
            // Python: "," then newline and indentation; no trailing spaces.
            Some(ind) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&ind.repeat(depth + 1));
            }
            None => {
                if i > 0 {
                    out.push_str(", ");
                }
            }
        }
        item(out, i, indent)?;
    }
    if let Some(ind) = indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

fn number(out: &mut String, v: &Value) {
    if let Ok(i) = i64::try_from(v.clone()) {
        if !v.to_string().contains(['.', 'e', 'E']) {
            out.push_str(&i.to_string());
            return;
        }
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    out.push_str(&py_float(f));
}

/// Python's `repr(float)`: shortest round-trip digits, `.0` on integral values, exponent
/// form (`1e-05`, `1e+16`) outside [1e-4, 1e16).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}"); // e.g. 1e-5, 1.5e16
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        let sign = if e < 0 { '-' } else { '+' };
        return format!("{m}e{sign}{:02}", e.abs());
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dumps(json: &str, indent: Option<i64>) -> String {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut out = String::new();
        write(
            &mut out,
            &Value::from_serialize(&v),
            indent.map(|n| " ".repeat(n as usize)).as_deref(),
            false,
            0,
        )
        .unwrap();
        out
    }

    #[test]
    fn matches_python_json_dumps() {
        // Expected strings are what CPython 3.11's json.dumps(..., ensure_ascii=False) prints.
        assert_eq!(
            dumps(r#"{"a": [1, 2.5, "é\n"], "b": {}}"#, None),
            r#"{"a": [1, 2.5, "é\n"], "b": {}}"#
        );
        assert_eq!(
            dumps(r#"{"a": [1, []]}"#, Some(2)),
            "{\n  \"a\": [\n    1,\n    []\n  ]\n}"
        );
        assert_eq!(dumps("1.0", None), "1.0");
        assert_eq!(dumps("0.00001", None), "1e-05");
        assert_eq!(dumps("true", None), "true");
        assert_eq!(dumps(r#""<tag>&'""#, None), r#""<tag>&'""#);
    }
}
