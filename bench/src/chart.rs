//! One PNG: orders finalized per second over time (100 ms bins) for each run and reference.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// DejaVu Sans ships with Debian's fonts-dejavu-core; text needs a font file, and this keeps
/// the build free of fontconfig.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    let font = std::fs::read(FONT).map_err(|e| anyhow::anyhow!("{FONT}: {e} (apt-get install fonts-dejavu-core)"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()))
        .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let mut series: Vec<(String, Vec<(f64, f64)>)> = report
        .runs
        .iter()
        .map(|run| (run.name.clone(), run.outcome.timeline.iter().map(|(s, n)| (*s, *n as f64)).collect()))
        .collect();
    series.extend(
        report.references.iter().map(|r| (r.name.clone(), r.timeline.iter().map(|(s, n)| (*s, *n as f64)).collect())),
    );
    // The per-order reference runs many times longer than everything else at a flat rate;
    // the axis follows the other series, and its legend entry says it was cut.
    let longest = |points: &Vec<(f64, f64)>| points.iter().map(|p| p.0).fold(0.0, f64::max);
    let is_per_order = |name: &str| name.starts_with("per-order");
    let others = series.iter().filter(|(name, _)| !is_per_order(name)).map(|(_, points)| longest(points)).fold(0.0, f64::max);
    let max_x = if others > 0.0 { others + 0.5 } else { series.iter().map(|(_, points)| longest(points)).fold(1.0, f64::max) + 0.5 };
    for (name, points) in &mut series {
        if is_per_order(name) && longest(points) > max_x {
            *name = format!("{name}, cut at {max_x:.1} of {:.0} s", longest(points));
            points.retain(|p| p.0 <= max_x);
        }
    }
    let max_y = series.iter().flat_map(|(_, points)| points.iter().map(|p| p.1)).fold(1.0, f64::max) * 1.1;

    let root = BitMapBackend::new(path, (1200, 700)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("orders finalized per second", ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)?;
    chart.configure_mesh().x_desc("seconds since first accept").y_desc("orders / s").label_style(("sans-serif", 15)).draw()?;
    for (index, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(index).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, color))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], Palette99::pick(index).stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.9)).border_style(BLACK).label_font(("sans-serif", 15)).draw()?;
    root.present()?;
    Ok(())
}
