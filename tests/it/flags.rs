//! Numeric flags are refused while the command line (or a pipeline file) is parsed: NaN, ±inf
//! and out-of-range values name the flag (or the file's key) and exit 2, before any work; a
//! value is never replaced by the default.

use taidcache::cli::{Cli, Command};

use crate::common::*;

const DISTILL: [&str; 8] = [
    "taidcache",
    "distill",
    "--cache",
    "c",
    "--student",
    "s",
    "--out",
    "r",
];

/// Every float flag of `distill` with a value outside its bounds besides NaN and ±inf, and the
/// interval the message must state.
const DISTILL_FLOATS: [(&str, &str, &str); 11] = [
    ("--lr", "0", "(0, ∞)"),
    ("--epochs", "-1", "(0, ∞)"),
    ("--weight-decay", "-0.01", "[0, ∞)"),
    ("--max-grad-norm", "-1", "[0, ∞)"),
    ("--t-start", "1.5", "[0, 1]"),
    ("--t-end", "-0.1", "[0, 1]"),
    ("--alpha", "-0.0005", "[0, ∞)"),
    ("--beta", "1", "[0, 1)"),
    ("--lambda", "1", "(0, 1)"),
    ("--ce-weight", "-1", "[0, ∞)"),
    ("--eval-fraction", "1", "[0, 1)"),
];

fn refusal(args: &[&str]) -> String {
    match Cli::try_resolve_from(args) {
        Ok(cli) => panic!("{args:?} accepted: {:?}", cli.command),
        Err(e) => e.to_string(),
    }
}

#[test]
fn non_finite_and_out_of_range_distill_floats_are_refused_naming_the_flag() {
    let mut refused = 0;
    for (flag, outside, interval) in DISTILL_FLOATS {
        for value in ["nan", "inf", "-inf", "NaN", "1e999"] {
            // `--flag=-inf`: clap takes `-inf` after a space for a flag (only digits make a
            // negative number), and says so.
            let word = format!("{flag}={value}");
            let mut args = DISTILL.to_vec();
            args.push(&word);
            if flag != "--epochs" {
                args.extend(["--steps", "3"]);
            }
            let e = refusal(&args);
            assert!(
                e.contains(flag) && e.contains("is not a finite number"),
                "{flag} {value}: {e}"
            );
            refused += 1;
        }
        let mut args = DISTILL.to_vec();
        args.extend([flag, outside]);
        let e = refusal(&args);
        assert!(
            e.contains(flag) && e.contains(&format!("is not in {interval}")),
            "{flag} {outside}: {e}"
        );
        refused += 1;
    }
    assert_eq!(refused, 66);
}

#[test]
fn negative_and_zero_counts_are_refused_as_values_not_as_unknown_flags() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["precompute", "--top-k", "-1"],
            "-1 is not a whole number ≥ 1",
        ),
        (
            &["precompute", "--seq-len", "0"],
            "0 is not a whole number ≥ 1",
        ),
        (
            &["precompute", "--worker", "-2"],
            "-2 is not a whole number ≥ 0",
        ),
        (
            &["precompute", "--zstd-level", "30"],
            "30 is not a zstd level (1..=22)",
        ),
        (
            &["distill", "--steps", "-5"],
            "-5 is not a whole number ≥ 1",
        ),
        (
            &["distill", "--batch-size", "2.5"],
            "2.5 is not a whole number ≥ 1",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["taidcache"];
        all.extend_from_slice(args);
        let e = refusal(&all);
        assert!(e.contains(args[1]) && e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("unexpected argument"), "{args:?}: {e}");
    }
}

#[test]
fn a_pipeline_file_is_held_to_the_bounds_of_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    let config = file.to_str().unwrap();
    let cases = [
        ("lr = nan", "[distill] lr", "nan is not a finite number"),
        ("lr = -inf", "[distill] lr", "-inf is not a finite number"),
        (
            "alpha = inf",
            "[distill] alpha",
            "inf is not a finite number",
        ),
        ("beta = 1.0", "[distill] beta", "1 is not in [0, 1)"),
        (
            "batch_size = -1",
            "[distill] batch_size",
            "-1 is not a whole number ≥ 1",
        ),
        ("t_end = 2", "[distill] t_end", "2 is not in [0, 1]"),
        (
            "objective = \"kll\"",
            "[distill] objective",
            "possible values",
        ),
    ];
    for (line, key, want) in cases {
        std::fs::write(
            &file,
            format!("[distill]\ncache = \"c\"\nstudent = \"s\"\nout = \"r\"\nsteps = 3\n{line}\n"),
        )
        .unwrap();
        let e = refusal(&["taidcache", "distill", "--config", config]);
        assert!(
            e.contains("run.toml") && e.contains(key) && e.contains(want),
            "{line}: {e}"
        );
    }
    // A broken key is refused even when a flag replaces it: the file stays wrong whatever
    // the command line says.
    std::fs::write(
        &file,
        "[distill]\ncache = \"c\"\nstudent = \"s\"\nout = \"r\"\nsteps = 3\nlr = nan\n",
    )
    .unwrap();
    let e = refusal(&["taidcache", "distill", "--config", config, "--lr", "0.1"]);
    assert!(e.contains("[distill] lr") && e.contains("nan"), "{e}");
    // A good file's values are used.
    std::fs::write(
        &file,
        "[distill]\ncache = \"c\"\nstudent = \"s\"\nout = \"r\"\nsteps = 3\nlr = 0.002\n",
    )
    .unwrap();
    let cli = Cli::try_resolve_from(["taidcache", "distill", "--config", config]).unwrap();
    let Command::Distill(o) = cli.command else {
        panic!("not distill")
    };
    assert_eq!((o.lr, o.steps), (0.002, Some(3)));
    // precompute: the same parsers behind its keys.
    std::fs::write(&file, "[precompute]\ntop_k = 0\n").unwrap();
    let e = refusal(&["taidcache", "precompute", "--config", config]);
    assert!(
        e.contains("[precompute] top_k") && e.contains("0 is not a whole number ≥ 1"),
        "{e}"
    );
}

#[test]
fn the_binary_exits_2_with_one_line_for_a_nan_flag_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = taidcache(&[
        "distill",
        "--cache",
        "c",
        "--student",
        "s",
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--lr",
        "nan",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "error: invalid value 'nan' for '--lr <LR>': nan is not a finite number"
    );
    assert!(!out.exists());
}
