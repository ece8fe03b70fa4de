//! lm-eval's `doc_to_*` fields: a document field name, a Jinja template, a literal list,
//! or one of a few built-in functions (`!function ...` in lm-eval's YAML).

use std::sync::OnceLock;

use anyhow::{anyhow, bail};
use minijinja::{Environment, Error, ErrorKind, State, Value};

use crate::value::Val;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_unknown_method_callback(methods);
        env.set_keep_trailing_newline(true);
        env
    })
}

/// Python's methods (minijinja-contrib's pycompat) plus `list.index`, which lm-eval's ARC
/// template uses.
fn methods(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if method == "index" && value.as_object().is_some() && value.as_str().is_none() {
        if let (Some(what), Ok(iter)) = (args.first(), value.try_iter()) {
            for (i, x) in iter.enumerate() {
                if &x == what {
                    return Ok(Value::from(i));
                }
            }
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{what} is not in list"),
            ));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Render a Jinja template against a document.
pub fn render(template: &str, doc: &Val) -> anyhow::Result<String> {
    env()
        .render_str(template, doc.to_jinja())
        .map_err(|e| anyhow!("template {template:?}: {e}"))
}

/// Evaluate `{{ expr }}` as a value (what lm-eval gets by rendering and `literal_eval`).
pub fn eval_expr(expr: &str, doc: &Val) -> anyhow::Result<Val> {
    let e = env()
        .compile_expression(expr)
        .map_err(|e| anyhow!("expression {expr:?}: {e}"))?;
    let v = e
        .eval(doc.to_jinja())
        .map_err(|e| anyhow!("expression {expr:?}: {e}"))?;
    Ok(Val::from_jinja(&v))
}

/// If `s` is exactly one `{{ ... }}` expression, the expression.
fn single_expr(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%"))
        .then_some(inner.trim())
}

/// A `doc_to_*` specification from a task config.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    /// A string: a column name, a template, or literal text.
    Str(String),
    /// A literal list (e.g. `doc_to_choice: ["no", "yes"]`).
    List(Vec<String>),
    /// An integer (e.g. a fixed target index).
    Int(i64),
    /// A built-in function (lm-eval's `!function module.name`).
    Function(String),
}

impl Spec {
    pub fn from_json(v: &serde_json::Value) -> anyhow::Result<Spec> {
        Ok(match v {
            serde_json::Value::String(s) => match s.strip_prefix("!function ") {
                Some(f) => Spec::Function(f.trim().to_string()),
                None => Spec::Str(s.clone()),
            },
            serde_json::Value::Array(a) => Spec::List(
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect(),
            ),
            serde_json::Value::Number(n) if n.is_i64() => Spec::Int(n.as_i64().unwrap_or(0)),
            other => bail!("unsupported doc_to_* value {other}"),
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Spec::Str(s) => s.clone().into(),
            Spec::List(l) => l.clone().into(),
            Spec::Int(i) => (*i).into(),
            Spec::Function(f) => format!("!function {f}").into(),
        }
    }
}

/// What a field evaluates to for a document.
pub fn apply(spec: &Spec, doc: &Val) -> anyhow::Result<Val> {
    match spec {
        Spec::Int(i) => Ok(Val::Int(*i)),
        Spec::List(l) => Ok(Val::List(l.iter().cloned().map(Val::Str).collect())),
        Spec::Function(f) => crate::builtin::call(f, doc),
        Spec::Str(s) => {
            if let Some(v) = doc.get(s) {
                return Ok(v.clone());
            }
            if let Some(expr) = single_expr(s) {
                return eval_expr(expr, doc);
            }
            if s.contains("{{") || s.contains("{%") {
                return render(s, doc).map(Val::Str);
            }
            Ok(Val::Str(s.clone()))
        }
    }
}

/// `doc_to_text`: a string (or, for multiple-input tasks, an index).
pub fn text(spec: &Spec, doc: &Val) -> anyhow::Result<Val> {
    let v = apply(spec, doc)?;
    Ok(match v {
        Val::Str(_) | Val::Int(_) => v,
        other => Val::Str(other.to_text()),
    })
}

/// `doc_to_choice`: a list of strings.
pub fn choices(spec: &Spec, doc: &Val) -> anyhow::Result<Vec<String>> {
    match apply(spec, doc)? {
        Val::List(l) => Ok(l.iter().map(Val::to_text).collect()),
        Val::Map(m) => Ok(m.iter().map(|(_, v)| v.to_text()).collect()),
        Val::Str(s) => match crate::data::parse_json_ordered(&s.replace('\'', "\"")) {
            Ok(Val::List(l)) => Ok(l.iter().map(Val::to_text).collect()),
            _ => bail!("doc_to_choice gave {s:?}, not a list"),
        },
        other => bail!("doc_to_choice gave {}, not a list", other.to_text()),
    }
}

/// `doc_to_target` as lm-eval reads it: an index when the text is a number and there
/// are choices, else the text.
pub fn target(spec: &Spec, doc: &Val, has_choices: bool) -> anyhow::Result<Val> {
    let v = apply(spec, doc)?;
    Ok(match v {
        Val::Str(s) if has_choices && !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) => {
            Val::Int(s.parse().unwrap_or(-1))
        }
        Val::Bool(b) => Val::Int(b as i64),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arc_doc() -> Val {
        crate::data::parse_json_ordered(
            r#"{"question": "Q?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}"#,
        )
        .unwrap()
    }

    #[test]
    fn arc_fields() {
        let d = arc_doc();
        let t = text(&Spec::Str("Question: {{question}}\nAnswer:".into()), &d).unwrap();
        assert_eq!(t, Val::Str("Question: Q?\nAnswer:".into()));
        let c = choices(&Spec::Str("{{choices.text}}".into()), &d).unwrap();
        assert_eq!(c, vec!["a", "b"]);
        let g = target(
            &Spec::Str("{{choices.label.index(answerKey)}}".into()),
            &d,
            true,
        )
        .unwrap();
        assert_eq!(g, Val::Int(1));
    }

    #[test]
    fn lambada_fields() {
        let d = crate::data::parse_json_ordered(r#"{"text": "a b c"}"#).unwrap();
        let t = text(&Spec::Str("{{text.split(' ')[:-1]|join(' ')}}".into()), &d).unwrap();
        assert_eq!(t, Val::Str("a b".into()));
        let g = target(&Spec::Str("{{' '+text.split(' ')[-1]}}".into()), &d, false).unwrap();
        assert_eq!(g, Val::Str(" c".into()));
    }
}
