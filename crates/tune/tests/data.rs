//! The data module against the default model's real tokenizer (SmolLM2-135M-Instruct,
//! ChatML template, BOS `<|im_start|>` not added, EOS `<|im_end|>`): every shape's loss
//! mask, JSON and Parquet files, every error, truncation, packing and splitting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use verity_formats::gguf::Gguf;
use verity_tokenizer::{ChatMessage, Tokenizer};
use verity_tune::data::{
    load, n_targets, pack, split, DataError, DataOptions, Dataset, Example, Shape,
};

/// The default model, where verity's store keeps it ($VERITY_MODELS or
/// ~/.cache/verity/models; `verity pull` or any test using `verity_store::resolve` fetches it).
fn default_model() -> PathBuf {
    let dir = std::env::var_os("VERITY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/verity/models")
        });
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} is missing: fetch the default model first (e.g. `cargo run --release -p verity-cli -- pull`)",
        p.display()
    );
    p
}

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let g = Gguf::open(&default_model()).expect("open the default model");
        Tokenizer::from_gguf(&g).expect("its tokenizer")
    })
}

/// The default tokenizer with another chat template (`None`: no template), through its
/// tokenizer.json and tokenizer_config.json.
fn tok_with_template(dir: &Path, template: Option<&str>) -> Tokenizer {
    custom_tok(dir, template, false)
}

/// The default tokenizer with another chat template and `add_bos_token`.
fn custom_tok(dir: &Path, template: Option<&str>, add_bos: bool) -> Tokenizer {
    let t = tok();
    let json = dir.join("tokenizer.json");
    std::fs::write(&json, t.to_tokenizer_json().unwrap()).unwrap();
    let mut cfg = t.to_tokenizer_config();
    let obj = cfg.as_object_mut().unwrap();
    match template {
        Some(s) => obj.insert("chat_template".into(), s.into()),
        None => obj.remove("chat_template"),
    };
    obj.insert("add_bos_token".into(), add_bos.into());
    Tokenizer::from_tokenizer_json_file(&json, Some(&cfg)).unwrap()
}

fn opts(max_seq_len: usize) -> DataOptions {
    DataOptions {
        max_seq_len,
        train_on_prompt: false,
    }
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn jsonl(rows: &[serde_json::Value]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

fn load_str(name: &str, content: &str, o: &DataOptions) -> Result<Dataset, DataError> {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, content);
    load(&p, tok(), o)
}

fn err(name: &str, content: impl AsRef<[u8]>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, content);
    match load(&p, tok(), &opts(512)) {
        Ok(ds) => panic!(
            "{name}: loaded {} examples, expected an error",
            ds.examples.len()
        ),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "{msg:?} does not contain {p:?}");
    }
}

fn decode(ids: &[u32]) -> String {
    tok().decode(ids, false).unwrap()
}

/// The maximal runs of target tokens, decoded.
fn target_runs(ex: &Example) -> Vec<String> {
    let mut runs = Vec::new();
    let mut cur = Vec::new();
    for (&id, &t) in ex.tokens.iter().zip(&ex.target) {
        if t {
            cur.push(id);
        } else if !cur.is_empty() {
            runs.push(decode(&std::mem::take(&mut cur)));
        }
    }
    if !cur.is_empty() {
        runs.push(decode(&cur));
    }
    runs
}

fn well_formed(ex: &Example) {
    assert_eq!(ex.tokens.len(), ex.target.len());
    assert!(!ex.target[0], "position 0 is never a target");
}

fn eos() -> u32 {
    tok().eos_id().unwrap()
}

fn render(messages: &[ChatMessage]) -> String {
    tok()
        .chat()
        .unwrap()
        .unwrap()
        .render(messages, false)
        .unwrap()
}

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs
        .iter()
        .map(|(r, c)| ChatMessage::new(*r, *c))
        .collect()
}

fn messages_json(m: &[ChatMessage]) -> serde_json::Value {
    serde_json::json!({ "messages": m })
}

#[test]
fn special_tokens_in_text_map_to_their_ids() {
    let t = tok();
    assert_eq!(t.encode("<|im_start|>", false).unwrap(), vec![1]);
    assert_eq!(t.encode("<|im_end|>", false).unwrap(), vec![2]);
    assert_eq!(t.bos_token_str(), Some("<|im_start|>"));
    assert_eq!(t.eos_id(), Some(2));
    assert!(!t.add_bos());
}

