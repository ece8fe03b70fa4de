//! The constraint module against the default model's real vocabulary: masks allow exactly
//! the valid continuations, end of generation exactly at completion, unsupported schema
//! keywords are refused by name, limits answer quickly, and a constraint can start late.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use verity_constraint::{Constraint, ConstraintFactory};

struct Fixture {
    factory: ConstraintFactory,
    eog: Vec<u32>,
}

fn fx() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let path = verity_store::resolve(None).expect("default model");
        let model = verity_model::load(&path).expect("load");
        let factory = ConstraintFactory::new(&model.tokenizer, model.hparams.n_vocab).unwrap();
        Fixture {
            factory,
            eog: model.tokenizer.end_of_generation_ids(),
        }
    })
}

/// Checks the mask against the language: a token is allowed iff the prefix plus its bytes
/// still begins some word; end of generation iff the prefix is a word.
fn assert_exact(c: &mut Constraint, prefix: &[u8], language: &[&[u8]]) {
    let f = fx();
    let mask = c.mask().unwrap().clone();
    for t in 0..f.factory.n_vocab() as u32 {
        let expected = if f.eog.contains(&t) {
            language.contains(&prefix)
        } else {
            let b = f.factory.token_bytes(t);
            let special = b.len() > 1 && b[0] == 0xFF;
            let mut p = prefix.to_vec();
            p.extend_from_slice(b);
            !b.is_empty() && !special && language.iter().any(|w| w.starts_with(&p))
        };
        assert_eq!(
            mask.is_allowed(t),
            expected,
            "after {:?}, token {t} {:?}",
            String::from_utf8_lossy(prefix),
            String::from_utf8_lossy(f.factory.token_bytes(t))
        );
    }
}

/// The longest allowed token that spells the start of `rest`.
fn longest_token(c: &mut Constraint, rest: &[u8]) -> u32 {
    let f = fx();
    let mask = c.mask().unwrap().clone();
    let mut best: Option<(u32, usize)> = None;
    mask.iter_set_entries(|t| {
        let b = f.factory.token_bytes(t as u32);
        if !b.is_empty() && rest.starts_with(b) && best.is_none_or(|(_, l)| b.len() > l) {
            best = Some((t as u32, b.len()));
        }
    });
    best.expect("an allowed token spells the text").0
}

/// Walk `word` token by token, checking every mask on the way; returns whether the
/// constraint said complete at the end.
fn walk_exact(c: &mut Constraint, word: &[u8], language: &[&[u8]]) -> bool {
    let f = fx();
    let mut at = 0;
    let mut complete = false;
    while at < word.len() {
        assert_exact(c, &word[..at], language);
        let t = longest_token(c, &word[at..]);
        complete = c.commit(t).unwrap();
        at += f.factory.token_bytes(t).len();
    }
    if !complete {
        assert_exact(c, word, language);
    }
    complete
}

#[test]
fn regex_masks_are_exact() {
    let g = fx().factory.regex("(cat|dog|bird)s?").unwrap();
    let language: &[&[u8]] = &[b"cat", b"cats", b"dog", b"dogs", b"bird", b"birds"];
    for word in language {
        let mut c = g.start();
        let complete = walk_exact(&mut c, word, language);
        // After an 's' nothing can follow: the constraint ends by itself.
        assert_eq!(complete, word.ends_with(b"s"), "{word:?}");
        assert!(c.is_accepting());
    }
}

#[test]
fn lark_masks_are_exact() {
    let g = fx()
        .factory
        .lark(
            r#"start: "yes" | "no" | "maybe" | "yes, " NUM
NUM: /[0-9]/"#,
        )
        .unwrap();
    let mut language: Vec<Vec<u8>> = vec![b"yes".to_vec(), b"no".to_vec(), b"maybe".to_vec()];
    language.extend((0..10).map(|d| format!("yes, {d}").into_bytes()));
    let language: Vec<&[u8]> = language.iter().map(|w| w.as_slice()).collect();
    for word in ["yes", "no", "maybe", "yes, 7"] {
        let mut c = g.start();
        walk_exact(&mut c, word.as_bytes(), &language);
    }
}

