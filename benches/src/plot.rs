//! PNG plots of each row's timeline: throughput (MB/s per 100 ms interval) above,
//! latency (that interval's p50 and p99, ms) below. Text needs a font file: the first
//! of [`FONT_PATHS`] that exists is loaded; without one the plots are drawn without
//! labels. A plot that cannot be drawn is reported and skipped, never fatal.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::scenarios::Row;

/// Fonts tried in order (Debian's fonts-dejavu-core first).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Picture size in pixels.
const SIZE_PX: (u32, u32) = (1000, 700);

/// Registers the first font found as "sans-serif", once; whether text can be drawn.
fn font_loaded() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        FONT_PATHS.iter().any(|path| {
            let Ok(bytes) = std::fs::read(path) else {
                return false;
            };
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// Writes `row`'s timeline to `path`; an error says why it could not.
pub(crate) fn plot_row(row: &Row, path: &Path) -> Result<(), String> {
    draw(row, path, font_loaded())
}

/// Draws the plot, with labels and legends when `text`.
fn draw(row: &Row, path: &Path, text: bool) -> Result<(), String> {
    if row.timeline.is_empty() {
        return Err("no timeline".to_owned());
    }
    let interval_s = 0.1;
    let points_mb: Vec<(f64, f64)> = row
        .timeline
        .iter()
        .map(|i| {
            (
                i.start_ms as f64 / 1000.0,
                i.bytes as f64 / 1e6 / interval_s,
            )
        })
        .collect();
    let p50: Vec<(f64, f64)> = row
        .timeline
        .iter()
        .map(|i| (i.start_ms as f64 / 1000.0, i.p50_us as f64 / 1000.0))
        .collect();
    let p99: Vec<(f64, f64)> = row
        .timeline
        .iter()
        .map(|i| (i.start_ms as f64 / 1000.0, i.p99_us as f64 / 1000.0))
        .collect();
    let x_max = points_mb.iter().map(|p| p.0).fold(0.0, f64::max) + interval_s;
    let mb_max = points_mb.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let ms_max = p99.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let err = |e: &dyn std::fmt::Display| e.to_string();

    let root = BitMapBackend::new(path, SIZE_PX).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(SIZE_PX.1 / 2);
    let panels = [
        (upper, "MB/s", mb_max, vec![(points_mb, BLUE, "MB/s")]),
        (
            lower,
            "latency ms",
            ms_max,
            vec![(p50, GREEN, "p50 ms"), (p99, RED, "p99 ms")],
        ),
    ];
    for (i, (area, y_desc, y_max, series)) in panels.into_iter().enumerate() {
        let mut builder = ChartBuilder::on(&area);
        builder.margin(10);
        if text {
            builder.x_label_area_size(35).y_label_area_size(60);
            if i == 0 {
                let title = match row.rate_per_s {
                    Some(rate) => format!("{} (run {}, {rate:.0} records/s)", row.name, row.run),
                    None => format!("{} (run {})", row.name, row.run),
                };
                builder.caption(title, ("sans-serif", 20));
            }
        }
        let mut chart = builder
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(&e))?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("seconds").y_desc(y_desc);
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| err(&e))?;
        for (points, color, label) in series {
            let drawn = chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if text {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
        }
        if text {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{Compare, Interval, Row};

    fn row() -> Row {
        let mut row = Row::new("case", 1, "step", Compare::None, None);
        row.timeline = (0..20)
            .map(|i| Interval {
                start_ms: i * 100,
                records: 1000 + i,
                bytes: 1_024_000 + i,
                p50_us: 500 + i,
                p99_us: 900 + 10 * i,
            })
            .collect();
        row
    }

    /// Without a font file the plot is still drawn (no labels): a missing font never
    /// fails the run.
    #[test]
    fn plots_with_and_without_a_font() {
        let dir = std::env::temp_dir().join(format!("rill-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let bare = dir.join("bare.png");
        draw(&row(), &bare, false).expect("plot without text");
        let labelled = dir.join("labelled.png");
        draw(&row(), &labelled, font_loaded()).expect("plot");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&bare) > 1000, "bare plot {} bytes", size(&bare));
        assert!(size(&labelled) > 1000);
        let empty = Row {
            timeline: Vec::new(),
            ..row()
        };
        assert!(draw(&empty, &bare, false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
