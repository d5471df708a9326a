//! The suite's plots: for each scenario, throughput and p99 latency against the operations in
//! flight, beside its baseline, as a PNG.
//!
//! Text is drawn by plotters' `ab_glyph` feature from a TrueType font read at run time (the
//! first of `COFFER_BENCH_FONT` and a few usual system paths), rather than from fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::suite::{Point, Scenario, grouped};

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 520;

/// Where a sans-serif TrueType font usually is.
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers the font once for the process; the error says where it looked.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let given = std::env::var_os("COFFER_BENCH_FONT").map(PathBuf::from);
            let candidates = given.iter().cloned().chain(FONTS.iter().map(PathBuf::from));
            for path in candidates {
                if let Ok(bytes) = std::fs::read(&path) {
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
            }
            Err(format!(
                "no TrueType font found for the plots' text: set COFFER_BENCH_FONT to a .ttf \
                 file (looked in {})",
                FONTS.join(", ")
            ))
        })
        .clone()
}

/// Writes `<dir>/<scenario>.png` for each scenario with points; returns the files written.
pub fn write(points: &[Point], dir: &Path) -> Result<Vec<PathBuf>, String> {
    font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for scenario in Scenario::ALL {
        let mine: Vec<&Point> = points.iter().filter(|p| p.scenario == scenario).collect();
        if mine.is_empty() {
            continue;
        }
        let path = dir.join(format!("{}.png", scenario.name()));
        let rgb = draw(scenario, &mine).map_err(|e| format!("{}: {e}", path.display()))?;
        encode(&path, &rgb).map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The scenario's two charts side by side, as RGB pixels.
fn draw(scenario: Scenario, points: &[&Point]) -> DrawResult<Vec<u8>> {
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!(
                "coffer bench all: {} beside its baseline ({})",
                scenario.name(),
                points[0].baseline.name
            ),
            ("sans-serif", 22),
        )?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let levels: Vec<f64> = points.iter().map(|p| p.concurrency as f64).collect();
        let x = |p: &&Point| (p.concurrency as f64).log2();
        let op_name = points[0].op.name.clone();
        let base_name = points[0].baseline.name.clone();

        let op_rate: Vec<(f64, f64)> = points.iter().map(|p| (x(p), p.op.item_rate())).collect();
        let base_rate: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (x(p), p.baseline.item_rate()))
            .collect();
        let top = op_rate
            .iter()
            .chain(&base_rate)
            .map(|(_, y)| *y)
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.15;
        chart(
            &left,
            "Throughput",
            (scenario, &levels),
            0.0..top,
            (scenario.unit(), &|y| grouped(*y)),
            [(&op_name, &op_rate), (&base_name, &base_rate)],
        )?;

        // Latency on a log axis: the curves span orders of magnitude.
        let floor = 0.01;
        let op_p99: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (x(p), p.op.quantile_ms(0.99).max(floor)))
            .collect();
        let base_p99: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (x(p), p.baseline.quantile_ms(0.99).max(floor)))
            .collect();
        let (lo, hi) = op_p99
            .iter()
            .chain(&base_p99)
            .fold((f64::MAX, floor), |(lo, hi), (_, y)| {
                (lo.min(*y), hi.max(*y))
            });
        chart(
            &right,
            "p99 latency",
            (scenario, &levels),
            (lo / 1.5..hi * 1.5).log_scale(),
            ("p99 latency (ms, log scale)", &|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.2}")
                }
            }),
            [(&op_name, &op_p99), (&base_name, &base_p99)],
        )?;
        root.present()?;
    }
    Ok(rgb)
}

/// One chart: x the operations in flight (on a log 2 scale, labelled at the powers of two),
/// the two series and their legend.
fn chart<DB: DrawingBackend, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    (scenario, levels): (Scenario, &[f64]),
    y: Y,
    (y_label, y_format): (&str, &dyn Fn(&f64) -> String),
    series: [(&String, &Vec<(f64, f64)>); 2],
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
    Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
    Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
{
    let (min, max) = levels
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    let (min, max) = (
        min.log2().floor(),
        max.log2().ceil().max(min.log2().floor() + 1.0),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(80)
        .build_cartesian_2d(min - 0.3..max + 0.3, y)?;
    chart
        .configure_mesh()
        .x_desc(format!("{} (log scale)", scenario.in_flight()))
        .y_desc(y_label)
        .x_labels((max - min) as usize + 1)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-6 {
                format!("{:.0}", x.round().exp2())
            } else {
                String::new()
            }
        })
        .y_label_formatter(y_format)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let colors = [RGBColor(200, 40, 40), RGBColor(40, 90, 200)];
    for ((name, data), color) in series.into_iter().zip(colors) {
        chart
            .draw_series(
                LineSeries::new(data.iter().copied(), color.stroke_width(2)).point_size(4),
            )?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn encode(path: &Path, rgb: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::{Cpu, Measurement};

    fn measured(name: &str, ok: u64, p99_ms: u32) -> Measurement {
        Measurement::from_parts(
            name,
            ok,
            0,
            Duration::from_secs(1),
            vec![p99_ms * 1000; 10],
            None,
            ok,
        )
    }

    #[test]
    fn a_png_per_scenario() {
        let points: Vec<Point> = [1, 4, 16, 64, 256]
            .into_iter()
            .map(|c| Point {
                scenario: Scenario::Customers,
                concurrency: c,
                op: measured("grpc CreateCustomer", 300 * c.min(16) as u64, c as u32),
                op_cpu: Cpu::default(),
                baseline: measured("postgres INSERT", 500 * c.min(32) as u64, 1 + c as u32 / 4),
                baseline_cpu: Cpu::default(),
            })
            .collect();
        let dir = std::env::temp_dir().join(format!("coffer-plot-{}", uuid::Uuid::now_v7()));
        let written = write(&points, &dir).expect("a font on this machine");
        assert_eq!(written, vec![dir.join("customers.png")]);
        let bytes = std::fs::read(&written[0]).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        if std::env::var_os("COFFER_KEEP_PLOT").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!("{}", written[0].display());
        }
    }
}
