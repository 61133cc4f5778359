//! The loss curve of the demo, drawn with plotters (embedded DejaVu font: no system fonts needed).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// Draws `losses` (log scale) with a horizontal line at `floor` into a PNG at `path` (atomically).
pub(crate) fn loss_png(path: &Path, losses: &[f64], floor: f64) -> Result<()> {
    // Registering twice is harmless; the first registration wins.
    let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    let name = path
        .file_name()
        .map_or_else(|| "loss.png".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp.png"));
    {
        let root = BitMapBackend::new(&tmp, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let positive: Vec<f64> = losses
            .iter()
            .copied()
            .chain([floor])
            .filter(|v| *v > 0.0 && v.is_finite())
            .collect();
        let lo = positive
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(1e-12)
            * 0.5;
        let hi = positive
            .iter()
            .copied()
            .fold(0.0f64, f64::max)
            .max(lo * 10.0)
            * 2.0;
        let mut chart = ChartBuilder::on(&root)
            .caption("OFT on AQLM 2-bit: training loss", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0usize..losses.len().max(2), (lo..hi).log_scale())
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("MSE")
            .y_label_formatter(&|v| format!("{v:.0e}"))
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
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
