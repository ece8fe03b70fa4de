//! Jinja chat templates, rendered the way Hugging Face `transformers` does (`trim_blocks`,
//! `lstrip_blocks`, loop controls, Python string methods, `raise_exception`, `strftime_now`).

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::TokenizerError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// "system", "user", "assistant", ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Instructions one rendering may run (minijinja's fuel): real templates, even with a
/// hundred tools, need well under a million; a template that loops without end stops here
/// with an error instead of holding a request (and a thread) forever.
const FUEL: u64 = 20_000_000;

/// Largest rendered prompt, bytes: far beyond any context, so only a runaway template
/// reaches it.
const MAX_OUTPUT: usize = 16 << 20;

/// A compiled chat template.
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

const NAME: &str = "chat";

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the chat template raised an exception: {msg}"),
    ))
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `strftime` of the current UTC time, for the common conversions (`%d %m %Y %y %b %B %a %A %H
/// %M %S %j %e %%`).
fn strftime_now(fmt: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    // Day of year: days since Jan 1 of this year, plus one.
    let yday = (1..=366)
        .find(|&k| civil_from_days(days - k).0 != y)
        .unwrap_or(1);
    let wd = days.rem_euclid(7) as usize;
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('a') => out.push_str(&DAYS[wd][..3]),
            Some('A') => out.push_str(DAYS[wd]),
            Some('H') => out.push_str(&format!("{:02}", tod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", tod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", tod % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Attribute set on a namespace just before one of its attributes is assigned, naming
/// that assignment (see [`guard_namespace_assignments`]).
const MARK: &str = "__verity_assign_mark";
/// Most values [`acyclic`] visits for one assignment.
const MAX_VISIT: usize = 100_000;

thread_local! {
    static NEXT_MARK: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// A fresh mark for one assignment.
fn next_mark() -> i64 {
    NEXT_MARK.with(|c| {
        let m = c.get() + 1;
        c.set(m);
        m
    })
}

/// `value | __verity_acyclic(mark)`: `value`, unless it reaches the namespace that carries
/// `mark`, which is the one it is about to be assigned into: that would make a cycle, and
/// printing or comparing a cyclic value recurses without end (minijinja overflows the
/// stack). A hostile chat template must get an error, not crash the process.
fn acyclic(value: Value, mark: i64) -> Result<Value, Error> {
    check_value(value, Some(mark))
}

/// `value | __verity_bound`: `value`, unless it holds more than [`MAX_VALUE_BYTES`] of text
/// (a template that doubles a string in a loop would otherwise exhaust the server's
/// memory in a few dozen instructions, before any fuel runs out).
fn bound(value: Value) -> Result<Value, Error> {
    check_value(value, None)
}

/// Largest value (bytes of text, summed over its parts) a template may assign.
const MAX_VALUE_BYTES: usize = 16 << 20;

fn check_value(value: Value, mark: Option<i64>) -> Result<Value, Error> {
    let mut stack = vec![value.clone()];
    let mut visited = 0;
    let mut bytes = 0usize;
    while let Some(v) = stack.pop() {
        visited += 1;
        if visited > MAX_VISIT {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "the template assigns too large a value",
            ));
        }
        if let Some(s) = v.as_str() {
            bytes += s.len();
            if bytes > MAX_VALUE_BYTES {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("the template builds a value of more than {MAX_VALUE_BYTES} bytes"),
                ));
            }
            continue;
        }
        if v.as_object().is_none() {
            continue;
        }
        if let Some(mark) = mark {
            if v.get_attr(MARK).ok().and_then(|m| i64::try_from(m).ok()) == Some(mark) {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "the template assigns a namespace into itself (a cycle)",
                ));
            }
        }
        if let Ok(items) = v.try_iter() {
            for k in items {
                if let Ok(item) = v.get_item(&k) {
                    if item.is_undefined() {
                        // A sequence iterates its items, not keys.
                        stack.push(k);
                    } else {
                        stack.push(item);
                    }
                }
            }
        }
    }
    Ok(value)
}