#[test]
fn text_every_token_is_a_target_and_eos_ends_it() {
    let text = "The quick brown fox jumps over the lazy dog.\nTwice.";
    let ds = load_str(
        "d.jsonl",
        &jsonl(&[serde_json::json!({ "text": text })]),
        &opts(512),
    )
    .unwrap();
    assert_eq!(ds.shape, Shape::Text);
    assert_eq!(ds.examples.len(), 1);
    let ex = &ds.examples[0];
    well_formed(ex);
    let mut want = tok().encode(text, false).unwrap();
    want.push(eos());
    assert_eq!(ex.tokens, want, "no BOS for this model, text, then EOS");
    assert!(ex.target[1..].iter().all(|&t| t));
    assert_eq!(decode(&ex.tokens[1..]), format!("{}<|im_end|>", &text[3..]));
    assert_eq!(ds.truncated, 0);
}

#[test]
fn text_already_ending_in_eos_gets_no_second_one() {
    let ds = load_str(
        "d.jsonl",
        &jsonl(&[serde_json::json!({ "text": "Hello world<|im_end|>" })]),
        &opts(512),
    )
    .unwrap();
    let toks = &ds.examples[0].tokens;
    assert_eq!(toks.iter().filter(|&&t| t == eos()).count(), 1);
    assert_eq!(*toks.last().unwrap(), eos());
}

#[test]
fn prompt_completion_loss_is_on_the_completion_and_eos() {
    let (prompt, completion) = ("Translate to French: cat\nAnswer:", " chat");
    let ds = load_str(
        "d.jsonl",
        &jsonl(&[serde_json::json!({ "prompt": prompt, "completion": completion, "id": 7 })]),
        &opts(512),
    )
    .unwrap();
    assert_eq!(ds.shape, Shape::PromptCompletion);
    let ex = &ds.examples[0];
    well_formed(ex);
    let p = tok().encode(prompt, false).unwrap();
    let c = tok().encode(completion, false).unwrap();
    let want: Vec<u32> = p.iter().chain(&c).copied().chain([eos()]).collect();
    assert_eq!(
        ex.tokens, want,
        "prompt and completion tokenized separately"
    );
    assert!(ex.target[..p.len()].iter().all(|&t| !t));
    assert!(ex.target[p.len()..].iter().all(|&t| t));
    assert_eq!(target_runs(ex), vec![format!("{completion}<|im_end|>")]);
}

#[test]
fn messages_loss_is_on_the_assistant_turn_only() {
    let m = msgs(&[("user", "What is 2+2?"), ("assistant", "2+2 is 4.")]);
    let ds = load_str("d.jsonl", &jsonl(&[messages_json(&m)]), &opts(512)).unwrap();
    assert_eq!(ds.shape, Shape::Messages);
    let ex = &ds.examples[0];
    well_formed(ex);
    // Tokenizing along the turn boundaries gives the same ids as the whole rendered text,
    // which starts with the BOS text itself (no second BOS).
    let full = render(&m);
    assert!(full.starts_with("<|im_start|>system\n"));
    assert_eq!(ex.tokens, tok().encode(&full, false).unwrap());
    assert_eq!(target_runs(ex), vec!["2+2 is 4.<|im_end|>".to_string()]);
    // The newline after <|im_end|> closes the sequence and is not a target.
    assert_eq!(decode(&ex.tokens[ex.tokens.len() - 1..]), "\n");
    assert!(!ex.target[ex.tokens.len() - 1]);
}

#[test]
fn messages_two_assistant_turns_system_and_tool() {
    let m = msgs(&[
        ("system", "You answer briefly."),
        ("user", "Name a colour."),
        ("assistant", "Blue."),
        ("user", "Look it up."),
        ("tool", "{\"colour\": \"green\"}"),
        ("assistant", "Green, then.\nDone."),
        ("user", "Thanks"),
    ]);
    let ds = load_str("d.jsonl", &jsonl(&[messages_json(&m)]), &opts(512)).unwrap();
    let ex = &ds.examples[0];
    well_formed(ex);
    assert_eq!(ex.tokens, tok().encode(&render(&m), false).unwrap());
    assert_eq!(
        target_runs(ex),
        vec![
            "Blue.<|im_end|>".to_string(),
            "Green, then.\nDone.<|im_end|>".to_string()
        ]
    );
    // Everything else is the prompt: system, users, the tool result, the headers.
    let prompt: Vec<u32> = ex
        .tokens
        .iter()
        .zip(&ex.target)
        .filter(|(_, &t)| !t)
        .map(|(&id, _)| id)
        .collect();
    let prompt = decode(&prompt);
    for part in [
        "You answer briefly.",
        "Name a colour.",
        "Look it up.",
        "Thanks",
        "<|im_start|>tool\n{\"colour\": \"green\"}",
    ] {
        assert!(prompt.contains(part), "{part:?} not in the prompt part");
    }
}

