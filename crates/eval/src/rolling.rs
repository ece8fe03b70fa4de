//! `loglikelihood_rolling`: a whole document scored token by token, split into windows of
//! at most the model's length exactly as lm-evaluation-harness splits it
//! (`utils.get_rolling_token_windows` with `context_len=1`, then `make_disjoint_window`),
//! and lm-eval's word and byte counts for the perplexity metrics.

use crate::backend::LlRequest;

/// lm-eval's `get_rolling_token_windows(token_list, prefix_token, max_seq_len,
/// context_len)`: (input tokens, predicted tokens) pairs covering every token of
/// `tokens` once. The first window predicts up to `max_seq_len` tokens after
/// `prefix_token`; each later one predicts the next `max_seq_len - context_len + 1`
/// tokens (fewer at the end), its input reaching back `max_seq_len` tokens.
pub fn rolling_token_windows(
    tokens: &[u32],
    prefix_token: u32,
    max_seq_len: usize,
    context_len: usize,
) -> Vec<(Vec<u32>, Vec<u32>)> {
    assert!(1 <= context_len && context_len <= max_seq_len);
    let mut out = Vec::new();
    if tokens.is_empty() {
        return out;
    }
    let pred_len = max_seq_len - context_len + 1;
    let first = max_seq_len.min(tokens.len());
    let mut input = vec![prefix_token];
    input.extend_from_slice(&tokens[..first - 1]);
    out.push((input, tokens[..first].to_vec()));
    let mut predicted = first;
    while predicted < tokens.len() {
        let window_pred_len = (tokens.len() - predicted).min(pred_len);
        let end = predicted + window_pred_len;
        // Python's tokens[end - max_seq_len - 1 : end - 1]: a negative start counts from
        // the end of the list (it cannot here: end > max_seq_len once the first window is
        // full), a start past the stop is empty.
        let start = (end as isize - max_seq_len as isize - 1).max(0) as usize;
        out.push((
            tokens[start..end - 1].to_vec(),
            tokens[end - window_pred_len..end].to_vec(),
        ));
        predicted += window_pred_len;
    }
    out
}

/// lm-eval's `make_disjoint_window`: the input without the tokens the window predicts
/// (all but the first of them), so context + continuation is the window's full sequence.
pub fn make_disjoint_window((a, b): (Vec<u32>, Vec<u32>)) -> LlRequest {
    let keep = a.len() - (b.len() - 1);
    LlRequest {
        context: a[..keep].to_vec(),
        continuation: b,
    }
}

/// A document's windows as HFLM's `loglikelihood_rolling` builds them: `context_len=1`,
/// disjoint. Every token of the document is the continuation of exactly one window.
pub fn windows(tokens: &[u32], prefix_token: u32, max_length: usize) -> Vec<LlRequest> {
    rolling_token_windows(tokens, prefix_token, max_length, 1)
        .into_iter()
        .map(make_disjoint_window)
        .collect()
}

/// Python's `str.isspace` for one character, which is what `\s` matches in a `str`
/// pattern: Unicode White_Space plus the information separators U+001C..U+001F.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// lm-eval's `Task.count_words`: `len(re.split(r"\s+", doc))` — the number of maximal
/// whitespace runs plus one (so leading or trailing whitespace adds an empty "word", and
/// an empty document has one).
pub fn count_words(doc: &str) -> usize {
    let mut runs = 0;
    let mut in_space = false;
    for c in doc.chars() {
        let s = py_isspace(c);
        if s && !in_space {
            runs += 1;
        }
        in_space = s;
    }
    runs + 1
}

/// lm-eval's `Task.count_bytes`: `len(doc.encode("utf-8"))`.
pub fn count_bytes(doc: &str) -> usize {
    doc.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: u32) -> Vec<u32> {
        (100..100 + n).collect()
    }

    /// Expected values printed by lm-eval 0.4.13 itself:
    /// `list(map(make_disjoint_window, get_rolling_token_windows(list(range(100, 110)), 1, 4, 1)))`.
    #[test]
    fn windows_match_lm_eval() {
        let w = windows(&toks(10), 1, 4);
        let got: Vec<(Vec<u32>, Vec<u32>)> =
            w.into_iter().map(|r| (r.context, r.continuation)).collect();
        assert_eq!(
            got,
            vec![
                (vec![1], vec![100, 101, 102, 103]),
                (vec![103], vec![104, 105, 106, 107]),
                (vec![105, 106, 107], vec![108, 109]),
            ]
        );
        // Shorter than the window: one window.
        let w = windows(&toks(3), 7, 4);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].context, vec![7]);
        assert_eq!(w[0].continuation, vec![100, 101, 102]);
        // Exactly the window: one window.
        assert_eq!(windows(&toks(4), 7, 4).len(), 1);
        // One token more: a second window of one token after max_length context tokens.
        let w = windows(&toks(5), 7, 4);
        assert_eq!(w.len(), 2);
        assert_eq!(w[1].context, vec![100, 101, 102, 103]);
        assert_eq!(w[1].continuation, vec![104]);
        assert!(windows(&[], 7, 4).is_empty());
    }

    #[test]
    fn windows_cover_every_token_once_and_fit() {
        for n in 0..60u32 {
            for max in 1..12usize {
                let t = toks(n);
                let w = windows(&t, 1, max);
                let cont: Vec<u32> = w.iter().flat_map(|r| r.continuation.clone()).collect();
                assert_eq!(cont, t, "n={n} max={max}");
                for r in &w {
                    // What the model reads: context + continuation minus the last token.
                    assert!(r.context.len() + r.continuation.len() - 1 <= max);
                    assert!(!r.context.is_empty());
                }
            }
        }
    }

    /// Against Python: `len(re.split(r"\s+", s))`.
    #[test]
    fn words_as_python_counts_them() {
        assert_eq!(count_words(""), 1);
        assert_eq!(count_words("one"), 1);
        assert_eq!(count_words("one two"), 2);
        assert_eq!(count_words("one  \n\t two"), 2);
        assert_eq!(count_words(" one two "), 4);
        assert_eq!(count_words("a\u{a0}b\u{2003}c\u{3000}d"), 4);
        assert_eq!(count_words("a\u{1c}b\u{1f}c"), 3);
        assert_eq!(count_words("a\u{200b}b"), 1);
        assert_eq!(count_bytes("naïve"), 6);
    }
}
