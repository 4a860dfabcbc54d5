//! The comparison scripts' results as JSON, and their charts.
//!
//! Every side-by-side script (nbd-compare, xts_compare, import-compare, kms-compare,
//! s3-compare) writes one [`Report`]: a few [`Chart`]s, each a row of workloads
//! ([`Group`]), each workload a bar per contender ([`Bar`]) with the value of every
//! round. [`render`] draws a chart as an SVG of small multiples: one panel per
//! workload with its own unit and scale (MB/s and IOPS do not share an axis), a bar
//! per contender at the median of its rounds, a whisker from the slowest to the
//! fastest round, and the median and its ratio to the workload's first contender
//! (atrest by convention) written over the bar.
//!
//! The JSON is the record; the SVG is made from it alone (`bench_chart REPORT.json
//! DIR`), so a chart can be redrawn from an old run without running it again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

/// One run of a comparison script.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The script, and the first part of each chart's file name (`nbd-compare`).
    pub bench: String,
    /// What was measured and how (image size, rounds, run time).
    pub title: String,
    /// The machine and its load while the run lasted (CPU model, load average).
    #[serde(default)]
    pub machine: String,
    /// UTC time of the run (RFC 3339).
    #[serde(default)]
    pub date: String,
    /// The charts of the run.
    pub charts: Vec<Chart>,
}

/// One chart: a panel per workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chart {
    /// The chart's name in file names (`throughput` gives `nbd-compare-throughput.svg`).
    pub name: String,
    /// The chart's heading.
    pub title: String,
    /// Whether a higher value is better (throughput) or a lower one (CPU per request).
    #[serde(default = "higher")]
    pub higher_is_better: bool,
    /// The workloads.
    pub groups: Vec<Group>,
}

fn higher() -> bool {
    true
}

/// One workload: a bar per contender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    /// The workload (`seq read 1M QD8`).
    pub label: String,
    /// The unit of its values (`MB/s`, `IOPS`, `us/req`, `GB/s per CPU-s`).
    pub unit: String,
    /// The contenders, atrest first by convention.
    pub bars: Vec<Bar>,
}

/// One contender in one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bar {
    /// The contender (`atrest`, `nbdkit-luks`, `openssl`).
    pub series: String,
    /// The value of each round, in the order measured.
    pub rounds: Vec<f64>,
}

impl Bar {
    /// The median of the rounds (the mean of the middle two for an even count).
    pub fn median(&self) -> Option<f64> {
        let mut v: Vec<f64> = self
            .rounds
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }

    /// The slowest and the fastest round.
    pub fn range(&self) -> Option<(f64, f64)> {
        let v = self.rounds.iter().copied().filter(|x| x.is_finite());
        let lo = v.clone().min_by(f64::total_cmp)?;
        let hi = v.max_by(f64::total_cmp)?;
        Some((lo, hi))
    }
}

impl Report {
    /// Reads a report written by a comparison script.
    pub fn read(path: &Path) -> Result<Report> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Writes the report as pretty JSON.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }

    /// Draws every chart into `dir` as `BENCH-NAME.svg` and returns the files written.
    pub fn render_all(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        for chart in &self.charts {
            let path = dir.join(format!("{}-{}.svg", self.bench, chart.name));
            render(self, chart, &path)?;
            written.push(path);
        }
        Ok(written)
    }
}

// Panel geometry (pixels).
const PANEL_WIDTH: u32 = 300;
const HEIGHT: u32 = 420;
const HEADER: u32 = 62;

/// The colour of a contender: atrest in blue, each peer its own muted colour, the same
/// peer the same colour in every chart.
fn colour(series: &str) -> RGBColor {
    if series.starts_with("atrest") {
        return RGBColor(0x1f, 0x6f, 0xd1);
    }
    const PEERS: [RGBColor; 6] = [
        RGBColor(0x9a, 0x9a, 0x9a),
        RGBColor(0xe0, 0x8e, 0x3c),
        RGBColor(0x5a, 0xa0, 0x6a),
        RGBColor(0xb0, 0x5f, 0xa8),
        RGBColor(0xc9, 0x5a, 0x50),
        RGBColor(0x6c, 0x6c, 0x4c),
    ];
    // A stable pick from the name, so nbdkit-luks is the same colour everywhere.
    let h = series
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PEERS[h as usize % PEERS.len()]
}

