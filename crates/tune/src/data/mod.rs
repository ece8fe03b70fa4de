//! Training data: reading, tokenizing, masking and packing.
//!
//! A data file is JSONL (one object per line, blank lines skipped), JSON (an array of
//! objects) or Parquet (one row per example), chosen by extension. Every example of a file
//! has the same shape, fixed by the first:
//!
//! - `{"messages": [{"role", "content"}, ...]}`: the conversation rendered with the model's
//!   chat template (no generation prompt). Roles are `system`, `user`, `assistant` and
//!   `tool` (passed to the template as they are); other keys of a message are ignored. The
//!   loss is on the assistant turns: each turn is what rendering `messages[..=i]` adds to
//!   `messages[..i]` rendered with the generation prompt, so the `<|im_start|>assistant\n`
//!   header is prompt and the content plus the template's end-of-turn token (`<|im_end|>`,
//!   `<|eot_id|>`, ...) are targets. Whatever a turn renders after its last end-of-generation
//!   token (ChatML's newline) is not a target: generation stops at that token, so nothing
//!   after it is ever predicted. The rendered text is tokenized in pieces cut at the turn
//!   boundaries (special tokens written by the template, like `<|im_start|>`, map to their
//!   ids), so a token never straddles a boundary. No BOS is added when the rendered text
//!   starts with the BOS token's text; otherwise BOS is added when the tokenizer adds one.
//!   No EOS is appended: the template's end-of-turn token ends each turn.
//! - `{"prompt", "completion"}`: BOS (when the tokenizer adds one) + prompt + completion +
//!   EOS, prompt and completion tokenized separately so the boundary is exact (as TRL
//!   does); the loss is on the completion and the EOS.
//! - `{"text"}`: BOS (when the tokenizer adds one) + text + EOS; the loss is on every token.
//!
//! EOS is the tokenizer's `eos_id` (none when the model has none), not appended when the
//! tokens already end with it. With [`DataOptions::train_on_prompt`] every token is a
//! target. Position 0 is never a target (nothing precedes it). Keys whose value is null
//! count as absent; keys other than the shape's are ignored.
//!
//! An example longer than [`DataOptions::max_seq_len`] keeps its first `max_seq_len`
//! tokens and is counted in [`Dataset::truncated`]; one left with no target by the cut is
//! an error naming it. [`pack`] then fills training sequences with whole examples; the
//! training step keeps attention inside each segment.
//!
//! Every problem with the data is a [`DataError`] naming the file and the 1-based line
//! (JSONL, and JSON syntax errors), record (JSON array element) or row (Parquet) and
//! saying what to do. No input makes this module panic.

mod example;
mod read;

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use verity_tokenizer::Tokenizer;

use example::{Ctx, Record};
use read::Format;

/// How examples are built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataOptions {
    /// Longest example in tokens (`--max-seq-len`); longer ones are cut. At least 2.
    pub max_seq_len: usize,
    /// Loss on every token (`--train-on-prompt`), not only on the assistant turns or the
    /// completion.
    pub train_on_prompt: bool,
}

/// The shape of a data file's examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// `{"messages": [...]}`
    Messages,
    /// `{"prompt": "...", "completion": "..."}`
    PromptCompletion,
    /// `{"text": "..."}`
    Text,
}

impl Shape {
    /// A short name: "messages", "prompt-completion", "text" (for receipts and logs).
    pub fn name(self) -> &'static str {
        match self {
            Shape::Messages => "messages",
            Shape::PromptCompletion => "prompt-completion",
            Shape::Text => "text",
        }
    }
}

/// The keys of the shape: `{"messages"}`, `{"prompt","completion"}`, `{"text"}`.
impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Shape::Messages => "{\"messages\"}",
            Shape::PromptCompletion => "{\"prompt\",\"completion\"}",
            Shape::Text => "{\"text\"}",
        })
    }
}

/// One tokenized example. `target[i]` says whether token i is a training target (predicted
/// from `tokens[..i]`); `target[0]` is always false.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub target: Vec<bool>,
}

