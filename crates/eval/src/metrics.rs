//! lm-eval's per-sample metrics, filters and aggregations.

use anyhow::Context as _;

use crate::task::{FilterSpec, MetricSpec};
use crate::value::Val;

/// `process_results` of a multiple-choice document: acc, acc_norm (loglikelihood over
/// the choice's length in characters), acc_bytes (over its UTF-8 length), exact_match.
pub fn multiple_choice(
    lls: &[f64],
    greedy: &[bool],
    choices: &[String],
    gold: &[usize],
    wanted: &[String],
) -> Vec<(String, f64)> {
    let argmax = |xs: &[f64]| {
        // numpy's argmax: the first maximum.
        let mut best = 0;
        for (i, &v) in xs.iter().enumerate().skip(1) {
            if v > xs[best] {
                best = i;
            }
        }
        best
    };
    let by_len: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(l, c)| l / c.chars().count() as f64)
        .collect();
    let by_bytes: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(l, c)| l / c.len() as f64)
        .collect();
    let (pred, pred_norm, pred_bytes) = (argmax(lls), argmax(&by_len), argmax(&by_bytes));
    let hit = |p: usize| if gold.contains(&p) { 1.0 } else { 0.0 };
    let mut out = Vec::new();
    for m in wanted {
        match m.as_str() {
            "acc" => out.push((m.clone(), hit(pred))),
            "acc_norm" => out.push((m.clone(), hit(pred_norm))),
            "acc_bytes" => out.push((m.clone(), hit(pred_bytes))),
            "exact_match" => out.push((
                m.clone(),
                if gold.iter().any(|&g| greedy.get(g) == Some(&true)) {
                    1.0
                } else {
                    0.0
                },
            )),
            _ => {}
        }
    }
    if !wanted.iter().any(|m| m == "acc_bytes") {
        out.push(("acc_bytes".into(), hit(pred_bytes)));
    }
    out
}

/// lm-eval's RegexFilter + take_first over one response.
pub fn apply_filter(f: &FilterSpec, resp: &str) -> anyhow::Result<String> {
    let mut s = resp.to_string();
    for step in &f.filter {
        match step.function.as_str() {
            "regex" => {
                let pat = step
                    .regex_pattern
                    .as_deref()
                    .unwrap_or(r"#### (\-?[0-9\.\,]+)");
                let re = regex::Regex::new(pat).with_context(|| format!("filter regex {pat:?}"))?;
                // Python's re.findall: the whole match without groups, the group with
                // one, a tuple with several.
                let matches: Vec<Vec<String>> = re
                    .captures_iter(&s)
                    .map(|c| {
                        if c.len() == 1 {
                            vec![c[0].to_string()]
                        } else {
                            (1..c.len())
                                .map(|i| c.get(i).map_or(String::new(), |m| m.as_str().to_string()))
                                .collect()
                        }
                    })
                    .collect();
                s = if matches.is_empty() {
                    "[invalid]".to_string()
                } else {
                    let g = step.group_select.unwrap_or(0);
                    let idx = if g < 0 { matches.len() as i64 + g } else { g };
                    match matches.get(idx.max(0) as usize) {
                        Some(m) => match m.iter().find(|x| !x.is_empty()) {
                            Some(x) => x.trim().to_string(),
                            None => "[invalid]".to_string(),
                        },
                        None => "[invalid]".to_string(),
                    }
                };
            }
            "take_first" => {}
            "lowercase" => s = s.to_lowercase(),
            "uppercase" => s = s.to_uppercase(),
            "remove_whitespace" => s = s.trim_start().to_string(),
            other => anyhow::bail!("unsupported filter function '{other}'"),
        }
    }
    Ok(s)
}

/// HF evaluate's exact_match with lm-eval's options.
pub fn exact_match(pred: &str, target: &str, m: &MetricSpec) -> anyhow::Result<f64> {
    let mut p = pred.to_string();
    let mut t = target.to_string();
    for r in &m.regexes_to_ignore {
        let re = regex::Regex::new(r).with_context(|| format!("regexes_to_ignore {r:?}"))?;
        p = re.replace_all(&p, "").into_owned();
        t = re.replace_all(&t, "").into_owned();
    }
    if m.ignore_case.unwrap_or(false) {
        p = p.to_lowercase();
        t = t.to_lowercase();
    }
    if m.ignore_punctuation.unwrap_or(false) {
        p.retain(|c| !c.is_ascii_punctuation());
        t.retain(|c| !c.is_ascii_punctuation());
    }
    Ok(if p == t { 1.0 } else { 0.0 })
}

/// Mean and its standard error (sample standard deviation / sqrt(n)), as lm-eval.
pub fn mean_stderr(xs: &[f64]) -> (f64, Option<f64>) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, None);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, None);
    }
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, Some((var / n).sqrt()))
}

/// lm-eval's `perplexity` aggregation: exp(-mean loglikelihood).
pub fn perplexity(lls: &[f64]) -> f64 {
    (-lls.iter().sum::<f64>() / lls.len() as f64).exp()
}

/// The count a `loglikelihood_rolling` metric is weighted by (lm-eval's `process_results`),
/// given the document's (words, bytes): words for `word_perplexity`, UTF-8 bytes for
/// `byte_perplexity` and `bits_per_byte`; `None` for other metrics.
pub fn rolling_weight(metric: &str, (words, bytes): (usize, usize)) -> Option<usize> {
    match metric {
        "word_perplexity" => Some(words),
        "byte_perplexity" | "bits_per_byte" => Some(bytes),
        _ => None,
    }
}

