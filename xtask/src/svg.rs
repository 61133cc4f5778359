//! A minimal log–log line chart written as SVG (no plotting dependency needed).

use std::fmt::Write;

/// One named line of (x, y) points, x and y > 0.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text.
    pub(crate) name: String,
    /// Points, drawn in order of x.
    pub(crate) points: Vec<(f64, f64)>,
    /// Dashed line (used for baselines).
    pub(crate) dashed: bool,
}

const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Human-readable seconds for axis labels: `1.5 ms`, `20 µs`.
pub(crate) fn fmt_seconds(s: f64) -> String {
    let (v, unit) = if s >= 1.0 {
        (s, "s")
    } else if s >= 1e-3 {
        (s * 1e3, "ms")
    } else if s >= 1e-6 {
        (s * 1e6, "µs")
    } else {
        (s * 1e9, "ns")
    };
    let t = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{t} {unit}")
}

/// A log–log chart of time (y, seconds) against an integer x; x ticks at the data's x values.
pub(crate) fn chart(title: &str, x_label: &str, series: &[Series]) -> String {
    let (w, h) = (820.0, 440.0);
    let (l, r, t, b) = (80.0, 260.0, 40.0, 60.0);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let pts: Vec<(f64, f64)> = pts.copied().filter(|p| p.0 > 0.0 && p.1 > 0.0).collect();
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        (l + w - r) / 2.0,
        esc(title)
    );
    if pts.is_empty() {
        let _ = writeln!(svg, r#"<text x="{l}" y="{}">no data</text></svg>"#, h / 2.0);
        return svg;
    }
    let lx = |v: f64| v.log10();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &pts {
        x0 = x0.min(lx(x));
        x1 = x1.max(lx(x));
        y0 = y0.min(lx(y));
        y1 = y1.max(lx(y));
    }
    let pad = |a: f64, b: f64| {
        if b - a < 1e-9 {
            (a - 0.5, b + 0.5)
        } else {
            (a - 0.05 * (b - a), b + 0.05 * (b - a))
        }
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = (y0.floor().min(y0 - 0.1), y1.ceil().max(y1 + 0.1));
    let px = |x: f64| l + (lx(x) - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - (lx(y) - y0) / (y1 - y0) * (h - t - b);
    // Axes box.
    let _ = writeln!(
        svg,
        r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
        w - l - r,
        h - t - b
    );
    // y ticks at 1, 2, 5 × decades.
    let mut dec = y0.floor() as i32;
    while f64::from(dec) <= y1 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powi(dec);
            let lv = v.log10();
            if lv < y0 || lv > y1 {
                continue;
            }
            let y = py(v);
            let _ = writeln!(
                svg,
                r##"<line x1="{l}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - r,
                l - 6.0,
                y + 4.0,
                fmt_seconds(v)
            );
        }
        dec += 1;
    }
    // x ticks at every distinct x.
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let xp = px(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{xp:.1}" x2="{xp:.1}" y1="{t}" y2="{}" stroke="#eee"/><text x="{xp:.1}" y="{}" text-anchor="middle">{x}</text>"##,
            h - b,
            h - b + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        h - 14.0,
        esc(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">median time (log)</text>"#,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut p: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|p| p.0 > 0.0 && p.1 > 0.0)
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for &(x, y) in &p {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = t + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            w - r + 10.0,
            w - r + 34.0,
            w - r + 40.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_format() {
        assert_eq!(fmt_seconds(1.5e-3), "1.50 ms");
        assert_eq!(fmt_seconds(2e-5), "20.0 µs");
        assert_eq!(fmt_seconds(250.0), "250 s");
    }

    #[test]
    fn chart_has_one_line_per_series() {
        let s = |n: &str| Series {
            name: n.into(),
            points: vec![(1.0, 1e-4), (16.0, 5e-4), (64.0, 2e-3)],
            dashed: false,
        };
        let svg = chart("t <x>", "tokens", &[s("a"), s("b")]);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;x&gt;"));
        assert!(svg.ends_with("</svg>\n"));
        assert!(chart("empty", "x", &[]).contains("no data"));
    }
}