#[test]
fn train_on_prompt_makes_every_token_but_the_first_a_target() {
    let o = DataOptions {
        max_seq_len: 512,
        train_on_prompt: true,
    };
    let m = msgs(&[("user", "Hi"), ("assistant", "Hello!")]);
    let rows = [messages_json(&m)];
    let ds = load_str("d.jsonl", &jsonl(&rows), &o).unwrap();
    let ex = &ds.examples[0];
    well_formed(ex);
    assert_eq!(ex.tokens, tok().encode(&render(&m), false).unwrap());
    assert!(ex.target[1..].iter().all(|&t| t));

    let ds = load_str(
        "d.jsonl",
        &jsonl(&[serde_json::json!({"prompt": "Q: why?", "completion": " A: because."})]),
        &o,
    )
    .unwrap();
    let ex = &ds.examples[0];
    well_formed(ex);
    assert!(ex.target[1..].iter().all(|&t| t));

    // A conversation without an assistant turn has something to learn now.
    let only_user = msgs(&[("system", "S"), ("user", "Just a question")]);
    let ds = load_str("d.jsonl", &jsonl(&[messages_json(&only_user)]), &o).unwrap();
    assert_eq!(ds.examples[0].n_targets(), ds.examples[0].tokens.len() - 1);
}

fn three_rows() -> Vec<serde_json::Value> {
    vec![
        serde_json::json!({"prompt": "1+1=", "completion": "2"}),
        serde_json::json!({"prompt": "Capital of France?", "completion": " Paris."}),
        serde_json::json!({"prompt": "", "completion": "Unprompted text."}),
    ]
}

#[test]
fn json_array_equals_jsonl() {
    let rows = three_rows();
    let a = load_str("d.jsonl", &jsonl(&rows), &opts(512)).unwrap();
    let b = load_str(
        "d.json",
        &serde_json::to_string_pretty(&rows).unwrap(),
        &opts(512),
    )
    .unwrap();
    assert_eq!(a.examples, b.examples);
    assert_eq!(b.shape, Shape::PromptCompletion);
    assert_eq!(a.examples.len(), 3);
    // A BOM, CRLF line ends and blank lines are fine in JSONL.
    let crlf = format!(
        "\u{feff}{}",
        rows.iter()
            .map(|r| format!("{r}\r\n\r\n"))
            .collect::<String>()
    );
    let c = load_str("d.jsonl", &crlf, &opts(512)).unwrap();
    assert_eq!(a.examples, c.examples);
}

#[test]
fn sha256_is_of_the_file_bytes() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let content = jsonl(&three_rows());
    let p = write(dir.path(), "d.jsonl", &content);
    let ds = load(&p, tok(), &opts(512)).unwrap();
    let want: String = sha2::Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(ds.sha256, want);
    assert_eq!(ds.path, p);
}

