//! Paired timing for benches whose two sides must see the same machine: criterion measures one
//! function after another, seconds apart, and on a shared machine the memory bandwidth or the
//! CPU share moves between the two (±10–30% with no code change). Here the two sides run in
//! alternation (A B, then B A, …) and the ratio is taken per round, then the median.

use std::time::Instant;

/// Median (the mean of the two middle values for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

/// Seconds taken by `a` and by `b` in each of `rounds` rounds, alternating which runs first.
pub fn alternate(rounds: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Vec<f64>, Vec<f64>) {
    let time = |f: &mut dyn FnMut()| {
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64()
    };
    let (mut ta, mut tb) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds {
        if round % 2 == 0 {
            ta.push(time(&mut a));
            tb.push(time(&mut b));
        } else {
            tb.push(time(&mut b));
            ta.push(time(&mut a));
        }
    }
    (ta, tb)
}

/// Print and record a paired run of `bench` (e.g. `topk`): the medians of `a` and of `b` (one
/// value per round, in `unit`) and of the per-round ratios a / b, as
/// `<bench>.paired.<name>_<unit>` and `<bench>.paired.ratio` in
/// `target/bench-results/<bench>.json`, where `benches/report.py` reads them.
pub fn record(bench: &str, names: [&str; 2], unit: &str, a: &[f64], b: &[f64]) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let (ma, mb, r) = (
        median(a.to_vec()),
        median(b.to_vec()),
        median(ratios.clone()),
    );
    let [na, nb] = names;
    println!(
        "{bench} paired, {} rounds: {na} {ma:.3} {unit}, {nb} {mb:.3} {unit} (medians), \
         {na} / {nb} {r:.3} (median of {ratios:.3?})",
        a.len()
    );
    let results = serde_json::json!([
        {"name": format!("{bench}.paired.{na}_{unit}"), "value": ma, "unit": unit},
        {"name": format!("{bench}.paired.{nb}_{unit}"), "value": mb, "unit": unit},
        {"name": format!("{bench}.paired.ratio"), "value": r, "unit": "ratio"},
    ]);
    crate::results::write(&format!("{bench}.json"), &results);
}

/// Whether the paired run belongs to this invocation: not for `--list`, `--profile-time` or a
/// name filter that selects criterion benches (the filter `paired` selects it alone).
pub fn requested() -> bool {
    // Criterion options that take a value (the value is not a name filter).
    const WITH_VALUE: &[&str] = &[
        "--color",
        "-c",
        "--save-baseline",
        "-s",
        "--baseline",
        "-b",
        "--baseline-lenient",
        "--load-baseline",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--output-format",
        "--plotting-backend",
        "--format",
    ];
    let mut skip = false;
    for a in std::env::args().skip(1) {
        if std::mem::take(&mut skip) {
            continue;
        }
        if WITH_VALUE.contains(&a.as_str()) {
            skip = true;
        } else if a == "--list" || a == "--profile-time" || (!a.starts_with('-') && a != "paired") {
            return false;
        }
    }
    true
}
