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
    /// (step, held-out KL from the teacher)
    pub eval_kl: Vec<(f64, f64)>,
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
        } else {
            if let Some(loss) = line.loss {
                c.loss.push((step, loss));
            }
            // t only means something for TAID; other objectives log the schedule they ignore.
            let taid = line.objective.is_none_or(|o| o.is_taid());
            if let (Some(t), true) = (line.t, taid) {
                c.t.push((step, t));
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

/// Draw `runs` into `out` (`.svg` or `.png`).
pub fn plot(runs: &[RunCurves], out: &Path) -> Result<()> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => {
            register_font()?;
            draw(
                SVGBackend::new(out, (900, 1000)).into_drawing_area(),
                runs,
                out,
            )
        }
        Some("png") => {
            register_font()?;
            draw(
                BitMapBackend::new(out, (900, 1000)).into_drawing_area(),
                runs,
                out,
            )
        }
        _ => Err(Error::flag(
            "--out",
            format!("{}: the plot file must end in .svg or .png", out.display()),
        )),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[RunCurves],
    out: &Path,
) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::io(out, std::io::Error::other(e.to_string()));
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let panels = root.split_evenly((3, 1));
    type Pick = fn(&RunCurves) -> &[(f64, f64)];
    let specs: [(&str, &str, Pick); 3] = [
        ("training loss", "loss", |r| &r.loss),
        ("TAID interpolation t", "t", |r| &r.t),
        ("held-out KL(teacher ‖ student)", "KL (nats/token)", |r| {
            &r.eval_kl
        }),
    ];
    for (panel, (title, ylabel, pick)) in panels.iter().zip(specs) {
        let series: Vec<&[(f64, f64)]> = runs.iter().map(pick).collect();
        let Some((xr, yr)) = bounds(&series) else {
            continue;
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(xr, yr)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .y_desc(ylabel)
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| fail(&e))?;
        for (i, (run, pts)) in runs.iter().zip(&series).enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    pts.iter()
                        .copied()
                        .filter(|(x, y)| x.is_finite() && y.is_finite())
                        .map(drawn),
                    color.stroke_width(2),
                ))
                .map_err(|e| fail(&e))?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let svg = dir.path().join("p.svg");
        plot(&runs, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for label in [
            "optimizer step",
            "KL (nats/token)",
            "training loss",
            "taid",
            "kl",
        ] {
            assert!(text.contains(label), "{label} missing from the SVG");
        }
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
            eval_kl: vec![(1.0, -1.7e308), (2.0, 0.0)],
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
