//! Line charts as inline SVG, for the swarm's HTML report: lines, min-max bands, axes with
//! round ticks, a title, axis labels and a legend, readable without hovering. No scripts and
//! no external files, so the page is one self-contained file. Points that are not finite are
//! skipped; a chart with nothing to draw says so ("no data", or a note of the caller's).

use std::fmt::Write;

/// Size of a chart, in SVG units (pixels at 100%).
const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 230.0;
/// The plot area inside it.
const LEFT: f64 = 62.0;
const RIGHT: f64 = 14.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 42.0;

/// Series colours, in order (colour-blind-safe enough to tell four or five apart).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// A line through points `(x, y)`.
#[derive(Debug, Clone)]
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    /// A dot on every point (for sparse series, where a lone point would not show).
    dots: bool,
}

/// A shaded band between `low` and `high` at each `x`: points `(x, low, high)`.
#[derive(Debug, Clone)]
struct Band {
    label: String,
    points: Vec<(f64, f64, f64)>,
}

/// A chart: build it with [`Chart::new`], add series, render with [`Chart::svg`].
#[derive(Debug, Clone)]
pub struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    lines: Vec<Line>,
    bands: Vec<Band>,
    empty_note: String,
}

/// A linear map from data values to SVG coordinates along one axis, with round ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// An axis from zero (or below, for negative values) to the largest value, rounded up to
    /// the next tick if `round_up` (values; time ends where the data ends), with about five
    /// round ticks.
    fn covering(values: impl Iterator<Item = f64>, round_up: bool) -> Axis {
        let (mut lo, mut hi) = (0.0f64, 0.0f64);
        for v in values {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            hi = lo + 1.0;
        }
        let step = nice_step((hi - lo) / 5.0);
        Axis {
            lo: (lo / step).floor() * step,
            hi: if round_up {
                (hi / step).ceil() * step
            } else {
                hi
            },
            step,
        }
    }

    /// Where `v` falls between `from` (at `lo`) and `to` (at `hi`).
    fn map(&self, v: f64, from: f64, to: f64) -> f64 {
        from + (v - self.lo) / (self.hi - self.lo) * (to - from)
    }

    /// Tick values from `lo`, every `step`, up to `hi`.
    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step + 1e-9).floor() as usize;
        (0..=n.min(50))
            .map(|i| self.lo + i as f64 * self.step)
            .collect()
    }
}

/// 1, 2, 2.5 or 5 times a power of ten, at or above `raw`.
fn nice_step(raw: f64) -> f64 {
    let magnitude = 10f64.powf(raw.log10().floor());
    let normal = raw / magnitude;
    let nice = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .find(|n| normal <= n * (1.0 + 1e-9))
        .unwrap_or(10.0);
    nice * magnitude
}

/// A tick label: `v` with as many decimals as the step needs, large values in k or M.
fn tick_label(v: f64, step: f64) -> String {
    let big = v.abs().max(step);
    let (divisor, suffix) = if big >= 1e6 {
        (1e6, "M")
    } else if big >= 1e4 {
        (1e3, "k")
    } else {
        (1.0, "")
    };
    let step = step / divisor;
    let decimals = if step >= 1.0 {
        0
    } else {
        ((-step.log10()).ceil() as usize).min(6)
    };
    if v.abs() < step * divisor * 1e-9 {
        return "0".to_string();
    }
    format!("{:.decimals$}{suffix}", v / divisor)
}

/// Text for SVG and HTML: `&`, `<`, `>` and quotes escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn finite2((x, y): &(f64, f64)) -> bool {
    x.is_finite() && y.is_finite()
}

fn finite3((x, lo, hi): &(f64, f64, f64)) -> bool {
    x.is_finite() && lo.is_finite() && hi.is_finite()
}

impl Chart {
    /// An empty chart with a title and axis labels (units in the labels: "time (s)").
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Chart {
        Chart {
            title: title.to_string(),
            x_label: x_label.to_string(),
            y_label: y_label.to_string(),
            lines: Vec::new(),
            bands: Vec::new(),
            empty_note: "no data".to_string(),
        }
    }

    /// Adds a line (the next colour of the palette among lines).
    pub fn line(mut self, label: &str, points: impl IntoIterator<Item = (f64, f64)>) -> Chart {
        self.lines.push(Line {
            label: label.to_string(),
            points: points.into_iter().collect(),
            dots: false,
        });
        self
    }

