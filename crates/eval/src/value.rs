//! A document: a record with its fields in the dataset's column order (so that it
//! serializes as `datasets` and lm-eval show it, and `doc_hash` matches theirs).

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq)]
pub enum Val {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    /// Fields in order.
    Map(Vec<(String, Val)>),
}

impl Val {
    pub fn get(&self, key: &str) -> Option<&Val> {
        match self {
            Val::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Set a field (replacing it where it exists, else appending, as `Dataset.map` does).
    pub fn set(&mut self, key: &str, v: Val) {
        if let Val::Map(m) = self {
            match m.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => m.push((key.to_string(), v)),
            }
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Python's `str()` of the value, for strings the string itself.
    pub fn to_text(&self) -> String {
        match self {
            Val::Null => "None".into(),
            Val::Bool(b) => if *b { "True" } else { "False" }.into(),
            Val::Int(i) => i.to_string(),
            Val::Float(f) => py_float(*f),
            Val::Str(s) => s.clone(),
            other => serde_json::to_string(other).unwrap_or_default(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(v: &serde_json::Value) -> Val {
        match v {
            serde_json::Value::Null => Val::Null,
            serde_json::Value::Bool(b) => Val::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Val::Str(s.clone()),
            serde_json::Value::Array(a) => Val::List(a.iter().map(Val::from_json).collect()),
            serde_json::Value::Object(o) => Val::Map(
                o.iter()
                    .map(|(k, v)| (k.clone(), Val::from_json(v)))
                    .collect(),
            ),
        }
    }

    pub fn to_jinja(&self) -> minijinja::Value {
        minijinja::Value::from_serialize(self)
    }

    pub fn from_jinja(v: &minijinja::Value) -> Val {
        use minijinja::value::ValueKind;
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => Val::Null,
            ValueKind::Bool => Val::Bool(v.is_true()),
            ValueKind::Number => {
                if let Ok(i) = i64::try_from(v.clone()) {
                    Val::Int(i)
                } else {
                    Val::Float(f64::try_from(v.clone()).unwrap_or(f64::NAN))
                }
            }
            ValueKind::String => Val::Str(v.as_str().unwrap_or_default().to_string()),
            ValueKind::Seq | ValueKind::Iterable => Val::List(
                v.try_iter()
                    .map(|it| it.map(|x| Val::from_jinja(&x)).collect())
                    .unwrap_or_default(),
            ),
            ValueKind::Map => Val::Map(
                v.try_iter()
                    .map(|it| {
                        it.map(|k| {
                            let val = v.get_item(&k).unwrap_or_default();
                            (k.to_string(), Val::from_jinja(&val))
                        })
                        .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => Val::Str(v.to_string()),
        }
    }
}

/// Python's repr of a float (shortest round-trip, with ".0" for integers).
pub fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let s = format!("{f:?}");
    s
}

impl Serialize for Val {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Null => s.serialize_none(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Int(i) => s.serialize_i64(*i),
            Val::Float(f) => s.serialize_f64(*f),
            Val::Str(v) => s.serialize_str(v),
            Val::List(l) => {
                let mut seq = s.serialize_seq(Some(l.len()))?;
                for v in l {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Val::Map(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// `json.dumps(v, indent=2, ensure_ascii=False)`, as lm-eval hashes documents.
pub fn py_json_pretty(v: &Val) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}
