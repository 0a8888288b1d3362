//! SVG line charts of figures over time (plotters, SVG backend only).

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

/// One line of a chart.
pub(crate) struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal or vertical marker line with a label.
pub(crate) enum Marker {
    /// At y.
    Horizontal(f64, String),
    /// At x.
    Vertical(f64, String),
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Draws `series` against seconds into an SVG file at `path`.
pub(crate) fn line_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    series: &[Series],
    markers: &[Marker],
) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow!("plotting {}: {e}", path.display());
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points()
        .map(|p| p.1)
        .chain(markers.iter().filter_map(|m| match m {
            Marker::Horizontal(y, _) => Some(*y),
            Marker::Vertical(..) => None,
        }))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .max_light_lines(2)
        .x_desc("seconds")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    for m in markers {
        let (line, label) = match m {
            Marker::Horizontal(y, l) => (vec![(0.0, *y), (x_max, *y)], l),
            Marker::Vertical(x, l) => (vec![(*x, 0.0), (*x, y_max)], l),
        };
        let at = line[0];
        chart
            .draw_series(std::iter::once(PathElement::new(line, BLACK.mix(0.5))))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (at.0 + x_max * 0.005, at.1.max(y_max * 0.03) + y_max * 0.02),
                ("sans-serif", 13),
            )))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// RSS samples (seconds, bytes) as a MiB series.
pub(crate) fn rss_series(label: &str, samples: &[(f64, u64)]) -> Series {
    Series {
        label: label.to_string(),
        points: samples
            .iter()
            .map(|(t, b)| (*t, *b as f64 / crate::common::MIB))
            .collect(),
    }
}
