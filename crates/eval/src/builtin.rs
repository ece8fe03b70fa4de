//! lm-eval's Python helpers that built-in tasks use (`!function` and `process_docs`),
//! ported line for line.

use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context as _};

use crate::value::Val;

fn field<'a>(doc: &'a Val, k: &str) -> anyhow::Result<&'a Val> {
    doc.get(k)
        .ok_or_else(|| anyhow!("document has no field '{k}'"))
}

fn str_field<'a>(doc: &'a Val, k: &str) -> anyhow::Result<&'a str> {
    field(doc, k)?
        .as_str()
        .ok_or_else(|| anyhow!("document field '{k}' is not a string"))
}

/// `!function NAME` fields.
pub fn call(name: &str, doc: &Val) -> anyhow::Result<Val> {
    match name {
        // lm_eval/tasks/winogrande/preprocess_winogrande.py
        "preprocess_winogrande.doc_to_text" => match str_field(doc, "answer")? {
            "1" => Ok(Val::Int(0)),
            "2" => Ok(Val::Int(1)),
            other => bail!("winogrande answer {other:?} is neither \"1\" nor \"2\""),
        },
        "preprocess_winogrande.doc_to_target" => {
            let s = str_field(doc, "sentence")?;
            let idx = s.find('_').context("winogrande sentence without '_'")? + 1;
            Ok(Val::Str(py_strip(&s[idx..]).to_string()))
        }
        "preprocess_winogrande.doc_to_choice" => {
            let s = str_field(doc, "sentence")?;
            let idx = s.find('_').context("winogrande sentence without '_'")?;
            let opts = [str_field(doc, "option1")?, str_field(doc, "option2")?];
            Ok(Val::List(
                opts.iter()
                    .map(|o| Val::Str(format!("{}{o}", &s[..idx])))
                    .collect(),
            ))
        }
        other => bail!("unknown function '{other}' (built in: preprocess_winogrande.doc_to_text, preprocess_winogrande.doc_to_target, preprocess_winogrande.doc_to_choice)"),
    }
}

/// `process_docs` functions.
pub fn process_docs(name: &str, docs: Vec<Val>) -> anyhow::Result<Vec<Val>> {
    match name {
        "utils.process_docs" | "hellaswag" => docs.into_iter().map(hellaswag_doc).collect(),
        // google/boolq rows (`answer: bool`) as super_glue's (`label: 0|1`), which
        // lm-eval's boolq reads.
        "boolq_label" => docs
            .into_iter()
            .map(|mut d| {
                let label = match field(&d, "answer")? {
                    Val::Bool(b) => *b as i64,
                    Val::Int(i) => *i,
                    _ => bail!("boolq answer is not a boolean"),
                };
                d.set("label", Val::Int(label));
                Ok(d)
            })
            .collect(),
        // OLMo's LAMBADA requests (the OpenAI test set) back to lm-eval's `{"text": ...}`.
        "olmo_lambada" => docs
            .into_iter()
            .map(|d| {
                let q = str_field(field(&d, "doc")?, "query")?.to_string();
                let a = field(field(&d, "doc")?, "answers_text")?;
                let a = match a {
                    Val::List(l) => l.first().and_then(Val::as_str).unwrap_or(""),
                    _ => "",
                };
                Ok(Val::Map(vec![("text".into(), Val::Str(format!("{q} {a}")))]))
            })
            .collect(),
        // OLMo's GSM8K requests back to the dataset's `{"question", "answer"}`.
        "olmo_gsm8k" => docs
            .into_iter()
            .map(|d| {
                let doc = field(&d, "doc")?;
                Ok(Val::Map(vec![
                    ("question".into(), field(doc, "question")?.clone()),
                    ("answer".into(), field(doc, "answer")?.clone()),
                ]))
            })
            .collect(),
        other => bail!("unknown process_docs '{other}' (built in: utils.process_docs for hellaswag, boolq_label, olmo_lambada, olmo_gsm8k)"),
    }
}

fn hellaswag_preprocess(text: &str) -> String {
    static BRACKETS: OnceLock<regex::Regex> = OnceLock::new();
    let re = BRACKETS.get_or_init(|| regex::Regex::new(r"\[.*?\]").expect("valid regex"));
    let t = py_strip(text).replace(" [title]", ". ");
    let t = re.replace_all(&t, "");
    t.replace("  ", " ")
}

/// lm_eval/tasks/hellaswag/utils.py `process_docs`.
fn hellaswag_doc(mut doc: Val) -> anyhow::Result<Val> {
    let ctx = format!(
        "{} {}",
        str_field(&doc, "ctx_a")?,
        py_capitalize(str_field(&doc, "ctx_b")?)
    );
    let query = hellaswag_preprocess(&format!("{}: {ctx}", str_field(&doc, "activity_label")?));
    let choices = match field(&doc, "endings")? {
        Val::List(l) => l
            .iter()
            .map(|e| {
                Ok(Val::Str(hellaswag_preprocess(
                    e.as_str().context("ending is not a string")?,
                )))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
        _ => bail!("hellaswag endings is not a list"),
    };
    let gold = match field(&doc, "label")? {
        Val::Str(s) => s.trim().parse::<i64>().context("hellaswag label")?,
        Val::Int(i) => *i,
        _ => bail!("hellaswag label is not a number"),
    };
    doc.set("query", Val::Str(query));
    doc.set("choices", Val::List(choices));
    doc.set("gold", Val::Int(gold));
    Ok(doc)
}

/// Python's `str.strip()` (Unicode whitespace).
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// Python's `str.capitalize()`: first character title-cased, the rest lower-cased.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_matches_python() {
        // utils.preprocess("  Roof shingle removal: [header] A man is sitting [title] on a roof.  ")
        assert_eq!(
            hellaswag_preprocess(
                "  Roof shingle removal: [header] A man is sitting [title] on a roof.  "
            ),
            "Roof shingle removal: A man is sitting. on a roof."
        );
        assert_eq!(py_capitalize("then, the man"), "Then, the man");
        assert_eq!(py_capitalize("A MAN"), "A man");
    }
}