/// Write a Parquet file with one REQUIRED UTF8 column per name.
fn write_parquet_strings(path: &Path, columns: &[(&str, Vec<&str>)]) {
    let fields: String = columns
        .iter()
        .map(|(n, _)| format!("REQUIRED BYTE_ARRAY {n} (UTF8);"))
        .collect();
    let schema = Arc::new(parse_message_type(&format!("message schema {{ {fields} }}")).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut k = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let values: Vec<ByteArray> = columns[k].1.iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
        k += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// Write a Parquet file with a `messages` column, `list<struct<role, content>>`, the way
/// pyarrow / `datasets` store conversations.
fn write_parquet_messages(path: &Path, rows: &[Vec<ChatMessage>]) {
    let schema = Arc::new(
        parse_message_type(
            "message schema {
               OPTIONAL group messages (LIST) {
                 REPEATED group list {
                   OPTIONAL group element {
                     OPTIONAL BYTE_ARRAY role (UTF8);
                     OPTIONAL BYTE_ARRAY content (UTF8);
                   }
                 }
               }
             }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut w =
        SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::default())).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut k = 0;
    while let Some(mut col) = rg.next_column().unwrap() {
        let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
        for row in rows {
            for (j, m) in row.iter().enumerate() {
                let s = if k == 0 { &m.role } else { &m.content };
                values.push(ByteArray::from(s.as_str()));
                def.push(4);
                rep.push(i16::from(j > 0));
            }
        }
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&def), Some(&rep))
            .unwrap();
        col.close().unwrap();
        k += 1;
    }
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_files_equal_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let pc = d.join("pc.parquet");
    write_parquet_strings(
        &pc,
        &[
            ("prompt", vec!["1+1=", "Capital of France?", ""]),
            ("completion", vec!["2", " Paris.", "Unprompted text."]),
        ],
    );
    let from_parquet = load(&pc, tok(), &opts(512)).unwrap();
    let from_jsonl = load_str("pc.jsonl", &jsonl(&three_rows()), &opts(512)).unwrap();
    assert_eq!(from_parquet.shape, Shape::PromptCompletion);
    assert_eq!(from_parquet.examples, from_jsonl.examples);

    let text = d.join("text.parquet");
    write_parquet_strings(&text, &[("text", vec!["One.", "Two, café ✓."])]);
    let ds = load(&text, tok(), &opts(512)).unwrap();
    assert_eq!(ds.shape, Shape::Text);
    assert_eq!(decode(&ds.examples[1].tokens), "Two, café ✓.<|im_end|>");

    let convs = vec![
        msgs(&[("user", "Hi"), ("assistant", "Hello!")]),
        msgs(&[
            ("system", "Terse."),
            ("user", "2+2?"),
            ("assistant", "4"),
            ("user", "3+3?"),
            ("assistant", "6"),
        ]),
    ];
    let mp = d.join("m.parquet");
    write_parquet_messages(&mp, &convs);
    let ds = load(&mp, tok(), &opts(512)).unwrap();
    assert_eq!(ds.shape, Shape::Messages);
    let rows: Vec<_> = convs.iter().map(|m| messages_json(m)).collect();
    let from_jsonl = load_str("m.jsonl", &jsonl(&rows), &opts(512)).unwrap();
    assert_eq!(ds.examples, from_jsonl.examples);
    assert_eq!(
        target_runs(&ds.examples[1]),
        vec!["4<|im_end|>", "6<|im_end|>"]
    );

    // A Parquet file of the wrong shape names the row.
    let other = d.join("other.parquet");
    write_parquet_strings(&other, &[("question", vec!["a", "b"])]);
    let e = load(&other, tok(), &opts(512)).unwrap_err().to_string();
    assert_has(
        &e,
        &["other.parquet: row 1: expected one of", "{\"question\"}"],
    );

    // No rows: empty.
    let empty = d.join("empty.parquet");
    write_parquet_strings(&empty, &[("text", vec![])]);
    let e = load(&empty, tok(), &opts(512)).unwrap_err().to_string();
    assert_has(&e, &["empty.parquet is empty: no examples"]);
}

#[test]
fn corrupt_parquet_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.parquet");
    write_parquet_strings(&good, &[("text", vec!["alpha beta", "gamma"])]);
    let bytes = std::fs::read(&good).unwrap();
    let p = dir.path().join("bad.parquet");
    let mut cases: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"PAR1".to_vec(),
        b"PAR1\x00\x00\x00\x00PAR1".to_vec(),
        vec![0xff; 300],
    ];
    for cut in [8, bytes.len() / 2, bytes.len() - 9, bytes.len() - 1] {
        cases.push(bytes[..cut].to_vec());
    }
    // Flipped bytes all over the file.
    for i in (4..bytes.len() - 8).step_by(7) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        cases.push(b);
    }
    let mut errors = 0;
    for c in &cases {
        std::fs::write(&p, c).unwrap();
        match load(&p, tok(), &opts(512)) {
            Err(e) => {
                assert!(e.to_string().contains("bad.parquet"), "{e}");
                errors += 1;
            }
            Ok(ds) => assert!(!ds.examples.is_empty()),
        }
    }
    assert!(errors >= 8);
}

#[test]
fn a_record_of_another_shape_names_its_line() {
    let content =
        "{\"text\": \"a\"}\n{\"text\": \"b\"}\n\n{\"question\": \"q\", \"answer\": \"a\"}\n";
    let e = err("data.jsonl", content);
    assert_has(
        &e,
        &[
            "data.jsonl: line 4: expected one of {\"messages\"}, {\"prompt\",\"completion\"} or {\"text\"}",
            "{\"answer\", \"question\"}",
            "this file's first example has shape {\"text\"}",
        ],
    );
    // On the first line there is no first shape yet.
    let e = err("data.jsonl", "{\"input\": \"x\"}\n");
    assert_has(&e, &["line 1: expected one of", "{\"input\"}"]);
    assert!(!e.contains("first example"), "{e}");
    // Half a shape, two shapes at once, not an object.
    assert_has(
        &err("d.jsonl", "{\"prompt\": \"x\"}\n"),
        &["line 1:", "\"prompt\" but no \"completion\""],
    );
    assert_has(
        &err("d.jsonl", "{\"text\": \"x\", \"messages\": []}\n"),
        &["line 1:", "more than one shape"],
    );
    assert_has(
        &err("d.jsonl", "[1, 2]\n"),
        &["line 1:", "an array, not an object"],
    );
    assert_has(
        &err("d.json", "[{\"text\": \"a\"}, 5]"),
        &["d.json: record 2:", "a number, not an object"],
    );
}

