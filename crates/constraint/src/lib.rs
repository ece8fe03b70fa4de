//! Constrained decoding: the next token is sampled only from the tokens that keep the
//! output a prefix of something a grammar accepts — a JSON Schema, any JSON object, a Lark
//! grammar or a regular expression. The grammars are compiled and the token masks
//! computed by [llguidance](https://github.com/guidance-ai/llguidance).
//!
//! - [`ConstraintFactory`]: built once per loaded model, over its vocabulary
//!   ([`vocab`] says how token ids become bytes).
//! - [`Grammar`]: one compiled grammar (a request's `response_format`, say), checked and
//!   ready; cheap to [`Grammar::start`] once per generated sequence.
//! - [`Constraint`]: one sequence's state. Per token: [`Constraint::apply`] (or
//!   [`Constraint::mask`]) before sampling, [`Constraint::commit`] after. `commit`
//!   starts computing the next mask on the constraint's own helper thread, so it runs
//!   while the network computes the next logits; `apply` waits for it only if it has not
//!   finished.
//!
//! Every limit is counted, never timed (llguidance's lexer fuel and item counts, schema
//! and grammar sizes), so whether a grammar compiles or a mask succeeds never depends on
//! how busy the machine is, and a sequence's tokens never depend on what ran beside it.

mod constraint;
mod vocab;

use std::sync::Arc;

use llguidance::api::{GrammarWithLexer, ParserLimits, TopLevelGrammar};
use llguidance::toktrie::TokEnv;
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use serde_json::{json, Value};
use verity_tokenizer::Tokenizer;

pub use constraint::{Constraint, MaskStats};
pub use llguidance::toktrie::SimpleVob as TokenSet;

/// Largest grammar source accepted: a schema's JSON text, a Lark grammar or a regular
/// expression. Larger ones are refused before any compiling.
pub const MAX_GRAMMAR_BYTES: usize = 256 << 10;

/// Whitespace allowed between JSON tokens: one space, or one newline and indentation of
/// up to this many spaces or tabs (as llama.cpp's JSON grammar). Room to pretty-print,
/// none to pad forever.
const MAX_JSON_INDENT: usize = 24;

/// Compiles grammars for one model's vocabulary.
pub struct ConstraintFactory {
    factory: Arc<ParserFactory>,
    n_vocab: usize,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory")
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

/// A compiled grammar, checked to have a valid start; [`Grammar::start`] gives a
/// sequence its own [`Constraint`].
#[derive(Clone)]
pub struct Grammar {
    matcher: Arc<Matcher>,
    env: TokEnv,
    n_vocab: usize,
    kind: &'static str,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Grammar({})", self.kind)
    }
}

impl ConstraintFactory {
    /// Over `tok`'s vocabulary, for logits of `n_vocab` entries (the model's output rows;
    /// ids the tokenizer does not know are never allowed). Takes about 60 ms for a
    /// 32k-token vocabulary, 0.5 s for 150k: build it once per model.
    pub fn new(tok: &Tokenizer, n_vocab: usize) -> Result<Self, String> {
        let env = vocab::tok_env(tok, n_vocab)?;
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("{e:#}"))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits {
            // Error messages go to clients: no parser dumps.
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(ConstraintFactory {
            factory: Arc::new(factory),
            n_vocab: n_vocab.max(tok.vocab_size()),
        })
    }

    /// Output that validates against a JSON Schema, enforced exactly (as OpenAI's
    /// `strict: true`): every keyword the engine cannot enforce (`if`/`then`/`else`,
    /// `uniqueItems`, `not`, `oneOf`, `contains`, unknown `format`s, ...) is an error that
    /// names it, never ignored. Annotations (`title`, `description`, ...) and keywords
    /// JSON Schema does not define are ignored, as the standard says. `$ref` may point
    /// inside the schema only.
    pub fn json_schema(&self, schema: &Value) -> Result<Grammar, String> {
        check_size(schema.to_string().len(), "schema")?;
        let mut schema = schema.clone();
        match &mut schema {
            Value::Bool(_) => {}
            Value::Object(obj) => {
                if obj.contains_key("x-guidance") {
                    return Err("JSON Schema keyword \"x-guidance\" is not accepted: the server sets how JSON is laid out".into());
                }
            }
            _ => return Err("a JSON Schema must be an object or a boolean".into()),
        }
        if let Value::Object(obj) = &mut schema {
            obj.insert("x-guidance".into(), json_options());
        } else {
            // `true` (anything) or `false` (nothing): wrap so the options still apply.
            schema = json!({ "allOf": [schema], "x-guidance": json_options() });
        }
        self.compile(
            TopLevelGrammar::from_grammar(GrammarWithLexer::from_json_schema(schema)),
            "json_schema",
        )
        .map_err(|e| schema_error(&e))
    }

    /// Any JSON object (`response_format: {"type": "json_object"}`).
    pub fn json_object(&self) -> Result<Grammar, String> {
        self.json_schema(&json!({ "type": "object" }))
            .map(|g| Grammar {
                kind: "json_object",
                ..g
            })
    }

    /// A Lark grammar in llguidance's dialect (`start: ...`; `%json {...}` embeds a
    /// schema; `<|special|>` names a special token).
    pub fn lark(&self, grammar: &str) -> Result<Grammar, String> {
        check_size(grammar.len(), "grammar")?;
        if grammar.trim().is_empty() {
            return Err("the grammar is empty".into());
        }
        self.compile(TopLevelGrammar::from_lark(grammar.to_string()), "lark")
    }

