//! The loss curve of the demo, drawn with plotters (embedded DejaVu font: no system fonts needed).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Mantissa ladders for log-axis ticks, coarsest first: a ladder is used when it puts at least
/// [`MIN_TICKS`] ticks in the range shown.
const LADDERS: [&[f64]; 5] = [
    &[1.0],
    &[1.0, 2.0, 5.0],
    &[1.0, 2.0, 3.0, 5.0, 7.0],
    &[1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
    &[
        1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0, 2.2, 2.5, 2.8, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0,
        7.0, 8.0, 9.0,
    ],
];

/// Fewest ticks on the loss axis.
const MIN_TICKS: usize = 4;

/// Tick values `m·10ᵏ` in `[lo, hi]` (`0 < lo < hi`) from the coarsest ladder that gives at least
/// [`MIN_TICKS`] of them; for a range too narrow even for the finest ladder, [`MIN_TICKS`] values
/// evenly spaced in log scale, rounded to three significant digits.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    for ladder in LADDERS {
        let ticks: Vec<f64> = (k0..=k1)
            .flat_map(|k| ladder.iter().map(move |m| round3(m * 10f64.powi(k))))
            .filter(|v| (lo..=hi).contains(v))
            .collect();
        if ticks.len() >= MIN_TICKS {
            return ticks;
        }
    }
    let (a, b) = (lo.ln(), hi.ln());
    (0..MIN_TICKS)
        .map(|i| round3((a + (b - a) * i as f64 / (MIN_TICKS - 1) as f64).exp()))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

/// `v` rounded to three significant digits (removes the noise of `m·10ᵏ` in binary).
fn round3(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(2 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// A tick label: plain decimals between 0.001 and 10 000 (`0.25`, `1.5`, `300`), else
/// scientific (`2.5e-5`), with no trailing zeros.
fn tick_label(v: f64) -> String {
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if (-3..4).contains(&mag) {
        let decimals = usize::try_from(2 - mag).unwrap_or(0);
        trim(format!("{v:.decimals$}"))
    } else {
        let m = v / 10f64.powi(mag);
        format!("{}e{mag}", trim(format!("{m:.2}")))
    }
}

/// Draws `losses` (log scale) with a horizontal line at `floor` into a PNG at `path` (atomically).
/// The loss axis spans the values shown, with ticks labelled across that range ([`log_ticks`]).
pub(crate) fn loss_png(path: &Path, losses: &[f64], floor: f64) -> Result<()> {
    // Registering twice is harmless; the first registration wins.
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let positive: Vec<f64> = losses
        .iter()
        .copied()
        .chain([floor])
        .filter(|v| *v > 0.0 && v.is_finite())
        .collect();
    let min = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let max = positive.iter().copied().fold(0.0f64, f64::max);
    let (lo, hi) = if positive.is_empty() {
        (0.1, 1.0)
    } else {
        (min.max(1e-12) / 1.25, max.max(min * 1.01) * 1.25)
    };
    let ticks = log_ticks(lo, hi);
    let draw = |tmp: &Path| -> Result<()> {
        let root = BitMapBackend::new(tmp, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("OFT on AQLM 2-bit: training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(72)
            .build_cartesian_2d(
                0usize..losses.len().max(2),
                (lo..hi).log_scale().with_key_points(ticks.clone()),
            )
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("MSE (log scale)")
            .y_label_formatter(&|v| tick_label(*v))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(LineSeries::new(
                losses.iter().enumerate().map(|(i, v)| (i, v.max(lo))),
                &BLUE,
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                [(0, floor.max(lo)), (losses.len().max(2), floor.max(lo))],
                RED.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label("floor: quantized base + true rotations")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow!("{e}"))?;
        Ok(())
    };
    let mut failure = None;
    let written = oftq_aqlm::checkpoint::write_atomic_with(path, |tmp| {
        draw(tmp).map_err(|e| {
            let msg = format!("{e:#}");
            failure = Some(e);
            std::io::Error::other(msg)
        })
    });
    match (written, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e.context(format!("drawing {}", path.display()))),
        (Err(e), None) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_label_the_range_shown() {
        // The demo's typical range: one decade or less (previously labelled 1e-1 and 2e-1 only).
        for (lo, hi) in [
            (0.04, 0.45),
            (0.08, 0.2),
            (0.3, 0.5),
            (1e-4, 2.0),
            (2e-6, 3e-6),
            (0.99, 1.01),
            (5.0, 4000.0),
        ] {
            let t = log_ticks(lo, hi);
            assert!(t.len() >= MIN_TICKS, "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|v| (lo..=hi).contains(v)), "{lo}..{hi}: {t:?}");
            assert!(t.windows(2).all(|w| w[0] < w[1]), "{lo}..{hi}: {t:?}");
            // Ticks reach across the range: the outermost ones cover most of it (in log scale).
            let covered = (t[t.len() - 1] / t[0]).ln() / (hi / lo).ln();
            assert!(covered > 0.4, "{lo}..{hi}: {t:?} covers {covered}");
            let labels: Vec<String> = t.iter().map(|v| tick_label(*v)).collect();
            let mut unique = labels.clone();
            unique.dedup();
            assert_eq!(unique.len(), labels.len(), "{lo}..{hi}: {labels:?}");
        }
        assert_eq!(log_ticks(0.08, 0.2), [0.08, 0.09, 0.1, 0.15, 0.2]);
        let labels: Vec<String> = [0.25, 1.5, 300.0, 0.001, 2.5e-5, 12000.0, 0.1]
            .iter()
            .map(|v| tick_label(*v))
            .collect();
        assert_eq!(
            labels,
            ["0.25", "1.5", "300", "0.001", "2.5e-5", "1.2e4", "0.1"]
        );
    }

    #[test]
    fn plot_is_written_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.png");
        let losses: Vec<f64> = (0..50).map(|i| 0.4 * 0.97f64.powi(i)).collect();
        loss_png(&p, &losses, 0.05).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