#[test]
fn mixed_shapes_name_both_records() {
    let rows = [
        serde_json::json!({"prompt": "p", "completion": "c"}),
        serde_json::json!({"text": "t"}),
    ];
    let e = err("mix.jsonl", jsonl(&rows));
    assert_has(
        &e,
        &[
            "mix.jsonl: line 2: this record has shape {\"text\"}",
            "first example (line 1) has shape {\"prompt\",\"completion\"}",
            "one shape per file",
        ],
    );
    let e = err("mix.json", serde_json::to_string(&rows).unwrap());
    assert_has(&e, &["mix.json: record 2:", "(record 1)"]);
}

#[test]
fn empty_files_are_errors() {
    for (name, content) in [
        ("data.jsonl", ""),
        ("data.jsonl", "\n\n  \n"),
        ("data.json", ""),
        ("data.json", "[]"),
        ("data.json", " [ ] \n"),
    ] {
        assert_has(&err(name, content), &["data.json", "is empty: no examples"]);
    }
}

#[test]
fn invalid_json_and_non_utf8_name_the_line() {
    let e = err("d.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"\n");
    assert_has(&e, &["d.jsonl: line 2: not JSON:", "EOF while parsing"]);
    let e = err("d.jsonl", "{\"text\": \"a\"} {\"text\": \"b\"}\n");
    assert_has(&e, &["line 1: not JSON: trailing characters"]);
    let mut bytes = b"{\"text\": \"a\"}\n{\"text\": \"".to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bytes.extend_from_slice(b"\"}\n");
    assert_has(&err("d.jsonl", &bytes), &["d.jsonl: line 2: not UTF-8"]);
    let mut json = b"[\n{\"text\": \"a\"},\n{\"text\": \"".to_vec();
    json.extend_from_slice(&[0xc3, 0x28]);
    json.extend_from_slice(b"\"}]");
    assert_has(&err("d.json", &json), &["d.json: line 3: not UTF-8"]);
    assert_has(
        &err("d.json", "[{\"text\": \"a\"},\n{\"text\" \"b\"}]"),
        &["d.json: line 2: not JSON"],
    );
    // Not an array.
    assert_has(
        &err("d.json", "{\"data\": [{\"text\": \"a\"}]}"),
        &[
            "d.json: a .json data file must hold an array of objects",
            "holds an object",
            ".jsonl",
        ],
    );
    // Deep nesting stops at serde_json's recursion limit.
    let deep = format!(
        "{{\"text\": {}{}}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_has(
        &err("d.jsonl", deep),
        &["line 1: not JSON: recursion limit exceeded"],
    );
    // A huge line is just a long example.
    let long = "word ".repeat(200_000);
    let ds = load_str(
        "d.jsonl",
        &jsonl(&[serde_json::json!({ "text": long })]),
        &opts(64),
    )
    .unwrap();
    assert_eq!(ds.examples[0].tokens.len(), 64);
    assert_eq!(ds.truncated, 1);
}

#[test]
fn bad_fields_are_named() {
    let m = |v: serde_json::Value| {
        err(
            "d.jsonl",
            format!("{}\n", serde_json::json!({ "messages": v })),
        )
    };
    assert_has(
        &m(serde_json::json!([{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}])),
        &[
            "line 1: message 2: unknown role \"bot\"",
            "\"system\", \"user\", \"assistant\" or \"tool\"",
        ],
    );
    assert_has(
        &m(serde_json::json!([{"role": "user", "content": ["x"]}])),
        &["line 1: message 1: \"content\" must be a string, found an array"],
    );
    assert_has(
        &m(serde_json::json!([{"role": "user", "content": null}])),
        &["message 1: \"content\" must be a string, found null"],
    );
    assert_has(
        &m(serde_json::json!([{"content": "x"}])),
        &["message 1: \"role\" is missing"],
    );
    assert_has(&m(serde_json::json!(["hi"])), &["message 1 is a string"]);
    assert_has(
        &m(serde_json::json!("hi")),
        &["\"messages\" must be an array"],
    );
    assert_has(
        &err("d.jsonl", "{\"prompt\": \"x\", \"completion\": 3}\n"),
        &["line 1: \"completion\" must be a string, found a number"],
    );
    assert_has(
        &err("d.jsonl", "{\"text\": {}}\n"),
        &["\"text\" must be a string, found an object"],
    );
}

#[test]
fn nothing_to_learn_names_the_line() {
    let e = err(
        "d.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\", \"completion\": \"\"}\n",
    );
    assert_has(
        &e,
        &["d.jsonl: line 2: nothing to learn: the completion is empty"],
    );
    assert_has(
        &err("d.jsonl", "{\"text\": \"\"}\n"),
        &["line 1: nothing to learn: the text is empty"],
    );
    let no_assistant = messages_json(&msgs(&[("system", "s"), ("user", "u")]));
    assert_has(
        &err("d.jsonl", jsonl(&[no_assistant])),
        &[
            "line 1: nothing to learn: the conversation has no assistant message",
            "--train-on-prompt",
        ],
    );
    assert_has(
        &err("d.jsonl", "{\"messages\": []}\n"),
        &["line 1: nothing to learn: the conversation has no messages"],
    );
}

#[test]
fn model_without_chat_template_refuses_messages_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = tok_with_template(dir.path(), None);
    assert!(t.chat_template().is_none());
    let m = write(
        dir.path(),
        "m.jsonl",
        jsonl(&[messages_json(&msgs(&[("user", "a"), ("assistant", "b")]))]),
    );
    let e = load(&m, &t, &opts(512)).unwrap_err().to_string();
    assert_has(
        &e,
        &["m.jsonl: the model has no chat template; use prompt/completion or text data"],
    );
    // Other shapes do not need one, and tokenize the same.
    let p = write(dir.path(), "p.jsonl", jsonl(&three_rows()));
    let a = load(&p, &t, &opts(512)).unwrap();
    let b = load(&p, tok(), &opts(512)).unwrap();
    assert_eq!(a.examples, b.examples);
}