impl Example {
    /// Number of training targets.
    pub fn n_targets(&self) -> usize {
        self.target.iter().filter(|&&t| t).count()
    }
}

/// A data file, tokenized.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// The file's shape.
    pub shape: Shape,
    /// How many examples were cut to `max_seq_len`, counted over the whole file (after
    /// [`split`], on the training part; the validation part has 0).
    pub truncated: usize,
    /// SHA-256 of the file's bytes, lower-case hex.
    pub sha256: String,
    /// The file.
    pub path: PathBuf,
}

impl Dataset {
    /// Tokens over all examples.
    pub fn n_tokens(&self) -> usize {
        self.examples.iter().map(|e| e.tokens.len()).sum()
    }

    /// Training targets over all examples.
    pub fn n_targets(&self) -> usize {
        self.examples.iter().map(Example::n_targets).sum()
    }
}

/// Where a record is in its file, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// A line of a JSONL file (or of a JSON file, for a syntax error).
    Line(usize),
    /// An element of a JSON array.
    Record(usize),
    /// A row of a Parquet file.
    Row(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Record(n) => write!(f, "record {n}"),
            Loc::Row(n) => write!(f, "row {n}"),
        }
    }
}

const SHAPES: &str = r#"{"messages"}, {"prompt","completion"} or {"text"}"#;

/// Everything that can be wrong with a data file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unknown data format; use .jsonl (one JSON object per line), .json (an array of objects) or .parquet", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{} is empty: no examples; it needs at least one {SHAPES} record", path.display())]
    Empty { path: PathBuf },
    #[error("{}: {at}: not UTF-8 text; save the file as UTF-8", path.display())]
    NotUtf8 { path: PathBuf, at: Loc },
    #[error("{}: {at}: not JSON: {msg}", path.display())]
    NotJson { path: PathBuf, at: Loc, msg: String },
    #[error("{}: a .json data file must hold an array of objects ([{{...}}, ...]), this one holds {found}; for one object per line use .jsonl", path.display())]
    NotArray { path: PathBuf, found: &'static str },
    #[error("{}: not a readable Parquet file: {msg}", path.display())]
    Parquet { path: PathBuf, msg: String },
    #[error("{}: {at}: expected one of {SHAPES}; {found}{}", path.display(), first.map(|s| format!("; this file's first example has shape {s}")).unwrap_or_default())]
    UnknownShape {
        path: PathBuf,
        at: Loc,
        found: String,
        first: Option<Shape>,
    },
    #[error("{}: {at}: this record has shape {found}, but the file's first example ({first_at}) has shape {first}; use one shape per file", path.display())]
    MixedShapes {
        path: PathBuf,
        at: Loc,
        found: Shape,
        first: Shape,
        first_at: Loc,
    },
    #[error("{}: {at}: {msg}", path.display())]
    Field { path: PathBuf, at: Loc, msg: String },
    #[error("{}: {at}: nothing to learn: {why}; fix or remove the example", path.display())]
    NothingToLearn { path: PathBuf, at: Loc, why: String },
    #[error("{}: {at}: nothing to learn after truncation: the example has {len} tokens and none of its first {max_seq_len} is a target; raise --max-seq-len or shorten the prompt", path.display())]
    TruncatedAway {
        path: PathBuf,
        at: Loc,
        len: usize,
        max_seq_len: usize,
    },
    #[error("{}: the model has no chat template; use prompt/completion or text data", path.display())]
    NoChatTemplate { path: PathBuf },
    #[error("{}: the model's chat template is invalid ({msg}); use prompt/completion or text data", path.display())]
    BadTemplate { path: PathBuf, msg: String },
    #[error("{}: {at}: {msg}", path.display())]
    Template { path: PathBuf, at: Loc, msg: String },
    #[error("{}: {at}: the chat template does not render this conversation incrementally (adding message {message} changes the text before it), so its assistant turns cannot be located; use prompt/completion data (or --train-on-prompt)", path.display())]
    NotIncremental {
        path: PathBuf,
        at: Loc,
        message: usize,
    },
    #[error("{}: {at}: {msg}", path.display())]
    Tokenize { path: PathBuf, at: Loc, msg: String },
    #[error("--max-seq-len must be at least 2 (got {0})")]
    MaxSeqLen(usize),
    #[error("the validation fraction must be between 0 and 1, exclusive (got {0})")]
    SplitFraction(f64),
    #[error("{}: cannot split off a validation set from {n} example(s): it takes at least 2", path.display())]
    TooFewToSplit { path: PathBuf, n: usize },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Read, check and tokenize a data file (`.jsonl`, `.json` or `.parquet`).
pub fn load(path: &Path, tok: &Tokenizer, opts: &DataOptions) -> Result<Dataset, DataError> {
    if opts.max_seq_len < 2 {
        return Err(DataError::MaxSeqLen(opts.max_seq_len));
    }
    let format = Format::of(path).ok_or_else(|| DataError::UnknownFormat {
        path: path.to_path_buf(),
    })?;
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The bytes hashed are the bytes read: Parquet is read through the same open file.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    let sha256 = hex(&Sha256::digest(&bytes));

    let mut state = State {
        path,
        tok,
        opts,
        first: None,
        template: None,
        examples: Vec::new(),
        truncated: 0,
    };
    let mut each = |at: Loc, value: serde_json::Value| state.add(at, value);
    match format {
        Format::Jsonl => read::jsonl(path, &bytes, &mut each)?,
        Format::Json => read::json(path, &bytes, &mut each)?,
        Format::Parquet => {
            drop(bytes);
            read::parquet(path, file, &mut each)?
        }
    };
    let Some((shape, _)) = state.first else {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    };
    Ok(Dataset {
        examples: state.examples,
        shape,
        truncated: state.truncated,
        sha256,
        path: path.to_path_buf(),
    })
}

/// What [`load`] accumulates record by record.
struct State<'a> {
    path: &'a Path,
    tok: &'a Tokenizer,
    opts: &'a DataOptions,
    /// The first record's shape and place.
    first: Option<(Shape, Loc)>,
    /// The compiled chat template (messages data), compiled at the first record.
    template: Option<verity_tokenizer::ChatTemplate>,
    examples: Vec<Example>,
    truncated: usize,
}