    /// Text matching a regular expression (Rust `regex` syntax), anchored at both ends.
    pub fn regex(&self, regex: &str) -> Result<Grammar, String> {
        check_size(regex.len(), "regex")?;
        self.compile(TopLevelGrammar::from_regex(regex), "regex")
    }

    fn compile(&self, grammar: TopLevelGrammar, kind: &'static str) -> Result<Grammar, String> {
        let factory = self.factory.clone();
        // llguidance catches its own panics; this is for anything it misses.
        let parser = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            factory.create_parser(grammar)
        }))
        .map_err(|_| format!("the {kind} grammar could not be compiled"))?
        .map_err(|e| format!("{e:#}"))?;
        let mut matcher = Matcher::new(Ok(parser));
        // A grammar that cannot even start (nothing allowed, or past a limit at once) is
        // the request's fault: say so now rather than mid-generation.
        matcher.compute_mask().map_err(|e| {
            let e = first_line(&e.to_string());
            if e.contains("NoExtension") {
                "the grammar admits no output".to_string()
            } else {
                format!("the grammar cannot start: {e}")
            }
        })?;
        Ok(Grammar {
            matcher: Arc::new(matcher),
            env: self.factory.tok_env().clone(),
            n_vocab: self.n_vocab,
            kind,
        })
    }

    /// Logits length the constraints mask.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// The bytes a token stands for (special tokens: 0xFF, then their text).
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.factory.tok_env().tok_trie().token(token)
    }
}

impl Grammar {
    /// A fresh constraint at the grammar's start, its first mask already being computed
    /// on its helper thread.
    pub fn start(&self) -> Constraint {
        // A deep copy: each sequence has its own lexer cache, so no sequence waits on
        // another's lock and none's work depends on another's.
        Constraint::new(self.matcher.deep_clone(), self.n_vocab)
    }

    /// A constraint that has already read `bytes` (text the model generated before the
    /// constraint applied: for a tool call, what followed the trigger, which may begin in
    /// the middle of a token; [`Grammar::token_bytes`] spells tokens exactly). Fails if
    /// `bytes` cannot begin the grammar. Its first mask is being computed when it returns.
    pub fn start_after(&self, bytes: &[u8]) -> Result<Constraint, String> {
        let mut c = Constraint::new_idle(self.matcher.deep_clone(), self.n_vocab);
        c.consume_bytes(bytes)?;
        Ok(c)
    }

    /// The bytes token `token` spells, exactly (a byte-fallback or partial UTF-8 token is
    /// its bytes, not U+FFFD; a special token is 0xFF then its text).
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        self.env.tok_trie().token(token)
    }

    /// `json_schema`, `json_object`, `lark` or `regex`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

fn json_options() -> Value {
    let options = JsonCompileOptions {
        whitespace_flexible: false,
        whitespace_pattern: Some(format!("( |\\n[ \\t]{{0,{MAX_JSON_INDENT}}})")),
        ..JsonCompileOptions::default()
    };
    serde_json::to_value(options).expect("options serialize")
}

fn check_size(len: usize, what: &str) -> Result<(), String> {
    if len > MAX_GRAMMAR_BYTES {
        return Err(format!(
            "the {what} is {len} bytes; at most {MAX_GRAMMAR_BYTES} are accepted"
        ));
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let mut out: String = line.chars().take(400).collect();
    if out.len() < line.len() {
        out.push_str("...");
    }
    out
}

/// llguidance's schema errors, reworded where they would send a client to options it
/// cannot set.
fn schema_error(e: &str) -> String {
    let msg = e.trim();
    if let Some(rest) = msg.split("Unimplemented keys: ").nth(1) {
        let keys: String = rest
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        let keys = keys.trim().trim_start_matches('[').trim_end_matches(']');
        let plural = if keys.contains(',') { "s" } else { "" };
        return format!("JSON Schema keyword{plural} {keys} cannot be enforced by constrained decoding; remove {}", if plural.is_empty() { "it" } else { "them" });
    }
    if msg.contains("oneOf constraints are not supported") {
        return "JSON Schema keyword \"oneOf\" cannot be enforced by constrained decoding (exactly one match); use \"anyOf\"".into();
    }
    if let Some(rest) = msg.split("Unknown format: ").nth(1) {
        let f: String = rest
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect();
        return format!("JSON Schema keyword \"format\": format \"{f}\" is not supported");
    }
    if msg == "the grammar admits no output" {
        return "no JSON value satisfies the schema".into();
    }
    if let Some(rest) = msg.strip_prefix("Unsatisfiable schema: ") {
        let rest: String = rest.chars().take(300).collect();
        return format!(
            "no JSON value satisfies the schema: {}",
            rest.replace('\n', "; ")
        );
    }
    if msg.contains("does not fetch resources") {
        let what = msg.split('\'').nth(1).unwrap_or("?");
        return format!("JSON Schema reference '{what}' is not in the schema: only references inside it (\"#/$defs/...\") are followed, and \"$schema\" must name a known draft");
    }
    let mut out: String = msg.chars().take(600).collect();
    if out.len() < msg.len() {
        out.push_str("...");
    }
    format!("invalid JSON Schema: {}", out.replace('\n', "; "))
}