fn format_value(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws one chart as an SVG file.
pub fn render(report: &Report, chart: &Chart, path: &Path) -> Result<()> {
    if chart.groups.is_empty() {
        bail!("chart {} has no workloads", chart.name);
    }
    // A panel is wide enough for its bars' names (about 80 px a bar).
    let widths: Vec<u32> = chart
        .groups
        .iter()
        .map(|g| PANEL_WIDTH.max(80 * g.bars.len() as u32 + 60))
        .collect();
    let width = widths.iter().sum::<u32>().max(640);
    let root = SVGBackend::new(path, (width, HEIGHT)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let (header, body) = root.split_vertically(HEADER);
    let title = ("sans-serif", 18).into_font().color(&BLACK);
    header
        .draw_text(
            &format!("{}: {}", report.bench, chart.title),
            &title,
            (12, 8),
        )
        .map_err(draw)?;
    let better = if chart.higher_is_better {
        "higher is better"
    } else {
        "lower is better"
    };
    let sub = format!(
        "{}; bar = median of the rounds, whisker = min..max, (N.NNx) = the first bar / this one; {better}",
        report.title
    );
    let small = ("sans-serif", 12)
        .into_font()
        .color(&RGBColor(0x44, 0x44, 0x44));
    header.draw_text(&sub, &small, (12, 32)).map_err(draw)?;
    if !report.machine.is_empty() || !report.date.is_empty() {
        let m = format!("{} {}", report.date, report.machine);
        header.draw_text(m.trim(), &small, (12, 47)).map_err(draw)?;
    }

    let mut rest = body;
    for (group, w) in chart.groups.iter().zip(&widths) {
        let (area, right) = rest.split_horizontally(*w);
        draw_panel(group, &area).map_err(|e| anyhow::anyhow!("{}: {e}", group.label))?;
        rest = right;
    }
    root.present().map_err(draw)?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    group: &Group,
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("{e:?}");
    let n = group.bars.len();
    let top = group
        .bars
        .iter()
        .filter_map(|b| b.range().map(|r| r.1))
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.18 } else { 1.0 };
    let names: Vec<String> = group.bars.iter().map(|b| b.series.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(&group.label, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(44)
        .y_label_area_size(52)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .light_line_style(WHITE)
        .y_desc(group.unit.as_str())
        .y_label_formatter(&|v| format_value(*v))
        .label_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;

    // Ratios are to the first contender of the workload (atrest, or atrest-tls).
    let first = group.bars.first().and_then(Bar::median);
    for (i, bar) in group.bars.iter().enumerate() {
        let x = i as f64;
        let Some(m) = bar.median() else { continue };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.32, 0.0), (x + 0.32, m)],
                colour(&bar.series).filled(),
            )))
            .map_err(err)?;
        let (lo, hi) = bar.range().unwrap_or((m, m));
        if hi > lo {
            let whisker = ShapeStyle::from(&BLACK).stroke_width(1);
            chart
                .draw_series([
                    PathElement::new(vec![(x, lo), (x, hi)], whisker),
                    PathElement::new(vec![(x - 0.1, lo), (x + 0.1, lo)], whisker),
                    PathElement::new(vec![(x - 0.1, hi), (x + 0.1, hi)], whisker),
                ])
                .map_err(err)?;
        }
        let mut label = format_value(m);
        if let Some(a) = first {
            if i > 0 && m > 0.0 {
                label = format!("{label} ({:.2}x)", a / m);
            }
        }
        let above = ("sans-serif", 11)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart
            .draw_series(std::iter::once(Text::new(
                label,
                (x, hi.max(m) + top * 0.015),
                above,
            )))
            .map_err(err)?;
        // The contender's name under its bar, in the label area.
        let below = ("sans-serif", 11)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        let (px, py) = chart.backend_coord(&(x, 0.0));
        area.draw(&Text::new(
            names[i].clone(),
            (
                px - area.get_base_pixel().0,
                py - area.get_base_pixel().1 + 6,
            ),
            below,
        ))
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report {
            bench: "nbd-compare".into(),
            title: "512 MiB images, 3 rounds x 5 s".into(),
            machine: "test CPU".into(),
            date: "2026-12-06T00:00:00Z".into(),
            charts: vec![Chart {
                name: "throughput".into(),
                title: "throughput".into(),
                higher_is_better: true,
                groups: vec![
                    Group {
                        label: "seq read 1M QD8".into(),
                        unit: "MB/s".into(),
                        bars: vec![
                            Bar {
                                series: "atrest".into(),
                                rounds: vec![4000.0, 4400.0, 4200.0],
                            },
                            Bar {
                                series: "nbdkit-raw".into(),
                                rounds: vec![3000.0, 3100.0],
                            },
                        ],
                    },
                    Group {
                        label: "rand read 4k QD32 <&>".into(),
                        unit: "IOPS".into(),
                        bars: vec![Bar {
                            series: "atrest".into(),
                            rounds: vec![100_000.0],
                        }],
                    },
                ],
            }],
        }
    }

    #[test]
    fn medians_and_ranges_ignore_missing_rounds() {
        let b = Bar {
            series: "x".into(),
            rounds: vec![3.0, f64::NAN, 1.0, 2.0, 10.0],
        };
        assert_eq!(b.median(), Some(2.5));
        assert_eq!(b.range(), Some((1.0, 10.0)));
        assert_eq!(
            Bar {
                series: "x".into(),
                rounds: vec![]
            }
            .median(),
            None
        );
    }

    #[test]
    fn a_report_round_trips_and_draws_every_chart() {
        let dir = tempfile::tempdir().unwrap();
        let report = sample();
        let json = dir.path().join("r.json");
        report.write(&json).unwrap();
        let back = Report::read(&json).unwrap();
        let files = back.render_all(dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join("nbd-compare-throughput.svg")]);
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        // Names, medians, the ratio to atrest and escaped labels are in the drawing.
        assert!(svg.contains("nbdkit-raw"));
        assert!(svg.contains("4200"));
        assert!(svg.contains("3050 (1.38x)"));
        assert!(svg.contains("&lt;&amp;&gt;"), "labels are escaped");
    }
}
