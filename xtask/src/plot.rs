//! Log–log line charts of the bench report, drawn with plotters into SVG text (labels measured
//! with the embedded DejaVu font, so no system fonts are needed).

use anyhow::{Result, anyhow};
use plotters::coord::combinators::BindKeyPoints;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// One named line of (x, y) points, x and y > 0.
#[derive(Debug, Clone)]
pub(crate) struct Series {
    /// Legend text.
    pub(crate) name: String,
    /// Points, drawn in order of x.
    pub(crate) points: Vec<(f64, f64)>,
    /// Dashed line (baselines and one-thread runs).
    pub(crate) dashed: bool,
}

/// Human-readable seconds: `1.50 ms`, `20.0 µs`, `250 s`.
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

/// The y ticks of a log axis from `lo` to `hi`: 1, 2 and 5 times each power of ten.
fn ticks_125(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if (lo..=hi).contains(&v) {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// Plotters' errors carry the backend's error type; the report only needs their text.
fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

const COLORS: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// A log–log chart of time (y, seconds) against x, with x ticks at the data's x values and y
/// ticks at 1, 2, 5 per decade; returns the SVG text.
pub(crate) fn chart(title: &str, x_label: &str, series: &[Series]) -> Result<String> {
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, (860, 460)).into_drawing_area(),
        title,
        x_label,
        series,
    )?;
    Ok(svg)
}

/// Draws the chart of [`chart`] on any plotters backend.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    series: &[Series],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // Registering twice is harmless; the first registration wins.
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|&(x, y)| x > 0.0 && y > 0.0)
        .collect();
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (Some(&x0), Some(&x1)) = (xs.first(), xs.last()) else {
        return Err(anyhow!("a plot needs at least one positive point"));
    };
    let (y0, y1) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    // Some room around the data: a fifth of a decade on y, a tenth of the x range (in log).
    let (y0, y1) = (y0 / 10f64.powf(0.2), y1 * 10f64.powf(0.2));
    let pad = ((x1 / x0).log10() * 0.1).max(0.1);
    let (x0, x1) = (x0 / 10f64.powf(pad), x1 * 10f64.powf(pad));

    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(84)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(xs),
            (y0..y1).log_scale().with_key_points(ticks_125(y0, y1)),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("median time")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|y| fmt_seconds(*y))
        .draw()
        .map_err(plot_err)?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut p: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|&(x, y)| x > 0.0 && y > 0.0)
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let style = color.stroke_width(2);
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(p.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(p.clone(), style))
        };
        drawn
            .map_err(plot_err)?
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
        chart
            .draw_series(p.iter().map(|&xy| Circle::new(xy, 3, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
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
    fn ticks_cover_the_range_at_1_2_5() {
        let t = ticks_125(3e-4, 2.5e-2);
        assert_eq!(t.len(), 6);
        let expected = [5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2];
        for (a, b) in t.iter().zip(expected) {
            assert!((a / b - 1.0).abs() < 1e-9, "{t:?}");
        }
    }

    #[test]
    fn chart_has_one_line_per_series_and_labels() {
        let s = |n: &str, dashed| Series {
            name: n.into(),
            points: vec![(1.0, 1e-4), (16.0, 5e-4), (64.0, 2e-3)],
            dashed,
        };
        let svg = chart("t <x>", "tokens", &[s("a", false), s("b", true)]).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("t &lt;x&gt;"), "{svg}");
        // The legend names both series; the x axis labels the data's x values, the y axis times.
        let texts: Vec<&str> = svg
            .split("<text")
            .filter_map(|t| t.lines().nth(1))
            .collect();
        for label in ["a", "b", "1", "16", "64", "100 µs", "1.00 ms", "tokens"] {
            assert!(texts.contains(&label), "{label}: {texts:?}");
        }
        // A solid line is one polyline; a dashed one, one per dash.
        assert!(svg.matches("<polyline").count() > 4, "{svg}");
        assert!(chart("empty", "x", &[]).is_err());
    }
}
