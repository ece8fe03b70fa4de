//! The generation loop: prompt (reusing the cached prefix), then sample token by token
//! until end of generation, a stop string, the token limit or the context's end.

use std::time::Instant;

use verity_tokenizer::StreamDecoder;

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

/// Generate a continuation of `prompt`. `on_text` receives text as it becomes final and
/// returns `false` to stop early.
pub fn generate(
    session: &mut Session,
    prompt: &[u32],
    params: &GenerateParams,
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
    let reuse = session.common_prefix(prompt).min(prompt.len() - 1);
    session.truncate(reuse);
    timings.cached_tokens = reuse;
    let mut logits = session.eval(&prompt[reuse..])?.to_vec();
    timings.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

    let t1 = Instant::now();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut out_tokens = Vec::new();
    let mut decoder = StreamDecoder::new(tokenizer);
    let mut text = String::new();
    let mut emitted = 0usize;
    let mut finish = FinishReason::Length;

    while out_tokens.len() < params.max_tokens {
        let tok = sampler.sample(&logits, &history);
        if !params.ignore_eos && tokenizer.is_end_of_generation(tok) {
            finish = FinishReason::Stop;
            break;
        }
        out_tokens.push(tok);
        history.push(tok);
        text.push_str(&decoder.push(tok).unwrap_or_default());

        if let Some(cut) = find_stop(&text, &params.stop, emitted) {
            text.truncate(cut);
            finish = FinishReason::Stop;
            break;
        }
        let safe = safe_emit_len(&text, &params.stop);
        if safe > emitted {
            if !on_text(&text[emitted..safe]) {
                emitted = safe;
                finish = FinishReason::Cancelled;
                break;
            }
            emitted = safe;
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
    if finish != FinishReason::Stop || params.stop.is_empty() {
        text.push_str(&decoder.flush());
    }
    if finish != FinishReason::Cancelled && text.len() > emitted {
        on_text(&text[emitted..]);
    }
    timings.generated_tokens = out_tokens.len();
    timings.generation_ms = t1.elapsed().as_secs_f64() * 1e3;
    Ok(Generation {
        tokens: out_tokens,
        text,
        finish_reason: finish,
        timings,
    })
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