/// Rewrite every `{% set NS.ATTR = EXPR %}` so that the namespace is marked first and the
/// value checked by [`acyclic`]: `{% set NS.__mark = __verity_mark() %}{% set NS.ATTR =
/// (EXPR) | __verity_acyclic(NS.__mark) %}`. Whitespace control on the original tag is
/// kept on the outer tags; nothing is emitted between the two.
fn guard_namespace_assignments(source: &str) -> String {
    static SET_ATTR: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static SET_NAME: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    static SET_BLOCK: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = SET_ATTR.get_or_init(|| {
        regex::Regex::new(
            r"(?s)\{%(-|\+)?(\s*)set\s+([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\s*=(.*?)(-|\+)?%\}",
        )
        .expect("valid regex")
    });
    let guarded = re.replace_all(source, |c: &regex::Captures| {
        let open = c.get(1).map_or("", |m| m.as_str());
        let close = c.get(6).map_or("", |m| m.as_str());
        let (ns, attr, expr) = (&c[3], &c[4], &c[5]);
        format!(
            "{{%{open} set {ns}.{MARK} = __verity_mark() %}}{{% set {ns}.{attr} = ({expr}) | __verity_acyclic({ns}.{MARK}) {close}%}}"
        )
    });
    // `{% set NAME = EXPR %}` and `{% set NAME %}...{% endset %}`: bounded in size.
    let re = SET_NAME.get_or_init(|| {
        regex::Regex::new(r"(?s)\{%(-|\+)?\s*set\s+([A-Za-z_][A-Za-z0-9_]*)\s*=(.*?)(-|\+)?%\}")
            .expect("valid regex")
    });
    let guarded = re.replace_all(&guarded, |c: &regex::Captures| {
        let open = c.get(1).map_or("", |m| m.as_str());
        let close = c.get(4).map_or("", |m| m.as_str());
        format!(
            "{{%{open} set {} = ({}) | __verity_bound {close}%}}",
            &c[2], &c[3]
        )
    });
    let re = SET_BLOCK.get_or_init(|| {
        regex::Regex::new(r"\{%(-|\+)?\s*set\s+([A-Za-z_][A-Za-z0-9_]*)\s*(-|\+)?%\}")
            .expect("valid regex")
    });
    let guarded = re.replace_all(&guarded, |c: &regex::Captures| {
        let open = c.get(1).map_or("", |m| m.as_str());
        let close = c.get(3).map_or("", |m| m.as_str());
        format!("{{%{open} set {} | __verity_bound {close}%}}", &c[2])
    });
    // A macro's arguments are checked as it starts: a recursive macro that doubles its
    // argument stops at twice the bound.
    static MACRO: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = MACRO.get_or_init(|| {
        regex::Regex::new(
            r"(?s)(\{%(-|\+)?\s*macro\s+[A-Za-z_][A-Za-z0-9_]*\s*\((.*?)\)\s*(-|\+)?%\})",
        )
        .expect("valid regex")
    });
    re.replace_all(&guarded, |c: &regex::Captures| {
        let params = macro_params(&c[3]);
        if params.is_empty() {
            return c[1].to_string();
        }
        // Whitespace control after the macro tag passes to the check that now follows it.
        let close = c.get(4).map_or("", |m| m.as_str());
        format!(
            "{}{{% set __verity_args = [{}] | __verity_bound {close}%}}",
            &c[1],
            params.join(", ")
        )
    })
    .into_owned()
}

/// Parameter names of a macro signature (`a, b=1, c='x,y'` → a, b, c).
fn macro_params(sig: &str) -> Vec<String> {
    let mut names = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    let mut push = |part: &str| {
        let name = part.split('=').next().unwrap_or("").trim();
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(name.to_string());
        }
    };
    for (i, ch) in sig.char_indices() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                push(&sig[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&sig[start..]);
    names
}

