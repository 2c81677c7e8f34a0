//! PNG charts for run directories and reports (bar charts, line charts), drawn with plotters.
//! Text uses DejaVu Sans from Debian's `fonts-dejavu-core` (installed by `make setup`), or the
//! TrueType file that `FLG_FONT` names (machines without the package, such as the GPU kit's).

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;
use std::sync::OnceLock;

const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Environment variable naming another TrueType font file.
pub const FONT_ENV: &str = "FLG_FONT";
const FONT: &str = "sans-serif";

/// Registers the font once per process.
fn ensure_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = std::env::var(FONT_ENV).unwrap_or_else(|_| FONT_PATH.to_string());
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "{path}: {e} (install Debian's fonts-dejavu-core, `make setup` does, \
                 or name a TrueType file in {FONT_ENV})"
            )
        })?;
        plotters::style::register_font(FONT, FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One bar: label under it, value, and whether to draw it highlighted.
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub highlight: bool,
}

/// A bar chart; highlighted bars in orange, the rest in blue, with a legend line for each.
pub fn bar_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bars: &[Bar],
    legend: (&str, &str),
) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = bars
        .iter()
        .map(|b| b.value)
        .fold(0.0f64, f64::max)
        .max(1e-12)
        * 1.1;
    let min = bars.iter().map(|b| b.value).fold(0.0f64, f64::min).min(0.0);
    let n = bars.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..n as f64 - 0.5, min..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                bars[i as usize].label.clone()
            } else {
                String::new()
            }
        })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    let colour = |h: bool| {
        if h {
            RGBColor(230, 120, 30)
        } else {
            RGBColor(60, 110, 190)
        }
    };
    for (h, name) in [(false, legend.0), (true, legend.1)] {
        chart
            .draw_series(
                bars.iter()
                    .enumerate()
                    .filter(|(_, b)| b.highlight == h)
                    .map(|(i, b)| {
                        Rectangle::new(
                            [(i as f64 - 0.35, 0.0), (i as f64 + 0.35, b.value)],
                            colour(h).filled(),
                        )
                    }),
            )?
            .label(name)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 12, y + 6)], colour(h).filled())
            });
    }
    draw_legend(&mut chart)?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The legend box both chart kinds use.
fn draw_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<
        'a,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .label_font((FONT, 14))
        .draw()
        .map_err(|e| anyhow!("drawing the legend: {e}"))
}

/// A line chart of named series of (x, y) points.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    ensure_font()?;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 24))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], c.stroke_width(2)));
        // Markers help read a few points; on a per-step curve they only blur the line.
        if points.len() <= 60 {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
        }
    }
    if series.len() > 1 || !series.first().is_some_and(|s| s.0.is_empty()) {
        draw_legend(&mut chart)?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