/// lm-eval's (words, bytes) of a text: `Task.count_words`, `Task.count_bytes`.
pub fn rolling_counts(text: &str) -> (usize, usize) {
    (
        crate::rolling::count_words(text),
        crate::rolling::count_bytes(text),
    )
}

/// The aggregation lm-eval registers for a metric.
pub fn default_aggregation(metric: &str) -> &'static str {
    match metric {
        "perplexity" => "perplexity",
        "word_perplexity" | "byte_perplexity" => "weighted_perplexity",
        "bits_per_byte" => "bits_per_byte",
        _ => "mean",
    }
}

/// Whether lm-eval registers a metric as higher-is-better.
pub fn default_higher_is_better(metric: &str) -> bool {
    !matches!(
        metric,
        "perplexity" | "word_perplexity" | "byte_perplexity" | "bits_per_byte"
    )
}

/// lm-eval's `weighted_mean`: `sum(a) / sum(b)` over (value, weight) pairs, summed in order.
pub fn weighted_mean(items: &[(f64, f64)]) -> f64 {
    let a: f64 = items.iter().map(|x| x.0).sum();
    let b: f64 = items.iter().map(|x| x.1).sum();
    a / b
}

/// lm-eval's `weighted_perplexity` aggregation: `exp(-weighted_mean)`.
pub fn weighted_perplexity(items: &[(f64, f64)]) -> f64 {
    (-weighted_mean(items)).exp()
}

/// lm-eval's `bits_per_byte` aggregation: `-weighted_mean / ln 2`.
pub fn bits_per_byte(items: &[(f64, f64)]) -> f64 {
    -weighted_mean(items) / std::f64::consts::LN_2
}

/// lm-eval's `pooled_sample_stderr`.
pub fn pooled_stderr(stderrs: &[f64], sizes: &[usize]) -> Option<f64> {
    let total: usize = sizes.iter().sum();
    if total <= sizes.len() {
        return None;
    }
    let var: f64 = sizes
        .iter()
        .zip(stderrs)
        .map(|(&n, s)| (n as f64 - 1.0) * s * s * n as f64)
        .sum::<f64>()
        / (total - sizes.len()) as f64;
    Some((var / total as f64).sqrt())
}

/// Gold indices of a multiple-choice document.
pub fn gold_indices(target: &Val, choices: &[String]) -> Vec<usize> {
    let one = |v: &Val| -> Option<usize> {
        match v {
            Val::Int(i) if *i >= 0 && (*i as usize) < choices.len() => Some(*i as usize),
            Val::Str(s) => choices.iter().position(|c| c == s),
            _ => None,
        }
    };
    match target {
        Val::List(l) => l.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::FilterStep;

    #[test]
    fn gsm8k_filters() {
        let strict = FilterSpec {
            name: "strict-match".into(),
            filter: vec![
                FilterStep {
                    function: "regex".into(),
                    regex_pattern: Some(r"#### (\-?[0-9\.\,]+)".into()),
                    group_select: None,
                },
                FilterStep {
                    function: "take_first".into(),
                    regex_pattern: None,
                    group_select: None,
                },
            ],
        };
        let flex = FilterSpec {
            name: "flexible-extract".into(),
            filter: vec![FilterStep {
                function: "regex".into(),
                regex_pattern: Some(r"(-?[$0-9.,]{2,})|(-?[0-9]+)".into()),
                group_select: Some(-1),
            }],
        };
        assert_eq!(apply_filter(&strict, "so 5+4=9\n#### 9").unwrap(), "9");
        assert_eq!(
            apply_filter(&strict, "the answer is 9").unwrap(),
            "[invalid]"
        );
        assert_eq!(apply_filter(&flex, "3 apples and $18.").unwrap(), "$18.");
        let m = MetricSpec {
            metric: "exact_match".into(),
            aggregation: None,
            higher_is_better: None,
            ignore_case: Some(true),
            ignore_punctuation: Some(false),
            regexes_to_ignore: vec![
                ",".into(),
                "\\$".into(),
                "(?s).*#### ".into(),
                "\\.$".into(),
            ],
        };
        assert_eq!(exact_match("$18.", "Janet...\n#### 18", &m).unwrap(), 1.0);
    }

    #[test]
    fn rolling_aggregations() {
        // Two documents: ll -10 over 4 words / 20 bytes, ll -6 over 2 words / 12 bytes.
        let words = [(-10.0, 4.0), (-6.0, 2.0)];
        let bytes = [(-10.0, 20.0), (-6.0, 12.0)];
        assert!((weighted_perplexity(&words) - (16.0f64 / 6.0).exp()).abs() < 1e-12);
        assert!((weighted_perplexity(&bytes) - 0.5f64.exp()).abs() < 1e-12);
        assert!((bits_per_byte(&bytes) - 0.5 / 2f64.ln()).abs() < 1e-12);
        assert_eq!(rolling_counts(" a b"), (3, 4));
        assert_eq!(
            rolling_weight("word_perplexity", rolling_counts(" a b")),
            Some(3)
        );
        assert_eq!(
            rolling_weight("bits_per_byte", rolling_counts("é")),
            Some(2)
        );
        assert_eq!(rolling_weight("acc", (1, 1)), None);
        assert_eq!(
            default_aggregation("byte_perplexity"),
            "weighted_perplexity"
        );
        assert!(!default_higher_is_better("bits_per_byte"));
    }

    #[test]
    fn acc_norm_uses_characters() {
        let m = multiple_choice(
            &[-2.0, -3.0],
            &[false, false],
            &["ab".into(), "abcdef".into()],
            &[1],
            &["acc".into(), "acc_norm".into()],
        );
        assert_eq!(m[0], ("acc".into(), 0.0));
        assert_eq!(m[1], ("acc_norm".into(), 1.0));
    }
}