    /// Adds a line with a dot on every point.
    pub fn dotted_line(
        mut self,
        label: &str,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Chart {
        self = self.line(label, points);
        if let Some(line) = self.lines.last_mut() {
            line.dots = true;
        }
        self
    }

    /// Adds a shaded band (the next colour of the palette among bands, so a band and the
    /// line added in the same position, such as min-max and median, share a colour).
    pub fn band(mut self, label: &str, points: impl IntoIterator<Item = (f64, f64, f64)>) -> Chart {
        self.bands.push(Band {
            label: label.to_string(),
            points: points.into_iter().collect(),
        });
        self
    }

    /// What the chart says when it has nothing to draw (default "no data").
    pub fn empty_note(mut self, note: &str) -> Chart {
        self.empty_note = note.to_string();
        self
    }

    /// Whether any series has a finite point.
    fn has_data(&self) -> bool {
        self.lines.iter().any(|l| l.points.iter().any(finite2))
            || self.bands.iter().any(|b| b.points.iter().any(finite3))
    }

    /// The axes that hold every finite point.
    fn axes(&self) -> (Axis, Axis) {
        let line_points = || {
            self.lines
                .iter()
                .flat_map(|l| l.points.iter())
                .filter(|p| finite2(p))
        };
        let band_points = || {
            self.bands
                .iter()
                .flat_map(|b| b.points.iter())
                .filter(|p| finite3(p))
        };
        let xs = line_points().map(|p| p.0).chain(band_points().map(|p| p.0));
        let ys = line_points()
            .map(|p| p.1)
            .chain(band_points().flat_map(|p| [p.1, p.2]));
        (Axis::covering(xs, false), Axis::covering(ys, true))
    }

    /// The chart as an `<svg>` element.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        let (w, h) = (WIDTH, HEIGHT);
        let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
        let title = escape(&self.title);
        let _ = write!(
            out,
            r#"<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{title}"><title>{title}</title>"#
        );
        let _ = write!(
            out,
            r#"<text class="title" x="{x0}" y="18" font-size="14" font-weight="bold">{title}</text>"#
        );
        // Axis labels: x under the ticks, y turned along the left edge.
        let _ = write!(
            out,
            r#"<text class="axis-label" x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            (x0 + x1) / 2.0,
            h - 6.0,
            escape(&self.x_label)
        );
        let _ = write!(
            out,
            r#"<text class="axis-label" x="14" y="{:.1}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            escape(&self.y_label)
        );
        let _ = write!(
            out,
            r##"<rect x="{x0}" y="{y1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/>"##,
            x1 - x0,
            y0 - y1
        );
        if !self.has_data() {
            let _ = write!(
                out,
                r##"<text class="empty" x="{:.1}" y="{:.1}" font-size="13" fill="#666" text-anchor="middle">{}</text></svg>"##,
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0 + 4.0,
                escape(&self.empty_note)
            );
            return out;
        }
        let (xa, ya) = self.axes();
        let px = |x: f64| xa.map(x, x0, x1);
        let py = |y: f64| ya.map(y, y0, y1);
        for tick in ya.ticks() {
            let y = py(tick);
            let _ = write!(
                out,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{}</text>"##,
                x0 - 5.0,
                y + 3.5,
                tick_label(tick, ya.step)
            );
        }
        for tick in xa.ticks() {
            let x = px(tick);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"##,
                y0 + 4.0,
                y0 + 15.0,
                tick_label(tick, xa.step)
            );
        }
        for (i, band) in self.bands.iter().enumerate() {
            let points: Vec<&(f64, f64, f64)> = band.points.iter().filter(|p| finite3(p)).collect();
            let lows = points.iter().map(|(x, lo, _)| (px(*x), py(*lo)));
            let highs = points.iter().rev().map(|(x, _, hi)| (px(*x), py(*hi)));
            let _ = write!(
                out,
                r#"<polygon class="band" points="{}" fill="{}" fill-opacity="0.22" stroke="none"/>"#,
                coordinates(lows.chain(highs)),
                color(i)
            );
        }
        for (i, line) in self.lines.iter().enumerate() {
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .filter(|p| finite2(p))
                .map(|(x, y)| (px(*x), py(*y)))
                .collect();
            let _ = write!(
                out,
                r#"<polyline class="series" points="{}" fill="none" stroke="{}" stroke-width="1.6" stroke-linejoin="round"/>"#,
                coordinates(points.iter().copied()),
                color(i)
            );
            if line.dots {
                for (x, y) in &points {
                    let _ = write!(
                        out,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="2.4" fill="{}"/>"#,
                        color(i)
                    );
                }
            }
        }
        self.legend(&mut out);
        out.push_str("</svg>");
        out
    }

    /// One row of swatches and labels under the title.
    fn legend(&self, out: &mut String) {
        let entries = self
            .bands
            .iter()
            .enumerate()
            .map(|(i, b)| (&b.label, color(i), true))
            .chain(
                self.lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (&l.label, color(i), false)),
            );
        let mut x = LEFT;
        for (label, colour, band) in entries {
            if label.is_empty() {
                continue;
            }
            let swatch = if band {
                format!(
                    r#"<rect x="{x:.1}" y="27" width="14" height="8" fill="{colour}" fill-opacity="0.3"/>"#
                )
            } else {
                format!(
                    r#"<line x1="{x:.1}" y1="31" x2="{:.1}" y2="31" stroke="{colour}" stroke-width="2"/>"#,
                    x + 14.0
                )
            };
            out.push_str(&swatch);
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="35" font-size="10">{}</text>"#,
                x + 18.0,
                escape(label)
            );
            x += 18.0 + 6.0 * label.chars().count() as f64 + 14.0;
        }
    }
}