#[test]
fn templates_that_are_not_incremental_or_raise_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rows = jsonl(&[
        messages_json(&msgs(&[("user", "a"), ("assistant", "b")])),
        messages_json(&msgs(&[
            ("user", "c"),
            ("assistant", "d"),
            ("user", "e"),
            ("assistant", "f"),
        ])),
    ]);
    let p = write(dir.path(), "m.jsonl", rows);
    // Every message carries the conversation's length: prefixes render differently.
    let counting = "{% for m in messages %}<|im_start|>{{ m.role }} of {{ messages|length }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let t = tok_with_template(dir.path(), Some(counting));
    let e = load(&p, &t, &opts(512)).unwrap_err().to_string();
    assert_has(
        &e,
        &[
            "m.jsonl: line 1: the chat template does not render this conversation incrementally",
            "use prompt/completion",
        ],
    );
    // --train-on-prompt does not need the turns.
    let all = DataOptions {
        max_seq_len: 512,
        train_on_prompt: true,
    };
    assert_eq!(load(&p, &t, &all).unwrap().examples.len(), 2);

    let raising = "{% if messages|length > 2 %}{{ raise_exception('only one exchange') }}{% endif %}{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}";
    let t = tok_with_template(dir.path(), Some(raising));
    let e = load(&p, &t, &opts(512)).unwrap_err().to_string();
    assert_has(&e, &["m.jsonl: line 2:", "only one exchange"]);

    let broken = "{% for m in messages %}";
    let t = tok_with_template(dir.path(), Some(broken));
    let e = load(&p, &t, &opts(512)).unwrap_err().to_string();
    assert_has(&e, &["m.jsonl: the model's chat template is invalid"]);
}