impl ChatTemplate {
    /// Compile `source` (a Jinja chat template) with the model's BOS and EOS strings.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TokenizerError> {
        let original = source.to_string();
        let source = guard_namespace_assignments(source);
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_filter("tojson", crate::pyjson::tojson);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_function("__verity_mark", next_mark);
        env.add_filter("__verity_acyclic", acyclic);
        env.add_filter("__verity_bound", bound);
        env.add_template_owned(NAME, source).map_err(|e| {
            TokenizerError::Template(format!("the template does not compile: {e:#}"))
        })?;
        Ok(ChatTemplate {
            source: original,
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The template's source, as the model file gives it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render a conversation of text messages. Variables: `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, `tools` (none).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_values(Value::from_serialize(messages), None, add_generation_prompt)
    }

    /// Render messages given as JSON, as transformers' `apply_chat_template` receives
    /// them (`content` may be null; `tool_calls`, `tool_call_id`, `name` are passed on),
    /// with `tools` (a list of tool schemas) when given.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_values(
            Value::from_serialize(messages),
            tools.map(Value::from_serialize),
            add_generation_prompt,
        )
    }

    fn render_values(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            tools => tools.unwrap_or(Value::from(())),
        };
        let mut out = Bounded(Vec::new());
        tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
            let msg = if e.kind() == ErrorKind::OutOfFuel {
                "the chat template ran too long (it may loop without end); the model file's template needs fixing".to_string()
            } else if out.0.len() >= MAX_OUTPUT {
                format!("the chat template's output passed {MAX_OUTPUT} bytes; the model file's template needs fixing")
            } else {
                format!("rendering failed: {e:#}")
            };
            TokenizerError::Template(msg)
        })?;
        String::from_utf8(out.0)
            .map_err(|_| TokenizerError::Template("the chat template wrote invalid UTF-8".into()))
    }
}

/// A writer that refuses to grow past [`MAX_OUTPUT`].
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            self.0.resize(MAX_OUTPUT, 0);
            return Err(std::io::Error::other("template output too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn namespaces_cannot_hold_themselves() {
        let render = |src: &str| {
            ChatTemplate::new(src, "", "")
                .and_then(|t| t.render(&[ChatMessage::new("user", "hi")], false))
        };
        let ok = "{% set ns = namespace(n=0, s='') %}{% for m in messages %}{%- set ns.n = ns.n + 1 -%}{% set ns.s = m.content %}{% endfor %}{{ ns.n }} {{ ns.s }}";
        assert_eq!(render(ok).unwrap(), "1 hi");
        for bad in [
            "{% set ns = namespace(n=0) %}{% set ns.n = ns %}{{ ns.n }}",
            "{% set ns = namespace(n=0) %}{% set ns.n = [1, {'a': ns}] %}{{ ns }}",
            "{% set a = namespace() %}{% set b = namespace(x=a) %}{% set a.y = b %}{{ a }}",
            "{% macro m(p, q) %}{% set p.x = q %}{% endmacro %}{% set ns = namespace() %}{{ m(ns, ns) }}{{ ns }}",
        ] {
            let e = render(bad).unwrap_err().to_string();
            assert!(e.contains("cycle"), "{bad}: {e}");
        }
    }

    /// The rewrite changes no output: every real template in the test assets renders the
    /// same with and without it (tests/chat_templates.rs checks the outputs themselves).
    #[test]
    fn guard_changes_no_real_template_output() {
        let dir = std::env::var_os("VERITY_ASSETS")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::Path::new(&h).join(".cache/verity/assets"))
            })
            .map(|a| a.join("chat-templates"));
        let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
            eprintln!("no chat-templates assets (scripts/fetch-vocab-vectors): skipped");
            return;
        };
        let msgs = vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi there"),
            ChatMessage::new("assistant", "Hello!"),
            ChatMessage::new("user", "What is 2+2?"),
        ];
        let mut compared = 0;
        for e in entries.flatten() {
            let src = std::fs::read_to_string(e.path()).unwrap_or_default();
            let guarded =
                ChatTemplate::new(&src, "<s>", "</s>").and_then(|t| t.render(&msgs, true));
            let mut plain = ChatTemplate::new("", "<s>", "</s>").unwrap();
            if plain.env.add_template_owned(NAME, src.clone()).is_err() {
                continue;
            }
            let plain = plain.render(&msgs, true);
            match (guarded, plain) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", e.path().display()),
                (Err(_), Err(_)) => {}
                (a, b) => panic!("{}: {a:?} vs {b:?}", e.path().display()),
            }
            compared += 1;
        }
        eprintln!("{compared} templates compared");
    }

    #[test]
    fn strftime_shapes() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
        assert_eq!(strftime_now("100%%".into()), "100%");
    }
}