fn color(i: usize) -> &'static str {
    PALETTE.get(i % PALETTE.len()).copied().unwrap_or("#000")
}

/// `x,y x,y ...` with one decimal.
fn coordinates(points: impl Iterator<Item = (f64, f64)>) -> String {
    let mut out = String::new();
    for (x, y) in points {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{x:.1},{y:.1}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `points` attribute of every polyline.
    fn polylines(svg: &str) -> Vec<&str> {
        svg.split("<polyline")
            .skip(1)
            .filter_map(|s| s.split("points=\"").nth(1)?.split('"').next())
            .collect()
    }

    #[test]
    fn a_series_maps_onto_the_plot_area() {
        let svg = Chart::new("Bitrate", "time (s)", "kbit/s")
            .line("median", [(0.0, 0.0), (5.0, 50.0), (10.0, 100.0)])
            .svg();
        // x 0..10 across 62..546, y 0..100 from 188 (bottom) up to 40 (top).
        assert_eq!(polylines(&svg), ["62.0,188.0 304.0,114.0 546.0,40.0"]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(">Bitrate</text>") && svg.contains(">kbit/s</text>"));
        assert!(svg.contains(">time (s)</text>") && svg.contains(">median</text>"));
        // Round ticks: 0, 20, ... 100 on y.
        for tick in ["0", "20", "40", "60", "80", "100"] {
            assert!(svg.contains(&format!(">{tick}</text>")), "tick {tick}");
        }
    }

    #[test]
    fn axes_end_on_round_numbers_above_the_data() {
        let axis = Axis::covering([3.0, 73.0].into_iter(), true);
        assert_eq!(
            axis,
            Axis {
                lo: 0.0,
                hi: 80.0,
                step: 20.0
            }
        );
        assert_eq!(axis.ticks(), [0.0, 20.0, 40.0, 60.0, 80.0]);
        // Time ends where the samples end, with ticks inside.
        let time = Axis::covering([1.0, 8.003].into_iter(), false);
        assert_eq!((time.hi, time.step), (8.003, 2.0));
        assert_eq!(time.ticks(), [0.0, 2.0, 4.0, 6.0, 8.0]);
        let flat = Axis::covering([0.0, 0.0].into_iter(), true);
        assert!(flat.hi > flat.lo, "a flat series still gets an axis");
        assert_eq!(tick_label(45_000.0, 5_000.0), "45k");
        assert_eq!(tick_label(0.0, 5_000.0), "0");
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(3_000_000.0, 500_000.0), "3.0M");
    }

    #[test]
    fn an_empty_chart_says_so() {
        let svg = Chart::new("CPU", "time (s)", "cores")
            .line("server", Vec::new())
            .svg();
        assert!(svg.contains("no data"), "{svg}");
        assert!(polylines(&svg).is_empty());
        let svg = Chart::new("Layers", "time (s)", "viewers")
            .empty_note("no video in this run")
            .svg();
        assert!(svg.contains(">no video in this run</text>"));
    }

    #[test]
    fn points_that_are_not_finite_are_skipped() {
        let svg = Chart::new("t", "x", "y")
            .line(
                "a",
                [
                    (0.0, 0.0),
                    (1.0, f64::NAN),
                    (f64::INFINITY, 3.0),
                    (2.0, f64::NEG_INFINITY),
                    (10.0, 100.0),
                ],
            )
            .band("b", [(0.0, 0.0, f64::NAN), (10.0, 50.0, 100.0)])
            .svg();
        assert_eq!(polylines(&svg), ["62.0,188.0 546.0,40.0"]);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        let only_nan = Chart::new("t", "x", "y").line("a", [(f64::NAN, 1.0)]).svg();
        assert!(only_nan.contains("no data"));
    }

    #[test]
    fn a_band_is_a_polygon_from_its_lows_back_along_its_highs() {
        let svg = Chart::new("t", "x", "y")
            .band("min-max", [(0.0, 0.0, 50.0), (10.0, 50.0, 100.0)])
            .svg();
        assert!(
            svg.contains(r#"points="62.0,188.0 546.0,114.0 546.0,40.0 62.0,114.0""#),
            "{svg}"
        );
    }

    #[test]
    fn labels_are_escaped() {
        let svg = Chart::new("a < b & c", "x", "y").svg();
        assert!(svg.contains("a &lt; b &amp; c"));
        assert!(!svg.contains("a < b"));
    }
}