impl State<'_> {
    fn add(&mut self, at: Loc, value: serde_json::Value) -> Result<(), DataError> {
        let path = self.path.to_path_buf();
        let shape = example::shape_of(&value).map_err(|found| DataError::UnknownShape {
            path: path.clone(),
            at,
            found,
            first: self.first.map(|(s, _)| s),
        })?;
        match self.first {
            None => {
                if shape == Shape::Messages {
                    self.template = Some(self.compile()?);
                }
                self.first = Some((shape, at));
            }
            Some((first, first_at)) if first != shape => {
                return Err(DataError::MixedShapes {
                    path,
                    at,
                    found: shape,
                    first,
                    first_at,
                });
            }
            Some(_) => {}
        }
        let record: Record = example::parse(&value, shape).map_err(|msg| DataError::Field {
            path: path.clone(),
            at,
            msg,
        })?;
        drop(value);
        let cx = Ctx {
            path: self.path,
            tok: self.tok,
            opts: self.opts,
            template: self.template.as_ref(),
        };
        let mut ex = example::tokenize(&cx, at, &record)?;
        let len = ex.tokens.len();
        let max = self.opts.max_seq_len;
        if len > max {
            ex.tokens.truncate(max);
            ex.target.truncate(max);
            self.truncated += 1;
            if !ex.target.contains(&true) {
                return Err(DataError::TruncatedAway {
                    path,
                    at,
                    len,
                    max_seq_len: max,
                });
            }
        }
        if !ex.target.contains(&true) {
            return Err(DataError::NothingToLearn {
                path,
                at,
                why: "no token of the example is a training target".into(),
            });
        }
        self.examples.push(ex);
        Ok(())
    }

    fn compile(&self) -> Result<verity_tokenizer::ChatTemplate, DataError> {
        match self.tok.chat() {
            None => Err(DataError::NoChatTemplate {
                path: self.path.to_path_buf(),
            }),
            Some(Err(e)) => Err(DataError::BadTemplate {
                path: self.path.to_path_buf(),
                msg: e.to_string(),
            }),
            Some(Ok(t)) => Ok(t),
        }
    }
}

