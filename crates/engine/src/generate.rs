//! The generation loop: prompt (reusing the cached prefix), then sample token by token
//! until end of generation, a stop string, the token limit or the context's end.

use std::time::Instant;

use verity_tokenizer::{StreamDecoder, Tokenizer};

use crate::{EngineError, Sampler, SamplingParams, Session};

#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when the output contains one of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 512,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// Why generation ended (OpenAI's `finish_reason` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-generation token or stop string.
    Stop,
    /// Token limit or context end.
    Length,
    /// The caller asked to stop.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the cache and not recomputed.
    pub cached_tokens: usize,
    pub prompt_ms: f64,
    pub generated_tokens: usize,
    pub generation_ms: f64,
}

impl Timings {
    pub fn prompt_tokens_per_s(&self) -> f64 {
        per_second(self.prompt_tokens - self.cached_tokens, self.prompt_ms)
    }
    pub fn generation_tokens_per_s(&self) -> f64 {
        // The first token comes from the prompt pass; rates count the steps after it.
        per_second(self.generated_tokens.saturating_sub(1), self.generation_ms)
    }
}

fn per_second(n: usize, ms: f64) -> f64 {
    if ms > 0.0 {
        n as f64 * 1000.0 / ms
    } else {
        0.0
    }
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub timings: Timings,
}

/// Restricts which tokens may come next (constrained decoding: `verity-constraint`).
pub trait TokenFilter {
    /// Set the logits of the tokens that may not come next to -inf.
    fn apply(&mut self, logits: &mut [f32]) -> Result<(), String>;
    /// The token that was chosen. Returns whether the output is complete (nothing more
    /// may follow).
    fn commit(&mut self, token: u32) -> Result<bool, String>;
}

/// Generate a continuation of `prompt`. `on_text` receives text as it becomes final and
/// returns `false` to stop early.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    generate_filtered(session, prompt, params, None, on_text)
}

/// [`generate`], with the tokens sampled from those `filter` allows; generation stops when
/// the filter says the output is complete. `filter.commit` runs right after each token is
/// chosen, before the network computes the next logits, so a filter can prepare its next
/// answer meanwhile.
pub fn generate_filtered(
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
    mut filter: Option<&mut dyn TokenFilter>,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::Empty);
    }
    if prompt.len() >= session.n_ctx() {
        let hp = &session.model().hparams;
        return Err(EngineError::ContextFull {
            needed: prompt.len() + 1,
            n_ctx: session.n_ctx(),
            n_ctx_train: hp.n_ctx_train,
        });
    }
    let model = session.model().clone();
    let tokenizer = &model.tokenizer;
    let mut sampler = Sampler::new(params.sampling.clone());
    let mut timings = Timings {
        prompt_tokens: prompt.len(),
        ..Default::default()
    };

    let t0 = Instant::now();
    // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
    let reuse = session.truncate(session.reusable_prefix(prompt));
    timings.cached_tokens = reuse;
    let mut logits = session.eval(&prompt[reuse..])?.to_vec();
    timings.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out_tokens = Vec::new();
    let mut text = TextStream::new(tokenizer, params.stop.clone());
    let mut finish = FinishReason::Length;

    while out_tokens.len() < params.max_tokens {
        if let Some(f) = filter.as_deref_mut() {
            f.apply(&mut logits).map_err(EngineError::Constraint)?;
        }
        let tok = sampler.sample(&logits, &history);
        if !params.ignore_eos && tokenizer.is_end_of_generation(tok) {
            finish = FinishReason::Stop;
            break;
        }
        let complete = match filter.as_deref_mut() {
            Some(f) => f.commit(tok).map_err(EngineError::Constraint)?,
            None => false,
        };
        out_tokens.push(tok);
        history.push(tok);
        let (delta, stopped) = text.push(tok);
        if !delta.is_empty() && !on_text(&delta) {
            finish = FinishReason::Cancelled;
            break;
        }
        if stopped || complete {
            finish = FinishReason::Stop;
            break;
        }
        if out_tokens.len() >= params.max_tokens {
            break;
        }
        if session.n_past() + 1 > session.n_ctx() - 1 {
            finish = FinishReason::Length;
            break;
        }
        logits.clear();
        logits.extend_from_slice(session.eval(&[tok])?);
    }
    if finish != FinishReason::Cancelled {
        let rest = text.finish();
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    timings.generated_tokens = out_tokens.len();
    timings.generation_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(Generation {
        tokens: out_tokens,
        text: text.into_text(),
        finish_reason: finish,
        timings,
    })
}

/// Generated text as it becomes final: decodes tokens incrementally, cuts at the first
/// stop string, and holds back any tail that could still become one.
pub struct TextStream<'a> {
    decoder: StreamDecoder<'a>,
    stops: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, stops: Vec<String>) -> Self {
        TextStream {
            decoder: StreamDecoder::new(tokenizer),
            stops,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Add a token; returns the text that became final, and whether a stop string ended it.
    pub fn push(&mut self, token: u32) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        self.text
            .push_str(&self.decoder.push(token).unwrap_or_default());
        if let Some(cut) = find_stop(&self.text, &self.stops, self.emitted) {
            self.text.truncate(cut);
            self.stopped = true;
            return (self.take(self.text.len()), true);
        }
        let safe = safe_emit_len(&self.text, &self.stops);
        (self.take(safe), false)
    }

    /// The rest of the text when generation ends for another reason than a stop string.
    pub fn finish(&mut self) -> String {
        if !self.stopped {
            self.text.push_str(&self.decoder.flush());
        }
        self.take(self.text.len())
    }

    /// All text so far (without any stop string).
    pub fn into_text(self) -> String {
        self.text
    }

    fn take(&mut self, upto: usize) -> String {
        if upto <= self.emitted {
            return String::new();
        }
        let s = self.text[self.emitted..upto].to_string();
        self.emitted = upto;
        s
    }
}

/// Byte offset where the first stop string starts, searching from near `from`.
fn find_stop(text: &str, stops: &[String], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let mut start = from.saturating_sub(s.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            text[start..].find(s.as_str()).map(|i| start + i)
        })
        .min()
}

/// How much of `text` can be shown without risking showing the start of a stop string.
fn safe_emit_len(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                hold = hold.max(i);
            }
        }
    }
    text.len() - hold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_stop_prefix() {
        let stops = vec!["###".to_string()];
        assert_eq!(safe_emit_len("abc#", &stops), 3);
        assert_eq!(safe_emit_len("abc##", &stops), 3);
        assert_eq!(safe_emit_len("abc", &stops), 3);
        assert_eq!(find_stop("abc###x", &stops, 0), Some(3));
        assert_eq!(find_stop("abc##", &stops, 0), None);
    }
}
