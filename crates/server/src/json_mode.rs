//! Incremental check that text is a prefix of one JSON value, for `response_format`
//! `{"type": "json_object"}`: the sampler only keeps tokens whose text keeps the output
//! such a prefix.

/// Where the scanner is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ctx {
    /// Inside an object, expecting a key or `}` (right after `{`).
    ObjectStart,
    /// Inside an object, expecting a key (after `,`).
    ObjectKey,
    /// After a key, expecting `:`.
    Colon,
    /// Expecting a value.
    Value,
    /// Inside an array right after `[`: a value or `]`.
    ArrayStart,
    /// After a value inside a container: `,` or the closer.
    AfterValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    None,
    /// In a string; `key` tells whether it is an object key; `escape` after a backslash;
    /// `unicode` counts remaining hex digits of \uXXXX.
    Str {
        key: bool,
        escape: bool,
        unicode: u8,
    },
    Number,
    /// A literal (`true`, `false`, `null`) and how much of it is matched.
    Literal {
        word: &'static str,
        matched: u8,
    },
}

/// Longest run of whitespace allowed between tokens: stops a model from padding forever.
const MAX_WHITESPACE: usize = 32;

/// A JSON prefix scanner. `push_str` advances it; `accepts` tests without advancing.
#[derive(Clone, Debug)]
pub struct JsonPrefix {
    stack: Vec<u8>,
    ctx: Ctx,
    lex: Lex,
    started: bool,
    complete: bool,
    failed: bool,
    whitespace: usize,
    number: String,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        JsonPrefix {
            stack: Vec::new(),
            ctx: Ctx::Value,
            lex: Lex::None,
            started: false,
            complete: false,
            failed: false,
            whitespace: 0,
            number: String::new(),
        }
    }
}

impl JsonPrefix {
    /// One complete top-level object has been read.
    pub fn is_complete(&self) -> bool {
        self.complete && !self.failed
    }

    /// Whether `s` can follow what was read so far.
    pub fn accepts(&self, s: &str) -> bool {
        let mut c = self.clone();
        c.push_str(s);
        !c.failed
    }

    pub fn push_str(&mut self, s: &str) {
        for ch in s.chars() {
            if self.failed {
                return;
            }
            self.push(ch);
        }
    }

    fn fail(&mut self) {
        self.failed = true;
    }

    fn push(&mut self, ch: char) {
        match self.lex {
            Lex::Str {
                key,
                escape,
                unicode,
            } => {
                if unicode > 0 {
                    if ch.is_ascii_hexdigit() {
                        self.lex = Lex::Str {
                            key,
                            escape: false,
                            unicode: unicode - 1,
                        };
                    } else {
                        self.fail();
                    }
                } else if escape {
                    match ch {
                        '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => {
                            self.lex = Lex::Str {
                                key,
                                escape: false,
                                unicode: 0,
                            }
                        }
                        'u' => {
                            self.lex = Lex::Str {
                                key,
                                escape: false,
                                unicode: 4,
                            }
                        }
                        _ => self.fail(),
                    }
                } else if ch == '\\' {
                    self.lex = Lex::Str {
                        key,
                        escape: true,
                        unicode: 0,
                    };
                } else if ch == '"' {
                    self.lex = Lex::None;
                    self.ctx = if key { Ctx::Colon } else { self.after_value() };
                } else if (ch as u32) < 0x20 {
                    self.fail();
                }
                return;
            }
            Lex::Literal { word, matched } => {
                if word.as_bytes()[matched as usize] as char == ch {
                    let matched = matched + 1;
                    if matched as usize == word.len() {
                        self.lex = Lex::None;
                        self.ctx = self.after_value();
                    } else {
                        self.lex = Lex::Literal { word, matched };
                    }
                } else {
                    self.fail();
                }
                return;
            }
            Lex::Number => {
                if ch.is_ascii_digit() || matches!(ch, '.' | 'e' | 'E' | '+' | '-') {
                    self.number.push(ch);
                    if !number_prefix_ok(&self.number) {
                        self.fail();
                    }
                    return;
                }
                if !number_complete(&self.number) {
                    self.fail();
                    return;
                }
                self.lex = Lex::None;
                self.ctx = self.after_value();
                // fall through: this char is structural
            }
            Lex::None => {}
        }