#[test]
fn json_enum_masks_are_exact() {
    let g = fx()
        .factory
        .json_schema(&json!({ "enum": ["red", "green", 3, null] }))
        .unwrap();
    let language: &[&[u8]] = &[b"\"red\"", b"\"green\"", b"3", b"null"];
    for word in language {
        let mut c = g.start();
        let complete = walk_exact(&mut c, word, language);
        assert!(complete, "{word:?}");
    }
}

#[test]
fn end_of_generation_only_when_complete() {
    let f = fx();
    let g = f
        .factory
        .json_schema(&json!({
            "type": "object",
            "properties": { "a": { "type": "integer" } },
            "required": ["a"],
            "additionalProperties": false
        }))
        .unwrap();
    let mut c = g.start();
    let text = br#"{"a":12}"#;
    let mut at = 0;
    while at < text.len() {
        let eos_allowed = f.eog.iter().any(|&e| c.allows(e).unwrap());
        assert!(!eos_allowed, "EOS allowed after {:?}", &text[..at]);
        assert!(!c.is_accepting());
        let t = longest_token(&mut c, &text[at..]);
        let done = c.commit(t).unwrap();
        at += f.factory.token_bytes(t).len();
        assert_eq!(done, at == text.len());
    }
    assert!(c.is_complete());
}

#[test]
fn apply_sets_exactly_the_disallowed_logits_to_minus_infinity() {
    let f = fx();
    let g = f.factory.regex("[0-9]+").unwrap();
    let mut c = g.start();
    let mut logits: Vec<f32> = (0..f.factory.n_vocab()).map(|i| i as f32 * 1e-3).collect();
    c.apply(&mut logits).unwrap();
    let mask = c.mask().unwrap().clone();
    for (t, &l) in logits.iter().enumerate() {
        if mask.is_allowed(t as u32) {
            assert_eq!(l, t as f32 * 1e-3);
        } else {
            assert_eq!(l, f32::NEG_INFINITY);
        }
    }
    let allowed = mask.num_set();
    assert!((10..2000).contains(&allowed), "{allowed}");
}

#[test]
fn a_token_the_mask_refused_is_an_error() {
    let f = fx();
    let g = f.factory.regex("[0-9]+").unwrap();
    let mut c = g.start();
    let letter = (0..f.factory.n_vocab() as u32)
        .find(|&t| f.factory.token_bytes(t) == b"a")
        .unwrap();
    assert!(!c.allows(letter).unwrap());
    assert!(c.commit(letter).is_err());
}

fn schema_error(schema: Value) -> String {
    match fx().factory.json_schema(&schema) {
        Ok(_) => panic!("accepted {schema}"),
        Err(e) => e,
    }
}

