//! `taidcache plot RUN... --out FILE.svg|png`: training loss, TAID's t and the held-out KL to
//! the teacher against the optimizer step, one line per run, three panels on one figure.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::distill::metrics::{self, METRICS_FILE};
use crate::error::{Error, Result};

/// One run's curves, read from `RUN/metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunCurves {
    pub label: String,
    /// (step, loss)
    pub loss: Vec<(f64, f64)>,
    /// (step, t)
    pub t: Vec<(f64, f64)>,
    /// (step, TAID's linear floor of t), where the run logged it
    pub t_floor: Vec<(f64, f64)>,
    /// (step, held-out KL from the teacher)
    pub eval_kl: Vec<(f64, f64)>,
    /// (step, held-out expected calibration error)
    pub eval_ece: Vec<(f64, f64)>,
    /// (step, held-out top-1 agreement with the teacher)
    pub eval_top1: Vec<(f64, f64)>,
}

/// Read a run directory's metrics; the label is the directory's name.
pub fn read_run(run: &Path) -> Result<RunCurves> {
    let path = run.join(METRICS_FILE);
    if !path.exists() {
        return Err(Error::flag(
            "RUN",
            format!("{} is not a distill run (no {METRICS_FILE})", run.display()),
        ));
    }
    let mut c = RunCurves {
        label: run.file_name().map_or_else(
            || run.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
        ..Default::default()
    };
    for line in metrics::read(&path)? {
        let step = line.step as f64;
        if line.is_eval() {
            if let Some(kl) = line.kl_teacher {
                c.eval_kl.push((step, kl));
            }
            if let Some(ece) = line.ece {
                c.eval_ece.push((step, ece));
            }
            if let Some(a) = line.top1_agreement {
                c.eval_top1.push((step, a));
            }
        } else {
            if let Some(loss) = line.loss {
                c.loss.push((step, loss));
            }
            // t only means something for TAID; other objectives log the schedule they ignore.
            let taid = line.objective.is_none_or(|o| o.is_taid());
            if let (Some(t), true) = (line.t, taid) {
                c.t.push((step, t));
                if let Some(floor) = line.t_floor {
                    c.t_floor.push((step, floor));
                }
            }
        }
    }
    Ok(c)
}

/// The font every label is drawn with: `TAIDCACHE_FONT`, else the first common system sans font.
fn register_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("TAIDCACHE_FONT")
            .map(PathBuf::from)
            .into_iter()
            .collect();
        candidates.extend(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/Library/Fonts/Arial.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(PathBuf::from),
        );
        let bytes = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                "no TrueType font found for the plot's labels; set TAIDCACHE_FONT=/path/to/font.ttf"
                    .to_string()
            })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the plot font is not a valid TrueType font".to_string())
    })
    .clone()
    .map_err(|msg| Error::flag("TAIDCACHE_FONT", msg))
}

/// Largest magnitude drawn as it is: a finite value beyond it is drawn at the edge of the panel
/// (at ±8.9e307, the width of an axis from −LIMIT to +LIMIT stays finite, and plotters' tick
/// search, which loops forever on an infinite or NaN width, terminates).
const AXIS_LIMIT: f64 = f64::MAX / 4.0;