        if ch.is_whitespace() {
            if !matches!(ch, ' ' | '\n' | '\r' | '\t') {
                self.fail();
                return;
            }
            self.whitespace += 1;
            if self.whitespace > MAX_WHITESPACE || self.complete {
                self.fail();
            }
            return;
        }
        self.whitespace = 0;
        if self.complete {
            self.fail();
            return;
        }
        match self.ctx {
            Ctx::Value | Ctx::ArrayStart => {
                if self.ctx == Ctx::ArrayStart && ch == ']' {
                    self.close(b'[');
                    return;
                }
                // The top level must be an object (json_object mode).
                if !self.started && ch != '{' {
                    self.fail();
                    return;
                }
                self.started = true;
                match ch {
                    '{' => {
                        self.stack.push(b'{');
                        self.ctx = Ctx::ObjectStart;
                    }
                    '[' => {
                        self.stack.push(b'[');
                        self.ctx = Ctx::ArrayStart;
                    }
                    '"' => {
                        self.lex = Lex::Str {
                            key: false,
                            escape: false,
                            unicode: 0,
                        }
                    }
                    't' => {
                        self.lex = Lex::Literal {
                            word: "true",
                            matched: 1,
                        }
                    }
                    'f' => {
                        self.lex = Lex::Literal {
                            word: "false",
                            matched: 1,
                        }
                    }
                    'n' => {
                        self.lex = Lex::Literal {
                            word: "null",
                            matched: 1,
                        }
                    }
                    '-' | '0'..='9' => {
                        self.number.clear();
                        self.number.push(ch);
                        self.lex = Lex::Number;
                    }
                    _ => self.fail(),
                }
            }
            Ctx::ObjectStart | Ctx::ObjectKey => match ch {
                '"' => {
                    self.lex = Lex::Str {
                        key: true,
                        escape: false,
                        unicode: 0,
                    }
                }
                '}' if self.ctx == Ctx::ObjectStart => self.close(b'{'),
                _ => self.fail(),
            },
            Ctx::Colon => {
                if ch == ':' {
                    self.ctx = Ctx::Value;
                } else {
                    self.fail();
                }
            }
            Ctx::AfterValue => match (ch, self.stack.last()) {
                (',', Some(b'{')) => self.ctx = Ctx::ObjectKey,
                (',', Some(b'[')) => self.ctx = Ctx::Value,
                ('}', Some(b'{')) => self.close(b'{'),
                (']', Some(b'[')) => self.close(b'['),
                _ => self.fail(),
            },
        }
    }

    fn close(&mut self, open: u8) {
        if self.stack.pop() != Some(open) {
            self.fail();
            return;
        }
        self.ctx = self.after_value();
    }

    fn after_value(&mut self) -> Ctx {
        if self.stack.is_empty() {
            self.complete = true;
        }
        Ctx::AfterValue
    }
}

/// Whether `s` can still grow into a JSON number.
fn number_prefix_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && b[i] == b'-' {
        i += 1;
    }
    if i == b.len() {
        return true;
    }
    if b[i] == b'0' {
        i += 1;
    } else if b[i].is_ascii_digit() {
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    } else {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == b.len() {
            return true;
        }
        if i == start {
            return false;
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    i == b.len()
}

fn number_complete(s: &str) -> bool {
    number_prefix_ok(s) && s.as_bytes().last().is_some_and(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> JsonPrefix {
        let mut j = JsonPrefix::default();
        j.push_str(s);
        j
    }

    #[test]
    fn accepts_prefixes_of_objects() {
        for s in [
            "",
            "{",
            r#"{"a""#,
            r#"{"a": [1, 2.5e-3, true, null, "x\u00e9""#,
            r#"{"a":{"b":-0.5}"#,
        ] {
            assert!(!read(s).failed, "{s}");
        }
        assert!(read("{\"a\": [1, {}]}").is_complete());
        assert!(read("{}").is_complete());
    }

    #[test]
    fn rejects_what_cannot_be_json() {
        for s in [
            "[1]",
            "hello",
            "{a",
            "{\"a\" 1",
            "{\"a\":01",
            "{\"a\":tru e",
            "{}}",
            "{} x",
            "{\"a\":[1,]",
        ] {
            assert!(read(s).failed, "{s}");
        }
    }
}