#[test]
fn unsupported_keywords_are_errors_naming_them() {
    for (schema, keyword) in [
        (
            json!({"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}}),
            "\"if\"",
        ),
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (json!({"not": {"type": "string"}}), "\"not\""),
        (
            json!({"type": "array", "contains": {"type": "integer"}}),
            "contains",
        ),
        (
            json!({"type": "object", "propertyNames": {"pattern": "^a"}}),
            "propertyNames",
        ),
        (
            json!({"type": "object", "dependentRequired": {"a": ["b"]}}),
            "dependentRequired",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": true}}}),
            "uniqueItems",
        ),
        (
            json!({"type": "string", "format": "credit-card"}),
            "credit-card",
        ),
        (
            json!({"oneOf": [{"type": "integer"}, {"type": "number"}]}),
            "oneOf",
        ),
        (
            json!({"type": "object", "x-guidance": {"lenient": true}}),
            "x-guidance",
        ),
        (
            json!({"$ref": "https://example.com/schema.json"}),
            "https://example.com/schema.json",
        ),
    ] {
        let e = schema_error(schema.clone());
        assert!(e.contains(keyword), "{schema}: {e}");
        assert!(e.len() < 400, "{e}");
    }
    // Malformed schemas say what is wrong.
    assert!(schema_error(json!({"type": "objekt"})).contains("objekt"));
    assert!(schema_error(json!({"minimum": "x"})).contains("minimum"));
    assert!(schema_error(json!([1, 2])).contains("object or a boolean"));
    let e = schema_error(json!(false));
    assert!(e.contains("no JSON value"), "{e}");
}

#[test]
fn supported_features_compile() {
    let f = fx();
    for schema in [
        json!({"type": "string", "format": "email"}),
        json!({"type": "string", "format": "date-time"}),
        json!({"type": "string", "pattern": "^[a-z]{3}-[0-9]+$"}),
        json!({"type": "integer", "minimum": 3, "maximum": 7}),
        json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1.5}),
        json!({"enum": ["a", 1, null, true]}),
        json!({"const": {"k": [1, 2]}}),
        json!({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4}),
        json!({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": false}),
        json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
        json!({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]}),
        json!({"type": "object", "patternProperties": {"^x_": {"type": "integer"}}, "additionalProperties": false}),
        json!({
            "type": "object",
            "properties": {"a": {"type": "object", "properties": {"b": {"type": "array", "items": {"$ref": "#/$defs/leaf"}}}}},
            "$defs": {"leaf": {"type": "string", "maxLength": 5}}
        }),
        json!({"$schema": "http://json-schema.org/draft-07/schema#", "definitions": {"x": {"type": "integer"}}, "$ref": "#/definitions/x"}),
        json!({"type": "object", "title": "annotations are fine", "description": "d", "examples": [{}], "x-custom": 1}),
        json!(true),
    ] {
        if let Err(e) = f.factory.json_schema(&schema) {
            panic!("{schema}: {e}");
        }
    }
    assert_eq!(f.factory.json_object().unwrap().kind(), "json_object");
}

/// A seeded random walk over allowed tokens: returns the text if the constraint completed
/// (or allowed end of generation and the walk took it).
fn random_walk(c: &mut Constraint, seed: u64, max_tokens: usize) -> Option<String> {
    let f = fx();
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        let mask = c.mask().unwrap().clone();
        if f.eog.iter().any(|&e| mask.is_allowed(e)) && next() % 2 == 0 {
            return Some(String::from_utf8(out).unwrap());
        }
        let mut allowed: Vec<u32> = Vec::new();
        mask.iter_set_entries(|t| {
            if !f.eog.contains(&(t as u32)) {
                allowed.push(t as u32)
            }
        });
        if allowed.is_empty() {
            return Some(String::from_utf8(out).unwrap());
        }
        // Prefer short tokens half the time, so strings and arrays end within the budget.
        let pick = if next() % 2 == 0 {
            let short: Vec<u32> = allowed
                .iter()
                .copied()
                .filter(|&t| f.factory.token_bytes(t).len() == 1)
                .collect();
            if short.is_empty() {
                allowed[(next() % allowed.len() as u64) as usize]
            } else {
                short[(next() % short.len() as u64) as usize]
            }
        } else {
            allowed[(next() % allowed.len() as u64) as usize]
        };
        out.extend_from_slice(f.factory.token_bytes(pick));
        if c.commit(pick).unwrap() {
            return Some(String::from_utf8(out).unwrap());
        }
    }
    None
}