#[test]
fn bos_is_added_once_when_the_tokenizer_adds_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bos = tok().bos_id().unwrap();
    let conv = jsonl(&[messages_json(&msgs(&[("user", "hi"), ("assistant", "yo")]))]);
    let p = write(d, "m.jsonl", &conv);
    // A template that does not write the BOS text: BOS comes from the tokenizer, if it adds one.
    let plain = "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let without = load(&p, &custom_tok(d, Some(plain), false), &opts(512)).unwrap();
    let with = load(&p, &custom_tok(d, Some(plain), true), &opts(512)).unwrap();
    let (a, b) = (&without.examples[0], &with.examples[0]);
    assert_ne!(a.tokens[0], bos);
    assert_eq!(b.tokens[0], bos);
    assert_eq!(b.tokens[1..], a.tokens[..]);
    well_formed(b);
    assert_eq!(target_runs(a), vec![" yo<|im_end|>".to_string()]);
    assert_eq!(target_runs(b), target_runs(a));
    // The ChatML template writes <|im_start|> (the BOS text) itself: no second BOS.
    let chatml = tok().chat_template().unwrap();
    let own = load(&p, &custom_tok(d, Some(chatml), true), &opts(512)).unwrap();
    let default = load(&p, tok(), &opts(512)).unwrap();
    assert_eq!(own.examples, default.examples);
    assert_eq!(own.examples[0].tokens[0], bos);
    assert_ne!(own.examples[0].tokens[1], bos);
    // Text and prompt/completion get BOS first, never a target; the text's first token
    // becomes one.
    let t = custom_tok(d, None, true);
    let p = write(
        d,
        "t.jsonl",
        jsonl(&[serde_json::json!({"text": "Hello world"})]),
    );
    let ex = &load(&p, &t, &opts(512)).unwrap().examples[0];
    let mut want = vec![bos];
    want.extend(tok().encode("Hello world", false).unwrap());
    want.push(eos());
    assert_eq!(ex.tokens, want);
    assert_eq!(ex.target[..2], [false, true]);
    let p = write(d, "pc.jsonl", jsonl(&three_rows()));
    let ds = load(&p, &t, &opts(512)).unwrap();
    let plain = load(&p, tok(), &opts(512)).unwrap();
    for (x, y) in ds.examples.iter().zip(&plain.examples) {
        assert_eq!(x.tokens[0], bos);
        assert_eq!(x.tokens[1..], y.tokens[..]);
        assert_eq!(x.target[2..], y.target[1..]);
    }
    // With an empty prompt, the completion's first token was position 0; after BOS it is
    // a target too.
    assert_eq!(
        target_runs(&ds.examples[2]),
        vec!["Unprompted text.<|im_end|>"]
    );
    assert_eq!(
        target_runs(&plain.examples[2]),
        vec!["prompted text.<|im_end|>"]
    );
}

#[test]
fn truncation_counts_and_cuts() {
    let short = serde_json::json!({"text": "short"});
    let long = serde_json::json!({"text": "one two three four five six seven eight nine ten eleven twelve"});
    let ds = load_str(
        "d.jsonl",
        &jsonl(&[short.clone(), long.clone(), short, long]),
        &opts(6),
    )
    .unwrap();
    assert_eq!(ds.truncated, 2);
    assert_eq!(ds.examples.len(), 4);
    for ex in &ds.examples {
        well_formed(ex);
        assert!(ex.tokens.len() <= 6);
    }
    assert_eq!(ds.examples[1].tokens.len(), 6);
    assert_ne!(
        *ds.examples[1].tokens.last().unwrap(),
        eos(),
        "the cut keeps the first tokens"
    );

    // A completion entirely past the cut: an error naming the line and the fix.
    let rows = [
        serde_json::json!({"prompt": "a", "completion": "b"}),
        serde_json::json!({"prompt": "a long prompt that fills the whole sequence and more", "completion": " b"}),
    ];
    let e = load_str("d.jsonl", &jsonl(&rows), &opts(4))
        .unwrap_err()
        .to_string();
    assert_has(
        &e,
        &[
            "d.jsonl: line 2: nothing to learn after truncation",
            "raise --max-seq-len",
        ],
    );

    // max_seq_len must leave room for a target.
    let e = load_str("d.jsonl", &jsonl(&rows), &opts(1))
        .unwrap_err()
        .to_string();
    assert_has(&e, &["--max-seq-len must be at least 2"]);
}

#[test]
fn unknown_extension_and_missing_file() {
    assert_has(
        &err("d.csv", "text\nabc\n"),
        &["d.csv: unknown data format", ".jsonl", ".parquet"],
    );
    let e = load(Path::new("/nonexistent/d.jsonl"), tok(), &opts(16))
        .unwrap_err()
        .to_string();
    assert_has(&e, &["cannot read /nonexistent/d.jsonl"]);
}

/// Examples of the given lengths, targets everywhere but position 0.
fn examples_of(lens: &[usize]) -> Vec<Example> {
    lens.iter()
        .enumerate()
        .map(|(k, &n)| Example {
            tokens: (0..n as u32).map(|i| 1000 * k as u32 + i).collect(),
            target: (0..n).map(|i| i > 0).collect(),
        })
        .collect()
}

