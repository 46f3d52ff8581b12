//! `taidcache demo`, scaled down: the whole pipeline through the public subcommands, printing
//! each command, a student table, a summary and a plot.

use std::path::Path;

fn eval_kl(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "eval")
        .map(|v| v["kl_teacher"].as_f64().unwrap())
        .collect()
}

#[test]
fn a_small_demo_runs_every_stage_and_reports_three_students_over_two_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = dir.path().join("sizes.json");
    std::fs::write(
        &sizes,
        serde_json::json!({
            "train_docs": 300, "heldout_docs": 40, "vocab_size": 300, "seq_len": 32,
            "teachers": [{"layers": 2, "hidden": 64}], "teacher_steps": 60, "teacher_lr": 3e-3,
            "student_docs": 60,
            "student": {"layers": 1, "hidden": 32}, "student_steps": 40, "student_lr": 5e-3,
            "objectives": ["taid", "kl", "ce"], "seeds": 2, "alpha_sweep": [0.0],
            "taid_alpha": 0.2,
            "batch_size": 8, "top_k": 16, "seed": 3
        })
        .to_string(),
    )
    .unwrap();
    let out = dir.path().join("demo");
    let report = dir.path().join("docs/report.md");
    std::fs::create_dir_all(report.parent().unwrap()).unwrap();
    std::fs::write(
        &report,
        "# Report\n\n<!-- results: old -->\n<!-- /results -->\n\n## Discussion\nkept\n",
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args([
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--sizes",
            sizes.to_str().unwrap(),
        ])
        .args(["--report", report.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Every stage ran through the CLI and was printed as a user would type it.
    for cmd in [
        "$ taidcache precompute",
        "$ taidcache distill",
        "$ taidcache inspect",
        "$ taidcache plot",
    ] {
        assert!(stdout.contains(cmd), "`{cmd}` not printed:\n{stdout}");
    }
    assert_eq!(
        stdout.matches("$ taidcache distill").count(),
        1 + 3 * 2 + 1,
        "teacher, three objectives at two seeds, one α of the sweep"
    );
    // The students' cache covers their slice only: 60 of the 300 training documents.
    let students_corpus = std::fs::read_to_string(out.join("corpus/students.jsonl")).unwrap();
    assert_eq!(students_corpus.lines().count(), 60);
    // The table's shape: one row per objective with its two seeds as mean ± sd, the
    // difference to the `ce` student, and a verdict in words (whichever way it goes).
    for student in ["taid", "kl", "ce"] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with("| L2-H64 | ") && l.contains(&format!(" | {student} | 2 | ")))
            .unwrap_or_else(|| panic!("no row for {student}:\n{stdout}"));
        assert_eq!(
            row.matches(" ± ").count(),
            3,
            "CE, KL and ECE as mean ± sd: {row}"
        );
    }
    assert!(
        stdout.contains("**L2-H64: distillation pays.**")
            || stdout.contains("**L2-H64: distillation does not pay here.**"),
        "no verdict:\n{stdout}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let students = summary["students"].as_array().unwrap();
    assert_eq!(students.len(), 6, "three objectives × two seeds");
    for s in students {
        let (ce, kl) = (s["ce"].as_f64().unwrap(), s["kl_teacher"].as_f64().unwrap());
        assert!(
            ce.is_finite() && ce > 0.0 && kl.is_finite() && kl >= 0.0,
            "{s}"
        );
    }
    // The distilled students moved toward the teacher on held-out data.
    for name in ["taid-seed-3", "kl-seed-4"] {
        let kl = eval_kl(&out.join("runs").join(name));
        assert!(
            kl.len() >= 2 && kl.last().unwrap() < &kl[0],
            "{name}: held-out KL {kl:?}"
        );
    }
    // TAID logs its linear floor, never above its t; at α = 0 t is the floor.
    for (run, adaptive) in [("taid-seed-3", true), ("taid-alpha-0", false)] {
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("runs").join(run).join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .filter(|v: &serde_json::Value| v.get("split").is_none())
                .collect();
        assert_eq!(lines.len(), 40, "{run}");
        let gap: Vec<f64> = lines
            .iter()
            .map(|v| v["t"].as_f64().unwrap() - v["t_floor"].as_f64().unwrap())
            .collect();
        assert!(
            gap.iter().all(|g| *g >= -1e-12),
            "{run}: t below its floor {gap:?}"
        );
        let max_gap = gap.iter().cloned().fold(0.0, f64::max);
        if adaptive {
            assert!(max_gap > 1e-3, "{run}: t never left its floor ({max_gap})");
        } else {
            assert!(max_gap < 1e-12, "{run}: α = 0 left the floor ({max_gap})");
        }
    }
    for plot in [
        "students.svg",
        "students.png",
        "taid-alpha.svg",
        "taid-alpha.png",
    ] {
        assert!(out.join(plot).exists(), "{plot} not written");
    }
    let svg = std::fs::read_to_string(out.join("students.svg")).unwrap();
    assert!(svg.contains("optimizer step") && svg.contains("taid") && svg.contains("ce"));
    // The report: results between the markers, the discussion kept, the plot copied beside it.
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(
        text.starts_with("# Report\n") && text.contains("## Discussion\nkept"),
        "{text}"
    );
    assert!(
        text.contains(" | taid | 2 | ")
            && text.contains("--sizes")
            && !text.contains("results: old"),
        "{text}"
    );
    for copied in ["students.svg", "taid-alpha.svg"] {
        assert!(
            dir.path().join("docs/report").join(copied).exists(),
            "{copied}"
        );
    }
    assert!(
        !dir.path().join("docs/report/students.png").exists(),
        "the PNGs stay in --out"
    );
    // The cache the students learned from verifies.
    let v = std::process::Command::new(env!("CARGO_BIN_EXE_taidcache"))
        .args(["verify", out.join("caches/train").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
}