/// splitmix64: a small, fixed generator, so that a split depends on the seed alone.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return x % n;
            }
        }
    }
}

/// Split off a validation set: a Fisher–Yates shuffle of the indices seeded with `seed`,
/// the first `ceil(frac·n)` of them (at least 1, leaving at least 1 for training) are the
/// validation examples. Returns `(train, valid)`, each in file order. Deterministic from
/// `seed`, `frac` and the number of examples.
pub fn split(ds: Dataset, frac: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
    // `!(a && b)` also refuses NaN.
    #[allow(clippy::nonminimal_bool)]
    if !(frac > 0.0 && frac < 1.0) {
        return Err(DataError::SplitFraction(frac));
    }
    let n = ds.examples.len();
    if n < 2 {
        return Err(DataError::TooFewToSplit { path: ds.path, n });
    }
    let n_valid = ((frac * n as f64).ceil() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(seed);
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut is_valid = vec![false; n];
    for &i in &order[..n_valid] {
        is_valid[i] = true;
    }
    let Dataset {
        examples,
        shape,
        truncated,
        sha256,
        path,
    } = ds;
    let (mut train, mut valid) = (Vec::with_capacity(n - n_valid), Vec::with_capacity(n_valid));
    for (ex, v) in examples.into_iter().zip(is_valid) {
        if v {
            valid.push(ex);
        } else {
            train.push(ex);
        }
    }
    let valid = Dataset {
        examples: valid,
        shape,
        truncated: 0,
        sha256: sha256.clone(),
        path: path.clone(),
    };
    let train = Dataset {
        examples: train,
        shape,
        truncated,
        sha256,
        path,
    };
    Ok((train, valid))
}

/// One training sequence: examples packed back to back. `segments` are `(start, len)` of
/// each example within `tokens`; attention stays inside a segment, and each segment's first
/// token is not a target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    pub tokens: Vec<u32>,
    pub target: Vec<bool>,
    pub segments: Vec<(usize, usize)>,
}

/// Greedy packing in the given order: append each example to the current sequence while
/// the total stays `<= seq_len`, else start a new sequence. Deterministic.
///
/// An example longer than `seq_len` is cut to `seq_len` (never the case when `seq_len` is
/// the `max_seq_len` the data was loaded with); indices outside `examples` and empty
/// examples are skipped. No sequence is longer than `seq_len`, and the segments of all
/// sequences, in order, are the examples of `order`.
pub fn pack(examples: &[Example], order: &[usize], seq_len: usize) -> Vec<Packed> {
    let mut out = Vec::new();
    if seq_len == 0 {
        return out;
    }
    let mut cur = Packed::default();
    for &i in order {
        let Some(ex) = examples.get(i) else { continue };
        let n = ex.tokens.len().min(ex.target.len()).min(seq_len);
        if n == 0 {
            continue;
        }
        if !cur.tokens.is_empty() && cur.tokens.len() + n > seq_len {
            out.push(std::mem::take(&mut cur));
        }
        cur.segments.push((cur.tokens.len(), n));
        cur.tokens.extend_from_slice(&ex.tokens[..n]);
        cur.target.extend_from_slice(&ex.target[..n]);
        // A segment's first token has nothing before it inside the segment.
        let start = cur.target.len() - n;
        cur.target[start] = false;
    }
    if !cur.tokens.is_empty() {
        out.push(cur);
    }
    out
}

/// Number of training targets in a packed sequence.
pub fn n_targets(p: &Packed) -> usize {
    p.target.iter().filter(|&&t| t).count()
}