#[test]
fn random_walks_give_valid_json() {
    let f = fx();
    let schema = json!({
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": -5, "maximum": 40},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "minItems": 1, "maxItems": 3},
            "s": {"type": "string", "pattern": "^[a-c]{2,4}$"}
        },
        "required": ["n", "tags", "s"],
        "additionalProperties": false
    });
    let g = f.factory.json_schema(&schema).unwrap();
    let mut completed = 0;
    for seed in 0..40 {
        let mut c = g.start();
        let Some(text) = random_walk(&mut c, seed, 200) else {
            continue;
        };
        completed += 1;
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        // An integer (`-0` included: JSON Schema counts any number without a fraction).
        let n = v["n"].as_f64().unwrap_or_else(|| panic!("{text}"));
        assert!(n.fract() == 0.0 && (-5.0..=40.0).contains(&n), "{text}");
        let tags = v["tags"].as_array().unwrap();
        assert!((1..=3).contains(&tags.len()), "{text}");
        assert!(tags.iter().all(|t| t == "x" || t == "y"), "{text}");
        let s = v["s"].as_str().unwrap();
        assert!((2..=4).contains(&s.len()) && s.bytes().all(|b| (b'a'..=b'c').contains(&b)));
        assert_eq!(v.as_object().unwrap().len(), 3, "{text}");
    }
    assert!(completed >= 30, "{completed} of 40 walks completed");
}

#[test]
fn recursive_refs_do_not_hang() {
    let f = fx();
    let schema = json!({
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3}
                },
                "required": ["v"],
                "additionalProperties": false
            }
        },
        "$ref": "#/$defs/node"
    });
    let g = f.factory.json_schema(&schema).unwrap();
    let start = Instant::now();
    for seed in 0..10 {
        let mut c = g.start();
        if let Some(text) = random_walk(&mut c, seed, 300) {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v["v"].is_i64(), "{text}");
        }
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    // A schema that only refers to itself admits nothing: an error, not a hang.
    let e = schema_error(json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}));
    assert!(!e.is_empty());
}