/// The x and y ranges of the finite points of `series`, `None` when there is none.
fn bounds(series: &[&[(f64, f64)]]) -> Option<(std::ops::Range<f64>, std::ops::Range<f64>)> {
    let pts = series
        .iter()
        .flat_map(|s| s.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    let mut any = false;
    for &(x, y) in pts {
        any = true;
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !any {
        return None;
    }
    Some((axis(x0, x1, 0.0, 1.0), axis(y0, y1, 0.05, 1e-6)))
}

/// An axis range over `lo..=hi` (finite), padded by `pad` of its width on each side, at least
/// `min_width` wide and at least a millionth of its magnitude wide (so that ticks one step
/// apart differ in f64), within ±[`AXIS_LIMIT`] (so that its width is finite).
fn axis(lo: f64, hi: f64, pad: f64, min_width: f64) -> std::ops::Range<f64> {
    let (lo, hi) = (
        lo.clamp(-AXIS_LIMIT, AXIS_LIMIT),
        hi.clamp(-AXIS_LIMIT, AXIS_LIMIT),
    );
    let (width, magnitude) = (hi - lo, lo.abs().max(hi.abs()));
    let grow = (width * pad)
        .max((min_width - width) / 2.0)
        .max((magnitude * 1e-6 - width) / 2.0)
        .max(0.0);
    (lo - grow)..(hi + grow)
}

/// A point as drawn: y within the axis (see [`AXIS_LIMIT`]).
fn drawn((x, y): (f64, f64)) -> (f64, f64) {
    (x, y.clamp(-AXIS_LIMIT, AXIS_LIMIT))
}

/// Run `$draw` on a drawing area of `$size` for `$out`, an SVG or a PNG by its extension.
macro_rules! on_backend {
    ($out:expr, $size:expr, |$root:ident| $draw:expr) => {{
        let out: &Path = $out;
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => {
                register_font()?;
                let $root = SVGBackend::new(out, $size).into_drawing_area();
                $draw
            }
            Some("png") => {
                register_font()?;
                let $root = BitMapBackend::new(out, $size).into_drawing_area();
                $draw
            }
            _ => Err(Error::flag(
                "--out",
                format!("{}: the plot file must end in .svg or .png", out.display()),
            )),
        }
    }};
}

/// Draw `runs` into `out` (`.svg` or `.png`).
pub fn plot(runs: &[RunCurves], out: &Path) -> Result<()> {
    // The calibration panels only where a run has them (runs of older versions do not).
    let panels = if runs
        .iter()
        .any(|r| !r.eval_ece.is_empty() || !r.eval_top1.is_empty())
    {
        5
    } else {
        3
    };
    on_backend!(out, (900, 333 * panels as u32), |root| draw(
        root, runs, panels, out
    ))
}

/// One student objective's held-out result against the teacher: (teacher parameters, mean,
/// standard deviation over seeds) per teacher.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeacherSeries {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Students' held-out CE against the teacher's size (parameters, log axis), one line per
/// objective with ± one standard deviation as error bars: the paper's Figure 2 (right).
pub fn plot_by_teacher(series: &[TeacherSeries], out: &Path) -> Result<()> {
    on_backend!(out, (900, 560), |root| draw_by_teacher(root, series, out))
}

fn draw_by_teacher<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    series: &[TeacherSeries],
    out: &Path,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::io(out, std::io::Error::other(e.to_string()));
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    // x: log10(parameters); y: the means with their bars.
    let finite =
        |&(x, m, sd): &(f64, f64, f64)| x > 0.0 && x.is_finite() && m.is_finite() && sd.is_finite();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(|p| finite(p)))
        .flat_map(|&(x, m, sd)| [(x.log10(), m - sd), (x.log10(), m + sd)])
        .collect();
    let Some((xr, yr)) = bounds(&[&pts]) else {
        return Err(Error::flag(
            "--out",
            format!("{}: nothing to plot", out.display()),
        ));
    };
    let pad = ((xr.end - xr.start) * 0.08).max(0.05);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "students' held-out CE against the teacher's size (mean ± sd over seeds)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xr.start - pad)..(xr.end + pad), yr)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("teacher parameters (log scale)")
        .y_desc("held-out CE (nats/token)")
        .x_label_formatter(&|x| format!("{:.1e}", 10f64.powf(*x)))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let p: Vec<(f64, f64, f64)> = s.points.iter().copied().filter(finite).collect();
        chart
            .draw_series(LineSeries::new(
                p.iter().map(|&(x, m, _)| (x.log10(), m)),
                color.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart
            .draw_series(p.iter().map(|&(x, m, sd)| {
                ErrorBar::new_vertical(x.log10(), m - sd, m, m + sd, color.stroke_width(2), 8)
            }))
            .map_err(|e| fail(&e))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft).map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

type Chart<'a, DB> = ChartContext<
    'a,
    DB,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// The legend of a chart's labelled series, at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// How a panel's y axis is drawn.
#[derive(Clone, Copy, PartialEq)]
enum YScale {
    Linear,
    /// Drawn as log10(y), labelled with y; points with y ≤ 0 are left out.
    Log,
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[RunCurves],
    panels: usize,
    out: &Path,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::io(out, std::io::Error::other(e.to_string()));
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((panels, 1));
    type Pick = fn(&RunCurves) -> &[(f64, f64)];
    // (title, y label, series, y scale, whether t's floor is drawn dashed beside the series,
    // whether the curves rise: their legend goes to the lower right)
    let specs: [(&str, &str, Pick, YScale, bool, bool); 5] = [
        (
            "training loss",
            "loss",
            |r| &r.loss,
            YScale::Linear,
            false,
            false,
        ),
        (
            "TAID interpolation t (dashed: its linear floor)",
            "t",
            |r| &r.t,
            YScale::Linear,
            true,
            true,
        ),
        (
            "held-out KL(teacher ‖ student)",
            "KL (nats/token, log scale)",
            |r| &r.eval_kl,
            YScale::Log,
            false,
            false,
        ),
        (
            "held-out expected calibration error (15 bins)",
            "ECE",
            |r| &r.eval_ece,
            YScale::Linear,
            false,
            false,
        ),
        (
            "held-out top-1 agreement with the teacher",
            "share of positions",
            |r| &r.eval_top1,
            YScale::Linear,
            false,
            true,
        ),
    ];
    for (panel, (title, ylabel, pick, scale, with_floor, rising)) in panels.iter().zip(specs) {
        let to_axis = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
            pts.iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .filter_map(|(x, y)| match scale {
                    YScale::Linear => Some((x, y)),
                    YScale::Log => (y > 0.0).then(|| (x, y.log10())),
                })
                .map(drawn)
                .collect()
        };
        let series: Vec<Vec<(f64, f64)>> = runs.iter().map(|r| to_axis(pick(r))).collect();
        let floors: Vec<Vec<(f64, f64)>> = runs
            .iter()
            .map(|r| {
                if with_floor {
                    to_axis(&r.t_floor)
                } else {
                    Vec::new()
                }
            })
            .collect();
        let all: Vec<&[(f64, f64)]> = series.iter().chain(&floors).map(Vec::as_slice).collect();
        let Some((xr, yr)) = bounds(&all) else {
            continue;
        };
        // Integer steps: no more labels than steps, each written as an integer.
        let x_labels = ((xr.end - xr.start).floor() as usize + 1).clamp(2, 10);
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xr, yr)
            .map_err(|e| fail(&e))?;
        let y_label = move |y: &f64| match scale {
            YScale::Linear => format!("{y:.3}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string(),
            YScale::Log => format!("{:.1e}", 10f64.powf(*y)),
        };
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc(ylabel)
            .x_labels(x_labels)
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_label_formatter(&y_label)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| fail(&e))?;
        let mut labelled = false;
        for (i, (run, pts)) in runs.iter().zip(&series).enumerate() {
            // A run without this series gets neither a line nor a legend entry here.
            if pts.is_empty() {
                continue;
            }
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(|e| fail(&e))?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            labelled = true;
            if !floors[i].is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        floors[i].iter().copied(),
                        6,
                        4,
                        color.stroke_width(1),
                    ))
                    .map_err(|e| fail(&e))?;
            }
        }
        if labelled {
            let position = if rising {
                SeriesLabelPosition::LowerRight
            } else {
                SeriesLabelPosition::UpperRight
            };
            legend(&mut chart, position).map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Draw an SVG into `path`, check it holds every label, and return its text.
    fn svg_with_labels(
        path: &Path,
        draw: impl FnOnce(&Path) -> Result<()>,
        labels: &[&str],
    ) -> String {
        draw(path).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        for label in labels {
            assert!(
                svg.contains(label),
                "{label} missing from the SVG: {:?}",
                svg_texts(&svg)
            );
        }
        svg
    }

    /// The text of every `<text>` element of an SVG, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                Some(body[..body.find("</text>")?].trim().to_string())
            })
            .collect()
    }

    fn run(dir: &Path, name: &str, slope: f64) -> PathBuf {
        let run = dir.join(name);
        std::fs::create_dir_all(&run).unwrap();
        let mut lines = String::new();
        for s in 1..=20 {
            lines += &format!(
                "{{\"step\":{s},\"loss\":{},\"t\":{},\"lr\":0.001}}\n",
                3.0 - slope * s as f64,
                0.4 + 0.03 * s as f64
            );
            if s % 5 == 0 {
                lines += &format!(
                    "{{\"step\":{s},\"split\":\"eval\",\"ce\":2.0,\"kl_teacher\":{}}}\n",
                    1.0 / s as f64
                );
            }
        }
        std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
        run
    }

    #[test]
    fn plot_has_labeled_axes_and_one_line_per_run_in_each_panel() {
        let dir = tempfile::tempdir().unwrap();
        let runs: Vec<RunCurves> = [("taid", 0.1), ("kl", 0.05)]
            .iter()
            .map(|(n, s)| read_run(&run(dir.path(), n, *s)).unwrap())
            .collect();
        assert_eq!(
            (runs[0].loss.len(), runs[0].t.len(), runs[0].eval_kl.len()),
            (20, 20, 4)
        );
        let text = svg_with_labels(
            &dir.path().join("p.svg"),
            |p| plot(&runs, p),
            &[
                "optimizer step",
                "KL (nats/token, log scale)",
                "training loss",
                "taid",
                "kl",
            ],
        );
        // 3 panels × 2 runs data lines (width 2), plus 3 × 2 legend strokes (width 3), in one
        // color per run; the black polylines are axes and ticks.
        let colored: Vec<&str> = text
            .split("<polyline")
            .skip(1)
            .map(|p| &p[..p.find('>').unwrap_or(p.len())])
            .filter(|p| !p.contains("stroke=\"#000000\""))
            .collect();
        let count = |needle: &str| colored.iter().filter(|p| p.contains(needle)).count();
        assert_eq!(
            (count("stroke-width=\"2\""), count("stroke-width=\"3\"")),
            (6, 6),
            "one line per run and panel, plus legends"
        );
        let colors: std::collections::BTreeSet<&str> = colored
            .iter()
            .filter_map(|p| p.split("stroke=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(colors.len(), 2, "one color per run: {colors:?}");
        let png = dir.path().join("p.png");
        plot(&runs, &png).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    }

    #[test]
    fn t_floor_is_dashed_kl_is_on_a_log_axis_steps_are_integers_and_calibration_is_drawn() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for objective in ["taid", "kl"] {
            let run = dir.path().join(objective);
            std::fs::create_dir_all(&run).unwrap();
            let mut lines = String::new();
            for s in 1..=4 {
                lines += &format!(
                    "{{\"step\":{s},\"objective\":\"{objective}\",\"loss\":1.0,\"t\":{},\"t_floor\":{}}}\n",
                    0.4 + 0.1 * s as f64,
                    0.4 + 0.05 * (s - 1) as f64
                );
                lines += &format!(
                    "{{\"step\":{s},\"split\":\"eval\",\"ce\":2.0,\"kl_teacher\":{},\"ece\":{},\"top1_agreement\":{}}}\n",
                    10f64.powi(-s),
                    0.1 / s as f64,
                    0.5 + 0.1 * s as f64
                );
            }
            std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
            runs.push(read_run(&run).unwrap());
        }
        assert_eq!(runs[0].t_floor.len(), 4, "taid logs its floor");
        assert!(
            runs[1].t.is_empty() && runs[1].t_floor.is_empty(),
            "kl has no t"
        );
        let svg = dir.path().join("p.svg");
        plot(&runs, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        // The KL axis spans 1e-4..1e-1 in decades, labelled in the data's units.
        for label in ["1.0e-1", "1.0e-4", "log scale"] {
            assert!(text.contains(label), "{label} missing from the SVG");
        }
        // Steps 1..4 are labelled as integers, each once per panel (x tick labels are the
        // centred numeric texts; y ticks are right-aligned).
        let x_ticks: Vec<String> = text
            .split("<text")
            .skip(1)
            .filter(|t| t.contains("text-anchor=\"middle\""))
            .filter_map(|t| {
                let body = &t[t.find('>')? + 1..];
                let body = body[..body.find("</text>")?].trim();
                body.parse::<f64>().ok().map(|_| body.to_string())
            })
            .collect();
        for step in ["1", "2", "3", "4"] {
            let n = x_ticks.iter().filter(|t| *t == step).count();
            assert_eq!(n, 5, "step {step} labelled {n} times: {x_ticks:?}");
        }
        assert_eq!(x_ticks.len(), 20, "only integer steps: {x_ticks:?}");
        for title in ["expected calibration error", "top-1 agreement"] {
            assert!(text.contains(title), "no {title} panel");
        }
        assert_eq!(runs[0].eval_ece.len(), 4);
        assert_eq!(runs[1].eval_top1[3], (4.0, 0.9));
        // Legends: taid in five panels, kl in four (it has no t): nine entries of width 3.
        let legend_strokes = text
            .split("<polyline")
            .skip(1)
            .filter(|p| p.contains("stroke-width=\"3\""))
            .count();
        assert_eq!(
            legend_strokes, 9,
            "a legend entry only for runs with the series"
        );
        // The floor: a dashed line of width 1 in taid's color, i.e. several short segments.
        let thin = text.matches("stroke-width=\"1\"").count();
        assert!(
            thin >= 2,
            "the dashed floor is missing: {thin} thin strokes"
        );
    }

    #[test]
    fn by_teacher_plot_has_one_line_and_error_bars_per_objective() {
        let dir = tempfile::tempdir().unwrap();
        let series: Vec<TeacherSeries> = ["taid", "kl"]
            .iter()
            .enumerate()
            .map(|(i, l)| TeacherSeries {
                label: l.to_string(),
                points: vec![
                    (2e5, 3.1 + i as f64 * 0.1, 0.02),
                    (7.5e5, 3.0 + i as f64 * 0.1, 0.03),
                    (3.3e6, 2.9 + i as f64 * 0.1, 0.01),
                ],
            })
            .collect();
        let svg = dir.path().join("t.svg");
        let text = svg_with_labels(
            &svg,
            |p| plot_by_teacher(&series, p),
            &[
                "teacher parameters (log scale)",
                "held-out CE (nats/token)",
                "taid",
                "kl",
            ],
        );
        // Two objective lines (width 2) plus their legends (width 3).
        let lines = text
            .split("<polyline")
            .skip(1)
            .filter(|p| p.contains("stroke-width=\"2\""))
            .count();
        assert_eq!(lines, 2, "one line per objective");
        // An error bar is three segments (the bar and two caps) per point: 2 × 3 × 3 lines.
        let bars = text.matches("<line").count();
        assert!(bars >= 18, "{bars} segments for 6 error bars");
        // The x ticks are parameter counts, in powers of ten.
        let ticks: Vec<String> = svg_texts(&text)
            .into_iter()
            .filter(|t| t.contains("e5") || t.contains("e6"))
            .collect();
        assert!(ticks.len() >= 3, "x ticks {ticks:?}");
        let png = dir.path().join("t.png");
        plot_by_teacher(&series, &png).unwrap();
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
        let err = plot_by_teacher(&[], &svg).unwrap_err().to_string();
        assert!(err.contains("nothing to plot"), "{err}");
    }

    #[test]
    fn t_is_drawn_for_taid_runs_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = Vec::new();
        for objective in ["taid", "taid-linear", "kl"] {
            let run = dir.path().join(objective);
            std::fs::create_dir_all(&run).unwrap();
            let lines: String = (1..=3)
                .map(|s| {
                    format!(
                        "{{\"step\":{s},\"objective\":\"{objective}\",\"loss\":1.0,\"t\":0.5}}\n"
                    )
                })
                .collect();
            std::fs::write(run.join("metrics.jsonl"), lines).unwrap();
            runs.push(read_run(&run).unwrap());
        }
        let counts: Vec<(usize, usize)> = runs.iter().map(|r| (r.loss.len(), r.t.len())).collect();
        assert_eq!(counts, [(3, 3), (3, 3), (3, 0)]);
    }

    #[test]
    fn losses_near_the_largest_f64_plot_and_non_finite_ones_are_skipped() {
        for (lo, hi) in [
            (-1e308, 1e308),
            (1e308, 1e308),
            (-1.7e308, 3.0),
            (5e307, 1.797e308),
        ] {
            let (xr, yr) = bounds(&[&[(1.0, lo), (2.0, hi)]]).unwrap();
            assert!(
                (yr.end - yr.start).is_finite()
                    && yr.start < yr.end
                    && yr.start <= lo.max(-AXIS_LIMIT),
                "{lo}..{hi}: y axis {yr:?}"
            );
            assert_eq!(xr, 1.0..2.0);
        }
        // The step axis too: one step near 2^64 is a range a step apart that f64 can tell.
        let (xr, _) = bounds(&[&[(1.8e19, 1.0)]]).unwrap();
        assert!(xr.start < xr.end, "{xr:?}");

        // Plotting must return (it looped forever on ±1e308): on another thread, with a bound.
        let dir = tempfile::tempdir().unwrap();
        let huge = RunCurves {
            label: "huge".into(),
            loss: vec![
                (1.0, 1e308),
                (2.0, -1e308),
                (3.0, f64::NAN),
                (4.0, 2.5),
                (5.0, f64::INFINITY),
            ],
            t: vec![(1.0, 1e308), (2.0, 1e308)],
            t_floor: Vec::new(),
            eval_kl: vec![(1.0, -1.7e308), (2.0, 0.0)],
            eval_ece: Vec::new(),
            eval_top1: Vec::new(),
        };
        let small = RunCurves {
            label: "small".into(),
            loss: vec![(1.0, 3.0), (2.0, 2.0)],
            ..RunCurves::default()
        };
        let svg = dir.path().join("huge.svg");
        let (tx, rx) = std::sync::mpsc::channel();
        let (runs, path) = (vec![huge, small], svg.clone());
        std::thread::spawn(move || tx.send(plot(&runs, &path).map_err(|e| e.to_string())));
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("plot of losses near ±1e308 did not return");
        result.unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("huge") && text.contains("small"));
    }

    #[test]
    fn bad_plot_requests_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_run(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("metrics.jsonl"),
            "{err}"
        );
        let r = read_run(&run(dir.path(), "a", 0.1)).unwrap();
        let err = plot(&[r], &dir.path().join("x.jpg"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--out") && err.contains(".svg"), "{err}");
    }
}
