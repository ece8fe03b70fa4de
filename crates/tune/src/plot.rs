//! The loss curve as an SVG: training loss (and validation loss, when measured) against
//! the optimizer step, on linear axes with a few labelled ticks.

use std::fmt::Write as _;

use crate::checkpoint::{StepRecord, ValidRecord};

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// An SVG document plotting `train` and `valid` losses.
pub fn loss_svg(title: &str, train: &[StepRecord], valid: &[ValidRecord]) -> String {
    let pts: Vec<(f64, f64)> = train.iter().map(|r| (r.step as f64, r.loss)).collect();
    let vpts: Vec<(f64, f64)> = valid.iter().map(|r| (r.step as f64, r.loss)).collect();
    let all = pts.iter().chain(&vpts).filter(|p| p.1.is_finite());
    let (mut x1, mut y0, mut y1) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
    let sx = |x: f64| LEFT + (x / x1) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>
"#,
        W / 2.0,
        escape(title)
    );
    // Axes and ticks.
    let _ = writeln!(
        s,
        r##"<path d="M{LEFT},{TOP} V{} H{}" fill="none" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{y:.3}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            sy(y) + 4.0,
            py = sy(y)
        );
        let x = (x1 * i as f64 / 4.0).round();
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{x}</text>"#,
            sx(x),
            H - BOTTOM + 18.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step</text><text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">loss</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 10.0,
        H / 2.0,
        H / 2.0
    );
    for (p, color, name, row) in [
        (&pts, "#1f77b4", "training", 0),
        (&vpts, "#d62728", "validation", 1),
    ] {
        if p.is_empty() {
            continue;
        }
        let mut d = String::new();
        for (i, &(x, y)) in p.iter().filter(|q| q.1.is_finite()).enumerate() {
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if i == 0 { "M" } else { "L" },
                sx(x),
                sy(y)
            );
        }
        let _ = writeln!(
            s,
            r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="1.5"/>"#
        );
        if p.len() < 50 {
            for &(x, y) in p.iter() {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
        }
        let ly = TOP + 8.0 + 16.0 * row as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            W - RIGHT - 110.0,
            W - RIGHT - 90.0,
            W - RIGHT - 84.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_both_curves() {
        let rec = |step, loss| StepRecord {
            step,
            loss,
            lr: 0.0,
            grad_norm: 0.0,
            tokens: 0,
            targets: 0,
            seconds: 0.0,
            chain: String::new(),
        };
        let svg = loss_svg(
            "a <b>",
            &[rec(1, 2.0), rec(2, 1.5)],
            &[ValidRecord { step: 2, loss: 1.7 }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("training") && svg.contains("validation"));
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
