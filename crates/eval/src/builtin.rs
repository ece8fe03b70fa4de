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
        // lm_eval/tasks/wikitext/preprocess_wikitext.py
        "preprocess_wikitext.wikitext_detokenizer" => {
            Ok(Val::Str(wikitext_detokenizer(str_field(doc, "page")?)))
        }
        other => bail!("unknown function '{other}' (built in: preprocess_winogrande.doc_to_text, preprocess_winogrande.doc_to_target, preprocess_winogrande.doc_to_choice, preprocess_wikitext.wikitext_detokenizer)"),
    }
}

/// lm-eval's `wikitext_detokenizer`, step for step (Python's `\s` spelled out: Unicode
/// whitespace plus U+001C..U+001F).
pub fn wikitext_detokenizer(page: &str) -> String {
    static RES: OnceLock<Vec<(regex::Regex, &'static str)>> = OnceLock::new();
    const WS: &str = r"[\s\x1c-\x1f]";
    let res = RES.get_or_init(|| {
        [
            (r"\(WS*([^\)]*?)WS*\)", "(${1})"),
            (r"\[WS*([^\]]*?)WS*\]", "[${1}]"),
            (r"\{WS*([^}]*?)WS*\}", "{${1}}"),
            (r#""WS*([^"]*?)WS*""#, "\"${1}\""),
            (r"'WS*([^']*?)WS*'", "'${1}'"),
        ]
        .iter()
        .map(|(p, r)| {
            (
                regex::Regex::new(&p.replace("WS", WS)).expect("valid regex"),
                *r,
            )
        })
        .collect()
    });
    let mut s = page.replace("s '", "s'");
    // re.sub(r"/' [0-9]/", r"/'[0-9]/", string): a literal replacement.
    static SLASH: OnceLock<regex::Regex> = OnceLock::new();
    let slash = SLASH.get_or_init(|| regex::Regex::new(r"/' [0-9]/").expect("valid regex"));
    s = slash.replace_all(&s, "/'[0-9]/").into_owned();
    for (a, b) in [
        (" @-@ ", "-"),
        (" @,@ ", ","),
        (" @.@ ", "."),
        (" : ", ": "),
        (" ; ", "; "),
        (" . ", ". "),
        (" ! ", "! "),
        (" ? ", "? "),
        (" , ", ", "),
    ] {
        s = s.replace(a, b);
    }
    for (re, rep) in res {
        s = re.replace_all(&s, *rep).into_owned();
    }
    for (a, b) in [
        ("= = = =", "===="),
        ("= = =", "==="),
        ("= =", "=="),
        (" \u{b0} ", "\u{b0}"),
        (" \n", "\n"),
        ("\n ", "\n"),
        (" N ", " 1 "),
        (" 's", "'s"),
    ] {
        s = s.replace(a, b);
    }
    s
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

    /// Expected outputs printed by lm-eval 0.4.13's `preprocess_wikitext.wikitext_detokenizer`.
    #[test]
    fn wikitext_detokenizer_matches_python() {
        let cases: Vec<(String, String)> = serde_json::from_str(
            r#"[[" = Valkyria Chronicles III = \n \n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the Battlefield 3 ) , commonly referred to as Valkyria Chronicles III outside Japan , is a tactical role @-@ playing video game developed by Sega and Media.Vision for the PlayStation Portable . Released in January 2011 in Japan , it is the third game in the Valkyria series . \n", " = Valkyria Chronicles III =\n\nSenjō no Valkyria 3: Unrecorded Chronicles (Japanese: 戦場のヴァルキュリア3, lit. Valkyria of the Battlefield 3), commonly referred to as Valkyria Chronicles III outside Japan, is a tactical role-playing video game developed by Sega and Media.Vision for the PlayStation Portable. Released in January 2011 in Japan, it is the third game in the Valkyria series.\n"], [" = = Gameplay = = \n The game 's 1 @,@ 000 players scored 3 @.@ 5 points ; \" quoted text \" and ' single ' ( a ( nested ) b ) [ x ] { y } 30 ° C , N / A ! Why ? the players ' ball /' 5/ \n = = = = Deep = = = = \n", " == Gameplay ==\nThe game's 1,000 players scored 3.5 points; \"quoted text\" and' single '(a ( nested) b ) [x] {y} 30°C, 1 / A! Why? the players' ball /'[0-9]/\n==== Deep ====\n"], ["no changes here", "no changes here"]]"#,
        )
        .unwrap();
        for (page, want) in cases {
            assert_eq!(wikitext_detokenizer(&page), want);
        }
    }

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