#[test]
fn huge_grammars_are_refused_quickly() {
    let f = fx();
    let mut props = serde_json::Map::new();
    for i in 0..20_000 {
        props.insert(
            format!("property_{i}"),
            json!({"type": "string", "description": "padding padding"}),
        );
    }
    let big = json!({"type": "object", "properties": props});
    assert!(big.to_string().len() > 1 << 20);
    let t = Instant::now();
    let e = schema_error(big);
    assert!(e.contains("at most"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(f.factory.lark(&"x".repeat(1 << 20)).is_err());
    assert!(f.factory.regex(&"a".repeat(1 << 20)).is_err());

    // Big but within the size limit: compiles or is refused by a counted limit, quickly.
    let t = Instant::now();
    let many = json!({"anyOf": (0..2000).map(|i| json!({
        "type": "object",
        "properties": {"name": {"const": format!("tool_{i}")}, "arguments": {"type": "object"}},
        "required": ["name", "arguments"]
    })).collect::<Vec<_>>()});
    let _ = f.factory.json_schema(&many);
    let chain = json!({"allOf": (0..500).map(|i| json!({
        "type": "object", "properties": {format!("p{i}"): {"type": "integer"}}
    })).collect::<Vec<_>>()});
    let _ = f.factory.json_schema(&chain);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_constraint_can_start_after_text_already_generated() {
    let f = fx();
    let g = f
        .factory
        .json_schema(&json!({
            "type": "object",
            "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"],
            "additionalProperties": false
        }))
        .unwrap();
    // The model wrote `{"name":"get_we` before the constraint applied (say, after a
    // trigger in the middle of a token); the constraint picks up from there. The grammar
    // spells tokens as the factory does.
    for t in [0, 1, 100, 5000] {
        assert_eq!(g.token_bytes(t), f.factory.token_bytes(t));
    }
    let mut c = g.start_after(br#"{"name":"get_we"#).unwrap();
    let rest = br#"ather","arguments":{}}"#;
    let mut at = 0;
    let mut done = false;
    while at < rest.len() {
        let t = longest_token(&mut c, &rest[at..]);
        done = c.commit(t).unwrap();
        at += f.factory.token_bytes(t).len();
    }
    assert!(done);
    // Text that cannot begin the grammar is refused, saying where.
    let e = g.start_after(br#"{"nam":"#).unwrap_err();
    assert!(e.contains("byte"), "{e}");
    // Nothing yet is fine too.
    let mut c = g.start_after(b"").unwrap();
    assert!(!c.is_complete());
    assert!(c.mask().unwrap().num_set() > 0);
    // Bytes can also be fed to a running constraint.
    let mut c = g.start();
    assert!(!c.consume_bytes(br#"{"name":"x","arguments":{}"#).unwrap());
    assert!(c.consume_bytes(b"}").unwrap());
}

#[test]
fn vocabulary_bytes_match_decoding() {
    let f = fx();
    let path = verity_store::resolve(None).unwrap();
    let model = verity_model::load(&path).unwrap();
    let tok = &model.tokenizer;
    let mut checked = 0;
    for t in 0..tok.vocab_size() as u32 {
        let text = tok.decode(&[t], false).unwrap();
        let b = f.factory.token_bytes(t);
        if b.first() == Some(&0xFF) && b.len() > 1 {
            assert_eq!(&b[1..], text.as_bytes(), "special token {t}");
        } else if !text.contains('\u{FFFD}') {
            assert_eq!(b, text.as_bytes(), "token {t}");
            checked += 1;
        }
    }
    assert!(checked > tok.vocab_size() * 9 / 10);
    // And sequences: the bytes of an encoding are the text.
    let text = "Héllo, wörld! 😀 {\"a\": [1, 2]}\n\ttabs";
    let ids = tok.encode(text, false).unwrap();
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&t| f.factory.token_bytes(t).to_vec())
        .collect();
    assert_eq!(bytes, text.as_bytes());
}

#[test]
fn json_whitespace_is_bounded() {
    let f = fx();
    let g = f.factory.json_object().unwrap();
    let token = |bytes: &[u8]| {
        (0..f.factory.n_vocab() as u32)
            .find(|&t| f.factory.token_bytes(t) == bytes)
            .unwrap_or_else(|| panic!("no token {bytes:?}"))
    };
    let mut c = g.start();
    // No whitespace before the value.
    assert!(!c.allows(token(b" ")).unwrap());
    c.commit(token(b"{")).unwrap();
    // One space, or a newline and indentation; not runs of spaces, not blank lines.
    assert!(c.allows(token(b" ")).unwrap());
    assert!(c.allows(token(b"\n")).unwrap());
    assert!(c.allows(token(b"\n    ")).unwrap());
    assert!(!c.allows(token(b"  ")).unwrap());
    assert!(!c.allows(token(b"\n\n")).unwrap());
    c.commit(token(b"\n")).unwrap();
    for _ in 0..24 {
        assert!(c.allows(token(b" ")).unwrap());
        c.commit(token(b" ")).unwrap();
    }
    assert!(!c.allows(token(b" ")).unwrap());
    assert!(c.allows(token(b"}")).unwrap());
}

/// What the hand-written JSON-object scanner this replaced checked, now of llguidance's
/// `json_object`: prefixes of objects go on, whole objects complete, anything else stops.
#[test]
fn json_object_takes_objects_and_nothing_else() {
    let g = fx().factory.json_object().unwrap();
    for prefix in [
        "",
        "{",
        r#"{"a""#,
        r#"{"a": [1, 2.5e-3, true, null, "x\n""#,
        r#"{"a":{"b":-0.5}"#,
    ] {
        let c = g
            .start_after(prefix.as_bytes())
            .unwrap_or_else(|e| panic!("{prefix}: {e}"));
        assert!(!c.is_complete(), "{prefix}");
    }
    for whole in [r#"{"a": [1, {}]}"#, "{}"] {
        assert!(
            g.start_after(whole.as_bytes()).unwrap().is_complete(),
            "{whole}"
        );
    }
    for bad in [
        "[1]",
        "hello",
        "{a",
        r#"{"a" 1"#,
        r#"{"a":01"#,
        r#"{"a":tru e"#,
        "{}}",
        "{} x",
        r#"{"a":[1,]"#,
    ] {
        assert!(g.start_after(bad.as_bytes()).is_err(), "{bad}");
    }
}