#[test]
fn pack_fills_sequences_in_order_and_never_overflows() {
    let lens = [5, 3, 8, 1, 7, 2, 2, 9, 4, 6, 3, 3, 10, 1];
    let examples = examples_of(&lens);
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.reverse();
    order.swap(2, 9);
    for seq_len in [10, 11, 16, 64] {
        let packed = pack(&examples, &order, seq_len);
        assert_eq!(packed, pack(&examples, &order, seq_len), "deterministic");
        let mut seen = Vec::new();
        for (s, p) in packed.iter().enumerate() {
            assert!(p.tokens.len() <= seq_len);
            assert_eq!(p.tokens.len(), p.target.len());
            // Segments tile the sequence exactly, each is one whole example.
            let mut at = 0;
            for &(start, len) in &p.segments {
                assert_eq!(start, at);
                at += len;
                let k = order[seen.len()];
                assert_eq!(&p.tokens[start..start + len], &examples[k].tokens[..]);
                assert!(!p.target[start]);
                assert_eq!(&p.target[start..start + len], &examples[k].target[..]);
                seen.push(k);
            }
            assert_eq!(at, p.tokens.len());
            // Greedy: the next sequence's first example would not have fitted here.
            if let Some(next) = packed.get(s + 1) {
                assert!(p.tokens.len() + next.segments[0].1 > seq_len);
            }
            assert_eq!(
                n_targets(p),
                p.segments.iter().map(|&(_, l)| l - 1).sum::<usize>()
            );
        }
        assert_eq!(seen, order, "every example once, in order");
    }
    // Longer than seq_len: cut, alone in its sequence; out-of-range indices are skipped.
    let packed = pack(&examples, &[12, 99, 3], 4);
    assert_eq!(packed.len(), 2);
    assert_eq!(packed[0].tokens, examples[12].tokens[..4]);
    assert_eq!(packed[1].segments, vec![(0, 1)]);
    assert!(pack(&examples, &order, 0).is_empty());
    assert!(pack(&examples, &[], 8).is_empty());
}

#[test]
fn pack_real_examples() {
    let rows: Vec<_> = (0..20)
        .map(|i| serde_json::json!({"prompt": format!("Count to {i}:"), "completion": format!(" {}", (0..i).map(|k| k.to_string()).collect::<Vec<_>>().join(" "))}))
        .collect();
    let ds = load_str("d.jsonl", &jsonl(&rows), &opts(32)).unwrap();
    let order: Vec<usize> = (0..ds.examples.len()).collect();
    let packed = pack(&ds.examples, &order, 32);
    let total: usize = packed.iter().map(n_targets).sum();
    assert_eq!(total, ds.n_targets());
    assert!(packed.iter().all(|p| p.tokens.len() <= 32));
    assert!(packed.len() < ds.examples.len());
}

fn dataset_of(n: usize) -> Dataset {
    Dataset {
        examples: examples_of(&vec![3; n]),
        shape: Shape::Text,
        truncated: 2,
        sha256: "ab".into(),
        path: PathBuf::from("d.jsonl"),
    }
}

#[test]
fn split_is_deterministic_and_sized() {
    for (n, frac, want) in [
        (10, 0.1, 1),
        (10, 0.15, 2),
        (2, 0.5, 1),
        (2, 0.01, 1),
        (3, 0.99, 2),
        (100, 0.2, 20),
    ] {
        let (train, valid) = split(dataset_of(n), frac, 42).unwrap();
        assert_eq!(valid.examples.len(), want, "n {n} frac {frac}");
        assert_eq!(train.examples.len() + valid.examples.len(), n);
        let (t2, v2) = split(dataset_of(n), frac, 42).unwrap();
        assert_eq!(train.examples, t2.examples);
        assert_eq!(valid.examples, v2.examples);
        // Each part keeps file order, and together they are the whole set.
        let mut all: Vec<u32> = train
            .examples
            .iter()
            .chain(&valid.examples)
            .map(|e| e.tokens[0])
            .collect();
        for part in [&train, &valid] {
            let firsts: Vec<u32> = part.examples.iter().map(|e| e.tokens[0]).collect();
            assert!(firsts.windows(2).all(|w| w[0] < w[1]));
        }
        all.sort();
        assert_eq!(all, (0..n as u32).map(|k| 1000 * k).collect::<Vec<_>>());
        assert_eq!((train.truncated, valid.truncated), (2, 0));
        assert_eq!(valid.sha256, "ab");
        assert_eq!(valid.shape, Shape::Text);
    }
    // Another seed picks another set (for these sizes, some seed does).
    let pick = |seed| split(dataset_of(50), 0.2, seed).unwrap().1.examples;
    assert!((1..10).any(|s| pick(s) != pick(0)));
    // Bad fractions and too few examples.
    for frac in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
        let e = split(dataset_of(10), frac, 1).unwrap_err().to_string();
        assert_has(&e, &["between 0 and 1"]);
    }
    let e = split(dataset_of(1), 0.5, 1).unwrap_err().to_string();
    assert_has(
        &e,
        &["d.jsonl: cannot split off a validation set from 1 example"],
    );
}
